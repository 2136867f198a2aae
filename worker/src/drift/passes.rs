//! Reading both files into what the statistics need, within a memory budget.
//!
//! A categorical column needs only its category counts. A numeric column needs every value of
//! both files (KS and Wasserstein work on the sorted samples, and the buckets of Jensen-Shannon
//! and PSI come from both files' range and the reference's distinct values), 8 bytes a row.
//! 1 000 000 rows of 20 numeric columns in both files would be 320 MB, so numeric columns are
//! taken a group at a time, each group on its own read of the files:
//!
//! - The first pass reads both files at once (one thread each), checks every value of every
//!   compared column, counts categories and row counts, and keeps the values of as many numeric
//!   columns as fit in half the budget per file: when the kept values outgrow it, the last kept
//!   columns are dropped (they are read again later).
//! - Each later pass, knowing the row counts, reads as many of the remaining numeric columns as
//!   fit in the whole budget, into vectors allocated once at their final size.
//!
//! Small files take one pass; the benchmark's 1 000 000 x 20 takes two with the default budget.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::error::{CellAt, DriftError, RowAt};
use super::report::ColumnKind;
use super::rows::{self, CHECK_EVERY};
use super::source::DataFile;

/// Default bytes for kept numeric values, both files together.
pub const DEFAULT_MEMORY_BUDGET: usize = 160 << 20;

/// A compared column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name in both files.
    pub name: String,
    /// Numbers or categories.
    pub kind: ColumnKind,
}

/// What one column was reduced to.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    /// Every value of each file (not yet sorted).
    Numeric {
        /// The reference's values.
        reference: Vec<f64>,
        /// The current file's values.
        current: Vec<f64>,
    },
    /// How often each category occurs in each file.
    Categorical {
        /// In the reference.
        reference: HashMap<String, u64>,
        /// In the current file.
        current: HashMap<String, u64>,
    },
}

/// Rows in each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// In the reference.
    pub reference: u64,
    /// In the current file.
    pub current: u64,
}

/// Reads both files and gives `ready` the samples of every column (with its index in
/// `columns`), a group at a time; a group's samples are dropped before the next is read.
pub fn collect(
    reference: &DataFile,
    current: &DataFile,
    columns: &[Column],
    budget: usize,
    cancel: &CancellationToken,
    mut ready: impl FnMut(Vec<(usize, Samples)>, Rows) -> Result<(), DriftError>,
) -> Result<(), DriftError> {
    let half = budget / 2;
    let (first_ref, first_cur) = both(
        cancel,
        |stop| first_pass(reference, columns, half, stop),
        |stop| first_pass(current, columns, half, stop),
    )?;
    let rows = Rows {
        reference: first_ref.rows,
        current: first_cur.rows,
    };
    let mut group = Vec::new();
    let mut later = Vec::new();
    let parts = first_ref.kept.into_iter().zip(first_cur.kept);
    let counts = first_ref.counts.into_iter().zip(first_cur.counts);
    for (i, ((kept_ref, kept_cur), (count_ref, count_cur))) in parts.zip(counts).enumerate() {
        match (kept_ref, kept_cur, count_ref, count_cur) {
            (Some(reference), Some(current), _, _) => {
                group.push((i, Samples::Numeric { reference, current }))
            }
            (_, _, Some(reference), Some(current)) => {
                group.push((i, Samples::Categorical { reference, current }))
            }
            _ => later.push(i),
        }
    }
    ready(group, rows)?;

    let per_column = (rows.reference + rows.current).saturating_mul(8).max(1);
    let group_size = usize::try_from((budget as u64) / per_column)
        .unwrap_or(usize::MAX)
        .max(1);
    for chunk in later.chunks(group_size) {
        let (values_ref, values_cur) = both(
            cancel,
            |stop| later_pass(reference, columns, chunk, rows.reference, stop),
            |stop| later_pass(current, columns, chunk, rows.current, stop),
        )?;
        let group = chunk
            .iter()
            .zip(values_ref.into_iter().zip(values_cur))
            .map(|(i, (reference, current))| (*i, Samples::Numeric { reference, current }))
            .collect();
        ready(group, rows)?;
    }
    Ok(())
}

