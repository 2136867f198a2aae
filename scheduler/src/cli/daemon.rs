//! `sluice scheduler`, `sluice server` and `sluice worker`: the long-running processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_worker::executor::{DockerExecutor, StepExecutor};
use sluice_worker::gpu::{parse_gpus_flag, GpuInventory};
use sluice_worker::pool::{run_worker_with, WorkerConfig, WorkerHooks};
use sluice_worker::queue::{MemoryQueue, RedisQueue, RedisQueueConfig, TaskQueue, WorkerInfo};
use sluice_worker::secrets::SecretKey;
use sluice_worker::service::{self, ServiceConfig};
use sluice_worker::task::now_ms;
use tokio_util::sync::CancellationToken;

use super::artifact_args::ArtifactArgs;
use super::run::{hostname, prepare_data_dir};
use super::secrets::SecretKeyArg;
use super::signals::StopSignals;
use super::{DataDirArg, EXIT_INVALID};
use crate::api::{self, ApiState};
use crate::daemon::{Daemon, DaemonConfig, InProcessWorker, RemoteWorkers, Workers};
use crate::engine::Engine;
use crate::store::Store;

/// How long a stopping daemon waits for its run drivers.
const DRIVER_STOP_WAIT: Duration = Duration::from_secs(5);

/// Where the daemon serves its API and what it serves.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder of pipeline files; invalid files are reported and skipped.
    #[arg(long, env = "SLUICE_PIPELINES", default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// Address of the HTTP API (`127.0.0.1:0` picks a free port, printed at start).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A token with every right (role `admin`, named `api-token`), brought as `Bearer`. With
    /// any token set, every API route but health checks and signed webhooks needs one.
    #[arg(long, env = "SLUICE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// A file of `NAME ROLE sha256:HEX` lines (`sluice token new`): named tokens with roles,
    /// kept off the command line.
    #[arg(long, env = "SLUICE_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Accept only timestamped webhook signatures (`t=<unix>,v1=<hex>`), which bound replays
    /// to five minutes, not the plain `sha256=` scheme.
    #[arg(long, env = "SLUICE_REQUIRE_WEBHOOK_TIMESTAMP")]
    pub require_webhook_timestamp: bool,
    /// Longest a client may take to send a request's headers before its connection is closed.
    #[arg(long, env = "SLUICE_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Most API connections open at once; more wait to be accepted.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A folder outside `--pipelines` that `watch:` triggers may read (repeat, or separate with
    /// commas); a pipeline watching any other folder is refused.
    #[arg(
        long = "allow-watch",
        env = "SLUICE_ALLOW_WATCH",
        value_delimiter = ','
    )]
    pub allow_watch: Vec<PathBuf>,
    /// Where to post the summary of runs of pipelines that have no `notify:` of their own
    /// (a `notify:` target's `webhook`).
    #[arg(long, env = "SLUICE_NOTIFY_WEBHOOK", value_name = "URL")]
    pub notify_webhook: Option<String>,
    /// With `--notify-webhook`: the run endings posted (`failed`, `succeeded`, `cancelled`).
    #[arg(
        long,
        env = "SLUICE_NOTIFY_ON",
        value_delimiter = ',',
        default_value = "failed"
    )]
    pub notify_on: Vec<String>,
    /// With `--notify-webhook`: `json` or `slack`.
    #[arg(long, env = "SLUICE_NOTIFY_FORMAT", default_value = "json")]
    pub notify_format: String,
    /// With `--notify-webhook`: the variable holding the secret that signs each post.
    #[arg(long, env = "SLUICE_NOTIFY_SECRET_ENV", value_name = "VAR")]
    pub notify_secret_env: Option<String>,
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

impl ServeArgs {
    /// The connection limits these flags set.
    fn limits(&self) -> crate::api::serve::ServeLimits {
        crate::api::serve::ServeLimits {
            header_timeout: self.header_timeout,
            max_connections: self.max_connections,
        }
    }
}

/// How to reach Redis.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis URL.
    #[arg(
        long,
        env = "SLUICE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis: String,
    /// Prefix of every key, so several deployments can share one Redis.
    #[arg(long, env = "SLUICE_REDIS_PREFIX", default_value = "sluice:")]
    pub redis_prefix: String,
    /// PEM file of the CA that signed a `rediss://` server's certificate, when the system
    /// does not trust it.
    #[arg(long, env = "SLUICE_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
}

/// Arguments of `sluice scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// How long a worker may go silent holding a task before the task is taken back and run
    /// again (as a new attempt, within the step's retry budget).
    #[arg(long, env = "SLUICE_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
}

/// Arguments of `sluice server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Most steps at once (default: twice the CPU count).
    #[arg(long, env = "SLUICE_SLOTS")]
    pub slots: Option<usize>,
    /// GPUs steps may lease: device ids (`0,1`) or `auto`.
    #[arg(long, env = "SLUICE_GPUS", default_value = "")]
    pub gpus: String,
    #[command(flatten)]
    pub secret_key: SecretKeyArg,
}

