//! The run's rules, event by event: no store, no queue, no clock.

use std::collections::BTreeMap;

use sluice_worker::task::{Outcome, TaskKey, TaskResult, WorkerEvent};

use super::*;

/// A run of one pipeline, fed by hand; `now` is the clock the state sees.
struct Sim {
    state: RunState,
    now: u64,
}

fn pipeline(yaml: &str) -> Pipeline {
    crate::spec::parse_str("p.yaml", yaml).unwrap_or_else(|d| panic!("{d:?}"))
}

fn run_record(pipeline: &Pipeline) -> RunRecord {
    RunRecord {
        id: "run1".into(),
        pipeline: pipeline.name.clone(),
        definition_hash: "hash".into(),
        trigger: TriggerOrigin::Manual,
        params: BTreeMap::new(),
        base_dir: "/pipelines".into(),
        parallelism: 100,
        status: RunStatus::Running,
        created_ms: 0,
        finished_ms: None,
        step_count: pipeline.steps.len(),
        commit: None,
        no_cache: false,
        retry_of: None,
    }
}

fn definition() -> PipelineRecord {
    PipelineRecord {
        name: "p".into(),
        hash: "hash".into(),
        text: String::new(),
        path: "p.yaml".into(),
    }
}

impl Sim {
    fn new(yaml: &str) -> Sim {
        let pipeline = pipeline(yaml);
        let run = run_record(&pipeline);
        let state = RunState::created("/data".into(), pipeline, run, &definition(), &[], &[], 0);
        Sim { state, now: 1_000 }
    }

    /// Releases due retries and starts what is ready; the started attempts as `step#n`.
    fn tick(&mut self) -> Vec<String> {
        self.state.release_due_retries(self.now);
        let tasks = self.state.start_ready_steps(self.now);
        self.state.take_commit();
        tasks
            .iter()
            .map(|t| format!("{}#{}", t.key.step, t.key.attempt))
            .collect()
    }

    fn key(&self, step: &str) -> TaskKey {
        let attempt = self.state.step(step).unwrap().attempts.len() as u32;
        TaskKey {
            run_id: "run1".into(),
            step: step.into(),
            attempt,
        }
    }

    fn result(&self, key: TaskKey, outcome: Outcome, exit_code: Option<i32>) -> TaskResult {
        TaskResult {
            key,
            outcome,
            exit_code,
            signal: None,
            started_ms: self.now,
            finished_ms: self.now,
            message: None,
            outputs: BTreeMap::new(),
            metrics: Default::default(),
            artifacts: Vec::new(),
            image_digest: None,
            cached_from: None,
            cache_miss: None,
            worker: None,
        }
    }

    /// The current attempt of `step` ends with `outcome`.
    fn end(&mut self, step: &str, outcome: Outcome, exit_code: Option<i32>) {
        let result = self.result(self.key(step), outcome, exit_code);
        self.feed(result);
    }

    /// A worker starts the current attempt of `step`.
    fn start(&mut self, step: &str, worker: &str) {
        let key = self.key(step);
        let (worker, at_ms) = (worker.to_string(), self.now);
        self.state
            .apply(WorkerEvent::Started { key, worker, at_ms }, self.now);
    }

    fn feed(&mut self, result: TaskResult) {
        self.state.apply(WorkerEvent::Finished(result), self.now);
    }

    fn status(&self, step: &str) -> StepStatus {
        self.state.step(step).unwrap().status
    }

    fn reason(&self, step: &str) -> String {
        self.state
            .step(step)
            .unwrap()
            .reason
            .clone()
            .unwrap_or_default()
    }

    /// Finishes the run once nothing is left, and says how it ended.
    fn finish(&mut self) -> RunStatus {
        assert!(self.state.is_settled(), "the run still has work");
        self.state.finish(self.now);
        self.state.run().status
    }
}

const DIAMOND: &str = "name: p
steps:
  a: {run: x}
  b: {run: x, depends: [a]}
  c: {run: x, depends: [a]}
  d: {run: x, depends: [b, c]}
";

