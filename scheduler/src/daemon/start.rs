//! Starting runs: the one way every trigger (API, cron, webhook, watched folder) creates a run,
//! with its bookkeeping and the pipeline's concurrency policy applied atomically.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use sluice_worker::task::now_ms;
use tokio_util::sync::CancellationToken;

use super::{base_dir_of, Daemon, TriggerError};
use crate::engine::{EngineError, RunDriver, RunRequest};
use crate::metrics::{RunTally, TriggerKind};
use crate::spec::Overlap;
use crate::store::marks::{self, SeenMark, SkipMark};
use crate::store::{Changes, RunRecord, TriggerOrigin};

/// Who asks for a run, and what it brings along.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Recorded as the run's trigger.
    pub trigger: TriggerOrigin,
    /// The run's id when the trigger derives it (a cron instant): a run with that id already
    /// there means this trigger already fired.
    pub run_id: Option<String>,
    /// A mark that, when present, names the run this request already started (a webhook
    /// delivery id, a watched file); written with the new run otherwise.
    pub dedupe: Option<String>,
    /// Marks older than this many milliseconds no longer dedupe (a delivery id window).
    pub dedupe_window_ms: Option<u64>,
    /// More bookkeeping to commit with the run.
    pub marks: Vec<(String, Value)>,
    /// Run every step even where the cache has a hit.
    pub no_cache: bool,
    /// A retry of an ended run: its definition, params and the steps kept from it.
    pub retry: Option<crate::engine::retry::RetryPlan>,
}

/// What a trigger led to.
#[derive(Debug, Clone)]
// Returned once per trigger, never kept in bulk: boxing the run would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Started {
    /// A new run, committed.
    New(RunRecord),
    /// The same request started this run before; nothing new was started.
    Existing(String),
    /// The concurrency policy (`overlap: skip`) said no; the skip is recorded.
    Skipped(String),
}

impl Daemon {
    /// Starts a run of `pipeline` for `origin`; the run exists (committed) once this returns.
    pub fn start_run(
        self: &Arc<Self>,
        pipeline: &str,
        overrides: BTreeMap<String, String>,
        origin: Origin,
    ) -> Result<Started, TriggerError> {
        let _decide = self.trigger_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.shutdown.is_cancelled() {
            return Err(TriggerError::ShuttingDown);
        }
        // A retry runs the definition its run ran, from where that run started.
        let (loaded, commit, base_dir) = match &origin.retry {
            Some(plan) => (
                plan.loaded.clone(),
                plan.run.commit.clone(),
                plan.run.base_dir.clone(),
            ),
            None => {
                let (loaded, commit) = self
                    .with_catalog(|c| {
                        c.pipelines
                            .get(pipeline)
                            .map(|p| (p.clone(), c.commit.clone()))
                    })
                    .ok_or_else(|| TriggerError::UnknownPipeline(pipeline.to_string()))?;
                let base_dir = base_dir_of(&loaded.path);
                (loaded, commit, base_dir)
            }
        };
        let store = &self.engine.store;
        let engine_error = |e: crate::store::StoreError| TriggerError::Engine(e.into());
        if let Some(id) = &origin.run_id {
            if store.run(id).map_err(engine_error)?.is_some() {
                return Ok(Started::Existing(id.clone()));
            }
        }
        if let Some(key) = &origin.dedupe {
            if let Some(mark) = store.mark::<SeenMark>(key).map_err(engine_error)? {
                let fresh = origin
                    .dedupe_window_ms
                    .is_none_or(|window| now_ms().saturating_sub(mark.at_ms) < window);
                if let (true, Some(run)) = (fresh, mark.run) {
                    return Ok(Started::Existing(run));
                }
            }
        }
        let mut waiting = false;
        if let Some(concurrency) = loaded.pipeline.concurrency {
            let active = self.active_runs(pipeline);
            if active.len() >= concurrency.limit as usize {
                match concurrency.overlap {
                    Overlap::Allow => {}
                    Overlap::Queue => waiting = true,
                    Overlap::CancelRunning => {
                        for run in &active {
                            tracing::info!(run = %run, pipeline, "Cancelling a running run for a new one (overlap: cancel_running).");
                            let _ = self.cancel(run, "overlap: cancel_running");
                        }
                    }
                    Overlap::Skip => {
                        let reason = format!(
                            "`{pipeline}` already has {} active run(s), its concurrency limit is {} and overlap is skip",
                            active.len(),
                            concurrency.limit
                        );
                        let kind = TriggerKind::from(&origin.trigger);
                        self.record_skip(pipeline, kind, &origin.trigger.to_string(), &reason)
                            .map_err(engine_error)?;
                        tracing::info!(pipeline, trigger = %origin.trigger, "Trigger skipped: {reason}.");
                        return Ok(Started::Skipped(reason));
                    }
                }
            }
        }
        let id = origin
            .run_id
            .clone()
            .unwrap_or_else(|| ulid::Ulid::new().to_string());
        let mut marks = origin.marks;
        if let Some(key) = origin.dedupe {
            let seen = SeenMark {
                run: Some(id.clone()),
                at_ms: now_ms(),
                skipped: None,
            };
            marks.push((key, json!(seen)));
        }
        let request = RunRequest {
            base_dir,
            loaded,
            overrides,
            trigger: origin.trigger.clone(),
            parallelism: None,
            id: Some(id),
            marks,
            commit,
            waiting,
            no_cache: origin.no_cache,
            retry_of: origin.retry.as_ref().map(|plan| plan.run.id.clone()),
            prior: origin
                .retry
                .map(|plan| plan.retried.kept)
                .unwrap_or_default(),
        };
        // Steps kept from an earlier run ended there, and were counted there.
        let kept = request.prior.iter().map(|s| s.name.clone());
        let tally = Box::new(RunTally::new(self.metrics.clone(), kept));
        let driver =
            RunDriver::create(self.engine.clone(), request, tally).map_err(|err| match err {
                EngineError::Params(message) => TriggerError::Params(message),
                other => TriggerError::Engine(other),
            })?;
        let run = driver.run().clone();
        self.metrics
            .run_started(TriggerKind::from(&run.trigger), &run.pipeline);
        tracing::info!(run = %run.id, pipeline = %run.pipeline, trigger = %run.trigger, waiting, "Run started.");
        self.spawn_driver(driver, false);
        Ok(Started::New(run))
    }

