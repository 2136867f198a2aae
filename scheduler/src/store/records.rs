//! What the store keeps: pipelines, runs, steps with their attempts, and each run's history.

use std::collections::BTreeMap;
use std::path::PathBuf;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
pub use sluice_worker::task::Outcome;

/// A run's lifecycle: `queued → running → succeeded | failed | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, not started.
    Queued,
    /// Steps are being run.
    Running,
    /// Every step succeeded or was skipped by its condition.
    Succeeded,
    /// A step failed.
    Failed,
    /// Someone cancelled it.
    Cancelled,
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// The word shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// A step's lifecycle: `pending → queued → running → succeeded | failed | skipped | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies (or for a retry's delay).
    Pending,
    /// Handed to the queue; the attempt is committed.
    Queued,
    /// A worker started it.
    Running,
    /// Its last attempt succeeded.
    Succeeded,
    /// Its last attempt failed and no retry is left.
    Failed,
    /// Not run: its condition was false or an upstream step did not succeed.
    Skipped,
    /// The run was cancelled before it finished.
    Cancelled,
}

impl StepStatus {
    /// Whether the step will not change any more in this run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    }

    /// The word shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Queued => "queued",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

/// A pipeline definition as it was when a run used it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRecord {
    /// The pipeline's name.
    pub name: String,
    /// SHA-256 of `text`.
    pub hash: String,
    /// The file's text.
    pub text: String,
    /// Where it was read from.
    pub path: PathBuf,
}

/// One run of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// Sorts by creation time (a ULID).
    pub id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// Hash of the definition it runs; the text is in the pipeline record.
    pub definition_hash: String,
    /// What started it: `manual`, `resume`, a trigger's name.
    #[schema(value_type = String, example = "api by ci")]
    pub trigger: TriggerOrigin,
    /// Parameter values after defaults and overrides.
    pub params: BTreeMap<String, String>,
    /// Folder relative `workdir`s resolve against: the pipeline file's folder at start.
    #[schema(value_type = String)]
    pub base_dir: PathBuf,
    /// Most steps at once.
    pub parallelism: usize,
    /// Where it stands.
    pub status: RunStatus,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it finished, if it has.
    pub finished_ms: Option<u64>,
    /// Number of steps, for listings.
    pub step_count: usize,
    /// Every step runs, cache or not (`--no-cache`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// The git commit of the pipelines folder when the definition was loaded, if it is in a
    /// git work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The run this one retries (`sluice retry`): its succeeded steps were kept, not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

/// One attempt of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    /// From 1.
    pub number: u32,
    /// How this attempt stands or ended.
    pub status: StepStatus,
    /// How the worker says it ended (`timed_out`, `error`, ... when stored), once it ended.
    pub outcome: Option<Outcome>,
    /// Exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// Signal, when one ended it.
    pub signal: Option<i32>,
    /// Which worker ran it.
    pub worker: Option<String>,
    /// When it was queued, ms since the epoch.
    pub queued_ms: u64,
    /// When its process started.
    pub started_ms: Option<u64>,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// Why it failed, when there is more to say than the exit code.
    pub message: Option<String>,
    /// Folder with `out/`, logs, outputs and metrics of this attempt.
    #[schema(value_type = String)]
    pub dir: PathBuf,
}

/// A step within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepRecord {
    /// The run it belongs to.
    pub run_id: String,
    /// The step's name.
    pub name: String,
    /// Position in the pipeline file, for display in file order.
    pub index: u32,
    /// Where it stands.
    pub status: StepStatus,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Outputs of the successful attempt.
    pub outputs: BTreeMap<String, String>,
    /// Metrics of the successful attempt.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// The declared outputs of the successful attempt, as stored in the artifact store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<sluice_worker::task::ArtifactRef>,
    /// The id of the image the successful attempt ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// What the cache decided (steps with `cache:`): the key, a hit's run, a miss's reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::engine::cache::CacheNote>,
    /// A `gate` step's table: each metric, its bound, the compared version's value, the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<crate::models::gate::GateReport>,
    /// The versions its `models:` inputs resolved to (`current` → `churn:3`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    /// Why it was skipped or cancelled.
    pub reason: Option<String>,
    /// A retry waits until this time (ms since the epoch).
    pub retry_at_ms: Option<u64>,
    /// The section it is written in: `on_failure` and `finally` steps are shown apart.
    #[serde(default, skip_serializing_if = "crate::spec::Phase::is_main")]
    pub phase: crate::spec::Phase,
    /// Its values when it is one expansion of a `matrix:` (`lr` → `0.1`), in the file's order.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub matrix: IndexMap<String, String>,
}

