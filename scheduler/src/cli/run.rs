//! `sluice run`: the embedded mode. The same engine, store and worker loop as the daemons, with
//! the in-memory queue and local processes, so one machine needs nothing but this binary.

use super::artifact_args::ArtifactArgs;
use super::secrets::SecretKeyArg;
use super::signals::StopSignals;
use sluice_worker::secrets::SecretKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_worker::executor::local::{
    kill_recorded_group, kill_running_groups, process_start_time,
};
use sluice_worker::executor::{DockerExecutor, StepExecutor};
use sluice_worker::gpu::parse_gpus_flag;
use sluice_worker::pool::{run_worker, WorkerConfig};
use sluice_worker::queue::{MemoryQueue, TaskQueue};
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::{DataDirArg, EXIT_CANCELLED, EXIT_FAILED, EXIT_INVALID};
use crate::engine::subset::{self, Selection, SubsetError};
use crate::engine::{Engine, EngineError, RunDriver, RunRequest};
use crate::host::{Host, Launched, Launcher, Refused, Submission};
use crate::spec::{self, Pipeline};
use crate::store::TriggerOrigin;
use crate::store::{RunLookup, RunRecord, RunStatus, StepStatus, Store};

/// Arguments of `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file.
    #[arg(required_unless_present = "resume")]
    pub file: Option<PathBuf>,
    /// Set a parameter: `-p min_accuracy=0.9` (repeatable).
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Finish a run whose runner was killed, keeping the steps that succeeded.
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["file", "params"])]
    pub resume: Option<String>,
    /// Most steps at once (default: the pipeline's `parallelism`, else twice the CPU count).
    /// With `--resume`, replaces the run's own.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub parallelism: Option<u64>,
    /// GPUs this machine may hand to steps: device ids (`0,1`) or `auto` (asks `nvidia-smi -L`).
    /// Each GPU step gets devices of its own.
    #[arg(long, env = "SLUICE_GPUS", default_value = "")]
    pub gpus: String,
    /// Run every step, also those with `cache: true` and a hit (their results still refresh
    /// the cache).
    #[arg(long)]
    pub no_cache: bool,
    /// Print the plan (steps in order with their commands, images, queues, resources,
    /// conditions, and the params with where each value comes from) and exit; nothing is run
    /// and the data dir is not touched.
    #[arg(long, conflicts_with = "resume")]
    pub dry_run: bool,
    /// Run only these steps (comma-separated); the steps they depend on keep the results of
    /// the newest earlier run in which they succeeded.
    #[arg(long, value_delimiter = ',', value_name = "STEP,...", conflicts_with_all = ["resume", "from", "until"])]
    pub only: Vec<String>,
    /// Run this step and everything downstream of it (with `--until`: up to that step).
    #[arg(long, value_name = "STEP", conflicts_with = "resume")]
    pub from: Option<String>,
    /// Run this step and everything upstream of it.
    #[arg(long, value_name = "STEP", conflicts_with = "resume")]
    pub until: Option<String>,
    #[command(flatten)]
    pub secret_key: SecretKeyArg,
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

/// `--dry-run`: prints the plan (of the selected steps, with `--only/--from/--until`); the
/// exit code.
fn dry_run(request: &RunRequest, selection: Option<&Selection>) -> u8 {
    let pipeline = &request.loaded.pipeline;
    let chosen = match selection.map(|s| subset::selected(pipeline, s)) {
        Some(Err(message)) => {
            eprintln!("error: {message}");
            return EXIT_INVALID;
        }
        Some(Ok(chosen)) => Some(chosen),
        None => None,
    };
    let kept = chosen.as_ref().map(|c| subset::needed_by(pipeline, c));
    let plan_subset = match (selection, &chosen, &kept) {
        (Some(selection), Some(chosen), Some(kept)) => Some(super::plan::Subset {
            describe: selection.describe(),
            chosen,
            kept,
        }),
        _ => None,
    };
    let params = crate::engine::resolve_params(pipeline, &request.overrides).unwrap_or_default();
    print!(
        "{}",
        super::plan::render(
            &request.loaded,
            &request.overrides,
            &params,
            plan_subset.as_ref()
        )
    );
    0
}

