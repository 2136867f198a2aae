//! Streaming the rows of a data file, one at a time, with the values of the columns a pass
//! needs; and reading one value as a number or a category.
//!
//! CSV goes through the `csv` crate (RFC 4180 quoting, a UTF-8 BOM dropped, rows of another
//! width than the header refused). JSON Lines is read a line at a time; of each object only the
//! wanted keys are kept, the other values are skipped unparsed. Parquet is in the `parquet` module.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::error::{CellAt, DriftError, RowAt};
use super::source::DataFile;
use super::DataFormat;

/// Rows between two looks at the cancellation token.
pub const CHECK_EVERY: u64 = 4096;

/// One row: the values of the wanted columns, by their position in the wanted list.
pub enum Row<'a> {
    /// A CSV record and where each wanted column is in it.
    Csv {
        /// The record.
        record: &'a csv::ByteRecord,
        /// The field of each wanted column.
        fields: &'a [usize],
    },
    /// The wanted values of a JSON object (`None`: the key is absent).
    Jsonl(&'a [Option<Value>]),
    /// The wanted values of a Parquet row.
    Parquet(&'a [Option<parquet::record::Field>]),
}

/// One value as the file has it.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    /// A CSV field.
    Text(&'a [u8]),
    /// A JSON value.
    Json(&'a Value),
    /// A Parquet value.
    Parquet(&'a parquet::record::Field),
    /// A JSON object without the key.
    Absent,
}

impl Row<'_> {
    /// The value of wanted column `i`.
    pub fn cell(&self, i: usize) -> Cell<'_> {
        match self {
            Row::Csv { record, fields } => Cell::Text(record.get(fields[i]).unwrap_or_default()),
            Row::Jsonl(values) => values[i].as_ref().map_or(Cell::Absent, Cell::Json),
            Row::Parquet(values) => values[i].as_ref().map_or(Cell::Absent, Cell::Parquet),
        }
    }
}

/// The columns `file` has, in order: the CSV header, or the keys of the first JSON object.
pub fn columns(file: &DataFile) -> Result<Vec<String>, DriftError> {
    match file.format {
        DataFormat::Csv => {
            let mut reader = csv_reader(file)?;
            let header = csv_header(file, &mut reader)?;
            Ok(header)
        }
        DataFormat::Jsonl => {
            let mut lines = BufReader::new(file.rewound()?);
            let mut line = String::new();
            let mut number = 0;
            loop {
                line.clear();
                number += 1;
                if read_line(file, &mut lines, &mut line, number)? == 0 {
                    return Err(DriftError::Empty(file.name.clone()));
                }
                if line.trim().is_empty() {
                    continue;
                }
                let mut keys = Vec::new();
                parse_object(file, &line, number, KeysInOrder(&mut keys))?;
                return Ok(keys);
            }
        }
        DataFormat::Parquet => super::parquet::columns(file),
    }
}

/// Reads every row of `file`, calling `visit` with the values of `wanted` (column names, each
/// in the file: see [`columns`]). Returns how many rows there were.
pub fn scan(
    file: &DataFile,
    wanted: &[&str],
    cancel: &CancellationToken,
    mut visit: impl FnMut(RowAt, &Row<'_>) -> Result<(), DriftError>,
) -> Result<u64, DriftError> {
    let rows = match file.format {
        DataFormat::Csv => scan_csv(file, wanted, cancel, &mut visit)?,
        DataFormat::Jsonl => scan_jsonl(file, wanted, cancel, &mut visit)?,
        DataFormat::Parquet => super::parquet::scan(file, wanted, cancel, &mut visit)?,
    };
    if rows == 0 {
        return Err(match file.format {
            DataFormat::Csv | DataFormat::Parquet => DriftError::NoRows(file.name.clone()),
            DataFormat::Jsonl => DriftError::Empty(file.name.clone()),
        });
    }
    Ok(rows)
}

fn csv_reader(file: &DataFile) -> Result<csv::Reader<&std::fs::File>, DriftError> {
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(file.rewound()?))
}

fn csv_header(
    file: &DataFile,
    reader: &mut csv::Reader<&std::fs::File>,
) -> Result<Vec<String>, DriftError> {
    let header = reader.headers().map_err(|e| csv_error(file, e))?;
    if header.is_empty() {
        return Err(DriftError::Empty(file.name.clone()));
    }
    Ok(header.iter().map(str::to_owned).collect())
}

fn scan_csv(
    file: &DataFile,
    wanted: &[&str],
    cancel: &CancellationToken,
    visit: &mut dyn FnMut(RowAt, &Row<'_>) -> Result<(), DriftError>,
) -> Result<u64, DriftError> {
    let mut reader = csv_reader(file)?;
    let header = csv_header(file, &mut reader)?;
    let mut fields = Vec::with_capacity(wanted.len());
    for name in wanted {
        let mut at = header.iter().enumerate().filter(|(_, h)| h == name);
        match (at.next(), at.next()) {
            (Some((i, _)), None) => fields.push(i),
            (Some(_), Some(_)) => {
                return Err(DriftError::BadHeader {
                    file: file.name.clone(),
                    problem: format!("it names column `{name}` twice"),
                })
            }
            (None, _) => {
                return Err(DriftError::MissingColumn {
                    file: file.name.clone(),
                    column: (*name).to_owned(),
                    available: header.clone(),
                })
            }
        }
    }
    let mut record = csv::ByteRecord::new();
    let mut rows = 0u64;
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| csv_error(file, e))?
    {
        rows += 1;
        if rows % CHECK_EVERY == 0 && cancel.is_cancelled() {
            return Err(DriftError::Cancelled);
        }
        let line = record.position().map_or(0, |p| p.line());
        let at = RowAt::Csv { row: rows, line };
        visit(
            at,
            &Row::Csv {
                record: &record,
                fields: &fields,
            },
        )?;
    }
    Ok(rows)
}

/// A CSV parse error, with the row it is on.
fn csv_error(file: &DataFile, err: csv::Error) -> DriftError {
    let row_at = |pos: Option<&csv::Position>| RowAt::Csv {
        row: pos.map_or(0, |p| p.record()),
        line: pos.map_or(0, |p| p.line()),
    };
    match err.into_kind() {
        csv::ErrorKind::Io(source) => file.read_error(source),
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => DriftError::Ragged {
            file: file.name.clone(),
            row: row_at(pos.as_ref()),
            found: len,
            expected: expected_len,
        },
        csv::ErrorKind::Utf8 { pos, err } => DriftError::BadHeader {
            file: file.name.clone(),
            problem: format!("{} (at {})", err, row_at(pos.as_ref())),
        },
        other => DriftError::Malformed {
            file: file.name.clone(),
            row: RowAt::Csv { row: 0, line: 0 },
            problem: format!("{other:?}"),
        },
    }
}

fn read_line(
    file: &DataFile,
    lines: &mut impl BufRead,
    line: &mut String,
    number: u64,
) -> Result<usize, DriftError> {
    lines.read_line(line).map_err(|source| {
        if source.kind() == std::io::ErrorKind::InvalidData {
            DriftError::Malformed {
                file: file.name.clone(),
                row: RowAt::Jsonl { line: number },
                problem: "not UTF-8 text".into(),
            }
        } else {
            file.read_error(source)
        }
    })
}

fn scan_jsonl(
    file: &DataFile,
    wanted: &[&str],
    cancel: &CancellationToken,
    visit: &mut dyn FnMut(RowAt, &Row<'_>) -> Result<(), DriftError>,
) -> Result<u64, DriftError> {
    let index: HashMap<&str, usize> = wanted.iter().enumerate().map(|(i, w)| (*w, i)).collect();
    let mut slots: Vec<Option<Value>> = vec![None; wanted.len()];
    let mut lines = BufReader::with_capacity(1 << 16, file.rewound()?);
    let mut line = String::new();
    let (mut number, mut rows) = (0u64, 0u64);
    loop {
        line.clear();
        number += 1;
        if read_line(file, &mut lines, &mut line, number)? == 0 {
            return Ok(rows);
        }
        if line.trim().is_empty() {
            continue;
        }
        rows += 1;
        if rows % CHECK_EVERY == 0 && cancel.is_cancelled() {
            return Err(DriftError::Cancelled);
        }
        slots.iter_mut().for_each(|s| *s = None);
        parse_object(
            file,
            &line,
            number,
            PickKeys {
                index: &index,
                slots: &mut slots,
            },
        )?;
        visit(RowAt::Jsonl { line: number }, &Row::Jsonl(&slots))?;
    }
}

/// Parses `line` as one JSON object with `seed`, refusing anything else on the line.
fn parse_object<'de, S>(
    file: &DataFile,
    line: &'de str,
    number: u64,
    seed: S,
) -> Result<(), DriftError>
where
    S: DeserializeSeed<'de, Value = ()>,
{
    if !line.trim_start().starts_with('{') {
        return Err(DriftError::NotAnObject {
            file: file.name.clone(),
            line: number,
        });
    }
    let bad_json = |source| DriftError::BadJson {
        file: file.name.clone(),
        line: number,
        source,
    };
    let mut de = serde_json::Deserializer::from_str(line);
    seed.deserialize(&mut de).map_err(bad_json)?;
    de.end().map_err(bad_json)
}

/// An object key, borrowed from the line unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        de.deserialize_str(KeyVisitor)
    }
}

