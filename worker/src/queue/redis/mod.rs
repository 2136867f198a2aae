//! The task queue over Redis Streams, for a scheduler and workers on different machines.
//!
//! Redis is transport, not the truth: the scheduler commits to its store before it acknowledges
//! an event, and re-derives what must run from the store if Redis loses everything.
//!
//! Keys (all under a prefix, `sluice:` by default, so deployments can share one Redis):
//! - `{prefix}tasks:{queue}`: a stream per worker queue, consumer group `workers`;
//! - `{prefix}events`: worker events, consumer group `scheduler`;
//! - `{prefix}dead`: tasks delivered too many times (the dead-letter stream);
//! - `{prefix}cancel`: pub/sub channel of run ids to cancel, and `{prefix}cancelled`, a set of
//!   them for workers that were not listening at the time;
//! - `{prefix}workers`: hash of worker name to its advertised capacity and last heartbeat.
//!
//! One file per job: `tasks` (add, take, accept, claim, settle), `events` (worker events and
//! their acknowledgements), `registry` (heartbeats, the worker list, reclaim of silent workers'
//! tasks), `backlog` (what waits per queue, for metrics), `logs`, `cancel`, `lease` (one
//! scheduler per prefix) and `reader` (the background reads every consumer group uses). This
//! file holds the connection, the key names and the [`TaskQueue`] implementation that routes to
//! them; `shared` routes the scheduler's capability traits ([`super::shared`]) to them.

mod backlog;
mod cancel;
mod events;
mod lease;
mod logs;
mod reader;
mod registry;
mod shared;
mod tasks;

pub use super::shared::{LeaseState, Reclaimed, WorkerInfo};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamId, StreamInfoConsumersReply, StreamPendingCountReply, StreamReadReply,
};
use redis::AsyncCommands;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Backlog, EventBatch, LogChunks, QueueError, TaskQueue};
use crate::backoff::Backoff;
use crate::task::{now_ms, Outcome, TaskKey, TaskResult, TaskSpec, WorkerEvent};

/// Consumer group of workers on every task stream.
const WORKERS_GROUP: &str = "workers";
/// Consumer group of the scheduler on the events stream.
const SCHEDULER_GROUP: &str = "scheduler";
/// Chunks kept per attempt's log stream (about; Redis trims whole nodes): with chunks of at
/// most 64 KiB, a loud step's stream keeps its latest output, not all of it.
const LOG_MAX_CHUNKS: usize = 2000;
/// How long a log stream stays in Redis after its last chunk.
const LOG_TTL_SECS: u64 = 24 * 3600;
/// How long a claim on an attempt is remembered: longer than any step runs.
const CLAIM_TTL_SECS: u64 = 7 * 24 * 3600;
/// How long one blocking read waits before it checks for shutdown.
const BLOCK_MS: usize = 1000;

/// How a queue connects and names things.
#[derive(Debug, Clone)]
pub struct RedisQueueConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// PEM file of the certificate authority a `rediss://` server's certificate is checked
    /// against, when it is not one the system trusts.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Prefix of every key.
    pub prefix: String,
    /// This process's consumer name: the worker's name with a per-start instance id (so only
    /// the process that took a task renews it), or the scheduler's.
    pub consumer: String,
    /// Queues a worker takes tasks from.
    pub queues: Vec<String>,
}

/// Task entries, as (stream, id), that this process received and has not settled.
type HeldEntries = Arc<Mutex<std::collections::HashSet<(String, String)>>>;

/// The Redis Streams queue.
pub struct RedisQueue {
    config: RedisQueueConfig,
    /// For commands that answer at once.
    commands: ConnectionManager,
    /// Opens the background readers' own connections.
    client: redis::Client,
    /// Stream entry of each task this worker took, for its acknowledgement.
    taken: Mutex<HashMap<TaskKey, (String, String)>>,
    /// Task entries (stream, id) this process received and has not settled: read ahead, being
    /// accepted, or running. Only these are renewed by heartbeats: an entry Redis delivered to
    /// this consumer that never arrived (the reply was lost) is picked up by a catch-up read,
    /// never kept alive unseen.
    held: HeldEntries,
    /// Task streams whose workers' group this process made sure of (forgotten when Redis lost
    /// its data).
    known_groups: Mutex<std::collections::HashSet<String>>,
    /// Event entries handed to the scheduler and not yet acknowledged, by batch.
    unacked_events: Mutex<BTreeMap<u64, Vec<String>>>,
    next_batch: AtomicU64,
    /// Tasks read in the background; started by the first `take`.
    task_entries: tokio::sync::Mutex<Option<mpsc::Receiver<(String, StreamId)>>>,
    /// Worker events read in the background; started by the first `next_events`.
    event_entries: tokio::sync::Mutex<Option<mpsc::Receiver<(String, StreamId)>>>,
    cancels: broadcast::Sender<String>,
    closed: CancellationToken,
}