/// The part of the DAG the flags select, if they select one.
fn selection_of(args: &RunArgs) -> Option<Selection> {
    if !args.only.is_empty() {
        return Some(Selection::Only(args.only.clone()));
    }
    (args.from.is_some() || args.until.is_some()).then(|| Selection::Range {
        from: args.from.clone(),
        until: args.until.clone(),
    })
}

/// Runs (or resumes) a pipeline; exit 0 succeeded, 1 failed, 2 invalid input, 130 cancelled.
pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let selection = selection_of(&args);
    if let (true, Some(file)) = (args.dry_run, &args.file) {
        return Ok(match prepare_request(file, &args) {
            Ok(request) => dry_run(&request, selection.as_ref()),
            Err(code) => code,
        });
    }
    let data_dir = prepare_data_dir(&args.data.data_dir)?;
    if let Some(socket) = crate::host::live_socket(&data_dir) {
        if let Some(code) = hand_to_holder(&socket, &data_dir, &args)? {
            return Ok(code);
        }
    }
    let request = match &args.file {
        Some(file) => match prepare_request(file, &args) {
            Ok(request) => Some(request),
            Err(code) => return Ok(code),
        },
        None => None,
    };
    let embedded = match Embedded::prepare(data_dir, &args.gpus, &args.secret_key, &args.artifacts)
    {
        Ok(embedded) => embedded,
        Err(code) => return Ok(code),
    };
    if let Some(request) = &request {
        if let Some(problem) = gpu_steps_without_gpus(&request.loaded.pipeline, &embedded.gpus) {
            eprintln!("error: {problem}");
            return Ok(EXIT_INVALID);
        }
    }
    let start = match (request, args.resume) {
        (Some(request), _) => Start::New(Box::new(request), selection),
        (None, Some(run)) => Start::Resume {
            run,
            parallelism: args.parallelism.map(|p| p as usize),
        },
        (None, None) => unreachable!("clap requires a file or --resume"),
    };
    runtime()?.block_on(run_embedded(embedded, start))
}

/// Another `sluice run` holds the data dir: it runs this pipeline (see [`crate::host`]) and
/// this process follows it; `None` when that process is gone by now (this one runs it).
fn hand_to_holder(socket: &Path, data_dir: &Path, args: &RunArgs) -> anyhow::Result<Option<u8>> {
    let Some(file) = &args.file else {
        eprintln!(
            "error: another `sluice run` is using {}; resume the run once it has finished",
            data_dir.display()
        );
        return Ok(Some(EXIT_FAILED));
    };
    // Checked here first, so problems print as they would for a run of this process.
    if let Err(code) = prepare_request(file, args) {
        return Ok(Some(code));
    }
    let params = match super::param_pairs(&args.params) {
        Ok(params) => params.into_iter().collect(),
        Err(code) => return Ok(Some(code)),
    };
    let submission = Submission {
        file: file.canonicalize().unwrap_or_else(|_| file.clone()),
        params,
        parallelism: args.parallelism.map(|p| p as usize),
        no_cache: args.no_cache,
        only: args.only.clone(),
        from: args.from.clone(),
        until: args.until.clone(),
    };
    super::client::run_on_holder(socket, &super::data_dir_flag(data_dir), &submission)
}

/// Arguments of `sluice retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The run to retry: its id, or an unambiguous start of it.
    pub run_id: String,
    /// Run this step and everything downstream of it again too, even if it succeeded.
    #[arg(long, value_name = "STEP")]
    pub from: Option<String>,
    /// With `--server`: follow the new run and exit 0 if it succeeded, 1 otherwise.
    #[arg(long)]
    pub wait: bool,
    /// Most steps at once (default: the retried run's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub parallelism: Option<u64>,
    /// GPUs this machine may hand to steps (see `sluice run --gpus`).
    #[arg(long, env = "SLUICE_GPUS", default_value = "")]
    pub gpus: String,
    #[command(flatten)]
    pub remote: super::RemoteArgs,
    #[command(flatten)]
    pub secret_key: SecretKeyArg,
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