/// Arguments of `sluice worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Queues to take steps from, in order of preference.
    #[arg(
        long,
        env = "SLUICE_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,
    /// Most steps at once (default: the CPU count).
    #[arg(long, env = "SLUICE_SLOTS")]
    pub slots: Option<usize>,
    /// This worker's name; unique per worker (default: host name and process id).
    #[arg(long, env = "SLUICE_WORKER_NAME")]
    pub name: Option<String>,
    /// GPUs this worker hands to steps: device ids (`0,1`) or `auto`.
    #[arg(long, env = "SLUICE_GPUS", default_value = "")]
    pub gpus: String,
    /// How often the worker says it is alive and renews the leases of its steps; keep it well
    /// under the scheduler's `--lease`.
    #[arg(long, env = "SLUICE_HEARTBEAT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// The scheduler's `--lease`: a worker that cannot renew its steps' leases for three
    /// quarters of it stops them (they are being run elsewhere) and hands them back.
    #[arg(long, env = "SLUICE_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Where the worker records the process groups of its local steps, so that a restart on
    /// the same machine kills what a killed predecessor left running (default: a folder per
    /// worker name under the state or temporary folder).
    #[arg(long, env = "SLUICE_WORKER_STATE")]
    pub state_dir: Option<PathBuf>,
    /// After SIGTERM, how long running steps may take to finish before they are stopped and
    /// handed back to run elsewhere.
    #[arg(long, env = "SLUICE_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// This worker's own folder: attempt folders (`runs/`) and the cache of artifacts it
    /// fetched. It shares nothing with the scheduler's (default: `data` in the worker's state
    /// folder, see `--state-dir`).
    #[arg(long, env = "SLUICE_WORKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
    #[command(flatten)]
    pub secret_key: SecretKeyArg,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    start_runtime(tokio::runtime::Builder::new_multi_thread())
}

fn start_runtime(mut builder: tokio::runtime::Builder) -> anyhow::Result<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A worker's runtime: one thread for its async work (the queue, heartbeats, log streaming,
/// waiting on processes and containers), which is all waiting and small system calls; files
/// are prepared, inputs placed, outputs hashed and reports read on the blocking pool. One
/// thread spares the hand-offs between threads that a thread per CPU costs on every step (a
/// quarter of a worker's CPU in a chain of no-op steps, BENCHMARKS.md). `TOKIO_WORKER_THREADS`
/// sets another number.
fn worker_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    start_runtime(builder)
}

/// `sluice scheduler`: the daemon with Redis between it and the workers.
pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<u8> {
    let data_dir = prepare_data_dir(&args.serve.data.data_dir)?;
    let tokens = match api_tokens(&args.serve) {
        Ok(tokens) => tokens,
        Err(code) => return Ok(code),
    };
    let artifacts = match args.serve.artifacts.open(&data_dir) {
        Ok(artifacts) => artifacts,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(EXIT_INVALID);
        }
    };
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signals(shutdown.clone(), None));
        let listener = bind(args.serve.listen).await?;
        let store = Store::open(&data_dir)?;
        let redis = RedisQueue::connect(
            RedisQueueConfig {
                url: args.redis.redis.clone(),
                ca_cert: args.redis.redis_ca.clone(),
                prefix: args.redis.redis_prefix.clone(),
                consumer: "scheduler".into(),
                queues: Vec::new(),
            },
            shutdown.clone(),
        )
        .await
        .context("stopped before Redis answered")?;
        // One scheduler per prefix: two would split the results and strand runs.
        let holder = format!("{}:{}:{}", hostname(), std::process::id(), ulid::Ulid::new());
        if let Err(err) = redis.acquire_scheduler_lease(&holder, args.lease).await {
            eprintln!("error: {err}");
            return Ok(EXIT_INVALID);
        }
        let redis = Arc::new(redis);
        let queue: Arc<dyn TaskQueue> = redis.clone();
        let engine = Engine {
            store,
            queue: queue.clone(),
            data_dir,
            artifacts: artifacts.clone(),
        };
        let daemon = start_daemon(
            engine,
            &args.serve,
            (args.lease, Some(holder.clone())),
            Workers::Remote(RemoteWorkers::of(redis.clone())),
            &shutdown,
        )
        .await?;
        serve(listener, daemon, tokens, &args.serve).await?;
        // A clean stop hands the prefix over at once instead of after a lease.
        if let Err(err) = redis.release_scheduler_lease(&holder).await {
            tracing::warn!(error = %err, "Could not release the scheduler lease; it runs out by itself.");
        }
        queue.close();
        Ok(0)
    })
}