impl RedisQueue {
    /// Connects, retrying with backoff until Redis answers or `give_up` fires, and creates the
    /// consumer groups this process needs.
    pub async fn connect(
        config: RedisQueueConfig,
        give_up: CancellationToken,
    ) -> Result<RedisQueue, QueueError> {
        let client = match &config.ca_cert {
            None => redis::Client::open(config.url.as_str()).map_err(redis_error)?,
            Some(file) => {
                let pem = std::fs::read(file).map_err(|err| {
                    QueueError::Refused(format!(
                        "cannot read the Redis CA {}: {err}",
                        file.display()
                    ))
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(config.url.as_str(), certs).map_err(redis_error)?
            }
        };
        let shown = redacted(&config.url);
        let mut backoff = Backoff::new(Duration::from_millis(100));
        let commands = loop {
            let quick =
                ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
            match ConnectionManager::new_with_config(client.clone(), quick).await {
                Ok(connections) => break connections,
                Err(err) => {
                    tracing::warn!(url = %shown, error = %err, retry_in = ?backoff.peek(), "Redis is not answering; retrying.");
                    if !backoff.sleep_unless(&give_up).await {
                        return Err(QueueError::Closed);
                    }
                }
            }
        };
        let (cancels, _) = broadcast::channel(1024);
        let queue = RedisQueue {
            config,
            commands,
            client: client.clone(),
            taken: Mutex::new(HashMap::new()),
            held: Arc::new(Mutex::new(std::collections::HashSet::new())),
            known_groups: Mutex::new(std::collections::HashSet::new()),
            unacked_events: Mutex::new(BTreeMap::new()),
            next_batch: AtomicU64::new(1),
            task_entries: tokio::sync::Mutex::new(None),
            event_entries: tokio::sync::Mutex::new(None),
            cancels,
            closed: CancellationToken::new(),
        };
        queue.forward_cancellations(client);
        Ok(queue)
    }

    /// `{prefix}tasks:{queue}`.
    pub fn task_stream(&self, queue: &str) -> String {
        format!("{}tasks:{queue}", self.config.prefix)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.prefix)
    }

    /// The stream entries of the tasks this worker holds. A panic elsewhere while the lock was
    /// held leaves the map as it was (every change to it is one call), so a poisoned lock is
    /// taken as it is rather than failing every later acknowledgement.
    fn taken_tasks(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, (String, String)>> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), QueueError> {
        create_group(&mut self.commands.clone(), stream, group).await
    }

    /// Waits `backoff`'s pause after a Redis failure, unless the queue closes first.
    async fn back_off(&self, err: &QueueError, backoff: &mut Backoff) -> Result<(), QueueError> {
        tracing::warn!(error = %err, retry_in = ?backoff.peek(), "Redis failed; retrying.");
        match backoff.sleep_unless(&self.closed).await {
            true => Ok(()),
            false => Err(QueueError::Closed),
        }
    }
}

#[async_trait]
impl TaskQueue for RedisQueue {
    async fn dispatch(&self, task: TaskSpec) -> Result<(), QueueError> {
        self.add_tasks(std::slice::from_ref(&task)).await
    }

    async fn dispatch_batch(&self, tasks: &[TaskSpec]) -> Result<(), QueueError> {
        self.add_tasks(tasks).await
    }

    async fn take(&self, queues: &[String]) -> Result<TaskSpec, QueueError> {
        self.take_task(queues).await
    }

    async fn report(&self, event: WorkerEvent) -> Result<(), QueueError> {
        self.add_event(event).await
    }

    async fn next_events(&self, max: usize) -> Result<Vec<WorkerEvent>, QueueError> {
        Ok(self.read_event_batch(max).await?.events)
    }

    async fn next_event_batch(&self, max: usize) -> Result<EventBatch, QueueError> {
        self.read_event_batch(max).await
    }

    async fn ack_events(&self) -> Result<(), QueueError> {
        self.ack_all_events().await
    }

    async fn ack_event_batches(&self, ids: &[u64]) -> Result<(), QueueError> {
        self.ack_events_of_batches(ids).await
    }

    fn hand_back(&self, task: &TaskSpec) {
        self.hand_back_task(task)
    }

    async fn done(&self, task: &TaskSpec) -> Result<(), QueueError> {
        self.settle_task(task).await
    }

    async fn finish(
        &self,
        task: &TaskSpec,
        events: Vec<WorkerEvent>,
        log_ends: &[&str],
    ) -> Result<(), QueueError> {
        self.finish_task(task, &events, log_ends).await
    }

    async fn dead_letter(&self, task: &TaskSpec, reason: &str) -> Result<(), QueueError> {
        self.bury_task(task, reason).await
    }

    async fn cancel_run(&self, run_id: &str) -> Result<(), QueueError> {
        self.publish_cancel(run_id).await
    }

    async fn backlog(&self) -> Result<Vec<Backlog>, QueueError> {
        self.task_backlog().await
    }

    fn streams_logs(&self) -> bool {
        true
    }

