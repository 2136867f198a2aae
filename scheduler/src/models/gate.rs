//! `uses: gate`: a quality gate over the metrics of earlier steps, with absolute thresholds
//! (`require`) and, against a registered version, the most each metric may fall behind it
//! (`max_regression`), after TFX Evaluator's value and change thresholds. Pure: the engine
//! hands in the metrics and the compared version and records the report.

use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{ModelRef, ModelVersion};

/// A comparison in a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Op {
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `==`
    #[serde(rename = "==")]
    Eq,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Eq => "==",
        }
    }

    /// Whether a larger value is the better one for a metric held to this comparison.
    fn higher_is_better(self) -> bool {
        !matches!(self, Op::Le | Op::Lt)
    }
}

/// `>= 0.9`: a metric's bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Threshold {
    /// How the value is compared.
    pub op: Op,
    /// With what.
    pub value: f64,
}

impl Threshold {
    /// Parses `>= 0.9`, `<50`, `== 1`.
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let text = text.trim();
        let ops = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        let Some((op, rest)) = ops
            .iter()
            .find_map(|(sign, op)| text.strip_prefix(sign).map(|rest| (*op, rest)))
        else {
            return Err(format!(
                "`{text}` is not a threshold: write a comparison and a number, as in `>= 0.9` or `<= 50`"
            ));
        };
        let value = rest
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("`{}` in threshold `{text}` is not a number", rest.trim()))?;
        Ok(Threshold { op, value })
    }

    fn holds(&self, value: f64) -> bool {
        match self.op {
            Op::Ge => value >= self.value,
            Op::Gt => value > self.value,
            Op::Le => value <= self.value,
            Op::Lt => value < self.value,
            Op::Eq => value == self.value,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.value)
    }
}

/// The `with:` of a `gate` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSpec {
    /// Steps whose metrics are judged; a metric is taken from the first listed step that has it.
    pub metrics_from: Vec<String>,
    /// Bounds each metric must meet.
    pub require: IndexMap<String, Threshold>,
    /// The version to compare with (`churn@production`); none compares nothing.
    pub compare_to: Option<ModelRef>,
    /// Most a metric may fall behind the compared version, in the metric's own units; which
    /// way is behind follows the metric's `require` bound (`>=` higher is better, `<=` lower
    /// is better; higher when it has none).
    pub max_regression: IndexMap<String, f64>,
}

/// How one metric fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateRow {
    /// The metric.
    pub metric: String,
    /// Its value in this run, when a step recorded it as a number.
    pub value: Option<f64>,
    /// Its bound, if it has one.
    pub threshold: Option<Threshold>,
    /// Its value in the compared version, when there is one with it.
    pub compared: Option<f64>,
    /// The most it may fall behind `compared`.
    pub max_regression: Option<f64>,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed, or what was not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A gate's verdict with a row per metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateReport {
    /// Whether every row passed.
    pub passed: bool,
    /// The version compared with (`churn:3 (churn@production)`), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compared_to: Option<String>,
    /// A row per metric, in the order `require` and then `max_regression` name them.
    pub rows: Vec<GateRow>,
}

impl GateReport {
    /// One line for people: what failed, or that it passed.
    pub fn summary(&self) -> String {
        if self.passed {
            return format!("gate passed ({} metrics)", self.rows.len());
        }
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r.passed)
            .map(|r| match &r.note {
                Some(note) => format!("{}: {note}", r.metric),
                None => r.metric.clone(),
            })
            .collect();
        format!("gate failed: {}", failed.join("; "))
    }
}

