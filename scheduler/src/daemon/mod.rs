//! The scheduler daemon: many runs at once, driven from one queue.
//!
//! Each run has its own [`RunDriver`] task. One router reads worker events from the queue for
//! every run and hands each run its share; a batch is acknowledged to the queue only once every
//! run it touched has committed it (commit first, then acknowledge, across runs). With workers on
//! other machines, a janitor takes back tasks whose worker stopped heartbeating and notices when
//! the shared queue lost its data; on start the daemon picks up every run that was in flight.
//! Every driver counts what it commits into the daemon's [`Metrics`] (see [`crate::metrics`]).

mod catalog;
mod follow;
mod janitor;
pub mod notify;
mod router;
mod schedule;
mod scrape;
mod start;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sluice_worker::gpu::GpuInventory;
use sluice_worker::queue::{LogReader, Upkeep, WorkerInfo, WorkerRegistry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Engine, EngineError, RoutedEvent, RunDriver};
use crate::metrics::{Metrics, RunTally};
use crate::store::marks::{self, CancelMark};
use crate::store::{RunLookup, RunRecord};

pub use catalog::{Catalog, LoadError};
pub use start::{Origin, Started};

/// How a daemon is set up.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Folder of pipeline files.
    pub pipelines_dir: PathBuf,
    /// Folders outside `pipelines_dir` that `watch:` triggers may read.
    pub watch_allowed: Vec<PathBuf>,
    /// This scheduler's name in the shared queue's lease (remote workers only); the janitor
    /// renews it and stops the daemon if another scheduler took it.
    pub lease_holder: Option<String>,
    /// How long a worker may go without renewing a task's lease before the janitor takes the
    /// task back (remote workers only).
    pub lease: Duration,
    /// Notification targets of pipelines that have no `notify:` of their own.
    pub notify: Vec<crate::spec::notify::Notify>,
}

/// Where the daemon learns which workers exist.
pub enum Workers {
    /// Workers on other machines, that heartbeat through a shared queue.
    Remote(RemoteWorkers),
    /// The in-process workers of `sluice server`.
    InProcess(Vec<InProcessWorker>),
}

/// What the daemon needs of a queue shared with workers on other machines, besides carrying
/// tasks: each a trait object, so the daemon never names the transport (built in `cli`).
pub struct RemoteWorkers {
    /// The workers' heartbeats (`/api/v1/workers`, `/metrics`) and whether the queue answers
    /// (`/readyz`).
    pub registry: Arc<dyn WorkerRegistry>,
    /// Step logs the workers sent, for attempts whose files are not on this machine.
    pub logs: Arc<dyn LogReader>,
    /// The janitor's work: lost data, the scheduler lease, silent workers' tasks.
    pub upkeep: Arc<dyn Upkeep>,
}

impl RemoteWorkers {
    /// All three from one queue that offers them all.
    pub fn of<Q: WorkerRegistry + LogReader + Upkeep + 'static>(queue: Arc<Q>) -> RemoteWorkers {
        RemoteWorkers {
            registry: queue.clone(),
            logs: queue.clone(),
            upkeep: queue,
        }
    }
}

/// An in-process worker of `sluice server`: what it advertises, with its live load (read by
/// `/api/v1/workers` and `/metrics` as a remote worker's heartbeat would say it).
pub struct InProcessWorker {
    /// Name, queues, slots and GPUs.
    pub info: WorkerInfo,
    /// How many tasks it runs now: the counter its worker loop keeps (`WorkerHooks::busy`).
    pub busy: Arc<AtomicUsize>,
    /// The GPUs its worker loop leases to steps (`WorkerHooks::gpus`).
    pub gpus: Arc<GpuInventory>,
}

/// A run being driven: how to reach its driver.
struct RunHandle {
    pipeline: String,
    /// Waiting for a concurrency slot (`overlap: queue`), no step started yet.
    waiting: bool,
    events: mpsc::UnboundedSender<RoutedEvent>,
    cancel: CancellationToken,
}

