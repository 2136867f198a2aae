//! `on_failure:` and `finally:` steps: when they start, what they learn, how they end a run.

use sluice_worker::task::TaskSpec;

use super::*;

const HANDLED: &str = "name: p
steps:
  a: {run: x}
  b: {run: x, depends: [a]}
on_failure:
  alert: {run: x}
finally:
  report: {run: x, depends: [b]}
  cleanup: {run: x, depends: [report]}
";

/// Starts what is ready, returning the tasks themselves.
fn tick_tasks(sim: &mut Sim) -> Vec<TaskSpec> {
    sim.state.release_due_retries(sim.now);
    let tasks = sim.state.start_ready_steps(sim.now);
    sim.state.take_commit();
    tasks
}

fn env<'t>(task: &'t TaskSpec, name: &str) -> Option<&'t str> {
    task.env
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn after_a_success_on_failure_is_skipped_and_finally_runs_last_knowing_the_status() {
    let mut sim = Sim::new(HANDLED);
    assert_eq!(sim.tick(), ["a#1"], "handlers wait for the run's steps");
    sim.end("a", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), ["b#1"]);
    assert!(!sim.state.in_handlers());
    sim.end("b", Outcome::Succeeded, Some(0));
    let tasks = tick_tasks(&mut sim);
    let started: Vec<&str> = tasks.iter().map(|t| t.key.step.as_str()).collect();
    assert_eq!(started, ["report"], "cleanup waits for report");
    assert_eq!(env(&tasks[0], "SLUICE_RUN_STATUS"), Some("succeeded"));
    assert_eq!(env(&tasks[0], "SLUICE_FAILED_STEPS"), Some(""));
    assert!(tasks[0].outlives_cancel);
    assert_eq!(tasks[0].inputs[0].step, "b", "b's outputs reach report");
    assert_eq!(sim.status("alert"), StepStatus::Skipped);
    assert_eq!(sim.reason("alert"), "the run did not fail");
    assert!(sim.state.in_handlers());
    sim.end("report", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), ["cleanup#1"]);
    sim.end("cleanup", Outcome::Succeeded, Some(0));
    sim.tick();
    assert_eq!(sim.finish(), RunStatus::Succeeded);
}

#[test]
fn after_a_failure_on_failure_runs_then_finally_even_where_it_reads_the_failed_step() {
    let mut sim = Sim::new(HANDLED);
    sim.tick();
    sim.end("a", Outcome::Failed, Some(3));
    assert_eq!(sim.status("b"), StepStatus::Skipped);
    let tasks = tick_tasks(&mut sim);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].key.step, "alert", "finally waits for on_failure");
    assert_eq!(env(&tasks[0], "SLUICE_RUN_STATUS"), Some("failed"));
    assert_eq!(env(&tasks[0], "SLUICE_FAILED_STEPS"), Some("a"));
    assert!(!tasks[0].outlives_cancel);
    sim.end("alert", Outcome::Succeeded, Some(0));
    assert_eq!(
        sim.tick(),
        ["report#1"],
        "report depends on b, which was skipped: it runs all the same, with an empty input"
    );
    sim.end("report", Outcome::Succeeded, Some(0));
    sim.tick();
    sim.end("cleanup", Outcome::Succeeded, Some(0));
    sim.tick();
    assert_eq!(sim.finish(), RunStatus::Failed);
}

#[test]
fn a_failed_finally_step_fails_a_run_whose_steps_succeeded() {
    let mut sim = Sim::new("name: p\nsteps:\n  a: {run: x}\nfinally:\n  f: {run: x}\n");
    sim.tick();
    sim.end("a", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), ["f#1"]);
    sim.end("f", Outcome::Failed, Some(1));
    sim.tick();
    assert_eq!(sim.finish(), RunStatus::Failed);
}

#[test]
fn a_cancel_skips_on_failure_but_finally_still_runs_and_the_run_ends_cancelled() {
    let mut sim = Sim::new(HANDLED);
    sim.tick();
    sim.start("a", "w1");
    sim.state.cancel(sim.now);
    assert_eq!(sim.status("b"), StepStatus::Cancelled);
    assert_eq!(sim.status("report"), StepStatus::Pending, "finally is kept");
    assert!(sim.tick().is_empty(), "nothing starts while a runs");
    sim.end("a", Outcome::Cancelled, None);
    let tasks = tick_tasks(&mut sim);
    let started: Vec<&str> = tasks.iter().map(|t| t.key.step.as_str()).collect();
    assert_eq!(started, ["report"]);
    assert_eq!(env(&tasks[0], "SLUICE_RUN_STATUS"), Some("cancelled"));
    assert!(
        tasks[0].outlives_cancel,
        "workers do not stop it for the cancel"
    );
    assert_eq!(sim.reason("alert"), "the run was cancelled");
    sim.end("report", Outcome::Succeeded, Some(0));
    assert_eq!(sim.tick(), ["cleanup#1"]);
    sim.end("cleanup", Outcome::Succeeded, Some(0));
    sim.tick();
    assert_eq!(sim.finish(), RunStatus::Cancelled);
}

#[test]
fn a_run_that_timed_out_has_failed_so_its_on_failure_steps_run() {
    let yaml = "name: p\ntimeout: 1h\nsteps:\n  a: {run: x}\non_failure:\n  alert: {run: x}\n";
    let mut sim = Sim::new(yaml);
    sim.tick();
    sim.state
        .time_out(sim.now, std::time::Duration::from_secs(3600));
    assert_eq!(sim.status("alert"), StepStatus::Pending);
    sim.end("a", Outcome::Cancelled, None);
    let tasks = tick_tasks(&mut sim);
    assert_eq!(tasks.len(), 1);
    assert_eq!(env(&tasks[0], "SLUICE_RUN_STATUS"), Some("failed"));
    sim.end("alert", Outcome::Succeeded, Some(0));
    sim.tick();
    assert_eq!(sim.finish(), RunStatus::Failed);
}

#[test]
fn a_run_picked_up_during_its_finally_steps_knows_it_is_in_them() {
    let mut sim = Sim::new("name: p\nsteps:\n  a: {run: x}\nfinally:\n  f: {run: x}\n");
    sim.tick();
    sim.end("a", Outcome::Succeeded, Some(0));
    sim.tick();
    sim.start("f", "w1");
    let (run, steps) = records(&sim);
    let yaml = "name: p\nsteps:\n  a: {run: x}\nfinally:\n  f: {run: x}\n";
    let (state, redispatch) =
        RunState::reattached("/data".into(), pipeline(yaml), run, steps, 5, false, 9);
    assert!(redispatch.is_empty());
    assert!(state.in_handlers(), "no run timeout or cancel wait applies");

    // Before its handlers began, a resumed run starts its own steps, not them.
    let mut sim = Sim::new(HANDLED);
    sim.tick();
    let (run, steps) = records(&sim);
    let mut resumed = RunState::resumed("/data".into(), pipeline(HANDLED), run, steps, 3, None, 9);
    assert!(!resumed.in_handlers());
    let started: Vec<String> = resumed
        .start_ready_steps(10)
        .iter()
        .map(|t| t.key.step.clone())
        .collect();
    assert_eq!(started, ["a"]);
}
