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

mod lease;

pub use lease::LeaseState;

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
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{EventBatch, QueueError, TaskQueue};
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

/// What a worker advertises about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its name.
    pub name: String,
    /// Queues it takes tasks from.
    pub queues: Vec<String>,
    /// Most tasks at once.
    pub slots: usize,
    /// GPU device ids it owns.
    pub gpus: Vec<String>,
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
    /// How many times Redis delivered it.
    pub deliveries: usize,
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
                    QueueError::Redis(format!(
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

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), QueueError> {
        create_group(&mut self.commands.clone(), stream, group).await
    }

    /// Subscribes to the cancel channel in the background and passes run ids on.
    fn forward_cancellations(&self, client: redis::Client) {
        let sender = self.cancels.clone();
        let channel = self.key("cancel");
        let cancelled = self.key("cancelled");
        let closed = self.closed.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100));
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                let mut pubsub = tokio::select! {
                    result = subscribed => match result {
                        Ok(pubsub) => pubsub,
                        Err(_) => {
                            backoff.sleep().await;
                            continue;
                        }
                    },
                    _ = closed.cancelled() => return,
                };
                backoff.reset();
                // Cancels sent while this worker was not listening are in the set.
                if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                    let missed: Vec<String> = con.smembers(&cancelled).await.unwrap_or_default();
                    for run_id in missed {
                        let _ = sender.send(run_id);
                    }
                }
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                if let Ok(run_id) = message.get_payload::<String>() {
                                    let _ = sender.send(run_id);
                                }
                            }
                            None => break, // Connection lost: subscribe again.
                        },
                        _ = closed.cancelled() => return,
                    }
                }
            }
        });
    }

    /// Advertises this worker: capacity, GPUs, what it runs now. Also renews the leases of the
    /// tasks it holds, so the janitor does not take them back while they run. Returns the tasks
    /// whose lease was lost anyway (reclaimed while this worker was frozen, or gone with a Redis
    /// that restarted empty): their results will be refused, so the caller may stop them.
    pub async fn heartbeat(&self, info: &WorkerInfo) -> Result<Vec<TaskKey>, QueueError> {
        let mut con = self.commands.clone();
        let json = serde_json::to_string(info).unwrap_or_default();
        let _: () = con
            .hset(self.key("workers"), &info.name, json)
            .await
            .map_err(redis_error)?;
        // Renew every entry this worker holds on its queues, including one read ahead and not
        // yet running (a busy worker's next task must not look abandoned), and nothing else:
        // not what an earlier process of the same name left (it is another consumer), not an
        // entry delivered to this one whose reply never arrived.
        for queue in &self.config.queues {
            let stream = self.task_stream(queue);
            let pending: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(WORKERS_GROUP)
                .arg("-")
                .arg("+")
                .arg(1000)
                .arg(&self.config.consumer)
                .query_async(&mut con)
                .await;
            let ids: Vec<String> = match pending {
                Ok(reply) => {
                    let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                    reply
                        .ids
                        .into_iter()
                        .map(|p| p.id)
                        .filter(|id| held.contains(&(stream.clone(), id.clone())))
                        .collect()
                }
                Err(err) if err.code() == Some("NOGROUP") => Vec::new(),
                Err(err) => return Err(redis_error(err)),
            };
            if !ids.is_empty() {
                redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(WORKERS_GROUP)
                    .arg(&self.config.consumer)
                    .arg(0)
                    .arg(&ids)
                    .arg("JUSTID")
                    .query_async::<Vec<String>>(&mut con)
                    .await
                    .map_err(redis_error)?;
            }
        }
        let held: Vec<(TaskKey, (String, String))> = self
            .taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut lost = Vec::new();
        let mut first_error = None;
        for (key, (stream, id)) in held {
            // XCLAIM to ourselves with no minimum idle time resets the entry's idle clock; an
            // empty answer means the entry is no longer pending for the group at all.
            let renewed: redis::RedisResult<Vec<String>> = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(WORKERS_GROUP)
                .arg(&self.config.consumer)
                .arg(0)
                .arg(&id)
                .arg("JUSTID")
                .query_async(&mut con)
                .await;
            let gone = match renewed {
                Ok(ids) => ids.is_empty(),
                Err(err) if err.code() == Some("NOGROUP") => true,
                Err(err) => {
                    first_error.get_or_insert(redis_error(err));
                    false
                }
            };
            // Gone because it finished meanwhile (`done` took it out of `taken`) is not lost.
            let still_held = gone
                && self
                    .taken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key)
                    .is_some();
            if still_held {
                tracing::warn!(task = %key, "Lost the lease of a running task; its result will be refused.");
                lost.push(key);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(lost),
        }
    }

    /// Scheduler side: removes from `queue`'s group the consumers that hold nothing and were
    /// idle for `idle`: every start of a worker is a consumer of its own, so those of stopped
    /// processes would pile up. Safe for a consumer that is only frozen: its next read makes it
    /// again. Returns how many went.
    pub async fn forget_idle_consumers(
        &self,
        queue: &str,
        idle: Duration,
    ) -> Result<usize, QueueError> {
        let stream = self.task_stream(queue);
        let mut con = self.commands.clone();
        let reply: redis::RedisResult<StreamInfoConsumersReply> =
            con.xinfo_consumers(&stream, WORKERS_GROUP).await;
        let consumers = match reply {
            Ok(reply) => reply.consumers,
            Err(err) if err.code() == Some("NOGROUP") => return Ok(0),
            Err(err) => return Err(redis_error(err)),
        };
        let mut forgotten = 0;
        for consumer in consumers {
            if consumer.pending == 0 && consumer.idle as u128 > idle.as_millis() {
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&stream)
                    .arg(WORKERS_GROUP)
                    .arg(&consumer.name)
                    .query_async(&mut con)
                    .await
                    .map_err(redis_error)?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// The tasks this worker took and has not finished.
    pub fn held_tasks(&self) -> Vec<TaskKey> {
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Removes a worker that stops cleanly from the registry.
    pub async fn unregister(&self, name: &str) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        con.hdel(self.key("workers"), name)
            .await
            .map_err(redis_error)
    }

    /// Scheduler side: removes from the registry the workers whose last heartbeat is older
    /// than `silent` (killed without unregistering); returns their names.
    pub async fn forget_silent_workers(&self, silent: Duration) -> Result<Vec<String>, QueueError> {
        let now = Self::now_ms();
        let silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX);
        let gone: Vec<String> = self
            .workers()
            .await?
            .into_iter()
            .filter(|w| now.saturating_sub(w.heartbeat_ms) > silent_ms)
            .map(|w| w.name)
            .collect();
        if !gone.is_empty() {
            let mut con = self.commands.clone();
            let _: () = con
                .hdel(self.key("workers"), &gone)
                .await
                .map_err(redis_error)?;
        }
        Ok(gone)
    }

    /// Every worker that ever sent a heartbeat, with its last one.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        let mut con = self.commands.clone();
        let all: HashMap<String, String> = con
            .hgetall(self.key("workers"))
            .await
            .map_err(redis_error)?;
        let mut workers: Vec<WorkerInfo> = all
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }

    /// Scheduler side: takes back tasks of `queue` that a worker took and has not renewed for
    /// `min_idle` (it died or froze). Each is replaced, in one transaction, by a `Finished`
    /// event with outcome `lost` on the events stream: the scheduler applies it like any result
    /// (fencing, retry budget, dead letter) and acknowledges it only once committed, so a
    /// scheduler killed in between reads it again. A Redis failure midway returns what was
    /// taken back so far.
    pub async fn reclaim_idle(
        &self,
        queue: &str,
        min_idle: Duration,
    ) -> Result<Vec<Reclaimed>, QueueError> {
        let stream = self.task_stream(queue);
        self.ensure_group(&stream, WORKERS_GROUP).await?;
        let mut con = self.commands.clone();
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(WORKERS_GROUP)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(100)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        let mut reclaimed = Vec::new();
        for entry in pending.ids {
            // The same minimum idle time makes a race with a heartbeat safe: a lease renewed a
            // moment ago is not claimed.
            let claimed = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(WORKERS_GROUP)
                .arg(&self.config.consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&entry.id)
                .query_async::<redis::streams::StreamClaimReply>(&mut con)
                .await;
            let claimed = match claimed {
                Ok(reply) => reply.ids.into_iter().next(),
                Err(err) => {
                    tracing::warn!(error = %err, "Reclaiming stopped midway; the rest waits for the next round.");
                    break;
                }
            };
            let Some(claimed) = claimed else { continue };
            match decode::<TaskSpec>(&stream, &claimed, "task") {
                Ok(task) => {
                    if let Err(err) = self.report_lost(&stream, &entry.id, &task).await {
                        tracing::warn!(error = %err, "Reclaiming stopped midway; the rest waits for the next round.");
                        break;
                    }
                    reclaimed.push(Reclaimed {
                        task,
                        deliveries: entry.times_delivered,
                    });
                }
                Err(err) => {
                    tracing::error!(error = %err, "Moved an undecodable task to the dead-letter stream.");
                    self.bury(&stream, &entry.id, "undecodable").await;
                }
            }
        }
        Ok(reclaimed)
    }

    /// Replaces a task entry by a `lost` result on the events stream, atomically.
    async fn report_lost(&self, stream: &str, id: &str, task: &TaskSpec) -> Result<(), QueueError> {
        let mut result = TaskResult::error(
            task.key.clone(),
            "the worker running it stopped heartbeating; its lease expired",
        );
        result.outcome = Outcome::Lost;
        let event = serde_json::to_string(&WorkerEvent::Finished(result)).unwrap_or_default();
        let mut con = self.commands.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(self.key("events"))
            .arg("*")
            .arg("event")
            .arg(event)
            .ignore();
        ack_and_delete(&mut pipe, stream, WORKERS_GROUP, id)
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_error)
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
        self.dispatch_batch(std::slice::from_ref(&task)).await
    }

    async fn dispatch_batch(&self, tasks: &[TaskSpec]) -> Result<(), QueueError> {
        // The workers' group is created with a stream's first task, so the group sees every
        // task (a group created later would start after the entries already there).
        for queue in tasks.iter().map(|t| t.queue.as_str()) {
            let stream = self.task_stream(queue);
            let known = self
                .known_groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&stream);
            if !known {
                self.ensure_group(&stream, WORKERS_GROUP).await?;
                self.known_groups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(stream);
            }
        }
        let mut con = self.commands.clone();
        // One round trip for many tasks: a wide fan-out queues thousands at once.
        for chunk in tasks.chunks(512) {
            let mut pipe = redis::pipe();
            for task in chunk {
                let json = serde_json::to_string(task).unwrap_or_default();
                pipe.cmd("XADD")
                    .arg(self.task_stream(&task.queue))
                    .arg("*")
                    .arg("task")
                    .arg(json)
                    .ignore();
            }
            pipe.query_async::<()>(&mut con)
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    async fn take(&self, queues: &[String]) -> Result<TaskSpec, QueueError> {
        let mut entries = self.task_entries.lock().await;
        if entries.is_none() {
            let streams: Vec<String> = queues.iter().map(|q| self.task_stream(q)).collect();
            // One task read ahead at most: the rest stay in Redis for workers with free slots.
            *entries =
                Some(self.spawn_reader(streams, WORKERS_GROUP, false, 1, Some(self.held.clone())));
        }
        let Some(receiver) = entries.as_mut() else {
            return Err(QueueError::Closed);
        };
        loop {
            let (stream, entry) = tokio::select! {
                received = receiver.recv() => received.ok_or(QueueError::Closed)?,
                _ = self.closed.cancelled() => return Err(QueueError::Closed),
            };
            // An entry received is this worker's to settle: a Redis error while accepting it
            // is retried, so it is neither dropped nor left pending unseen.
            let mut backoff = Backoff::new(Duration::from_millis(100));
            loop {
                match self.accept(&stream, &entry).await {
                    Ok(Some(task)) => return Ok(task),
                    Ok(None) => {
                        self.release(&stream, &entry.id);
                        break;
                    }
                    Err(QueueError::Closed) => return Err(QueueError::Closed),
                    Err(err) => self.back_off(&err, &mut backoff).await?,
                }
            }
        }
    }

    async fn report(&self, event: WorkerEvent) -> Result<(), QueueError> {
        let json = serde_json::to_string(&event).unwrap_or_default();
        let mut backoff = Backoff::new(Duration::from_millis(100));
        loop {
            let mut con = self.commands.clone();
            let added: redis::RedisResult<String> = con
                .xadd(self.key("events"), "*", &[("event", json.as_str())])
                .await;
            match added {
                Ok(_) => return Ok(()),
                Err(err) => self.back_off(&redis_error(err), &mut backoff).await?,
            }
        }
    }

    async fn next_events(&self, max: usize) -> Result<Vec<WorkerEvent>, QueueError> {
        Ok(self.next_event_batch(max).await?.events)
    }

    async fn next_event_batch(&self, max: usize) -> Result<EventBatch, QueueError> {
        let mut entries = self.event_entries.lock().await;
        if entries.is_none() {
            // First the events this scheduler took before a restart and never acknowledged.
            *entries = Some(self.spawn_reader(
                vec![self.key("events")],
                SCHEDULER_GROUP,
                true,
                4096,
                None,
            ));
        }
        let Some(receiver) = entries.as_mut() else {
            return Err(QueueError::Closed);
        };
        loop {
            // Receiving from the channel is cancel-safe: a caller that stops waiting loses nothing.
            let first = tokio::select! {
                received = receiver.recv() => received.ok_or(QueueError::Closed)?,
                _ = self.closed.cancelled() => return Err(QueueError::Closed),
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match receiver.try_recv() {
                    Ok(entry) => batch.push(entry),
                    Err(_) => break,
                }
            }
            let id = self.next_batch.fetch_add(1, Ordering::Relaxed);
            let mut events = Vec::with_capacity(batch.len());
            let mut ids = Vec::with_capacity(batch.len());
            for (stream, entry) in batch {
                ids.push(entry.id.clone());
                match decode::<WorkerEvent>(&stream, &entry, "event") {
                    Ok(event) => events.push(event),
                    Err(err) => {
                        tracing::error!(error = %err, "Skipped an undecodable worker event.")
                    }
                }
            }
            if events.is_empty() {
                // Nothing the scheduler could apply: nothing to wait for before forgetting it.
                self.ack_event_ids(id, ids).await?;
                continue;
            }
            self.unacked_events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, ids);
            return Ok(EventBatch { id, events });
        }
    }

    async fn ack_events(&self) -> Result<(), QueueError> {
        let batches = std::mem::take(
            &mut *self
                .unacked_events
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (id, ids) in batches {
            self.ack_event_ids(id, ids).await?;
        }
        Ok(())
    }

    async fn ack_event_batch(&self, id: u64) -> Result<(), QueueError> {
        let ids = self
            .unacked_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match ids {
            Some(ids) => self.ack_event_ids(id, ids).await,
            None => Ok(()),
        }
    }

    fn hand_back(&self, task: &TaskSpec) {
        let entry = self
            .taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.key);
        if let Some((stream, id)) = entry {
            self.release(&stream, &id);
        }
    }

    async fn done(&self, task: &TaskSpec) -> Result<(), QueueError> {
        let entry = self
            .taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&task.key)
            .cloned();
        let Some((stream, id)) = entry else {
            return Ok(());
        };
        // Out of `taken` first: a heartbeat that finds the entry gone meanwhile must not take
        // a finished task for a lost one.
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.key);
        let mut backoff = Backoff::new(Duration::from_millis(100));
        for _ in 0..5 {
            match self.forget(&stream, &id).await {
                Ok(()) => {
                    self.release(&stream, &id);
                    return Ok(());
                }
                Err(err) => self.back_off(&err, &mut backoff).await?,
            }
        }
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.key.clone(), (stream, id));
        // Still held in `taken`: heartbeats keep its lease until a later call succeeds.
        Err(QueueError::Redis("could not acknowledge the task".into()))
    }

    async fn dead_letter(&self, task: &TaskSpec, reason: &str) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        let json = serde_json::to_string(task).unwrap_or_default();
        let _: String = con
            .xadd(
                self.key("dead"),
                "*",
                &[("task", json.as_str()), ("reason", reason)],
            )
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn cancel_run(&self, run_id: &str) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        let cancelled = self.key("cancelled");
        let _: () = con.sadd(&cancelled, run_id).await.map_err(redis_error)?;
        let _: () = con
            .expire(&cancelled, 7 * 24 * 3600)
            .await
            .map_err(redis_error)?;
        let _: () = con
            .publish(self.key("cancel"), run_id)
            .await
            .map_err(redis_error)?;
        Ok(())
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
        let log = self.log_stream(key);
        let mut con = self.commands.clone();
        let mut command = redis::cmd("XADD");
        command
            .arg(&log)
            .arg("MAXLEN")
            .arg("~")
            .arg(LOG_MAX_CHUNKS)
            .arg("*")
            .arg("stream")
            .arg(stream);
        match chunk {
            Some(bytes) => command.arg("data").arg(bytes),
            None => command.arg("eof").arg(1),
        };
        redis::pipe()
            .add_command(command)
            .ignore()
            .cmd("EXPIRE")
            .arg(&log)
            .arg(LOG_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_error)
    }

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    fn close(&self) {
        self.closed.cancel();
    }
}

