//! One run, driven from start to a terminal state: the I/O around [`RunState`], which holds
//! the rules. The driver commits what the state changed, queues the tasks it made, tells the
//! queue what is committed, and waits for the next event, retry, timer or cancel.

use std::time::Duration;

use indexmap::IndexMap;
use sluice_worker::backoff::Backoff;
use sluice_worker::queue::{QueueError, TaskQueue};
use sluice_worker::task::{now_ms, TaskSpec, WorkerEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::RunState;
use super::tasks::add_sealed_secrets;
use super::{builtins, cache};
use super::{default_parallelism, resolve_params, Engine, EngineError, RunObserver, RunRequest};
use crate::spec::{self, Pipeline};
use crate::store::*;

/// Most worker events applied in one batch (one flush).
const EVENT_BATCH: usize = 4096;
/// Longest a change that nothing waits on (a step started) stays uncommitted.
const LAZY_COMMIT: Duration = Duration::from_millis(100);
/// How long the results of other steps in flight may take to arrive and share the commit of
/// the one just applied (one flush for many, in a fan-out).
const GATHER: Duration = Duration::from_millis(1);
/// How long a cancelled run waits for its running steps to confirm they stopped.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// Drives one run; see the module docs of [`crate::engine`].
pub struct RunDriver {
    engine: Engine,
    state: RunState,
    /// When a cancelled run stops waiting for its running steps to confirm.
    cancel_deadline: Option<tokio::time::Instant>,
    observer: Box<dyn RunObserver>,
    source: EventSource,
    /// Tasks to queue again on the first turn of the loop (a daemon resuming a run).
    redispatch: Vec<TaskSpec>,
}

/// Where a driver's worker events come from.
enum EventSource {
    /// Straight from the queue, acknowledged whenever everything applied is committed: the
    /// embedded runner, which drives one run.
    Queue,
    /// Routed by the daemon, which reads the queue for every run; each batch applied is
    /// reported back once committed, and the daemon acknowledges it when all runs have.
    Routed {
        events: mpsc::UnboundedReceiver<RoutedEvent>,
        committed: mpsc::UnboundedSender<u64>,
        applied: Vec<u64>,
    },
}

/// What the daemon tells a run's driver.
#[derive(Debug)]
pub enum RoutedEvent {
    /// Worker events of this run, from batch `batch` of the queue.
    Worker {
        /// The queue batch they came in.
        batch: u64,
        /// In the order workers reported them.
        events: Vec<WorkerEvent>,
    },
    /// Redis lost its data: every task in flight must be queued again.
    Requeue,
}

impl RunDriver {
    /// Records a new run (pipeline text, run, every step pending) in one commit.
    pub fn create(
        engine: Engine,
        request: RunRequest,
        observer: Box<dyn RunObserver>,
    ) -> Result<RunDriver, EngineError> {
        let loaded = request.loaded;
        let params = resolve_params(&loaded.pipeline, &request.overrides)?;
        let pipeline = loaded.pipeline;
        let run = RunRecord {
            id: request
                .id
                .clone()
                .unwrap_or_else(|| ulid::Ulid::new().to_string()),
            pipeline: pipeline.name.clone(),
            definition_hash: loaded.hash.clone(),
            trigger: request.trigger,
            params,
            base_dir: request.base_dir,
            parallelism: request
                .parallelism
                .or(pipeline.parallelism)
                .unwrap_or_else(default_parallelism),
            status: if request.waiting {
                RunStatus::Queued
            } else {
                RunStatus::Running
            },
            created_ms: now_ms(),
            finished_ms: None,
            step_count: pipeline.steps.len(),
            commit: request.commit.clone(),
            no_cache: request.no_cache,
            retry_of: request.retry_of.clone(),
        };
        let definition = PipelineRecord {
            name: pipeline.name.clone(),
            hash: loaded.hash,
            text: loaded.text,
            path: loaded.path,
        };
        let data_dir = engine.data_dir.clone();
        let state = RunState::created(
            data_dir,
            pipeline,
            run,
            &definition,
            &request.marks,
            &request.prior,
            now_ms(),
        );
        let mut driver = RunDriver::new(engine, state, observer);
        // Nobody has been told of this run yet: when it cannot be written, the caller hears so
        // at once (a 503 to a trigger) instead of waiting for the disk.
        driver.write(false)?;
        Ok(driver)
    }

    /// Reloads a run that did not finish (its runner was killed) so it can be driven to the end.
    /// Steps that succeeded stay; every other step runs again, attempts numbered on.
    pub fn resume(
        engine: Engine,
        run_id: &str,
        parallelism: Option<usize>,
        observer: Box<dyn RunObserver>,
    ) -> Result<RunDriver, EngineError> {
        let (run, pipeline, steps) = load_unfinished(&engine, run_id)?;
        let next_seq = engine.store.next_event_seq(&run.id)?;
        let data_dir = engine.data_dir.clone();
        let state = RunState::resumed(
            data_dir,
            pipeline,
            run,
            steps,
            next_seq,
            parallelism,
            now_ms(),
        );
        let mut driver = RunDriver::new(engine, state, observer);
        driver.commit()?;
        Ok(driver)
    }

    /// Picks up a run in flight after the daemon restarted, without disturbing it (see
    /// [`RunState::reattached`]). With `queue_lost_data`, every attempt in flight is queued
    /// again as a new attempt instead.
    pub fn reattach(
        engine: Engine,
        run_id: &str,
        observer: Box<dyn RunObserver>,
        queue_lost_data: bool,
    ) -> Result<RunDriver, EngineError> {
        let (run, pipeline, steps) = load_unfinished(&engine, run_id)?;
        let next_seq = engine.store.next_event_seq(&run.id)?;
        let data_dir = engine.data_dir.clone();
        let (state, redispatch) = RunState::reattached(
            data_dir,
            pipeline,
            run,
            steps,
            next_seq,
            queue_lost_data,
            now_ms(),
        );
        let mut driver = RunDriver::new(engine, state, observer);
        driver.redispatch = redispatch;
        driver.commit()?;
        Ok(driver)
    }

    fn new(engine: Engine, state: RunState, observer: Box<dyn RunObserver>) -> RunDriver {
        RunDriver {
            engine,
            state,
            cancel_deadline: None,
            observer,
            source: EventSource::Queue,
            redispatch: Vec::new(),
        }
    }

    /// Takes events from the daemon's router instead of the queue; reports each batch's id on
    /// `committed` once what it changed is in the store.
    pub fn routed(
        mut self,
        events: mpsc::UnboundedReceiver<RoutedEvent>,
        committed: mpsc::UnboundedSender<u64>,
    ) -> RunDriver {
        self.source = EventSource::Routed {
            events,
            committed,
            applied: Vec::new(),
        };
        self
    }

    /// Whether the run waits for a concurrency slot (`overlap: queue`).
    pub fn is_waiting(&self) -> bool {
        self.state.run().status == RunStatus::Queued
    }

    /// Starts a run that waited for a concurrency slot.
    pub fn begin(&mut self) -> Result<(), EngineError> {
        if self.is_waiting() {
            self.state.begin(now_ms());
            self.commit()?;
        }
        Ok(())
    }

    /// The run as it stands.
    pub fn run(&self) -> &RunRecord {
        self.state.run()
    }

    /// The pipeline the run follows.
    pub fn pipeline(&self) -> &Pipeline {
        self.state.pipeline()
    }

    /// Drives the run to a terminal state; `cancel` cancels it cleanly.
    pub async fn drive(mut self, cancel: CancellationToken) -> Result<RunRecord, EngineError> {
        let mut tasks = std::mem::take(&mut self.redispatch);
        if cancel.is_cancelled() {
            // Cancelled before it started (while waiting for a slot, or before a restart):
            // nothing new is queued.
            tasks.clear();
            self.cancel().await;
        }
        loop {
            let now = now_ms();
            self.state.release_due_retries(now);
            tasks.extend(self.state.start_ready_steps(now));
            if self.state.is_urgent() {
                // The attempt is committed before its task is queued.
                self.commit()?;
            }
            if !self.state.is_dirty() {
                // Everything applied so far is committed: the queue may forget those events.
                self.acknowledge_applied().await;
                self.record_dead_letters().await;
            }
            let mut hits = false;
            if !tasks.is_empty() {
                (tasks, hits) = self.consult_cache(tasks).await;
            }
            if !tasks.is_empty() {
                let ended;
                (tasks, ended) = self.prepare_builtins(tasks);
                hits |= ended;
            }
            if !tasks.is_empty() {
                add_sealed_secrets(&self.engine.data_dir, &mut tasks);
                dispatch(self.engine.queue.as_ref(), std::mem::take(&mut tasks)).await?;
            }
            if hits {
                // A hit ended its step here: the steps after it may be ready at once.
                continue;
            }
            if self.state.is_settled() {
                break;
            }
            let next_retry = self.state.next_retry_at();
            let cancelling = self.cancel_deadline.is_some();
            // Handlers run after the run's own steps are over: the run's timeout and the wait
            // for running steps to confirm a cancel are behind them (their own timeouts hold).
            let (cancel_deadline, run_deadline) = match self.state.in_handlers() {
                true => (None, None),
                false => (self.cancel_deadline, self.run_deadline()),
            };
            let dirty = self.state.is_dirty();
            tokio::select! {
                applied = self.next_events() => {
                    applied?;
                    self.gather().await?;
                }
                _ = sleep_until_ms(next_retry) => {}
                _ = tokio::time::sleep(LAZY_COMMIT), if dirty => self.commit()?,
                _ = cancel.cancelled(), if !cancelling => self.cancel().await,
                _ = deadline(run_deadline), if !cancelling && run_deadline.is_some() => self.time_out().await,
                _ = deadline(cancel_deadline), if cancel_deadline.is_some() => self.state.abandon_in_flight(now_ms()),
            }
        }
        self.state.finish(now_ms());
        self.commit()?;
        self.close_routed();
        self.acknowledge_applied().await;
        Ok(self.state.run().clone())
    }

    /// Steps with `cache:` whose key has a reusable success end here with its results (an
    /// image step's hit goes to a worker as a probe, which checks the image digest); the rest
    /// are returned to be queued, each with the reasons it missed.
    async fn consult_cache(&mut self, tasks: Vec<TaskSpec>) -> (Vec<TaskSpec>, bool) {
        let mut queued = Vec::with_capacity(tasks.len());
        let mut hits = false;
        for mut task in tasks {
            // Most steps have no `cache:`: they pass untouched, with nothing cloned or hashed.
            let Some(step) = self
                .state
                .pipeline()
                .steps
                .get(&task.key.step)
                .filter(|s| s.cache.is_some())
            else {
                queued.push(task);
                continue;
            };
            let (name, local) = (step.name.clone(), step.image.is_none());
            let run = self.state.run();
            let (pipeline, no_cache) = (run.pipeline.clone(), run.no_cache);
            let computed = cache::components(run, step, self.state.steps(), &self.engine.artifacts);
            let components = match computed {
                Ok(components) => components,
                Err(why) => {
                    tracing::warn!(run = %task.key.run_id, step = %name, %why, "Cannot compute a cache key; the step runs.");
                    queued.push(task);
                    continue;
                }
            };
            let key = cache::key_of(&components);
            let (entry, latest) = cache::lookup(&self.engine.store, &pipeline, &name, &key)
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "Cannot read the cache; the step runs.");
                    (None, None)
                });
            let mut note = cache::CacheNote {
                key,
                pipeline,
                miss: Vec::new(),
                hit_from: None,
                components,
            };
            let reusable = match entry {
                _ if no_cache => {
                    note.miss = vec!["--no-cache".into()];
                    None
                }
                Some(entry) if self.engine.artifacts.contains_all(&entry.artifacts).await => {
                    Some(entry)
                }
                Some(_) => {
                    note.miss = vec!["the cached outputs are gone from the store".into()];
                    None
                }
                None => {
                    note.miss = cache::reasons(latest.as_ref(), &note.components);
                    None
                }
            };
            match reusable {
                Some(entry) if local => {
                    note.hit_from = Some(entry.run_id.clone());
                    self.state.note_cache(&name, note);
                    let result = cache::hit_result(&task, &entry);
                    self.state
                        .apply(sluice_worker::task::WorkerEvent::Finished(result), now_ms());
                    hits = true;
                }
                Some(entry) => {
                    task.cache_probe = cache::probe(&entry);
                    self.state.note_cache(&name, note);
                    queued.push(task);
                }
                None => {
                    self.state.note_cache(&name, note);
                    queued.push(task);
                }
            }
        }
        (queued, hits)
    }

    /// Ends the tasks the scheduler runs itself (`register`, `gate`) and resolves the registry
    /// inputs of the others (`engine::builtins`); returns the tasks to queue, and whether any
    /// step ended here.
    fn prepare_builtins(&mut self, tasks: Vec<TaskSpec>) -> (Vec<TaskSpec>, bool) {
        let mut queued = Vec::with_capacity(tasks.len());
        let mut ended = false;
        for task in tasks {
            let touches_registry = self.state.pipeline().steps.get(&task.key.step).is_some_and(|step| {
                !step.models.is_empty()
                    || matches!(&step.action, spec::Action::Uses { builtin, .. } if builtin.needs_preparing())
            });
            if !touches_registry {
                queued.push(task);
                continue;
            }
            let step = task.key.step.clone();
            let prepared = {
                let cx = builtins::Context {
                    store: &self.engine.store,
                    run: self.state.run(),
                    pipeline: self.state.pipeline(),
                    steps: self.state.steps(),
                };
                builtins::prepare(&cx, task)
            };
            self.state
                .note_prepared(&step, prepared.gate, prepared.models);
            match prepared.task {
                Ok(task) => queued.push(task),
                Err(result) => {
                    self.state.apply(WorkerEvent::Finished(result), now_ms());
                    ended = true;
                }
            }
        }
        (queued, ended)
    }

    /// What must happen before a result is recorded: a `deploy` step's success moves its
    /// alias (`builtins::settle_deploy`). Results of attempts that are no longer current are
    /// left to the state's fencing, untouched.
    fn settle(&self, event: WorkerEvent) -> WorkerEvent {
        let WorkerEvent::Finished(mut result) = event else {
            return event;
        };
        let current = self.state.step(&result.key.step).is_some_and(|record| {
            matches!(record.status, StepStatus::Queued | StepStatus::Running)
                && record.attempts.len() as u32 == result.key.attempt
                && result.key.run_id == self.state.run().id
        });
        let is_deploy = self
            .state
            .pipeline()
            .steps
            .get(&result.key.step)
            .is_some_and(
                |step| matches!(&step.action, spec::Action::Uses { kind, .. } if kind == "deploy"),
            );
        if current && is_deploy {
            let cx = builtins::Context {
                store: &self.engine.store,
                run: self.state.run(),
                pipeline: self.state.pipeline(),
                steps: self.state.steps(),
            };
            builtins::settle_deploy(&cx, &mut result);
        }
        WorkerEvent::Finished(result)
    }

    /// Waits for the next worker events (from the router or the queue) and applies them.
    async fn next_events(&mut self) -> Result<(), EngineError> {
        match &mut self.source {
            EventSource::Routed { events, .. } => match events.recv().await {
                Some(routed) => self.apply_routed(routed),
                None => return Err(EngineError::QueueClosed),
            },
            EventSource::Queue => {
                let events = self.engine.queue.next_events(EVENT_BATCH).await;
                let now = now_ms();
                for event in events.map_err(|_| EngineError::QueueClosed)? {
                    let event = self.settle(event);
                    self.state.apply(event, now);
                }
            }
        }
        Ok(())
    }

    /// Group commit: when what was just applied must be committed and other steps are still in
    /// flight, their results that arrive within [`GATHER`] are applied first and share the
    /// commit. A chain (nothing else in flight) commits at once, and so does a run at its
    /// `parallelism` with a step waiting for the slot just freed: waiting would leave it idle.
    async fn gather(&mut self) -> Result<(), EngineError> {
        let until = tokio::time::Instant::now() + GATHER;
        while self.state.is_urgent() && self.state.in_flight() > 0 && !self.state.has_ready() {
            tokio::select! {
                applied = self.next_events() => applied?,
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        Ok(())
    }

    async fn record_dead_letters(&mut self) {
        for (task, reason) in self.state.take_dead_letters() {
            if let Err(err) = self.engine.queue.dead_letter(&task, &reason).await {
                tracing::warn!(task = %task.key, error = %err, "Could not record a dead letter.");
            }
        }
    }

    /// Tells the queue (or the daemon's router) that the events applied so far are committed.
    async fn acknowledge_applied(&mut self) {
        match &mut self.source {
            EventSource::Queue => {
                if let Err(err) = self.engine.queue.ack_events().await {
                    tracing::warn!(error = %err, "Could not acknowledge worker events; they will be delivered again.");
                }
            }
            EventSource::Routed {
                committed, applied, ..
            } => {
                for batch in applied.drain(..) {
                    let _ = committed.send(batch);
                }
            }
        }
    }

    /// Stops taking routed events; those already sent are for a finished run, so they are as
    /// good as committed (the router acknowledges their batches instead of waiting forever).
    fn close_routed(&mut self) {
        if let EventSource::Routed {
            events, applied, ..
        } = &mut self.source
        {
            events.close();
            while let Ok(routed) = events.try_recv() {
                if let RoutedEvent::Worker { batch, .. } = routed {
                    applied.push(batch);
                }
            }
        }
    }

    fn apply_routed(&mut self, routed: RoutedEvent) {
        let now = now_ms();
        match routed {
            RoutedEvent::Worker { batch, events } => {
                for event in events {
                    let event = self.settle(event);
                    self.state.apply(event, now);
                }
                if let EventSource::Routed { applied, .. } = &mut self.source {
                    applied.push(batch);
                }
            }
            RoutedEvent::Requeue => self.state.requeue_in_flight(now),
        }
    }

    /// Cancels the run: the state withdraws what has not started, workers are told to stop
    /// the rest, which get [`CANCEL_WAIT`] to confirm.
    /// When the run's `timeout` passes (from its creation, so across restarts too).
    fn run_deadline(&self) -> Option<tokio::time::Instant> {
        let limit = self.state.pipeline().timeout?;
        let ends_ms = self.state.run().created_ms + limit.as_millis() as u64;
        let left = Duration::from_millis(ends_ms.saturating_sub(now_ms()));
        Some(tokio::time::Instant::now() + left)
    }

    async fn time_out(&mut self) {
        let Some(limit) = self.state.pipeline().timeout else {
            return;
        };
        self.cancel_deadline = Some(tokio::time::Instant::now() + CANCEL_WAIT);
        self.state.time_out(now_ms(), limit);
        tracing::warn!(run = %self.state.run().id, "The run's timeout passed; stopping it.");
        if let Err(err) = self.engine.queue.cancel_run(&self.state.run().id).await {
            tracing::warn!(run = %self.state.run().id, error = %err, "Could not send the stop to workers.");
        }
    }

    async fn cancel(&mut self) {
        self.cancel_deadline = Some(tokio::time::Instant::now() + CANCEL_WAIT);
        self.state.cancel(now_ms());
        if let Err(err) = self.engine.queue.cancel_run(&self.state.run().id).await {
            tracing::warn!(run = %self.state.run().id, error = %err, "Could not send the cancel to workers.");
        }
    }

    /// Writes everything changed since the last commit with one flush, then tells the observer.
    /// A full disk holds the run here until it is freed: nothing applied is acknowledged or
    /// dispatched before it is written.
    fn commit(&mut self) -> Result<(), EngineError> {
        self.write(true)
    }

    /// [`RunDriver::commit`]; `patient` waits out write failures that can pass.
    fn write(&mut self, patient: bool) -> Result<(), EngineError> {
        let commit = self.state.take_commit();
        let store = &self.engine.store;
        // A healthy store writes and flushes in well under a millisecond: done on this thread,
        // which costs less than handing the runtime's worker to another thread for it (half
        // the scheduler's CPU per step went to those thread switches). Waiting out a full disk
        // can take minutes, and that moves off the runtime's workers.
        let first = match store.write_failure() {
            None => store.commit(&commit.changes),
            Some(failure) => Err(StoreError::Unavailable(failure)),
        };
        match first {
            Ok(()) => {}
            Err(err) if patient && err.may_pass() => {
                tokio::task::block_in_place(|| store.commit_patiently(&commit.changes))?
            }
            Err(err) => return Err(err.into()),
        }
        for name in &commit.steps {
            if let Some(record) = self.state.step(name) {
                self.observer.on_step(self.state.run(), record);
            }
        }
        if commit.run {
            self.observer.on_run(self.state.run());
        }
        Ok(())
    }
}

/// A run by its id or a prefix only it has.
pub(crate) fn find_run(store: &Store, run_id: &str) -> Result<RunRecord, EngineError> {
    match store.lookup_run(run_id)? {
        RunLookup::Found(run) => Ok(run),
        RunLookup::NotFound => Err(EngineError::UnknownRun(run_id.to_string())),
        RunLookup::Ambiguous => Err(EngineError::AmbiguousRun(run_id.to_string())),
    }
}

/// The definition `run` ran, as stored with it, and read again.
pub(crate) fn stored_definition(
    store: &Store,
    run: &RunRecord,
) -> Result<(PipelineRecord, Pipeline), EngineError> {
    let definition =
        store
            .pipeline(&run.definition_hash)?
            .ok_or_else(|| EngineError::BadDefinition {
                run: run.id.clone(),
                message: "the definition is missing from the store".into(),
            })?;
    let pipeline = spec::parse_str(&definition.path.display().to_string(), &definition.text)
        .map_err(|diags| EngineError::BadDefinition {
            run: run.id.clone(),
            message: diags.first().map(ToString::to_string).unwrap_or_default(),
        })?;
    Ok((definition, pipeline))
}

/// A run that has not finished, with the pipeline it follows and its steps, from the store.
fn load_unfinished(
    engine: &Engine,
    run_id: &str,
) -> Result<(RunRecord, Pipeline, IndexMap<String, StepRecord>), EngineError> {
    let run = find_run(&engine.store, run_id)?;
    if run.status.is_terminal() {
        return Err(EngineError::AlreadyFinished(run.id, run.status.as_str()));
    }
    let (_, pipeline) = stored_definition(&engine.store, &run)?;
    let steps: IndexMap<String, StepRecord> = engine
        .store
        .steps(&run.id)?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    Ok((run, pipeline, steps))
}

async fn sleep_until_ms(at_ms: Option<u64>) {
    match at_ms {
        Some(at) => {
            let wait = at.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

async fn deadline(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queues a task whose attempt is committed, retrying while the queue fails (Redis away): the
/// attempt is in the store, and workers claim each attempt once, so sending it again is safe.
async fn dispatch(queue: &dyn TaskQueue, tasks: Vec<TaskSpec>) -> Result<(), EngineError> {
    let mut backoff = Backoff::new(Duration::from_millis(100));
    loop {
        match queue.dispatch_batch(&tasks).await {
            Ok(()) => return Ok(()),
            Err(QueueError::Closed) => return Err(EngineError::QueueClosed),
            Err(err) => {
                tracing::warn!(tasks = tasks.len(), error = %err, retry_in = ?backoff.peek(), "Could not queue steps; retrying.");
                backoff.sleep().await;
            }
        }
    }
}
