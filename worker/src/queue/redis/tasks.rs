//! Tasks: the scheduler adds them to a stream per queue; a worker takes, accepts and claims
//! each once, and settles it (done, handed back, or buried in the dead-letter stream).

use std::sync::LazyLock;
use std::time::Duration;

use super::*;

/// Whether a worker may run the task entry it read, decided in Redis in one step:
/// - `gone`: the entry is no longer pending for this consumer (the janitor gave it to another);
/// - `cancelled`: its run was cancelled before it started (unless the task outlives a cancel);
/// - `taken`: another delivery of the same `(run, step, attempt)` was claimed first (a
///   scheduler restarted between its commit and its dispatch queues an attempt again, not
///   knowing whether the dispatch happened): the attempt still runs once;
/// - `claimed`: this worker runs it; the claim key names the consumer and the entry, so a
///   retry after a reply lost on the way finds its own claim and still runs the task.
///
/// KEYS: the task stream, the cancelled-runs set, the attempt's claim key. ARGV: the workers'
/// group, the entry id, this consumer, the run id, the claim's TTL in seconds, and `1` when
/// the task outlives a cancel. A script rather than a pipeline: the claim must only be taken
/// when the checks before it pass, and they used to cost a round trip of their own.
static ACCEPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then
  return 'gone'
end
if ARGV[6] ~= '1' and redis.call('SISMEMBER', KEYS[2], ARGV[4]) == 1 then
  return 'cancelled'
end
local mine = ARGV[3] .. ' ' .. ARGV[2]
if redis.call('SET', KEYS[3], mine, 'NX', 'EX', ARGV[5]) then
  return 'claimed'
end
if redis.call('GET', KEYS[3]) == mine then
  return 'claimed'
end
return 'taken'
"#,
    )
});