    async fn publish_log(
        &self,
        key: &TaskKey,
        stream: &str,
        chunk: Option<&[u8]>,
    ) -> Result<(), QueueError> {
        self.append_log(key, stream, chunk).await
    }

    async fn end_logs(&self, key: &TaskKey, streams: &[&str]) -> Result<(), QueueError> {
        self.end_log_streams(key, streams).await
    }

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    fn close(&self) {
        self.closed.cancel();
    }
}

impl RedisQueue {
    /// Scheduler side: whether Redis lost its data since the last call (restarted without
    /// persistence, flushed). A marker key is set on the first call and checked on each later
    /// one; a missing marker means every task and event Redis held may be gone, and the caller
    /// re-queues from its store what must run. The first call answers `true` too: a scheduler
    /// that starts cannot know what an empty Redis lost.
    pub async fn lost_data(&self) -> Result<bool, QueueError> {
        let mut con = self.commands.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key("epoch"))
            .arg(now_ms())
            .arg("NX")
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        if set.is_some() {
            self.known_groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        Ok(set.is_some())
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_error)
    }

    /// Every worker queue that has a stream, for the janitor.
    pub async fn task_queues(&self) -> Result<Vec<String>, QueueError> {
        let mut con = self.commands.clone();
        let prefix = self.task_stream("");
        let mut iter: redis::AsyncIter<String> = con
            .scan_match(format!("{prefix}*"))
            .await
            .map_err(redis_error)?;
        let mut queues = Vec::new();
        while let Some(key) = iter.next().await {
            let key = key.map_err(redis_error)?;
            if let Some(queue) = key.strip_prefix(&prefix) {
                queues.push(queue.to_string());
            }
        }
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    /// Milliseconds since the epoch, as the heartbeats use.
    pub fn now_ms() -> u64 {
        now_ms()
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    stream: &str,
    entry: &StreamId,
    field: &str,
) -> Result<T, QueueError> {
    let undecodable = |reason: String| QueueError::Undecodable {
        stream: stream.to_string(),
        id: entry.id.clone(),
        reason,
    };
    let value = entry
        .map
        .get(field)
        .ok_or_else(|| undecodable(format!("no `{field}` field")))?;
    let text: String =
        redis::from_redis_value(value.clone()).map_err(|e| undecodable(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| undecodable(e.to_string()))
}

/// Adds to `pipe` what settles stream entries for good: acknowledged in `group` (no longer
/// pending) and deleted from `stream` (which does not grow with every task ever run).
fn ack_and_delete<'p>(
    pipe: &'p mut redis::Pipeline,
    stream: &str,
    group: &str,
    ids: impl redis::ToRedisArgs + Copy,
) -> &'p mut redis::Pipeline {
    pipe.cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .ignore()
        .cmd("XDEL")
        .arg(stream)
        .arg(ids)
        .ignore()
}

/// The URL with its password replaced, for logs.
pub fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            let credentials = &rest[..at - scheme.len() - 3];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn redis_error(err: redis::RedisError) -> QueueError {
    QueueError::Redis(err)
}

/// Creates a stream's consumer group (and the stream) unless it exists: after Redis lost its
/// data, the next read or write brings them back.
async fn create_group(
    con: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> Result<(), QueueError> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other.map_err(redis_error),
    }
}

/// One XREADGROUP: catch-up streams from where they are, the rest blocking for new entries.
async fn read_once(
    con: &mut ConnectionManager,
    commands: &mut ConnectionManager,
    streams: &[String],
    group: &str,
    consumer: &str,
    pending_from: &[Option<String>],
    count: usize,
) -> Result<Option<StreamReadReply>, QueueError> {
    match read_group(con, streams, group, consumer, pending_from, count).await {
        // The stream or its group does not exist yet (nothing queued so far, or Redis lost its
        // data): create them and read again. Checking first on every read would cost a round
        // trip per read.
        Err(err) if err.code() == Some("NOGROUP") => {
            for stream in streams {
                create_group(commands, stream, group).await?;
            }
            read_group(con, streams, group, consumer, pending_from, count)
                .await
                .map_err(redis_error)
        }
        other => other.map_err(redis_error),
    }
}

async fn read_group(
    con: &mut ConnectionManager,
    streams: &[String],
    group: &str,
    consumer: &str,
    pending_from: &[Option<String>],
    count: usize,
) -> redis::RedisResult<Option<StreamReadReply>> {
    let catching_up = pending_from.iter().any(Option::is_some);
    let mut command = redis::cmd("XREADGROUP");
    command
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count.clamp(1, 256));
    if !catching_up {
        command.arg("BLOCK").arg(BLOCK_MS);
    }
    command.arg("STREAMS");
    for stream in streams {
        command.arg(stream);
    }
    for from in pending_from {
        // Catching up re-reads this consumer's own pending entries after the last one seen.
        command.arg(from.as_deref().unwrap_or(">"));
    }
    command.query_async(con).await
}