impl StepRecord {
    /// Step `name` (at `index` in its pipeline) of `run_id`, not started: no attempts, nothing
    /// recorded.
    pub fn pending(run_id: &str, name: &str, index: u32) -> StepRecord {
        StepRecord {
            run_id: run_id.to_string(),
            name: name.to_string(),
            index,
            status: StepStatus::Pending,
            attempts: Vec::new(),
            outputs: Default::default(),
            metrics: Default::default(),
            artifacts: Vec::new(),
            image_digest: None,
            cache: None,
            gate: None,
            models: Default::default(),
            reason: None,
            retry_at_ms: None,
            phase: Default::default(),
            matrix: Default::default(),
        }
    }

    /// The latest attempt, if any.
    pub fn last_attempt(&self) -> Option<&AttemptRecord> {
        self.attempts.last()
    }

    /// Milliseconds from the first start to the last end, when both are known.
    pub fn duration_ms(&self) -> Option<u64> {
        let start = self.attempts.iter().find_map(|a| a.started_ms)?;
        let end = self.attempts.last()?.finished_ms?;
        Some(end.saturating_sub(start))
    }
}

/// The expansions of each `matrix:` step among `steps`, by the step's name as written
/// (`train` for `train[lr=0.1]`), in the order they come.
pub fn sweeps(steps: &[StepRecord]) -> indexmap::IndexMap<&str, Vec<&StepRecord>> {
    let mut sweeps: indexmap::IndexMap<&str, Vec<&StepRecord>> = indexmap::IndexMap::new();
    for step in steps.iter().filter(|s| !s.matrix.is_empty()) {
        let written = step
            .name
            .split_once('[')
            .map_or(step.name.as_str(), |(w, _)| w);
        sweeps.entry(written).or_default().push(step);
    }
    sweeps
}

/// An entry in a run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// Order within the run.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// The step it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The attempt it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// What happened, e.g. `step.succeeded`.
    #[schema(value_type = String, example = "step.succeeded")]
    pub kind: EventKind,
    /// Details for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What started a run. Stored and shown as the text runs have always recorded (`manual`,
/// `api`, `api by NAME`, `cron EXPR @ INSTANT`, `webhook:NAME`, `watch PATH`, `after PIPELINE run RUN`, `retry of RUN [by WHO]`), so older stores
/// read the same; text this version cannot parse reads as [`TriggerOrigin::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum TriggerOrigin {
    /// `sluice run` on the command line.
    #[default]
    Manual,
    /// `POST /api/v1/pipelines/{p}/runs`, by the named token when there are tokens.
    Api {
        /// The API token's name.
        by: Option<String>,
    },
    /// A cron schedule's instant.
    Cron {
        /// The schedule as written.
        schedule: String,
        /// The instant it fired for (RFC 3339).
        instant: String,
    },
    /// A signed (or `insecure`) webhook delivery.
    Webhook {
        /// The webhook's name in the pipeline.
        name: String,
    },
    /// A new file in a watched folder.
    Watch {
        /// The file.
        path: String,
    },
    /// `sluice retry` (or `POST /api/v1/runs/{id}/retry`) of an earlier run.
    Retry {
        /// The run retried.
        run: String,
        /// Who asked: `cli`, or the API token's name.
        by: Option<String>,
    },
    /// An `after:` trigger, for a run of another pipeline that ended the way it asks.
    After {
        /// The pipeline whose run qualified.
        pipeline: String,
        /// That run.
        run: String,
    },
    /// Text this version does not know (written by another one).
    Other(String),
}

