//! One run, driven from start to a terminal state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use indexmap::IndexMap;
use sluice_worker::queue::{QueueError, TaskQueue};
use sluice_worker::task::{now_ms, Outcome, TaskResult, TaskSpec, WorkerEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::tasks::{attempt_dir, build_task};
use super::{default_parallelism, resolve_params, Engine, EngineError, RunObserver, RunRequest};
use crate::spec::condition::Operand;
use crate::spec::{self, Pipeline};
use crate::store::*;

/// Most worker events applied in one batch (one flush).
const EVENT_BATCH: usize = 4096;
/// Longest a change that nothing waits on (a step started) stays uncommitted.
const LAZY_COMMIT: Duration = Duration::from_millis(100);
/// How long a cancelled run waits for its running steps to confirm they stopped.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// Drives one run; see the module docs of [`crate::engine`].
pub struct RunDriver {
    engine: Engine,
    pipeline: Pipeline,
    run: RunRecord,
    steps: IndexMap<String, StepRecord>,
    /// Steps that list each step in `depends`.
    dependents: HashMap<String, Vec<String>>,
    /// How many of each step's dependencies have not succeeded yet.
    waiting_on: HashMap<String, usize>,
    ready: VecDeque<String>,
    retries: BinaryHeap<Reverse<(u64, String)>>,
    in_flight: usize,
    next_seq: u64,
    changes: Changes,
    changed_steps: Vec<String>,
    run_changed: bool,
    /// Changes wait in `changes` until committed; `urgent` ones are committed before the loop
    /// goes on, the rest (a step started) ride along with the next commit or a short timer.
    dirty: bool,
    urgent: bool,
    cancel_deadline: Option<tokio::time::Instant>,
    observer: Box<dyn RunObserver>,
    /// Steps whose next failure is final whatever their retry policy (lost too often).
    give_up: HashSet<String>,
    /// Tasks given up on, to record in the dead-letter place once committed.
    dead_letters: Vec<TaskSpec>,
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
        };
        let steps = pipeline
            .steps
            .keys()
            .enumerate()
            .map(|(i, name)| {
                let record = StepRecord {
                    run_id: run.id.clone(),
                    name: name.clone(),
                    index: i as u32,
                    status: StepStatus::Pending,
                    attempts: Vec::new(),
                    outputs: Default::default(),
                    metrics: Default::default(),
                    reason: None,
                    retry_at_ms: None,
                };
                (name.clone(), record)
            })
            .collect();
        let mut driver = RunDriver::new(engine, pipeline, run, steps, 0, observer);
        driver.changes.put_pipeline(&PipelineRecord {
            name: driver.pipeline.name.clone(),
            hash: loaded.hash,
            text: loaded.text,
            path: loaded.path,
        });
        let names: Vec<String> = driver.steps.keys().cloned().collect();
        for name in names {
            driver.touch_step(&name);
        }
        for (key, value) in &request.marks {
            driver.changes.put_mark(key, value);
        }
        driver.run_changed = true;
        let kind = if request.waiting {
            "run.waiting"
        } else {
            "run.started"
        };
        driver.event(
            None,
            None,
            kind,
            Some(format!("trigger {}", driver.run.trigger)),
        );
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
        let (mut run, pipeline, mut steps) = load_unfinished(&engine, run_id)?;
        let now = now_ms();
        let mut reset = Vec::new();
        for step in steps.values_mut() {
            if step.status == StepStatus::Succeeded {
                continue;
            }
            if let Some(attempt) = step.attempts.last_mut() {
                if !attempt.status.is_terminal() {
                    attempt.status = StepStatus::Failed;
                    attempt.finished_ms = Some(now);
                    attempt.message =
                        Some("the runner stopped before this attempt finished".into());
                }
            }
            step.status = StepStatus::Pending;
            step.reason = None;
            step.retry_at_ms = None;
            reset.push(step.name.clone());
        }
        run.status = RunStatus::Running;
        if let Some(parallelism) = parallelism {
            run.parallelism = parallelism;
        }
        let next_seq = engine.store.next_event_seq(&run.id)?;
        let mut driver = RunDriver::new(engine, pipeline, run, steps, next_seq, observer);
        for name in reset {
            driver.touch_step(&name);
        }
        driver.run_changed = true;
        driver.event(None, None, "run.resumed", None);
        driver.commit()?;
        Ok(driver)
    }

    /// Picks up a run in flight after the daemon restarted, without disturbing it: running
    /// attempts keep running (their results arrive through the queue; the janitor takes back
    /// those whose worker died), queued attempts are queued again under the same attempt number
    /// (workers claim each attempt once, so one that was queued already runs once), retries
    /// wait out their delay.
    /// With `redis_lost_data`, every attempt in flight is queued again as a new attempt instead.
    pub fn reattach(
        engine: Engine,
        run_id: &str,
        observer: Box<dyn RunObserver>,
        redis_lost_data: bool,
    ) -> Result<RunDriver, EngineError> {
        let (run, pipeline, steps) = load_unfinished(&engine, run_id)?;
        let next_seq = engine.store.next_event_seq(&run.id)?;
        let mut driver = RunDriver::new(engine, pipeline, run, steps, next_seq, observer);
        let names: Vec<String> = driver.steps.keys().cloned().collect();
        for name in names {
            let record = &driver.steps[&name];
            match record.status {
                StepStatus::Queued => {
                    driver.in_flight += 1;
                    if let Some(step) = driver.pipeline.steps.get(&name) {
                        let task = build_task(
                            &driver.engine.data_dir,
                            &driver.run,
                            step,
                            record,
                            &driver.steps,
                        );
                        driver.redispatch.push(task);
                    }
                }
                StepStatus::Running => driver.in_flight += 1,
                _ => {}
            }
        }
        if redis_lost_data {
            driver.redispatch.clear();
            driver.requeue_in_flight();
        }
        driver.event(None, None, "run.reattached", None);
        driver.commit()?;
        Ok(driver)
    }

    fn new(
        engine: Engine,
        pipeline: Pipeline,
        run: RunRecord,
        steps: IndexMap<String, StepRecord>,
        next_seq: u64,
        observer: Box<dyn RunObserver>,
    ) -> RunDriver {
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        let mut waiting_on = HashMap::new();
        let mut ready = VecDeque::new();
        let mut retries = BinaryHeap::new();
        for step in pipeline.steps.values() {
            for dep in &step.depends {
                dependents
                    .entry(dep.clone())
                    .or_default()
                    .push(step.name.clone());
            }
            let waiting = step
                .depends
                .iter()
                .filter(|d| {
                    steps
                        .get(*d)
                        .is_none_or(|s| s.status != StepStatus::Succeeded)
                })
                .count();
            waiting_on.insert(step.name.clone(), waiting);
            let pending = steps
                .get(&step.name)
                .is_some_and(|s| s.status == StepStatus::Pending);
            let retry_at = steps.get(&step.name).and_then(|s| s.retry_at_ms);
            match retry_at {
                Some(at) if pending => retries.push(Reverse((at, step.name.clone()))),
                _ if waiting == 0 && pending => ready.push_back(step.name.clone()),
                _ => {}
            }
        }
        RunDriver {
            engine,
            pipeline,
            run,
            steps,
            dependents,
            waiting_on,
            ready,
            retries,
            in_flight: 0,
            next_seq,
            changes: Changes::default(),
            changed_steps: Vec::new(),
            run_changed: false,
            dirty: false,
            urgent: false,
            cancel_deadline: None,
            observer,
            give_up: HashSet::new(),
            dead_letters: Vec::new(),
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
        self.run.status == RunStatus::Queued
    }

    /// Starts a run that waited for a concurrency slot.
    pub fn begin(&mut self) -> Result<(), EngineError> {
        if self.run.status == RunStatus::Queued {
            self.run.status = RunStatus::Running;
            self.run_changed = true;
            self.event(
                None,
                None,
                "run.started",
                Some("a concurrency slot freed".into()),
            );
            self.commit()?;
        }
        Ok(())
    }

    /// The run as it stands.
    pub fn run(&self) -> &RunRecord {
        &self.run
    }

    /// The pipeline the run follows.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
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
            self.release_due_retries(now_ms());
            tasks.extend(self.start_ready_steps());
            if self.urgent {
                // The attempt is committed before its task is queued.
                self.commit()?;
            }
            if !self.dirty {
                // Everything applied so far is committed: the queue may forget those events.
                self.acknowledge_applied().await;
                self.record_dead_letters().await;
            }
            if !tasks.is_empty() {
                dispatch(self.engine.queue.as_ref(), std::mem::take(&mut tasks)).await?;
            }
            if self.in_flight == 0 && self.ready.is_empty() && self.retries.is_empty() {
                break;
            }
            let next_retry = self.retries.peek().map(|Reverse((at, _))| *at);
            let cancelling = self.cancel_deadline.is_some();
            tokio::select! {
                routed = next_routed(&mut self.source) => match routed {
                    Some(routed) => self.apply_routed(routed).await,
                    None => return Err(EngineError::QueueClosed),
                },
                events = self.engine.queue.next_events(EVENT_BATCH), if matches!(self.source, EventSource::Queue) => {
                    for event in events.map_err(|_| EngineError::QueueClosed)? {
                        self.apply(event);
                    }
                }
                _ = sleep_until_ms(next_retry) => {}
                _ = tokio::time::sleep(LAZY_COMMIT), if self.dirty => self.commit()?,
                _ = cancel.cancelled(), if !cancelling => self.cancel().await,
                _ = deadline(self.cancel_deadline), if cancelling => self.abandon_in_flight(),
            }
        }
        self.finish()?;
        self.close_routed();
        self.acknowledge_applied().await;
        Ok(self.run)
    }

    async fn record_dead_letters(&mut self) {
        for task in std::mem::take(&mut self.dead_letters) {
            let lost = lost_attempts(self.steps.get(&task.key.step));
            let reason = format!("its worker was lost {lost} times");
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

    async fn apply_routed(&mut self, routed: RoutedEvent) {
        match routed {
            RoutedEvent::Worker { batch, events } => {
                for event in events {
                    self.apply(event);
                }
                if let EventSource::Routed { applied, .. } = &mut self.source {
                    applied.push(batch);
                }
            }
            RoutedEvent::Requeue => self.requeue_in_flight(),
        }
    }

    /// A worker took the step and stopped heartbeating (the janitor reported it `lost`): an
    /// infrastructure failure, not the step's. It runs again, outside its own retry budget, up
    /// to its `retry.lost` times; lost once more, it is given up on and its task recorded in the
    /// queue's dead-letter place.
    fn count_lost(&mut self, name: &str) {
        let allowed = self
            .pipeline
            .steps
            .get(name)
            .map_or(0, |s| s.retry.lost as usize);
        // The attempt being applied is not marked yet: it is the one more.
        if lost_attempts(self.steps.get(name)) < allowed {
            return;
        }
        self.give_up.insert(name.to_string());
        if let (Some(step), Some(record)) = (self.pipeline.steps.get(name), self.steps.get(name)) {
            let task = build_task(&self.engine.data_dir, &self.run, step, record, &self.steps);
            self.dead_letters.push(task);
        }
    }

    /// Redis lost what it held: each queued or running attempt is ended as interrupted (not a
    /// failure of the step: it does not use up retries) and the step is queued again as a new
    /// attempt. A worker still running the old attempt loses its lease and is refused.
    fn requeue_in_flight(&mut self) {
        let names: Vec<String> = self.steps.keys().cloned().collect();
        let now = now_ms();
        for name in names {
            let Some(record) = self.steps.get_mut(&name) else {
                continue;
            };
            if !matches!(record.status, StepStatus::Queued | StepStatus::Running) {
                continue;
            }
            if let Some(attempt) = record.attempts.last_mut() {
                attempt.status = StepStatus::Failed;
                attempt.finished_ms = Some(now);
                attempt.message = Some("Redis lost the task; queued again".into());
            }
            record.status = StepStatus::Pending;
            self.in_flight = self.in_flight.saturating_sub(1);
            self.ready.push_front(name.clone());
            self.touch_step(&name);
            self.event(
                Some(&name),
                None,
                "step.requeued",
                Some("Redis lost the task".into()),
            );
        }
    }

    fn start_ready_steps(&mut self) -> Vec<TaskSpec> {
        let mut tasks = Vec::new();
        while self.in_flight < self.run.parallelism {
            let Some(name) = self.ready.pop_front() else {
                break;
            };
            if let Some(reason) = self.false_condition(&name) {
                self.set_terminal(&name, StepStatus::Skipped, Some(reason.clone()));
                self.event(Some(&name), None, "step.skipped", Some(reason));
                self.skip_dependents(&name, "was skipped");
                continue;
            }
            let Some(record) = self.steps.get_mut(&name) else {
                continue;
            };
            let number = record.attempts.len() as u32 + 1;
            record.attempts.push(AttemptRecord {
                number,
                status: StepStatus::Queued,
                outcome: None,
                exit_code: None,
                signal: None,
                worker: None,
                queued_ms: now_ms(),
                started_ms: None,
                finished_ms: None,
                message: None,
                dir: attempt_dir(&self.engine.data_dir, &self.run.id, &name, number),
            });
            record.status = StepStatus::Queued;
            record.retry_at_ms = None;
            self.in_flight += 1;
            if let Some(step) = self.pipeline.steps.get(&name) {
                tasks.push(build_task(
                    &self.engine.data_dir,
                    &self.run,
                    step,
                    &self.steps[&name],
                    &self.steps,
                ));
            }
            self.touch_step(&name);
            self.event(Some(&name), Some(number), "step.queued", None);
        }
        tasks
    }

    /// `Some(reason)` when the step has a `when` that does not hold.
    fn false_condition(&self, name: &str) -> Option<String> {
        let when = self.pipeline.steps.get(name)?.when.as_ref()?;
        let value = match &when.left {
            Operand::StepOutput { step, key } => {
                self.steps.get(step).and_then(|s| s.outputs.get(key))
            }
            Operand::Param(param) => self.run.params.get(param),
        };
        if when.holds(value.map(String::as_str)) {
            return None;
        }
        Some(match value {
            Some(v) => format!("condition `{when}` is false (value: {v:?})"),
            None => format!("condition `{when}` is false ({} was never set)", when.left),
        })
    }

    fn apply(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Started { key, worker, at_ms } => {
                let Some(record) = self.steps.get_mut(&key.step) else {
                    return;
                };
                let current = record.status == StepStatus::Queued
                    && record.attempts.len() as u32 == key.attempt
                    && key.run_id == self.run.id;
                if !current {
                    return;
                }
                record.status = StepStatus::Running;
                if let Some(attempt) = record.attempts.last_mut() {
                    attempt.status = StepStatus::Running;
                    attempt.started_ms = Some(at_ms);
                    attempt.worker = Some(worker);
                }
                // A start changes nothing a crash could lose: resume treats queued and running
                // alike. It is committed with the next change, not on its own.
                let urgent = self.urgent;
                self.touch_step(&key.step);
                self.event(Some(&key.step), Some(key.attempt), "step.started", None);
                self.urgent = urgent;
            }
            WorkerEvent::Finished(result) => self.apply_result(result),
        }
    }

    fn apply_result(&mut self, result: TaskResult) {
        let key = result.key.clone();
        let Some(record) = self.steps.get(&key.step) else {
            tracing::warn!(task = %key, "Result for an unknown step ignored.");
            return;
        };
        let current = matches!(record.status, StepStatus::Queued | StepStatus::Running)
            && record.attempts.len() as u32 == key.attempt
            && key.run_id == self.run.id;
        if !current {
            // Fencing: an attempt that is no longer current cannot overwrite newer state.
            tracing::warn!(task = %key, status = record.status.as_str(), "Stale result rejected.");
            return;
        }
        self.in_flight -= 1;
        if result.outcome == Outcome::Lost {
            self.count_lost(&key.step);
        }
        let Some(record) = self.steps.get_mut(&key.step) else {
            return;
        };
        let status = match result.outcome {
            Outcome::Succeeded => StepStatus::Succeeded,
            Outcome::Cancelled => StepStatus::Cancelled,
            Outcome::Failed | Outcome::TimedOut | Outcome::Error | Outcome::Lost => {
                StepStatus::Failed
            }
        };
        if let Some(attempt) = record.attempts.last_mut() {
            attempt.status = status;
            attempt.outcome = Some(result.outcome.as_str().to_string());
            attempt.exit_code = result.exit_code;
            attempt.signal = result.signal;
            attempt.started_ms.get_or_insert(result.started_ms);
            attempt.finished_ms = Some(result.finished_ms);
            attempt.message = result.message.clone();
        }
        let detail = describe_result(&result);
        match status {
            StepStatus::Succeeded => {
                record.outputs = result.outputs;
                record.metrics = result.metrics;
                self.set_terminal(&key.step, StepStatus::Succeeded, None);
                self.event(Some(&key.step), Some(key.attempt), "step.succeeded", None);
                for dependent in self.dependents.get(&key.step).cloned().unwrap_or_default() {
                    if let Some(waiting) = self.waiting_on.get_mut(&dependent) {
                        *waiting = waiting.saturating_sub(1);
                        let pending = self
                            .steps
                            .get(&dependent)
                            .is_some_and(|s| s.status == StepStatus::Pending);
                        if *waiting == 0 && pending {
                            self.ready.push_back(dependent);
                        }
                    }
                }
            }
            StepStatus::Cancelled => {
                self.set_terminal(
                    &key.step,
                    StepStatus::Cancelled,
                    Some("the run was cancelled".into()),
                );
                self.event(Some(&key.step), Some(key.attempt), "step.cancelled", None);
                self.skip_dependents(&key.step, "was cancelled");
            }
            _ => {
                if let Some(delay) = self.retry_delay(&key.step, &result) {
                    let wait = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    let at = now_ms().saturating_add(wait);
                    if let Some(record) = self.steps.get_mut(&key.step) {
                        record.status = StepStatus::Pending;
                        record.retry_at_ms = Some(at);
                    }
                    self.retries.push(Reverse((at, key.step.clone())));
                    self.touch_step(&key.step);
                    self.event(
                        Some(&key.step),
                        Some(key.attempt),
                        "step.retrying",
                        Some(format!(
                            "{detail}; retry in {}",
                            humantime::format_duration(delay)
                        )),
                    );
                } else {
                    if let Some(record) = self.steps.get_mut(&key.step) {
                        // Kept for people: a failed gate's metrics say by how much it failed.
                        record.outputs = result.outputs;
                        record.metrics = result.metrics;
                    }
                    self.set_terminal(&key.step, StepStatus::Failed, None);
                    self.event(
                        Some(&key.step),
                        Some(key.attempt),
                        "step.failed",
                        Some(detail),
                    );
                    self.skip_dependents(&key.step, "failed");
                }
            }
        }
    }

    /// The wait before another attempt, or `None` when the policy allows no more.
    fn retry_delay(&self, name: &str, result: &TaskResult) -> Option<Duration> {
        if self.cancel_deadline.is_some() || self.give_up.contains(name) {
            return None;
        }
        let policy = &self.pipeline.steps.get(name)?.retry;
        // The worker died, not the step: run it again at once, on any worker (`count_lost`
        // gave up on it when its `retry.lost` ran out).
        if result.outcome == Outcome::Lost {
            return Some(Duration::ZERO);
        }
        // Attempts a dead runner interrupted and attempts whose worker was lost are not the
        // step's failures: they do not count against its `limit`.
        let failures = self
            .steps
            .get(name)?
            .attempts
            .iter()
            .filter(|a| a.outcome.is_some() && a.outcome.as_deref() != Some(Outcome::Lost.as_str()))
            .count() as u32;
        // A process killed by signal N counts as exit code 128 + N, as shells and Docker say.
        let code = result.exit_code.or(result.signal.map(|s| 128 + s));
        let allowed = failures <= policy.limit && policy.retries_exit_code(code);
        allowed.then(|| policy.delay_before(failures + 1))
    }

    fn release_due_retries(&mut self, now: u64) {
        while let Some(Reverse((at, _))) = self.retries.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, name))) = self.retries.pop() {
                self.ready.push_back(name);
            }
        }
    }

    /// Marks every step downstream of `name` skipped, because `name` did not succeed.
    fn skip_dependents(&mut self, name: &str, why: &str) {
        let mut stack = vec![name.to_string()];
        while let Some(upstream) = stack.pop() {
            for dependent in self.dependents.get(&upstream).cloned().unwrap_or_default() {
                let pending = self
                    .steps
                    .get(&dependent)
                    .is_some_and(|s| s.status == StepStatus::Pending);
                if pending {
                    let reason = format!("upstream step `{name}` {why}");
                    self.set_terminal(&dependent, StepStatus::Skipped, Some(reason.clone()));
                    self.event(Some(&dependent), None, "step.skipped", Some(reason));
                    stack.push(dependent);
                }
            }
        }
    }

    /// Cancels the run: nothing new starts, queued work is withdrawn, running steps are told to
    /// stop and get [`CANCEL_WAIT`] to confirm.
    async fn cancel(&mut self) {
        self.cancel_deadline = Some(tokio::time::Instant::now() + CANCEL_WAIT);
        self.event(None, None, "run.cancelling", None);
        if let Err(err) = self.engine.queue.cancel_run(&self.run.id).await {
            tracing::warn!(run = %self.run.id, error = %err, "Could not send the cancel to workers.");
        }
        self.ready.clear();
        self.retries.clear();
        let names: Vec<String> = self.steps.keys().cloned().collect();
        for name in names {
            match self.steps[&name].status {
                StepStatus::Pending => {
                    self.set_terminal(
                        &name,
                        StepStatus::Cancelled,
                        Some("the run was cancelled".into()),
                    );
                }
                // Queued but not started: withdrawn from the queue above. Should a worker have
                // taken it in the same instant, its result is rejected as stale.
                StepStatus::Queued => {
                    self.set_terminal(
                        &name,
                        StepStatus::Cancelled,
                        Some("the run was cancelled".into()),
                    );
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
                _ => {}
            }
        }
    }

    /// Running steps that never confirmed the cancel are recorded as cancelled all the same.
    fn abandon_in_flight(&mut self) {
        let names: Vec<String> = self.steps.keys().cloned().collect();
        for name in names {
            let Some(record) = self.steps.get_mut(&name) else {
                continue;
            };
            if matches!(record.status, StepStatus::Queued | StepStatus::Running) {
                // The attempt ends too, so nothing shows it running on a worker that is gone.
                if let Some(attempt) = record.attempts.last_mut() {
                    attempt.status = StepStatus::Cancelled;
                    attempt.outcome = Some(Outcome::Cancelled.as_str().to_string());
                    attempt.finished_ms.get_or_insert(now_ms());
                    attempt.message =
                        Some("cancelled; its worker did not confirm the stop in time".into());
                }
                self.set_terminal(
                    &name,
                    StepStatus::Cancelled,
                    Some("the run was cancelled; the worker did not confirm the stop".into()),
                );
                self.in_flight = self.in_flight.saturating_sub(1);
            }
        }
        self.in_flight = 0;
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        let statuses = || self.steps.values().map(|s| s.status);
        self.run.status = if self.cancel_deadline.is_some() {
            RunStatus::Cancelled
        } else if statuses().any(|s| s == StepStatus::Failed) {
            RunStatus::Failed
        } else if statuses().any(|s| s == StepStatus::Cancelled) {
            RunStatus::Cancelled
        } else {
            RunStatus::Succeeded
        };
        self.run.finished_ms = Some(now_ms());
        self.run_changed = true;
        let kind = format!("run.{}", self.run.status.as_str());
        self.event(None, None, &kind, None);
        self.commit()?;
        Ok(())
    }

    fn set_terminal(&mut self, name: &str, status: StepStatus, reason: Option<String>) {
        if let Some(record) = self.steps.get_mut(name) {
            record.status = status;
            record.reason = reason;
            record.retry_at_ms = None;
            if let Some(attempt) = record.attempts.last_mut() {
                if !attempt.status.is_terminal() {
                    attempt.status = status;
                    attempt.finished_ms.get_or_insert(now_ms());
                }
            }
        }
        self.touch_step(name);
    }

    fn touch_step(&mut self, name: &str) {
        self.changed_steps.push(name.to_string());
        self.dirty = true;
        self.urgent = true;
    }

    fn event(
        &mut self,
        step: Option<&str>,
        attempt: Option<u32>,
        kind: &str,
        detail: Option<String>,
    ) {
        let event = EventRecord {
            seq: self.next_seq,
            at_ms: now_ms(),
            step: step.map(str::to_string),
            attempt,
            kind: kind.to_string(),
            detail,
        };
        self.next_seq += 1;
        self.changes.put_event(&self.run.id, &event);
        self.dirty = true;
        self.urgent = true;
    }

    /// Writes everything changed since the last commit with one flush, then tells the observer.
    /// A full disk holds the run here until it is freed: nothing applied is acknowledged or
    /// dispatched before it is written.
    fn commit(&mut self) -> Result<(), EngineError> {
        self.write(true)
    }

    /// [`RunDriver::commit`]; `patient` waits out write failures that can pass.
    fn write(&mut self, patient: bool) -> Result<(), EngineError> {
        let mut changed = std::mem::take(&mut self.changed_steps);
        changed.sort_by_key(|name| self.steps.get_index_of(name));
        changed.dedup();
        for name in &changed {
            if let Some(record) = self.steps.get(name) {
                self.changes.put_step(record);
            }
        }
        if self.run_changed {
            self.changes.put_run(&self.run);
        }
        let (store, changes) = (&self.engine.store, &self.changes);
        tokio::task::block_in_place(|| match patient {
            true => store.commit_patiently(changes),
            false => store.commit(changes),
        })?;
        self.changes = Changes::default();
        self.dirty = false;
        self.urgent = false;
        for name in &changed {
            if let Some(record) = self.steps.get(name) {
                self.observer.on_step(&self.run, record);
            }
        }
        if std::mem::take(&mut self.run_changed) {
            self.observer.on_run(&self.run);
        }
        Ok(())
    }
}

