//! A worker process's life around the worker loop, for `sluice worker`: heartbeats that
//! advertise it and renew its leases (and stop its steps when it cannot, see `heartbeat`),
//! the drain on SIGTERM with its grace period, and leaving the registry when it stops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::executor::StepExecutor;
use crate::gpu::GpuInventory;
use crate::pool::{run_worker_with, WorkerConfig, WorkerHooks};
use crate::queue::{QueueError, RedisQueue, TaskQueue, WorkerInfo};
use crate::task::{now_ms, TaskKey};

/// How a worker process runs: its worker loop, and the timings around it.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Name, queues, slots and GPUs, as the worker loop takes them.
    pub worker: WorkerConfig,
    /// How often it says it is alive and renews its leases.
    pub heartbeat: Duration,
    /// The scheduler's lease: cut off from Redis for three quarters of it, the worker stops
    /// its steps and hands them back.
    pub lease: Duration,
    /// After `shutdown`, how long running steps may take before they are handed back.
    pub grace: Duration,
}

/// Runs the worker until `shutdown` (stop taking work, let running steps finish within the
/// grace period) or `abandon` (hand the running steps back at once), then leaves the registry.
pub async fn serve(
    redis: Arc<RedisQueue>,
    executor: StepExecutor,
    config: ServiceConfig,
    shutdown: CancellationToken,
    abandon: CancellationToken,
) -> Result<(), QueueError> {
    let busy = Arc::new(AtomicUsize::new(0));
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let name = config.worker.name.clone();
    let info = WorkerInfo {
        name: name.clone(),
        queues: config.worker.queues.clone(),
        slots: config.worker.slots,
        gpus: config.worker.gpus.clone(),
        gpus_free: None,
        running: 0,
        docker: executor.has_docker(),
        heartbeat_ms: 0,
    };
    let gpus = GpuInventory::new(config.worker.gpus.clone());
    let beating = CancellationToken::new();
    let heartbeats = tokio::spawn(heartbeat(
        redis.clone(),
        info,
        (busy.clone(), gpus.clone()),
        lost_tx,
        (config.heartbeat, config.lease),
        beating.clone(),
    ));
    // Stop taking work at once on SIGTERM; the grace period starts then.
    let (grace, abandon_after_grace, draining) = (config.grace, abandon.clone(), shutdown.clone());
    tokio::spawn(async move {
        draining.cancelled().await;
        tokio::time::sleep(grace).await;
        abandon_after_grace.cancel();
    });
    // Once steps are handed back, nothing more is reported: close the queue so that a report
    // still retrying an unreachable Redis gives up instead of holding the exit.
    let closing = (abandon.clone(), redis.clone());
    tokio::spawn(async move {
        closing.0.cancelled().await;
        closing.1.close();
    });
    let queue: Arc<dyn TaskQueue> = redis.clone();
    let outcome = run_worker_with(
        queue,
        Arc::new(executor),
        config.worker,
        shutdown,
        WorkerHooks {
            lost: Some(lost_rx),
            abandon,
            busy,
            gpus: Some(gpus),
        },
    )
    .await;
    beating.cancel();
    let _ = heartbeats.await;
    // Best effort: a Redis that is away must not keep a stopping worker alive.
    match tokio::time::timeout(Duration::from_secs(3), redis.unregister(&name)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "Could not remove this worker from the registry.")
        }
        Err(_) => tracing::warn!("Redis did not answer; left this worker in the registry."),
    }
    redis.close();
    outcome
}

/// Heartbeats until `stop`: advertises the worker and renews its leases; tasks whose lease
/// was lost are passed on to be stopped.
async fn heartbeat(
    redis: Arc<RedisQueue>,
    mut info: WorkerInfo,
    (busy, gpus): (Arc<AtomicUsize>, Arc<GpuInventory>),
    lost: mpsc::UnboundedSender<TaskKey>,
    (every, lease): (Duration, Duration),
    stop: CancellationToken,
) {
    // Cut off from Redis (a partition, not a crash), this worker's steps go on while the
    // janitor gives them to others once their lease runs out. Stopping them a quarter lease
    // before that keeps a step from running twice at once.
    let fence_after = lease * 3 / 4;
    let mut last_renewed = tokio::time::Instant::now();
    let mut fenced = false;
    loop {
        info.running = busy.load(Ordering::Relaxed);
        info.gpus_free = Some(gpus.free_count());
        info.heartbeat_ms = now_ms();
        let beat = tokio::select! {
            beat = redis.heartbeat(&info) => beat,
            _ = stop.cancelled() => return,
        };
        match beat {
            Ok(keys) => {
                last_renewed = tokio::time::Instant::now();
                fenced = false;
                for key in keys {
                    let _ = lost.send(key);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "Heartbeat failed; retrying.");
                if !fenced && last_renewed.elapsed() >= fence_after {
                    let held = redis.held_tasks();
                    tracing::error!(
                        steps = held.len(),
                        silent = ?last_renewed.elapsed(),
                        "Could not renew leases for most of a lease; stopping this worker's steps and handing them back."
                    );
                    for key in held {
                        let _ = lost.send(key);
                    }
                    fenced = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
