//! The worker loop: take tasks from the queue, run up to `slots` at once, report what happened.
//!
//! The embedded mode runs this loop in-process over the in-memory queue; `sluice worker` runs the
//! same loop over Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::gpu::{GpuInventory, GpuLease};
use crate::queue::{QueueError, TaskQueue};
use crate::task::{now_ms, StepCommand, TaskKey, TaskResult, WorkerEvent};

/// How a worker loop is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name in events and labels.
    pub name: String,
    /// Queues to take tasks from, in order of preference.
    pub queues: Vec<String>,
    /// Most tasks run at once.
    pub slots: usize,
    /// The GPUs this worker owns (device ids); GPU steps lease them one attempt at a time.
    pub gpus: Vec<String>,
    /// A data dir of this worker's own, where it keeps attempt folders (`runs/...`) instead of
    /// the scheduler's paths: a worker on another machine shares no folder with the scheduler.
    pub data_dir: Option<std::path::PathBuf>,
}

/// How long a step runs before its `Started` is sent on its own. A step that ends sooner sends
/// it with its result: one round trip and one scheduler batch instead of two for a quick step.
/// Its start time is the real one either way; only the scheduler's "running" shows this late.
const STARTED_ALONE_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs cancellations just received, remembered briefly so a task taken in the same instant as
/// its run was cancelled does not start.
const REMEMBERED_CANCELS: usize = 1024;

#[derive(Default)]
struct Running {
    tokens: HashMap<TaskKey, CancellationToken>,
    /// Running tasks a cancel of their run does not stop (`finally:` steps).
    outlive_cancel: std::collections::HashSet<TaskKey>,
    recently_cancelled: VecDeque<String>,
    /// Tasks stopped because their lease is gone: handed back, never reported (a report could
    /// only be refused, or, when Redis itself was away, end a step the scheduler still runs).
    handed_back: std::collections::HashSet<TaskKey>,
}

/// Extra controls of a worker loop, for `sluice worker` (the embedded mode needs none).
#[derive(Default)]
pub struct WorkerHooks {
    /// Tasks whose lease this worker lost (the janitor gave them to another worker): they are
    /// stopped, since their results would be refused.
    pub lost: Option<mpsc::UnboundedReceiver<TaskKey>>,
    /// Fired when a draining worker's grace period is over: what still runs is stopped and
    /// handed back unreported, so the scheduler runs it again elsewhere.
    pub abandon: CancellationToken,
    /// How many tasks run now (for heartbeats).
    pub busy: Arc<AtomicUsize>,
    /// The GPUs the loop leases to steps, when the caller wants to see which are free (for
    /// heartbeats); `None` makes one of the configured GPUs.
    pub gpus: Option<Arc<GpuInventory>>,
}

/// Runs the worker loop until `shutdown` fires or the queue closes; waits for running tasks.
pub async fn run_worker(
    queue: Arc<dyn TaskQueue>,
    executor: Arc<dyn Executor>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), QueueError> {
    run_worker_with(queue, executor, config, shutdown, WorkerHooks::default()).await
}