/// `sluice retry RUN` on this machine: a new run that keeps the steps that succeeded and runs
/// the others, followed in the terminal like `sluice run`.
pub fn retry(args: RetryArgs) -> anyhow::Result<u8> {
    let data_dir = prepare_data_dir(&args.data.data_dir)?;
    let embedded = match Embedded::prepare(data_dir, &args.gpus, &args.secret_key, &args.artifacts)
    {
        Ok(embedded) => embedded,
        Err(code) => return Ok(code),
    };
    let start = Start::Retry {
        run: args.run_id,
        from: args.from,
        parallelism: args.parallelism.map(|p| p as usize),
    };
    runtime()?.block_on(run_embedded(embedded, start))
}

/// The runtime an embedded run is driven on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What [`run_embedded`] starts.
enum Start {
    /// A new run of a file, or of the part of it a selection names.
    New(Box<RunRequest>, Option<Selection>),
    /// A run whose runner died.
    Resume {
        run: String,
        parallelism: Option<usize>,
    },
    /// A new run that retries an ended one.
    Retry {
        run: String,
        from: Option<String>,
        parallelism: Option<usize>,
    },
}

/// The secrets the pipeline's steps name that this runner cannot give them (neither in the
/// data dir's store with a key to open it, nor in its environment), all in one message, so a
/// run does not fail an hour in on the first step that needs one.
fn missing_secrets(pipeline: &Pipeline, data_dir: &Path, have_key: bool) -> Option<String> {
    let store = crate::store::secrets::SecretStore::in_data_dir(data_dir);
    let mut problems: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for step in pipeline.steps.values() {
        for name in &step.secrets {
            if !seen.insert(name.clone()) {
                continue;
            }
            match store.sealed(name) {
                Ok(Some(_)) if have_key => {}
                Ok(Some(_)) => problems.push(format!(
                    "`{name}` (step `{}`) is in the secret store, but no key was given (--secret-key-file or SLUICE_SECRET_KEY_FILE)",
                    step.name
                )),
                Ok(None) if std::env::var_os(name).is_some() => {}
                Ok(None) => problems.push(format!(
                    "`{name}` (step `{}`) is neither in the secret store nor in this environment",
                    step.name
                )),
                Err(err) => problems.push(format!("`{name}` (step `{}`): {err}", step.name)),
            }
        }
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{} secret{} the steps need cannot be given to them: {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("; ")
        )
    })
}

/// What a subset keeps and skips (see [`subset`]), said before the run starts.
fn subset_prior(
    store: &Store,
    pipeline: &Pipeline,
    selection: &Selection,
) -> Result<Vec<crate::store::StepRecord>, SubsetError> {
    let chosen = subset::selected(pipeline, selection).map_err(SubsetError::Refused)?;
    let prior = subset::prior(store, pipeline, &chosen, selection)?;
    let kept: Vec<String> = prior
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .map(|s| format!("{} (run {})", s.name, s.run_id))
        .collect();
    let skipped = prior
        .iter()
        .filter(|s| s.status == StepStatus::Skipped)
        .count();
    let chosen: Vec<&str> = chosen.iter().map(String::as_str).collect();
    println!(
        "{}: running {}; keeping {}; skipping {skipped} other step{}",
        selection.describe(),
        chosen.join(", "),
        if kept.is_empty() {
            "nothing".to_string()
        } else {
            kept.join(", ")
        },
        if skipped == 1 { "" } else { "s" }
    );
    Ok(prior)
}

/// The request of a retry, planned from the store (see [`crate::engine::retry`]).
fn retry_request(
    store: &Store,
    run: &str,
    from: Option<&str>,
    parallelism: Option<usize>,
) -> Result<RunRequest, EngineError> {
    let plan = crate::engine::retry::plan(store, run, from)?;
    let kept: Vec<&str> = plan.retried.kept.iter().map(|s| s.name.as_str()).collect();
    println!(
        "retrying run {} of `{}`: keeping {}; running {}",
        plan.run.id,
        plan.run.pipeline,
        if kept.is_empty() {
            "nothing".to_string()
        } else {
            kept.join(", ")
        },
        plan.rerun.join(", ")
    );
    Ok(RunRequest {
        loaded: plan.loaded,
        overrides: plan.run.params.clone(),
        trigger: TriggerOrigin::Retry {
            run: plan.run.id.clone(),
            by: None,
        },
        parallelism: parallelism.or(Some(plan.run.parallelism)),
        base_dir: plan.run.base_dir.clone(),
        id: None,
        marks: Vec::new(),
        commit: plan.run.commit.clone(),
        waiting: false,
        no_cache: plan.run.no_cache,
        retry_of: Some(plan.run.id.clone()),
        prior: plan.retried.kept,
    })
}

