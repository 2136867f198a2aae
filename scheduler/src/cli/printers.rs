//! How runs and steps are printed, the same whether they were read from the data dir
//! (`cli/inspect.rs`) or from a scheduler's API (`cli/client.rs`).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::human_ms;
use crate::spec::{AfterStatus, Phase, Pipeline, Trigger};
use crate::store::{AttemptRecord, RunRecord, StepRecord, StepStatus};

/// Prints runs as a table, or as JSON.
pub fn print_runs(runs: &[RunRecord], json: bool) -> anyhow::Result<u8> {
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

/// Prints a run and its steps as text; `local` when read from the store directly (then an
/// unfinished run has no runner: this process could open the store).
pub fn print_run(run: &RunRecord, steps: &[StepRecord], local: bool) -> anyhow::Result<u8> {
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
    if let Some(commit) = &run.commit {
        writeln!(out, "commit    {commit}")?;
    }
    if !run.params.is_empty() {
        let params: Vec<String> = run.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "params    {}", params.join(" "))?;
    }
    let width = steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    // The run's steps, then its `on_failure:` and `finally:` steps, each under its own heading.
    for (phase, heading) in [
        (Phase::Main, "STEP"),
        (Phase::OnFailure, "ON FAILURE"),
        (Phase::Finally, "FINALLY"),
    ] {
        let section: Vec<&StepRecord> = steps.iter().filter(|s| s.phase == phase).collect();
        if section.is_empty() {
            continue;
        }
        writeln!(out)?;
        writeln!(
            out,
            "{:<width$}  {:<9}  {:>8}  {:>4}  {:>8}  DETAIL",
            heading, "STATUS", "ATTEMPTS", "EXIT", "TOOK"
        )?;
        for step in section {
            write_step(&mut out, step, width, local)?;
        }
    }
    super::sweeps::write_sweeps(&mut out, steps)?;
    Ok(0)
}

