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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamPendingCountReply, StreamReadReply};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{QueueError, TaskQueue};
use crate::task::{now_ms, TaskKey, TaskSpec, WorkerEvent};

/// Consumer group of workers on every task stream.
const WORKERS_GROUP: &str = "workers";
/// Consumer group of the scheduler on the events stream.
const SCHEDULER_GROUP: &str = "scheduler";
/// How long one blocking read waits before it checks for shutdown.
const BLOCK_MS: usize = 1000;

/// How a queue connects and names things.
#[derive(Debug, Clone)]
pub struct RedisQueueConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// This process's consumer name: the worker's name, or the scheduler's.
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

/// The Redis Streams queue.
pub struct RedisQueue {
    config: RedisQueueConfig,
    /// For commands that answer at once.
    commands: ConnectionManager,
    /// For blocking reads: no response timeout, or a long block would count as a failure.
    blocking: tokio::sync::Mutex<ConnectionManager>,
    /// Stream entry of each task this worker took, for its acknowledgement.
    taken: Mutex<HashMap<TaskKey, (String, String)>>,
    /// Event entries handed to the scheduler and not yet acknowledged.
    unacked_events: Mutex<Vec<String>>,
    /// Whether this scheduler has re-read the events it had taken before a restart.
    pending_events_read: Mutex<bool>,
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
        let client = redis::Client::open(config.url.as_str()).map_err(redis_error)?;
        let mut delay = Duration::from_millis(100);
        let (commands, blocking) = loop {
            let quick =
                ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
            let patient = ConnectionManagerConfig::new().set_response_timeout(None);
            let attempt = async {
                let commands = ConnectionManager::new_with_config(client.clone(), quick).await?;
                let blocking = ConnectionManager::new_with_config(client.clone(), patient).await?;
                Ok::<_, redis::RedisError>((commands, blocking))
            };
            match attempt.await {
                Ok(connections) => break connections,
                Err(err) => {
                    tracing::warn!(url = %config.url, error = %err, retry_in = ?delay, "Redis is not answering; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = give_up.cancelled() => return Err(QueueError::Closed),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let (cancels, _) = broadcast::channel(1024);
        let queue = RedisQueue {
            config,
            commands,
            blocking: tokio::sync::Mutex::new(blocking),
            taken: Mutex::new(HashMap::new()),
            unacked_events: Mutex::new(Vec::new()),
            pending_events_read: Mutex::new(false),
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
        let mut con = self.commands.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(redis_error),
        }
    }

    /// Subscribes to the cancel channel in the background and passes run ids on.
    fn forward_cancellations(&self, client: redis::Client) {
        let sender = self.cancels.clone();
        let channel = self.key("cancel");
        let closed = self.closed.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
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
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                    _ = closed.cancelled() => return,
                };
                delay = Duration::from_millis(100);
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
    /// tasks it holds, so the janitor does not take them back while they run.
    pub async fn heartbeat(&self, info: &WorkerInfo) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        let json = serde_json::to_string(info).unwrap_or_default();
        let _: () = con
            .hset(self.key("workers"), &info.name, json)
            .await
            .map_err(redis_error)?;
        let held: Vec<(String, String)> = self
            .taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for (stream, id) in held {
            // XCLAIM to ourselves with no minimum idle time resets the entry's idle clock.
            let _: redis::Value = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(WORKERS_GROUP)
                .arg(&self.config.consumer)
                .arg(0)
                .arg(&id)
                .arg("JUSTID")
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
        }
        Ok(())
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
    /// `min_idle` (it died or froze). Tasks delivered `max_deliveries` times or more go to the
    /// dead-letter stream instead of coming back. The caller re-dispatches the others as new
    /// attempts, after committing them.
    pub async fn reclaim_idle(
        &self,
        queue: &str,
        min_idle: Duration,
        max_deliveries: usize,
    ) -> Result<(Vec<Reclaimed>, Vec<Reclaimed>), QueueError> {
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
        let (mut again, mut dead) = (Vec::new(), Vec::new());
        for entry in pending.ids {
            // Claiming with the same minimum idle time makes a race with a heartbeat safe: if
            // the worker renewed the lease a moment ago, nothing is claimed.
            let claimed: Vec<StreamId> = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(WORKERS_GROUP)
                .arg(&self.config.consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&entry.id)
                .query_async::<redis::streams::StreamClaimReply>(&mut con)
                .await
                .map_err(redis_error)?
                .ids;
            let Some(claimed) = claimed.into_iter().next() else {
                continue;
            };
            let _: () = redis::cmd("XACK")
                .arg(&stream)
                .arg(WORKERS_GROUP)
                .arg(&entry.id)
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
            let _: () = redis::cmd("XDEL")
                .arg(&stream)
                .arg(&entry.id)
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
            let task: TaskSpec = match decode(&stream, &claimed, "task") {
                Ok(task) => task,
                Err(err) => {
                    tracing::error!(error = %err, "Dropped an undecodable task while reclaiming it.");
                    continue;
                }
            };
            let reclaimed = Reclaimed {
                task,
                deliveries: entry.times_delivered,
            };
            if entry.times_delivered >= max_deliveries {
                let json = serde_json::to_string(&reclaimed.task).unwrap_or_default();
                let _: String = con
                    .xadd(
                        self.key("dead"),
                        "*",
                        &[
                            ("task", json.as_str()),
                            ("reason", "delivered too many times"),
                        ],
                    )
                    .await
                    .map_err(redis_error)?;
                dead.push(reclaimed);
            } else {
                again.push(reclaimed);
            }
        }
        Ok((again, dead))
    }

    async fn read_group(
        &self,
        group: &str,
        streams: &[String],
        id: &str,
        count: usize,
        block: bool,
    ) -> Result<Option<StreamReadReply>, QueueError> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(count);
        if block {
            command.arg("BLOCK").arg(BLOCK_MS);
        }
        command.arg("STREAMS");
        for stream in streams {
            command.arg(stream);
        }
        for _ in streams {
            command.arg(id);
        }
        let mut con = self.blocking.lock().await;
        tokio::select! {
            reply = command.query_async::<Option<StreamReadReply>>(&mut *con) => reply.map_err(redis_error),
            _ = self.closed.cancelled() => Err(QueueError::Closed),
        }
    }

    /// Waits `delay` after a Redis failure, unless the queue closes first.
    async fn back_off(&self, err: &QueueError, delay: &mut Duration) -> Result<(), QueueError> {
        tracing::warn!(error = %err, retry_in = ?delay, "Redis failed; retrying.");
        tokio::select! {
            _ = tokio::time::sleep(*delay) => {}
            _ = self.closed.cancelled() => return Err(QueueError::Closed),
        }
        *delay = (*delay * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

#[async_trait]
impl TaskQueue for RedisQueue {
    async fn dispatch(&self, task: TaskSpec) -> Result<(), QueueError> {
        let stream = self.task_stream(&task.queue);
        self.ensure_group(&stream, WORKERS_GROUP).await?;
        let json = serde_json::to_string(&task).unwrap_or_default();
        let mut con = self.commands.clone();
        let _: String = con
            .xadd(&stream, "*", &[("task", json)])
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn take(&self, queues: &[String]) -> Result<TaskSpec, QueueError> {
        let streams: Vec<String> = queues.iter().map(|q| self.task_stream(q)).collect();
        let mut delay = Duration::from_millis(100);
        loop {
            if self.closed.is_cancelled() {
                return Err(QueueError::Closed);
            }
            let read = async {
                for stream in &streams {
                    self.ensure_group(stream, WORKERS_GROUP).await?;
                }
                self.read_group(WORKERS_GROUP, &streams, ">", 1, true).await
            };
            let reply = match read.await {
                Ok(reply) => reply,
                Err(QueueError::Closed) => return Err(QueueError::Closed),
                Err(err) => {
                    self.back_off(&err, &mut delay).await?;
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    match decode::<TaskSpec>(&key.key, &entry, "task") {
                        Ok(task) => {
                            self.taken
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(task.key.clone(), (key.key.clone(), entry.id.clone()));
                            return Ok(task);
                        }
                        Err(err) => {
                            // Dead-letter it rather than drop it silently.
                            tracing::error!(error = %err, "Moved an undecodable task to the dead-letter stream.");
                            let mut con = self.commands.clone();
                            let _: redis::RedisResult<String> = con
                                .xadd(
                                    self.key("dead"),
                                    "*",
                                    &[("entry", entry.id.as_str()), ("reason", "undecodable")],
                                )
                                .await;
                            let _: redis::RedisResult<()> = redis::cmd("XACK")
                                .arg(&key.key)
                                .arg(WORKERS_GROUP)
                                .arg(&entry.id)
                                .query_async(&mut con)
                                .await;
                        }
                    }
                }
            }
        }
    }

    async fn report(&self, event: WorkerEvent) -> Result<(), QueueError> {
        let json = serde_json::to_string(&event).unwrap_or_default();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut con = self.commands.clone();
            let added: redis::RedisResult<String> = con
                .xadd(self.key("events"), "*", &[("event", json.as_str())])
                .await;
            match added {
                Ok(_) => return Ok(()),
                Err(err) => self.back_off(&redis_error(err), &mut delay).await?,
            }
        }
    }

    async fn next_events(&self, max: usize) -> Result<Vec<WorkerEvent>, QueueError> {
        let stream = self.key("events");
        let streams = [stream.clone()];
        let mut delay = Duration::from_millis(100);
        loop {
            if self.closed.is_cancelled() {
                return Err(QueueError::Closed);
            }
            // After a restart, first the events this scheduler took and never acknowledged.
            let first = !*self
                .pending_events_read
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let read = async {
                self.ensure_group(&stream, SCHEDULER_GROUP).await?;
                let id = if first { "0" } else { ">" };
                self.read_group(SCHEDULER_GROUP, &streams, id, max, !first)
                    .await
            };
            let reply = match read.await {
                Ok(reply) => reply,
                Err(QueueError::Closed) => return Err(QueueError::Closed),
                Err(err) => {
                    self.back_off(&err, &mut delay).await?;
                    continue;
                }
            };
            let entries: Vec<StreamId> = reply
                .map(|r| r.keys)
                .unwrap_or_default()
                .into_iter()
                .flat_map(|k| k.ids)
                .collect();
            if first && entries.len() < max {
                *self
                    .pending_events_read
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = true;
            }
            let mut events = Vec::with_capacity(entries.len());
            let mut unacked = self
                .unacked_events
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                unacked.push(entry.id.clone());
                match decode::<WorkerEvent>(&stream, &entry, "event") {
                    Ok(event) => events.push(event),
                    Err(err) => {
                        tracing::error!(error = %err, "Skipped an undecodable worker event.")
                    }
                }
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    async fn ack_events(&self) -> Result<(), QueueError> {
        let ids = std::mem::take(
            &mut *self
                .unacked_events
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if ids.is_empty() {
            return Ok(());
        }
        let stream = self.key("events");
        let mut con = self.commands.clone();
        let acked: redis::RedisResult<()> = async {
            redis::cmd("XACK")
                .arg(&stream)
                .arg(SCHEDULER_GROUP)
                .arg(&ids)
                .query_async::<()>(&mut con)
                .await?;
            redis::cmd("XDEL")
                .arg(&stream)
                .arg(&ids)
                .query_async::<()>(&mut con)
                .await
        }
        .await;
        if let Err(err) = acked {
            // Not acknowledged means delivered again after a restart; fencing makes that safe.
            self.unacked_events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(ids);
            return Err(redis_error(err));
        }
        Ok(())
    }

    async fn done(&self, task: &TaskSpec) -> Result<(), QueueError> {
        let entry = self
            .taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.key);
        let Some((stream, id)) = entry else {
            return Ok(());
        };
        let mut con = self.commands.clone();
        redis::cmd("XACK")
            .arg(&stream)
            .arg(WORKERS_GROUP)
            .arg(&id)
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_error)?;
        redis::cmd("XDEL")
            .arg(&stream)
            .arg(&id)
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_error)
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

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    fn close(&self) {
        self.closed.cancel();
    }
}

impl RedisQueue {
    /// Whether a run was cancelled (for a worker that takes one of its tasks afterwards).
    pub async fn is_cancelled(&self, run_id: &str) -> Result<bool, QueueError> {
        let mut con = self.commands.clone();
        con.sismember(self.key("cancelled"), run_id)
            .await
            .map_err(redis_error)
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

fn redis_error(err: redis::RedisError) -> QueueError {
    QueueError::Redis(err.to_string())
}