pub(super) fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("cannot resolve the data dir {}", dir.display()))
}

/// Loads and checks everything the user gave; prints problems and returns the exit code if any.
fn prepare_request(file: &Path, args: &RunArgs) -> Result<RunRequest, u8> {
    let overrides = super::param_pairs(&args.params)?;
    let parallelism = args.parallelism.map(|p| p as usize);
    request_for(file, overrides, parallelism, args.no_cache).map_err(|problem| {
        eprintln!("{problem}");
        EXIT_INVALID
    })
}

/// The request to run `file`; `Err` is every problem, as printed for people.
fn request_for(
    file: &Path,
    overrides: std::collections::BTreeMap<String, String>,
    parallelism: Option<usize>,
    no_cache: bool,
) -> Result<RunRequest, String> {
    let loaded = match spec::load_file(file, spec::DEFAULT_MAX_FILE_BYTES) {
        Ok(loaded) => loaded,
        Err(errors) => {
            let source = std::fs::read_to_string(file).unwrap_or_default();
            let rendered: Vec<String> = errors.iter().map(|e| e.render(&source)).collect();
            return Err(rendered.join("\n"));
        }
    };
    if let Err(err) = crate::engine::resolve_params(&loaded.pipeline, &overrides) {
        return Err(format!("error: {err}"));
    }
    let base_dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."));
    Ok(RunRequest {
        loaded,
        overrides,
        trigger: TriggerOrigin::Manual,
        parallelism,
        commit: crate::spec::git_commit(&base_dir),
        base_dir,
        id: None,
        marks: Vec::new(),
        waiting: false,
        no_cache,
        retry_of: None,
        prior: Vec::new(),
    })
}

/// How long the worker loop gets to wind down after the run is over.
const WORKER_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Kills the local steps that a runner which died (`kill -9`) left running for this run, so
/// `--resume` does not run them a second time alongside the first. Containers it left are
/// reaped when the Docker executor starts.
fn stop_leftover_steps(store: &Store, run_id: &str) {
    let Ok(RunLookup::Found(run)) = store.lookup_run(run_id) else {
        return;
    };
    for step in store.steps(&run.id).unwrap_or_default() {
        let Some(attempt) = step.attempts.last() else {
            continue;
        };
        if !attempt.status.is_terminal() && kill_recorded_group(&attempt.dir) {
            eprintln!(
                "stopped step `{}` (attempt {}), left running by the runner that died",
                step.name, attempt.number
            );
        }
    }
}

/// GPU steps need devices to lease, so no two share one (containers too: Docker alone would hand
/// every `gpu: 1` container the same first device); refused before anything starts.
fn gpu_steps_without_gpus(pipeline: &Pipeline, gpus: &[String]) -> Option<String> {
    if !gpus.is_empty() {
        return None;
    }
    pipeline
        .steps
        .values()
        .find(|s| s.resources.gpu.is_some())
        .map(|step| {
            format!(
                "step `{}` asks for GPUs: pass --gpus with device ids (`--gpus 0,1`) or `--gpus auto`",
                step.name
            )
        })
}