/// Why a trigger did not start a run.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// No loaded pipeline has that name.
    #[error("no pipeline named `{0}` is loaded")]
    UnknownPipeline(String),
    /// The params do not fit the pipeline's declarations.
    #[error("{0}")]
    Params(String),
    /// A retry named no run, or a prefix several runs share.
    #[error("{0}")]
    UnknownRun(String),
    /// A retry of that run cannot be made as asked (still going, nothing failed, no such step).
    #[error("{0}")]
    CannotRetry(String),
    /// The daemon is shutting down.
    #[error("the scheduler is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Engine(EngineError),
}

/// Why a cancel did not go through.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No run has that id (or prefix).
    #[error("no run `{0}`")]
    UnknownRun(String),
    /// Several runs start with that prefix.
    #[error("`{0}` matches several runs; give more of the id")]
    Ambiguous(String),
    /// The run already ended.
    #[error("run `{0}` already finished ({1})")]
    Finished(String, &'static str),
    /// The run is unfinished but this daemon does not drive it (its definition is unreadable).
    #[error("run `{0}` is not being driven by this scheduler")]
    NotDriven(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The scheduler: pipelines, runs in flight, and the loops that keep them moving.
pub struct Daemon {
    engine: Engine,
    config: DaemonConfig,
    catalog: RwLock<Catalog>,
    runs: Mutex<HashMap<String, RunHandle>>,
    committed: mpsc::UnboundedSender<u64>,
    workers: Workers,
    shutdown: CancellationToken,
    drivers: TaskTracker,
    /// Held while a trigger decides and creates its run, so that checks (a delivery seen, an
    /// instant fired, the concurrency limit) and the run they allow are one step under races.
    trigger_lock: Mutex<()>,
    /// Wakes runs waiting for a concurrency slot.
    slot_freed: tokio::sync::Notify,
    /// When this daemon started, ms since the epoch (runs that ended long before are not
    /// notified about).
    started_ms: u64,
    /// The last store probe of `/readyz` and when it ran: reused for a second, so that an
    /// unauthenticated caller cannot make the store flush (or reopen) at will.
    store_probe: Mutex<Option<(std::time::Instant, Result<(), String>)>>,
    /// What `/metrics` counts: runs, steps, triggers, webhook refusals, leases lost.
    metrics: Metrics,
}

impl Daemon {
    /// Loads the pipelines, starts the router (and with remote workers the janitor), and picks up
    /// every run that was in flight when the last daemon stopped.
    pub async fn start(
        engine: Engine,
        config: DaemonConfig,
        workers: Workers,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Daemon>> {
        let catalog = Catalog::load(&config.pipelines_dir, &config.watch_allowed).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the pipelines folder {}: {e}",
                config.pipelines_dir.display()
            )
        })?;
        let (committed, committed_rx) = mpsc::unbounded_channel();
        let daemon = Arc::new(Daemon {
            engine,
            config,
            catalog: RwLock::new(catalog),
            runs: Mutex::new(HashMap::new()),
            committed,
            workers,
            shutdown,
            drivers: TaskTracker::new(),
            trigger_lock: Mutex::new(()),
            slot_freed: tokio::sync::Notify::new(),
            started_ms: sluice_worker::task::now_ms(),
            store_probe: Mutex::new(None),
            metrics: Metrics::default(),
        });
        // Before picking runs up: what an emptied shared queue lost must be queued again.
        let queue_lost_data = match &daemon.workers {
            Workers::Remote(remote) => {
                janitor::lost_data_at_start(remote.upkeep.as_ref(), &daemon.shutdown).await
            }
            // In-process workers died with the last daemon and the memory queue is empty:
            // everything that was in flight must be queued again.
            Workers::InProcess(_) => true,
        };
        follow::arm_new_triggers(&daemon);
        daemon.reattach_unfinished(queue_lost_data)?;
        tokio::spawn(router::route_events(daemon.clone(), committed_rx));
        tokio::spawn(schedule::run(daemon.clone()));
        if let Workers::Remote(remote) = &daemon.workers {
            tokio::spawn(janitor::run(daemon.clone(), remote.upkeep.clone()));
        }
        Ok(daemon)
    }

    fn reattach_unfinished(self: &Arc<Self>, queue_lost_data: bool) -> anyhow::Result<()> {
        let ids = self.engine.store.unfinished_runs()?;
        for id in ids {
            let tally = Box::new(RunTally::new(self.metrics.clone(), self.final_steps(&id)));
            match RunDriver::reattach(self.engine.clone(), &id, tally, queue_lost_data) {
                Ok(driver) => {
                    tracing::info!(run = %id, pipeline = %driver.run().pipeline, "Picked up a run in flight.");
                    let cancel_requested = matches!(
                        self.engine
                            .store
                            .mark::<CancelMark>(&marks::cancel_key(&id)),
                        Ok(Some(_))
                    );
                    self.spawn_driver(driver, cancel_requested);
                }
                Err(err) => {
                    tracing::error!(run = %id, error = %err, "Cannot pick up a run in flight; it stays as it is.")
                }
            }
        }
        Ok(())
    }

    /// Names of the steps of run `id` that are final in the store: counted by the daemon that
    /// saw them end, not again by this one. A store that cannot say gives none (at worst such a
    /// step, committed again, is counted twice).
    fn final_steps(&self, id: &str) -> Vec<String> {
        let steps = self.engine.store.steps(id).unwrap_or_default();
        steps
            .into_iter()
            .filter(|s| s.status.is_terminal())
            .map(|s| s.name)
            .collect()
    }

    /// What `/metrics` counts (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The engine (store, queue, data dir).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Fires when the daemon is asked to stop.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `f` with the loaded pipelines.
    pub fn with_catalog<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&self.catalog.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the pipelines folder again; returns how many pipelines loaded and files failed.
    /// A file that stopped being valid keeps its last good version loaded (its errors are
    /// listed all the same).
    pub fn reload(&self) -> std::io::Result<(usize, usize)> {
        let catalog = {
            let previous = self.catalog.read().unwrap_or_else(|e| e.into_inner());
            Catalog::reload(
                &self.config.pipelines_dir,
                &self.config.watch_allowed,
                &previous,
            )?
        };
        let counts = (catalog.pipelines.len(), catalog.errors.len());
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = catalog;
        follow::arm_new_triggers(self);
        Ok(counts)
    }

    /// The workers known, with their last heartbeat.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, String> {
        match &self.workers {
            Workers::Remote(remote) => remote.registry.workers().await.map_err(|e| e.to_string()),
            Workers::InProcess(workers) => Ok(workers
                .iter()
                .map(|w| WorkerInfo {
                    heartbeat_ms: sluice_worker::task::now_ms(),
                    running: w.busy.load(Ordering::Relaxed),
                    gpus_free: Some(w.gpus.free_count()),
                    ..w.info.clone()
                })
                .collect()),
        }
    }

    /// Whether `worker` heartbeated within the lease at `now_ms`: one silent for longer is gone,
    /// and its tasks are being taken back.
    pub fn is_alive(&self, worker: &WorkerInfo, now_ms: u64) -> bool {
        u128::from(now_ms.saturating_sub(worker.heartbeat_ms)) <= self.config.lease.as_millis()
    }

    /// How long a worker may be silent before its tasks are taken back.
    pub fn lease(&self) -> Duration {
        self.config.lease
    }

    /// Where step logs of workers on other machines are read, when the daemon has such workers.
    pub fn remote_logs(&self) -> Option<Arc<dyn LogReader>> {
        match &self.workers {
            Workers::Remote(remote) => Some(remote.logs.clone()),
            Workers::InProcess(_) => None,
        }
    }

    /// Whether the daemon can take work: its store can write (a probe record, flushed) and its
    /// queue answers.
    pub async fn ready(&self) -> Result<(), String> {
        self.store_writes().await?;
        match &self.workers {
            Workers::Remote(remote) => remote.registry.ping().await.map_err(|e| e.to_string()),
            Workers::InProcess(_) => Ok(()),
        }
    }

    /// Whether the store can write, probed at most once a second.
    async fn store_writes(&self) -> Result<(), String> {
        const FRESH: std::time::Duration = std::time::Duration::from_secs(1);
        let last = self
            .store_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((_, result)) = last.filter(|(at, _)| at.elapsed() < FRESH) {
            return result;
        }
        let store = self.engine.store.clone();
        let result = match tokio::task::spawn_blocking(move || store.probe_write()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("the store cannot write: {err}")),
            Err(err) => Err(format!("the store check did not finish: {err}")),
        };
        *self.store_probe.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), result.clone()));
        result
    }

    /// Asks a run to stop: queued steps are withdrawn, running ones killed on their workers.
    /// `by` names who asked (an API token's name, `api`, `cli`); it is recorded with the cancel.
    pub fn cancel(&self, id_or_prefix: &str, by: &str) -> Result<RunRecord, CancelError> {
        let run = match self.engine.store.lookup_run(id_or_prefix)? {
            RunLookup::Found(run) => run,
            RunLookup::NotFound => return Err(CancelError::UnknownRun(id_or_prefix.into())),
            RunLookup::Ambiguous => return Err(CancelError::Ambiguous(id_or_prefix.into())),
        };
        if run.status.is_terminal() {
            return Err(CancelError::Finished(run.id, run.status.as_str()));
        }
        if !self.lock_runs().contains_key(&run.id) {
            return Err(CancelError::NotDriven(run.id));
        }
        // Recorded before it is acknowledged: a scheduler restarted before the run ended
        // cancels it again.
        let mut changes = crate::store::Changes::default();
        let mark = CancelMark {
            at_ms: sluice_worker::task::now_ms(),
            by: by.to_string(),
        };
        changes.put_mark(&marks::cancel_key(&run.id), &mark);
        self.engine.store.commit(&changes)?;
        if let Some(handle) = self.lock_runs().get(&run.id) {
            handle.cancel.cancel();
        }
        tracing::info!(run = %run.id, by, "Run cancel requested.");
        Ok(run)
    }

    /// Waits for the drivers to wind down after `shutdown` (they stop where they are: every
    /// change they made is committed, and the next daemon picks the runs up).
    pub async fn wait_idle(&self, limit: Duration) {
        self.drivers.close();
        let _ = tokio::time::timeout(limit, self.drivers.wait()).await;
    }

    fn spawn_driver(self: &Arc<Self>, driver: RunDriver, cancel_requested: bool) {
        let (events, events_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        if cancel_requested {
            cancel.cancel();
        }
        let run_id = driver.run().id.clone();
        let pipeline = driver.run().pipeline.clone();
        self.lock_runs().insert(
            run_id.clone(),
            RunHandle {
                pipeline,
                waiting: driver.is_waiting(),
                events,
                cancel: cancel.clone(),
            },
        );
        let mut driver = driver.routed(events_rx, self.committed.clone());
        let daemon = self.clone();
        self.drivers.spawn(async move {
            let outcome = tokio::select! {
                outcome = async {
                    if driver.is_waiting() {
                        daemon.wait_for_slot(&mut driver, &cancel).await?;
                    }
                    driver.drive(cancel.clone()).await
                } => Some(outcome),
                // Stopping the daemon leaves the run where its last commit left it.
                _ = daemon.shutdown.cancelled() => None,
            };
            daemon.lock_runs().remove(&run_id);
            daemon.slot_freed.notify_waiters();
            crate::heap::release_soon();
            match outcome {
                Some(Ok(run)) => {
                    tracing::info!(run = %run.id, status = run.status.as_str(), "Run finished.")
                }
                Some(Err(err)) => {
                    tracing::error!(run = %run_id, error = %err, "Driving the run failed; it resumes when the scheduler restarts.")
                }
                None => {}
            }
        });
    }

    /// Hands a routed event to a run's driver; false when the run is not being driven.
    fn send_to_run(&self, run_id: &str, event: RoutedEvent) -> bool {
        self.lock_runs()
            .get(run_id)
            .is_some_and(|handle| handle.events.send(event).is_ok())
    }

    fn lock_runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunHandle>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Folder that relative workdirs of a pipeline resolve against: its file's folder.
fn base_dir_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}
