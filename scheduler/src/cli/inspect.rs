//! `sluice runs`, `sluice show` and `sluice logs`: reading what the store recorded; and
//! `sluice pipelines` over a folder of pipeline files.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::printers::{
    listed_triggers, print_pipelines, print_run, print_runs, ListedPipeline, UnloadedFile,
};
use super::{DataDirArg, EXIT_INVALID};
use crate::spec;
use crate::store::{RunLookup, RunRecord, RunStatus, Store};

/// Runs read at once while filling a filtered `sluice runs`.
const FILTER_PAGE: usize = 1000;

/// Arguments of `sluice runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Most runs listed.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// List runs older than this run id (paging).
    #[arg(long)]
    pub before: Option<String>,
    /// Only runs of this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Only runs that stand or ended this way.
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    #[command(flatten)]
    pub remote: super::RemoteArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

/// A run status `sluice runs --status` selects (clap lists these when given another word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    /// Accepted, not started.
    Queued,
    /// Steps are being run.
    Running,
    /// Every step succeeded or was skipped by its condition.
    Succeeded,
    /// A step failed.
    Failed,
    /// Someone cancelled it.
    Cancelled,
}

impl StatusFilter {
    /// The run status it selects.
    pub fn status(self) -> RunStatus {
        match self {
            StatusFilter::Queued => RunStatus::Queued,
            StatusFilter::Running => RunStatus::Running,
            StatusFilter::Succeeded => RunStatus::Succeeded,
            StatusFilter::Failed => RunStatus::Failed,
            StatusFilter::Cancelled => RunStatus::Cancelled,
        }
    }
}

/// Arguments of `sluice pipelines`.
#[derive(Debug, Args)]
pub struct PipelinesArgs {
    /// Print JSON (`pipelines` and `errors`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The folder to read when no `--server` is given: every `*.yaml`/`*.yml` in it, as a
    /// scheduler started with `--pipelines DIR` would load them.
    #[arg(long, default_value = "pipelines", conflicts_with = "server")]
    pub pipelines: PathBuf,
    #[command(flatten)]
    pub remote: super::RemoteArgs,
}

/// Arguments of `sluice show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run id, or an unambiguous start of it.
    pub run_id: String,
    /// Print JSON (run, steps with attempts, history) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: super::RemoteArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

/// Arguments of `sluice logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The run id, or an unambiguous start of it.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// Which attempt (default: the last).
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Only standard output.
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only standard error.
    #[arg(long)]
    pub stderr: bool,
    /// Keep printing as the step writes more, until the attempt ends (through `--server`, or
    /// the `sluice run` holding the data dir; otherwise nothing runs and the log is printed).
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub remote: super::RemoteArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

pub(super) fn open_store(data: &DataDirArg) -> anyhow::Result<Store> {
    if !data.data_dir.join("store").exists() {
        anyhow::bail!(
            "no Sluice data in {} (run a pipeline first, or pass --data-dir)",
            data.data_dir.display()
        );
    }
    // A `sluice run` handing the data dir over (its socket gone, the store not yet closed)
    // gets a moment to finish.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match Store::open(&data.data_dir) {
            Err(crate::store::StoreError::Locked { .. }) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            opened => return Ok(opened?),
        }
    }
}

/// Opens the store and finds a run by id or unique prefix; `Err` is the exit code, after the
/// problem was printed.
fn open_run(data: &DataDirArg, id: &str) -> anyhow::Result<Result<(Store, RunRecord), u8>> {
    let store = open_store(data)?;
    let message = match store.lookup_run(id)? {
        RunLookup::Found(run) => return Ok(Ok((store, run))),
        RunLookup::NotFound => format!("no run `{id}`"),
        RunLookup::Ambiguous => format!("`{id}` matches several runs; give more of the id"),
    };
    eprintln!("error: {message}");
    Ok(Err(EXIT_INVALID))
}

/// Lists runs, newest first.
pub fn runs(args: RunsArgs) -> anyhow::Result<u8> {
    let store = open_store(&args.data)?;
    let keep = |run: &RunRecord| {
        args.pipeline.as_ref().is_none_or(|p| &run.pipeline == p)
            && args.status.is_none_or(|s| run.status == s.status())
    };
    if args.pipeline.is_none() && args.status.is_none() {
        let runs = store.list_runs(args.limit, args.before.as_deref())?;
        return print_runs(&runs, args.json);
    }
    // Filtered: read pages until the limit is filled or history ends.
    let mut runs = Vec::new();
    let mut before = args.before.clone();
    while runs.len() < args.limit {
        let page = store.list_runs(FILTER_PAGE, before.as_deref())?;
        let exhausted = page.len() < FILTER_PAGE;
        before = page.last().map(|r| r.id.clone());
        runs.extend(page.into_iter().filter(|r| keep(r)));
        if exhausted {
            break;
        }
    }
    runs.truncate(args.limit);
    print_runs(&runs, args.json)
}

