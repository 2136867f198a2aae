//! Executors run one attempt and say how it ended. A failing step is a normal result, not an
//! `Err`: the trait returns a [`TaskResult`] for every attempt, whatever happened.

pub mod builtin;
pub mod container_spec;
pub mod deploy;
pub mod docker;
pub mod local;
pub mod registry_auth;
pub mod routing;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::safe_fs::{self, EntryKind};
use crate::secrets::{SecretKey, KEY_ENV, KEY_FILE_ENV};
use crate::task::{self, Outcome, TaskResult, TaskSpec};

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

/// Creates the attempt's folder: `step/` with an empty `out/` and an empty outputs file, and
/// fresh log files beside `step/` (`in/`, beside them too, is the worker's: [`StepExecutor`]). Whatever an earlier
/// delivery (or its step) left there goes first and is never followed: a link where a log goes
/// must not decide where Sluice writes. The file system work runs as one blocking job: a step is
/// short, and a dozen separate hops to the blocking pool cost more than the work itself.
pub async fn prepare_attempt_dir(task: &TaskSpec) -> io::Result<AttemptLogs> {
    let task = task.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&task))
        .await
        .map_err(io::Error::other)?
}

fn prepare_blocking(task: &TaskSpec) -> io::Result<AttemptLogs> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(&task.attempt_dir)?;
    for stale in [
        task.step_dir(),
        task.stdout_log(),
        task.stderr_log(),
        task.attempt_dir.join(local::PROCESS_FILE),
    ] {
        safe_fs::remove_entry(&stale)?;
    }
    // Writable by this worker's user alone (the Docker executor hands the folder to the
    // container's user); `out/` readable, so a later step running as another user can read it.
    let dir = |path: &Path, mode: u32| {
        std::fs::DirBuilder::new().mode(mode).create(path)?;
        // The mode given to mkdir passes through the umask; this one is exact.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
    };
    dir(&task.step_dir(), 0o711)?;
    dir(&task.out_dir(), 0o755)?;
    // A container mounts `in/`; it exists (empty) even when nothing materialised inputs.
    match std::fs::create_dir(task.in_dir()) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    safe_fs::write_new(&task.outputs_file(), b"", 0o600)?;
    Ok(AttemptLogs {
        stdout: safe_fs::create_new(&task.stdout_log(), 0o644)?,
        stderr: safe_fs::create_new(&task.stderr_log(), 0o644)?,
    })
}

/// After the process exited: reads the outputs and metrics files (a failed quality gate's metrics
/// matter as much as a passing one's) and, after a successful exit, checks declared outputs.
/// On success, a broken promise turns the result into a failure with a message that says which.
/// Secret values are masked in what is read, and the files are rewritten masked, so neither the
/// result nor the folder keeps a secret in clear.
pub async fn read_step_reports(
    task: &TaskSpec,
    result: TaskResult,
    secrets: &[(String, String)],
) -> TaskResult {
    let task = task.clone();
    let secrets = secrets.to_vec();
    let fallback = result.clone();
    tokio::task::spawn_blocking(move || {
        let mut result = result;
        read_reports_blocking(&task, &mut result);
        mask_result(&mut result, &secrets);
        if secrets.iter().any(|(_, value)| !value.is_empty()) {
            scrub_reports(&task, &result);
        }
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
    let step_dir = Path::new(task::STEP_DIR);
    for output in task.outputs.iter().filter(|_| succeeded) {
        let relative = step_dir.join("out").join(output.trim_end_matches('/'));
        let problem = match safe_fs::entry_kind(&task.attempt_dir, &relative) {
            Ok(Some(EntryKind::Dir)) => None,
            Ok(Some(EntryKind::File)) if !output.ends_with('/') => None,
            Ok(Some(EntryKind::File)) => Some("is a file, not a folder".to_string()),
            Ok(Some(EntryKind::Link)) => {
                Some("is a symbolic link; an output must be a file or folder".to_string())
            }
            Ok(Some(EntryKind::Special)) => {
                Some("is a FIFO, socket or device; an output must be a file or folder".to_string())
            }
            Ok(None) => Some("was not written to $SLUICE_OUT".to_string()),
            Err(err) => Some(format!("cannot be read: its path {err}")),
        };
        if let Some(problem) = problem {
            fail(format!("declared output `{output}` {problem}"));
            return;
        }
    }
    let outputs = step_dir.join(task::OUTPUTS_FILE);
    match read_text(&task.attempt_dir, &outputs, MAX_OUTPUTS_BYTES) {
        Ok(Some(text)) => match parse_outputs(&text) {
            Ok(outputs) => result.outputs = outputs,
            Err(message) => return fail(message),
        },
        Ok(None) => {}
        Err(message) => return fail(format!("$SLUICE_OUTPUTS {message}")),
    }
    let metrics = step_dir.join(task::METRICS_FILE);
    match read_text(&task.attempt_dir, &metrics, MAX_METRICS_BYTES) {
        Ok(Some(text)) if !text.trim().is_empty() => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => result.metrics = map,
            Ok(_) => fail("$SLUICE_METRICS must hold a JSON object".to_string()),
            Err(err) => fail(format!("$SLUICE_METRICS is not valid JSON: {err}")),
        },
        Ok(_) => {}
        Err(message) => fail(format!("$SLUICE_METRICS {message}")),
    }
}

fn read_text(root: &Path, relative: &Path, cap: u64) -> Result<Option<String>, String> {
    match safe_fs::read_beneath(root, relative, cap) {
        Ok(Some(bytes)) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| "is not valid UTF-8".to_string()),
        Ok(None) => Ok(None),
        Err(err) => Err(err.to_string()),
    }
}

