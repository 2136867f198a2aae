//! The queue between the scheduler and workers. The in-memory queue serves the embedded mode;
//! the Redis Streams queue (distributed mode) implements the same trait, and the traits of
//! [`shared`] that a queue shared with other machines adds (worker registry, logs, upkeep).

pub mod memory;
pub mod redis;
pub mod shared;

use async_trait::async_trait;

use crate::task::{TaskKey, TaskSpec, WorkerEvent};

pub use self::redis::{RedisQueue, RedisQueueConfig};
pub use memory::MemoryQueue;
pub use shared::{
    LeaseState, LogChunks, LogReader, Reclaimed, Upkeep, WorkerInfo, WorkerRegistry, LOG_START,
};

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue was shut down; no more tasks or events will flow.
    #[error("the queue is closed")]
    Closed,
    /// Redis failed or is unreachable; callers retry with backoff. Redis's own error is kept
    /// (its kind says whether it was a connection, a timeout or a refused command).
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis answered, but the queue cannot go on as asked: another scheduler holds the prefix,
    /// a CA file cannot be read, an acknowledgement kept failing.
    #[error("{0}")]
    Refused(String),
    /// A message in the queue could not be decoded (written by another version?).
    #[error("undecodable message {id} in {stream}: {reason}")]
    Undecodable {
        /// The stream.
        stream: String,
        /// The entry id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// Worker events read together, with the number to acknowledge them by.
#[derive(Debug)]
pub struct EventBatch {
    /// Acknowledgement handle for [`TaskQueue::ack_event_batches`].
    pub id: u64,
    /// The events, in the order workers reported them.
    pub events: Vec<WorkerEvent>,
}

/// How many tasks wait in one worker queue for a worker to take them, and for how long the
/// oldest has waited: what an operator watches to know whether workers keep up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The worker queue's name (`default`, `gpu`, ...).
    pub queue: String,
    /// Tasks queued that no worker has taken yet.
    pub waiting: u64,
    /// How long the oldest of them has waited, in milliseconds; 0 when none waits.
    pub oldest_wait_ms: u64,
}

/// Transport of tasks to workers and of their events back.
#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// Scheduler side: hands a task to the workers of its queue.
    async fn dispatch(&self, task: TaskSpec) -> Result<(), QueueError>;

    /// Scheduler side: hands several tasks over at once (a transport may send them together).
    async fn dispatch_batch(&self, tasks: &[TaskSpec]) -> Result<(), QueueError> {
        for task in tasks {
            self.dispatch(task.clone()).await?;
        }
        Ok(())
    }

    /// Worker side: waits for the next task from any of `queues`.
    async fn take(&self, queues: &[String]) -> Result<TaskSpec, QueueError>;

    /// Worker side: reports that a task started or ended.
    async fn report(&self, event: WorkerEvent) -> Result<(), QueueError>;

    /// Scheduler side: waits for at least one event, then returns up to `max` of them, so the
    /// scheduler can commit a batch of state changes with one flush.
    async fn next_events(&self, max: usize) -> Result<Vec<WorkerEvent>, QueueError>;

    /// Scheduler side: the events returned so far are committed and may be forgotten. Until
    /// this is called a durable queue delivers them again to a restarted scheduler.
    async fn ack_events(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Scheduler side: like [`TaskQueue::next_events`], numbered so that a scheduler driving
    /// many runs can acknowledge each batch once every run it touched has committed it
    /// ([`TaskQueue::ack_event_batches`]), not when one run happens to be idle.
    async fn next_event_batch(&self, max: usize) -> Result<EventBatch, QueueError> {
        Ok(EventBatch {
            id: 0,
            events: self.next_events(max).await?,
        })
    }

    /// Scheduler side: the events of these batches are committed and may be forgotten (one
    /// round trip for all of them where the queue is remote).
    async fn ack_event_batches(&self, _ids: &[u64]) -> Result<(), QueueError> {
        self.ack_events().await
    }

    /// Scheduler side: records a task given up on (lost by workers too many times) where
    /// operators look for such tasks. Queues without such a place only log it.
    async fn dead_letter(&self, task: &TaskSpec, reason: &str) -> Result<(), QueueError> {
        tracing::error!(task = %task.key, reason, "Task given up on.");
        Ok(())
    }

    /// Worker side: the task is given back unreported (its lease is gone, or the worker is
    /// draining): stop keeping its lease alive, so it is taken back and run elsewhere.
    fn hand_back(&self, _task: &TaskSpec) {}

    /// Worker side: the task's Finished event was reported; its delivery can be forgotten.
    async fn done(&self, _task: &TaskSpec) -> Result<(), QueueError> {
        Ok(())
    }

    /// Worker side: reports the last events of a task that ended (its `Started` too, when the
    /// step ended before that was sent, then its `Finished`) and forgets its delivery, after
    /// ending the attempt's log on each of `log_ends` (as [`TaskQueue::end_logs`]; empty when
    /// its log is not streamed). A queue that can do it all in one round trip does, and never
    /// forgets a delivery without its result.
    async fn finish(
        &self,
        task: &TaskSpec,
        events: Vec<WorkerEvent>,
        log_ends: &[&str],
    ) -> Result<(), QueueError> {
        if !log_ends.is_empty() {
            self.end_logs(&task.key, log_ends).await?;
        }
        for event in events {
            self.report(event).await?;
        }
        self.done(task).await
    }

    /// Worker side: whether step logs should be sent through the queue while steps run (for a
    /// scheduler that cannot read the worker's disk). The in-process queue needs not.
    fn streams_logs(&self) -> bool {
        false
    }

    /// Worker side: a chunk of a running step's output (`stream` is `stdout` or `stderr`);
    /// `None` says the attempt's output is complete.
    async fn publish_log(
        &self,
        _key: &TaskKey,
        _stream: &str,
        _chunk: Option<&[u8]>,
    ) -> Result<(), QueueError> {
        Ok(())
    }

    /// Worker side: the attempt's output is complete on each of `streams` (an end marker on
    /// each, as `publish_log` with `None` sends; a queue may send them together).
    async fn end_logs(&self, key: &TaskKey, streams: &[&str]) -> Result<(), QueueError> {
        for stream in streams {
            self.publish_log(key, stream, None).await?;
        }
        Ok(())
    }

    /// Scheduler side: the tasks waiting for a worker, per worker queue (for `/metrics`). A
    /// queue that cannot tell answers with none.
    async fn backlog(&self) -> Result<Vec<Backlog>, QueueError> {
        Ok(Vec::new())
    }

    /// Scheduler side: asks the workers to stop every task of `run_id`.
    async fn cancel_run(&self, run_id: &str) -> Result<(), QueueError>;

    /// Worker side: a stream of run ids to cancel, from now on.
    fn cancellations(&self) -> tokio::sync::broadcast::Receiver<String>;

    /// Stops the flow: pending and future waits return [`QueueError::Closed`].
    fn close(&self);
}