/// A run that has not finished, with the pipeline it follows and its steps, from the store.
fn load_unfinished(
    engine: &Engine,
    run_id: &str,
) -> Result<(RunRecord, Pipeline, IndexMap<String, StepRecord>), EngineError> {
    let run = match engine.store.lookup_run(run_id)? {
        RunLookup::Found(run) => run,
        RunLookup::NotFound => return Err(EngineError::UnknownRun(run_id.to_string())),
        RunLookup::Ambiguous => return Err(EngineError::AmbiguousRun(run_id.to_string())),
    };
    if run.status.is_terminal() {
        return Err(EngineError::AlreadyFinished(run.id, run.status.as_str()));
    }
    let definition = engine
        .store
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
    let steps: IndexMap<String, StepRecord> = engine
        .store
        .steps(&run.id)?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    Ok((run, pipeline, steps))
}

fn describe_result(result: &TaskResult) -> String {
    let mut parts = vec![result.outcome.as_str().to_string()];
    if let Some(code) = result.exit_code {
        parts.push(format!("exit code {code}"));
    }
    if let Some(signal) = result.signal {
        parts.push(format!("signal {signal}"));
    }
    if let Some(message) = &result.message {
        parts.push(message.clone());
    }
    parts.join(", ")
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

async fn next_routed(source: &mut EventSource) -> Option<RoutedEvent> {
    match source {
        EventSource::Routed { events, .. } => events.recv().await,
        EventSource::Queue => std::future::pending().await,
    }
}

/// Queues a task whose attempt is committed, retrying while the queue fails (Redis away): the
/// attempt is in the store, and workers claim each attempt once, so sending it again is safe.
async fn dispatch(queue: &dyn TaskQueue, tasks: Vec<TaskSpec>) -> Result<(), EngineError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match queue.dispatch_batch(&tasks).await {
            Ok(()) => return Ok(()),
            Err(QueueError::Closed) => return Err(EngineError::QueueClosed),
            Err(err) => {
                tracing::warn!(tasks = tasks.len(), error = %err, retry_in = ?delay, "Could not queue steps; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How many of a step's attempts ended because their worker was lost.
fn lost_attempts(record: Option<&StepRecord>) -> usize {
    record.map_or(0, |s| {
        s.attempts
            .iter()
            .filter(|a| a.outcome.as_deref() == Some(Outcome::Lost.as_str()))
            .count()
    })
}
