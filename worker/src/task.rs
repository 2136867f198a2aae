//! The contract between the scheduler and workers: what a task says and what a worker reports.
//!
//! A task is one attempt of one step of one run. It carries everything a worker needs, so a
//! worker never reads pipeline files or the store: the scheduler resolves params, env and paths.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::artifacts::{ArtifactKind, ArtifactRef, TaskInput};

/// Which attempt of which step of which run: the fencing token of the queue protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    /// The run's id.
    pub run_id: String,
    /// The step's name.
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.run_id, self.step, self.attempt)
    }
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepCommand {
    /// Text for `sh -c`.
    Shell(String),
    /// argv, executed without a shell.
    Exec(Vec<String>),
    /// A step kind built into the worker (`uses:`), run without a process.
    Builtin(String),
}

/// How many GPUs a step asks for, with the meaning of `docker run --gpus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuRequest {
    /// This many devices.
    Count(u32),
    /// Every device the worker has.
    All,
    /// These device ids.
    Ids(Vec<String>),
}

/// When a worker pulls a step's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pull only when the image is not on the worker.
    #[default]
    IfNotPresent,
    /// Pull before every attempt (picks up a moved tag).
    Always,
    /// Never pull: the image must already be on the worker.
    Never,
}

/// What a step may use of the machine; enforced by the Docker executor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskResources {
    /// CPU cores (0.5 = half a core).
    pub cpu: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// GPU devices asked for.
    pub gpu: Option<GpuRequest>,
}

/// One attempt of one step, ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Run, step and attempt.
    pub key: TaskKey,
    /// The pipeline's name, for labels and `SLUICE_PIPELINE`.
    pub pipeline: String,
    /// The worker queue this task travels on.
    pub queue: String,
    /// What to run.
    pub command: StepCommand,
    /// A container image; tasks with one need the Docker executor.
    pub image: Option<String>,
    /// When to pull `image`.
    #[serde(default)]
    pub pull: PullPolicy,
    /// User (and group) the container runs as, `uid[:gid]` or a name the image knows.
    #[serde(default)]
    pub user: Option<String>,
    /// Machine resources the step asks for.
    #[serde(default)]
    pub resources: TaskResources,
    /// GPU device ids the worker assigned to this attempt (empty until it does).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// The step's whole environment (params, `SLUICE_*`, step env), in order.
    pub env: Vec<(String, String)>,
    /// Names of the step's secrets, masked in logs: each comes from `sealed_secrets` when the
    /// scheduler's secret store has it, else from the worker's own environment.
    pub secrets: Vec<String>,
    /// Secret name to its value sealed with the workers' key (`sluice secrets set`); opened
    /// only by the worker that runs the attempt, never present in clear.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sealed_secrets: BTreeMap<String, String>,
    /// Working directory of the process. For an image step: a path inside the container, or
    /// empty for the image's own.
    pub workdir: PathBuf,
    /// Folder of this attempt: the logs, `in/` with the inputs, and `step/` with `out/`,
    /// outputs and metrics. A worker with its own data dir moves it there ([`TaskSpec::relocate`]).
    pub attempt_dir: PathBuf,
    /// The artifacts of upstream steps, materialised as `in/<step>/` from the artifact store.
    #[serde(default)]
    pub inputs: Vec<TaskInput>,
    /// Files or folders (ending in `/`) the step must leave in `out/`.
    pub outputs: Vec<String>,
    /// Longest the attempt may run.
    pub timeout: Option<Duration>,
    /// An earlier attempt of an image step with the same cache key: reused instead of running
    /// when the worker's image has the digest it ran in and its blobs are all in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_probe: Option<CacheProbe>,
    /// The `with:` arguments of a built-in step kind (`uses:`), as the kind's own type reads
    /// them (`crate::drift::DriftSpec` for `drift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<serde_json::Value>,
    /// A `finally:` step's attempt: it is the run's cleanup, so a cancel of its run does not
    /// stop it (its own timeout and a worker's shutdown still do).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outlives_cancel: bool,
}

/// What [`TaskSpec::cache_probe`] offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheProbe {
    /// The image id the earlier attempt ran in.
    pub image_digest: String,
    /// Its run.
    pub run_id: String,
    /// Its declared outputs.
    pub artifacts: Vec<ArtifactRef>,
    /// Its recorded values.
    pub outputs: BTreeMap<String, String>,
    /// Its metrics.
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// The folder inside an attempt's folder that the step may write: `out/`, the outputs and
/// metrics files. Logs, inputs and the process record sit beside it, out of a container's reach.
pub const STEP_DIR: &str = "step";

/// Where the outputs of the attempt whose folder is `attempt_dir` are: its `$SLUICE_OUT`.
pub fn out_dir_of(attempt_dir: &std::path::Path) -> PathBuf {
    attempt_dir.join(STEP_DIR).join("out")
}

impl TaskSpec {
    /// A task that runs `command` for `key` with its files in `attempt_dir` and nothing else
    /// set: the default queue, no image, no env, no inputs or outputs, no timeout. The scheduler
    /// fills in the rest field by field; tests set what they need with `..TaskSpec::new(..)`.
    pub fn new(key: TaskKey, command: StepCommand, attempt_dir: PathBuf) -> TaskSpec {
        TaskSpec {
            key,
            pipeline: String::new(),
            queue: "default".into(),
            command,
            image: None,
            pull: PullPolicy::default(),
            user: None,
            resources: TaskResources::default(),
            gpus: Vec::new(),
            env: Vec::new(),
            secrets: Vec::new(),
            sealed_secrets: BTreeMap::new(),
            workdir: PathBuf::new(),
            attempt_dir,
            inputs: Vec::new(),
            outputs: Vec::new(),
            timeout: None,
            cache_probe: None,
            with: None,
            outlives_cancel: false,
        }
    }
}