impl RedisQueue {
    /// Adds tasks to their queues' streams, creating each stream's workers group first.
    pub(super) async fn add_tasks(&self, tasks: &[TaskSpec]) -> Result<(), QueueError> {
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

    /// Waits for the next task this worker may run.
    pub(super) async fn take_task(&self, queues: &[String]) -> Result<TaskSpec, QueueError> {
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

    /// Decides what to do with a task entry this worker read: `Some` to run it, `None` when it
    /// is not to run here (taken back, undecodable, its run cancelled, claimed by another).
    pub(super) async fn accept(
        &self,
        stream: &str,
        entry: &StreamId,
    ) -> Result<Option<TaskSpec>, QueueError> {
        let task: TaskSpec = match decode(stream, entry, "task") {
            Ok(task) => task,
            Err(err) => {
                tracing::error!(error = %err, "Moved an undecodable task to the dead-letter stream.");
                self.bury(stream, &entry.id, "undecodable").await;
                return Ok(None);
            }
        };
        // One round trip decides: is the entry still this worker's (the janitor may have given
        // it to another while it waited here), was its run cancelled before it started, and is
        // this the first taker of the attempt (see ACCEPT)?
        let claim = format!(
            "{}claim:{}:{}:{}",
            self.config.prefix, task.key.run_id, task.key.step, task.key.attempt
        );
        let verdict: String = ACCEPT
            .key(stream)
            .key(self.key("cancelled"))
            .key(&claim)
            .arg(WORKERS_GROUP)
            .arg(&entry.id)
            .arg(&self.config.consumer)
            .arg(&task.key.run_id)
            .arg(CLAIM_TTL_SECS)
            .arg(u8::from(task.outlives_cancel))
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(redis_error)?;
        match verdict.as_str() {
            "claimed" => {}
            "cancelled" => {
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
            "taken" => {
                // A restarted scheduler queued an attempt again that a worker already has.
                tracing::info!(task = %task.key, "Skipped a task another worker already took.");
                self.forget(stream, &entry.id).await?;
                return Ok(None);
            }
            _ => return Ok(None), // "gone": no longer this worker's entry.
        }
        self.taken_tasks()
            .insert(task.key.clone(), (stream.to_string(), entry.id.clone()));
        Ok(Some(task))
    }

    /// Stops holding a task unreported (the worker could not keep its lease).
    pub(super) fn hand_back_task(&self, task: &TaskSpec) {
        let entry = self.taken_tasks().remove(&task.key);
        if let Some((stream, id)) = entry {
            self.release(&stream, &id);
        }
    }

    /// Acknowledges a finished task, retrying; on failure its lease stays held.
    pub(super) async fn settle_task(&self, task: &TaskSpec) -> Result<(), QueueError> {
        // Out of `taken` first: a heartbeat that finds the entry gone meanwhile must not take
        // a finished task for a lost one.
        let Some((stream, id)) = self.taken_tasks().remove(&task.key) else {
            return Ok(());
        };
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
        self.taken_tasks().insert(task.key.clone(), (stream, id));
        // Still held in `taken`: heartbeats keep its lease until a later call succeeds.
        Err(QueueError::Refused(
            "could not acknowledge the task; its lease stays held".into(),
        ))
    }

    /// Adds a task's last events to the events stream and acknowledges and deletes its entry,
    /// in one transaction (one round trip, and never the one without the other), retrying
    /// while Redis fails. The events are added in one step, so the scheduler reads a quick
    /// step's `Started` and `Finished` in the same batch.
    pub(super) async fn finish_task(
        &self,
        task: &TaskSpec,
        events: &[WorkerEvent],
        log_ends: &[&str],
    ) -> Result<(), QueueError> {
        // Out of `taken` while the transaction is in flight: a heartbeat that finds the entry
        // gone meanwhile must not take a finished task for a lost one.
        let Some((stream, id)) = self.taken_tasks().remove(&task.key) else {
            // Not delivered through this queue's reader: nothing to settle.
            if !log_ends.is_empty() {
                self.end_log_streams(&task.key, log_ends).await?;
            }
            for event in events {
                self.add_event(event.clone()).await?;
            }
            return Ok(());
        };
        let jsons: Vec<String> = events
            .iter()
            .map(|event| serde_json::to_string(event).unwrap_or_default())
            .collect();
        let mut backoff = Backoff::new(Duration::from_millis(100));
        loop {
            // Held again while backing off (below); out again while the next try is in flight.
            self.taken_tasks().remove(&task.key);
            let mut pipe = redis::pipe();
            pipe.atomic();
            // The log's end markers first, as a follower of the log expects them before the
            // attempt is over; in the same transaction, one round trip for both.
            self.add_log_ends(&mut pipe, &task.key, log_ends);
            for json in &jsons {
                pipe.cmd("XADD")
                    .arg(self.key("events"))
                    .arg("*")
                    .arg("event")
                    .arg(json)
                    .ignore();
            }
            ack_and_delete(&mut pipe, &stream, WORKERS_GROUP, id.as_str());
            let mut con = self.commands.clone();
            match pipe.query_async::<()>(&mut con).await {
                Ok(()) => {
                    self.release(&stream, &id);
                    return Ok(());
                }
                Err(err) => {
                    // Still this worker's: heartbeats keep its lease while it retries.
                    self.taken_tasks()
                        .insert(task.key.clone(), (stream.clone(), id.clone()));
                    self.back_off(&redis_error(err), &mut backoff).await?;
                }
            }
        }
    }

    /// Records a task given up on in the dead-letter stream.
    pub(super) async fn bury_task(&self, task: &TaskSpec, reason: &str) -> Result<(), QueueError> {
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

    /// Stops holding a task entry: it is settled, or it was never this worker's to run.
    pub(super) fn release(&self, stream: &str, id: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(stream.to_string(), id.to_string()));
    }

    /// Acknowledges and deletes a task entry.
    pub(super) async fn forget(&self, stream: &str, id: &str) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        ack_and_delete(&mut redis::pipe(), stream, WORKERS_GROUP, id)
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_error)
    }

    /// Moves a task entry to the dead-letter stream with a reason.
    pub(super) async fn bury(&self, stream: &str, id: &str, reason: &str) {
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
}