/// [`run_worker`] with [`WorkerHooks`].
pub async fn run_worker_with(
    queue: Arc<dyn TaskQueue>,
    executor: Arc<dyn Executor>,
    config: WorkerConfig,
    shutdown: CancellationToken,
    hooks: WorkerHooks,
) -> Result<(), QueueError> {
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    let gpus = hooks
        .gpus
        .unwrap_or_else(|| GpuInventory::new(config.gpus.clone()));
    let running = Arc::new(Mutex::new(Running::default()));
    let cancel_listener = tokio::spawn(listen_for_cancels(
        queue.cancellations(),
        running.clone(),
        shutdown.clone(),
    ));
    let stop_listener = tokio::spawn(stop_lost_and_abandoned(
        hooks.lost,
        hooks.abandon.clone(),
        running.clone(),
    ));
    let abandon = hooks.abandon;
    let busy = hooks.busy;
    let mut tasks = tokio::task::JoinSet::new();
    let outcome = loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
            _ = shutdown.cancelled() => break Ok(()),
        };
        let task = tokio::select! {
            task = queue.take(&config.queues) => match task {
                Ok(task) => task,
                Err(QueueError::Closed) => break Ok(()),
                Err(err) => {
                    // The queue retries Redis itself; this is a last guard against a tight loop.
                    tracing::warn!(error = %err, "Could not take a task.");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break Ok(()),
        };
        let token = CancellationToken::new();
        {
            let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
            if task.outlives_cancel {
                running.outlive_cancel.insert(task.key.clone());
            } else if running.recently_cancelled.contains(&task.key.run_id) {
                token.cancel();
            }
            running.tokens.insert(task.key.clone(), token.clone());
        }
        let queue = queue.clone();
        let executor = executor.clone();
        let running = running.clone();
        let worker = config.name.clone();
        let gpus = gpus.clone();
        let abandon = abandon.clone();
        let busy = busy.clone();
        busy.fetch_add(1, Ordering::Relaxed);
        let mut task = task;
        let relocated = match &config.data_dir {
            Some(dir) => task.relocate(dir),
            None => Ok(()),
        };
        tasks.spawn(async move {
            let leased = match relocated {
                Ok(()) => lease_gpus(&gpus, &mut task, &token).await,
                Err(message) => Err(message),
            };
            // The step's `Started` while it is unsent: a step that ends within
            // STARTED_ALONE_AFTER sends it with its result, in one round trip.
            let mut unsent_start = None;
            // Whether its log was streamed: then the log's end markers go with the result.
            let mut streamed_logs = false;
            let result = match leased {
                Err(message) => TaskResult::error(task.key.clone(), message),
                Ok(lease) => {
                    // Started once the step has what it needs: a wait for a free GPU is not run time.
                    let started = WorkerEvent::Started {
                        key: task.key.clone(),
                        worker: worker.clone(),
                        at_ms: now_ms(),
                    };
                    {
                        // Run in a task of its own so a panicking executor still yields a result
                        // and the scheduler is not left waiting for a task it saw start.
                        let (executor, spec) = (executor.clone(), task.clone());
                        let ended = CancellationToken::new();
                        // A built-in step writes no log: nothing to stream.
                        let writes_logs = !matches!(task.command, StepCommand::Builtin(_));
                        let logs = (queue.streams_logs() && writes_logs).then(|| {
                            tokio::spawn(crate::log_stream::stream_logs(
                                queue.clone(),
                                task.clone(),
                                ended.clone(),
                            ))
                        });
                        let mut run =
                            tokio::spawn(async move { executor.run(&spec, token).await });
                        let outcome = match tokio::time::timeout(STARTED_ALONE_AFTER, &mut run).await {
                            Ok(outcome) => {
                                unsent_start = Some(started);
                                outcome
                            }
                            Err(_) => {
                                // A queue closed meanwhile fails the result's report too: the
                                // task is then taken back, as any unsettled task is.
                                let _ = queue.report(started).await;
                                run.await
                            }
                        };
                        drop(lease);
                        ended.cancel();
                        if let Some(logs) = logs {
                            let _ = logs.await;
                            streamed_logs = true;
                        }
                        match outcome {
                            Ok(result) => result,
                            Err(err) => TaskResult::error(
                                task.key.clone(),
                                format!("the executor crashed: {err}"),
                            ),
                        }
                    }
                }
            };
            {
                let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
                running.tokens.remove(&task.key);
                running.outlive_cancel.remove(&task.key);
            }
            busy.fetch_sub(1, Ordering::Relaxed);
            let handed_back = running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .handed_back
                .remove(&task.key);
            if abandon.is_cancelled() || handed_back {
                if streamed_logs {
                    crate::log_stream::end_logs(queue.as_ref(), &task).await;
                }
                queue.hand_back(&task);
                // Handed back: neither reported nor acknowledged; the janitor takes it back.
                tracing::warn!(task = %task.key, "Stopped a task at the end of the grace period; handed back.");
                drop(permit);
                return;
            }
            let mut result = result;
            result.worker.get_or_insert(worker);
            // Only a reported result lets the queue forget the delivery.
            let mut events: Vec<WorkerEvent> = unsent_start.into_iter().collect();
            events.push(WorkerEvent::Finished(result));
            let log_ends: &[&str] = match streamed_logs {
                true => &crate::log_stream::LOG_STREAMS,
                false => &[],
            };
            if let Err(err) = queue.finish(&task, events, log_ends).await {
                tracing::warn!(task = %task.key, error = %err, "Could not report a finished task.");
            }
            drop(permit);
        });
        // Reap finished tasks as we go so the set does not grow with every task ever run.
        while tasks.try_join_next().is_some() {}
    };
    while tasks.join_next().await.is_some() {}
    cancel_listener.abort();
    stop_listener.abort();
    outcome
}

/// Stops tasks whose lease was lost, and every task once `abandon` fires.
async fn stop_lost_and_abandoned(
    lost: Option<mpsc::UnboundedReceiver<TaskKey>>,
    abandon: CancellationToken,
    running: Arc<Mutex<Running>>,
) {
    let mut lost = lost;
    loop {
        let key = tokio::select! {
            key = async {
                match lost.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match key {
                Some(key) => Some(key),
                None => {
                    lost = None;
                    continue;
                }
            },
            _ = abandon.cancelled() => None,
        };
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        match key {
            Some(key) => {
                if let Some(token) = running.tokens.get(&key).cloned() {
                    tracing::warn!(task = %key, "Stopping a task whose lease was lost.");
                    running.handed_back.insert(key);
                    token.cancel();
                }
            }
            None => {
                for token in running.tokens.values() {
                    token.cancel();
                }
                return;
            }
        }
    }
}

/// Leases the GPUs a task asks for and writes their ids into it. A container step on a worker
/// that knows no GPUs passes its request to Docker as written (`--gpus` semantics).
async fn lease_gpus(
    gpus: &Arc<GpuInventory>,
    task: &mut crate::task::TaskSpec,
    cancel: &CancellationToken,
) -> Result<Option<GpuLease>, String> {
    let Some(request) = task.resources.gpu.clone() else {
        if !gpus.ids().is_empty() && task.image.is_none() {
            // A step that asked for no GPU gets none of this worker's, which other steps lease.
            task.env
                .push(("CUDA_VISIBLE_DEVICES".into(), String::new()));
        }
        return Ok(None);
    };
    if gpus.ids().is_empty() && task.image.is_some() {
        return Ok(None);
    }
    let lease = tokio::select! {
        lease = gpus.acquire(&request) => lease?,
        _ = cancel.cancelled() => return Err("cancelled while waiting for a free GPU".into()),
    };
    task.gpus = lease.ids().to_vec();
    Ok(Some(lease))
}

async fn listen_for_cancels(
    mut cancels: broadcast::Receiver<String>,
    running: Arc<Mutex<Running>>,
    shutdown: CancellationToken,
) {
    loop {
        let run_id = tokio::select! {
            // A cancel sent just before shutdown still reaches the tasks it is for.
            biased;
            received = cancels.recv() => match received {
                Ok(run_id) => run_id,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        for (key, token) in &running.tokens {
            if key.run_id == run_id && !running.outlive_cancel.contains(key) {
                token.cancel();
            }
        }
        if running.recently_cancelled.len() >= REMEMBERED_CANCELS {
            running.recently_cancelled.pop_front();
        }
        running.recently_cancelled.push_back(run_id);
    }
}
