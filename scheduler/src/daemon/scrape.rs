//! What `/metrics` reads at each scrape besides the counters: the runs this daemon drives, the
//! queue's backlog, the worker registry, the store's size and the model aliases (see
//! [`crate::metrics::Snapshot`]).

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_worker::queue::WorkerInfo;

use super::Daemon;
use crate::metrics::{Snapshot, WorkerCounts};

/// Longest one source may take to answer a scrape; one slower is left out of it (Prometheus
/// gives up on a whole scrape after 10 s by default, and the counters should still arrive).
const SOURCE_TIMEOUT: Duration = Duration::from_secs(3);

impl Daemon {
    /// Reads the gauges of one scrape. A source that fails or is slow is left out (`None`) and
    /// logged at warn: a scrape is never refused because Redis or the store is away.
    pub async fn snapshot(&self) -> Snapshot {
        let pipelines = self.with_catalog(|c| c.pipelines.keys().cloned().collect());
        let active_runs = self.active_run_counts();
        let backlog = match tokio::time::timeout(SOURCE_TIMEOUT, self.engine.queue.backlog()).await
        {
            Ok(Ok(backlog)) => Some(backlog),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "Metrics: cannot read the queue's backlog.");
                None
            }
            Err(_) => {
                tracing::warn!("Metrics: the queue did not tell its backlog in time.");
                None
            }
        };
        let workers = match tokio::time::timeout(SOURCE_TIMEOUT, self.workers()).await {
            Ok(Ok(workers)) => Some(self.count_workers(&workers, sluice_worker::task::now_ms())),
            Ok(Err(why)) => {
                tracing::warn!(error = %why, "Metrics: cannot list the workers.");
                None
            }
            Err(_) => {
                tracing::warn!("Metrics: the worker registry did not answer in time.");
                None
            }
        };
        let store = self.engine.store.clone();
        let read = tokio::task::spawn_blocking(move || (store.size_on_disk(), store.every_alias()));
        let (store_bytes, aliases) = match tokio::time::timeout(SOURCE_TIMEOUT, read).await {
            Ok(Ok((size, aliases))) => (
                size.map_err(|err| tracing::warn!(error = %err, "Metrics: cannot read the store's size."))
                    .ok(),
                aliases
                    .map_err(|err| tracing::warn!(error = %err, "Metrics: cannot read the model aliases."))
                    .ok(),
            ),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "Metrics: reading the store failed.");
                (None, None)
            }
            Err(_) => {
                tracing::warn!("Metrics: the store did not answer in time.");
                (None, None)
            }
        };
        Snapshot {
            pipelines,
            active_runs,
            backlog,
            workers,
            store_bytes,
            aliases,
        }
    }

    /// Runs driven now, by pipeline: (running, waiting for a concurrency slot).
    fn active_run_counts(&self) -> BTreeMap<String, (u64, u64)> {
        let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for handle in self.lock_runs().values() {
            let entry = counts.entry(handle.pipeline.clone()).or_default();
            match handle.waiting {
                true => entry.1 += 1,
                false => entry.0 += 1,
            }
        }
        counts
    }

    /// The registry summed: alive and gone workers, and the free capacity of the alive ones.
    fn count_workers(&self, workers: &[WorkerInfo], now_ms: u64) -> WorkerCounts {
        let mut counts = WorkerCounts::default();
        for worker in workers {
            if !self.is_alive(worker, now_ms) {
                counts.gone += 1;
                continue;
            }
            let gpus = worker.gpus.len();
            counts.alive += 1;
            counts.slots += worker.slots as u64;
            counts.slots_free += worker.slots.saturating_sub(worker.running) as u64;
            counts.gpus += gpus as u64;
            counts.gpus_free += worker.gpus_free.unwrap_or(gpus).min(gpus) as u64;
        }
        counts
    }
}
