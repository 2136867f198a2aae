//! The rules of one run as a state machine without I/O: it takes worker events and the current
//! time, and keeps what they change (records to commit, tasks to queue, dead letters) for the
//! driver to carry out. Nothing here reads the clock, the store or the queue, so the rules are
//! tested by feeding events (`state/tests.rs`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use sluice_worker::task::{Outcome, TaskResult, TaskSpec, WorkerEvent};

use super::tasks::{attempt_dir, build_task};
use crate::spec::builtins::Builtin;
use crate::spec::condition::Operand;
use crate::spec::{Action, Phase, Pipeline};
use crate::store::*;

#[cfg(test)]
mod tests;

/// One run's steps and the bookkeeping that decides what runs next.
pub struct RunState {
    data_dir: PathBuf,
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
    /// The run is being cancelled: nothing new starts and nothing is retried.
    cancelling: bool,
    /// Why the run is being stopped when its `timeout` passed (it then ends failed).
    timed_out: Option<String>,
    /// Steps whose next failure is final whatever their retry policy (lost too often).
    give_up: HashSet<String>,
    /// Whether `on_failure:` or `finally:` steps have been started or decided: the run's own
    /// steps are all over, so the run's timeout and the wait for a cancel no longer apply.
    handlers_begun: bool,
    pending: Pending,
}

/// What changed since the last [`RunState::take_commit`].
#[derive(Default)]
struct Pending {
    changes: Changes,
    steps: Vec<String>,
    run: bool,
    /// Changes wait here until committed; `urgent` ones are committed before the driver goes
    /// on, the rest (a step started) ride along with the next commit or a short timer.
    dirty: bool,
    urgent: bool,
    /// Tasks given up on, to record in the dead-letter place once committed.
    dead_letters: Vec<TaskSpec>,
}

/// Everything that changed since the last commit, ready to write in one batch.
pub struct Commit {
    /// The records to write.
    pub changes: Changes,
    /// Names of the steps whose records changed, in pipeline order.
    pub steps: Vec<String>,
    /// Whether the run's record changed.
    pub run: bool,
}

impl RunState {
    /// The state of `run` with `steps` as recorded; events are numbered from `next_seq`.
    pub fn new(
        data_dir: PathBuf,
        pipeline: Pipeline,
        run: RunRecord,
        steps: IndexMap<String, StepRecord>,
        next_seq: u64,
    ) -> RunState {
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        let mut waiting_on = HashMap::new();
        let mut ready = VecDeque::new();
        let mut retries = BinaryHeap::new();
        let mut handlers_begun = false;
        for step in pipeline.steps.values() {
            // A handler's dependency on an earlier section only brings its outputs: it neither
            // holds the handler back nor skips it.
            let ordering = |dep: &&String| {
                pipeline
                    .steps
                    .get(*dep)
                    .is_some_and(|d| d.phase == step.phase)
            };
            for dep in step.depends.iter().filter(ordering) {
                dependents
                    .entry(dep.clone())
                    .or_default()
                    .push(step.name.clone());
            }
            let waiting = step
                .depends
                .iter()
                .filter(ordering)
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
            handlers_begun |= step.phase.is_handler() && !pending;
            let retry_at = steps.get(&step.name).and_then(|s| s.retry_at_ms);
            match retry_at {
                Some(at) if pending => retries.push(Reverse((at, step.name.clone()))),
                // Handlers wait for the run's steps to be over (`open_handlers`).
                _ if waiting == 0 && pending && !step.phase.is_handler() => {
                    ready.push_back(step.name.clone())
                }
                _ => {}
            }
        }
        RunState {
            data_dir,
            pipeline,
            run,
            steps,
            dependents,
            waiting_on,
            ready,
            retries,
            in_flight: 0,
            next_seq,
            cancelling: false,
            timed_out: None,
            give_up: HashSet::new(),
            handlers_begun,
            pending: Pending::default(),
        }
    }