impl From<String> for TriggerOrigin {
    fn from(text: String) -> TriggerOrigin {
        if text == "manual" {
            return TriggerOrigin::Manual;
        }
        if text == "api" {
            return TriggerOrigin::Api { by: None };
        }
        if let Some(by) = text.strip_prefix("api by ") {
            return TriggerOrigin::Api {
                by: Some(by.to_string()),
            };
        }
        if let Some((schedule, instant)) = text
            .strip_prefix("cron ")
            .and_then(|rest| rest.rsplit_once(" @ "))
        {
            return TriggerOrigin::Cron {
                schedule: schedule.to_string(),
                instant: instant.to_string(),
            };
        }
        if let Some(name) = text.strip_prefix("webhook:") {
            return TriggerOrigin::Webhook {
                name: name.to_string(),
            };
        }
        if let Some((pipeline, run)) = text
            .strip_prefix("after ")
            .and_then(|rest| rest.split_once(" run "))
        {
            return TriggerOrigin::After {
                pipeline: pipeline.to_string(),
                run: run.to_string(),
            };
        }
        if let Some(rest) = text.strip_prefix("retry of ") {
            let (run, by) = match rest.split_once(" by ") {
                Some((run, by)) => (run, Some(by.to_string())),
                None => (rest, None),
            };
            return TriggerOrigin::Retry {
                run: run.to_string(),
                by,
            };
        }
        if let Some(path) = text.strip_prefix("watch ") {
            return TriggerOrigin::Watch {
                path: path.to_string(),
            };
        }
        TriggerOrigin::Other(text)
    }
}

impl std::fmt::Display for TriggerOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TriggerOrigin::Manual => f.write_str("manual"),
            TriggerOrigin::Api { by: None } => f.write_str("api"),
            TriggerOrigin::Api { by: Some(by) } => write!(f, "api by {by}"),
            TriggerOrigin::Cron { schedule, instant } => write!(f, "cron {schedule} @ {instant}"),
            TriggerOrigin::Webhook { name } => write!(f, "webhook:{name}"),
            TriggerOrigin::Watch { path } => write!(f, "watch {path}"),
            TriggerOrigin::After { pipeline, run } => write!(f, "after {pipeline} run {run}"),
            TriggerOrigin::Retry { run, by: None } => write!(f, "retry of {run}"),
            TriggerOrigin::Retry { run, by: Some(by) } => write!(f, "retry of {run} by {by}"),
            TriggerOrigin::Other(text) => f.write_str(text),
        }
    }
}

impl From<TriggerOrigin> for String {
    fn from(origin: TriggerOrigin) -> String {
        origin.to_string()
    }
}

/// What a history entry records. Stored as its dotted name (`step.failed`), the form stores
/// written before this type hold; a name this version does not know reads as [`EventKind::Other`]
/// rather than making the run unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum EventKind {
    /// The run was created and may start.
    RunStarted,
    /// The run was created and waits for a concurrency slot.
    RunWaiting,
    /// `sluice run --resume` took the run up again.
    RunResumed,
    /// A restarted daemon picked the run up.
    RunReattached,
    /// A cancel was asked for.
    RunCancelling,
    /// The run ended so.
    RunSucceeded,
    /// The run ended so.
    RunFailed,
    /// The run ended so.
    RunCancelled,
    /// An attempt was queued.
    StepQueued,
    /// A worker started the attempt.
    StepStarted,
    /// The attempt succeeded.
    StepSucceeded,
    /// The attempt failed and the step will not run again.
    StepFailed,
    /// The attempt failed and the step runs again after a delay.
    StepRetrying,
    /// The step will not run (upstream failed, or its `when` is false).
    StepSkipped,
    /// The step was cancelled.
    StepCancelled,
    /// The queue lost the attempt; it is queued again.
    StepRequeued,
    /// A kind this version does not know (written by another one).
    Other(String),
}