/// `sluice server`: the daemon with in-process workers, for one machine without Redis.
pub fn server(args: ServerArgs) -> anyhow::Result<u8> {
    let data_dir = prepare_data_dir(&args.serve.data.data_dir)?;
    let tokens = match api_tokens(&args.serve) {
        Ok(tokens) => tokens,
        Err(code) => return Ok(code),
    };
    let artifacts = match args.serve.artifacts.open(&data_dir) {
        Ok(artifacts) => artifacts,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(EXIT_INVALID);
        }
    };
    let gpus = match parse_gpus_flag(&args.gpus) {
        Ok(gpus) => gpus,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(EXIT_INVALID);
        }
    };
    let secret_key = match args.secret_key.load() {
        Ok(key) => key,
        Err(code) => return Ok(code),
    };
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        let name = format!("server:{}:{}", hostname(), std::process::id());
        let executor = executor(&name, secret_key)
            .await
            .with_artifacts(artifacts.clone());
        tokio::spawn(stop_on_signals(shutdown.clone(), None));
        let listener = bind(args.serve.listen).await?;
        let store = Store::open(&data_dir)?;
        let queue: Arc<dyn TaskQueue> = Arc::new(MemoryQueue::default());
        let slots = args
            .slots
            .unwrap_or_else(crate::engine::default_parallelism)
            .max(1);
        let info = WorkerInfo {
            name: name.clone(),
            queues: vec!["*".into()],
            slots,
            gpus: gpus.clone(),
            gpus_free: None,
            running: 0,
            docker: executor.has_docker(),
            heartbeat_ms: now_ms(),
        };
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inventory = GpuInventory::new(gpus.clone());
        let engine = Engine {
            store,
            queue: queue.clone(),
            data_dir,
            artifacts: artifacts.clone(),
        };
        let workers_stop = CancellationToken::new();
        // The lease only matters with Redis (there is no janitor in-process).
        let lease = Duration::from_secs(30);
        let daemon = start_daemon(
            engine,
            &args.serve,
            (lease, None),
            Workers::InProcess(vec![InProcessWorker {
                info,
                busy: busy.clone(),
                gpus: inventory.clone(),
            }]),
            &shutdown,
        )
        .await?;
        // In-process workers serve every queue, also those a reloaded pipeline adds.
        let queues = vec!["*".to_string()];
        let workers = tokio::spawn(run_worker_with(
            queue.clone(),
            Arc::new(executor),
            WorkerConfig {
                name,
                queues,
                slots,
                gpus,
                data_dir: None,
            },
            workers_stop.clone(),
            // The daemon reads its load through these (`/api/v1/workers`, `/metrics`).
            WorkerHooks {
                busy,
                gpus: Some(inventory),
                ..WorkerHooks::default()
            },
        ));
        serve(listener, daemon, tokens, &args.serve).await?;
        // Steps still running are stopped; the next start picks their runs up.
        workers_stop.cancel();
        queue.close();
        let _ = tokio::time::timeout(DRIVER_STOP_WAIT, workers).await;
        sluice_worker::executor::local::kill_running_groups();
        Ok(0)
    })
}

