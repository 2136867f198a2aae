//! The run engine: walks a pipeline's DAG, queues ready steps, applies results, and records every
//! change in the store before anyone hears of it.
//!
//! One [`RunDriver`] owns one run. The rules (what is ready, what a result means, retries, lost
//! workers, fencing, cancel) live in [`state::RunState`], which does no I/O and takes the time as
//! an argument, so they are unit-tested event by event. The driver's loop is: let the state start
//! what is ready, commit the batch of changes with one flush, hand the new tasks to the queue,
//! tell the observer, then wait for worker events, a retry's delay, or a cancel. Batching
//! matters: a wide fan-out finishes many steps at once and they share one flush instead of paying
//! one each.

pub mod builtins;
pub mod cache;
mod driver;
pub mod retry;
pub mod state;
pub mod subset;
pub mod tasks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_worker::queue::TaskQueue;

use crate::spec::{LoadedPipeline, Pipeline};
use crate::store::TriggerOrigin;
use crate::store::{RunRecord, StepRecord, Store, StoreError};

pub(crate) use driver::stored_definition;
pub use driver::{RoutedEvent, RunDriver};

/// What every run needs from its surroundings: the store, the queue to workers, and the data
/// dir where attempts keep their files.
#[derive(Clone)]
pub struct Engine {
    /// The store, the only record of state.
    pub store: Store,
    /// Transport of tasks to workers and of their events back.
    pub queue: Arc<dyn TaskQueue>,
    /// Absolute path of the data dir.
    pub data_dir: PathBuf,
    /// The artifact store (and this process's cache of it): what `artifacts`, caching and `gc`
    /// read; the workers write it.
    pub artifacts: Arc<sluice_worker::artifacts::Artifacts>,
}

/// Why a run could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed; the run's state on disk is as of the last successful commit.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue closed while the run was in progress.
    #[error("the task queue closed while the run was in progress")]
    QueueClosed,
    /// `--resume` named a run that is not in the store.
    #[error("no run `{0}` in the store")]
    UnknownRun(String),
    /// `--resume` gave a prefix that several runs share.
    #[error("`{0}` matches several runs; give more of the id")]
    AmbiguousRun(String),
    /// `--resume` named a run that already finished.
    #[error("run `{0}` already finished ({1}); nothing to resume (`sluice retry {0}` runs what did not succeed again)")]
    AlreadyFinished(String, &'static str),
    /// `retry` cannot make a new run of that run as asked (it is still going, nothing failed,
    /// `--from` names no step).
    #[error("{0}")]
    CannotRetry(String),
    /// The stored definition of a run cannot be read any more.
    #[error("the stored definition of run `{run}` is not valid: {message}")]
    BadDefinition {
        /// The run.
        run: String,
        /// What is wrong.
        message: String,
    },
    /// Parameters did not match the pipeline's declarations.
    #[error("{0}")]
    Params(String),
}

/// Hears about every committed change, in commit order (the CLI's progress display).
pub trait RunObserver: Send {
    /// A step changed; its record is as committed.
    fn on_step(&mut self, run: &RunRecord, step: &StepRecord);
    /// The run changed (started, finished).
    fn on_run(&mut self, run: &RunRecord);
}

/// An observer that ignores everything.
pub struct Silent;

impl RunObserver for Silent {
    fn on_step(&mut self, _: &RunRecord, _: &StepRecord) {}
    fn on_run(&mut self, _: &RunRecord) {}
}

/// What a new run is asked to be.
pub struct RunRequest {
    /// The validated pipeline file.
    pub loaded: LoadedPipeline,
    /// `-p key=value` overrides, checked against the declarations by [`resolve_params`].
    pub overrides: BTreeMap<String, String>,
    /// What started it.
    pub trigger: TriggerOrigin,
    /// Overrides the pipeline's `parallelism`.
    pub parallelism: Option<usize>,
    /// Folder relative workdirs resolve against.
    pub base_dir: PathBuf,
    /// The run's id when the trigger derives it (a cron instant); a new ULID otherwise.
    pub id: Option<String>,
    /// Trigger bookkeeping committed with the run (see [`crate::store::Changes::put_mark`]).
    pub marks: Vec<(String, serde_json::Value)>,
    /// Git commit of the definition, when known.
    pub commit: Option<String>,
    /// Created waiting for a concurrency slot (`overlap: queue`): no step starts until
    /// [`RunDriver::begin`].
    pub waiting: bool,
    /// Run every step, cached or not (`--no-cache`); successes still refresh the cache.
    pub no_cache: bool,
    /// The earlier run this one retries (see [`retry`]).
    pub retry_of: Option<String>,
    /// Steps decided before the run starts: succeeded ones kept from an earlier run (a retry,
    /// or the steps upstream of a subset), skipped ones a subset does not run.
    pub prior: Vec<StepRecord>,
}

/// Largest value of one param: params travel in every task and every listing of runs.
pub const MAX_PARAM_BYTES: usize = 64 * 1024;

/// Defaults overridden by `overrides`; every value checked against its declared type, its size
/// and for NUL bytes (which the trigger would accept and the step could never see).
pub fn resolve_params(
    pipeline: &Pipeline,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, EngineError> {
    let mut problems = Vec::new();
    for name in overrides.keys() {
        if !pipeline.params.contains_key(name) {
            let known: Vec<&str> = pipeline.params.keys().map(String::as_str).collect();
            let hint = crate::spec::diagnostic::did_you_mean(name, &known)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            problems.push(format!(
                "unknown param `{name}`{hint}; `{}` declares: {}",
                pipeline.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    let mut params = BTreeMap::new();
    for (name, spec) in &pipeline.params {
        match overrides.get(name).or(spec.default.as_ref()) {
            Some(value) if value.len() > MAX_PARAM_BYTES => problems.push(format!(
                "param `{name}` is {} bytes, over the limit of {MAX_PARAM_BYTES}: pass data as a file, not a param",
                value.len()
            )),
            // No process can receive it: environment variables end at the first NUL.
            Some(value) if value.contains('\0') => {
                problems.push(format!("param `{name}` holds a NUL byte"))
            }
            Some(value) => match spec.kind.check(value) {
                Ok(()) => {
                    params.insert(name.clone(), value.clone());
                }
                Err(message) => problems.push(format!("param `{name}`: {message}")),
            },
            None => problems.push(format!(
                "param `{name}` is required: pass -p {name}=<{}>",
                spec.kind.name()
            )),
        }
    }
    if problems.is_empty() {
        Ok(params)
    } else {
        Err(EngineError::Params(problems.join("\n")))
    }
}

/// The parallelism used when neither the pipeline nor the command line says.
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_too_large_or_holding_a_nul_are_refused_naming_the_param() {
        let pipeline = crate::spec::parse_str(
            "p.yaml",
            "name: p\nparams: {x: a}\nsteps:\n  a: {run: 'true'}\n",
        )
        .unwrap();
        let with = |value: String| resolve_params(&pipeline, &[("x".to_string(), value)].into());
        assert!(with("fine".into()).is_ok());
        let err = with("a\0b".into()).unwrap_err().to_string();
        assert!(err.contains("param `x` holds a NUL byte"), "{err}");
        let err = with("y".repeat(MAX_PARAM_BYTES + 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("over the limit of 65536"), "{err}");
        assert!(with("y".repeat(MAX_PARAM_BYTES)).is_ok());
    }
}
