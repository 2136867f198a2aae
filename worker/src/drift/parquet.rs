//! Parquet files for `uses: drift`: the columns of the file's schema, and its rows streamed
//! through the `parquet` crate's record reader, which decodes one row group at a time and only
//! the columns asked for (a projection), so memory follows the row group, not the file.
//!
//! Only flat columns are compared: a nested group, a list or a map in a wanted column is
//! refused by name. Numbers of every physical and logical width read as numbers; strings,
//! booleans, dates and timestamps as categories; a null is a missing value like an empty CSV
//! field.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use tokio_util::sync::CancellationToken;

use super::error::{CellAt, DriftError, RowAt};
use super::rows::{Row, CHECK_EVERY};
use super::source::DataFile;

/// The reader of `file`, its footer and schema read.
fn open(file: &DataFile) -> Result<SerializedFileReader<std::fs::File>, DriftError> {
    let handle = file
        .rewound()?
        .try_clone()
        .map_err(|source| file.read_error(source))?;
    SerializedFileReader::new(handle).map_err(|e| DriftError::Malformed {
        file: file.name.clone(),
        row: RowAt::Parquet { row: 0 },
        problem: format!("not a readable Parquet file ({e})"),
    })
}

/// The top-level columns of `file`, in schema order.
pub fn columns(file: &DataFile) -> Result<Vec<String>, DriftError> {
    let reader = open(file)?;
    let schema = reader.metadata().file_metadata().schema();
    let names: Vec<String> = schema
        .get_fields()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    if names.is_empty() {
        return Err(DriftError::Empty(file.name.clone()));
    }
    Ok(names)
}

/// Reads every row of `file` with the values of `wanted`; see [`super::rows::scan`].
pub fn scan(
    file: &DataFile,
    wanted: &[&str],
    cancel: &CancellationToken,
    visit: &mut dyn FnMut(RowAt, &Row<'_>) -> Result<(), DriftError>,
) -> Result<u64, DriftError> {
    let reader = open(file)?;
    let schema = reader.metadata().file_metadata().schema();
    let fields = schema.get_fields();
    let mut projected: Vec<Arc<Type>> = Vec::with_capacity(wanted.len());
    for name in wanted {
        let Some(field) = fields.iter().find(|f| f.name() == *name) else {
            return Err(DriftError::MissingColumn {
                file: file.name.clone(),
                column: (*name).to_owned(),
                available: fields.iter().map(|f| f.name().to_owned()).collect(),
            });
        };
        if field.is_group() {
            return Err(DriftError::BadHeader {
                file: file.name.clone(),
                problem: format!(
                    "column `{name}` is a nested group, list or map; drift compares flat columns"
                ),
            });
        }
        if !projected.iter().any(|p| p.name() == *name) {
            projected.push(field.clone());
        }
    }
    let projection = Type::group_type_builder(schema.name())
        .with_fields(projected)
        .build()
        .map_err(|e| malformed(file, 0, &e))?;
    let index: HashMap<&str, usize> = wanted.iter().enumerate().map(|(i, w)| (*w, i)).collect();
    let mut slots: Vec<Option<Field>> = vec![None; wanted.len()];
    let rows_iter = reader
        .get_row_iter(Some(projection))
        .map_err(|e| malformed(file, 0, &e))?;
    let mut rows = 0u64;
    for row in rows_iter {
        rows += 1;
        if rows % CHECK_EVERY == 0 && cancel.is_cancelled() {
            return Err(DriftError::Cancelled);
        }
        let row = row.map_err(|e| malformed(file, rows, &e))?;
        slots.iter_mut().for_each(|s| *s = None);
        for (name, value) in row.get_column_iter() {
            if let Some(&i) = index.get(name.as_str()) {
                slots[i] = Some(value.clone());
            }
        }
        visit(RowAt::Parquet { row: rows }, &Row::Parquet(&slots))?;
    }
    Ok(rows)
}

fn malformed(file: &DataFile, row: u64, err: &parquet::errors::ParquetError) -> DriftError {
    DriftError::Malformed {
        file: file.name.clone(),
        row: RowAt::Parquet { row },
        problem: err.to_string(),
    }
}

/// A Parquet value as a finite number.
pub fn number(field: &Field, at: impl FnOnce() -> CellAt) -> Result<f64, DriftError> {
    let value = match field {
        Field::Byte(v) => f64::from(*v),
        Field::Short(v) => f64::from(*v),
        Field::Int(v) => f64::from(*v),
        // Beyond 2^53 an integer has no exact f64, as in numpy.
        Field::Long(v) => *v as f64,
        Field::UByte(v) => f64::from(*v),
        Field::UShort(v) => f64::from(*v),
        Field::UInt(v) => f64::from(*v),
        Field::ULong(v) => *v as f64,
        Field::Float16(v) => f64::from(*v),
        Field::Float(v) => f64::from(*v),
        Field::Double(v) => *v,
        Field::Decimal(_) => {
            return Err(DriftError::NotANumber {
                at: at(),
                value: format!("{field} (a DECIMAL column; cast it to a float)"),
            })
        }
        Field::Null => return Err(DriftError::Missing { at: at() }),
        other => {
            return Err(DriftError::NotANumber {
                at: at(),
                value: other.to_string(),
            })
        }
    };
    if !value.is_finite() {
        return Err(DriftError::NotFinite {
            at: at(),
            value: value.to_string(),
        });
    }
    Ok(value + 0.0)
}

/// A Parquet value as a category: a string as it is, anything flat as it prints.
pub fn category<'a>(
    field: &'a Field,
    at: impl FnOnce() -> CellAt,
) -> Result<Cow<'a, str>, DriftError> {
    match field {
        Field::Str(s) => Ok(Cow::Borrowed(s)),
        Field::Null => Err(DriftError::Missing { at: at() }),
        Field::Group(_) | Field::ListInternal(_) | Field::MapInternal(_) => {
            Err(DriftError::NotACategory {
                at: at(),
                what: "a nested value",
            })
        }
        Field::Bytes(bytes) => match std::str::from_utf8(bytes.data()) {
            Ok(text) => Ok(Cow::Owned(text.to_owned())),
            Err(_) => Err(DriftError::NotACategory {
                at: at(),
                what: "bytes that are not UTF-8",
            }),
        },
        other => Ok(Cow::Owned(other.to_string())),
    }
}