/// This runner's name on the containers it starts:
/// `embedded:<host>:<pid namespace>:<pid>:<process start time>`, so a later runner can tell a
/// dead runner's leftovers from a live one's, even when pids are reused or the live one runs in
/// another pid namespace (whose containers it then leaves alone).
fn embedded_worker_name() -> String {
    let pid = std::process::id();
    format!(
        "embedded:{}:{}:{pid}:{}",
        hostname(),
        pid_namespace(),
        process_start_time(pid as i32).unwrap_or(0)
    )
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string().replace(':', "-"))
        .unwrap_or_else(|_| "unknown".into())
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether a container labelled with `worker` belongs to an embedded runner of this host that
/// is no longer alive.
fn dead_embedded_runner(worker: &str) -> bool {
    let prefix = format!("embedded:{}:{}:", hostname(), pid_namespace());
    let Some(rest) = worker.strip_prefix(&prefix) else {
        return false; // Another host or pid namespace: not ours to judge.
    };
    let mut parts = rest.split(':');
    match (
        parts.next().and_then(|p| p.parse::<i32>().ok()),
        parts.next().and_then(|t| t.parse::<u64>().ok()),
    ) {
        (Some(pid), Some(started)) => process_start_time(pid) != Some(started),
        _ => false,
    }
}

/// Local processes always; Docker too when a step has an image. `Err` says why Docker is needed
/// and not there.
async fn executor_for(
    pipeline: &Pipeline,
    worker: &str,
    secret_key: Option<SecretKey>,
) -> Result<StepExecutor, String> {
    let Some(step) = pipeline.steps.values().find(|s| s.image.is_some()) else {
        return Ok(
            StepExecutor::local_only("no step of this pipeline needs it")
                .with_secret_key(secret_key),
        );
    };
    let mut docker = DockerExecutor::connect(worker)
        .await
        .map_err(|why| format!("step `{}` runs in an image, but {why}", step.name))?;
    match docker.reap_orphans(dead_embedded_runner).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            containers = n,
            "Removed containers left by runners that died."
        ),
        Err(err) => tracing::warn!(error = %err, "Could not look for leftover containers."),
    }
    docker.secret_key = secret_key.clone();
    Ok(StepExecutor::with_docker(Arc::new(docker)).with_secret_key(secret_key))
}

/// What an embedded run uses of this machine.
struct Embedded {
    data_dir: PathBuf,
    gpus: Vec<String>,
    secret_key: Option<SecretKey>,
    artifacts: Arc<sluice_worker::artifacts::Artifacts>,
}

impl Embedded {
    /// What `run` and `retry` need from their flags; `Err` is the exit code, the problem printed.
    fn prepare(
        data_dir: PathBuf,
        gpus: &str,
        secret_key: &SecretKeyArg,
        artifacts: &ArtifactArgs,
    ) -> Result<Embedded, u8> {
        let gpus = parse_gpus_flag(gpus).map_err(|message| {
            eprintln!("error: {message}");
            EXIT_INVALID
        })?;
        let secret_key = secret_key.load()?;
        let artifacts = artifacts.open(&data_dir).map_err(|message| {
            eprintln!("error: {message}");
            EXIT_INVALID
        })?;
        Ok(Embedded {
            data_dir,
            gpus,
            secret_key,
            artifacts,
        })
    }
}

