//! `after:` triggers: the daemon reads the store's feed of finished runs, lets each trigger
//! that follows their pipeline decide on them (see [`crate::triggers::after`]), starts the
//! runs they ask for, and takes the runs out of the feed once every trigger has decided.
//!
//! Exactly once: a trigger's state, which names the runs it decided on, is committed with the
//! run a decision starts (one commit), and that run's id is derived from the followed run, so
//! a daemon killed anywhere in between decides the same again and finds the run it started.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;
use sluice_worker::task::now_ms;

use super::{Daemon, Origin, Started, TriggerError};
use crate::metrics::TriggerKind;
use crate::spec::condition::Operand;
use crate::spec::{AfterTrigger, RunValue, Trigger};
use crate::store::{Changes, RunRecord, StoreError, TriggerOrigin};
use crate::triggers::after::{self, AfterMark, Decision, Finished};

/// Decides on every run in the feed of finished runs; a no-op when the feed is empty.
pub(super) fn follow_finished_runs(daemon: &Arc<Daemon>) {
    if let Err(err) = follow(daemon) {
        tracing::error!(error = %err, "Following finished runs for `after:` triggers failed; it is tried again.");
    }
}

/// Arms the `after:` triggers seen for the first time (at start and on reload), so runs that
/// finish from the moment their pipeline is loaded count.
pub(super) fn arm_new_triggers(daemon: &Daemon) {
    if let Err(err) = states(daemon) {
        tracing::error!(error = %err, "Cannot record the state of new `after:` triggers; they are armed at the next look.");
    }
}

/// Each `after:` trigger with its state, armed (and committed) the first time it is seen: runs
/// that finish from then on count, even if this daemon stops before it decides on them.
fn states(daemon: &Daemon) -> Result<Vec<(String, AfterTrigger, String, AfterMark)>, StoreError> {
    let store = &daemon.engine.store;
    let triggers: Vec<(String, AfterTrigger)> = daemon.with_catalog(|c| {
        c.pipelines
            .values()
            .flat_map(|loaded| {
                loaded.pipeline.triggers.iter().filter_map(|t| match t {
                    Trigger::After(after) => {
                        Some((loaded.pipeline.name.clone(), after.as_ref().clone()))
                    }
                    _ => None,
                })
            })
            .collect()
    });
    let mut states = Vec::with_capacity(triggers.len());
    for (pipeline, trigger) in triggers {
        let key = after::mark_key(&pipeline, &trigger);
        let mark = match store.mark::<AfterMark>(&key)? {
            Some(mark) => mark,
            None => {
                let mark = AfterMark::armed(now_ms());
                let mut changes = Changes::default();
                changes.put_mark(&key, &mark);
                store.commit(&changes)?;
                mark
            }
        };
        states.push((pipeline, trigger, key, mark));
    }
    Ok(states)
}

fn follow(daemon: &Arc<Daemon>) -> Result<(), StoreError> {
    let store = &daemon.engine.store;
    let states = states(daemon)?;
    let feed = store.finished_feed()?;
    if feed.is_empty() {
        return Ok(());
    }
    let mut runs: Vec<RunRecord> = Vec::with_capacity(feed.len());
    for id in &feed {
        // A run removed by `gc` since it finished has nothing left to decide on.
        if let Some(run) = store.run(id)?.filter(|r| r.status.is_terminal()) {
            runs.push(run);
        }
    }
    runs.sort_by(|a, b| (finished_ms(a), &a.id).cmp(&(finished_ms(b), &b.id)));
    let in_feed: HashSet<&str> = feed.iter().map(String::as_str).collect();
    let mut done = Changes::default();
    for (pipeline, trigger, key, mut mark) in states {
        if !decide_all(daemon, &pipeline, &trigger, &key, &mut mark, &runs)? {
            return Ok(());
        }
        mark.forget_all_but(&in_feed);
        done.put_mark(&key, &mark);
    }
    // Every trigger decided on every run read: they leave the feed with the pruned states,
    // and with the notices their endings call for.
    for run in &runs {
        let targets = daemon.with_catalog(|c| {
            c.pipelines
                .get(&run.pipeline)
                .map(|p| p.pipeline.notify.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| daemon.config.notify.clone())
        });
        super::notify::enqueue(daemon, store, run, &targets, &mut done)?;
    }
    for id in &feed {
        done.forget_finished(id);
    }
    store.commit(&done)
}

