//! Prometheus metrics of the daemons (`GET /metrics` of `sluice scheduler` and `sluice server`).
//!
//! Two kinds, kept apart on purpose:
//! - **Counters and the step-duration histogram** ([`Metrics`]) are counted in this process when
//!   the daemon commits the transition they count: a run created, a run or a step reaching its
//!   final state (seen through the run's [`crate::engine::RunObserver`], which hears only of
//!   committed records), a trigger firing or being skipped, a webhook refused, a lease taken
//!   back. They start at 0 when the daemon starts; Prometheus' `rate()` and `increase()` read a
//!   drop to 0 as a restart, which is what it is. Recounting them from the store at each scrape
//!   would instead cost a scan of every run ever kept, and would go *down* when `gc` removes
//!   old runs, which `rate()` cannot tell from a restart and misreads.
//! - **Gauges** ([`Snapshot`]) are read fresh at each scrape from where the truth lives: the
//!   queue (tasks waiting), the worker registry (heartbeats), the store (its size on disk, the
//!   model registry's aliases) and the runs the daemon drives. They are encoded from a registry
//!   made for that one scrape, so a queue, worker or alias that went away leaves no stale series.
//!
//! Every label has a bounded set of values: pipeline names (the loaded catalog), states, trigger
//! kinds, refusal reasons, worker queue names, model and alias names of the registry. Never a
//! run id, a step name or anything a caller can choose freely (a webhook's path names a pipeline
//! that may not exist, so webhook refusals carry only their reason).

mod snapshot;
mod tally;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::{RunStatus, StepStatus, TriggerOrigin};

pub use snapshot::{Snapshot, WorkerCounts};
pub use tally::RunTally;

/// The `Content-Type` of what [`Metrics::encode`] writes: Prometheus' text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the step-duration buckets: from a tenth of a second (a `noop` or a
/// cache hit) to four hours (a long training), roughly tripling, so `histogram_quantile` is
/// within a factor of about two anywhere in that range.
const STEP_DURATION_BUCKETS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    14400.0,
];

/// Labels of what is counted per pipeline.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
}

/// Labels of what is counted per pipeline and final state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pipeline: String,
    state: &'static str,
}

/// Labels of trigger firings and skips.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    kind: &'static str,
    pipeline: String,
}

/// Labels of webhook refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    reason: &'static str,
}

/// Labels of a drift score: the pipeline whose `uses: drift` step compared, and the column.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    pipeline: String,
    column: String,
}

/// Most columns of one drift report that become series: column names come from the data, and
/// a file with thousands of columns must not make thousands of series per pipeline.
const MAX_DRIFT_COLUMNS: usize = 200;

/// Labels of what is counted per worker queue.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

/// What kind of trigger started (or was refused) a run: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// A cron schedule's instant.
    Cron,
    /// A webhook delivery.
    Webhook,
    /// A new file in a watched folder.
    Watch,
    /// An `after:` trigger following another pipeline.
    After,
    /// `POST /api/v1/pipelines/{p}/runs` (and `sluice trigger`).
    Api,
    /// A retry of an earlier run.
    Retry,
    /// `sluice run` on the command line (never through a daemon; kept for completeness).
    Manual,
    /// An origin this version does not know.
    Other,
}

impl TriggerKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Cron => "cron",
            TriggerKind::Webhook => "webhook",
            TriggerKind::Watch => "watch",
            TriggerKind::After => "after",
            TriggerKind::Api => "api",
            TriggerKind::Retry => "retry",
            TriggerKind::Manual => "manual",
            TriggerKind::Other => "other",
        }
    }
}

impl From<&TriggerOrigin> for TriggerKind {
    fn from(origin: &TriggerOrigin) -> TriggerKind {
        match origin {
            TriggerOrigin::Manual => TriggerKind::Manual,
            TriggerOrigin::Api { .. } => TriggerKind::Api,
            TriggerOrigin::Cron { .. } => TriggerKind::Cron,
            TriggerOrigin::Webhook { .. } => TriggerKind::Webhook,
            TriggerOrigin::Watch { .. } => TriggerKind::Watch,
            TriggerOrigin::Retry { .. } => TriggerKind::Retry,
            TriggerOrigin::After { .. } => TriggerKind::After,
            TriggerOrigin::Other(_) => TriggerKind::Other,
        }
    }
}