/// `sluice pipelines` without `--server`: what a scheduler would load from the folder.
pub fn pipelines(args: PipelinesArgs) -> anyhow::Result<u8> {
    if !args.pipelines.is_dir() {
        eprintln!(
            "error: no folder {} (pass --pipelines DIR, or --server URL to ask a scheduler)",
            args.pipelines.display()
        );
        return Ok(EXIT_INVALID);
    }
    let now = chrono::Utc::now();
    let mut listed: Vec<ListedPipeline> = Vec::new();
    let mut unloaded = Vec::new();
    for file in spec::find_pipeline_files(std::slice::from_ref(&args.pipelines))? {
        let shown = file.display().to_string();
        // Warnings are `sluice validate`'s to print; a listing shows only what stops a file.
        match spec::load_file_with_warnings(&file, spec::DEFAULT_MAX_FILE_BYTES) {
            Ok((loaded, _warnings)) => {
                let name = &loaded.pipeline.name;
                // As the scheduler does: a second file with a name already taken is not loaded.
                if let Some(first) = listed.iter().find(|p| &p.name == name) {
                    unloaded.push(UnloadedFile {
                        problems: vec![format!(
                            "{shown}: pipeline name `{name}` is already used by {}",
                            first.file
                        )],
                        file: shown,
                        serving_last_good: None,
                    });
                    continue;
                }
                listed.push(ListedPipeline {
                    name: name.clone(),
                    description: loaded.pipeline.description.clone(),
                    file: shown,
                    hash: loaded.hash.clone(),
                    steps: loaded.pipeline.steps.len(),
                    triggers: Some(listed_triggers(&loaded.pipeline, now)),
                    serving_last_good: false,
                });
            }
            Err(problems) => unloaded.push(UnloadedFile {
                file: shown,
                problems: problems.iter().map(ToString::to_string).collect(),
                serving_last_good: None,
            }),
        }
    }
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    print_pipelines(&listed, &unloaded, args.json)
}

/// Shows one run in full.
pub fn show(args: ShowArgs) -> anyhow::Result<u8> {
    let (store, run) = match open_run(&args.data, &args.run_id)? {
        Ok(found) => found,
        Err(code) => return Ok(code),
    };
    let steps = store.steps(&run.id)?;
    if args.json {
        let events = store.events(&run.id)?;
        let out = serde_json::json!({"run": run, "steps": steps, "events": events});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    print_run(&run, &steps, true)
}

/// Prints an attempt's logs: stdout to stdout and stderr to stderr, so redirection keeps them apart.
pub fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let (store, run) = match open_run(&args.data, &args.run_id)? {
        Ok(found) => found,
        Err(code) => return Ok(code),
    };
    let Some(step) = store.step(&run.id, &args.step)? else {
        eprintln!("error: run {} has no step `{}`", run.id, args.step);
        return Ok(EXIT_INVALID);
    };
    let attempt = match args.attempt {
        Some(n) => step.attempts.iter().find(|a| a.number == n),
        None => step.attempts.last(),
    };
    let Some(attempt) = attempt else {
        let why = match args.attempt {
            Some(n) => format!(
                "step `{}` has no attempt {n} (it has {})",
                step.name,
                step.attempts.len()
            ),
            None => format!(
                "step `{}` never ran ({})",
                step.name,
                step.reason.as_deref().unwrap_or(step.status.as_str())
            ),
        };
        eprintln!("error: {why}");
        return Ok(EXIT_INVALID);
    };
    if !args.stderr {
        copy_file(
            &attempt.dir.join("stdout.log"),
            &mut std::io::stdout().lock(),
        )?;
    }
    if !args.stdout {
        copy_file(
            &attempt.dir.join("stderr.log"),
            &mut std::io::stderr().lock(),
        )?;
    }
    Ok(0)
}

/// Copies a log to `out`, never through a link or from a FIFO or device: the step may have
/// replaced the file's name.
fn copy_file(path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    match sluice_worker::safe_fs::open_regular(path) {
        Ok(Some(mut file)) => {
            std::io::copy(&mut file, out)?;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(err) => Err(anyhow::anyhow!("cannot read {}: it {err}", path.display())),
    }
}
