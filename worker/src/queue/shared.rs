//! What a queue shared with workers on other machines offers the scheduler beyond
//! [`TaskQueue`](super::TaskQueue): the worker registry, step logs sent through it, and the
//! upkeep its janitor does.
//!
//! They are small capability traits, not methods of the Redis type, so the scheduler reaches them
//! without naming its transport (it is named once, where it is built) and a test can stand in
//! for any one of them. The types they answer with live here too, for the same reason.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::QueueError;
use crate::task::{TaskKey, TaskSpec};

/// The cursor that reads a step's log from its start ([`LogReader::read_log`]'s `after`).
pub const LOG_START: &str = "0-0";

/// What a worker advertises about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// Its name.
    pub name: String,
    /// Queues it takes tasks from.
    pub queues: Vec<String>,
    /// Most tasks at once.
    pub slots: usize,
    /// GPU device ids it owns.
    pub gpus: Vec<String>,
    /// How many of them no step holds now; `None` from a worker that does not say (an older
    /// version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_free: Option<usize>,
    /// Tasks it runs now.
    pub running: usize,
    /// Whether it runs image steps (its Docker engine answered).
    pub docker: bool,
    /// Last heartbeat, ms since the epoch.
    pub heartbeat_ms: u64,
}

/// A task whose lease ran out: a worker took it and has not been heard of since.
#[derive(Debug, Clone, PartialEq)]
pub struct Reclaimed {
    /// The task as it was dispatched.
    pub task: TaskSpec,
    /// How many times it was delivered.
    pub deliveries: usize,
}

/// What a renewal of the scheduler lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Still this process's.
    Held,
    /// Another scheduler holds it: this one must stop.
    TakenBy(String),
}

/// A read of one output stream of an attempt's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunks {
    /// The chunks written after the cursor read from, in order.
    pub chunks: Vec<Vec<u8>>,
    /// The cursor to read on from (the one read from when nothing came).
    pub next: String,
    /// Whether the worker marked the output complete: nothing more will come.
    pub complete: bool,
}

/// The workers that heartbeat through the queue, for the scheduler's worker list, `/metrics`
/// and readiness. In-process workers need none: the scheduler knows them already.
#[async_trait]
pub trait WorkerRegistry: Send + Sync {
    /// Every worker that ever sent a heartbeat, with its last one, sorted by name.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError>;

    /// Whether the queue answers: a scheduler whose queue does not cannot take work.
    async fn ping(&self) -> Result<(), QueueError>;
}

/// Step logs that workers on other machines sent through the queue, read by the scheduler's log
/// API when the attempt's files are not on its disk.
#[async_trait]
pub trait LogReader: Send + Sync {
    /// Chunks of one output stream (`stdout`/`stderr`) of an attempt after cursor `after`
    /// ([`LOG_START`] for the start), waiting up to `block` for more when there are none.
    async fn read_log(
        &self,
        key: &TaskKey,
        stream: &str,
        after: &str,
        block: Option<Duration>,
    ) -> Result<LogChunks, QueueError>;
}

/// The scheduler janitor's upkeep of a queue that workers and schedulers on other machines
/// share: noticing lost data, keeping one scheduler per queue, and taking back what silent
/// workers held.
#[async_trait]
pub trait Upkeep: Send + Sync {
    /// Whether the queue lost its data since the last call (restarted without persistence,
    /// flushed); the first call answers `true` too, since a scheduler that starts cannot know
    /// what an empty queue lost. The caller queues again from its store what must run.
    async fn lost_data(&self) -> Result<bool, QueueError>;

    /// Renews the scheduler lease for `holder` for `ttl`; a lease the queue lost is taken again.
    async fn renew_scheduler_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseState, QueueError>;

    /// Removes from the registry the workers silent for longer than `silent` (killed without
    /// unregistering); returns their names.
    async fn forget_silent_workers(&self, silent: Duration) -> Result<Vec<String>, QueueError>;

    /// Every worker queue that holds tasks or held them.
    async fn task_queues(&self) -> Result<Vec<String>, QueueError>;

    /// Takes back the tasks of `queue` whose worker has not renewed their lease for `min_idle`;
    /// each comes back to the scheduler as a `lost` result, applied like any other.
    async fn reclaim_idle(
        &self,
        queue: &str,
        min_idle: Duration,
    ) -> Result<Vec<Reclaimed>, QueueError>;

    /// Forgets the consumers of `queue` (one per worker start) that hold nothing and were idle
    /// for `idle`, so those of stopped processes do not pile up; returns how many went.
    async fn forget_idle_consumers(&self, queue: &str, idle: Duration)
        -> Result<usize, QueueError>;
}
