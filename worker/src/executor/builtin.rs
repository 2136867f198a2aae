//! Step kinds built into the worker (`uses:`), run without starting a process.

use tokio_util::sync::CancellationToken;

use crate::drift::{self, DriftError, DriftOptions, DriftSpec};
use crate::task::{now_ms, Outcome, TaskResult, TaskSpec};

/// Runs built-in kind `kind` for `task`; `cancel` stops a kind that takes a while (`drift`).
pub async fn run(
    task: &TaskSpec,
    kind: &str,
    cancel: CancellationToken,
    local: &super::local::LocalExecutor,
) -> TaskResult {
    match kind {
        "noop" => noop(task).await,
        "drift" => drift(task, cancel).await,
        "deploy" => super::deploy::deploy(task, cancel, local).await,
        other => TaskResult::error(
            task.key.clone(),
            format!("this worker has no built-in step kind `{other}` (a newer scheduler?)"),
        ),
    }
}

/// Whether built-in kind `kind` reads its upstream steps' outputs from `in/`: a no-op does not,
/// so its worker fetches nothing and makes no folders for it.
pub fn reads_inputs(kind: &str) -> bool {
    kind != "noop"
}

/// Succeeds at once, touching no disk: steps after it get an empty folder for it in their
/// `in/` (their worker makes that), and nothing reads a no-op's own `out/`, so it makes none.
/// (Making it was a quarter of a worker's CPU time in a fan-out of no-op steps: several
/// `mkdir`s on a blocking thread per step.)
async fn noop(task: &TaskSpec) -> TaskResult {
    if let Some(missing) = task.outputs.first() {
        return no_outputs_written(task, missing, "noop");
    }
    let mut result = TaskResult::error(task.key.clone(), "");
    result.outcome = Outcome::Succeeded;
    result.message = None;
    result.finished_ms = now_ms();
    result
}

/// Creates the step's (empty) `out/` folder; a step kind that writes no files fails when the
/// step declares `outputs:`. `None` when neither went wrong.
async fn refuse_outputs(task: &TaskSpec, kind: &str) -> Option<TaskResult> {
    let mut result = TaskResult::error(task.key.clone(), "");
    if let Err(err) = tokio::fs::create_dir_all(task.out_dir()).await {
        result.message = Some(format!("cannot create {}: {err}", task.out_dir().display()));
        return Some(result);
    }
    let missing = task.outputs.first()?;
    Some(no_outputs_written(task, missing, kind))
}

/// The failure of a step kind that writes no files whose step declares `outputs:`.
fn no_outputs_written(task: &TaskSpec, missing: &str, kind: &str) -> TaskResult {
    let mut result = TaskResult::error(task.key.clone(), "");
    result.outcome = Outcome::Failed;
    result.message = Some(format!(
        "declared output `{missing}` was not written: `{kind}` writes no outputs"
    ));
    result
}

/// Compares the step's current data with its reference (`crate::drift`) on a blocking thread,
/// within the step's timeout. Bad settings or data fail the step with a message; the verdict is
/// in the outputs (`drift`, `drifted_columns`) and the metrics.
async fn drift(task: &TaskSpec, cancel: CancellationToken) -> TaskResult {
    let started_ms = now_ms();
    if let Some(failed) = refuse_outputs(task, "drift").await {
        return failed;
    }
    let mut result = TaskResult::error(task.key.clone(), "");
    result.started_ms = started_ms;
    let ended = |mut result: TaskResult, outcome, message: String| {
        result.outcome = outcome;
        result.message = Some(message);
        result.finished_ms = now_ms();
        result
    };
    let spec: DriftSpec = match task.with.clone().map(serde_json::from_value) {
        Some(Ok(spec)) => spec,
        Some(Err(err)) => {
            let message = format!("the `with:` of `drift` is not valid: {err}");
            return ended(result, Outcome::Failed, message);
        }
        None => {
            let message = "`drift` needs `with:` naming `reference` and `current`".to_string();
            return ended(result, Outcome::Failed, message);
        }
    };

    let stop = cancel.child_token();
    let in_dir = task.in_dir();
    let job = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || drift::compare(&spec, &in_dir, &DriftOptions::default(), &stop)
    });
    let joined = match task.timeout {
        Some(limit) => match tokio::time::timeout(limit, job).await {
            Ok(joined) => joined,
            Err(_) => {
                stop.cancel();
                let message = format!("timed out after {}", super::local::humanize(limit));
                return ended(result, Outcome::TimedOut, message);
            }
        },
        None => job.await,
    };
    match joined {
        Ok(Ok(report)) => {
            result.outputs = report.outputs();
            result.metrics = report.metrics();
            result.outcome = Outcome::Succeeded;
            result.message = None;
            result.finished_ms = now_ms();
            result
        }
        Ok(Err(DriftError::Cancelled)) => ended(result, Outcome::Cancelled, "cancelled".into()),
        Ok(Err(err)) => ended(result, Outcome::Failed, format!("drift: {err}")),
        Err(join) => ended(
            result,
            Outcome::Error,
            format!("the drift computation stopped: {join}"),
        ),
    }
}