async fn run_embedded(embedded: Embedded, start: Start) -> anyhow::Result<u8> {
    let Embedded {
        data_dir,
        gpus,
        secret_key,
        artifacts,
    } = embedded;
    let worker_name = embedded_worker_name();
    let mut executor = None;
    if let Start::New(request, _) = &start {
        match executor_for(&request.loaded.pipeline, &worker_name, secret_key.clone()).await {
            Ok(ready) => executor = Some(ready),
            Err(message) => {
                eprintln!("error: {message}");
                return Ok(EXIT_INVALID);
            }
        }
    }
    let store = open_store_waiting(&data_dir).await?;
    let queue: Arc<dyn TaskQueue> = Arc::new(MemoryQueue::default());
    let engine = Engine {
        store: store.clone(),
        queue: queue.clone(),
        data_dir: data_dir.clone(),
        artifacts: artifacts.clone(),
    };

    let driver = match start {
        Start::New(request, selection) => {
            let mut request = *request;
            if let Some(problem) =
                missing_secrets(&request.loaded.pipeline, &data_dir, secret_key.is_some())
            {
                eprintln!("error: {problem}");
                return Ok(EXIT_INVALID);
            }
            if let Some(selection) = selection {
                match subset_prior(&store, &request.loaded.pipeline, &selection) {
                    Ok(prior) => request.prior = prior,
                    Err(SubsetError::Refused(message)) => {
                        eprintln!("error: {message}");
                        return Ok(EXIT_INVALID);
                    }
                    Err(SubsetError::Store(err)) => return Err(err.into()),
                }
            }
            let widths = request.loaded.pipeline.steps.keys().map(String::len);
            let progress = Box::new(Progress::new(widths));
            RunDriver::create(engine.clone(), request, progress)
        }
        Start::Resume {
            run: run_id,
            parallelism,
        } => {
            stop_leftover_steps(&store, &run_id);
            let widths = store
                .steps(&run_id)
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.name.len())
                .collect::<Vec<_>>();
            let progress = Box::new(Progress::new(widths.into_iter()));
            RunDriver::resume(engine.clone(), &run_id, parallelism, progress)
        }
        Start::Retry {
            run,
            from,
            parallelism,
        } => retry_request(&store, &run, from.as_deref(), parallelism).and_then(|request| {
            let widths = request.loaded.pipeline.steps.keys().map(String::len);
            let progress = Box::new(Progress::new(widths));
            RunDriver::create(engine.clone(), request, progress)
        }),
    };
    let driver = match driver {
        Ok(driver) => driver,
        Err(
            err @ (EngineError::Params(_)
            | EngineError::UnknownRun(_)
            | EngineError::AmbiguousRun(_)
            | EngineError::AlreadyFinished(..)
            | EngineError::CannotRetry(_)
            | EngineError::BadDefinition { .. }),
        ) => {
            eprintln!("error: {err}");
            return Ok(EXIT_INVALID);
        }
        Err(err) => return Err(err.into()),
    };
    let executor = match executor {
        Some(ready) => ready,
        None => match executor_for(driver.pipeline(), &worker_name, secret_key.clone()).await {
            Ok(ready) => ready,
            Err(message) => {
                eprintln!("error: {message}; the run stays resumable");
                return Ok(EXIT_FAILED);
            }
        },
    };
    let started = driver.run().clone();
    println!(
        "run {} of `{}`: {} steps, parallelism {}, data in {}",
        started.id,
        started.pipeline,
        started.step_count,
        started.parallelism,
        data_dir.display()
    );

    let executor = executor.with_artifacts(artifacts.clone());
    let docker = executor.docker();
    let all_runs = CancellationToken::new();
    tokio::spawn(cancel_on_signals(all_runs.clone(), docker));
    // From here other sluice commands on this data dir go through this process.
    let host = Host::start(
        store.clone(),
        &data_dir,
        launcher(Hosting {
            store: store.clone(),
            data_dir: data_dir.clone(),
            artifacts,
            gpus: gpus.clone(),
            secret_key,
        }),
        all_runs.clone(),
    )
    .await;
    let cancel = match &host {
        Some(host) => host.track(&started.id),
        None => all_runs.child_token(),
    };
    let run_id = started.id.clone();
    let targets = driver.pipeline().notify.clone();
    let worker = WorkerConfig {
        name: worker_name,
        queues: queues_of(driver.pipeline()),
        slots: started.parallelism,
        gpus: gpus.clone(),
        data_dir: None,
    };
    let driven = drive_here(driver, queue, executor, worker, cancel).await;
    if let Some(host) = &host {
        host.wind_down().await;
    }
    let run = match driven {
        Driven::Ended(ended) => match *ended {
            Ok(run) => run,
            Err(_) => return Ok(EXIT_FAILED),
        },
        Driven::WorkersFailed(why) => {
            // The run stays in the store as it was: `--resume` can finish it.
            eprintln!("error: the worker loop failed ({why}); finish the run with `sluice run --resume {run_id}`");
            return Ok(EXIT_FAILED);
        }
    };
    print_summary(&store, &run, &data_dir);
    notify(&store, &run, &targets).await;
    Ok(match run.status {
        RunStatus::Succeeded => 0,
        RunStatus::Cancelled => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    })
}

