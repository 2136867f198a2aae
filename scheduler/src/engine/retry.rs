//! `sluice retry RUN [--from STEP]`: a new run of an ended run's definition and params that
//! keeps the steps that succeeded (their records, outputs, metrics and artifacts, so the steps
//! after them find their inputs) and runs the others; `--from STEP` runs STEP and everything
//! downstream of it again too. The new run records the run it retries (`retry_of`).

use std::collections::{BTreeMap, BTreeSet};

use super::EngineError;
use crate::spec::{LoadedPipeline, Pipeline};
use crate::store::{RunRecord, StepRecord, StepStatus, Store};

/// The run retried and the steps kept from it.
#[derive(Debug, Clone)]
pub struct Retried {
    /// The run retried.
    pub run: String,
    /// Its succeeded steps that the new run keeps instead of running.
    pub kept: Vec<StepRecord>,
}

/// Everything a retry run is made from.
#[derive(Debug, Clone)]
pub struct RetryPlan {
    /// The earlier run.
    pub run: RunRecord,
    /// Its definition, as stored with it (not the file as it is now).
    pub loaded: LoadedPipeline,
    /// The steps that will run again, in file order.
    pub rerun: Vec<String>,
    /// What the new run keeps.
    pub retried: Retried,
}

/// Plans a retry of `run_id` (an id or a unique prefix).
pub fn plan(store: &Store, run_id: &str, from: Option<&str>) -> Result<RetryPlan, EngineError> {
    let run = super::driver::find_run(store, run_id)?;
    if !run.status.is_terminal() {
        return Err(EngineError::CannotRetry(format!(
            "run `{}` is still {}; retry it once it has ended (or cancel it first)",
            run.id,
            run.status.as_str()
        )));
    }
    let (definition, pipeline) = super::driver::stored_definition(store, &run)?;
    let steps: BTreeMap<String, StepRecord> = store
        .steps(&run.id)?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let rerun = steps_to_rerun(&pipeline, &steps, from).map_err(EngineError::CannotRetry)?;
    let own_steps = rerun.iter().filter(|n| {
        pipeline
            .steps
            .get(*n)
            .is_some_and(|s| !s.phase.is_handler())
    });
    if own_steps.count() == 0 {
        return Err(EngineError::CannotRetry(format!(
            "every step of run `{}` succeeded; nothing to retry (`--from STEP` runs a step and what follows it again)",
            run.id
        )));
    }
    let kept = pipeline
        .steps
        .keys()
        .filter(|name| !rerun.contains(*name))
        .filter_map(|name| steps.get(name).cloned())
        .collect();
    let loaded = LoadedPipeline {
        pipeline,
        text: definition.text,
        hash: definition.hash,
        path: definition.path,
    };
    let rerun = loaded
        .pipeline
        .steps
        .keys()
        .filter(|name| rerun.contains(*name))
        .cloned()
        .collect();
    Ok(RetryPlan {
        retried: Retried {
            run: run.id.clone(),
            kept,
        },
        run,
        loaded,
        rerun,
    })
}

/// The steps that did not succeed, `from` if given, and every step downstream of those.
fn steps_to_rerun(
    pipeline: &Pipeline,
    steps: &BTreeMap<String, StepRecord>,
    from: Option<&str>,
) -> Result<BTreeSet<String>, String> {
    // `on_failure:` and `finally:` steps run in every run, the retry too.
    let mut rerun: BTreeSet<String> = pipeline
        .steps
        .values()
        .filter(|s| {
            s.phase.is_handler()
                || steps.get(&s.name).map(|r| r.status) != Some(StepStatus::Succeeded)
        })
        .map(|s| s.name.clone())
        .collect();
    if let Some(from) = from {
        let named = pipeline.steps_named(from);
        if named.is_empty() {
            let names: Vec<&str> = pipeline.steps.keys().map(String::as_str).collect();
            return Err(format!(
                "`{from}` is not a step of `{}`; its steps are: {}",
                pipeline.name,
                names.join(", ")
            ));
        }
        rerun.extend(named.iter().map(|s| s.name.clone()));
    }
    // Downstream of anything that runs again runs again (its inputs change), to a fixed point.
    loop {
        let before = rerun.len();
        for step in pipeline.steps.values() {
            if step.depends.iter().any(|d| rerun.contains(d)) {
                rerun.insert(step.name.clone());
            }
        }
        if rerun.len() == before {
            return Ok(rerun);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        crate::spec::parse_str(
            "p.yaml",
            "name: p
steps:
  a: {run: x}
  b: {run: x, depends: [a]}
  c: {run: x, depends: [a]}
  d: {run: x, depends: [b, c]}
  e: {run: x}
",
        )
        .unwrap()
    }

    fn records(statuses: &[(&str, StepStatus)]) -> BTreeMap<String, StepRecord> {
        statuses
            .iter()
            .map(|(name, status)| {
                let record: StepRecord = serde_json::from_value(serde_json::json!({
                    "run_id": "r", "name": name, "index": 0, "status": status.as_str(),
                    "attempts": [], "outputs": {}, "metrics": {}
                }))
                .expect("a step record");
                (name.to_string(), record)
            })
            .collect()
    }

    #[test]
    fn what_did_not_succeed_and_what_follows_it_runs_again() {
        use StepStatus::*;
        let p = pipeline();
        let steps = records(&[
            ("a", Succeeded),
            ("b", Failed),
            ("c", Succeeded),
            ("d", Skipped),
            ("e", Succeeded),
        ]);
        let rerun = |from| steps_to_rerun(&p, &steps, from).unwrap();
        assert_eq!(rerun(None), BTreeSet::from(["b".into(), "d".into()]));
        assert_eq!(
            rerun(Some("c")),
            BTreeSet::from(["b".into(), "c".into(), "d".into()])
        );
        assert_eq!(rerun(Some("a")).len(), 4, "a and everything after it");
        let err = steps_to_rerun(&p, &steps, Some("z")).unwrap_err();
        assert_eq!(
            err,
            "`z` is not a step of `p`; its steps are: a, b, c, d, e"
        );
    }
}
