//! Step kinds built into the worker (`uses:`), run without starting a process.

use crate::task::{now_ms, Outcome, TaskResult, TaskSpec};

/// Runs built-in kind `kind` for `task`.
pub async fn run(task: &TaskSpec, kind: &str) -> TaskResult {
    match kind {
        "noop" => noop(task).await,
        other => TaskResult::error(
            task.key.clone(),
            format!("this worker has no built-in step kind `{other}` (a newer scheduler?)"),
        ),
    }
}

/// Succeeds at once. Its `out/` folder exists (empty) so steps after it find their inputs.
async fn noop(task: &TaskSpec) -> TaskResult {
    let mut result = TaskResult::error(task.key.clone(), "");
    if let Err(err) = tokio::fs::create_dir_all(task.out_dir()).await {
        result.message = Some(format!("cannot create {}: {err}", task.out_dir().display()));
        return result;
    }
    if let Some(missing) = task.outputs.first() {
        result.outcome = Outcome::Failed;
        result.message = Some(format!(
            "declared output `{missing}` was not written: `noop` writes no outputs"
        ));
        return result;
    }
    result.outcome = Outcome::Succeeded;
    result.message = None;
    result.finished_ms = now_ms();
    result
}
