//! The typed pipeline: what a valid file means, with defaults already applied to every step.

use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::condition::Condition;
use super::yaml::Mark;

/// A pipeline definition, read from one file and fully validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// `[a-z0-9_-]+`, unique among loaded pipelines.
    pub name: String,
    /// One line shown in listings.
    pub description: Option<String>,
    /// Parameters with their types and defaults, in file order.
    pub params: IndexMap<String, ParamSpec>,
    /// Environment for every step; a step's own `env` wins.
    pub env: IndexMap<String, String>,
    /// Most steps of one run that may run at once; `None` lets the runner decide.
    pub parallelism: Option<usize>,
    /// How many runs of this pipeline may be active, and what to do with more.
    pub concurrency: Option<Concurrency>,
    /// What starts runs besides a person (validated now; fired by the scheduler daemon).
    pub triggers: Vec<Trigger>,
    /// Longest the whole run may take; past it, it is stopped and ends failed.
    pub timeout: Option<Duration>,
    /// Where the daemon posts the run's summary when it ends (`notify:`).
    pub notify: Vec<super::notify::Notify>,
    /// Steps in file order, each with the pipeline's defaults applied.
    pub steps: IndexMap<String, Step>,
}

/// The type a parameter's values must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl ParamType {
    /// The name used in files and messages.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }

    /// Checks that `value` (as it reaches a step: text) has this type; the error says why not.
    pub fn check(self, value: &str) -> Result<(), String> {
        let ok = match self {
            ParamType::String => true,
            ParamType::Integer => value.parse::<i64>().is_ok(),
            ParamType::Number => value.parse::<f64>().is_ok_and(f64::is_finite),
            ParamType::Boolean => matches!(value, "true" | "false"),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, got `{value}`", self.article_name()))
        }
    }

    fn article_name(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Integer => "an integer",
            ParamType::Number => "a number",
            ParamType::Boolean => "a boolean (true or false)",
        }
    }
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The type every value must have.
    pub kind: ParamType,
    /// The default as text; `None` makes the parameter required.
    pub default: Option<String>,
    /// Shown by `sluice show` and the API.
    pub description: Option<String>,
}

/// Whether a retry waits the same time every attempt or doubles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// The same delay before every retry.
    #[default]
    Fixed,
    /// `delay * 2^(retry-1)`, capped by `max_delay`.
    Exponential,
}

/// How many times a step whose worker was lost is run again by default.
pub const DEFAULT_LOST_RETRIES: u32 = 3;

/// When and how a failed step is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means the step runs once.
    pub limit: u32,
    /// Runs again after attempts whose worker was lost (killed, cut off): an infrastructure
    /// failure, counted apart from `limit`, retried at once whatever `on_exit_codes` says.
    pub lost: u32,
    /// How the delay grows.
    pub backoff: Backoff,
    /// Wait before the first retry.
    pub delay: Duration,
    /// Upper bound for exponential backoff.
    pub max_delay: Option<Duration>,
    /// Retry only on these exit codes; empty means any failure.
    pub on_exit_codes: Vec<i32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            limit: 0,
            lost: DEFAULT_LOST_RETRIES,
            backoff: Backoff::default(),
            delay: Duration::ZERO,
            max_delay: None,
            on_exit_codes: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before attempt `next_attempt` (2 for the first retry).
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let retries_so_far = next_attempt.saturating_sub(2);
        let delay = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => self
                .delay
                .saturating_mul(2u32.saturating_pow(retries_so_far.min(31))),
        };
        match self.max_delay {
            Some(max) => delay.min(max),
            None => delay,
        }
    }

    /// Whether a failure with `exit_code` may be retried under this policy.
    pub fn retries_exit_code(&self, exit_code: Option<i32>) -> bool {
        self.on_exit_codes.is_empty()
            || exit_code.is_some_and(|code| self.on_exit_codes.contains(&code))
    }
}

pub use sluice_worker::task::{GpuRequest, PullPolicy};

/// What a step needs from the machine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    /// CPU cores (0.5 = half a core).
    pub cpu: Option<f64>,
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// GPU devices.
    pub gpu: Option<GpuRequest>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `run:` text for `sh -c`.
    Shell(String),
    /// `command:` argv, run without a shell.
    Exec(Vec<String>),
    /// `uses:` a built-in step kind, with its `with:` arguments.
    Uses {
        /// The kind's name.
        kind: String,
        /// It with its `with:` arguments.
        builtin: Box<super::builtins::Builtin>,
    },
}

