//! What the executor tests share: a task in a temporary folder, and a run under a time limit.

#![allow(dead_code)] // Each test binary uses its own part of this.

use std::path::Path;
use std::time::Duration;

use sluice_worker::executor::{Executor, LocalExecutor};
use sluice_worker::task::{StepCommand, TaskKey, TaskResult, TaskSpec};
use tokio_util::sync::CancellationToken;

/// The longest any single executor run may take in these tests before we call it a hang.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A task whose workdir is `dir` and whose attempt folder is `dir/attempt`.
pub fn task(dir: &Path, command: StepCommand) -> TaskSpec {
    let key = TaskKey {
        run_id: "run-1".to_string(),
        step: "step".to_string(),
        attempt: 1,
    };
    TaskSpec {
        pipeline: "tests".to_string(),
        workdir: dir.to_path_buf(),
        ..TaskSpec::new(key, command, dir.join("attempt"))
    }
}

pub fn sh(text: &str) -> StepCommand {
    StepCommand::Shell(text.to_string())
}

/// Puts the `SLUICE_*` paths into the task's env, as the scheduler would.
pub fn with_sluice_env(mut t: TaskSpec) -> TaskSpec {
    let vars = [
        ("SLUICE_OUT", t.out_dir()),
        ("SLUICE_IN", t.in_dir()),
        ("SLUICE_OUTPUTS", t.outputs_file()),
        ("SLUICE_METRICS", t.metrics_file()),
    ];
    for (name, path) in vars {
        t.env.push((name.to_string(), path.display().to_string()));
    }
    t
}

pub async fn run_with(
    executor: &LocalExecutor,
    t: &TaskSpec,
    cancel: CancellationToken,
) -> TaskResult {
    tokio::time::timeout(RUN_LIMIT, executor.run(t, cancel))
        .await
        .expect("the executor did not return within the test's limit")
}

pub async fn run(t: &TaskSpec) -> TaskResult {
    run_with(&LocalExecutor::default(), t, CancellationToken::new()).await
}