/// Opens the store; a process that is handing the data dir over (its socket gone, the store
/// not yet closed) gets a moment to finish.
async fn open_store_waiting(data_dir: &Path) -> anyhow::Result<Store> {
    let until = std::time::Instant::now() + HANDOVER_WAIT;
    loop {
        match Store::open(data_dir) {
            Err(crate::store::StoreError::Locked { .. }) if std::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            opened => return Ok(opened?),
        }
    }
}

/// How long a runner waits for another process to let go of the data dir.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// What the holder of a data dir needs to run other `sluice run`s' pipelines beside its own.
struct Hosting {
    store: Store,
    data_dir: PathBuf,
    artifacts: Arc<sluice_worker::artifacts::Artifacts>,
    gpus: Vec<String>,
    secret_key: Option<SecretKey>,
}

/// Starts a submitted pipeline here as `sluice run` would (checked the same way, each with an
/// in-memory queue and a worker pool of its own, so it needs no routing of events between
/// runs), sharing this process's store.
fn launcher(hosting: Hosting) -> Launcher {
    let hosting = Arc::new(hosting);
    Arc::new(move |submission: Submission, cancel: CancellationToken| {
        let hosting = hosting.clone();
        Box::pin(async move { launch(&hosting, submission, cancel).await })
    })
}

async fn launch(
    hosting: &Hosting,
    submission: Submission,
    cancel: CancellationToken,
) -> Result<Launched, Refused> {
    let overrides = submission.params.iter().cloned().collect();
    let mut request = request_for(
        &submission.file,
        overrides,
        submission.parallelism,
        submission.no_cache,
    )
    .map_err(Refused::Invalid)?;
    let pipeline = &request.loaded.pipeline;
    let invalid = |message: String| Refused::Invalid(format!("error: {message}"));
    if let Some(problem) =
        missing_secrets(pipeline, &hosting.data_dir, hosting.secret_key.is_some())
    {
        return Err(invalid(format!(
            "{problem} (the process holding the data dir, pid {}, runs it)",
            std::process::id()
        )));
    }
    if let Some(problem) = gpu_steps_without_gpus(pipeline, &hosting.gpus) {
        return Err(invalid(problem));
    }
    let selection = if !submission.only.is_empty() {
        Some(Selection::Only(submission.only.clone()))
    } else if submission.from.is_some() || submission.until.is_some() {
        Some(Selection::Range {
            from: submission.from.clone(),
            until: submission.until.clone(),
        })
    } else {
        None
    };
    if let Some(selection) = &selection {
        let chosen = subset::selected(pipeline, selection).map_err(invalid)?;
        request.prior = subset::prior(&hosting.store, pipeline, &chosen, selection)
            .map_err(|err| invalid(err.to_string()))?;
    }
    let worker_name = embedded_worker_name();
    let executor = executor_for(pipeline, &worker_name, hosting.secret_key.clone())
        .await
        .map_err(invalid)?
        .with_artifacts(hosting.artifacts.clone());
    let queue: Arc<dyn TaskQueue> = Arc::new(MemoryQueue::default());
    let engine = Engine {
        store: hosting.store.clone(),
        queue: queue.clone(),
        data_dir: hosting.data_dir.clone(),
        artifacts: hosting.artifacts.clone(),
    };
    let driver = RunDriver::create(engine, request, Box::new(crate::engine::Silent)).map_err(
        |err| match err {
            EngineError::Params(_) | EngineError::BadDefinition { .. } => invalid(err.to_string()),
            other => Refused::Failed(other.to_string()),
        },
    )?;
    let run = driver.run().clone();
    let worker = WorkerConfig {
        name: worker_name,
        queues: queues_of(driver.pipeline()),
        slots: run.parallelism,
        gpus: hosting.gpus.clone(),
        data_dir: None,
    };
    let (store, targets) = (hosting.store.clone(), driver.pipeline().notify.clone());
    let drive = Box::pin(async move {
        match drive_here(driver, queue, executor, worker, cancel).await {
            Driven::Ended(ended) => {
                if let Ok(run) = *ended {
                    notify(&store, &run, &targets).await;
                }
            }
            Driven::WorkersFailed(why) => {
                eprintln!("error: the worker loop of a hosted run failed ({why})")
            }
        }
    });
    Ok(Launched { run, drive })
}

