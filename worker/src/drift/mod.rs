//! `uses: drift`: per-column drift between a reference batch and a current batch of data,
//! run by the worker on files materialised under `$SLUICE_IN`.
//!
//! The scheduler validates the step's `with:` (file, line, did-you-mean) and sends it as a
//! [`DriftSpec`] in `TaskSpec.with`; the worker reads both files as streams ([`compare`]) and
//! returns `drift`, `drifted_columns` as the step's outputs and a [`DriftReport`] as its
//! metrics ([`DriftReport::outputs`], [`DriftReport::metrics`]).
//!
//! The statistics and their defaults are Evidently's (`evidently/legacy/calculations/
//! stattests/`, which call scipy): the same column gets the same method, score and verdict as
//! Evidently's `DataDriftPreset` would give it, except where noted on [`report::Statistic`] and
//! in [`stats`]. Failure contract: bad settings, a file that cannot be read, a missing column
//! or a value that is not what its column needs each fail the step with a message naming the
//! setting or the file, column and row; nothing is skipped, so "no drift" always means the
//! data was compared in full.
//!
//! Memory: categorical columns keep counts; numeric columns keep their values, at most
//! [`DriftOptions::memory_budget`] bytes of them at a time (see [`passes`]).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub mod error;
mod parquet;
pub mod passes;
pub mod report;
pub mod rows;
pub mod source;
pub mod stats;

pub use error::{DriftError, Role};
pub use report::{ColumnDrift, ColumnKind, DriftReport, Statistic};

use passes::{Column, DEFAULT_MEMORY_BUDGET};
use source::DataFile;

/// How the data files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// Comma-separated with a header line (RFC 4180 quoting).
    #[default]
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet (flat columns; Snappy, Zstandard, LZ4 or gzip compressed).
    Parquet,
}

/// The statistic a column is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriftMethod {
    /// Evidently's defaults: per column, by type and the reference's size.
    #[default]
    Auto,
    /// Population stability index, on Evidently's buckets (see [`stats::binning`]: numbers
    /// with more than 20 reference values in Sturges bins of both files together).
    Psi,
    /// Two-sample Kolmogorov-Smirnov test (p-value).
    Ks,
    /// Wasserstein distance normed by the reference's standard deviation.
    Wasserstein,
    /// Jensen-Shannon distance of the two distributions (categorical or binned numeric).
    JensenShannon,
    /// Chi-square test of the current counts against the reference's proportions (p-value).
    ChiSquare,
}

/// The `with:` of a `drift` step, as the worker receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSpec {
    /// The reference data: a path relative to `$SLUICE_IN` (`prep/reference.csv`,
    /// `models/reference/train.csv`) or an absolute path on the worker.
    pub reference: String,
    /// The current batch, the same way.
    pub current: String,
    /// How both files are written.
    #[serde(default)]
    pub format: DataFormat,
    /// Columns to compare; empty compares every column of the reference.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Columns compared as categories (the rest must be numeric).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// The statistic, for every column.
    #[serde(default)]
    pub method: DriftMethod,
    /// Overrides the method's default threshold.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// The dataset drifts when at least this share of the columns drift.
    #[serde(default = "default_drift_share")]
    pub drift_share: f64,
}

/// Evidently's default share of drifting columns for dataset drift.
pub fn default_drift_share() -> f64 {
    0.5
}

/// What [`compare`] needs besides the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftOptions {
    /// Bytes of numeric values kept at a time, both files together (default 160 MiB): more
    /// numeric data than this is read in column groups, a pass over the files per group.
    pub memory_budget: usize,
}