/// Why a webhook delivery started nothing: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRejection {
    /// No loaded pipeline has a webhook by that name (404).
    Unknown,
    /// The webhook's secret variable is not set on the scheduler (503).
    NotConfigured,
    /// No signature header (401).
    Unsigned,
    /// A signature header that is neither scheme (401).
    Malformed,
    /// A plain signature where `--require-webhook-timestamp` asks for a timestamped one (401).
    TimestampRequired,
    /// A timestamp too far from now: a replay, or a sender's wrong clock (401).
    Stale,
    /// The signature does not match the body with any of the secrets (401).
    BadSignature,
    /// A delivery seen before (a replay within the dedupe window, or a sender's redelivery):
    /// answered with the first run's id, nothing new started (202).
    Duplicate,
    /// A body over the size limit (413).
    TooLarge,
    /// A body the params cannot be mapped from, or params the pipeline refuses (422).
    BadPayload,
}

impl WebhookRejection {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookRejection::Unknown => "unknown",
            WebhookRejection::NotConfigured => "not_configured",
            WebhookRejection::Unsigned => "unsigned",
            WebhookRejection::Malformed => "malformed",
            WebhookRejection::TimestampRequired => "timestamp_required",
            WebhookRejection::Stale => "stale",
            WebhookRejection::BadSignature => "bad_signature",
            WebhookRejection::Duplicate => "duplicate",
            WebhookRejection::TooLarge => "too_large",
            WebhookRejection::BadPayload => "bad_payload",
        }
    }
}

/// The daemon's counters and histogram (see the module docs); cheap to clone, every clone
/// counts into the same series.
#[derive(Clone)]
pub struct Metrics {
    runs_started: Family<PipelineLabels, Counter>,
    runs_finished: Family<StateLabels, Counter>,
    steps_finished: Family<StateLabels, Counter>,
    step_duration: Family<PipelineLabels, Histogram, fn() -> Histogram>,
    trigger_firings: Family<TriggerLabels, Counter>,
    trigger_skips: Family<TriggerLabels, Counter>,
    webhook_rejections: Family<RejectionLabels, Counter>,
    leases_lost: Family<QueueLabels, Counter>,
    drift_score: Family<DriftLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    drift_detected: Family<DriftLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            runs_started: Family::default(),
            runs_finished: Family::default(),
            steps_finished: Family::default(),
            step_duration: Family::new_with_constructor(step_duration_histogram),
            trigger_firings: Family::default(),
            trigger_skips: Family::default(),
            webhook_rejections: Family::default(),
            leases_lost: Family::default(),
            drift_score: Family::default(),
            drift_detected: Family::default(),
        }
    }
}

fn step_duration_histogram() -> Histogram {
    Histogram::new(STEP_DURATION_BUCKETS)
}

impl Metrics {
    /// A trigger started a run of `pipeline` (committed): counts the firing and the run.
    pub fn run_started(&self, kind: TriggerKind, pipeline: &str) {
        self.runs_started
            .get_or_create(&pipeline_labels(pipeline))
            .inc();
        self.trigger_firings
            .get_or_create(&TriggerLabels {
                kind: kind.as_str(),
                pipeline: pipeline.to_string(),
            })
            .inc();
    }

    /// A trigger of `pipeline` was skipped by its concurrency policy or an `after:` cooldown.
    pub fn trigger_skipped(&self, kind: TriggerKind, pipeline: &str) {
        self.trigger_skips
            .get_or_create(&TriggerLabels {
                kind: kind.as_str(),
                pipeline: pipeline.to_string(),
            })
            .inc();
    }

