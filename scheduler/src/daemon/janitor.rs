//! The janitor (remote workers only): takes back tasks whose worker stopped renewing its lease,
//! and notices when the shared queue lost its data so runs in flight queue their work again. It
//! works through the queue's [`Upkeep`], whatever carries it.

use std::sync::Arc;
use std::time::Duration;

use sluice_worker::backoff::Backoff;
use sluice_worker::queue::{LeaseState, QueueError, Upkeep};
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::engine::RoutedEvent;

/// How many leases a silent worker stays listed (as gone) before it is dropped.
const WORKER_GONE_LEASES: u32 = 20;
/// How many leases a consumer that holds nothing stays in a task stream's group.
const CONSUMER_IDLE_LEASES: u32 = 10;
/// Shortest pause between two rounds.
const MIN_ROUND: Duration = Duration::from_millis(250);

/// Asks the queue, retrying until it answers, whether it lost its data (or is new).
pub(super) async fn lost_data_at_start(upkeep: &dyn Upkeep, shutdown: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200));
    loop {
        match upkeep.lost_data().await {
            Ok(lost) => return lost,
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff.peek(), "Redis is not answering; retrying.");
                if !backoff.sleep_unless(shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// The janitor loop: a round every quarter of the lease.
pub(super) async fn run(daemon: Arc<Daemon>, upkeep: Arc<dyn Upkeep>) {
    let round = (daemon.config.lease / 4).max(MIN_ROUND);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(round) => {}
            _ = daemon.shutdown.cancelled() => return,
        }
        if let Err(err) = one_round(&daemon, upkeep.as_ref()).await {
            tracing::warn!(error = %err, "Janitor round failed; trying again next round.");
        }
    }
}

async fn one_round(daemon: &Daemon, upkeep: &dyn Upkeep) -> Result<(), QueueError> {
    if let Some(holder) = &daemon.config.lease_holder {
        let state = upkeep
            .renew_scheduler_lease(holder, daemon.config.lease)
            .await?;
        if let LeaseState::TakenBy(other) = state {
            // Frozen past the lease while another scheduler started: two would split the
            // results. The other one has the prefix now; this one stops.
            tracing::error!(other, "Another scheduler took this Redis prefix; stopping.");
            daemon.shutdown.cancel();
            return Ok(());
        }
    }
    if upkeep.lost_data().await? {
        let runs: Vec<String> = daemon.lock_runs().keys().cloned().collect();
        tracing::warn!(
            runs = runs.len(),
            "Redis lost its data (restarted without persistence?); queueing the work in flight again."
        );
        for run in runs {
            daemon.send_to_run(&run, RoutedEvent::Requeue);
        }
    }
    // A worker killed without unregistering is listed as gone for a while, then dropped.
    for name in upkeep
        .forget_silent_workers(daemon.config.lease * WORKER_GONE_LEASES)
        .await?
    {
        tracing::info!(
            worker = name,
            "Dropped a worker that stopped heartbeating long ago."
        );
    }
    for queue in upkeep.task_queues().await? {
        // Each task taken back becomes a `lost` result on the events stream, applied (and
        // acknowledged after its commit) like any other result.
        for reclaimed in upkeep.reclaim_idle(&queue, daemon.config.lease).await? {
            daemon.metrics.lease_lost(&queue);
            tracing::warn!(task = %reclaimed.task.key, "A worker stopped heartbeating; took its task back.");
        }
        let idle = daemon.config.lease * CONSUMER_IDLE_LEASES;
        let forgotten = upkeep.forget_idle_consumers(&queue, idle).await?;
        if forgotten > 0 {
            tracing::debug!(queue, forgotten, "Forgot consumers of stopped workers.");
        }
    }
    Ok(())
}
