//! `sluice run FILE --only a,b | --from X | --until Y`: run a part of the DAG.
//!
//! The steps a selected step depends on (directly or not) are not run: their records, outputs
//! and artifacts are kept from the newest earlier run of the same pipeline in which they
//! succeeded, as `sluice retry` keeps them (dbt's and DVC's way of running a slice against
//! what was built before); when none has, the run is refused and the message says which step
//! to add. Every other step is skipped, saying it was not selected.

use std::collections::{BTreeMap, BTreeSet};

use crate::spec::Pipeline;
use crate::store::{StepRecord, StepStatus, Store, StoreError};

/// Which steps to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Exactly these.
    Only(Vec<String>),
    /// From a step on (it and everything downstream), up to a step (it and everything
    /// upstream), or between the two.
    Range {
        /// `--from`.
        from: Option<String>,
        /// `--until`.
        until: Option<String>,
    },
}

impl Selection {
    /// How the flags read, for messages.
    pub fn describe(&self) -> String {
        match self {
            Selection::Only(names) => format!("--only {}", names.join(",")),
            Selection::Range { from, until } => [
                from.as_ref().map(|f| format!("--from {f}")),
                until.as_ref().map(|u| format!("--until {u}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
        }
    }
}

/// Why a subset cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SubsetError {
    /// A name that is no step, an empty selection, or an input no earlier run has.
    #[error("{0}")]
    Refused(String),
    /// Reading the earlier runs failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most earlier runs looked at for kept steps (newest first).
const RUNS_SEARCHED: usize = 5_000;

/// The steps `selection` runs, checked against the pipeline's steps.
pub fn selected(pipeline: &Pipeline, selection: &Selection) -> Result<BTreeSet<String>, String> {
    // A name is a step, or every expansion of a step written with `matrix:`.
    let resolve = |name: &String| -> Result<Vec<String>, String> {
        let steps = pipeline.steps_named(name);
        if !steps.is_empty() {
            return Ok(steps.iter().map(|s| s.name.clone()).collect());
        }
        let names: Vec<&str> = pipeline.steps.keys().map(String::as_str).collect();
        Err(format!(
            "`{name}` is not a step of `{}`; its steps are: {}",
            pipeline.name,
            names.join(", ")
        ))
    };
    let around = |name: &String, direction: Direction| -> Result<BTreeSet<String>, String> {
        let mut out = BTreeSet::new();
        for step in resolve(name)? {
            out.extend(closure(pipeline, &step, direction));
        }
        Ok(out)
    };
    let mut chosen: BTreeSet<String> = match selection {
        Selection::Only(names) => {
            let mut chosen = BTreeSet::new();
            for name in names {
                chosen.extend(resolve(name)?);
            }
            chosen
        }
        Selection::Range { from, until } => {
            let mut chosen: BTreeSet<String> = pipeline.steps.keys().cloned().collect();
            if let Some(from) = from {
                chosen = around(from, Direction::Down)?;
            }
            if let Some(until) = until {
                let upstream = around(until, Direction::Up)?;
                chosen.retain(|n| upstream.contains(n));
            }
            chosen
        }
    };
    // `on_failure:` and `finally:` steps are not selected: they run in every run.
    chosen.retain(|n| pipeline.steps.get(n).is_some_and(|s| !s.phase.is_handler()));
    if chosen.is_empty() {
        return Err(format!(
            "{} selects no step (`{}` is not downstream of the `--from` step)",
            selection.describe(),
            match selection {
                Selection::Range { until: Some(u), .. } => u.as_str(),
                _ => "",
            }
        ));
    }
    Ok(chosen)
}

/// The records of the steps a subset does not run: kept successes for those the selected steps
/// need, skips for the rest. `run_id` is the new run's (records are rewritten for it later).
pub fn prior(
    store: &Store,
    pipeline: &Pipeline,
    chosen: &BTreeSet<String>,
    selection: &Selection,
) -> Result<Vec<StepRecord>, SubsetError> {
    let needed = needed_by(pipeline, chosen);
    let mut kept: BTreeMap<String, StepRecord> = BTreeMap::new();
    let mut before: Option<String> = None;
    let mut searched = 0;
    while kept.len() < needed.len() && searched < RUNS_SEARCHED {
        let page = store.list_runs(500, before.as_deref())?;
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        searched += page.len();
        for run in page.iter().filter(|r| r.pipeline == pipeline.name) {
            let wanted: Vec<&String> = needed.iter().filter(|n| !kept.contains_key(*n)).collect();
            for name in wanted {
                if let Some(step) = store
                    .step(&run.id, name)?
                    .filter(|s| s.status == StepStatus::Succeeded)
                {
                    kept.insert(name.clone(), step);
                }
            }
        }
    }
    let missing: Vec<&String> = needed.iter().filter(|n| !kept.contains_key(*n)).collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|n| n.as_str()).collect();
        return Err(SubsetError::Refused(format!(
            "no earlier run of `{}` has a successful {}, which the selected steps need; select {} too, or run the whole pipeline once",
            pipeline.name,
            names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
            if names.len() == 1 { "it" } else { "them" }
        )));
    }
    let reason = format!("not selected ({})", selection.describe());
    let skipped = pipeline
        .steps
        .values()
        .filter(|s| !s.phase.is_handler())
        .filter(|s| !chosen.contains(&s.name) && !needed.contains(&s.name))
        .map(|s| skipped_record(&s.name, &reason));
    Ok(kept.into_values().chain(skipped).collect())
}

/// The steps the `chosen` ones depend on, directly or not, that are not chosen themselves:
/// a subset keeps their results from an earlier run.
pub fn needed_by(pipeline: &Pipeline, chosen: &BTreeSet<String>) -> BTreeSet<String> {
    let mut needed = BTreeSet::new();
    for name in chosen {
        needed.extend(closure(pipeline, name, Direction::Up));
    }
    needed.retain(|n| !chosen.contains(n));
    needed
}

fn skipped_record(name: &str, reason: &str) -> StepRecord {
    StepRecord {
        status: StepStatus::Skipped,
        reason: Some(reason.to_string()),
        ..StepRecord::pending("", name, 0)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// `start` and every step upstream (or downstream) of it.
fn closure(pipeline: &Pipeline, start: &str, direction: Direction) -> BTreeSet<String> {
    let mut seen = BTreeSet::from([start.to_string()]);
    let mut todo = vec![start.to_string()];
    while let Some(name) = todo.pop() {
        let next: Vec<String> = match direction {
            Direction::Up => pipeline
                .steps
                .get(&name)
                .map(|s| s.depends.clone())
                .unwrap_or_default(),
            Direction::Down => pipeline
                .steps
                .values()
                .filter(|s| s.depends.contains(&name))
                .map(|s| s.name.clone())
                .collect(),
        };
        for n in next {
            if seen.insert(n.clone()) {
                todo.push(n);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        crate::spec::parse_str(
            "p.yaml",
            "name: p
steps:
  ingest: {run: x}
  train: {run: x, depends: [ingest]}
  validate: {run: x, depends: [train]}
  report: {run: x, depends: [validate]}
  lint: {run: x}
",
        )
        .unwrap()
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn only_from_and_until_select_the_steps_people_expect() {
        let p = pipeline();
        let s = |sel: Selection| selected(&p, &sel).map(|set| names(&set).join(" "));
        let range = |from: Option<&str>, until: Option<&str>| Selection::Range {
            from: from.map(Into::into),
            until: until.map(Into::into),
        };
        assert_eq!(
            s(Selection::Only(vec!["train".into(), "lint".into()])).unwrap(),
            "lint train"
        );
        assert_eq!(
            s(range(Some("train"), None)).unwrap(),
            "report train validate"
        );
        assert_eq!(s(range(None, Some("train"))).unwrap(), "ingest train");
        assert_eq!(
            s(range(Some("train"), Some("validate"))).unwrap(),
            "train validate"
        );
        assert!(s(range(Some("validate"), Some("train")))
            .unwrap_err()
            .contains("selects no step"));
        assert_eq!(
            s(Selection::Only(vec!["trian".into()])).unwrap_err(),
            "`trian` is not a step of `p`; its steps are: ingest, train, validate, report, lint"
        );
    }
}
