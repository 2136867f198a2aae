//! `sluice runs`, `sluice show` and `sluice logs`: reading what the store recorded.

use std::io::Write;
use std::path::Path;

use clap::Args;

use super::printers::{print_run, print_runs};
use super::{DataDirArg, EXIT_INVALID};
use crate::store::{RunLookup, RunRecord, Store};

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
    #[command(flatten)]
    pub remote: super::RemoteArgs,
    #[command(flatten)]
    pub data: DataDirArg,
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
#[derive(Debug, Args)]
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
    /// Keep printing as the step writes more, until the attempt ends (with `--server`).
    #[arg(short, long, requires = "server")]
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
    Ok(Store::open(&data.data_dir)?)
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
    let runs = store.list_runs(args.limit, args.before.as_deref())?;
    print_runs(&runs, args.json)
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