/// Rewrites the outputs and metrics files from the masked result (or removes them), so the
/// attempt's folder keeps no secret the step wrote there.
fn scrub_reports(task: &TaskSpec, result: &TaskResult) {
    let outputs: String = result
        .outputs
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    let metrics = if result.metrics.is_empty() {
        String::new()
    } else {
        serde_json::Value::Object(result.metrics.clone()).to_string()
    };
    for (path, text) in [
        (task.outputs_file(), outputs),
        (task.metrics_file(), metrics),
    ] {
        let _ = safe_fs::remove_entry(&path);
        if !text.is_empty() {
            let _ = safe_fs::write_new(&path, text.as_bytes(), 0o600);
        }
    }
}

/// The values of the step's secrets: sealed ones opened with this worker's `key`, the others
/// from this worker's environment. A missing or unopenable one is an error that names it (never
/// its value), before anything runs.
pub fn resolve_secrets(
    task: &TaskSpec,
    key: Option<&SecretKey>,
) -> Result<Vec<(String, String)>, String> {
    task.secrets
        .iter()
        .map(|name| {
            // Never the worker's own settings (its secret key above all), whatever a task says.
            if name.starts_with("SLUICE_") {
                return Err(format!(
                    "`{name}` cannot be a step's secret: `SLUICE_*` variables are Sluice's own"
                ));
            }
            if let Some(sealed) = task.sealed_secrets.get(name) {
                let key = key.ok_or_else(|| {
                    format!(
                        "secret `{name}` comes from the secret store, but this worker has no key: \
                         set {KEY_ENV} or {KEY_FILE_ENV}"
                    )
                })?;
                return match key.open(name, sealed) {
                    Ok(value) => Ok((name.clone(), value.to_string())),
                    Err(err) => Err(err.to_string()),
                };
            }
            match std::env::var(name) {
                Ok(value) => Ok((name.clone(), value)),
                Err(_) => Err(format!(
                    "secret `{name}` is neither in the secret store nor set in the worker's environment"
                )),
            }
        })
        .collect()
}

/// Replaces secret values everywhere a result can carry text a step chose: output names and
/// values, metric names and values, and the message (which may quote a bad output line).
pub fn mask_result(result: &mut TaskResult, secrets: &[(String, String)]) {
    let mut secrets: Vec<&str> = secrets
        .iter()
        .map(|(_, s)| s.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    // Longest first, as the log masker does: `tok` must not leave `***-long` of `tok-long`.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    if secrets.is_empty() {
        return;
    }
    let mask = |value: &mut String| {
        for secret in &secrets {
            if value.contains(secret) {
                *value = value.replace(secret, "***");
            }
        }
    };
    if let Some(message) = result.message.as_mut() {
        mask(message);
    }
    result.outputs = std::mem::take(&mut result.outputs)
        .into_iter()
        .map(|(mut key, mut value)| {
            mask(&mut key);
            mask(&mut value);
            (key, value)
        })
        .collect();
    mask_json_object(&mut result.metrics, &mask);
}

fn mask_json_object(
    map: &mut serde_json::Map<String, serde_json::Value>,
    mask: &impl Fn(&mut String),
) {
    *map = std::mem::take(map)
        .into_iter()
        .map(|(mut key, mut value)| {
            mask(&mut key);
            mask_json(&mut value, mask);
            (key, value)
        })
        .collect();
}

fn mask_json(value: &mut serde_json::Value, mask: &impl Fn(&mut String)) {
    match value {
        serde_json::Value::String(text) => mask(text),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| mask_json(v, mask)),
        serde_json::Value::Object(map) => mask_json_object(map, mask),
        _ => {}
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
    fn a_task_cannot_ask_for_the_workers_own_settings_as_secrets() {
        let key = crate::task::TaskKey {
            run_id: "r".into(),
            step: "s".into(),
            attempt: 1,
        };
        let mut task = TaskSpec::new(
            key,
            crate::task::StepCommand::Shell("true".into()),
            "/t".into(),
        );
        task.secrets = vec![KEY_ENV.to_string()];
        let err = resolve_secrets(&task, None).unwrap_err();
        assert!(err.contains("cannot be a step's secret"), "{err}");
    }

    #[test]
    fn the_longer_of_two_overlapping_secrets_is_masked_whole() {
        let mut result = TaskResult::error(
            crate::task::TaskKey {
                run_id: "r".into(),
                step: "s".into(),
                attempt: 1,
            },
            "got tok-long",
        );
        let secrets = [("A".into(), "tok".into()), ("B".into(), "tok-long".into())];
        mask_result(&mut result, &secrets);
        assert_eq!(result.message.as_deref(), Some("got ***"));
    }

    #[test]
    fn outputs_are_key_value_lines() {
        let parsed = parse_outputs("a=1\n\n# note\nb = two=2\n").unwrap();
        assert_eq!(parsed["a"], "1");
        assert_eq!(parsed["b"], " two=2");
        assert!(parse_outputs("novalue\n").unwrap_err().contains("line 1"));
    }
}
