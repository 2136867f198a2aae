//! A data dir's API while one process holds it.
//!
//! sled lets one process open a store. While `sluice run` holds a data dir, it serves the
//! run API on a Unix socket in that data dir (`sluice.sock`, mode 0600): `sluice runs`, `show`,
//! `logs --follow` and `cancel` on the data dir go through it, and another `sluice run` hands
//! its pipeline to this process, which runs it beside its own (each hosted run with a worker
//! pool of its own, sharing the store) while the other process follows it through the socket.
//!
//! Hand-over: when its own run is over, the holder goes on hosting (and answering reads) until
//! no hosted run is left, then stops taking runs, removes the socket and closes the store. A
//! `sluice run` that comes in that last instant is answered 503, retries, finds no socket and
//! opens the store itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::daemon::CancelError;
use crate::store::{RunLookup, RunRecord, Store};

/// How long the hand-over waits for answers in flight (a client reading slowly cannot hold the
/// process).
const SERVER_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The socket's name inside the data dir.
pub const SOCKET_NAME: &str = "sluice.sock";

/// The socket of the process holding `data_dir`, when one answers on it.
pub fn live_socket(data_dir: &Path) -> Option<PathBuf> {
    let path = data_dir.join(SOCKET_NAME);
    std::os::unix::net::UnixStream::connect(&path)
        .ok()
        .map(|_| path)
}

/// A run another `sluice run` asks this process to run: what its flags said.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    /// The pipeline file (absolute: both processes are on this machine).
    pub file: PathBuf,
    /// `-p` values.
    #[serde(default)]
    pub params: Vec<(String, String)>,
    /// `--parallelism`.
    pub parallelism: Option<usize>,
    /// `--no-cache`.
    #[serde(default)]
    pub no_cache: bool,
    /// `--only`.
    #[serde(default)]
    pub only: Vec<String>,
    /// `--from`.
    pub from: Option<String>,
    /// `--until`.
    pub until: Option<String>,
}

/// Why a submission was not started.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The file, params or flags are wrong (the message says how, as `sluice run` would).
    #[error("{0}")]
    Invalid(String),
    /// This process is finishing and takes no new runs: try again in a moment.
    #[error("the sluice run holding this data dir is finishing; try again")]
    Finishing,
    /// Recording the run failed.
    #[error("{0}")]
    Failed(String),
}

/// A run created and committed, and the work that drives it to its end.
pub struct Launched {
    /// The run as created.
    pub run: RunRecord,
    /// Drives the run (and its workers) to the end.
    pub drive: BoxFuture<'static, ()>,
}

/// Creates a submitted run here: the holder knows how to assemble executors and workers.
pub type Launcher = Arc<
    dyn Fn(Submission, CancellationToken) -> BoxFuture<'static, Result<Launched, Refused>>
        + Send
        + Sync,
>;

