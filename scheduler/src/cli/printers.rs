//! How runs and steps are printed, the same whether they were read from the data dir
//! (`cli/inspect.rs`) or from a scheduler's API (`cli/client.rs`).

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::human_ms;
use crate::store::{RunRecord, StepRecord};

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

/// An instant as RFC 3339 in UTC, to the second.
pub fn timestamp(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}