impl RedisQueue {
    /// Acknowledges and deletes the event entries of one batch; on failure they stay
    /// unacknowledged (delivered again after a restart, which fencing makes safe).
    async fn ack_event_ids(&self, id: u64, ids: Vec<String>) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let stream = self.key("events");
        let mut con = self.commands.clone();
        let acked: redis::RedisResult<()> =
            ack_and_delete(&mut redis::pipe(), &stream, SCHEDULER_GROUP, &ids)
                .query_async(&mut con)
                .await;
        if let Err(err) = acked {
            self.unacked_events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, ids);
            return Err(redis_error(err));
        }
        Ok(())
    }

    /// Decides what to do with a task entry this worker read: `Some` to run it, `None` when it
    /// is not to run here (taken back, undecodable, its run cancelled, claimed by another).
    async fn accept(&self, stream: &str, entry: &StreamId) -> Result<Option<TaskSpec>, QueueError> {
        let task: TaskSpec = match decode(stream, entry, "task") {
            Ok(task) => task,
            Err(err) => {
                tracing::error!(error = %err, "Moved an undecodable task to the dead-letter stream.");
                self.bury(stream, &entry.id, "undecodable").await;
                return Ok(None);
            }
        };
        // One round trip: is the entry still this worker's (the janitor may have given it to
        // another while it waited here), and was its run cancelled before it started?
        let mut con = self.commands.clone();
        let (pending, cancelled): (StreamPendingCountReply, bool) = redis::pipe()
            .cmd("XPENDING")
            .arg(stream)
            .arg(WORKERS_GROUP)
            .arg(&entry.id)
            .arg(&entry.id)
            .arg(1)
            .cmd("SISMEMBER")
            .arg(self.key("cancelled"))
            .arg(&task.key.run_id)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        if !pending
            .ids
            .iter()
            .any(|p| p.consumer == self.config.consumer)
        {
            return Ok(None);
        }
        if cancelled {
            // Its run was cancelled before any worker took it: it never starts, and the
            // scheduler hears so (an attempt it still thinks queued ends).
            let mut result = TaskResult::error(
                task.key.clone(),
                "the run was cancelled before the step started",
            );
            result.outcome = Outcome::Cancelled;
            self.report(WorkerEvent::Finished(result)).await?;
            self.forget(stream, &entry.id).await?;
            return Ok(None);
        }
        if !self.claim(&task.key).await? {
            // A restarted scheduler queued an attempt again that a worker already has.
            tracing::info!(task = %task.key, "Skipped a task another worker already took.");
            self.forget(stream, &entry.id).await?;
            return Ok(None);
        }
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.key.clone(), (stream.to_string(), entry.id.clone()));
        Ok(Some(task))
    }

    /// Claims an attempt for this worker: the first taker of a `(run, step, attempt)` wins, so
    /// an attempt queued twice (the scheduler restarted between its commit and its dispatch
    /// and could not know whether the dispatch happened) still runs once.
    async fn claim(&self, key: &TaskKey) -> Result<bool, QueueError> {
        let mut con = self.commands.clone();
        let claim = format!(
            "{}claim:{}:{}:{}",
            self.config.prefix, key.run_id, key.step, key.attempt
        );
        let set: Option<String> = redis::cmd("SET")
            .arg(&claim)
            .arg(&self.config.consumer)
            .arg("NX")
            .arg("EX")
            .arg(CLAIM_TTL_SECS)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        Ok(set.is_some())
    }

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

    /// `{prefix}logs:{run}:{step}:{attempt}`: a running step's output, in chunks.
    pub fn log_stream(&self, key: &TaskKey) -> String {
        format!(
            "{}logs:{}:{}:{}",
            self.config.prefix, key.run_id, key.step, key.attempt
        )
    }

    /// Scheduler side: chunks of one output stream (`stdout`/`stderr`) of an attempt after
    /// entry `after` (`0-0` for the start), waiting up to `block` for more when there are none.
    /// Returns the chunks, the id to read on from, and whether the output is complete.
    pub async fn read_log(
        &self,
        key: &TaskKey,
        stream: &str,
        after: &str,
        block: Option<Duration>,
    ) -> Result<(Vec<Vec<u8>>, String, bool), QueueError> {
        let log = self.log_stream(key);
        let mut command = redis::cmd("XREAD");
        command.arg("COUNT").arg(256);
        if let Some(block) = block {
            command.arg("BLOCK").arg(block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&log).arg(after);
        // Its own connection: a blocking read must not hold up the shared one.
        let mut con = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(redis_error)?;
        let reply: Option<StreamReadReply> =
            command.query_async(&mut con).await.map_err(redis_error)?;
        let mut chunks = Vec::new();
        let mut last = after.to_string();
        let mut complete = false;
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            last = entry.id.clone();
            let which: Option<String> = entry.get("stream");
            if which.as_deref() != Some(stream) {
                continue;
            }
            if entry.map.contains_key("eof") {
                complete = true;
            } else if let Some(data) = entry.get::<Vec<u8>>("data") {
                chunks.push(data);
            }
        }
        Ok((chunks, last, complete))
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

    /// Reads a consumer group in a task of its own and hands entries over a channel of
    /// `capacity`, so callers can stop waiting at any moment without losing an entry to a
    /// blocking read they dropped. With `catch_up`, first re-reads this consumer's own pending
    /// entries (taken before a restart, never acknowledged), from where it left off each time.
    ///
    /// After a failed read it always catches up: Redis may have delivered entries to this
    /// consumer whose reply was lost (a timeout, a frozen process), and nobody else will ever be
    /// given them. With `held`, entries already handed over are not handed over again, and each
    /// one handed over is recorded there first.
    fn spawn_reader(
        &self,
        streams: Vec<String>,
        group: &'static str,
        catch_up: bool,
        capacity: usize,
        held: Option<HeldEntries>,
    ) -> mpsc::Receiver<(String, StreamId)> {
        let (sender, receiver) = mpsc::channel(capacity);
        let client = self.client.clone();
        let consumer = self.config.consumer.clone();
        let closed = self.closed.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            // Its own connection; a response timeout longer than the block, so a frozen Redis is
            // noticed instead of waited on forever.
            let config = ConnectionManagerConfig::new().set_response_timeout(Some(
                Duration::from_millis(BLOCK_MS as u64) + Duration::from_secs(5),
            ));
            let mut backoff = Backoff::new(Duration::from_millis(100));
            let mut connection = None;
            // Per stream: where the catch-up has got to, or None once it is done.
            let mut pending_from: Vec<Option<String>> = streams
                .iter()
                .map(|_| catch_up.then(|| "0".to_string()))
                .collect();
            loop {
                if closed.is_cancelled() {
                    return;
                }
                let con = match &mut connection {
                    Some(con) => con,
                    None => {
                        match ConnectionManager::new_with_config(client.clone(), config.clone())
                            .await
                        {
                            Ok(con) => connection.insert(con),
                            Err(err) => {
                                tracing::warn!(error = %err, retry_in = ?backoff.peek(), "Redis is not answering; retrying.");
                                backoff.sleep().await;
                                continue;
                            }
                        }
                    }
                };
                // Read only once there is room to hand an entry over: with a capacity of one, a
                // worker holds at most the task it will run next, not tasks others could run.
                let permit = tokio::select! {
                    permit = sender.reserve() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return, // Nobody reads any more.
                    },
                    _ = closed.cancelled() => return,
                };
                let read = read_once(
                    con,
                    &mut commands.clone(),
                    &streams,
                    group,
                    &consumer,
                    &pending_from,
                    capacity,
                )
                .await;
                let reply = match read {
                    Ok(reply) => reply,
                    Err(err) => {
                        pending_from = streams.iter().map(|_| Some("0".to_string())).collect();
                        tracing::warn!(error = %err, retry_in = ?backoff.peek(), "Reading from Redis failed; retrying.");
                        if !backoff.sleep_unless(&closed).await {
                            return;
                        }
                        continue;
                    }
                };
                backoff.reset();
                let mut got: HashMap<String, Vec<StreamId>> = HashMap::new();
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    got.entry(key.key).or_default().extend(key.ids);
                }
                let mut permit = Some(permit);
                for (i, stream) in streams.iter().enumerate() {
                    let entries = got.remove(stream).unwrap_or_default();
                    if pending_from[i].is_some() {
                        pending_from[i] = entries.last().map(|e| e.id.clone());
                    }
                    for entry in entries {
                        if let Some(held) = &held {
                            let key = (stream.clone(), entry.id.clone());
                            let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                            if !held.insert(key) {
                                continue; // Already handed over (seen again by a catch-up).
                            }
                        }
                        match permit.take() {
                            Some(permit) => permit.send((stream.clone(), entry)),
                            None => {
                                if sender.send((stream.clone(), entry)).await.is_err() {
                                    return; // Nobody reads any more.
                                }
                            }
                        }
                    }
                }
            }
        });
        receiver
    }

    /// Stops holding a task entry: it is settled, or it was never this worker's to run.
    fn release(&self, stream: &str, id: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(stream.to_string(), id.to_string()));
    }

    /// Acknowledges and deletes a task entry.
    async fn forget(&self, stream: &str, id: &str) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        ack_and_delete(&mut redis::pipe(), stream, WORKERS_GROUP, id)
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_error)
    }

    /// Moves a task entry to the dead-letter stream with a reason.
    async fn bury(&self, stream: &str, id: &str, reason: &str) {
        let mut con = self.commands.clone();
        let _: redis::RedisResult<String> = con
            .xadd(
                self.key("dead"),
                "*",
                &[("stream", stream), ("entry", id), ("reason", reason)],
            )
            .await;
        let _ = self.forget(stream, id).await;
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
    QueueError::Redis(err.to_string())
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
