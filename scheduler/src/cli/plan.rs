//! `sluice run FILE --dry-run`: what a run would do, step by step, without doing any of it.
//!
//! The plan is read from the validated pipeline alone: no data dir is created, no store opened,
//! no process started, so it is safe on any machine (a CI job checking a change, a laptop
//! without the GPUs or images the steps want).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use crate::spec::builtins::Builtin;
use crate::spec::{Action, Backoff, GpuRequest, LoadedPipeline, Phase, Pipeline, Step};

/// The plan as text, ready to print.
/// A subset's plan: the steps selected, and the steps they need (kept from an earlier run).
pub struct Subset<'a> {
    /// The flags, as written.
    pub describe: String,
    /// The steps that run.
    pub chosen: &'a BTreeSet<String>,
    /// The steps whose earlier results they read.
    pub kept: &'a BTreeSet<String>,
}

pub fn render(
    loaded: &LoadedPipeline,
    overrides: &BTreeMap<String, String>,
    params: &BTreeMap<String, String>,
    subset: Option<&Subset<'_>>,
) -> String {
    let pipeline = &loaded.pipeline;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan of `{}` ({}): {} steps; --dry-run: nothing is run or stored",
        pipeline.name,
        loaded.path.display(),
        pipeline.steps.len()
    );
    if !pipeline.params.is_empty() {
        out.push_str("params:\n");
        let width = pipeline.params.keys().map(String::len).max().unwrap_or(0);
        for name in pipeline.params.keys() {
            let value = params.get(name).map_or("", String::as_str);
            let source = if overrides.contains_key(name) {
                "from -p"
            } else {
                "default"
            };
            let _ = writeln!(out, "  {name:<width$} = {value:?}  ({source})");
        }
    }
    let width = pipeline.steps.keys().map(String::len).max().unwrap_or(0);
    for (i, name) in order(pipeline).iter().enumerate() {
        let step = &pipeline.steps[*name];
        let pad = " ".repeat(width + 7);
        if let Some(subset) = subset.filter(|s| !s.chosen.contains(*name)) {
            let what = if subset.kept.contains(*name) {
                "not run: kept from the newest earlier run in which it succeeded"
            } else {
                "skipped: not selected"
            };
            let _ = writeln!(
                out,
                "{:>3}. {name:<width$}  {what} ({})",
                i + 1,
                subset.describe
            );
            continue;
        }
        let _ = writeln!(out, "{:>3}. {name:<width$}  {}", i + 1, action(step));
        for line in details(step) {
            let _ = writeln!(out, "{pad}{line}");
        }
    }
    out
}

/// Step names in an order that runs each after what it depends on (file order among equals).
fn order(pipeline: &Pipeline) -> Vec<&String> {
    let mut waiting: HashMap<&str, usize> = pipeline
        .steps
        .values()
        .map(|s| (s.name.as_str(), s.depends.len()))
        .collect();
    let mut ready: VecDeque<&String> = pipeline
        .steps
        .keys()
        .filter(|n| waiting[n.as_str()] == 0)
        .collect();
    let mut out = Vec::with_capacity(pipeline.steps.len());
    while let Some(name) = ready.pop_front() {
        out.push(name);
        for step in pipeline.steps.values() {
            if step.depends.iter().any(|d| d == name) {
                let left = waiting.entry(step.name.as_str()).or_default();
                *left -= 1;
                if *left == 0 {
                    ready.push_back(&step.name);
                }
            }
        }
    }
    // Handlers run after the run's steps, `on_failure` before `finally` (a stable sort keeps
    // the order within each section; nothing depends on a later section).
    out.sort_by_key(|name| pipeline.steps[*name].phase);
    out
}

fn action(step: &Step) -> String {
    match &step.action {
        Action::Shell(text) => {
            let first = text.lines().next().unwrap_or_default();
            let more = text.lines().count().saturating_sub(1);
            match more {
                0 => format!("run: {first}"),
                n => format!("run: {first}  (+{n} more lines)"),
            }
        }
        Action::Exec(argv) => format!("command: {argv:?}"),
        Action::Uses { kind, builtin } => {
            let place = match builtin.as_ref() {
                Builtin::Register(_) | Builtin::Gate(_) => "in the scheduler",
                _ => "on a worker",
            };
            format!("uses: {kind} ({place})")
        }
    }
}

