//! Checks that need the whole pipeline: dependency targets, cycles, and references between fields.

use std::collections::{HashMap, HashSet};

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;

use super::condition::Operand;
use super::diagnostic::did_you_mean;
use super::model::{Pipeline, Trigger};
use super::parse::ParsedStep;
use super::reader::Reader;
use super::yaml::Mark;

/// Runs every cross-field check, recording problems in the reader.
/// Runs on whatever could be read: steps with broken fields still take part (by name and
/// `depends`), so one pass reports a typo'd dependency and a bad timeout together. `pipeline` is
/// `None` when the top-level fields were broken; the checks that need params are then skipped.
pub fn check(r: &mut Reader, pipeline: Option<&Pipeline>, steps: &[ParsedStep], root: Mark) {
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    let known: HashSet<&str> = names.iter().copied().collect();
    depends_targets(r, steps, &names, &known);
    cycles(r, steps, &known);
    if let Some(pipeline) = pipeline {
        conditions(r, pipeline, steps);
        trigger_params(r, pipeline, root);
    }
}

fn depends_targets(r: &mut Reader, steps: &[ParsedStep], names: &[&str], known: &HashSet<&str>) {
    for parsed in steps {
        let step = parsed;
        let mut seen = HashSet::new();
        for (dep, mark) in step.depends.iter().zip(&parsed.depends_marks) {
            let field = format!("steps.{}.depends", step.name);
            if dep == &step.name {
                r.error(*mark, &field, format!("step `{dep}` depends on itself"));
            } else if !known.contains(dep.as_str()) {
                let d = r.diags.error(
                    *mark,
                    &field,
                    format!(
                        "step `{}` depends on `{dep}`, which is not a step",
                        step.name
                    ),
                );
                if let Some(s) = did_you_mean(dep, names) {
                    d.help(format!("did you mean `{s}`?"));
                }
            } else if !seen.insert(dep.as_str()) {
                r.error(
                    *mark,
                    &field,
                    format!("`{dep}` is listed twice in `depends`"),
                );
            }
        }
    }
}

/// Reports each dependency cycle once, as the whole chain: `train -> validate -> train`, where
/// `a -> b` reads "a depends on b".
fn cycles(r: &mut Reader, steps: &[ParsedStep], known: &HashSet<&str>) {
    let mut graph = DiGraphMap::<&str, ()>::new();
    let order: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for parsed in steps {
        graph.add_node(parsed.name.as_str());
        for dep in &parsed.depends {
            if known.contains(dep.as_str()) && dep != &parsed.name {
                graph.add_edge(parsed.name.as_str(), dep.as_str(), ());
            }
        }
    }
    let mut components: Vec<Vec<&str>> = tarjan_scc(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    components.sort_by_key(|c| c.iter().map(|n| order[n]).min());
    for component in components {
        let members: HashSet<&str> = component.iter().copied().collect();
        let Some(start) = component.iter().copied().min_by_key(|n| order[n]) else {
            continue;
        };
        let chain = cycle_through(&graph, start, &members, &order);
        let parsed = &steps[order[start]];
        let next = chain.get(1).copied().unwrap_or(start);
        let mark = parsed
            .depends
            .iter()
            .position(|d| d == next)
            .and_then(|i| parsed.depends_marks.get(i).copied())
            .unwrap_or(parsed.mark);
        r.diags
            .error(
                mark,
                &format!("steps.{start}.depends"),
                format!("dependency cycle: {}", chain.join(" -> ")),
            )
            .help("a step cannot depend, directly or through others, on itself");
    }
}

/// The shortest path from `start` back to itself inside one strongly connected component.
fn cycle_through<'a>(
    graph: &DiGraphMap<&'a str, ()>,
    start: &'a str,
    members: &HashSet<&'a str>,
    order: &HashMap<&str, usize>,
) -> Vec<&'a str> {
    let mut previous: HashMap<&str, &str> = HashMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut next_frontier = Vec::new();
        for node in frontier {
            let mut neighbours: Vec<&str> = graph
                .neighbors(node)
                .filter(|n| members.contains(n))
                .collect();
            neighbours.sort_by_key(|n| order[n]);
            for n in neighbours {
                if n == start {
                    let mut chain = vec![start];
                    let mut at = node;
                    while at != start {
                        chain.push(at);
                        at = previous[at];
                    }
                    chain[1..].reverse();
                    chain.push(start);
                    return chain;
                }
                if !previous.contains_key(n) {
                    previous.insert(n, node);
                    next_frontier.push(n);
                }
            }
        }
        frontier = next_frontier;
    }
    vec![start, start]
}

/// A condition may read only a step that is upstream of its own, and only declared params.
fn conditions(r: &mut Reader, pipeline: &Pipeline, steps: &[ParsedStep]) {
    let by_name: HashMap<&str, &ParsedStep> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
    for parsed in steps {
        let (Some(when), Some(mark)) = (&parsed.when, parsed.when_mark) else {
            continue;
        };
        let field = format!("steps.{}.when", parsed.name);
        match &when.left {
            Operand::StepOutput { step, .. } => {
                if !upstream_of(&by_name, &parsed.name).contains(step.as_str()) {
                    r.error(
                        mark,
                        &field,
                        format!(
                            "`when` of step `{}` reads step `{step}`, which it does not depend on (directly or through others)",
                            parsed.name
                        ),
                    );
                }
            }
            Operand::Param(name) => {
                if !pipeline.params.contains_key(name) {
                    r.error(
                        mark,
                        &field,
                        format!("`when` reads param `{name}`, which is not declared in `params`"),
                    );
                }
            }
        }
    }
}

/// Every step that `step` depends on, directly or through others.
fn upstream_of<'a>(by_name: &HashMap<&'a str, &'a ParsedStep>, step: &str) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    let mut stack: Vec<&str> = by_name
        .get(step)
        .map(|s| s.depends.iter().map(String::as_str).collect())
        .unwrap_or_default();
    while let Some(name) = stack.pop() {
        if let Some((key, parsed)) = by_name.get_key_value(name) {
            if seen.insert(*key) {
                stack.extend(parsed.depends.iter().map(String::as_str));
            }
        }
    }
    seen
}

fn trigger_params(r: &mut Reader, pipeline: &Pipeline, root: Mark) {
    for (i, trigger) in pipeline.triggers.iter().enumerate() {
        let targets: Vec<&String> = match trigger {
            Trigger::Webhook { params, .. } => params.keys().collect(),
            Trigger::Watch { param, .. } => vec![param],
            Trigger::Cron { .. } => Vec::new(),
        };
        for name in targets {
            if !pipeline.params.contains_key(name) {
                r.error(
                    root,
                    &format!("triggers[{i}]"),
                    format!(
                        "trigger {} sets param `{name}`, which is not declared in `params`",
                        i + 1
                    ),
                );
            }
        }
    }
}
