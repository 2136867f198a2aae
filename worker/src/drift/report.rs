//! Choosing each column's statistic (Evidently's defaults for `method: auto`), scoring the
//! column, and the report the step returns as outputs and metrics.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::DriftError;
use super::passes::{Column, Rows, Samples};
use super::stats::binning::{self, Shares};
use super::stats::sorted::merged_steps;
use super::stats::{counts, distance, ks};
use super::DriftMethod;

/// How a column's values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// Finite numbers.
    Numeric,
    /// Labels, compared by their counts.
    Categorical,
}

/// The statistic a column was scored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Two-sample Kolmogorov-Smirnov p-value.
    Ks,
    /// Wasserstein distance over the reference's standard deviation.
    Wasserstein,
    /// Jensen-Shannon distance of the bucket shares.
    JensenShannon,
    /// Chi-square test p-value.
    ChiSquare,
    /// Population stability index.
    Psi,
    /// Two-proportion z-test p-value (`auto`, two values).
    ZTest,
}

impl Statistic {
    /// Its name in metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Statistic::Ks => "ks",
            Statistic::Wasserstein => "wasserstein",
            Statistic::JensenShannon => "jensen_shannon",
            Statistic::ChiSquare => "chi_square",
            Statistic::Psi => "psi",
            Statistic::ZTest => "z_test",
        }
    }

    /// Evidently's default threshold: 0.05 for p-values, 0.1 for distances.
    pub fn default_threshold(self) -> f64 {
        match self {
            Statistic::Ks | Statistic::ChiSquare | Statistic::ZTest => 0.05,
            Statistic::Wasserstein | Statistic::JensenShannon | Statistic::Psi => 0.1,
        }
    }

    /// Whether `score` is drift at `threshold`, with Evidently's comparisons: a KS p-value at
    /// or below it (`ks_stattest.py` says `<=`), a chi-square or z p-value below it, a
    /// distance at or above it.
    pub fn drifted(self, score: f64, threshold: f64) -> bool {
        match self {
            Statistic::Ks => score <= threshold,
            Statistic::ChiSquare | Statistic::ZTest => score < threshold,
            Statistic::Wasserstein | Statistic::JensenShannon | Statistic::Psi => {
                score >= threshold
            }
        }
    }

    /// The statistic `method` names, for methods that name one.
    fn of(method: DriftMethod) -> Option<Statistic> {
        match method {
            DriftMethod::Auto => None,
            DriftMethod::Psi => Some(Statistic::Psi),
            DriftMethod::Ks => Some(Statistic::Ks),
            DriftMethod::Wasserstein => Some(Statistic::Wasserstein),
            DriftMethod::JensenShannon => Some(Statistic::JensenShannon),
            DriftMethod::ChiSquare => Some(Statistic::ChiSquare),
        }
    }
}