/// Posts the run's `notify:` notices before the process exits (see
/// [`crate::daemon::notify::notify_embedded`]), saying how each went.
async fn notify(store: &Store, run: &RunRecord, targets: &[crate::spec::notify::Notify]) {
    match crate::daemon::notify::notify_embedded(store, run, targets).await {
        Ok(outcomes) => {
            for (url, outcome) in outcomes {
                match outcome {
                    Ok(()) => eprintln!("notified {url}"),
                    Err(why) => eprintln!(
                        "warning: could not notify {url} ({why}); the notice stays in the data dir, and the next `sluice server` or `sluice scheduler` on it posts it"
                    ),
                }
            }
        }
        Err(err) => eprintln!("warning: could not record the run's notifications: {err}"),
    }
}

/// How a run driven here ended.
enum Driven {
    /// The run reached its end, or the engine failed (already said).
    Ended(Box<Result<RunRecord, EngineError>>),
    /// The worker loop stopped under the run; why.
    WorkersFailed(String),
}

/// Drives a run here with a worker pool of its own on `queue`, then stops the pool (killing
/// what outlives the run).
async fn drive_here(
    driver: RunDriver,
    queue: Arc<dyn TaskQueue>,
    executor: StepExecutor,
    worker: WorkerConfig,
    cancel: CancellationToken,
) -> Driven {
    let run_id = driver.run().id.clone();
    let shutdown = CancellationToken::new();
    let mut workers = tokio::spawn(run_worker(
        queue.clone(),
        Arc::new(executor),
        worker,
        shutdown.clone(),
    ));
    let outcome = tokio::select! {
        outcome = driver.drive(cancel) => outcome,
        joined = &mut workers => {
            kill_running_groups();
            return Driven::WorkersFailed(match joined {
                Ok(Err(err)) => err.to_string(),
                Ok(Ok(())) => "it stopped".to_string(),
                Err(err) => err.to_string(),
            });
        }
    };
    if let Err(err) = &outcome {
        // Say so now, not after the steps still running have finished on their own.
        eprintln!("error: run {run_id}: {err:#}; stopping the steps still running");
    }
    // Anything still running belongs to a run that is over (or failed): stop it.
    let _ = queue.cancel_run(&run_id).await;
    shutdown.cancel();
    queue.close();
    if tokio::time::timeout(WORKER_STOP_WAIT, workers)
        .await
        .is_err()
    {
        kill_running_groups();
    }
    Driven::Ended(Box::new(outcome))
}

/// The embedded worker serves every queue the run's steps use.
fn queues_of(pipeline: &Pipeline) -> Vec<String> {
    let mut queues: Vec<String> = pipeline.steps.values().map(|s| s.queue.clone()).collect();
    queues.sort();
    queues.dedup();
    queues
}

/// Ctrl-C or SIGTERM cancels the run cleanly; a second one leaves at once.
async fn cancel_on_signals(cancel: CancellationToken, docker: Option<Arc<DockerExecutor>>) {
    let Some(mut signals) = StopSignals::listen() else {
        return;
    };
    signals.next().await;
    eprintln!("cancelling the run (press Ctrl-C again to leave at once)...");
    cancel.cancel();
    signals.next().await;
    // Leaving at once must not leave steps running behind.
    kill_running_groups();
    if let Some(docker) = docker {
        let _ = tokio::time::timeout(Duration::from_secs(5), docker.remove_own_containers()).await;
    }
    std::process::exit(i32::from(EXIT_CANCELLED));
}

fn print_summary(store: &Store, run: &RunRecord, data_dir: &Path) {
    let data_flag = super::data_dir_flag(data_dir);
    let steps = store.steps(&run.id).unwrap_or_default();
    let tails = steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .filter_map(|s| {
            let attempt = s.last_attempt()?;
            let tail = crate::logtail::tail_lines(&attempt.dir.join("stderr.log"), 10);
            Some((s.name.clone(), tail))
        })
        .collect();
    super::printers::print_run_end(run, &steps, &tails, &data_flag);
}
