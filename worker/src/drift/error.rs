//! Why a drift step failed: each error names what to fix (the setting, or the file, column and
//! row of the bad value).

use std::fmt;

use crate::safe_fs::UnsafeFile;

/// Which of the two data files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `reference:`.
    Reference,
    /// `current:`.
    Current,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Reference => "reference",
            Role::Current => "current",
        })
    }
}

/// A data file, as messages name it: its role and the path the step gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// Reference or current.
    pub role: Role,
    /// The path as written in `with:`.
    pub path: String,
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} file `{}`", self.role, self.path)
    }
}

/// Where a row is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowAt {
    /// A CSV record: its number among the data rows (from 1, the header not counted) and the
    /// line it starts on (they differ after a header or a quoted line break).
    Csv {
        /// Data row, from 1.
        row: u64,
        /// Line, from 1.
        line: u64,
    },
    /// A JSON Lines line, from 1.
    Jsonl {
        /// Line, from 1.
        line: u64,
    },
    /// A Parquet row, from 1 (0: the file as a whole).
    Parquet {
        /// Row, from 1.
        row: u64,
    },
}

impl fmt::Display for RowAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowAt::Csv { row, line } => write!(f, "data row {row} (line {line})"),
            RowAt::Jsonl { line } => write!(f, "line {line}"),
            RowAt::Parquet { row: 0 } => f.write_str("its footer"),
            RowAt::Parquet { row } => write!(f, "row {row}"),
        }
    }
}

/// One value of one column of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellAt {
    /// The file.
    pub file: FileName,
    /// The column.
    pub column: String,
    /// The row.
    pub row: RowAt,
}

impl fmt::Display for CellAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column `{}`, {} of {}", self.column, self.row, self.file)
    }
}

/// Why `uses: drift` could not compare the files. Every one is a failure of the step, never a
/// verdict of "no drift".
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// `drift_share` is not in (0, 1].
    #[error("`drift_share` must be above 0 and at most 1, not {0}")]
    DriftShare(f64),
    /// `threshold` is negative or not a number.
    #[error("`threshold` must be a number of at least 0, not {0}")]
    Threshold(f64),
    /// A column is listed twice in `columns`.
    #[error("`columns` lists `{0}` twice")]
    DuplicateColumn(String),
    /// `categorical` names a column that is not compared.
    #[error(
        "`categorical` names `{column}`, which is not a compared column (compared: {})",
        .compared.join(", ")
    )]
    UnknownCategorical {
        /// The name in `categorical`.
        column: String,
        /// The compared columns.
        compared: Vec<String>,
    },
    /// A method that needs numbers was asked for a categorical column.
    #[error("method `{method}` compares numbers, and column `{column}` is categorical")]
    MethodNeedsNumbers {
        /// The method.
        method: &'static str,
        /// The column.
        column: String,
    },
    /// The path is empty or has a `..` component.
    #[error("the {role} path `{path}` must name a file under $SLUICE_IN, without `..`")]
    BadPath {
        /// Which path.
        role: Role,
        /// As given.
        path: String,
    },
    /// No file at the path.
    #[error("{0} does not exist")]
    NotFound(FileName),
    /// The file is a link, a FIFO or device, or could not be opened.
    #[error("cannot open {file}: {source}")]
    Open {
        /// The file.
        file: FileName,
        /// Why.
        #[source]
        source: UnsafeFile,
    },
    /// Reading failed.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: FileName,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not one byte (CSV) or not one non-blank line (JSON Lines).
    #[error("{0} is empty")]
    Empty(FileName),
    /// A header and no rows.
    #[error("{0} has a header but no rows")]
    NoRows(FileName),
    /// The CSV header is not UTF-8 or names a compared column twice.
    #[error("{file} has a bad header: {problem}")]
    BadHeader {
        /// The file.
        file: FileName,
        /// What is wrong with it.
        problem: String,
    },
    /// Every column is to be compared, and the reference has none (`{}` as the first object).
    #[error("{0} has no columns to compare")]
    NoColumns(FileName),
    /// A statistic came out infinite or NaN (values near the limits of `f64`).
    #[error("the {statistic} score of column `{column}` is not a finite number")]
    NotComputable {
        /// The column.
        column: String,
        /// The statistic's name.
        statistic: &'static str,
    },
    /// A compared column is not in a file.
    #[error("column `{column}` is not in {file}; its columns are: {}", .available.join(", "))]
    MissingColumn {
        /// The file.
        file: FileName,
        /// The column asked for.
        column: String,
        /// The columns the file has (the first object's keys, for JSON Lines).
        available: Vec<String>,
    },
    /// A CSV row with more or fewer fields than the header.
    #[error("{file}, {row}: {found} fields where the header has {expected}")]
    Ragged {
        /// The file.
        file: FileName,
        /// The row.
        row: RowAt,
        /// Fields in the row.
        found: u64,
        /// Fields in the header.
        expected: u64,
    },
    /// CSV that does not parse (or is not UTF-8 where text is needed).
    #[error("{file}, {row}: {problem}")]
    Malformed {
        /// The file.
        file: FileName,
        /// The row.
        row: RowAt,
        /// What is wrong.
        problem: String,
    },
    /// A JSON Lines line that is not an object.
    #[error("{file}, line {line}: not a JSON object")]
    NotAnObject {
        /// The file.
        file: FileName,
        /// The line, from 1.
        line: u64,
    },
    /// A JSON Lines line that is not JSON.
    #[error("{file}, line {line}: {source}")]
    BadJson {
        /// The file.
        file: FileName,
        /// The line, from 1.
        line: u64,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A value of a numeric column is not a number.
    #[error(
        "{at}: `{value}` is not a number (list the column in `categorical` to compare it as \
         categories)"
    )]
    NotANumber {
        /// The value.
        at: CellAt,
        /// Its text.
        value: String,
    },
    /// NaN or infinity in a numeric column.
    #[error("{at}: `{value}` is not a finite number")]
    NotFinite {
        /// The value.
        at: CellAt,
        /// Its text.
        value: String,
    },
    /// An empty CSV field, a JSON `null` or a missing key.
    #[error("{at}: the value is missing (drift does not guess what a missing value means)")]
    Missing {
        /// The value.
        at: CellAt,
    },
    /// A JSON array or object, or bytes that are not UTF-8, in a categorical column.
    #[error("{at}: {what} is not a category")]
    NotACategory {
        /// The value.
        at: CellAt,
        /// What it is instead.
        what: &'static str,
    },
    /// The row count changed between two reads of the same file.
    #[error("{file} changed while drift read it ({first} rows, then {then})")]
    Changed {
        /// The file.
        file: FileName,
        /// Rows on the first read.
        first: u64,
        /// Rows on a later read.
        then: u64,
    },
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
}