async fn start_daemon(
    engine: Engine,
    serve: &ServeArgs,
    (lease, lease_holder): (Duration, Option<String>),
    workers: Workers,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Daemon>> {
    let config = DaemonConfig {
        pipelines_dir: serve.pipelines.clone(),
        watch_allowed: serve.allow_watch.clone(),
        lease_holder,
        lease,
        notify: default_notify(serve)?,
    };
    Daemon::start(engine, config, workers, shutdown.clone()).await
}

/// The daemon-wide notification target of `--notify-webhook`, checked as a `notify:` entry is.
fn default_notify(serve: &ServeArgs) -> anyhow::Result<Vec<crate::spec::notify::Notify>> {
    let Some(webhook) = &serve.notify_webhook else {
        return Ok(Vec::new());
    };
    // Read by the pipeline reader itself (JSON is YAML), so the flags get its checks.
    let mut target = serde_json::json!({
        "webhook": webhook,
        "on": serve.notify_on,
        "format": serve.notify_format,
    });
    if let Some(var) = &serve.notify_secret_env {
        target["secret_env"] = serde_json::json!(var);
    }
    let yaml = serde_json::json!({
        "name": "flags",
        "notify": [target],
        "steps": {"a": {"run": "true"}},
    });
    let text = serde_json::to_string(&yaml)?;
    crate::spec::parse_str("--notify-webhook", &text)
        .map(|p| p.notify)
        .map_err(|diags| {
            let message = diags.first().map(|d| d.message.clone()).unwrap_or_default();
            anyhow::anyhow!("--notify-*: {message}")
        })
}

/// The tokens the API accepts; a tokens file that cannot be used stops the daemon (exit 2).
fn api_tokens(serve: &ServeArgs) -> Result<crate::api::auth::Tokens, u8> {
    crate::api::auth::Tokens::new(serve.api_token.as_deref(), serve.tokens.as_deref()).map_err(
        |err| {
            eprintln!("error: {err}");
            EXIT_INVALID
        },
    )
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serves the API until the daemon's shutdown fires, then lets the drivers wind down.
async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    tokens: crate::api::auth::Tokens,
    args: &ServeArgs,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    // Scripts and tests read this line for the port when `--listen` asked for any.
    println!("sluice listening on http://{addr}");
    tracing::info!(%addr, "API listening.");
    let shutdown = daemon.shutdown_token().clone();
    let state = ApiState {
        daemon: daemon.clone(),
        tokens: Arc::new(tokens),
        require_webhook_timestamp: args.require_webhook_timestamp,
    };
    api::serve::serve(listener, api::router(state), args.limits(), shutdown)
        .await
        .context("the HTTP server failed")?;
    daemon.wait_idle(DRIVER_STOP_WAIT).await;
    Ok(())
}

/// SIGTERM or Ctrl-C fires `shutdown`; a second one fires `abandon` (when given).
async fn stop_on_signals(shutdown: CancellationToken, abandon: Option<CancellationToken>) {
    let Some(mut signals) = StopSignals::listen() else {
        return;
    };
    signals.next().await;
    tracing::info!("Stopping.");
    shutdown.cancel();
    if let Some(abandon) = abandon {
        signals.next().await;
        tracing::warn!("Second stop signal: handing back the steps still running.");
        abandon.cancel();
    }
}

/// Local processes always; containers when a Docker engine answers (containers a previous
/// life of this worker left behind are removed first).
async fn executor(name: &str, secret_key: Option<SecretKey>) -> StepExecutor {
    let executor = match DockerExecutor::connect(name).await {
        Ok(mut docker) => {
            docker.secret_key = secret_key.clone();
            let own = name.to_string();
            match docker.reap_orphans(move |worker| worker == own).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    containers = n,
                    "Removed containers a previous run of this worker left."
                ),
                Err(err) => tracing::warn!(error = %err, "Could not look for leftover containers."),
            }
            StepExecutor::with_docker(Arc::new(docker))
        }
        Err(why) => {
            tracing::info!(%why, "No Docker engine: steps with an image fail on this worker.");
            StepExecutor::local_only(why)
        }
    };
    executor.with_secret_key(secret_key)
}

/// Where a worker named `name` records its steps' process groups: under `$XDG_STATE_HOME`
/// (or `~/.local/state`), else the temporary folder. It must outlive the process, not the
/// machine: what it names is gone after a reboot anyway.
fn default_state_dir(name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("sluice").join("workers").join(safe)
}

/// `sluice worker`: takes steps from Redis and runs them.
pub fn worker(args: WorkerArgs) -> anyhow::Result<u8> {
    let gpus = match parse_gpus_flag(&args.gpus) {
        Ok(gpus) => gpus,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(EXIT_INVALID);
        }
    };
    let secret_key = match args.secret_key.load() {
        Ok(key) => key,
        Err(code) => return Ok(code),
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    worker_runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        let abandon = CancellationToken::new();
        tokio::spawn(stop_on_signals(shutdown.clone(), Some(abandon.clone())));
        let redis = RedisQueue::connect(
            RedisQueueConfig {
                url: args.redis.redis.clone(),
                ca_cert: args.redis.redis_ca.clone(),
                prefix: args.redis.redis_prefix.clone(),
                // Each start is its own consumer: a worker restarted under the same name (a
                // container restarted in place) must not renew what the dead one held.
                consumer: format!("{name}@{}", ulid::Ulid::new()),
                queues: args.queues.clone(),
            },
            shutdown.clone(),
        )
        .await
        .context("stopped before Redis answered")?;
        let redis = Arc::new(redis);
        let state_dir = args
            .state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&name));
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("data"));
        let data_dir = prepare_data_dir(&data_dir)?;
        let artifacts = match args.artifacts.open(&data_dir) {
            Ok(artifacts) => artifacts,
            Err(message) => {
                eprintln!("error: {message}");
                return Ok(EXIT_INVALID);
            }
        };
        let executor = executor(&name, secret_key)
            .await
            .with_group_registry(state_dir)
            .with_artifacts(artifacts);
        println!(
            "sluice worker {name}: queues {}, {slots} slots",
            args.queues.join(",")
        );
        let config = ServiceConfig {
            worker: WorkerConfig {
                name,
                queues: args.queues.clone(),
                slots,
                gpus,
                data_dir: Some(data_dir),
            },
            heartbeat: args.heartbeat,
            lease: args.lease,
            grace: args.grace,
        };
        service::serve(redis, executor, config, shutdown, abandon).await?;
        Ok(0)
    })
}