    /// A new run of `pipeline`: every step pending, all of it to be written (with `pipeline`'s
    /// definition and the trigger's `marks`) in the first commit.
    pub fn created(
        data_dir: PathBuf,
        pipeline: Pipeline,
        run: RunRecord,
        definition: &PipelineRecord,
        marks: &[(String, serde_json::Value)],
        prior: &[StepRecord],
        now: u64,
    ) -> RunState {
        let steps = pipeline
            .steps
            .keys()
            .enumerate()
            .map(|(i, name)| {
                // A step decided before the run: a success kept from an earlier run (its
                // record, as this run's), or a step a subset skips.
                if let Some(earlier) = prior.iter().find(|k| &k.name == name) {
                    let reason = match earlier.status {
                        StepStatus::Succeeded => Some(format!("kept from run {}", earlier.run_id)),
                        _ => earlier.reason.clone(),
                    };
                    let record = StepRecord {
                        run_id: run.id.clone(),
                        index: i as u32,
                        reason,
                        retry_at_ms: None,
                        ..earlier.clone()
                    };
                    return (name.clone(), record);
                }
                let step = &pipeline.steps[name];
                let record = StepRecord {
                    phase: step.phase,
                    matrix: match &step.matrix {
                        Some(crate::spec::Matrix::Cell { values, .. }) => values.clone(),
                        _ => Default::default(),
                    },
                    ..StepRecord::pending(&run.id, name, i as u32)
                };
                (name.clone(), record)
            })
            .collect();
        let mut state = RunState::new(data_dir, pipeline, run, steps, 0);
        state.pending.changes.put_pipeline(definition);
        let names: Vec<String> = state.steps.keys().cloned().collect();
        for name in names {
            state.touch_step(&name);
        }
        for (key, value) in marks {
            state.pending.changes.put_mark(key, value);
        }
        state.pending.run = true;
        let kind = if state.run.status == RunStatus::Queued {
            EventKind::RunWaiting
        } else {
            EventKind::RunStarted
        };
        let detail = format!("trigger {}", state.run.trigger);
        state.event(None, None, kind, Some(detail), now);
        state
    }

    /// A run whose runner was killed, to drive to the end: steps that succeeded stay, every
    /// other step runs again, attempts numbered on.
    pub fn resumed(
        data_dir: PathBuf,
        pipeline: Pipeline,
        mut run: RunRecord,
        mut steps: IndexMap<String, StepRecord>,
        next_seq: u64,
        parallelism: Option<usize>,
        now: u64,
    ) -> RunState {
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
        let mut state = RunState::new(data_dir, pipeline, run, steps, next_seq);
        for name in reset {
            state.touch_step(&name);
        }
        state.pending.run = true;
        state.event(None, None, EventKind::RunResumed, None, now);
        state
    }

    /// A run in flight when the daemon restarted, picked up without disturbing it: running
    /// attempts keep running (their results arrive through the queue), queued attempts are
    /// returned to be queued again under the same attempt number (workers claim each attempt
    /// once), retries wait out their delay. With `queue_lost_data`, every attempt in flight is
    /// queued again as a new attempt instead.
    pub fn reattached(
        data_dir: PathBuf,
        pipeline: Pipeline,
        run: RunRecord,
        steps: IndexMap<String, StepRecord>,
        next_seq: u64,
        queue_lost_data: bool,
        now: u64,
    ) -> (RunState, Vec<TaskSpec>) {
        let mut state = RunState::new(data_dir, pipeline, run, steps, next_seq);
        let mut redispatch = Vec::new();
        for (name, record) in &state.steps {
            match record.status {
                StepStatus::Queued => {
                    state.in_flight += 1;
                    redispatch.extend(state.task_for(name));
                }
                StepStatus::Running => state.in_flight += 1,
                _ => {}
            }
        }
        if queue_lost_data {
            redispatch.clear();
            state.requeue_in_flight(now);
        }
        state.event(None, None, EventKind::RunReattached, None, now);
        (state, redispatch)
    }

