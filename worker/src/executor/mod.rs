//! Executors run one attempt and say how it ended. A failing step is a normal result, not an
//! `Err`: the trait returns a [`TaskResult`] for every attempt, whatever happened.

pub mod local;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::task::{Outcome, TaskResult, TaskSpec};

pub use local::LocalExecutor;

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

/// Creates the attempt's folder: an empty `out/`, `in/` with a link per upstream step, and an
/// empty outputs file. A retried attempt gets a fresh folder of its own.
pub async fn prepare_attempt_dir(task: &TaskSpec) -> io::Result<()> {
    // A redelivered attempt must not see what an earlier delivery of it left behind (logs are
    // truncated when they are opened).
    for dir in [task.out_dir(), task.in_dir()] {
        match tokio::fs::remove_dir_all(&dir).await {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    match tokio::fs::remove_file(task.metrics_file()).await {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let out = task.out_dir();
    tokio::fs::create_dir_all(&out).await?;
    let inputs = task.in_dir();
    tokio::fs::create_dir_all(&inputs).await?;
    for (step, path) in &task.inputs {
        let link = inputs.join(step);
        match tokio::fs::symlink(path, &link).await {
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
            _ => {}
        }
    }
    tokio::fs::write(task.outputs_file(), b"").await?;
    Ok(())
}

/// After the process exited: reads the outputs and metrics files (a failed quality gate's metrics
/// matter as much as a passing one's) and, after a successful exit, checks declared outputs.
/// On success, a broken promise turns the result into a failure with a message that says which.
pub async fn read_step_reports(task: &TaskSpec, result: &mut TaskResult) {
    let succeeded = result.outcome == Outcome::Succeeded;
    let mut fail = |message: String| {
        if succeeded {
            result.outcome = Outcome::Failed;
            result.message = Some(message);
        }
    };
    for output in task.outputs.iter().filter(|_| succeeded) {
        let path = task.out_dir().join(output.trim_end_matches('/'));
        let ok = match tokio::fs::metadata(&path).await {
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
    match read_capped(&task.outputs_file(), MAX_OUTPUTS_BYTES).await {
        Ok(Some(text)) => match parse_outputs(&text) {
            Ok(outputs) => result.outputs = outputs,
            Err(message) => return fail(message),
        },
        Ok(None) => {}
        Err(message) => return fail(format!("$SLUICE_OUTPUTS: {message}")),
    }
    match read_capped(&task.metrics_file(), MAX_METRICS_BYTES).await {
        Ok(Some(text)) if !text.trim().is_empty() => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => result.metrics = map,
            Ok(_) => fail("$SLUICE_METRICS must hold a JSON object".to_string()),
            Err(err) => fail(format!("$SLUICE_METRICS is not valid JSON: {err}")),
        },
        Ok(_) => {}
        Err(message) => fail(format!("$SLUICE_METRICS: {message}")),
    }
}

async fn read_capped(path: &Path, cap: u64) -> Result<Option<String>, String> {
    let meta = match tokio::fs::metadata(path).await {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    if meta.len() > cap {
        return Err(format!("{} bytes, over the limit of {cap}", meta.len()));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "not valid UTF-8".to_string())
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