impl GateReport {
    /// The table people read (`sluice show`): a header and a row per metric with its value,
    /// bound, the compared version's value and the most it may fall behind, and the verdict.
    pub fn table(&self) -> Vec<String> {
        let number = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let mut cells: Vec<[String; 6]> = vec![[
            "METRIC".into(),
            "VALUE".into(),
            "THRESHOLD".into(),
            "COMPARED".into(),
            "MAX FALL".into(),
            "VERDICT".into(),
        ]];
        for row in &self.rows {
            let verdict = match (&row.note, row.passed) {
                (Some(note), false) => format!("fail: {note}"),
                (_, false) => "fail".to_string(),
                (Some(note), true) => format!("pass ({note})"),
                (None, true) => "pass".to_string(),
            };
            cells.push([
                row.metric.clone(),
                number(row.value),
                row.threshold
                    .as_ref()
                    .map_or_else(|| "-".into(), |t| t.to_string()),
                number(row.compared),
                number(row.max_regression),
                verdict,
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|i| cells.iter().map(|c| c[i].len()).max().unwrap_or(0))
            .collect();
        let mut lines = Vec::with_capacity(cells.len() + 1);
        if let Some(compared) = &self.compared_to {
            lines.push(format!("compared to {compared}"));
        }
        for c in &cells {
            lines.push(format!(
                "{:<w0$}  {:>w1$}  {:<w2$}  {:>w3$}  {:>w4$}  {}",
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                c[5],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4],
            ));
        }
        lines
    }
}

/// Judges `metrics` (each listed step's, in `metrics_from` order) against `spec`, and
/// against `compared` when there is a version to compare with.
pub fn evaluate(
    spec: &GateSpec,
    metrics: &IndexMap<String, serde_json::Map<String, serde_json::Value>>,
    compared: Option<&ModelVersion>,
) -> GateReport {
    let value_of = |name: &str| {
        spec.metrics_from
            .iter()
            .filter_map(|step| metrics.get(step))
            .find_map(|m| m.get(name))
    };
    let available = || {
        let mut names: Vec<&str> = metrics
            .values()
            .flat_map(|m| m.iter())
            .filter(|(_, v)| v.is_number())
            .map(|(k, _)| k.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let mut names: Vec<&String> = spec.require.keys().collect();
    names.extend(
        spec.max_regression
            .keys()
            .filter(|m| !spec.require.contains_key(*m)),
    );
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        let threshold = spec.require.get(name).copied();
        let allowed = spec.max_regression.get(name).copied();
        let raw = value_of(name);
        let value = raw.and_then(serde_json::Value::as_f64);
        let compared_value = compared.and_then(|v| v.metric(name));
        let mut row = GateRow {
            metric: name.clone(),
            value,
            threshold,
            compared: compared_value,
            max_regression: allowed,
            passed: true,
            note: None,
        };
        let Some(value) = value else {
            row.passed = false;
            row.note = Some(match raw {
                Some(other) => format!("recorded as {other}, not a number"),
                None => format!(
                    "missing from the metrics of {}; metrics recorded: {}",
                    spec.metrics_from.join(", "),
                    available()
                ),
            });
            rows.push(row);
            continue;
        };
        if let Some(threshold) = threshold.filter(|t| !t.holds(value)) {
            row.passed = false;
            row.note = Some(format!("{value} is not {threshold}"));
        }
        match (allowed, compared, compared_value) {
            (Some(allowed), Some(_), Some(before)) => {
                let higher = threshold.is_none_or(|t| t.op.higher_is_better());
                let fell = if higher {
                    before - value
                } else {
                    value - before
                };
                // A hair of float noise is not a regression.
                if fell > allowed + 1e-12 {
                    row.passed = false;
                    let text = format!(
                        "fell behind the compared {before} by {fell:.6} (at most {allowed})"
                    );
                    row.note = Some(match row.note.take() {
                        Some(first) => format!("{first}; {text}"),
                        None => text,
                    });
                }
            }
            (Some(_), Some(_), None) if row.passed => {
                row.note = Some("the compared version has no such metric; not compared".into());
            }
            (Some(_), None, _) if row.passed => {
                row.note = Some("no version to compare with; thresholds alone decide".into());
            }
            _ => {}
        }
        rows.push(row);
    }
    GateReport {
        passed: rows.iter().all(|r| r.passed),
        compared_to: compared.map(|v| format!("{}:{}", v.model, v.version)),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::models::Selector;

    fn spec(require: &[(&str, &str)], regression: &[(&str, f64)], compare: bool) -> GateSpec {
        GateSpec {
            metrics_from: vec!["validate".into(), "bench".into()],
            require: require
                .iter()
                .map(|(k, v)| (k.to_string(), Threshold::parse(v).unwrap()))
                .collect(),
            compare_to: compare.then(|| ModelRef {
                model: "churn".into(),
                selector: Selector::Alias("production".into()),
            }),
            max_regression: regression
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }

    fn metrics(
        steps: &[(&str, serde_json::Value)],
    ) -> IndexMap<String, serde_json::Map<String, serde_json::Value>> {
        steps
            .iter()
            .map(|(s, v)| (s.to_string(), v.as_object().unwrap().clone()))
            .collect()
    }

    fn version(metrics: serde_json::Value) -> ModelVersion {
        ModelVersion {
            model: "churn".into(),
            version: 3,
            artifact: sluice_worker::task::ArtifactRef::file("model.json", "a".repeat(64), 1),
            pipeline: "p".into(),
            run_id: "r".into(),
            step: "train".into(),
            registered_by: "register".into(),
            metrics: BTreeMap::from([(
                "validate".to_string(),
                metrics.as_object().unwrap().clone(),
            )]),
            params: BTreeMap::new(),
            training_data: Vec::new(),
            commit: None,
            image_digest: None,
            created_ms: 0,
        }
    }

    #[test]
    fn thresholds_parse_with_or_without_spaces_and_refuse_the_rest() {
        assert_eq!(
            Threshold::parse(">= 0.9").unwrap(),
            Threshold {
                op: Op::Ge,
                value: 0.9
            }
        );
        assert_eq!(Threshold::parse("<50").unwrap().op, Op::Lt);
        assert_eq!(Threshold::parse("== 1").unwrap().op, Op::Eq);
        for bad in ["0.9", "=> 0.9", ">= x", ">= NaN", ">= inf", ""] {
            assert!(Threshold::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn each_threshold_decides_its_row_and_the_first_listed_step_wins() {
        let cases = [
            (">= 0.9", 0.9, true),
            (">= 0.9", 0.89, false),
            ("> 0.9", 0.9, false),
            ("<= 50", 50.0, true),
            ("< 50", 50.0, false),
            ("== 1", 1.0, true),
        ];
        for (bound, value, passes) in cases {
            let m = metrics(&[
                ("validate", json!({"m": value})),
                ("bench", json!({"m": -1000})),
            ]);
            let report = evaluate(&spec(&[("m", bound)], &[], false), &m, None);
            assert_eq!(report.passed, passes, "{value} {bound}");
            assert_eq!(report.rows[0].value, Some(value));
        }
    }

    #[test]
    fn a_missing_metric_fails_and_lists_the_metrics_that_exist() {
        let m = metrics(&[(
            "validate",
            json!({"accuracy": 0.95, "f1": 0.9, "note": "x"}),
        )]);
        let report = evaluate(&spec(&[("auc", ">= 0.8")], &[], false), &m, None);
        assert!(!report.passed);
        let note = report.rows[0].note.as_deref().unwrap();
        assert!(
            note.contains("missing") && note.contains("accuracy, f1"),
            "{note}"
        );
        let m = metrics(&[("validate", json!({"auc": "high"}))]);
        let report = evaluate(&spec(&[("auc", ">= 0.8")], &[], false), &m, None);
        assert!(report.rows[0]
            .note
            .as_deref()
            .unwrap()
            .contains("not a number"));
    }

    #[test]
    fn regressions_follow_the_direction_of_the_metrics_bound() {
        let gate = spec(
            &[("accuracy", ">= 0.8"), ("latency", "<= 100")],
            &[("accuracy", 0.01), ("latency", 5.0)],
            true,
        );
        let before = version(json!({"accuracy": 0.92, "latency": 40}));
        // Accuracy fell by 0.015 (> 0.01); latency rose by 4 (< 5).
        let m = metrics(&[("validate", json!({"accuracy": 0.905, "latency": 44}))]);
        let report = evaluate(&gate, &m, Some(&before));
        assert!(!report.passed);
        assert!(!report.rows[0].passed && report.rows[1].passed);
        assert_eq!(report.rows[0].compared, Some(0.92));
        assert_eq!(report.compared_to.as_deref(), Some("churn:3"));
        // Within both allowances; a better value is never a regression.
        let m = metrics(&[("validate", json!({"accuracy": 0.95, "latency": 45}))]);
        assert!(evaluate(&gate, &m, Some(&before)).passed);
        let m = metrics(&[("validate", json!({"accuracy": 0.95, "latency": 46}))]);
        assert!(!evaluate(&gate, &m, Some(&before)).passed);
    }

    #[test]
    fn with_no_version_to_compare_thresholds_alone_decide() {
        let gate = spec(&[("accuracy", ">= 0.8")], &[("accuracy", 0.0)], true);
        let m = metrics(&[("validate", json!({"accuracy": 0.81}))]);
        let report = evaluate(&gate, &m, None);
        assert!(report.passed);
        assert!(report.rows[0]
            .note
            .as_deref()
            .unwrap()
            .contains("no version"));
        assert_eq!(report.compared_to, None);
    }
}
