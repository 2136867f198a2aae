//! Turning a step of a run into a task a worker can execute without knowing the pipeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use sluice_worker::task::{StepCommand, TaskInput, TaskKey, TaskResources, TaskSpec};

use crate::spec::{Action, Step};
use crate::store::secrets::SecretStore;
use crate::store::{RunRecord, StepRecord};

/// Where attempt `attempt` of `step` in `run_id` keeps its files.
pub fn attempt_dir(data_dir: &Path, run_id: &str, step: &str, attempt: u32) -> PathBuf {
    data_dir
        .join("runs")
        .join(run_id)
        .join(step)
        .join(attempt.to_string())
}

/// The environment variable a parameter reaches steps as: `min_accuracy` → `PARAM_MIN_ACCURACY`.
pub fn param_env_name(param: &str) -> String {
    format!("PARAM_{}", param.to_uppercase())
}

/// Builds the task for the step's newest attempt.
pub fn build_task(
    data_dir: &Path,
    run: &RunRecord,
    step: &Step,
    record: &StepRecord,
    steps: &IndexMap<String, StepRecord>,
) -> TaskSpec {
    let attempt = record.attempts.len() as u32;
    let dir = attempt_dir(data_dir, &run.id, &step.name, attempt);
    let key = TaskKey {
        run_id: run.id.clone(),
        step: step.name.clone(),
        attempt,
    };
    let command = match &step.action {
        Action::Shell(text) => StepCommand::Shell(text.clone()),
        Action::Exec(argv) => StepCommand::Exec(argv.clone()),
        Action::Uses { kind, .. } => StepCommand::Builtin(kind.clone()),
    };
    // Every upstream step gets its folder under `$SLUICE_IN`, empty when it declared nothing.
    let inputs = step
        .depends
        .iter()
        .map(|dep| TaskInput {
            step: dep.clone(),
            artifacts: steps
                .get(dep)
                .map(|s| s.artifacts.clone())
                .unwrap_or_default(),
        })
        .collect();
    let mut task = TaskSpec {
        key,
        pipeline: run.pipeline.clone(),
        queue: step.queue.clone(),
        command,
        image: step.image.clone(),
        pull: step.pull,
        user: step.user.clone(),
        resources: TaskResources {
            cpu: step.resources.cpu,
            memory: step.resources.memory,
            gpu: step.resources.gpu.clone(),
        },
        gpus: Vec::new(),
        env: Vec::new(),
        secrets: step.secrets.clone(),
        sealed_secrets: BTreeMap::new(),
        workdir: match (&step.image, &step.workdir) {
            // Inside a container the workdir is the image's (validation made it absolute).
            (Some(_), Some(w)) => PathBuf::from(w),
            (Some(_), None) => PathBuf::new(),
            (None, Some(w)) => run.base_dir.join(w),
            (None, None) => run.base_dir.clone(),
        },
        attempt_dir: dir,
        inputs,
        outputs: step.outputs.clone(),
        timeout: step.timeout,
        cache_probe: None,
        with: None,
        outlives_cancel: step.phase == crate::spec::Phase::Finally,
    };
    task.env = step_env(data_dir, run, &step.env, &run.params, &task);
    task
}

/// Adds to each task the sealed values the data dir's secret store holds for its secrets, read
/// when it is queued (so a `sluice secrets set` applies from the next attempt); the worker takes
/// the others from its environment. A file that cannot be read is logged and left to the
/// worker, whose error then names the secret.
pub fn add_sealed_secrets(data_dir: &Path, tasks: &mut [TaskSpec]) {
    let store = SecretStore::in_data_dir(data_dir);
    for task in tasks.iter_mut().filter(|t| !t.secrets.is_empty()) {
        for name in &task.secrets {
            match store.sealed(name) {
                Ok(Some(sealed)) => {
                    task.sealed_secrets.insert(name.clone(), sealed);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(secret = %name, error = %err, "Cannot read a stored secret.")
                }
            }
        }
    }
}

/// The step's own env first, then what Sluice sets, so a step cannot shadow `SLUICE_RUN_ID` by
/// accident (the worker adds the paths, `SLUICE_OUT` and the others, after these). Params arrive only as variables, never spliced into command text.
fn step_env(
    data_dir: &Path,
    run: &RunRecord,
    own: &IndexMap<String, String>,
    params: &BTreeMap<String, String>,
    task: &TaskSpec,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = own.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.extend(params.iter().map(|(k, v)| (param_env_name(k), v.clone())));
    let path = |p: PathBuf| p.display().to_string();
    env.extend([
        ("SLUICE_RUN_ID".into(), run.id.clone()),
        ("SLUICE_PIPELINE".into(), run.pipeline.clone()),
        ("SLUICE_STEP".into(), task.key.step.clone()),
        ("SLUICE_ATTEMPT".into(), task.key.attempt.to_string()),
        ("SLUICE_DATA_DIR".into(), path(data_dir.to_path_buf())),
    ]);
    env
}