/// Runs the reads of both files on two threads (the reference's on this one); when one fails,
/// the other is told to stop, and the failure (not the stop) is the result.
fn both<A: Send, B: Send>(
    cancel: &CancellationToken,
    read_ref: impl FnOnce(&CancellationToken) -> Result<A, DriftError>,
    read_cur: impl FnOnce(&CancellationToken) -> Result<B, DriftError> + Send,
) -> Result<(A, B), DriftError> {
    let stop = cancel.child_token();
    let (first, second) = std::thread::scope(|scope| {
        let current = scope.spawn(|| {
            let result = read_cur(&stop);
            if result.is_err() {
                stop.cancel();
            }
            result
        });
        let reference = read_ref(&stop);
        if reference.is_err() {
            stop.cancel();
        }
        let current = current
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (reference, current)
    });
    match (first, second) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(DriftError::Cancelled), Err(e)) if !cancel.is_cancelled() => Err(e),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// What the first read of a file found.
struct FirstPass {
    rows: u64,
    /// Per column: the values of a numeric column that stayed within the budget.
    kept: Vec<Option<Vec<f64>>>,
    /// Per column: the category counts of a categorical column.
    counts: Vec<Option<HashMap<String, u64>>>,
}

fn first_pass(
    file: &DataFile,
    columns: &[Column],
    limit: usize,
    cancel: &CancellationToken,
) -> Result<FirstPass, DriftError> {
    let wanted: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let is = |kind| columns.iter().map(move |c| c.kind == kind);
    let mut kept: Vec<Option<Vec<f64>>> =
        is(ColumnKind::Numeric).map(|n| n.then(Vec::new)).collect();
    let mut counts: Vec<Option<HashMap<String, u64>>> = is(ColumnKind::Categorical)
        .map(|c| c.then(HashMap::new))
        .collect();
    let mut seen = 0u64;
    let rows = rows::scan(file, &wanted, cancel, |at, row| {
        seen += 1;
        for (i, column) in columns.iter().enumerate() {
            let here = || cell_at(file, column, at);
            match column.kind {
                ColumnKind::Numeric => {
                    let value = rows::number(row.cell(i), here)?;
                    if let Some(values) = &mut kept[i] {
                        values.push(value);
                    }
                }
                ColumnKind::Categorical => {
                    let category = rows::category(row.cell(i), here)?;
                    if let Some(counts) = &mut counts[i] {
                        match counts.get_mut(category.as_ref()) {
                            Some(n) => *n += 1,
                            None => {
                                counts.insert(category.into_owned(), 1);
                            }
                        }
                    }
                }
            }
        }
        if seen % CHECK_EVERY == 0 {
            keep_within(&mut kept, limit);
        }
        Ok(())
    })?;
    keep_within(&mut kept, limit);
    Ok(FirstPass { rows, kept, counts })
}

/// Drops the last kept columns while the kept values take more than `limit` bytes, keeping at
/// least one (a column that alone is over the budget still has to be compared).
fn keep_within(kept: &mut [Option<Vec<f64>>], limit: usize) {
    let bytes = |kept: &[Option<Vec<f64>>]| -> usize {
        kept.iter().flatten().map(|v| v.capacity() * 8).sum()
    };
    while bytes(kept) > limit && kept.iter().flatten().count() > 1 {
        if let Some(last) = kept.iter_mut().rev().find(|v| v.is_some()) {
            *last = None;
        }
    }
}

fn later_pass(
    file: &DataFile,
    columns: &[Column],
    group: &[usize],
    expected_rows: u64,
    cancel: &CancellationToken,
) -> Result<Vec<Vec<f64>>, DriftError> {
    let wanted: Vec<&str> = group.iter().map(|i| columns[*i].name.as_str()).collect();
    let capacity = usize::try_from(expected_rows).unwrap_or(0);
    let mut values: Vec<Vec<f64>> = group.iter().map(|_| Vec::with_capacity(capacity)).collect();
    let changed = |then| DriftError::Changed {
        file: file.name.clone(),
        first: expected_rows,
        then,
    };
    let mut seen = 0u64;
    let rows = rows::scan(file, &wanted, cancel, |at, row| {
        seen += 1;
        if seen > expected_rows {
            return Err(changed(seen));
        }
        for (k, i) in group.iter().enumerate() {
            let value = rows::number(row.cell(k), || cell_at(file, &columns[*i], at))?;
            values[k].push(value);
        }
        Ok(())
    })?;
    if rows != expected_rows {
        return Err(changed(rows));
    }
    Ok(values)
}

fn cell_at(file: &DataFile, column: &Column, row: RowAt) -> CellAt {
    CellAt {
        file: file.name.clone(),
        column: column.name.clone(),
        row,
    }
}