/// A step with the pipeline's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The step's key in `steps`.
    pub name: String,
    /// Where the step's key stands in the file, for later diagnostics.
    pub mark: Mark,
    /// Shown in listings.
    pub description: Option<String>,
    /// Steps that must succeed before this one starts.
    pub depends: Vec<String>,
    /// Run only when this holds; otherwise the step is skipped.
    pub when: Option<Condition>,
    /// The command.
    pub action: Action,
    /// Container image; a step with one runs in Docker.
    pub image: Option<String>,
    /// Environment: the pipeline's, overridden by the step's.
    pub env: IndexMap<String, String>,
    /// Variables forwarded from the runner's environment, masked in logs.
    pub secrets: Vec<String>,
    /// Working directory, relative to the pipeline file's folder unless absolute.
    pub workdir: Option<String>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Longest an attempt may run.
    pub timeout: Option<Duration>,
    /// Machine resources.
    pub resources: Resources,
    /// The worker queue the step goes to.
    pub queue: String,
    /// Files or folders (ending in `/`) the step must leave in `$SLUICE_OUT`.
    pub outputs: Vec<String>,
    /// When to pull `image`.
    pub pull: PullPolicy,
    /// User an image step's container runs as.
    pub user: Option<String>,
    /// Reuse an earlier successful attempt with the same inputs instead of running.
    pub cache: Option<CachePolicy>,
    /// Registered model versions the step takes as inputs, each materialised under
    /// `$SLUICE_IN/models/<name>/` (`models: {current: churn@production}`).
    pub models: IndexMap<String, crate::models::ModelRef>,
    /// The section the step is written in, which decides when it runs.
    pub phase: Phase,
    /// `matrix:` as written (only until the pipeline is expanded), or the combination this
    /// step is one expansion of.
    pub matrix: Option<Matrix>,
}

/// Which section of the file a step is written in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `steps:`, the run's work.
    #[default]
    Main,
    /// `on_failure:`, run after the steps when the run failed (skipped otherwise).
    OnFailure,
    /// `finally:`, run last whatever happened, even after a cancel.
    Finally,
}

impl Phase {
    /// The top-level key the section is written under.
    pub fn section(self) -> &'static str {
        match self {
            Phase::Main => "steps",
            Phase::OnFailure => "on_failure",
            Phase::Finally => "finally",
        }
    }

    /// Whether the step is a handler (`on_failure:` or `finally:`) rather than the run's work.
    pub fn is_handler(self) -> bool {
        self != Phase::Main
    }

    /// Whether the step is one of the run's own steps (for `skip_serializing_if`).
    pub fn is_main(&self) -> bool {
        *self == Phase::Main
    }
}

/// A step's `matrix:`: one step per combination of values.
#[derive(Debug, Clone, PartialEq)]
pub enum Matrix {
    /// The axes as written: each name with its values, in file order.
    Axes(IndexMap<String, Vec<String>>),
    /// One combination: the step written as `of`, with these values (`MATRIX_<NAME>`).
    Cell {
        /// The step's name as written (`train` for `train[lr=0.1]`).
        of: String,
        /// Each axis with this expansion's value.
        values: IndexMap<String, String>,
    },
}

/// `cache:` of a step: what besides the step's definition, params and inputs decides a hit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CachePolicy {
    /// Globs of files under the pipeline's folder the step reads (its code), hashed into the key.
    pub inputs: Vec<String>,
}

/// Limits on concurrent runs of one pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// Most active runs.
    pub limit: u32,
    /// What a new run does when the limit is reached.
    pub overlap: Overlap,
}

/// What to do with a run that would exceed the concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Wait for a slot.
    Queue,
    /// Do not start it; record that it was skipped.
    Skip,
    /// Cancel the running ones, then start.
    CancelRunning,
    /// Start anyway.
    Allow,
}

/// What starts a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// A cron schedule.
    Cron {
        /// The expression, as written.
        schedule: String,
        /// IANA time zone name.
        timezone: String,
        /// What to do with instants missed while the scheduler was down.
        catchup: Catchup,
        /// `schedule` in `timezone`, parsed when the pipeline was read.
        parsed: Box<crate::triggers::cron::Schedule>,
    },
    /// `POST /hooks/{pipeline}/{name}`.
    Webhook {
        /// The trigger's name in the URL.
        name: String,
        /// Variable holding the HMAC secret.
        secret_env: Option<String>,
        /// Param name to payload path.
        params: IndexMap<String, String>,
    },
    /// New files in a folder.
    Watch {
        /// The folder.
        path: String,
        /// Glob of file names.
        pattern: String,
        /// The parameter that receives the file's path.
        param: String,
    },
    /// Runs of another pipeline that ended a given way (`after:`), e.g. drift monitoring
    /// that starts retraining.
    After(Box<AfterTrigger>),
}

/// An `after:` trigger: start this pipeline once per run of `pipeline` that ended with
/// `status` and met `when`, once `breaches` such runs fell within its window, at most once per
/// `cooldown`.
#[derive(Debug, Clone, PartialEq)]
pub struct AfterTrigger {
    /// The pipeline whose runs are followed.
    pub pipeline: String,
    /// How a run must end to count.
    pub status: AfterStatus,
    /// What its outputs or params must say to count, as written and parsed.
    pub when: Option<(String, Condition)>,
    /// How many counting runs it takes.
    pub count: u32,
    /// The window those runs must fall within (by when they finished); none: since the last
    /// start.
    pub within: Option<Duration>,
    /// The least time between two starts.
    pub cooldown: Option<Duration>,
    /// Param of this pipeline to what of the counting run it receives.
    pub params: IndexMap<String, RunValue>,
}

/// How a followed run must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStatus {
    /// Every step succeeded or was skipped.
    Succeeded,
    /// A step failed.
    Failed,
    /// Someone cancelled it.
    Cancelled,
    /// Any of those.
    Finished,
}

/// A value read from a finished run: its id, a param, or a step's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunValue {
    /// `run.id`
    RunId,
    /// `params.<name>` or `steps.<step>.outputs.<key>`.
    Operand(super::condition::Operand),
}

/// Catch-up policy for missed cron instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// Skip them.
    None,
    /// Run the most recent one.
    Latest,
    /// Run all of them, capped.
    All,
}