/// Keeps the values of the wanted keys of an object, skips the rest.
struct PickKeys<'a> {
    index: &'a HashMap<&'a str, usize>,
    slots: &'a mut [Option<Value>],
}

impl<'de> DeserializeSeed<'de> for PickKeys<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PickKeys<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match self.index.get(key.0.as_ref()) {
                Some(&i) => self.slots[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Collects an object's keys in the order the line has them.
struct KeysInOrder<'a>(&'a mut Vec<String>);

impl<'de> DeserializeSeed<'de> for KeysInOrder<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeysInOrder<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            map.next_value::<IgnoredAny>()?;
            if !self.0.iter().any(|k| *k == key.0) {
                self.0.push(key.0.into_owned());
            }
        }
        Ok(())
    }
}

/// `cell` as a finite number; `at` names it in errors.
pub fn number(cell: Cell<'_>, at: impl FnOnce() -> CellAt) -> Result<f64, DriftError> {
    let value = match cell {
        Cell::Text(bytes) => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Err(DriftError::NotANumber {
                    at: at(),
                    value: String::from_utf8_lossy(bytes).into_owned(),
                });
            };
            let text = text.trim();
            if text.is_empty() {
                return Err(DriftError::Missing { at: at() });
            }
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => v,
                Ok(_) => {
                    return Err(DriftError::NotFinite {
                        at: at(),
                        value: text.to_owned(),
                    })
                }
                Err(_) => {
                    return Err(DriftError::NotANumber {
                        at: at(),
                        value: text.to_owned(),
                    })
                }
            }
        }
        Cell::Json(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => v,
            _ => {
                return Err(DriftError::NotFinite {
                    at: at(),
                    value: n.to_string(),
                })
            }
        },
        Cell::Json(Value::Null) | Cell::Absent => return Err(DriftError::Missing { at: at() }),
        Cell::Json(other) => {
            return Err(DriftError::NotANumber {
                at: at(),
                value: other.to_string(),
            })
        }
        Cell::Parquet(field) => return super::parquet::number(field, at),
    };
    // -0.0 and 0.0 are one value to numpy's sort and unique.
    Ok(value + 0.0)
}

/// `cell` as a category: the text of a CSV field; a JSON string, number or boolean as written.
pub fn category<'a>(
    cell: Cell<'a>,
    at: impl FnOnce() -> CellAt,
) -> Result<Cow<'a, str>, DriftError> {
    match cell {
        Cell::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok("") => Err(DriftError::Missing { at: at() }),
            Ok(text) => Ok(Cow::Borrowed(text)),
            Err(_) => Err(DriftError::NotACategory {
                at: at(),
                what: "text that is not UTF-8",
            }),
        },
        Cell::Json(Value::String(s)) => Ok(Cow::Borrowed(s)),
        Cell::Json(Value::Number(n)) => Ok(Cow::Owned(n.to_string())),
        Cell::Json(Value::Bool(b)) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
        Cell::Json(Value::Null) | Cell::Absent => Err(DriftError::Missing { at: at() }),
        Cell::Json(Value::Array(_)) => Err(DriftError::NotACategory {
            at: at(),
            what: "a JSON array",
        }),
        Cell::Json(Value::Object(_)) => Err(DriftError::NotACategory {
            at: at(),
            what: "a JSON object",
        }),
        Cell::Parquet(field) => super::parquet::category(field, at),
    }
}