fn write_step(
    out: &mut impl Write,
    step: &StepRecord,
    width: usize,
    local: bool,
) -> std::io::Result<()> {
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
    let mut detail = step
        .reason
        .clone()
        .or_else(|| last.and_then(|a| a.message.clone()))
        .unwrap_or_default();
    let cached = step.cache.as_ref().is_some_and(|n| n.hit_from.is_some());
    if let Some(note) = step.cache.as_ref().filter(|n| !n.miss.is_empty()) {
        detail = format!("cache miss: {}", note.miss.join(", "));
    }
    let status = if cached {
        "cached"
    } else {
        step.status.as_str()
    };
    writeln!(
        out,
        "{:<width$}  {:<9}  {:>8}  {:>4}  {:>8}  {detail}",
        step.name,
        status,
        step.attempts.len(),
        exit,
        took
    )?;
    if let Some(attempt) = last {
        // Where to look by hand: `out/`, the logs, outputs and metrics of the last attempt. Read
        // through a scheduler, the folder is on the machine of the worker that ran it.
        let on = attempt
            .worker
            .as_deref()
            .filter(|_| !local)
            .map(|w| format!(" (on worker {w})"))
            .unwrap_or_default();
        writeln!(out, "{:<width$}  folder: {}{on}", "", attempt.dir.display())?;
    }
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
    if let Some(gate) = &step.gate {
        for line in gate.table() {
            writeln!(out, "{:<width$}  {line}", "")?;
        }
    }
    for (name, version) in &step.models {
        writeln!(out, "{:<width$}  model input: {name} = {version}", "")?;
    }
    for artifact in &step.artifacts {
        writeln!(
            out,
            "{:<width$}  artifact: {}  {}  ({}, {} files)",
            "",
            &artifact.id[..artifact.id.len().min(12)],
            artifact.name,
            super::artifacts::human_bytes(artifact.size),
            artifact.files
        )?;
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

/// The end of a followed run, as `sluice run` prints it: the counts, then for each failed step
/// how it ended, the last lines of its stderr (`tails`, by step) and the `sluice logs` command
/// that prints the rest (`logs_flags` appended: where the logs are).
pub fn print_run_end(
    run: &RunRecord,
    steps: &[StepRecord],
    tails: &BTreeMap<String, Vec<String>>,
    logs_flags: &str,
) {
    let count = |status: StepStatus| steps.iter().filter(|s| s.status == status).count();
    let took = run
        .finished_ms
        .map(|f| format!(" in {}", human_ms(f.saturating_sub(run.created_ms))))
        .unwrap_or_default();
    let mut parts = vec![format!("{} succeeded", count(StepStatus::Succeeded))];
    for (status, word) in [
        (StepStatus::Failed, "failed"),
        (StepStatus::Skipped, "skipped"),
        (StepStatus::Cancelled, "cancelled"),
    ] {
        let n = count(status);
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    println!(
        "run {} {}{took}: {}",
        run.id,
        run.status.as_str(),
        parts.join(", ")
    );
    for step in steps.iter().filter(|s| s.status == StepStatus::Failed) {
        let ended = step.last_attempt().map(how_it_ended);
        if let Some(ended) = ended.or_else(|| step.reason.clone()) {
            println!("--- `{}` failed: {ended}", step.name);
        }
        if let Some(tail) = tails.get(&step.name).filter(|t| !t.is_empty()) {
            println!("--- last lines of `{}` stderr:", step.name);
            for line in tail {
                println!("    {line}");
            }
        }
        println!(
            "    full log: sluice logs {} {}{logs_flags}",
            run.id, step.name
        );
    }
}

/// How an attempt ended, for people: its exit code, signal or outcome, and its message.
fn how_it_ended(attempt: &AttemptRecord) -> String {
    let end = match (attempt.exit_code, attempt.signal, attempt.outcome) {
        (Some(code), _, _) => format!("exit code {code}"),
        (None, Some(signal), _) => format!("killed by signal {signal}"),
        (None, None, Some(outcome)) => outcome.as_str().replace('_', " "),
        (None, None, None) => attempt.status.as_str().to_string(),
    };
    match &attempt.message {
        Some(message) => format!("{end} ({message})"),
        None => end,
    }
}

/// A pipeline as `sluice pipelines` lists it, read from a folder or from a scheduler.
#[derive(Debug, Serialize)]
pub struct ListedPipeline {
    /// Its `name`.
    pub name: String,
    /// Its `description`, if it has one.
    pub description: Option<String>,
    /// The file it was read from (as the scheduler names it, for a scheduler's).
    pub file: String,
    /// SHA-256 of the definition served: what runs started now record.
    pub hash: String,
    /// How many steps it has.
    pub steps: usize,
    /// Its triggers; `None` when the source does not say (the API lists no triggers, so a
    /// scheduler's are known only where its file is readable here and unchanged).
    pub triggers: Option<Vec<ListedTrigger>>,
    /// Whether its file no longer loads and the scheduler serves this older version instead.
    pub serving_last_good: bool,
}

/// One trigger of a listed pipeline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListedTrigger {
    /// `cron`, `webhook`, `watch` or `after`.
    pub kind: &'static str,
    /// The schedule, hook, folder or followed pipeline, as written.
    pub what: String,
    /// A cron trigger's next instant (RFC 3339, UTC), computed from the schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// `next` as milliseconds since the epoch, for the "in 3h05m" shown beside it.
    #[serde(skip)]
    pub next_ms: Option<u64>,
}

/// A pipeline file that did not load.
#[derive(Debug, Serialize)]
pub struct UnloadedFile {
    /// The file.
    pub file: String,
    /// Every problem, one `file:line:column: message` each.
    pub problems: Vec<String>,
    /// Hash of the last good version the scheduler still serves for it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_last_good: Option<String>,
}

/// The triggers of `pipeline` as listed, cron ones with their next instant after `now`.
pub fn listed_triggers(pipeline: &Pipeline, now: DateTime<Utc>) -> Vec<ListedTrigger> {
    pipeline
        .triggers
        .iter()
        .map(|trigger| {
            let (kind, what, next) = match trigger {
                Trigger::Cron {
                    schedule,
                    timezone,
                    parsed,
                    ..
                } => (
                    "cron",
                    format!("`{schedule}` ({timezone})"),
                    parsed.next_after(now),
                ),
                Trigger::Webhook { name, .. } => (
                    "webhook",
                    format!("POST /hooks/{}/{name}", pipeline.name),
                    None,
                ),
                Trigger::Watch {
                    path,
                    pattern,
                    param,
                } => (
                    "watch",
                    format!("{path} `{pattern}` (file into param `{param}`)"),
                    None,
                ),
                Trigger::After(after) => {
                    let status = match after.status {
                        AfterStatus::Succeeded => "succeeded",
                        AfterStatus::Failed => "failed",
                        AfterStatus::Cancelled => "cancelled",
                        AfterStatus::Finished => "finished",
                    };
                    let when = after
                        .when
                        .as_ref()
                        .map(|(text, _)| format!(" when {text}"))
                        .unwrap_or_default();
                    (
                        "after",
                        format!("`{}` {status}{when}", after.pipeline),
                        None,
                    )
                }
            };
            ListedTrigger {
                kind,
                what,
                next: next.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                next_ms: next.and_then(|t| u64::try_from(t.timestamp_millis()).ok()),
            }
        })
        .collect()
}

/// Prints pipelines and the files that did not load, as a table or as JSON.
pub fn print_pipelines(
    pipelines: &[ListedPipeline],
    unloaded: &[UnloadedFile],
    json: bool,
) -> anyhow::Result<u8> {
    if json {
        let out = serde_json::json!({ "pipelines": pipelines, "errors": unloaded });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    let now_ms = sluice_worker::task::now_ms();
    let mut out = std::io::stdout().lock();
    let name_width = pipelines.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let name_width = name_width.max("PIPELINE".len());
    let file_width = pipelines.iter().map(|p| p.file.len()).max().unwrap_or(0);
    let file_width = file_width.max("FILE".len());
    writeln!(
        out,
        "{:<name_width$}  {:<12}  {:>5}  {:<file_width$}  TRIGGERS",
        "PIPELINE", "VERSION", "STEPS", "FILE"
    )?;
    for pipeline in pipelines {
        let mut triggers: Vec<String> = match &pipeline.triggers {
            None => vec![
                "? (the API does not list triggers, and its file here is not the version served)"
                    .into(),
            ],
            Some(triggers) if triggers.is_empty() => {
                vec!["-".into()]
            }
            Some(triggers) => triggers
                .iter()
                .map(|t| {
                    let next = match (&t.next, t.next_ms) {
                        (Some(next), Some(ms)) => {
                            format!(", next {next} (in {})", human_ms(ms.saturating_sub(now_ms)))
                        }
                        _ => String::new(),
                    };
                    format!("{} {}{next}", t.kind, t.what)
                })
                .collect(),
        };
        if pipeline.serving_last_good {
            triggers.push("serving the last good version: its file has errors (below)".into());
        }
        for (i, trigger) in triggers.iter().enumerate() {
            if i == 0 {
                writeln!(
                    out,
                    "{:<name_width$}  {:<12}  {:>5}  {:<file_width$}  {trigger}",
                    pipeline.name,
                    &pipeline.hash[..pipeline.hash.len().min(12)],
                    pipeline.steps,
                    pipeline.file
                )?;
            } else {
                writeln!(
                    out,
                    "{:<name_width$}  {:<12}  {:>5}  {:<file_width$}  {trigger}",
                    "", "", "", ""
                )?;
            }
        }
    }
    if !unloaded.is_empty() {
        let files = if unloaded.len() == 1 { "file" } else { "files" };
        writeln!(out, "\n{} {files} not loaded:", unloaded.len())?;
        for file in unloaded {
            let last_good = file
                .serving_last_good
                .as_deref()
                .map(|h| {
                    format!(
                        " (serving its last good version, {})",
                        &h[..h.len().min(12)]
                    )
                })
                .unwrap_or_default();
            writeln!(out, "{}{last_good}", file.file)?;
            for problem in &file.problems {
                writeln!(out, "  {problem}")?;
            }
        }
    }
    Ok(0)
}

/// An instant as RFC 3339 in UTC, to the second.
pub fn timestamp(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}
