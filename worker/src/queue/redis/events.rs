//! Worker events: workers add them to the events stream; the scheduler reads them in batches
//! and acknowledges each batch once what it changed is committed.

use std::time::Duration;

use super::*;

impl RedisQueue {
    /// Adds a worker event, retrying while Redis fails.
    pub(super) async fn add_event(&self, event: WorkerEvent) -> Result<(), QueueError> {
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

    /// The next batch of worker events (waiting for the first).
    pub(super) async fn read_event_batch(&self, max: usize) -> Result<EventBatch, QueueError> {
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

    /// Acknowledges every batch handed out so far.
    pub(super) async fn ack_all_events(&self) -> Result<(), QueueError> {
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

    /// Acknowledges these batches, in one round trip.
    pub(super) async fn ack_events_of_batches(&self, batches: &[u64]) -> Result<(), QueueError> {
        let ids: Vec<String> = {
            let mut unacked = self
                .unacked_events
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            batches
                .iter()
                .filter_map(|batch| unacked.remove(batch))
                .flatten()
                .collect()
        };
        match batches.first() {
            // On failure they stay unacknowledged together, under the first batch's number.
            Some(&first) => self.ack_event_ids(first, ids).await,
            None => Ok(()),
        }
    }

    /// Acknowledges and deletes the event entries of one batch; on failure they stay
    /// unacknowledged (delivered again after a restart, which fencing makes safe).
    pub(super) async fn ack_event_ids(&self, id: u64, ids: Vec<String>) -> Result<(), QueueError> {
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
}
