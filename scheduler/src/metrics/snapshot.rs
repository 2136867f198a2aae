//! The gauges of one scrape: plain values the daemon read just now (see
//! `crate::daemon::Daemon::snapshot`), encoded from a registry made for this scrape alone.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use sluice_worker::queue::Backlog;

/// A gauge of a non-negative count.
type Count = Gauge<i64>;
/// A gauge of seconds.
type Seconds = Gauge<f64, AtomicU64>;

/// What the daemon's surroundings look like now. A part whose source did not answer (Redis
/// away, the store failing) is `None`: its gauges are left out of the scrape, and
/// `sluice_scrape_source_up{source}` says 0, so a dashboard shows a gap rather than a false 0.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Names of the loaded pipelines (the run counters of each are shown from 0).
    pub pipelines: Vec<String>,
    /// Runs the daemon drives, by pipeline: (running, waiting for a concurrency slot).
    pub active_runs: BTreeMap<String, (u64, u64)>,
    /// Tasks waiting for a worker, per worker queue.
    pub backlog: Option<Vec<Backlog>>,
    /// The workers known, summed.
    pub workers: Option<WorkerCounts>,
    /// Bytes the store takes on disk.
    pub store_bytes: Option<u64>,
    /// Each model's aliases and the version each points at: (model, alias, version).
    pub aliases: Option<Vec<(String, String, u64)>>,
}

/// The worker registry, summed over workers (per-worker series would grow with every worker
/// name ever started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Workers that heartbeated within the lease.
    pub alive: u64,
    /// Workers still listed whose last heartbeat is older than the lease.
    pub gone: u64,
    /// Task slots of the alive workers.
    pub slots: u64,
    /// Slots of the alive workers that run nothing now.
    pub slots_free: u64,
    /// GPUs of the alive workers.
    pub gpus: u64,
    /// GPUs of the alive workers that no step holds (a worker that does not say counts all
    /// of its GPUs free).
    pub gpus_free: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActiveLabels {
    pipeline: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerStateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AliasLabels {
    model: String,
    alias: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

impl Snapshot {
    /// A registry holding this snapshot's gauges, for one encoding.
    pub(super) fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("sluice");
        let active = Family::<ActiveLabels, Count>::default();
        for (pipeline, (running, waiting)) in &self.active_runs {
            for (state, n) in [("running", running), ("waiting", waiting)] {
                active
                    .get_or_create(&ActiveLabels {
                        pipeline: pipeline.clone(),
                        state,
                    })
                    .set(count(*n));
            }
        }
        registry.register(
            "runs_active",
            "Runs the daemon drives now, by pipeline and state (running, or waiting for a concurrency slot)",
            active,
        );
        let up = Family::<SourceLabels, Count>::default();
        let source_up = |source, answered: bool| {
            up.get_or_create(&SourceLabels { source })
                .set(i64::from(answered));
        };
        source_up("queue", self.backlog.is_some());
        source_up("workers", self.workers.is_some());
        source_up("store", self.store_bytes.is_some());
        source_up("models", self.aliases.is_some());
        registry.register(
            "scrape_source_up",
            "Whether this scrape could read each source of gauges (queue, workers, store, models); a 0 leaves that source's gauges out",
            up,
        );
        if let Some(backlog) = &self.backlog {
            register_backlog(&mut registry, backlog);
        }
        if let Some(workers) = &self.workers {
            register_workers(&mut registry, workers);
        }
        if let Some(bytes) = self.store_bytes {
            let size = Count::default();
            size.set(count(bytes));
            registry.register_with_unit(
                "store_size",
                "Space the store takes on disk",
                Unit::Bytes,
                size,
            );
        }
        if let Some(aliases) = &self.aliases {
            let versions = Family::<AliasLabels, Count>::default();
            for (model, alias, version) in aliases {
                versions
                    .get_or_create(&AliasLabels {
                        model: model.clone(),
                        alias: alias.clone(),
                    })
                    .set(count(*version));
            }
            registry.register(
                "model_alias_version",
                "The model version each alias of the registry points at",
                versions,
            );
        }
        registry
    }
}

fn register_backlog(registry: &mut Registry, backlog: &[Backlog]) {
    let depth = Family::<QueueLabels, Count>::default();
    let age = Family::<QueueLabels, Seconds>::default();
    for queue in backlog {
        let labels = QueueLabels {
            queue: queue.queue.clone(),
        };
        depth.get_or_create(&labels).set(count(queue.waiting));
        age.get_or_create(&labels)
            .set(queue.oldest_wait_ms as f64 / 1000.0);
    }
    registry.register(
        "queue_depth",
        "Tasks queued that no worker has taken yet, by worker queue",
        depth,
    );
    registry.register_with_unit(
        "queue_oldest_age",
        "How long the oldest task no worker has taken yet has waited (0 when none waits), by worker queue",
        Unit::Seconds,
        age,
    );
}

fn register_workers(registry: &mut Registry, workers: &WorkerCounts) {
    let states = Family::<WorkerStateLabels, Count>::default();
    for (state, n) in [("alive", workers.alive), ("gone", workers.gone)] {
        states
            .get_or_create(&WorkerStateLabels { state })
            .set(count(n));
    }
    registry.register(
        "workers",
        "Workers known, by state: alive (heartbeat within the lease) or gone (silent longer; their tasks are taken back)",
        states,
    );
    let gauges = [
        (
            "worker_slots",
            "Task slots of the alive workers",
            workers.slots,
        ),
        (
            "worker_slots_free",
            "Task slots of the alive workers that run nothing now",
            workers.slots_free,
        ),
        ("worker_gpus", "GPUs of the alive workers", workers.gpus),
        (
            "worker_gpus_free",
            "GPUs of the alive workers that no step holds now",
            workers.gpus_free,
        ),
    ];
    for (name, help, value) in gauges {
        let gauge = Count::default();
        gauge.set(count(value));
        registry.register(name, help, gauge);
    }
}

/// A count as a gauge value (counts here never come near `i64::MAX`).
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