#[test]
fn fan_out_starts_together_and_a_join_waits_for_every_branch() {
    let mut sim = Sim::new(DIAMOND);
    assert_eq!(sim.tick(), ["a#1"]);
    assert_eq!(sim.tick(), Vec::<String>::new(), "nothing else is ready");
    sim.end("a", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), ["b#1", "c#1"]);
    sim.end("b", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), Vec::<String>::new(), "d still waits for c");
    sim.end("c", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), ["d#1"]);
    sim.end("d", Outcome::Succeeded, Some(0));
    assert_eq!(sim.finish(), RunStatus::Succeeded);
}

#[test]
fn parallelism_caps_the_steps_in_flight() {
    let mut sim =
        Sim::new("name: p\nparallelism: 2\nsteps:\n  a: {run: x}\n  b: {run: x}\n  c: {run: x}\n");
    sim.state.run.parallelism = 2;
    assert_eq!(sim.tick(), ["a#1", "b#1"]);
    sim.end("b", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), ["c#1"]);
}

#[test]
fn a_failure_skips_everything_downstream_and_nothing_else() {
    let mut sim = Sim::new(
        "name: p\nsteps:\n  a: {run: x}\n  b: {run: x, depends: [a]}\n  c: {run: x, depends: [b]}\n  other: {run: x}\n",
    );
    assert_eq!(sim.tick(), ["a#1", "other#1"]);
    sim.end("a", Outcome::Failed, Some(1));
    assert_eq!(sim.status("a"), StepStatus::Failed);
    for step in ["b", "c"] {
        assert_eq!(sim.status(step), StepStatus::Skipped);
        assert_eq!(sim.reason(step), "upstream step `a` failed");
    }
    assert_eq!(
        sim.status("other"),
        StepStatus::Queued,
        "a branch of its own goes on"
    );
    sim.end("other", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), Vec::<String>::new());
    assert_eq!(sim.finish(), RunStatus::Failed);
}

#[test]
fn a_false_condition_skips_the_step_and_its_downstream_and_the_run_succeeds() {
    let mut sim = Sim::new(
        "name: p
steps:
  check: {run: x}
  deploy: {run: x, depends: [check], when: 'steps.check.outputs.ok == yes'}
  notify: {run: x, depends: [deploy]}
",
    );
    assert_eq!(sim.tick(), ["check#1"]);
    let mut result = sim.result(sim.key("check"), Outcome::Succeeded, Some(0));
    result.outputs.insert("ok".into(), "no".into());
    sim.feed(result);
    assert_eq!(sim.tick(), Vec::<String>::new());
    assert_eq!(sim.status("deploy"), StepStatus::Skipped);
    assert!(
        sim.reason("deploy").contains("is false (value: \"no\")"),
        "{}",
        sim.reason("deploy")
    );
    assert_eq!(sim.reason("notify"), "upstream step `deploy` was skipped");
    assert_eq!(sim.finish(), RunStatus::Succeeded);
}

/// A check step that wrote `outputs`, and `deploy` after it with `when`; the run's params are
/// `params`. Returns the simulation once `check` has ended.
fn after_check(when: &str, outputs: &[(&str, &str)], params: &[(&str, &str)]) -> Sim {
    let mut sim = Sim::new(&format!(
        "name: p
params: {{min: '0.5', force: 'false'}}
steps:
  check: {{run: x}}
  deploy: {{run: x, depends: [check], when: '{when}'}}
"
    ));
    for (name, value) in params {
        sim.state
            .run
            .params
            .insert(name.to_string(), value.to_string());
    }
    assert_eq!(sim.tick(), ["check#1"]);
    let mut result = sim.result(sim.key("check"), Outcome::Succeeded, Some(0));
    for (key, value) in outputs {
        result.outputs.insert(key.to_string(), value.to_string());
    }
    sim.feed(result);
    sim
}

#[test]
fn a_when_compares_an_output_with_a_param() {
    let when = "steps.check.outputs.score >= params.min";
    let mut sim = after_check(when, &[("score", "0.9")], &[("min", "0.8")]);
    assert_eq!(sim.tick(), ["deploy#1"], "0.9 >= 0.8");

    let mut sim = after_check(when, &[("score", "0.9")], &[("min", "0.95")]);
    assert_eq!(sim.tick(), Vec::<String>::new());
    assert_eq!(sim.status("deploy"), StepStatus::Skipped);
    assert_eq!(
        sim.reason("deploy"),
        "condition `steps.check.outputs.score >= params.min` is false (steps.check.outputs.score = \"0.9\", params.min = \"0.95\")"
    );
    assert_eq!(sim.finish(), RunStatus::Succeeded);
}

