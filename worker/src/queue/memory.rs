//! An in-process queue for the embedded mode: the same protocol as Redis, without Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{Backlog, QueueError, TaskQueue};
use crate::task::{now_ms, TaskSpec, WorkerEvent};

/// A task waiting in its queue, with when it was queued (for [`TaskQueue::backlog`]).
struct Queued {
    at_ms: u64,
    task: TaskSpec,
}

/// Tasks per queue name, events on a channel, cancellations on a broadcast.
pub struct MemoryQueue {
    tasks: Mutex<HashMap<String, VecDeque<Queued>>>,
    task_added: Notify,
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<WorkerEvent>>,
    cancels: broadcast::Sender<String>,
    closed: CancellationToken,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        MemoryQueue {
            tasks: Mutex::new(HashMap::new()),
            task_added: Notify::new(),
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
            cancels: broadcast::channel(1024).0,
            closed: CancellationToken::new(),
        }
    }
}

impl MemoryQueue {
    /// The next task of the first of `queues` that has one; `*` stands for every queue (the
    /// in-process workers of `sluice server`, which serve queues added by a reload too).
    fn pop(&self, queues: &[String]) -> Option<TaskSpec> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if queues.iter().any(|q| q == "*") {
            return tasks
                .values_mut()
                .find_map(VecDeque::pop_front)
                .map(|q| q.task);
        }
        queues
            .iter()
            .find_map(|q| tasks.get_mut(q).and_then(VecDeque::pop_front))
            .map(|q| q.task)
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn dispatch(&self, task: TaskSpec) -> Result<(), QueueError> {
        if self.closed.is_cancelled() {
            return Err(QueueError::Closed);
        }
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.queue.clone())
            .or_default()
            .push_back(Queued {
                at_ms: now_ms(),
                task,
            });
        self.task_added.notify_waiters();
        Ok(())
    }

    async fn take(&self, queues: &[String]) -> Result<TaskSpec, QueueError> {
        loop {
            // Register for the wake-up before looking, so a dispatch in between is not missed.
            let added = self.task_added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if self.closed.is_cancelled() {
                return Err(QueueError::Closed);
            }
            if let Some(task) = self.pop(queues) {
                return Ok(task);
            }
            tokio::select! {
                _ = added => {}
                _ = self.closed.cancelled() => return Err(QueueError::Closed),
            }
        }
    }

    async fn report(&self, event: WorkerEvent) -> Result<(), QueueError> {
        self.events_tx.send(event).map_err(|_| QueueError::Closed)
    }

    async fn next_events(&self, max: usize) -> Result<Vec<WorkerEvent>, QueueError> {
        let mut rx = self.events_rx.lock().await;
        let first = tokio::select! {
            event = rx.recv() => event.ok_or(QueueError::Closed)?,
            _ = self.closed.cancelled() => return Err(QueueError::Closed),
        };
        let mut events = vec![first];
        while events.len() < max {
            match rx.try_recv() {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        Ok(events)
    }

    async fn cancel_run(&self, run_id: &str) -> Result<(), QueueError> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for queue in tasks.values_mut() {
            queue.retain(|q| q.task.key.run_id != run_id || q.task.outlives_cancel);
        }
        drop(tasks);
        // No receiver simply means no worker is running anything.
        let _ = self.cancels.send(run_id.to_string());
        Ok(())
    }

    async fn backlog(&self) -> Result<Vec<Backlog>, QueueError> {
        let now = now_ms();
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let mut backlog: Vec<Backlog> = tasks
            .iter()
            .map(|(queue, waiting)| Backlog {
                queue: queue.clone(),
                waiting: waiting.len() as u64,
                oldest_wait_ms: waiting
                    .front()
                    .map_or(0, |oldest| now.saturating_sub(oldest.at_ms)),
            })
            .collect();
        backlog.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(backlog)
    }

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    fn close(&self) {
        self.closed.cancel();
        self.task_added.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{StepCommand, TaskKey};

    fn task(queue: &str, step: &str) -> TaskSpec {
        let key = TaskKey {
            run_id: "r".into(),
            step: step.into(),
            attempt: 1,
        };
        TaskSpec {
            queue: queue.into(),
            ..TaskSpec::new(key, StepCommand::Shell("true".into()), "/tmp/a".into())
        }
    }

    #[tokio::test]
    async fn backlog_counts_what_waits_per_queue_until_a_worker_takes_it() {
        let queue = MemoryQueue::default();
        assert_eq!(queue.backlog().await.unwrap(), vec![]);
        for (q, step) in [("default", "a"), ("default", "b"), ("gpu", "c")] {
            queue.dispatch(task(q, step)).await.unwrap();
        }
        let taken = queue.take(&["default".into()]).await.unwrap();
        assert_eq!(taken.key.step, "a");
        let backlog = queue.backlog().await.unwrap();
        let waiting: Vec<(&str, u64)> = backlog
            .iter()
            .map(|b| (b.queue.as_str(), b.waiting))
            .collect();
        assert_eq!(waiting, vec![("default", 1), ("gpu", 1)]);
        queue.take(&["*".into()]).await.unwrap();
        queue.take(&["*".into()]).await.unwrap();
        let backlog = queue.backlog().await.unwrap();
        assert!(backlog
            .iter()
            .all(|b| b.waiting == 0 && b.oldest_wait_ms == 0));
    }
}