impl Default for DriftOptions {
    fn default() -> Self {
        DriftOptions {
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

impl DriftSpec {
    /// Refuses settings no data can make sense of: `drift_share` outside (0, 1], a negative or
    /// NaN `threshold`, a column listed twice.
    pub fn check(&self) -> Result<(), DriftError> {
        if !(self.drift_share > 0.0 && self.drift_share <= 1.0) {
            return Err(DriftError::DriftShare(self.drift_share));
        }
        if let Some(t) = self.threshold {
            if t.is_nan() || t < 0.0 {
                return Err(DriftError::Threshold(t));
            }
        }
        for (i, name) in self.columns.iter().enumerate() {
            if self.columns[..i].contains(name) {
                return Err(DriftError::DuplicateColumn(name.clone()));
            }
        }
        Ok(())
    }
}

/// Compares the spec's current file with its reference, paths relative to `in_dir`
/// (`$SLUICE_IN`). Blocks (run it on a blocking thread); stops with
/// [`DriftError::Cancelled`] soon after `cancel` fires.
pub fn compare(
    spec: &DriftSpec,
    in_dir: &Path,
    options: &DriftOptions,
    cancel: &CancellationToken,
) -> Result<DriftReport, DriftError> {
    spec.check()?;
    let reference = DataFile::open(in_dir, Role::Reference, &spec.reference, spec.format)?;
    let current = DataFile::open(in_dir, Role::Current, &spec.current, spec.format)?;
    let columns = compared_columns(spec, &reference, &current)?;
    for column in &columns {
        report::check_method(spec.method, column)?;
    }

    let mut scored: Vec<Option<ColumnDrift>> = vec![None; columns.len()];
    passes::collect(
        &reference,
        &current,
        &columns,
        options.memory_budget,
        cancel,
        |group, rows| {
            for (i, drift) in score_group(&columns, group, rows, spec, cancel)? {
                scored[i] = Some(drift);
            }
            Ok(())
        },
    )?;
    let scored: Vec<ColumnDrift> = scored.into_iter().flatten().collect();
    Ok(DriftReport::new(scored, spec.drift_share))
}

/// The compared columns, each checked to be in both files: `columns`, or every column of the
/// reference; `categorical` must name only those.
fn compared_columns(
    spec: &DriftSpec,
    reference: &DataFile,
    current: &DataFile,
) -> Result<Vec<Column>, DriftError> {
    let in_reference = rows::columns(reference)?;
    let in_current = rows::columns(current)?;
    let names = if spec.columns.is_empty() {
        in_reference.clone()
    } else {
        spec.columns.clone()
    };
    if names.is_empty() {
        return Err(DriftError::NoColumns(reference.name.clone()));
    }
    for (file, available) in [(reference, &in_reference), (current, &in_current)] {
        if let Some(missing) = names.iter().find(|n| !available.contains(n)) {
            return Err(DriftError::MissingColumn {
                file: file.name.clone(),
                column: missing.clone(),
                available: available.clone(),
            });
        }
    }
    if let Some(unknown) = spec.categorical.iter().find(|c| !names.contains(c)) {
        return Err(DriftError::UnknownCategorical {
            column: unknown.clone(),
            compared: names,
        });
    }
    Ok(names
        .into_iter()
        .map(|name| {
            let kind = if spec.categorical.contains(&name) {
                ColumnKind::Categorical
            } else {
                ColumnKind::Numeric
            };
            Column { name, kind }
        })
        .collect())
}

/// Scores a group of columns, on as many threads as the machine has cores (sorting a million
/// values is most of the work after reading).
fn score_group(
    columns: &[Column],
    group: Vec<(usize, passes::Samples)>,
    rows: passes::Rows,
    spec: &DriftSpec,
    cancel: &CancellationToken,
) -> Result<Vec<(usize, ColumnDrift)>, DriftError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(group.len())
        .max(1);
    let mut shares: Vec<Vec<(usize, passes::Samples)>> = (0..threads).map(|_| Vec::new()).collect();
    for (k, item) in group.into_iter().enumerate() {
        shares[k % threads].push(item);
    }
    let score_share = |share: Vec<(usize, passes::Samples)>| {
        share
            .into_iter()
            .map(|(i, samples)| {
                if cancel.is_cancelled() {
                    return Err(DriftError::Cancelled);
                }
                let drift =
                    report::score_column(&columns[i], samples, rows, spec.method, spec.threshold)?;
                Ok((i, drift))
            })
            .collect::<Result<Vec<_>, DriftError>>()
    };
    let results: Vec<Result<Vec<(usize, ColumnDrift)>, DriftError>> = std::thread::scope(|scope| {
        let mut shares = shares.into_iter();
        let own = shares.next().unwrap_or_default();
        let handles: Vec<_> = shares
            .map(|share| scope.spawn(move || score_share(share)))
            .collect();
        let mut results = vec![score_share(own)];
        for handle in handles {
            results.push(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        results
    });
    let mut scored = Vec::new();
    for result in results {
        scored.extend(result?);
    }
    Ok(scored)
}