    /// The run as it stands.
    pub fn run(&self) -> &RunRecord {
        &self.run
    }

    /// The pipeline the run follows.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Every step's record, in file order.
    pub fn steps(&self) -> &IndexMap<String, StepRecord> {
        &self.steps
    }

    /// One step's record.
    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.get(name)
    }

    /// Whether something changed since the last commit.
    pub fn is_dirty(&self) -> bool {
        self.pending.dirty
    }

    /// Whether a change must be committed before the driver goes on (before the tasks it made
    /// are queued, before events are acknowledged).
    pub fn is_urgent(&self) -> bool {
        self.pending.urgent
    }

    /// Whether nothing is in flight, ready or waiting to be retried: the run can finish.
    pub fn is_settled(&self) -> bool {
        self.in_flight == 0 && self.ready.is_empty() && self.retries.is_empty()
    }

    /// How many attempts are queued or running.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a step is ready and waits only for its turn (a free slot under `parallelism`).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// When the next retry is due, in ms since the epoch.
    pub fn next_retry_at(&self) -> Option<u64> {
        self.retries.peek().map(|Reverse((at, _))| *at)
    }

    /// Whether the run is being cancelled.
    pub fn is_cancelling(&self) -> bool {
        self.cancelling
    }

    /// Everything changed since the last commit, as records to write; the state is clean after.
    pub fn take_commit(&mut self) -> Commit {
        let mut pending = std::mem::take(&mut self.pending);
        // Dead letters wait for the commit to be written: `take_dead_letters` hands them out.
        self.pending.dead_letters = std::mem::take(&mut pending.dead_letters);
        let mut steps = pending.steps;
        steps.sort_by_key(|name| self.steps.get_index_of(name));
        steps.dedup();
        for name in &steps {
            if let Some(record) = self.steps.get(name) {
                pending.changes.put_step(record);
            }
        }
        if pending.run {
            pending.changes.put_run(&self.run);
        }
        Commit {
            changes: pending.changes,
            steps,
            run: pending.run,
        }
    }

    /// Tasks given up on since the last call, with why, for the queue's dead-letter place.
    pub fn take_dead_letters(&mut self) -> Vec<(TaskSpec, String)> {
        std::mem::take(&mut self.pending.dead_letters)
            .into_iter()
            .map(|task| {
                let lost = lost_attempts(self.steps.get(&task.key.step));
                (task, format!("its worker was lost {lost} times"))
            })
            .collect()
    }

    /// Starts a run that waited for a concurrency slot.
    pub fn begin(&mut self, now: u64) {
        if self.run.status == RunStatus::Queued {
            self.run.status = RunStatus::Running;
            self.pending.run = true;
            let detail = Some("a concurrency slot freed".into());
            self.event(None, None, EventKind::RunStarted, detail, now);
        }
    }

    /// Moves retries that are due to the ready queue.
    pub fn release_due_retries(&mut self, now: u64) {
        while let Some(Reverse((at, _))) = self.retries.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, name))) = self.retries.pop() {
                self.ready.push_back(name);
            }
        }
    }

    /// Starts ready steps up to the run's parallelism (skipping those whose `when` is false):
    /// each gets a new attempt, and its task is returned to be queued once committed. Once the
    /// run's own steps are over, its `on_failure:` and then its `finally:` steps become ready.
    pub fn start_ready_steps(&mut self, now: u64) -> Vec<TaskSpec> {
        self.open_handlers(now);
        let mut tasks = Vec::new();
        while self.in_flight < self.run.parallelism {
            let Some(name) = self.ready.pop_front() else {
                break;
            };
            if let Some(reason) = self.false_condition(&name) {
                self.set_terminal(&name, StepStatus::Skipped, Some(reason.clone()), now);
                self.event(Some(&name), None, EventKind::StepSkipped, Some(reason), now);
                self.skip_dependents(&name, "was skipped", now);
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
                queued_ms: now,
                started_ms: None,
                finished_ms: None,
                message: None,
                dir: attempt_dir(&self.data_dir, &self.run.id, &name, number),
            });
            record.status = StepStatus::Queued;
            record.retry_at_ms = None;
            self.in_flight += 1;
            tasks.extend(self.task_for(&name));
            self.touch_step(&name);
            self.event(Some(&name), Some(number), EventKind::StepQueued, None, now);
        }
        tasks
    }

    /// When nothing else is left to do, the next section with pending steps begins: the
    /// `on_failure:` steps when the run failed (they are skipped otherwise), then `finally:`.
    fn open_handlers(&mut self, now: u64) {
        if !self.is_settled() {
            return;
        }
        for phase in [Phase::OnFailure, Phase::Finally] {
            let pending: Vec<String> = self
                .pipeline
                .steps
                .values()
                .filter(|s| s.phase == phase)
                .filter(|s| self.steps.get(&s.name).map(|r| r.status) == Some(StepStatus::Pending))
                .map(|s| s.name.clone())
                .collect();
            if pending.is_empty() {
                continue;
            }
            self.handlers_begun = true;
            let skip_why = match (phase, self.outcome()) {
                (Phase::OnFailure, RunStatus::Failed) => None,
                (Phase::OnFailure, RunStatus::Cancelled) => Some("the run was cancelled"),
                (Phase::OnFailure, _) => Some("the run did not fail"),
                _ => None,
            };
            if let Some(why) = skip_why {
                for name in pending {
                    self.set_terminal(&name, StepStatus::Skipped, Some(why.into()), now);
                    self.event(
                        Some(&name),
                        None,
                        EventKind::StepSkipped,
                        Some(why.into()),
                        now,
                    );
                }
                continue;
            }
            for name in pending {
                if self.waiting_on.get(&name).copied().unwrap_or(0) == 0 {
                    self.ready.push_back(name);
                }
            }
            return;
        }
    }

    /// Whether the run's own steps are over and its `on_failure:` or `finally:` steps began.
    pub fn in_handlers(&self) -> bool {
        self.handlers_begun
    }

    /// The task for the newest attempt of step `name`; a handler also learns how the run went
    /// (`SLUICE_RUN_STATUS`, `SLUICE_FAILED_STEPS`).
    fn task_for(&self, name: &str) -> Option<TaskSpec> {
        let step = self.pipeline.steps.get(name)?;
        let record = self.steps.get(name)?;
        let mut task = build_task(&self.data_dir, &self.run, step, record, &self.steps);
        if step.phase.is_handler() {
            let failed: Vec<&str> = self
                .steps
                .values()
                .filter(|s| s.status == StepStatus::Failed)
                .map(|s| s.name.as_str())
                .collect();
            task.env.extend([
                ("SLUICE_RUN_STATUS".into(), self.outcome().as_str().into()),
                ("SLUICE_FAILED_STEPS".into(), failed.join(",")),
            ]);
        }
        Some(task)
    }

    /// `Some(reason)` when the step has a `when` that does not hold: one that reads a value
    /// never set and is not settled without it counts as false, and the reason names that value.
    fn false_condition(&self, name: &str) -> Option<String> {
        let when = self.pipeline.steps.get(name)?.when.as_ref()?;
        let verdict = when.verdict(|operand| match operand {
            Operand::StepOutput { step, key } => self
                .steps
                .get(step)
                .and_then(|s| s.outputs.get(key))
                .cloned(),
            Operand::Param(param) => self.run.params.get(param).cloned(),
        });
        let why = verdict.why_not()?;
        Some(format!("condition `{when}` is false ({why})"))
    }

    /// Records what the cache decided for `step` (before its task is queued or its hit applied).
    pub fn note_cache(&mut self, step: &str, note: super::cache::CacheNote) {
        if let Some(record) = self.steps.get_mut(step) {
            record.cache = Some(note);
            self.touch_step(step);
        }
    }

    /// Records what the scheduler resolved or judged for `step` before its task was queued or
    /// ended (`engine::builtins`): a gate's table, the versions of its model inputs.
    pub fn note_prepared(
        &mut self,
        step: &str,
        gate: Option<crate::models::gate::GateReport>,
        models: std::collections::BTreeMap<String, String>,
    ) {
        if gate.is_none() && models.is_empty() {
            return;
        }
        if let Some(record) = self.steps.get_mut(step) {
            record.gate = gate;
            record.models = models;
            self.touch_step(step);
        }
    }

    /// Applies one worker event; events for attempts that are not current change nothing
    /// (fencing).
    pub fn apply(&mut self, event: WorkerEvent, now: u64) {
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
                let urgent = self.pending.urgent;
                self.touch_step(&key.step);
                self.event(
                    Some(&key.step),
                    Some(key.attempt),
                    EventKind::StepStarted,
                    None,
                    now,
                );
                self.pending.urgent = urgent;
            }
            WorkerEvent::Finished(result) => self.apply_result(result, now),
        }
    }

    fn apply_result(&mut self, result: TaskResult, now: u64) {
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
        if let Some(note) = record.cache.as_mut() {
            if let Some(run) = &result.cached_from {
                note.hit_from = Some(run.clone());
                note.miss.clear();
            }
            if let Some(why) = &result.cache_miss {
                note.miss = vec![why.clone()];
            }
        }
        let status = match result.outcome {
            Outcome::Succeeded => StepStatus::Succeeded,
            Outcome::Cancelled => StepStatus::Cancelled,
            Outcome::Failed | Outcome::TimedOut | Outcome::Error | Outcome::Lost => {
                StepStatus::Failed
            }
        };
        if let Some(attempt) = record.attempts.last_mut() {
            attempt.status = status;
            attempt.outcome = Some(result.outcome);
            attempt.exit_code = result.exit_code;
            attempt.signal = result.signal;
            attempt.started_ms.get_or_insert(result.started_ms);
            if attempt.worker.is_none() {
                // Its `Started` came with this result, or never (a worker lost at once).
                attempt.worker = result.worker.clone();
            }
            attempt.finished_ms = Some(result.finished_ms);
            attempt.message = result.message.clone();
        }
        let detail = describe_result(&result);
        let (step, attempt) = (Some(key.step.as_str()), Some(key.attempt));
        match status {
            StepStatus::Succeeded => {
                record.outputs = result.outputs;
                record.metrics = result.metrics;
                record.artifacts = result.artifacts;
                record.image_digest = result.image_digest;
                self.set_terminal(&key.step, StepStatus::Succeeded, None, now);
                self.event(step, attempt, EventKind::StepSucceeded, None, now);
                self.release_dependents(&key.step);
            }
            StepStatus::Cancelled => {
                let reason = Some("the run was cancelled".into());
                self.set_terminal(&key.step, StepStatus::Cancelled, reason, now);
                self.event(step, attempt, EventKind::StepCancelled, None, now);
                self.skip_dependents(&key.step, "was cancelled", now);
            }
            _ => match self.retry_delay(&key.step, &result) {
                Some(delay) => {
                    let wait = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    let at = now.saturating_add(wait);
                    if let Some(record) = self.steps.get_mut(&key.step) {
                        record.status = StepStatus::Pending;
                        record.retry_at_ms = Some(at);
                    }
                    self.retries.push(Reverse((at, key.step.clone())));
                    self.touch_step(&key.step);
                    let delay = humantime::format_duration(delay);
                    let detail = Some(format!("{detail}; retry in {delay}"));
                    self.event(step, attempt, EventKind::StepRetrying, detail, now);
                }
                None => {
                    if let Some(record) = self.steps.get_mut(&key.step) {
                        // Kept for people: a failed gate's metrics say by how much it failed.
                        record.outputs = result.outputs;
                        record.metrics = result.metrics;
                    }
                    self.set_terminal(&key.step, StepStatus::Failed, None, now);
                    self.event(step, attempt, EventKind::StepFailed, Some(detail), now);
                    self.skip_dependents(&key.step, "failed", now);
                }
            },
        }
    }

    /// One dependency of each step downstream of `name` succeeded; those with none left start.
    fn release_dependents(&mut self, name: &str) {
        for dependent in self.dependents.get(name).cloned().unwrap_or_default() {
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
            let task = build_task(&self.data_dir, &self.run, step, record, &self.steps);
            self.pending.dead_letters.push(task);
        }
    }

    /// The wait before another attempt, or `None` when the policy allows no more.
    fn retry_delay(&self, name: &str, result: &TaskResult) -> Option<Duration> {
        if self.cancelling || self.give_up.contains(name) {
            return None;
        }
        let step = self.pipeline.steps.get(name)?;
        // A gate's verdict follows from metrics that are already recorded: another attempt
        // would fail the same way.
        if result.outcome == Outcome::Failed
            && matches!(&step.action, Action::Uses { builtin, .. } if matches!(builtin.as_ref(), Builtin::Gate(_)))
        {
            return None;
        }
        let policy = &step.retry;
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
            .filter(|a| a.outcome.is_some_and(|o| o != Outcome::Lost))
            .count() as u32;
        // A process killed by signal N counts as exit code 128 + N, as shells and Docker say.
        let code = result.exit_code.or(result.signal.map(|s| 128 + s));
        let allowed = failures <= policy.limit && policy.retries_exit_code(code);
        allowed.then(|| policy.delay_before(failures + 1))
    }

    /// The queue lost what it held: each queued or running attempt is ended as interrupted (not
    /// a failure of the step: it does not use up retries) and the step is queued again as a new
    /// attempt. A worker still running the old attempt loses its lease and is refused.
    pub fn requeue_in_flight(&mut self, now: u64) {
        let names: Vec<String> = self.steps.keys().cloned().collect();
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
            let detail = Some("Redis lost the task".into());
            self.event(Some(&name), None, EventKind::StepRequeued, detail, now);
        }
    }

    /// Marks every step downstream of `name` skipped, because `name` did not succeed.
    fn skip_dependents(&mut self, name: &str, why: &str, now: u64) {
        let mut stack = vec![name.to_string()];
        while let Some(upstream) = stack.pop() {
            for dependent in self.dependents.get(&upstream).cloned().unwrap_or_default() {
                let pending = self
                    .steps
                    .get(&dependent)
                    .is_some_and(|s| s.status == StepStatus::Pending);
                if pending {
                    let reason = format!("upstream step `{name}` {why}");
                    self.set_terminal(&dependent, StepStatus::Skipped, Some(reason.clone()), now);
                    self.event(
                        Some(&dependent),
                        None,
                        EventKind::StepSkipped,
                        Some(reason),
                        now,
                    );
                    stack.push(dependent);
                }
            }
        }
    }

    /// Cancels the run: nothing new starts, pending and queued steps end cancelled (the driver
    /// withdraws queued tasks and tells workers), running steps are left to confirm.
    pub fn cancel(&mut self, now: u64) {
        self.stop(now, "the run was cancelled".into());
    }

    /// The run's `timeout` passed: stopped as a cancel is, and it ends failed, saying why.
    pub fn time_out(&mut self, now: u64, limit: std::time::Duration) {
        let why = format!(
            "the run's timeout ({}) passed",
            humantime::format_duration(limit)
        );
        self.timed_out = Some(why.clone());
        self.stop(now, why);
    }

    fn stop(&mut self, now: u64, why: String) {
        self.cancelling = true;
        let detail = self.timed_out.clone();
        self.event(None, None, EventKind::RunCancelling, detail, now);
        self.ready.clear();
        self.retries.clear();
        let names: Vec<String> = self.steps.keys().cloned().collect();
        for name in names {
            let status = self.steps[&name].status;
            if !matches!(status, StepStatus::Pending | StepStatus::Queued) {
                continue;
            }
            // `finally:` steps run whatever happened; `on_failure:` steps still run when the
            // run failed by its timeout.
            match self.pipeline.steps.get(&name).map(|s| s.phase) {
                Some(Phase::Finally) => continue,
                Some(Phase::OnFailure) if self.timed_out.is_some() => continue,
                _ => {}
            }
            // Queued but not started: withdrawn from the queue. Should a worker have taken it in
            // the same instant, its result is refused as stale.
            let reason = Some(why.clone());
            self.set_terminal(&name, StepStatus::Cancelled, reason, now);
            if status == StepStatus::Queued {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
        }
    }

    /// Running steps that never confirmed the cancel are recorded as cancelled all the same.
    pub fn abandon_in_flight(&mut self, now: u64) {
        let names: Vec<String> = self.steps.keys().cloned().collect();
        for name in names {
            let Some(record) = self.steps.get_mut(&name) else {
                continue;
            };
            if matches!(record.status, StepStatus::Queued | StepStatus::Running) {
                // The attempt ends too, so nothing shows it running on a worker that is gone.
                if let Some(attempt) = record.attempts.last_mut() {
                    attempt.status = StepStatus::Cancelled;
                    attempt.outcome = Some(Outcome::Cancelled);
                    attempt.finished_ms.get_or_insert(now);
                    attempt.message =
                        Some("cancelled; its worker did not confirm the stop in time".into());
                }
                let reason =
                    Some("the run was cancelled; the worker did not confirm the stop".into());
                self.set_terminal(&name, StepStatus::Cancelled, reason, now);
            }
        }
        self.in_flight = 0;
    }

    /// How the run goes so far: failed when it timed out, cancelled when it was, failed when a
    /// step failed, cancelled when a step was, else succeeded.
    fn outcome(&self) -> RunStatus {
        let statuses = || self.steps.values().map(|s| s.status);
        if self.timed_out.is_some() {
            RunStatus::Failed
        } else if self.cancelling {
            RunStatus::Cancelled
        } else if statuses().any(|s| s == StepStatus::Failed) {
            RunStatus::Failed
        } else if statuses().any(|s| s == StepStatus::Cancelled) {
            RunStatus::Cancelled
        } else {
            RunStatus::Succeeded
        }
    }

    /// Ends the run with its [`outcome`](Self::outcome); a failed handler fails the run too.
    pub fn finish(&mut self, now: u64) {
        self.run.status = self.outcome();
        self.run.finished_ms = Some(now);
        self.pending.run = true;
        let kind = EventKind::run_ended(self.run.status);
        let detail = self.timed_out.clone();
        self.event(None, None, kind, detail, now);
    }

    fn set_terminal(&mut self, name: &str, status: StepStatus, reason: Option<String>, now: u64) {
        if let Some(record) = self.steps.get_mut(name) {
            record.status = status;
            record.reason = reason;
            record.retry_at_ms = None;
            if let Some(attempt) = record.attempts.last_mut() {
                if !attempt.status.is_terminal() {
                    attempt.status = status;
                    attempt.finished_ms.get_or_insert(now);
                }
            }
        }
        self.touch_step(name);
    }

    fn touch_step(&mut self, name: &str) {
        self.pending.steps.push(name.to_string());
        self.pending.dirty = true;
        self.pending.urgent = true;
    }

    fn event(
        &mut self,
        step: Option<&str>,
        attempt: Option<u32>,
        kind: EventKind,
        detail: Option<String>,
        now: u64,
    ) {
        let event = EventRecord {
            seq: self.next_seq,
            at_ms: now,
            step: step.map(str::to_string),
            attempt,
            kind,
            detail,
        };
        self.next_seq += 1;
        self.pending.changes.put_event(&self.run.id, &event);
        self.pending.dirty = true;
        self.pending.urgent = true;
    }
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

/// How many of a step's attempts ended because their worker was lost.
fn lost_attempts(record: Option<&StepRecord>) -> usize {
    record.map_or(0, |s| {
        s.attempts
            .iter()
            .filter(|a| a.outcome == Some(Outcome::Lost))
            .count()
    })
}