/// Paths inside an attempt's folder, named once.
impl TaskSpec {
    /// The part of the attempt's folder the step may write (mounted into its container).
    pub fn step_dir(&self) -> PathBuf {
        self.attempt_dir.join(STEP_DIR)
    }
    /// `$SLUICE_OUT`.
    pub fn out_dir(&self) -> PathBuf {
        out_dir_of(&self.attempt_dir)
    }
    /// `$SLUICE_IN`: written by the worker before the step starts, read-only to a container.
    pub fn in_dir(&self) -> PathBuf {
        self.attempt_dir.join("in")
    }
    /// `$SLUICE_OUTPUTS`.
    pub fn outputs_file(&self) -> PathBuf {
        self.step_dir().join(OUTPUTS_FILE)
    }
    /// `$SLUICE_METRICS`.
    pub fn metrics_file(&self) -> PathBuf {
        self.step_dir().join(METRICS_FILE)
    }
    /// The variables that say where the attempt's files are, set by the worker that runs it
    /// (after the step's own env, so a step cannot move them by accident).
    pub fn path_env(&self) -> [(&'static str, String); 4] {
        let path = |p: PathBuf| p.display().to_string();
        [
            ("SLUICE_OUT", path(self.out_dir())),
            ("SLUICE_IN", path(self.in_dir())),
            ("SLUICE_OUTPUTS", path(self.outputs_file())),
            ("SLUICE_METRICS", path(self.metrics_file())),
        ]
    }

    /// Moves the attempt's folder under `data_dir` (`runs/<run>/<step>/<attempt>`): a worker
    /// with a data dir of its own keeps its files there, whatever folder the scheduler uses.
    /// A run id or step name that is not one plain path component is refused.
    pub fn relocate(&mut self, data_dir: &std::path::Path) -> Result<(), String> {
        for part in [&self.key.run_id, &self.key.step] {
            if !crate::artifacts::manifest::is_safe_relative(part) || part.contains('/') {
                return Err(format!("`{part}` cannot name a folder"));
            }
        }
        self.attempt_dir = data_dir
            .join("runs")
            .join(&self.key.run_id)
            .join(&self.key.step)
            .join(self.key.attempt.to_string());
        Ok(())
    }

    /// Captured standard output: written by Sluice, outside the step's folder.
    pub fn stdout_log(&self) -> PathBuf {
        self.attempt_dir.join(STDOUT_LOG)
    }
    /// Captured standard error.
    pub fn stderr_log(&self) -> PathBuf {
        self.attempt_dir.join(STDERR_LOG)
    }
}

/// Name of `$SLUICE_OUTPUTS` in the step's folder.
pub const OUTPUTS_FILE: &str = "outputs.env";
/// Name of `$SLUICE_METRICS` in the step's folder.
pub const METRICS_FILE: &str = "metrics.json";
/// Name of the captured standard output in the attempt's folder.
pub const STDOUT_LOG: &str = "stdout.log";
/// Name of the captured standard error in the attempt's folder.
pub const STDERR_LOG: &str = "stderr.log";

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit code 0 and every declared output present.
    Succeeded,
    /// A non-zero exit, a signal, or a broken promise (missing output, bad metrics).
    Failed,
    /// Killed after its timeout.
    TimedOut,
    /// Killed because the run was cancelled.
    Cancelled,
    /// It could not be run at all (spawn failed, disk full, no executor for it).
    Error,
    /// The worker that held it stopped heartbeating (killed, frozen, cut off) and the
    /// scheduler's janitor took the task back. Set by the scheduler, never by a worker.
    Lost,
}

impl Outcome {
    /// The word shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
            Outcome::Lost => "lost",
        }
    }
}

/// What a worker reports when an attempt ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Which attempt this is about.
    pub key: TaskKey,
    /// How it ended.
    pub outcome: Outcome,
    /// The process's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub finished_ms: u64,
    /// Why it failed, in a sentence, when there is more to say than the exit code.
    pub message: Option<String>,
    /// `key=value` lines the step wrote to `$SLUICE_OUTPUTS`.
    pub outputs: BTreeMap<String, String>,
    /// The JSON object the step wrote to `$SLUICE_METRICS`.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// The declared outputs, stored in the artifact store, in the order declared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRef>,
    /// The id of the image the step ran in (`sha256:...`), not its tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The run whose attempt was reused instead of running this one (a cache hit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<String>,
    /// Why the worker did not reuse the attempt [`TaskSpec::cache_probe`] offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_miss: Option<String>,
    /// The worker that ran it (or, for a `lost` result, the one that stopped heartbeating): a
    /// quick step's `Started`, which also names it, travels with this result or never left a
    /// worker killed in its first moments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

impl TaskResult {
    /// A result for an attempt that never ran a process.
    pub fn error(key: TaskKey, message: impl Into<String>) -> Self {
        let now = now_ms();
        TaskResult {
            key,
            outcome: Outcome::Error,
            exit_code: None,
            signal: None,
            started_ms: now,
            finished_ms: now,
            message: Some(message.into()),
            outputs: BTreeMap::new(),
            metrics: serde_json::Map::new(),
            artifacts: Vec::new(),
            image_digest: None,
            cached_from: None,
            cache_miss: None,
            worker: None,
        }
    }
}

/// What workers tell the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerEvent {
    /// The attempt's process started.
    Started {
        /// Which attempt.
        key: TaskKey,
        /// The worker that runs it.
        worker: String,
        /// Milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// The attempt ended.
    Finished(TaskResult),
}

/// Milliseconds since the Unix epoch (0 on a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
