//! Live progress of a run in the terminal: spinners on a TTY, plain lines otherwise.
//!
//! Only committed state reaches this observer, so what a person sees has already survived a
//! crash of the runner.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::human_ms;
use crate::engine::RunObserver;
use crate::store::{RunRecord, StepRecord, StepStatus};

/// Prints step changes as they are committed.
pub struct Progress {
    width: usize,
    last: HashMap<String, (StepStatus, usize)>,
    /// Attempts whose start was printed (plain output), as (step, attempt number).
    announced: HashSet<(String, usize)>,
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
}

impl Progress {
    /// A progress printer; spinners only when stdout is a terminal.
    pub fn new(step_names: impl Iterator<Item = usize>) -> Progress {
        let width = step_names.max().unwrap_or(8).clamp(8, 32);
        let bars = std::io::stdout()
            .is_terminal()
            .then(|| (MultiProgress::new(), HashMap::new()));
        Progress {
            width,
            last: HashMap::new(),
            announced: HashSet::new(),
            bars,
        }
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
            }
        }
    }

    fn describe(&self, step: &StepRecord) -> String {
        let name = format!("{:width$}", step.name, width = self.width);
        let duration = step.duration_ms().map(human_ms).unwrap_or_default();
        let attempt = step.last_attempt();
        let attempts = match step.attempts.len() {
            0 | 1 => String::new(),
            n => format!(" after {n} attempts"),
        };
        match step.status {
            StepStatus::Succeeded => {
                let outputs: Vec<String> = step
                    .outputs
                    .iter()
                    .take(4)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let outputs = if outputs.is_empty() {
                    String::new()
                } else {
                    format!("  {}", outputs.join(" "))
                };
                match step.cache.as_ref() {
                    Some(note) if note.hit_from.is_some() => format!(
                        "  ✓ {name} cached    {:>7}  from run {}{outputs}",
                        "",
                        note.hit_from.as_deref().unwrap_or_default()
                    ),
                    Some(note) if !note.miss.is_empty() => format!(
                        "  ✓ {name} succeeded {duration:>7}{attempts}{outputs}  (cache miss: {})",
                        note.miss.join(", ")
                    ),
                    _ => format!("  ✓ {name} succeeded {duration:>7}{attempts}{outputs}"),
                }
            }
            StepStatus::Failed => {
                let why = attempt
                    .map(|a| {
                        let mut parts = Vec::new();
                        if let Some(code) = a.exit_code {
                            parts.push(format!("exit code {code}"));
                        }
                        if let Some(message) = &a.message {
                            parts.push(message.clone());
                        }
                        parts.join(": ")
                    })
                    .unwrap_or_default();
                format!("  ✗ {name} failed    {duration:>7}{attempts}  {why}")
            }
            StepStatus::Skipped => format!(
                "  - {name} skipped            {}",
                step.reason.as_deref().unwrap_or("")
            ),
            StepStatus::Cancelled => format!("  ⊘ {name} cancelled {duration:>7}"),
            StepStatus::Pending if step.retry_at_ms.is_some() => {
                let why = attempt.and_then(|a| {
                    a.message
                        .clone()
                        .or(a.exit_code.map(|c| format!("exit code {c}")))
                });
                format!(
                    "  ↻ {name} retrying  attempt {} {}",
                    step.attempts.len(),
                    why.map(|w| format!("failed ({w})"))
                        .unwrap_or_else(|| "failed".into())
                )
            }
            StepStatus::Running => match step.attempts.len() {
                0 | 1 => format!("  ▸ {name} started"),
                n => format!("  ▸ {name} started   attempt {n}"),
            },
            StepStatus::Queued | StepStatus::Pending => String::new(),
        }
    }
}

impl RunObserver for Progress {
    fn on_step(&mut self, run: &RunRecord, step: &StepRecord) {
        let state = (step.status, step.attempts.len());
        if self.last.get(&step.name) == Some(&state) {
            return;
        }
        self.last.insert(step.name.clone(), state);
        let text = self.describe(step);
        match &mut self.bars {
            Some((multi, bars)) => {
                if step.status == StepStatus::Running {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(format!("{:width$}", step.name, width = self.width));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bars.insert(step.name.clone(), bar);
                    return;
                }
                if let Some(bar) = bars.remove(&step.name) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                if !text.is_empty() {
                    let _ = multi.println(text);
                }
            }
            // Plain output (a CI log, a file) gets a line when a step starts and one when it
            // ends, so a step that hangs shows as started and not ended. A start and an end
            // committed together still print both; attempts kept from an earlier run (a
            // retry) did not start in this one.
            None => {
                let attempt = step.attempts.len();
                let started_here = step
                    .last_attempt()
                    .and_then(|a| a.started_ms)
                    .is_some_and(|at| at >= run.created_ms);
                if started_here && self.announced.insert((step.name.clone(), attempt)) {
                    let name = format!("{:width$}", step.name, width = self.width);
                    self.line(match attempt {
                        0 | 1 => format!("  ▸ {name} started"),
                        n => format!("  ▸ {name} started   attempt {n}"),
                    });
                }
                if !text.is_empty() && step.status != StepStatus::Running {
                    self.line(text);
                }
            }
        }
    }

    fn on_run(&mut self, _run: &RunRecord) {}
}
