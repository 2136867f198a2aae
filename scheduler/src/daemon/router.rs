//! Hands worker events to the runs they are about, and acknowledges each batch to the queue once
//! every run it touched has committed what it changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use sluice_worker::queue::{QueueError, TaskQueue};
use sluice_worker::task::WorkerEvent;
use tokio::sync::mpsc;

use super::Daemon;
use crate::engine::RoutedEvent;

/// Most worker events read in one batch.
const EVENT_BATCH: usize = 4096;
/// How long committed batches wait to be acknowledged together. Acknowledging is never urgent:
/// the commit came first, and an event left unacknowledged is only delivered again after a
/// restart, where fencing refuses what was already applied. A chain acknowledges a dozen steps'
/// events in one round trip instead of one each.
const ACK_EVERY: Duration = Duration::from_millis(20);
/// Committed batches that are acknowledged at once, without waiting for [`ACK_EVERY`].
const ACK_AT_MOST: usize = 256;

/// The router loop; ends when the daemon shuts down or the queue closes.
pub(super) async fn route_events(daemon: Arc<Daemon>, mut committed: mpsc::UnboundedReceiver<u64>) {
    let queue = daemon.engine.queue.clone();
    // Batches handed out and not yet committed by every run they touched: batch → runs left.
    let mut waiting: HashMap<u64, usize> = HashMap::new();
    let mut acks = Acks::default();
    loop {
        tokio::select! {
            batch = queue.next_event_batch(EVENT_BATCH) => match batch {
                Ok(batch) => {
                    let (handed, hold) = hand_out(&daemon, batch.id, batch.events);
                    if hold {
                        // Never acknowledged by this process: delivered again after a restart,
                        // when the run is picked up again.
                        waiting.insert(batch.id, handed + 1);
                    } else if handed == 0 {
                        acks.push(batch.id);
                    } else {
                        waiting.insert(batch.id, handed);
                    }
                }
                Err(QueueError::Closed) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "Reading worker events failed; retrying.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Some(batch) = committed.recv() => {
                if let Some(left) = waiting.get_mut(&batch) {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        waiting.remove(&batch);
                        acks.push(batch);
                    }
                }
            }
            _ = acks.due() => {}
            _ = daemon.shutdown.cancelled() => {
                acks.send(queue.as_ref()).await;
                return;
            }
        }
        if acks.ready() {
            acks.send(queue.as_ref()).await;
        }
    }
}

/// Committed batches waiting to be acknowledged together.
#[derive(Default)]
struct Acks {
    batches: Vec<u64>,
    /// When the oldest of them was committed plus [`ACK_EVERY`].
    due: Option<tokio::time::Instant>,
}

impl Acks {
    fn push(&mut self, batch: u64) {
        self.batches.push(batch);
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + ACK_EVERY);
    }

    /// Whether they should go now.
    fn ready(&self) -> bool {
        self.batches.len() >= ACK_AT_MOST
            || self
                .due
                .is_some_and(|due| due <= tokio::time::Instant::now())
    }

    /// Resolves when the oldest has waited long enough; never while there are none.
    async fn due(&self) {
        match self.due {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    }

    async fn send(&mut self, queue: &dyn TaskQueue) {
        self.due = None;
        let batches = std::mem::take(&mut self.batches);
        if batches.is_empty() {
            return;
        }
        if let Err(err) = queue.ack_event_batches(&batches).await {
            tracing::warn!(error = %err, "Could not acknowledge worker events; they will be delivered again.");
        }
    }
}

/// Sends each run its events of the batch, in order; returns how many runs got some, and
/// whether the batch must stay unacknowledged. Events of finished runs (a late or repeated
/// report) are dropped: fencing would refuse them anyway. Events of an unfinished run that no
/// driver drives (its driver failed) are kept in Redis for the next start.
fn hand_out(daemon: &Daemon, batch: u64, events: Vec<WorkerEvent>) -> (usize, bool) {
    let mut by_run: IndexMap<String, Vec<WorkerEvent>> = IndexMap::new();
    for event in events {
        by_run
            .entry(run_of(&event).to_string())
            .or_default()
            .push(event);
    }
    let mut handed = 0;
    let mut hold = false;
    for (run, events) in by_run {
        if daemon.send_to_run(&run, RoutedEvent::Worker { batch, events }) {
            handed += 1;
            continue;
        }
        let unfinished = match daemon.engine.store.run(&run) {
            Ok(Some(record)) => !record.status.is_terminal(),
            Ok(None) => {
                // Not a run of this store: another scheduler shares the Redis prefix, or the
                // store was replaced. Said out loud, since results then go missing somewhere.
                tracing::error!(run = %run, "Worker events for a run this scheduler never had (another scheduler on the same Redis prefix?); dropped.");
                continue;
            }
            Err(_) => true,
        };
        if unfinished {
            tracing::warn!(run = %run, "Worker events for a run no driver drives; kept for the next start.");
            hold = true;
        } else {
            tracing::debug!(run = %run, "Dropped worker events of a finished run.");
        }
    }
    (handed, hold)
}

fn run_of(event: &WorkerEvent) -> &str {
    match event {
        WorkerEvent::Started { key, .. } => &key.run_id,
        WorkerEvent::Finished(result) => &result.key.run_id,
    }
}
