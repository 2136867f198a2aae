//! `sluice runs`, `sluice show` and `sluice logs`: reading what the store recorded.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;

use super::{human_ms, DataDirArg, EXIT_INVALID};
use crate::store::{RunLookup, RunRecord, StepRecord, Store};

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
    pub remote: super::client::RemoteArgs,
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
    pub remote: super::client::RemoteArgs,
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
    pub remote: super::client::RemoteArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

fn open_store(data: &DataDirArg) -> anyhow::Result<Store> {
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
    if args.remote.server.is_some() {
        return super::client::runs(&args);
    }
    let store = open_store(&args.data)?;
    let runs = store.list_runs(args.limit, args.before.as_deref())?;
    print_runs(&runs, args.json)
}

/// Prints runs as a table, or as JSON.
pub(super) fn print_runs(runs: &[RunRecord], json: bool) -> anyhow::Result<u8> {
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<26}  {:<20}  {:<9}  {:<20}  {:>8}  STEPS",
        "RUN", "PIPELINE", "STATUS", "STARTED", "TOOK"
    )?;
    for run in runs {
        let took = run
            .finished_ms
            .map(|f| human_ms(f.saturating_sub(run.created_ms)))
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<26}  {:<20}  {:<9}  {:<20}  {:>8}  {}",
            run.id,
            run.pipeline,
            run.status.as_str(),
            timestamp(run.created_ms),
            took,
            run.step_count
        )?;
    }
    Ok(0)
}

/// Shows one run in full.
pub fn show(args: ShowArgs) -> anyhow::Result<u8> {
    if args.remote.server.is_some() {
        return super::client::show(&args);
    }
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

/// Prints a run and its steps as text; `local` when read from the store directly (then an
/// unfinished run has no runner: this process could open the store).
pub(super) fn print_run(run: &RunRecord, steps: &[StepRecord], local: bool) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    let took = run
        .finished_ms
        .map(|f| format!(" in {}", human_ms(f.saturating_sub(run.created_ms))))
        .unwrap_or_default();
    writeln!(out, "run       {}", run.id)?;
    writeln!(
        out,
        "pipeline  {} (definition {})",
        run.pipeline,
        &run.definition_hash[..12.min(run.definition_hash.len())]
    )?;
    writeln!(out, "status    {}{took}", run.status.as_str())?;
    if local && !run.status.is_terminal() {
        // This process could open the store, so no runner holds it: the run's runner is gone.
        writeln!(
            out,
            "          no runner is driving it (its runner stopped); finish it with `sluice run --resume {}`",
            run.id
        )?;
    }
    writeln!(
        out,
        "started   {} by {}",
        timestamp(run.created_ms),
        run.trigger
    )?;
    if !run.params.is_empty() {
        let params: Vec<String> = run.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "params    {}", params.join(" "))?;
    }
    writeln!(out)?;
    let width = steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<width$}  {:<9}  {:>8}  {:>4}  {:>8}  DETAIL",
        "STEP", "STATUS", "ATTEMPTS", "EXIT", "TOOK"
    )?;
    for step in steps {
        write_step(&mut out, step, width)?;
    }
    Ok(0)
}

fn write_step(out: &mut impl Write, step: &StepRecord, width: usize) -> std::io::Result<()> {
    let last = step.last_attempt();
    let exit = last
        .and_then(|a| {
            a.exit_code
                .map(|c| c.to_string())
                .or(a.signal.map(|s| format!("sig{s}")))
        })
        .unwrap_or_else(|| "-".into());
    let took = step
        .duration_ms()
        .map(human_ms)
        .unwrap_or_else(|| "-".into());
    let detail = step
        .reason
        .clone()
        .or_else(|| last.and_then(|a| a.message.clone()))
        .unwrap_or_default();
    writeln!(
        out,
        "{:<width$}  {:<9}  {:>8}  {:>4}  {:>8}  {detail}",
        step.name,
        step.status.as_str(),
        step.attempts.len(),
        exit,
        took
    )?;
    if !step.outputs.is_empty() {
        let outputs: Vec<String> = step
            .outputs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(out, "{:<width$}  outputs: {}", "", outputs.join(" "))?;
    }
    if !step.metrics.is_empty() {
        let metrics: Vec<String> = step
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(out, "{:<width$}  metrics: {}", "", metrics.join(" "))?;
    }
    if step.attempts.len() > 1 {
        for attempt in &step.attempts {
            let exit = attempt
                .exit_code
                .map(|c| format!("exit {c}"))
                .unwrap_or_default();
            writeln!(
                out,
                "{:<width$}  attempt {}: {} {exit} {}",
                "",
                attempt.number,
                attempt.status.as_str(),
                attempt.message.as_deref().unwrap_or("")
            )?;
        }
    }
    Ok(())
}

/// Prints an attempt's logs: stdout to stdout and stderr to stderr, so redirection keeps them apart.
pub fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    if args.remote.server.is_some() {
        return super::client::logs(&args);
    }
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

pub(super) fn timestamp(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}