#[test]
fn an_or_runs_the_step_when_one_side_holds_even_if_the_other_reads_nothing() {
    let when = "steps.check.outputs.ok == yes or params.force == true";
    let mut sim = after_check(when, &[], &[("force", "true")]);
    assert_eq!(sim.tick(), ["deploy#1"]);

    let mut sim = after_check(when, &[], &[("force", "false")]);
    assert_eq!(sim.tick(), Vec::<String>::new());
    assert_eq!(
        sim.reason("deploy"),
        "condition `steps.check.outputs.ok == \"yes\" or params.force == \"true\"` is false (steps.check.outputs.ok was never set)"
    );
}

#[test]
fn a_not_runs_the_step_on_a_false_comparison_but_not_on_a_value_never_set() {
    let when = "not steps.check.outputs.failed == true";
    let mut sim = after_check(when, &[("failed", "false")], &[]);
    assert_eq!(sim.tick(), ["deploy#1"]);

    let mut sim = after_check(when, &[("failed", "true")], &[]);
    assert_eq!(sim.tick(), Vec::<String>::new());
    assert!(
        sim.reason("deploy").ends_with("is false (value: \"true\")"),
        "{}",
        sim.reason("deploy")
    );

    let mut sim = after_check(when, &[], &[]);
    assert_eq!(sim.tick(), Vec::<String>::new());
    assert_eq!(sim.status("deploy"), StepStatus::Skipped);
    assert_eq!(
        sim.reason("deploy"),
        "condition `not steps.check.outputs.failed == \"true\"` is false (steps.check.outputs.failed was never set)"
    );
    assert_eq!(sim.finish(), RunStatus::Succeeded);
}

#[test]
fn retries_wait_out_their_backoff_and_stop_at_the_limit() {
    // (retry policy, delays in seconds before attempts 2 and 3)
    let table: [(&str, [u64; 2]); 3] = [
        ("{limit: 2, delay: 10s}", [10, 10]),
        ("{limit: 2, delay: 10s, backoff: exponential}", [10, 20]),
        (
            "{limit: 2, delay: 10s, backoff: exponential, max_delay: 15s}",
            [10, 15],
        ),
    ];
    for (policy, delays) in table {
        let mut sim = Sim::new(&format!(
            "name: p\nsteps:\n  a: {{run: x, retry: {policy}}}\n"
        ));
        assert_eq!(sim.tick(), ["a#1"], "{policy}");
        for (i, delay) in delays.iter().enumerate() {
            sim.end("a", Outcome::Failed, Some(1));
            assert_eq!(sim.status("a"), StepStatus::Pending, "{policy}");
            let due = sim.now + delay * 1000;
            assert_eq!(sim.state.next_retry_at(), Some(due), "{policy}");
            sim.now = due - 1;
            assert_eq!(
                sim.tick(),
                Vec::<String>::new(),
                "{policy}: not before the delay"
            );
            sim.now = due;
            assert_eq!(sim.tick(), [format!("a#{}", i + 2)], "{policy}");
        }
        sim.end("a", Outcome::TimedOut, None);
        assert_eq!(
            sim.status("a"),
            StepStatus::Failed,
            "{policy}: the limit is spent"
        );
        assert_eq!(sim.state.next_retry_at(), None);
        assert_eq!(sim.finish(), RunStatus::Failed);
    }
}