/// Refuses a method that cannot compare a categorical column.
pub fn check_method(method: DriftMethod, column: &Column) -> Result<(), DriftError> {
    match (Statistic::of(method), column.kind) {
        (Some(s @ (Statistic::Ks | Statistic::Wasserstein)), ColumnKind::Categorical) => {
            Err(DriftError::MethodNeedsNumbers {
                method: s.as_str(),
                column: column.name.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// Evidently's default statistic (`_get_default_stattest` in
/// `evidently/legacy/calculations/stattests/registry.py`): by the reference's row count and
/// the number of distinct values in both files together.
///
/// | reference rows | numeric, <= 5 values        | numeric     | categorical                 |
/// |----------------|-----------------------------|-------------|-----------------------------|
/// | <= 1000        | chi-square (z-test if <= 2) | KS          | chi-square (z-test if <= 2) |
/// | > 1000         | Jensen-Shannon              | Wasserstein | Jensen-Shannon              |
pub fn auto_statistic(kind: ColumnKind, reference_rows: u64, distinct_values: usize) -> Statistic {
    let by_count = if distinct_values > 2 {
        Statistic::ChiSquare
    } else {
        Statistic::ZTest
    };
    match (kind, reference_rows <= 1000) {
        (ColumnKind::Numeric, true) if distinct_values <= 5 => by_count,
        (ColumnKind::Numeric, true) => Statistic::Ks,
        (ColumnKind::Numeric, false) if distinct_values <= 5 => Statistic::JensenShannon,
        (ColumnKind::Numeric, false) => Statistic::Wasserstein,
        (ColumnKind::Categorical, true) => by_count,
        (ColumnKind::Categorical, false) => Statistic::JensenShannon,
    }
}

/// One column's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    /// The column.
    pub name: String,
    /// Numeric or categorical.
    pub kind: ColumnKind,
    /// The statistic used.
    pub method: Statistic,
    /// Its value: a p-value or a distance.
    pub score: f64,
    /// The threshold it was held to.
    pub threshold: f64,
    /// Whether the column drifted.
    pub drifted: bool,
}

/// Scores one column. `samples` numeric values are sorted here.
pub fn score_column(
    column: &Column,
    samples: Samples,
    rows: Rows,
    method: DriftMethod,
    threshold: Option<f64>,
) -> Result<ColumnDrift, DriftError> {
    let (n_ref, n_cur) = (rows.reference, rows.current);
    let (statistic, score) = match samples {
        Samples::Numeric {
            mut reference,
            mut current,
        } => {
            reference.sort_unstable_by(f64::total_cmp);
            current.sort_unstable_by(f64::total_cmp);
            let (a, b) = (&reference[..], &current[..]);
            let pairs = || merged_steps(a, b).map(|s| (s.in_a, s.in_b));
            let statistic = Statistic::of(method)
                .unwrap_or_else(|| auto_statistic(column.kind, n_ref, pairs().count()));
            let score = match statistic {
                Statistic::Ks => ks::p_value(a, b),
                Statistic::Wasserstein => distance::wasserstein_normed(a, b),
                Statistic::JensenShannon => distance::jensen_shannon(&binning::numeric(a, b)),
                Statistic::Psi => distance::psi(&binning::numeric(a, b)),
                Statistic::ChiSquare => {
                    counts::chi_square(&pairs().collect::<Vec<_>>(), n_ref, n_cur)
                }
                Statistic::ZTest => counts::z_test(&pairs().collect::<Vec<_>>(), n_ref, n_cur),
            };
            (statistic, score)
        }
        Samples::Categorical { reference, current } => {
            let pairs = category_pairs(&reference, &current);
            let statistic = Statistic::of(method)
                .unwrap_or_else(|| auto_statistic(column.kind, n_ref, pairs.len()));
            let shares = || Shares::from_counts(pairs.iter().copied(), n_ref, n_cur);
            let score = match statistic {
                Statistic::JensenShannon => distance::jensen_shannon(&shares()),
                Statistic::Psi => distance::psi(&shares()),
                Statistic::ChiSquare => counts::chi_square(&pairs, n_ref, n_cur),
                Statistic::ZTest => counts::z_test(&pairs, n_ref, n_cur),
                Statistic::Ks | Statistic::Wasserstein => {
                    return Err(DriftError::MethodNeedsNumbers {
                        method: statistic.as_str(),
                        column: column.name.clone(),
                    })
                }
            };
            (statistic, score)
        }
    };
    if !score.is_finite() {
        return Err(DriftError::NotComputable {
            column: column.name.clone(),
            statistic: statistic.as_str(),
        });
    }
    let threshold = threshold.unwrap_or_else(|| statistic.default_threshold());
    Ok(ColumnDrift {
        name: column.name.clone(),
        kind: column.kind,
        method: statistic,
        score,
        threshold,
        drifted: statistic.drifted(score, threshold),
    })
}

/// `(reference count, current count)` per category of either file, in the categories' order.
fn category_pairs(
    reference: &HashMap<String, u64>,
    current: &HashMap<String, u64>,
) -> Vec<(u64, u64)> {
    let mut names: Vec<&String> = reference.keys().chain(current.keys()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let count = |map: &HashMap<String, u64>| map.get(name).copied().unwrap_or(0);
            (count(reference), count(current))
        })
        .collect()
}

/// What `uses: drift` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Whether the dataset drifted: drifted columns / compared columns >= `drift_share`.
    pub drift: bool,
    /// The share of compared columns that drifted.
    pub drift_share: f64,
    /// Every compared column, in column order.
    pub columns: Vec<ColumnDrift>,
}

impl DriftReport {
    /// The report of `columns` (in order) against the dataset's `drift_share`.
    pub fn new(columns: Vec<ColumnDrift>, drift_share: f64) -> DriftReport {
        let share = columns.iter().filter(|c| c.drifted).count() as f64 / columns.len() as f64;
        DriftReport {
            drift: share >= drift_share,
            drift_share: share,
            columns,
        }
    }

    /// The names of the drifted columns, in column order.
    pub fn drifted_columns(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|c| c.drifted)
            .map(|c| c.name.as_str())
    }

    /// The step's outputs: `drift` (`true`/`false`) and `drifted_columns` (comma-separated,
    /// empty when none).
    pub fn outputs(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("drift".to_owned(), self.drift.to_string()),
            (
                "drifted_columns".to_owned(),
                self.drifted_columns().collect::<Vec<_>>().join(","),
            ),
        ])
    }

    /// The step's metrics: `drift`, `drift_share`, `drifted_columns` (a count) and `columns`
    /// (name to method, score, threshold, drifted, kind).
    pub fn metrics(&self) -> serde_json::Map<String, Value> {
        let columns: serde_json::Map<String, Value> = self
            .columns
            .iter()
            .map(|c| {
                let entry = json!({
                    "method": c.method.as_str(),
                    "score": c.score,
                    "threshold": c.threshold,
                    "drifted": c.drifted,
                    "kind": c.kind,
                });
                (c.name.clone(), entry)
            })
            .collect();
        let mut metrics = serde_json::Map::new();
        metrics.insert("drift".into(), Value::Bool(self.drift));
        metrics.insert("drift_share".into(), json!(self.drift_share));
        metrics.insert(
            "drifted_columns".into(),
            json!(self.drifted_columns().count()),
        );
        metrics.insert("columns".into(), Value::Object(columns));
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_evidently_registry() {
        use ColumnKind::*;
        use Statistic::*;
        assert_eq!(auto_statistic(Numeric, 1000, 6), Ks);
        assert_eq!(auto_statistic(Numeric, 1000, 5), ChiSquare);
        assert_eq!(auto_statistic(Numeric, 1000, 2), ZTest);
        assert_eq!(auto_statistic(Numeric, 1001, 6), Wasserstein);
        assert_eq!(auto_statistic(Numeric, 1001, 5), JensenShannon);
        assert_eq!(auto_statistic(Categorical, 1000, 3), ChiSquare);
        assert_eq!(auto_statistic(Categorical, 10, 2), ZTest);
        assert_eq!(auto_statistic(Categorical, 1001, 2), JensenShannon);
    }

    #[test]
    fn verdicts_use_evidently_comparisons() {
        assert!(Statistic::Ks.drifted(0.05, 0.05));
        assert!(!Statistic::ChiSquare.drifted(0.05, 0.05));
        assert!(Statistic::Psi.drifted(0.1, 0.1));
        assert!(!Statistic::Wasserstein.drifted(0.099, 0.1));
    }

    #[test]
    fn report_outputs_and_metrics() {
        let column = |name: &str, drifted| ColumnDrift {
            name: name.into(),
            kind: ColumnKind::Numeric,
            method: Statistic::Ks,
            score: 0.5,
            threshold: 0.05,
            drifted,
        };
        let report = DriftReport::new(
            vec![column("b", true), column("a", false), column("c", true)],
            0.5,
        );
        assert!(report.drift);
        assert_eq!(report.outputs()["drifted_columns"], "b,c");
        let metrics = report.metrics();
        assert_eq!(metrics["drifted_columns"], json!(2));
        assert_eq!(metrics["drift_share"], json!(2.0 / 3.0));
        assert_eq!(
            metrics["columns"]["a"],
            json!({
                "method": "ks",
                "score": 0.5,
                "threshold": 0.05,
                "drifted": false,
                "kind": "numeric",
            })
        );
        let none = DriftReport::new(vec![column("a", false)], 0.5);
        assert_eq!(none.outputs()["drifted_columns"], "");
        assert_eq!(none.outputs()["drift"], "false");
    }
}