/// Lets one trigger decide on the runs of its pipeline; false when it had to stop midway (the
/// daemon stops, the store failed), leaving the rest to the next look.
fn decide_all(
    daemon: &Arc<Daemon>,
    pipeline: &str,
    trigger: &AfterTrigger,
    key: &str,
    mark: &mut AfterMark,
    runs: &[RunRecord],
) -> Result<bool, StoreError> {
    for run in runs.iter().filter(|r| r.pipeline == trigger.pipeline) {
        if mark.has_decided(&run.id) {
            continue;
        }
        let finished = Finished {
            id: &run.id,
            status: run.status,
            finished_ms: finished_ms(run),
            when_holds: when_holds(daemon, trigger, run)?,
        };
        let decision = mark.decide(trigger, &finished);
        match decision {
            Decision::Start => {
                let params = params_for(daemon, trigger, run)?;
                let origin = Origin {
                    trigger: TriggerOrigin::After {
                        pipeline: run.pipeline.clone(),
                        run: run.id.clone(),
                    },
                    run_id: Some(after::run_id(key, &finished)),
                    marks: vec![(key.to_string(), json!(mark))],
                    ..Origin::default()
                };
                match daemon.start_run(pipeline, params, origin) {
                    Ok(Started::New(started)) => {
                        tracing::info!(pipeline, run = %started.id, after = %run.id, "After trigger started a run.")
                    }
                    Ok(Started::Existing(_)) => {}
                    Ok(Started::Skipped(reason)) => {
                        tracing::info!(pipeline, after = %run.id, "After trigger skipped: {reason}.")
                    }
                    // Undecided: the next look decides again (nothing of it was committed).
                    Err(TriggerError::ShuttingDown) => return Ok(false),
                    Err(TriggerError::Engine(err)) => {
                        tracing::error!(pipeline, after = %run.id, error = %err, "After trigger could not start a run; trying again.");
                        return Ok(false);
                    }
                    Err(err) => {
                        // Decided all the same: a run that cannot start now (a param it
                        // refuses) would fail the same way every time it is tried.
                        tracing::error!(pipeline, after = %run.id, error = %err, "After trigger could not start a run.")
                    }
                }
            }
            Decision::Cooling { until_ms } => {
                let reason = format!(
                    "run {} of `{}` counted, but `{pipeline}` started less than its cooldown ago (next start allowed at {})",
                    run.id,
                    run.pipeline,
                    rfc3339(until_ms)
                );
                tracing::info!(pipeline, after = %run.id, "After trigger cooling down: {reason}.");
                let shown = format!("after {}", run.pipeline);
                daemon.record_skip(pipeline, TriggerKind::After, &shown, &reason)?;
            }
            Decision::Counted { have, need } => {
                tracing::info!(pipeline, after = %run.id, have, need, "After trigger counted a breach.")
            }
            Decision::Before | Decision::NotCounted => {}
        }
    }
    Ok(true)
}

/// Whether the run's outputs or params meet the trigger's `when:`.
fn when_holds(
    daemon: &Daemon,
    trigger: &AfterTrigger,
    run: &RunRecord,
) -> Result<bool, StoreError> {
    let Some((_, condition)) = &trigger.when else {
        return Ok(true);
    };
    // Read first (a read can fail), then decide on what was read.
    let mut values = HashMap::new();
    for operand in condition.operands() {
        let value = read(daemon, &RunValue::Operand(operand.clone()), run)?;
        values.insert(operand.clone(), value);
    }
    Ok(condition.eval(|operand| values.get(operand).cloned().flatten()))
}

/// The params the trigger passes, read from the followed run; one it cannot read is left to
/// its default (and said so).
fn params_for(
    daemon: &Daemon,
    trigger: &AfterTrigger,
    run: &RunRecord,
) -> Result<BTreeMap<String, String>, StoreError> {
    let mut params = BTreeMap::new();
    for (name, value) in &trigger.params {
        match read(daemon, value, run)? {
            Some(v) => {
                params.insert(name.clone(), v);
            }
            None => {
                tracing::warn!(param = %name, after = %run.id, "The followed run has no value for this param; its default applies.")
            }
        }
    }
    Ok(params)
}

/// What `value` reads from a finished run: `None` for an output or param it does not have.
fn read(daemon: &Daemon, value: &RunValue, run: &RunRecord) -> Result<Option<String>, StoreError> {
    Ok(match value {
        RunValue::RunId => Some(run.id.clone()),
        RunValue::Operand(Operand::Param(name)) => run.params.get(name).cloned(),
        RunValue::Operand(Operand::StepOutput { step, key }) => daemon
            .engine
            .store
            .step(&run.id, step)?
            .and_then(|s| s.outputs.get(key).cloned()),
    })
}

fn finished_ms(run: &RunRecord) -> u64 {
    run.finished_ms.unwrap_or(run.created_ms)
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}