/// The holder's side: its store, the runs it drives, and the socket's server.
pub struct Host {
    store: Store,
    socket: PathBuf,
    launcher: Launcher,
    /// Runs driven in this process, by id: their cancel tokens.
    live: Mutex<HashMap<String, CancellationToken>>,
    /// The hosted runs' drive tasks.
    hosted: TaskTracker,
    /// Parent of every run's cancel token: Ctrl-C on the holder stops them all.
    cancel_all: CancellationToken,
    /// Whether runs are taken; held for reading while one is being started, so the hand-over
    /// (which takes it for writing) never leaves a run half started.
    accepting: tokio::sync::RwLock<bool>,
    stop_serving: CancellationToken,
    /// The server, awaited at the hand-over so answers in flight (a followed log's end) are
    /// sent before the process exits.
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Host {
    /// Binds the socket in `data_dir` and serves it; `None` (logged) when it cannot be bound,
    /// then the data dir is simply not shared.
    pub async fn start(
        store: Store,
        data_dir: &Path,
        launcher: Launcher,
        cancel_all: CancellationToken,
    ) -> Option<Arc<Host>> {
        let socket = data_dir.join(SOCKET_NAME);
        let listener = match bind_private(&socket) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(socket = %socket.display(), error = %err, "Cannot serve the data dir to other sluice commands.");
                return None;
            }
        };
        let host = Arc::new(Host {
            store,
            socket,
            launcher,
            live: Mutex::new(HashMap::new()),
            hosted: TaskTracker::new(),
            cancel_all,
            accepting: tokio::sync::RwLock::new(true),
            stop_serving: CancellationToken::new(),
            server: Mutex::new(None),
        });
        let router = crate::api::host::router(host.clone());
        let stop = host.stop_serving.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "The data dir's socket stopped serving.");
            }
        });
        *host.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        Some(host)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Cancelled when the socket stops serving: followed logs end then.
    pub fn serving_token(&self) -> CancellationToken {
        self.stop_serving.clone()
    }

    /// A token for a run driven here (child of the holder's own cancel), recorded so a cancel
    /// through the socket reaches it.
    pub fn track(&self, run_id: &str) -> CancellationToken {
        let token = self.cancel_all.child_token();
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id.to_string(), token.clone());
        token
    }

    /// Cancels a run driven in this process.
    pub fn cancel(&self, id: &str) -> Result<RunRecord, CancelError> {
        let run = match self.store.lookup_run(id)? {
            RunLookup::Found(run) => run,
            RunLookup::NotFound => return Err(CancelError::UnknownRun(id.to_string())),
            RunLookup::Ambiguous => return Err(CancelError::Ambiguous(id.to_string())),
        };
        if run.status.is_terminal() {
            return Err(CancelError::Finished(run.id, run.status.as_str()));
        }
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(&run.id) {
            Some(token) => {
                token.cancel();
                Ok(run)
            }
            None => Err(CancelError::NotDriven(run.id)),
        }
    }

    /// Starts a submitted run beside the holder's own; the run as created.
    pub async fn submit(self: &Arc<Self>, submission: Submission) -> Result<RunRecord, Refused> {
        let accepting = self.accepting.read().await;
        if !*accepting {
            return Err(Refused::Finishing);
        }
        // The run's id is not known before it is created: its token is registered under it
        // right after, before its driving starts.
        let token = self.cancel_all.child_token();
        let launched = (self.launcher)(submission, token.clone()).await?;
        let run = launched.run.clone();
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.id.clone(), token);
        eprintln!(
            "hosting run {} of `{}`, started by another `sluice run` on this data dir",
            run.id, run.pipeline
        );
        let host = self.clone();
        let id = run.id.clone();
        self.hosted.spawn(async move {
            launched.drive.await;
            host.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
        drop(accepting);
        Ok(run)
    }

    /// Hands the data dir back: the hosted runs driven to their end (new ones are still taken
    /// and reads answered meanwhile), then no more runs, and the socket goes.
    pub async fn wind_down(&self) {
        let mut said = false;
        loop {
            self.hosted.close();
            let left = self.hosted.len();
            if left > 0 && !said {
                said = true;
                eprintln!(
                    "waiting for the runs other `sluice run`s started on this data dir ({left} now; Ctrl-C cancels them)"
                );
            }
            self.hosted.wait().await;
            let mut accepting = self.accepting.write().await;
            if self.hosted.is_empty() {
                *accepting = false;
                break;
            }
            // One came in while waiting: host it to its end too.
            self.hosted.reopen();
        }
        // New connections are refused from here; answers being sent are finished.
        let _ = std::fs::remove_file(&self.socket);
        self.stop_serving.cancel();
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(server) = server {
            let _ = tokio::time::timeout(SERVER_STOP_WAIT, server).await;
        }
    }
}

/// Binds a socket only this user can connect to: bound inside a fresh folder only this user
/// can enter, made 0600, then moved into place (replacing a socket a dead holder left), so it is
/// never reachable with looser permissions.
fn bind_private(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let staging = socket.with_extension(format!("sock.{}.d", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let inside = staging.join(SOCKET_NAME);
    let bound = tokio::net::UnixListener::bind(&inside).and_then(|listener| {
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, socket)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&staging);
    bound
}
