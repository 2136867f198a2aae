//! The worker registry and reclaim: heartbeats that advertise a worker and renew the leases
//! of the tasks it holds, the scheduler's list of workers, and taking back tasks whose worker
//! went silent.

use std::time::Duration;

use super::*;

impl RedisQueue {
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
            .taken_tasks()
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
            let still_held = gone && self.taken_tasks().remove(&key).is_some();
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
        self.taken_tasks().keys().cloned().collect()
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
                    // Consumers are named `<worker>@<start id>`.
                    let worker = entry.consumer.split('@').next().unwrap_or_default();
                    if let Err(err) = self.report_lost(&stream, &entry.id, &task, worker).await {
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
    pub(super) async fn report_lost(
        &self,
        stream: &str,
        id: &str,
        task: &TaskSpec,
        worker: &str,
    ) -> Result<(), QueueError> {
        let mut result = TaskResult::error(
            task.key.clone(),
            "the worker running it stopped heartbeating; its lease expired",
        );
        result.outcome = Outcome::Lost;
        result.worker = Some(worker.to_string()).filter(|w| !w.is_empty());
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
}
