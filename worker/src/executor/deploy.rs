//! `uses: deploy`: runs the step's deploy command for a model version, then polls a health URL;
//! when the command fails or the service never turns healthy, runs the command again for the
//! version the alias held before (rollback) and checks that one.
//!
//! The scheduler resolves the versions and materialises them (`$SLUICE_IN/models/model/` and,
//! when the alias held one, `$SLUICE_IN/models/previous/`); it moves the alias only when this
//! step succeeds. The command runs like a `run:` step (process group, timeout, secrets, logs)
//! with `SLUICE_MODEL_DIR` and `SLUICE_MODEL_VERSION` set, and is expected to return once the
//! service is started or updated (a daemon, `docker compose up -d`, a `kubectl apply`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::local::LocalExecutor;
use super::Executor;
use crate::task::{now_ms, Outcome, StepCommand, TaskResult, TaskSpec};

/// The `with:` of a `deploy` step, as the worker receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    /// The model.
    pub model: String,
    /// The version deployed, materialised under `$SLUICE_IN/models/model/`.
    pub version: u64,
    /// The alias the scheduler moves once this step succeeds.
    pub alias: String,
    /// The deploy command (`sh -c`).
    pub run: String,
    /// How to tell that the service is healthy.
    pub health: HealthSpec,
    /// The version the alias holds now, under `$SLUICE_IN/models/previous/`: what a failed
    /// deployment rolls back to.
    #[serde(default)]
    pub previous: Option<u64>,
}

/// A health check: GET `url` every `interval_ms` until it answers `expect_status`, for at
/// most `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// The URL polled.
    pub url: String,
    /// The status that means healthy.
    pub expect_status: u16,
    /// Longest wait, in milliseconds.
    pub timeout_ms: u64,
    /// Between polls, in milliseconds.
    pub interval_ms: u64,
}

/// Runs a deploy step; see the module docs.
pub async fn deploy(
    task: &TaskSpec,
    cancel: CancellationToken,
    local: &LocalExecutor,
) -> TaskResult {
    let started_ms = now_ms();
    let mut result = TaskResult::error(task.key.clone(), "");
    result.started_ms = started_ms;
    let spec: DeploySpec = match task.with.clone().map(serde_json::from_value) {
        Some(Ok(spec)) => spec,
        Some(Err(err)) => {
            return ended(
                result,
                Outcome::Failed,
                format!("the `with:` of `deploy` is not valid: {err}"),
            )
        }
        None => {
            return ended(
                result,
                Outcome::Failed,
                "`deploy` needs its `with:` (a newer scheduler?)".into(),
            )
        }
    };
    if !task.outputs.is_empty() {
        return ended(
            result,
            Outcome::Failed,
            "`deploy` writes no outputs; remove `outputs:`".into(),
        );
    }
    let name = format!("{}:{}", spec.model, spec.version);
    let why = match install(task, &spec, spec.version, "model", local, &cancel).await {
        Ok(()) => {
            result.outputs = BTreeMap::from([("deployed".to_string(), spec.version.to_string())]);
            let message = format!(
                "deployed {name}; {} answered {}",
                spec.health.url, spec.health.expect_status
            );
            return ended(result, Outcome::Succeeded, message);
        }
        Err(Stop::Cancelled) => return ended(result, Outcome::Cancelled, "cancelled".into()),
        Err(Stop::Failed(why)) => why,
    };
    // Keep the failed deployment's logs beside the rollback's.
    for (log, kept) in [
        (task.stdout_log(), "deploy-failed.stdout.log"),
        (task.stderr_log(), "deploy-failed.stderr.log"),
    ] {
        let _ = std::fs::rename(&log, task.attempt_dir.join(kept));
    }
    let Some(previous) = spec.previous else {
        let message = format!(
            "{name}: {why}; nothing to roll back to (`{}@{}` held no version)",
            spec.model, spec.alias
        );
        return ended(result, Outcome::Failed, message);
    };
    result.outputs = BTreeMap::from([("rolled_back_to".to_string(), previous.to_string())]);
    let back = match install(task, &spec, previous, "previous", local, &cancel).await {
        Ok(()) => "healthy".to_string(),
        Err(Stop::Cancelled) => "cancelled".to_string(),
        Err(Stop::Failed(again)) => format!("also failed: {again}"),
    };
    let message = format!(
        "{name}: {why}; rolled back to {}:{previous}: {back}",
        spec.model
    );
    ended(result, Outcome::Failed, message)
}

/// Why an install did not end healthy.
enum Stop {
    Failed(String),
    Cancelled,
}

/// Runs the deploy command for `version` (materialised under `models/<folder>/`), then waits
/// for the health check.
async fn install(
    task: &TaskSpec,
    spec: &DeploySpec,
    version: u64,
    folder: &str,
    local: &LocalExecutor,
    cancel: &CancellationToken,
) -> Result<(), Stop> {
    let mut command = task.clone();
    command.command = StepCommand::Shell(spec.run.clone());
    command.with = None;
    let model_dir = task.in_dir().join("models").join(folder);
    command
        .env
        .push(("SLUICE_MODEL_DIR".into(), model_dir.display().to_string()));
    command
        .env
        .push(("SLUICE_MODEL_VERSION".into(), version.to_string()));
    let ran = local.run(&command, cancel.clone()).await;
    match ran.outcome {
        Outcome::Succeeded => {}
        Outcome::Cancelled => return Err(Stop::Cancelled),
        _ => {
            let how = ran.message.unwrap_or_else(|| format!("{:?}", ran.outcome));
            return Err(Stop::Failed(format!("the deploy command failed ({how})")));
        }
    }
    tokio::select! {
        healthy = wait_healthy(&spec.health) => healthy.map_err(Stop::Failed),
        _ = cancel.cancelled() => Err(Stop::Cancelled),
    }
}

/// Polls the health URL until it answers the expected status or the timeout passes; the error
/// says what it answered last.
async fn wait_healthy(health: &HealthSpec) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| format!("cannot make an HTTP client: {err}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(health.timeout_ms);
    loop {
        let last = match client.get(&health.url).send().await {
            Ok(answer) if answer.status().as_u16() == health.expect_status => return Ok(()),
            Ok(answer) => format!("it answered {}", answer.status().as_u16()),
            Err(err) => format!("{err}"),
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(format!(
                "{} did not answer {} within {}s ({last})",
                health.url,
                health.expect_status,
                health.timeout_ms / 1000
            ));
        }
        // The last poll is at the deadline, however the interval falls.
        let next = now + Duration::from_millis(health.interval_ms);
        tokio::time::sleep_until(next.min(deadline)).await;
    }
}

fn ended(mut result: TaskResult, outcome: Outcome, message: String) -> TaskResult {
    result.outcome = outcome;
    result.message = Some(message);
    result.finished_ms = now_ms();
    result
}