impl EventKind {
    const NAMES: [(EventKind, &'static str); 16] = [
        (EventKind::RunStarted, "run.started"),
        (EventKind::RunWaiting, "run.waiting"),
        (EventKind::RunResumed, "run.resumed"),
        (EventKind::RunReattached, "run.reattached"),
        (EventKind::RunCancelling, "run.cancelling"),
        (EventKind::RunSucceeded, "run.succeeded"),
        (EventKind::RunFailed, "run.failed"),
        (EventKind::RunCancelled, "run.cancelled"),
        (EventKind::StepQueued, "step.queued"),
        (EventKind::StepStarted, "step.started"),
        (EventKind::StepSucceeded, "step.succeeded"),
        (EventKind::StepFailed, "step.failed"),
        (EventKind::StepRetrying, "step.retrying"),
        (EventKind::StepSkipped, "step.skipped"),
        (EventKind::StepCancelled, "step.cancelled"),
        (EventKind::StepRequeued, "step.requeued"),
    ];

    /// The dotted name, as stored and shown.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Other(name) => name,
            known => EventKind::NAMES
                .iter()
                .find(|(kind, _)| kind == known)
                .map_or("", |(_, name)| name),
        }
    }

    /// How a run that ended with `status` records its end.
    pub fn run_ended(status: RunStatus) -> EventKind {
        match status {
            RunStatus::Failed => EventKind::RunFailed,
            RunStatus::Cancelled => EventKind::RunCancelled,
            RunStatus::Succeeded => EventKind::RunSucceeded,
            other => EventKind::Other(format!("run.{}", other.as_str())),
        }
    }
}

impl From<String> for EventKind {
    fn from(name: String) -> EventKind {
        EventKind::NAMES
            .iter()
            .find(|(_, known)| *known == name)
            .map_or(EventKind::Other(name), |(kind, _)| kind.clone())
    }
}

impl From<EventKind> for String {
    fn from(kind: EventKind) -> String {
        kind.as_str().to_string()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_keep_their_stored_names_and_unknown_ones_survive() {
        for (kind, name) in EventKind::NAMES {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
        let future: EventKind = serde_json::from_str("\"step.cached\"").unwrap();
        assert_eq!(future, EventKind::Other("step.cached".into()));
        assert_eq!(serde_json::to_string(&future).unwrap(), "\"step.cached\"");
        assert_eq!(
            EventKind::run_ended(RunStatus::Failed),
            EventKind::RunFailed
        );
    }

    #[test]
    fn trigger_origins_read_and_write_the_text_runs_always_recorded() {
        for text in [
            "manual",
            "api",
            "api by ci-bot",
            "cron 0 3 * * MON-FRI @ 2026-12-03T03:00:00+00:00",
            "webhook:s3-put",
            "watch /data/landing/a b.csv",
            "after monitor run 01KBX7ZQ0000000000000000AB",
            "retry of 01KBX7ZQ0000000000000000AB",
            "retry of 01KBX7ZQ0000000000000000AB by ci-bot",
            "something newer",
        ] {
            let origin: TriggerOrigin = serde_json::from_str(&format!("{text:?}")).unwrap();
            assert_eq!(serde_json::to_string(&origin).unwrap(), format!("{text:?}"));
            assert_eq!(
                matches!(origin, TriggerOrigin::Other(_)),
                text == "something newer"
            );
        }
        let cron =
            TriggerOrigin::from("cron 0 3 * * MON-FRI @ 2026-12-03T03:00:00+00:00".to_string());
        assert_eq!(
            cron,
            TriggerOrigin::Cron {
                schedule: "0 3 * * MON-FRI".into(),
                instant: "2026-12-03T03:00:00+00:00".into()
            }
        );
        assert_eq!(
            TriggerOrigin::from("after monitor run 01KBX7".to_string()),
            TriggerOrigin::After {
                pipeline: "monitor".into(),
                run: "01KBX7".into()
            }
        );
    }

    #[test]
    fn attempt_outcomes_read_as_stored_before_they_were_typed() {
        let stored = r#"{"number":1,"status":"failed","outcome":"timed_out","exit_code":null,
            "signal":null,"worker":null,"queued_ms":1,"started_ms":null,"finished_ms":null,
            "message":null,"dir":"/d"}"#;
        let attempt: AttemptRecord = serde_json::from_str(stored).unwrap();
        assert_eq!(attempt.outcome, Some(Outcome::TimedOut));
        assert!(serde_json::to_string(&attempt)
            .unwrap()
            .contains("\"outcome\":\"timed_out\""));
    }
}