    /// A webhook delivery started nothing, for `reason`.
    pub fn webhook_rejected(&self, reason: WebhookRejection) {
        self.webhook_rejections
            .get_or_create(&RejectionLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The janitor took back a task of `queue` whose worker stopped renewing its lease.
    pub fn lease_lost(&self, queue: &str) {
        self.leases_lost
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .inc();
    }

    /// A run of `pipeline` reached its final state (committed).
    fn run_finished(&self, pipeline: &str, status: RunStatus) {
        self.runs_finished
            .get_or_create(&StateLabels {
                pipeline: pipeline.to_string(),
                state: status.as_str(),
            })
            .inc();
    }

    /// A step of a run of `pipeline` reached its final state (committed); `seconds` from its
    /// first start to its last end, when it ran at all.
    fn step_finished(&self, pipeline: &str, status: StepStatus, seconds: Option<f64>) {
        self.steps_finished
            .get_or_create(&StateLabels {
                pipeline: pipeline.to_string(),
                state: status.as_str(),
            })
            .inc();
        if let Some(seconds) = seconds {
            self.step_duration
                .get_or_create(&pipeline_labels(pipeline))
                .observe(seconds);
        }
    }

    /// A `uses: drift` step of `pipeline` reported (its metrics: `columns` with each column's
    /// `score` and `drifted`): the newest score and verdict per column.
    fn drift_reported(&self, pipeline: &str, metrics: &serde_json::Map<String, serde_json::Value>) {
        let Some(serde_json::Value::Object(columns)) = metrics.get("columns") else {
            return;
        };
        for (column, report) in columns.iter().take(MAX_DRIFT_COLUMNS) {
            let labels = DriftLabels {
                pipeline: pipeline.to_string(),
                column: column.clone(),
            };
            if let Some(score) = report.get("score").and_then(serde_json::Value::as_f64) {
                self.drift_score.get_or_create(&labels).set(score);
            }
            if let Some(drifted) = report.get("drifted").and_then(serde_json::Value::as_bool) {
                self.drift_detected
                    .get_or_create(&labels)
                    .set(i64::from(drifted));
            }
        }
    }

    /// Makes the run counters of every loaded pipeline exist (at 0) before their first run:
    /// Prometheus computes an increase only between two samples, so a series born at 1 would
    /// hide its first run from `increase()`.
    fn zero_runs_of(&self, pipelines: &[String]) {
        for pipeline in pipelines {
            self.runs_started
                .get_or_create_owned(&pipeline_labels(pipeline));
            for status in [
                RunStatus::Succeeded,
                RunStatus::Failed,
                RunStatus::Cancelled,
            ] {
                self.runs_finished.get_or_create_owned(&StateLabels {
                    pipeline: pipeline.clone(),
                    state: status.as_str(),
                });
            }
        }
    }

    /// The counters, then the gauges of `snapshot`, in Prometheus' text format.
    pub fn encode(&self, snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
        self.zero_runs_of(&snapshot.pipelines);
        let mut registry = Registry::with_prefix("sluice");
        self.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        prometheus_client::encoding::prometheus_text::encode(&mut text, &snapshot.registry())?;
        Ok(text)
    }

    /// Registers clones of the families (they share their values) in `registry`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "runs_started",
            "Runs created by a trigger, by pipeline (a run waiting for a concurrency slot counts when it is created)",
            self.runs_started.clone(),
        );
        registry.register(
            "runs_finished",
            "Runs that reached a final state (succeeded, failed, cancelled), by pipeline",
            self.runs_finished.clone(),
        );
        registry.register(
            "steps_finished",
            "Steps that reached a final state (succeeded, failed, skipped, cancelled), by pipeline",
            self.steps_finished.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time from a step's first start to its last end, retries included, of steps that ran, by pipeline",
            self.step_duration.clone(),
        );
        registry.register(
            "trigger_firings",
            "Runs started, by trigger kind (cron, webhook, watch, after, api, retry) and pipeline",
            self.trigger_firings.clone(),
        );
        registry.register(
            "trigger_skips",
            "Triggers that started nothing because of the pipeline's concurrency policy (overlap: skip) or an after: cooldown, by kind and pipeline",
            self.trigger_skips.clone(),
        );
        registry.register(
            "webhook_rejections",
            "Webhook deliveries that started nothing, by reason",
            self.webhook_rejections.clone(),
        );
        registry.register(
            "leases_lost",
            "Tasks taken back by the janitor because their worker stopped renewing the lease, by worker queue",
            self.leases_lost.clone(),
        );
        registry.register(
            "drift_score",
            "The newest drift score of each column a `uses: drift` step compared (its method's statistic: PSI, KS p-value, ...), by pipeline and column",
            self.drift_score.clone(),
        );
        registry.register(
            "drift_detected",
            "1 when the newest `uses: drift` report found the column drifted past its threshold, else 0, by pipeline and column",
            self.drift_detected.clone(),
        );
    }
}

fn pipeline_labels(pipeline: &str) -> PipelineLabels {
    PipelineLabels {
        pipeline: pipeline.to_string(),
    }
}

#[cfg(test)]
mod tests;
