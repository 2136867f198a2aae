//! Executors run one attempt and say how it ended. A failing step is a normal result, not an
//! `Err`: the trait returns a [`TaskResult`] for every attempt, whatever happened.

pub mod builtin;
pub mod container_spec;
pub mod docker;
pub mod local;
pub mod registry_auth;
pub mod routing;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::task::{Outcome, TaskResult, TaskSpec};

pub use docker::DockerExecutor;
pub use local::LocalExecutor;
pub use routing::StepExecutor;

/// Largest `$SLUICE_OUTPUTS` file read: outputs are small values, not data.
pub const MAX_OUTPUTS_BYTES: u64 = 64 * 1024;
/// Largest `$SLUICE_METRICS` file read.
pub const MAX_METRICS_BYTES: u64 = 1024 * 1024;

/// Runs attempts. Implemented by the local process executor and the Docker executor.
#[async_trait]
pub trait Executor: Send + Sync {
    /// Runs `task` to its end; `cancel` asks it to stop early (the result is then `Cancelled`).
    async fn run(&self, task: &TaskSpec, cancel: CancellationToken) -> TaskResult;
}

/// The log files of an attempt, created (or truncated) while its folder is prepared.
pub struct AttemptLogs {
    /// Captured standard output.
    pub stdout: std::fs::File,
    /// Captured standard error.
    pub stderr: std::fs::File,
}

/// Creates the attempt's folder: an empty `out/`, `in/` with a link per upstream step, an empty
/// outputs file and fresh log files. The file system work runs as one blocking job: a step is
/// short, and a dozen separate hops to the blocking pool cost more than the work itself.
pub async fn prepare_attempt_dir(task: &TaskSpec) -> io::Result<AttemptLogs> {
    let task = task.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&task))
        .await
        .map_err(io::Error::other)?
}

fn prepare_blocking(task: &TaskSpec) -> io::Result<AttemptLogs> {
    let ignore_missing = |result: io::Result<()>| match result {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    };
    // A redelivered attempt must not see what an earlier delivery of it left behind.
    ignore_missing(std::fs::remove_dir_all(task.out_dir()))?;
    ignore_missing(std::fs::remove_dir_all(task.in_dir()))?;
    ignore_missing(std::fs::remove_file(task.metrics_file()))?;
    std::fs::create_dir_all(task.out_dir())?;
    let inputs = task.in_dir();
    std::fs::create_dir_all(&inputs)?;
    for (step, path) in &task.inputs {
        std::os::unix::fs::symlink(path, inputs.join(step))?;
    }
    std::fs::write(task.outputs_file(), b"")?;
    Ok(AttemptLogs {
        stdout: std::fs::File::create(task.stdout_log())?,
        stderr: std::fs::File::create(task.stderr_log())?,
    })
}

/// After the process exited: reads the outputs and metrics files (a failed quality gate's metrics
/// matter as much as a passing one's) and, after a successful exit, checks declared outputs.
/// On success, a broken promise turns the result into a failure with a message that says which.
pub async fn read_step_reports(task: &TaskSpec, result: TaskResult) -> TaskResult {
    let task = task.clone();
    let fallback = result.clone();
    tokio::task::spawn_blocking(move || {
        let mut result = result;
        read_reports_blocking(&task, &mut result);
        result
    })
    .await
    .unwrap_or(fallback)
}

fn read_reports_blocking(task: &TaskSpec, result: &mut TaskResult) {
    let succeeded = result.outcome == Outcome::Succeeded;
    let mut fail = |message: String| {
        if succeeded {
            result.outcome = Outcome::Failed;
            result.message = Some(message);
        }
    };
    for output in task.outputs.iter().filter(|_| succeeded) {
        let path = task.out_dir().join(output.trim_end_matches('/'));
        let ok = match std::fs::metadata(&path) {
            Ok(meta) if output.ends_with('/') => meta.is_dir(),
            Ok(_) => true,
            Err(_) => false,
        };
        if !ok {
            fail(format!(
                "declared output `{output}` was not written to $SLUICE_OUT"
            ));
            return;
        }
    }
    match read_capped(&task.outputs_file(), MAX_OUTPUTS_BYTES) {
        Ok(Some(text)) => match parse_outputs(&text) {
            Ok(outputs) => result.outputs = outputs,
            Err(message) => return fail(message),
        },
        Ok(None) => {}
        Err(message) => return fail(format!("$SLUICE_OUTPUTS: {message}")),
    }
    match read_capped(&task.metrics_file(), MAX_METRICS_BYTES) {
        Ok(Some(text)) if !text.trim().is_empty() => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => result.metrics = map,
            Ok(_) => fail("$SLUICE_METRICS must hold a JSON object".to_string()),
            Err(err) => fail(format!("$SLUICE_METRICS is not valid JSON: {err}")),
        },
        Ok(_) => {}
        Err(message) => fail(format!("$SLUICE_METRICS: {message}")),
    }
}

fn read_capped(path: &Path, cap: u64) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    if meta.len() > cap {
        return Err(format!("{} bytes, over the limit of {cap}", meta.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "not valid UTF-8".to_string())
}

/// The values of the step's secrets from this worker's environment; a missing one is an error
/// that names it, before anything runs.
pub fn resolve_secrets(task: &TaskSpec) -> Result<Vec<(String, String)>, String> {
    task.secrets
        .iter()
        .map(|name| match std::env::var(name) {
            Ok(value) => Ok((name.clone(), value)),
            Err(_) => Err(format!(
                "secret `{name}` is not set in the worker's environment"
            )),
        })
        .collect()
}

/// Replaces secret values in a step's recorded outputs and metrics, as in its logs.
pub fn mask_outputs(result: &mut TaskResult, secrets: &[(String, String)]) {
    let mask = |value: &mut String| {
        for (_, secret) in secrets.iter().filter(|(_, s)| !s.is_empty()) {
            if value.contains(secret.as_str()) {
                *value = value.replace(secret.as_str(), "***");
            }
        }
    };
    result.outputs.values_mut().for_each(mask);
    let mut stack: Vec<&mut serde_json::Value> = result.metrics.values_mut().collect();
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::String(text) => mask(text),
            serde_json::Value::Array(items) => stack.extend(items.iter_mut()),
            serde_json::Value::Object(map) => stack.extend(map.values_mut()),
            _ => {}
        }
    }
}

/// Parses `key=value` lines; blank lines and `#` comments are skipped.
pub fn parse_outputs(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "$SLUICE_OUTPUTS line {} has no `=`: write `key=value`",
                i + 1
            ));
        };
        let key = key.trim();
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !valid {
            return Err(format!(
                "$SLUICE_OUTPUTS line {}: `{key}` is not a valid output name",
                i + 1
            ));
        }
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_key_value_lines() {
        let parsed = parse_outputs("a=1\n\n# note\nb = two=2\n").unwrap();
        assert_eq!(parsed["a"], "1");
        assert_eq!(parsed["b"], " two=2");
        assert!(parse_outputs("novalue\n").unwrap_err().contains("line 1"));
    }
}