    /// Starts a retry of run `id_or_prefix` (see [`crate::engine::retry`]), by `by` (an API
    /// token's name), under the pipeline's concurrency policy like any run.
    pub fn retry(
        self: &Arc<Self>,
        id_or_prefix: &str,
        from: Option<&str>,
        by: Option<String>,
    ) -> Result<Started, TriggerError> {
        let plan =
            crate::engine::retry::plan(&self.engine.store, id_or_prefix, from).map_err(|err| {
                match err {
                    EngineError::UnknownRun(_) | EngineError::AmbiguousRun(_) => {
                        TriggerError::UnknownRun(err.to_string())
                    }
                    EngineError::CannotRetry(message) => TriggerError::CannotRetry(message),
                    other => TriggerError::Engine(other),
                }
            })?;
        let pipeline = plan.run.pipeline.clone();
        let params = plan.run.params.clone();
        let origin = Origin {
            trigger: TriggerOrigin::Retry {
                run: plan.run.id.clone(),
                by,
            },
            no_cache: plan.run.no_cache,
            retry: Some(plan),
            ..Origin::default()
        };
        self.start_run(&pipeline, params, origin)
    }

    /// Ids of the runs of `pipeline` in flight (running or waiting for a slot), oldest first.
    fn active_runs(&self, pipeline: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock_runs()
            .iter()
            .filter(|(_, h)| h.pipeline == pipeline)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Records that a trigger of `kind` (shown as `trigger`) of `pipeline` started nothing, and
    /// why; counted once recorded.
    pub(super) fn record_skip(
        &self,
        pipeline: &str,
        kind: TriggerKind,
        trigger: &str,
        reason: &str,
    ) -> Result<(), crate::store::StoreError> {
        let mut changes = Changes::default();
        let skip = SkipMark {
            trigger: trigger.to_string(),
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        changes.put_mark(&marks::skip_key(pipeline), &skip);
        self.engine.store.commit(&changes)?;
        self.metrics.trigger_skipped(kind, pipeline);
        Ok(())
    }

    /// Triggers skipped by the concurrency policy, newest first (at most `limit`).
    pub fn skipped(&self, pipeline: &str, limit: usize) -> Vec<SkipMark> {
        let mut skips = self
            .engine
            .store
            .marks::<SkipMark>(&marks::skips_of(pipeline))
            .unwrap_or_default();
        skips.reverse();
        skips.into_iter().take(limit).map(|(_, v)| v).collect()
    }

    /// Waits until the run may start under its pipeline's concurrency limit (oldest waiting
    /// run first), then starts it.
    pub(super) async fn wait_for_slot(
        &self,
        driver: &mut RunDriver,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let run_id = driver.run().id.clone();
        let pipeline = driver.run().pipeline.clone();
        loop {
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if cancel.is_cancelled() || self.may_start(&pipeline, &run_id) {
                break;
            }
            tokio::select! {
                _ = freed => {}
                _ = cancel.cancelled() => {}
            }
        }
        if let Some(handle) = self.lock_runs().get_mut(&run_id) {
            handle.waiting = false;
        }
        // The next waiting run may have a slot too (a limit above one).
        self.slot_freed.notify_waiters();
        // A run cancelled while it waited is started and cancelled at once by its driver.
        driver.begin()
    }

    /// Whether `run_id` is the oldest waiting run of `pipeline` and a slot is free.
    fn may_start(&self, pipeline: &str, run_id: &str) -> bool {
        let limit = self
            .with_catalog(|c| {
                c.pipelines
                    .get(pipeline)
                    .and_then(|p| p.pipeline.concurrency)
            })
            .map_or(usize::MAX, |c| c.limit as usize);
        let runs = self.lock_runs();
        let running = runs
            .values()
            .filter(|h| h.pipeline == pipeline && !h.waiting)
            .count();
        let oldest_waiting = runs
            .iter()
            .filter(|(_, h)| h.pipeline == pipeline && h.waiting)
            .map(|(id, _)| id)
            .min();
        running < limit && oldest_waiting.is_none_or(|oldest| oldest == run_id)
    }
}
