//! An in-process queue for the embedded mode: the same protocol as Redis, without Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{QueueError, TaskQueue};
use crate::task::{TaskSpec, WorkerEvent};

/// Tasks per queue name, events on a channel, cancellations on a broadcast.
pub struct MemoryQueue {
    tasks: Mutex<HashMap<String, VecDeque<TaskSpec>>>,
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
            return tasks.values_mut().find_map(VecDeque::pop_front);
        }
        queues
            .iter()
            .find_map(|q| tasks.get_mut(q).and_then(VecDeque::pop_front))
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
            .push_back(task);
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
            queue.retain(|t| t.key.run_id != run_id || t.outlives_cancel);
        }
        drop(tasks);
        // No receiver simply means no worker is running anything.
        let _ = self.cancels.send(run_id.to_string());
        Ok(())
    }

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    fn close(&self) {
        self.closed.cancel();
        self.task_added.notify_waiters();
    }
}