fn details(step: &Step) -> Vec<String> {
    let mut lines = Vec::new();
    match step.phase {
        Phase::Main => {}
        Phase::OnFailure => {
            lines.push("on_failure: after the steps, only if the run failed".into())
        }
        Phase::Finally => lines.push("finally: last, whatever happened (a cancel too)".into()),
    }
    if !step.depends.is_empty() {
        lines.push(format!("after {}", step.depends.join(", ")));
    }
    if let Some(when) = &step.when {
        lines.push(format!("when `{when}` (decided when the run gets there)"));
    }
    if let Action::Uses { builtin, .. } = &step.action {
        if matches!(builtin.as_ref(), Builtin::Register(_) | Builtin::Gate(_)) {
            return lines; // No process, queue or retry: the scheduler does it on the spot.
        }
    }
    let mut place = vec![match &step.image {
        Some(image) => {
            let pull = serde_json::to_value(step.pull).unwrap_or_default();
            format!("image {image} (pull {})", pull.as_str().unwrap_or("?"))
        }
        None => "local process".to_string(),
    }];
    if let Some(dir) = &step.workdir {
        place.push(format!("workdir {dir}"));
    }
    place.push(format!("queue {}", step.queue));
    if let Some(timeout) = step.timeout {
        place.push(format!("timeout {}", humantime::format_duration(timeout)));
    }
    if step.retry.limit > 0 {
        let backoff = match step.retry.backoff {
            Backoff::Fixed => "fixed",
            Backoff::Exponential => "exponential",
        };
        place.push(format!(
            "retry {} ({backoff}, {})",
            step.retry.limit,
            humantime::format_duration(step.retry.delay)
        ));
    }
    lines.push(place.join(" · "));
    let mut needs = Vec::new();
    if let Some(cpu) = step.resources.cpu {
        needs.push(format!("cpu {cpu}"));
    }
    if let Some(memory) = step.resources.memory {
        needs.push(format!("memory {} MiB", memory >> 20));
    }
    match &step.resources.gpu {
        Some(GpuRequest::Count(n)) => needs.push(format!("gpu {n}")),
        Some(GpuRequest::All) => needs.push("gpu all".into()),
        Some(GpuRequest::Ids(ids)) => needs.push(format!("gpu {}", ids.join(","))),
        None => {}
    }
    if !needs.is_empty() {
        lines.push(needs.join(" · "));
    }
    if !step.outputs.is_empty() {
        lines.push(format!("outputs: {}", step.outputs.join(", ")));
    }
    if !step.models.is_empty() {
        let models: Vec<String> = step
            .models
            .iter()
            .map(|(name, reference)| format!("{name} = {reference}"))
            .collect();
        lines.push(format!("models: {}", models.join(", ")));
    }
    if !step.secrets.is_empty() {
        lines.push(format!("secrets: {}", step.secrets.join(", ")));
    }
    if step.cache.is_some() {
        lines.push("cache: reused when its inputs, params and code are unchanged".into());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(yaml: &str) -> LoadedPipeline {
        LoadedPipeline {
            pipeline: crate::spec::parse_str("p.yaml", yaml).unwrap_or_else(|d| panic!("{d:?}")),
            text: yaml.into(),
            hash: String::new(),
            path: "p.yaml".into(),
        }
    }

    #[test]
    fn steps_come_after_what_they_depend_on_with_their_settings() {
        let loaded = loaded(
            "name: p
params: {lr: 0.1, seed: 7}
steps:
  report: {run: echo done, depends: [train]}
  train:
    run: python3 train.py
    depends: [ingest]
    image: trainer:1
    retry: {limit: 2, delay: 5s, backoff: exponential}
    resources: {gpu: 1, memory: 2Gi}
    outputs: [model/]
    when: params.lr > 0
  ingest: {run: python3 ingest.py}
",
        );
        let overrides = BTreeMap::from([("lr".to_string(), "0.5".to_string())]);
        let params = BTreeMap::from([
            ("lr".to_string(), "0.5".to_string()),
            ("seed".to_string(), "7".to_string()),
        ]);
        let plan = render(&loaded, &overrides, &params, None);
        let at = |needle: &str| {
            plan.find(needle)
                .unwrap_or_else(|| panic!("`{needle}` not in:\n{plan}"))
        };
        assert!(at("1. ingest") < at("2. train") && at("2. train") < at("3. report"));
        at("lr   = \"0.5\"  (from -p)");
        at("seed = \"7\"  (default)");
        at("image trainer:1 (pull if_not_present)");
        at("retry 2 (exponential, 5s)");
        at("memory 2048 MiB · gpu 1");
        at("outputs: model/");
        at("when `params.lr >");
        at("after train");
    }
}