#[test]
fn a_run_past_its_timeout_stops_its_steps_and_ends_failed_saying_why() {
    let mut sim = Sim::new(
        "name: p\ntimeout: 1h\nsteps:\n  a: {run: x}\n  b: {run: x, depends: [a]}\n  c: {run: x}\n",
    );
    assert_eq!(sim.tick(), ["a#1", "c#1"]);
    sim.start("a", "w1");
    sim.end("c", Outcome::Succeeded, Some(0));
    sim.state
        .time_out(sim.now, std::time::Duration::from_secs(3600));
    assert_eq!(sim.status("b"), StepStatus::Cancelled);
    assert_eq!(sim.reason("b"), "the run's timeout (1h) passed");
    assert_eq!(sim.tick(), Vec::<String>::new(), "nothing new starts");
    sim.end("a", Outcome::Cancelled, None);
    assert_eq!(
        sim.finish(),
        RunStatus::Failed,
        "a timeout is a failure, not a cancel"
    );
    assert_eq!(sim.status("c"), StepStatus::Succeeded);
}

#[test]
fn a_gate_verdict_is_never_retried_but_a_gate_that_could_not_judge_is() {
    let yaml = "name: p
steps:
  v: {run: x}
  g:
    depends: [v]
    uses: gate
    retry: {limit: 2}
    with: {metrics_from: [v], require: {accuracy: \">= 0.9\"}}
";
    for (outcome, then) in [
        (Outcome::Failed, StepStatus::Failed),
        (Outcome::Error, StepStatus::Pending),
    ] {
        let mut sim = Sim::new(yaml);
        assert_eq!(sim.tick(), ["v#1"]);
        sim.end("v", Outcome::Succeeded, Some(0));
        assert_eq!(sim.tick(), ["g#1"]);
        sim.end("g", outcome, None);
        assert_eq!(sim.status("g"), then, "{outcome:?}");
    }
}

#[test]
fn on_exit_codes_limits_retries_to_those_codes_and_a_signal_counts_as_128_plus_it() {
    // (how the attempt ended: exit code, signal; whether it is retried)
    let table = [
        (Some(3), None, true),
        (Some(1), None, false),
        (None, Some(9), true), // 137
        (None, None, false),
    ];
    for (exit_code, signal, retried) in table {
        let mut sim = Sim::new(
            "name: p\nsteps:\n  a: {run: x, retry: {limit: 1, on_exit_codes: [3, 137]}}\n",
        );
        sim.tick();
        let mut result = sim.result(sim.key("a"), Outcome::Failed, exit_code);
        result.signal = signal;
        sim.feed(result);
        let expected = if retried {
            StepStatus::Pending
        } else {
            StepStatus::Failed
        };
        assert_eq!(sim.status("a"), expected, "{exit_code:?} {signal:?}");
    }
}

#[test]
fn a_lost_worker_reruns_the_step_at_once_outside_its_limit_then_dead_letters_it() {
    let mut sim = Sim::new("name: p\nsteps:\n  a: {run: x, retry: {lost: 2}}\n");
    assert_eq!(sim.tick(), ["a#1"]);
    for attempt in 2..=3 {
        sim.end("a", Outcome::Lost, None);
        assert_eq!(
            sim.tick(),
            [format!("a#{attempt}")],
            "at once, with no retry limit"
        );
        assert!(sim.state.take_dead_letters().is_empty());
    }
    sim.end("a", Outcome::Lost, None);
    assert_eq!(sim.status("a"), StepStatus::Failed);
    sim.state.take_commit();
    let dead = sim.state.take_dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.key.attempt, 3);
    assert_eq!(dead[0].1, "its worker was lost 3 times");
    assert_eq!(sim.finish(), RunStatus::Failed);
}

#[test]
fn lost_attempts_do_not_use_up_the_retry_limit() {
    let mut sim = Sim::new("name: p\nsteps:\n  a: {run: x, retry: {limit: 1, delay: 1s}}\n");
    sim.tick();
    sim.end("a", Outcome::Lost, None);
    assert_eq!(sim.tick(), ["a#2"]);
    sim.end("a", Outcome::Failed, Some(1));
    assert_eq!(
        sim.status("a"),
        StepStatus::Pending,
        "one real failure: limit 1 allows a retry"
    );
    sim.now += 1_000;
    assert_eq!(sim.tick(), ["a#3"]);
    sim.end("a", Outcome::Failed, Some(1));
    assert_eq!(sim.status("a"), StepStatus::Failed);
}

#[test]
fn results_and_starts_of_attempts_that_are_not_current_change_nothing() {
    let mut sim = Sim::new("name: p\nsteps:\n  a: {run: x}\n  b: {run: x}\n");
    sim.tick();
    let first = sim.key("a");
    sim.end("a", Outcome::Lost, None);
    assert_eq!(sim.tick(), ["a#2"]);
    // The frozen worker of attempt 1 wakes and reports.
    let stale = sim.result(first.clone(), Outcome::Succeeded, Some(0));
    sim.feed(stale);
    sim.state.apply(
        WorkerEvent::Started {
            key: first,
            worker: "old".into(),
            at_ms: sim.now,
        },
        sim.now,
    );
    assert_eq!(sim.status("a"), StepStatus::Queued);
    // A result for another run's step of the same name.
    let mut other_run = sim.key("b");
    other_run.run_id = "run2".into();
    let other = sim.result(other_run, Outcome::Succeeded, Some(0));
    sim.feed(other);
    assert_eq!(sim.status("b"), StepStatus::Queued);
    // The current attempt is applied; a second copy of its result is not.
    sim.end("a", Outcome::Succeeded, Some(0));
    sim.end("a", Outcome::Failed, Some(1));
    assert_eq!(sim.status("a"), StepStatus::Succeeded);
}

#[test]
fn a_start_is_recorded_but_is_not_urgent() {
    let mut sim = Sim::new("name: p\nsteps:\n  a: {run: x}\n");
    sim.tick();
    assert!(!sim.state.is_dirty());
    sim.start("a", "w1");
    assert_eq!(sim.status("a"), StepStatus::Running);
    assert!(sim.state.is_dirty() && !sim.state.is_urgent());
    let attempt = &sim.state.step("a").unwrap().attempts[0];
    assert_eq!(
        (attempt.worker.as_deref(), attempt.started_ms),
        (Some("w1"), Some(sim.now))
    );
}

#[test]
fn cancel_ends_what_has_not_started_and_waits_for_running_steps() {
    let mut sim = Sim::new(
        "name: p\nsteps:\n  running: {run: x}\n  queued: {run: x}\n  later: {run: x, depends: [running]}\n  retrying: {run: x, retry: {limit: 3, delay: 1h}}\n",
    );
    sim.tick();
    sim.start("running", "w");
    sim.end("retrying", Outcome::Failed, Some(1));
    sim.state.cancel(sim.now);
    for step in ["queued", "later", "retrying"] {
        assert_eq!(sim.status(step), StepStatus::Cancelled, "{step}");
    }
    assert_eq!(sim.status("running"), StepStatus::Running);
    assert!(!sim.state.is_settled(), "the running step must confirm");
    assert_eq!(sim.tick(), Vec::<String>::new(), "nothing new starts");
    sim.end("running", Outcome::Cancelled, None);
    assert_eq!(sim.finish(), RunStatus::Cancelled);
}

#[test]
fn a_cancel_nobody_confirms_is_recorded_on_the_attempt_too() {
    let mut sim = Sim::new("name: p\nsteps:\n  a: {run: x}\n");
    sim.tick();
    sim.start("a", "w");
    sim.state.cancel(sim.now);
    sim.state.abandon_in_flight(sim.now);
    let attempt = &sim.state.step("a").unwrap().attempts[0];
    assert_eq!(attempt.outcome, Some(Outcome::Cancelled));
    assert_eq!(attempt.status, StepStatus::Cancelled);
    assert_eq!(sim.finish(), RunStatus::Cancelled);
}

#[test]
fn a_failure_during_a_cancel_is_not_retried() {
    let mut sim = Sim::new("name: p\nsteps:\n  a: {run: x, retry: 5}\n");
    sim.tick();
    sim.start("a", "w");
    sim.state.cancel(sim.now);
    sim.end("a", Outcome::Failed, Some(143));
    assert_eq!(sim.status("a"), StepStatus::Failed);
    assert!(sim.state.is_settled());
}

/// The records as a store would hold them after `sim`'s changes.
fn records(sim: &Sim) -> (RunRecord, IndexMap<String, StepRecord>) {
    let steps = sim.state.steps.clone();
    (sim.state.run().clone(), steps)
}

#[test]
fn resume_keeps_what_succeeded_and_reruns_the_rest_with_new_attempt_numbers() {
    let mut sim = Sim::new(DIAMOND);
    sim.tick();
    sim.end("a", Outcome::Succeeded, Some(0));
    sim.tick(); // b#1 and c#1 in flight when the runner dies
    let (run, steps) = records(&sim);
    let mut resumed = RunState::resumed("/data".into(), pipeline(DIAMOND), run, steps, 9, None, 50);
    let b = resumed.step("b").unwrap();
    assert_eq!(b.status, StepStatus::Pending);
    assert_eq!(
        b.attempts[0].message.as_deref(),
        Some("the runner stopped before this attempt finished")
    );
    let tasks = resumed.start_ready_steps(60);
    let started: Vec<String> = tasks
        .iter()
        .map(|t| format!("{}#{}", t.key.step, t.key.attempt))
        .collect();
    assert_eq!(started, ["b#2", "c#2"], "a is not run again");
}

#[test]
fn reattach_requeues_queued_attempts_as_they_were_and_leaves_running_ones_alone() {
    let mut sim = Sim::new("name: p\nsteps:\n  queued: {run: x}\n  running: {run: x}\n");
    sim.tick();
    sim.start("running", "w");
    let (run, steps) = records(&sim);
    let yaml = "name: p\nsteps:\n  queued: {run: x}\n  running: {run: x}\n";
    let (mut state, redispatch) = RunState::reattached(
        "/data".into(),
        pipeline(yaml),
        run.clone(),
        steps.clone(),
        5,
        false,
        9,
    );
    let again: Vec<String> = redispatch
        .iter()
        .map(|t| format!("{}#{}", t.key.step, t.key.attempt))
        .collect();
    assert_eq!(
        again,
        ["queued#1"],
        "the same attempt: workers claim each once"
    );
    assert!(state.start_ready_steps(10).is_empty());
    assert!(!state.is_settled());

    // When the queue lost its data, both run again as new attempts.
    let (mut state, redispatch) =
        RunState::reattached("/data".into(), pipeline(yaml), run, steps, 5, true, 9);
    assert!(redispatch.is_empty());
    let tasks: Vec<String> = state
        .start_ready_steps(10)
        .iter()
        .map(|t| format!("{}#{}", t.key.step, t.key.attempt))
        .collect();
    assert_eq!(tasks.len(), 2);
    assert!(tasks.contains(&"queued#2".to_string()) && tasks.contains(&"running#2".to_string()));
}

#[test]
fn a_commit_holds_every_change_once_and_leaves_the_state_clean() {
    let mut sim = Sim::new(DIAMOND);
    let first = sim.state.take_commit();
    assert!(first.run, "a new run is written whole");
    assert_eq!(first.steps, ["a", "b", "c", "d"]);
    assert!(!sim.state.is_dirty());
    sim.state.start_ready_steps(sim.now);
    sim.end("a", Outcome::Succeeded, Some(0));
    let commit = sim.state.take_commit();
    assert_eq!(commit.steps, ["a"], "touched twice, written once");
    assert!(!commit.run);
    assert!(!sim.state.is_dirty() && !sim.state.is_urgent());
}

mod handlers;

#[test]
fn the_worker_is_recorded_from_the_result_when_no_started_came_first() {
    let mut sim = Sim::new("name: p\nsteps:\n  quick: {run: x}\n  slow: {run: x}\n");
    sim.tick();
    // A quick step: its Started and result arrive together, or the result alone (a `lost` one
    // of a worker killed at once names the worker that stopped heartbeating).
    let mut result = sim.result(sim.key("quick"), Outcome::Lost, None);
    result.worker = Some("w1".into());
    sim.feed(result);
    // A slow step: its Started named the worker; the result does not overwrite it.
    sim.start("slow", "w2");
    let mut result = sim.result(sim.key("slow"), Outcome::Succeeded, Some(0));
    result.worker = Some("other".into());
    sim.feed(result);
    let worker = |step: &str| sim.state.step(step).unwrap().attempts[0].worker.clone();
    assert_eq!(worker("quick").as_deref(), Some("w1"));
    assert_eq!(worker("slow").as_deref(), Some("w2"));
}
