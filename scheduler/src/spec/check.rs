//! Checks that need the whole pipeline: dependency targets, cycles, and references between fields.

use std::collections::{HashMap, HashSet};

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;

use super::builtins::{Builtin, VersionFrom};
use super::condition::{Condition, Operand};
use super::diagnostic::did_you_mean;
use super::model::{Action, Pipeline, Trigger};
use super::parse::ParsedStep;
use super::reader::Reader;
use super::yaml::{Mark, Node, Value};

/// Runs every cross-field check, recording problems in the reader.
/// Above this many steps, unknown dependencies get no "did you mean" (it costs steps x typos).
const MAX_SUGGESTION_CANDIDATES: usize = 2_000;

/// Runs on whatever could be read: steps with broken fields still take part (by name and
/// `depends`), so one pass reports a typo'd dependency and a bad timeout together. `pipeline` is
/// `None` when the top-level fields were broken; the checks that need params are then skipped.
pub fn check(r: &mut Reader, pipeline: Option<&Pipeline>, steps: &[ParsedStep], root: &Node) {
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    let known: HashSet<&str> = names.iter().copied().collect();
    depends_targets(r, steps, &names, &known);
    sections(r, steps);
    cycles(r, steps, &known);
    if let Some(pipeline) = pipeline {
        conditions(r, pipeline, steps);
        trigger_params(r, pipeline, root);
    }
    builtin_references(r, steps);
}

/// Steps named in built-in kinds' `with:` must be upstream: directly for `drift` (whose data
/// is materialised from direct dependencies only), directly or through others for the kinds
/// the scheduler runs from records. `register` must name a declared output, and `deploy`'s
/// `version` a `register` step.
fn builtin_references(r: &mut Reader, steps: &[ParsedStep]) {
    let by_name: HashMap<&str, &ParsedStep> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut upstream = Upstream::default();
    for parsed in steps {
        let Some(step) = &parsed.step else { continue };
        let Action::Uses { kind, builtin } = &step.action else {
            continue;
        };
        let builtin: &Builtin = builtin;
        let field = format!("{}.{}.with", parsed.phase.section(), parsed.name);
        for named in builtin.named_steps() {
            let direct = parsed.depends.iter().any(|d| d == named);
            let reachable = direct
                || (!matches!(builtin, Builtin::Drift(_))
                    && upstream.contains(&by_name, &parsed.name, named));
            if reachable {
                continue;
            }
            let how = if matches!(builtin, Builtin::Drift(_)) {
                "directly"
            } else {
                "directly or through others"
            };
            let what = if by_name.contains_key(named) {
                format!("step `{}` (`uses: {kind}`) reads step `{named}`, which it does not depend on {how}", parsed.name)
            } else {
                format!(
                    "step `{}` (`uses: {kind}`) reads step `{named}`, which is not a step",
                    parsed.name
                )
            };
            r.diags
                .error(parsed.mark, &field, what)
                .help(format!("add `{named}` to `depends`"));
        }
        match builtin {
            Builtin::Register(args) => {
                let Some(source) = by_name
                    .get(args.from.step.as_str())
                    .and_then(|p| p.step.as_ref())
                else {
                    continue;
                };
                let declared = source
                    .outputs
                    .iter()
                    .any(|o| o.trim_end_matches('/') == args.from.path);
                if !declared {
                    r.diags
                        .error(
                            parsed.mark,
                            &format!("{field}.from"),
                            format!(
                                "step `{}` registers `{}/{}`, which step `{}` does not declare in `outputs`",
                                parsed.name, args.from.step, args.from.path, args.from.step
                            ),
                        )
                        .help(format!(
                            "outputs of `{}`: {}",
                            args.from.step,
                            if source.outputs.is_empty() { "none".to_string() } else { source.outputs.join(", ") }
                        ));
                }
            }
            Builtin::Deploy(args) => {
                if let VersionFrom::Step(name) = &args.version {
                    let is_register = by_name
                        .get(name.as_str())
                        .and_then(|p| p.step.as_ref())
                        .is_some_and(|s| {
                            matches!(&s.action, Action::Uses { builtin, .. } if matches!(**builtin, Builtin::Register(_)))
                        });
                    if by_name.contains_key(name.as_str()) && !is_register {
                        r.error(
                            parsed.mark,
                            &format!("{field}.version"),
                            format!("`version: {name}` must name a `register` step (or be a version number)"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// Handler sections run after the steps: a step may depend on a step of its own section (for
/// order) or of an earlier one (a handler's `$SLUICE_IN` then has its outputs, when it
/// succeeded), never of a later one; a name is used once across sections. A step with a
/// `matrix` runs as its expansions: what reads one step's values cannot name it.
fn sections(r: &mut Reader, steps: &[ParsedStep]) {
    let mut first: HashMap<&str, &ParsedStep> = HashMap::new();
    for parsed in steps {
        if let Some(earlier) = first.get(parsed.name.as_str()) {
            if earlier.phase != parsed.phase {
                r.error(
                    parsed.mark,
                    &format!("{}.{}", parsed.phase.section(), parsed.name),
                    format!(
                        "step name `{}` is used in `{}` and in `{}`",
                        parsed.name,
                        earlier.phase.section(),
                        parsed.phase.section()
                    ),
                );
            }
            continue;
        }
        first.insert(parsed.name.as_str(), parsed);
    }
    for parsed in steps {
        let field = format!("{}.{}.depends", parsed.phase.section(), parsed.name);
        for (dep, mark) in parsed.depends.iter().zip(&parsed.depends_marks) {
            let Some(target) = first.get(dep.as_str()) else {
                continue;
            };
            if target.phase > parsed.phase {
                r.diags
                    .error(
                        *mark,
                        &field,
                        format!(
                            "step `{}` depends on `{dep}`, a step of `{}`, which runs after it",
                            parsed.name,
                            target.phase.section()
                        ),
                    )
                    .help("`on_failure` steps run after `steps`, and `finally` steps after both");
            }
        }
        if let Some(mark) = parsed.when_mark {
            let reads_matrix =
                parsed
                    .when
                    .iter()
                    .flat_map(|w| w.operands())
                    .find_map(|o| match o {
                        Operand::StepOutput { step, .. } => first
                            .get(step.as_str())
                            .filter(|t| t.has_matrix)
                            .map(|_| step.clone()),
                        Operand::Param(_) => None,
                    });
            if let Some(step) = reads_matrix {
                r.error(
                    mark,
                    &format!("{}.{}.when", parsed.phase.section(), parsed.name),
                    format!("`when` reads step `{step}`, which has a `matrix`: each of its expansions has its own outputs"),
                );
            }
        }
        let Some(Action::Uses { kind, builtin }) = parsed.step.as_ref().map(|s| &s.action) else {
            continue;
        };
        for named in builtin.named_steps() {
            if first.get(named).is_some_and(|t| t.has_matrix) {
                r.error(
                    parsed.mark,
                    &format!("{}.{}.with", parsed.phase.section(), parsed.name),
                    format!("step `{}` (`uses: {kind}`) reads step `{named}`, which has a `matrix`: name a step that joins its expansions' results instead", parsed.name),
                );
            }
        }
    }
}

fn depends_targets(r: &mut Reader, steps: &[ParsedStep], names: &[&str], known: &HashSet<&str>) {
    for parsed in steps {
        let step = parsed;
        let mut seen = HashSet::new();
        for (dep, mark) in step.depends.iter().zip(&parsed.depends_marks) {
            let field = format!("{}.{}.depends", step.phase.section(), step.name);
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
                // Suggestions compare against every name: keep them for files of human size.
                if names.len() <= MAX_SUGGESTION_CANDIDATES {
                    if let Some(s) = did_you_mean(dep, names) {
                        d.help(format!("did you mean `{s}`?"));
                    }
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
                &format!("{}.{start}.depends", parsed.phase.section()),
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

/// A condition may read only a step that is upstream of its own, and only declared params;
/// quoted text that reads like a reference is a warning (it compares with those characters).
fn conditions(r: &mut Reader, pipeline: &Pipeline, steps: &[ParsedStep]) {
    let by_name: HashMap<&str, &ParsedStep> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut upstream = Upstream::new(steps);
    for parsed in steps {
        let (Some(when), Some(mark)) = (&parsed.when, parsed.when_mark) else {
            continue;
        };
        let field = format!("{}.{}.when", parsed.phase.section(), parsed.name);
        for operand in when.operands() {
            match operand {
                Operand::StepOutput { step, .. } => {
                    if !upstream.contains(&by_name, &parsed.name, step.as_str()) {
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
                            format!(
                                "`when` reads param `{name}`, which is not declared in `params`"
                            ),
                        );
                    }
                }
            }
        }
        quoted_references(r, when, mark, &field);
    }
}

/// Warns about quoted text in `when` that reads like a reference: `params.x == "params.y"`
/// compares with the characters `params.y`, which is rarely what was meant.
pub fn quoted_references(r: &mut Reader, when: &Condition, mark: Mark, field: &str) {
    for text in when.quoted_references() {
        r.warning(
            mark,
            field,
            format!("`when` compares with the text \"{text}\", not with the value of `{text}`"),
        )
        .help(format!(
            "write `{text}` without quotes to compare with its value"
        ));
    }
}

/// Answers "is `upstream` among the steps `step` depends on, directly or through others?".
///
/// A step read by many conditions gets its downstream set computed once; otherwise the walk goes
/// up from the reading step and stops as soon as it meets the step it reads. Both common shapes
/// (each step reads its parent; many steps read one early step) stay linear.
#[derive(Default)]
struct Upstream<'a> {
    readers: HashMap<&'a str, usize>,
    downstream: HashMap<&'a str, HashSet<&'a str>>,
}

/// A step read by more conditions than this gets its downstream set computed once.
const SHARED_READ: usize = 8;

impl<'a> Upstream<'a> {
    fn new(steps: &'a [ParsedStep]) -> Self {
        let mut readers = HashMap::new();
        for when in steps.iter().filter_map(|parsed| parsed.when.as_ref()) {
            for operand in when.operands() {
                if let Operand::StepOutput { step, .. } = operand {
                    *readers.entry(step.as_str()).or_insert(0) += 1;
                }
            }
        }
        Upstream {
            readers,
            downstream: HashMap::new(),
        }
    }

    fn contains(
        &mut self,
        by_name: &HashMap<&'a str, &'a ParsedStep>,
        step: &str,
        upstream: &'a str,
    ) -> bool {
        if self.readers.get(upstream).copied().unwrap_or(0) > SHARED_READ {
            let set = self
                .downstream
                .entry(upstream)
                .or_insert_with(|| downstream_of(by_name, upstream));
            return set.contains(step);
        }
        let mut seen = HashSet::new();
        let mut stack: Vec<&str> = vec![step];
        while let Some(name) = stack.pop() {
            for dep in by_name
                .get(name)
                .map(|p| p.depends.as_slice())
                .unwrap_or_default()
            {
                if dep == upstream {
                    return true;
                }
                if seen.insert(dep.as_str()) {
                    stack.push(dep.as_str());
                }
            }
        }
        false
    }
}

/// Every step that depends on `step`, directly or through others.
fn downstream_of<'a>(by_name: &HashMap<&'a str, &'a ParsedStep>, step: &str) -> HashSet<&'a str> {
    let mut dependents: HashMap<&str, Vec<&'a str>> = HashMap::new();
    for (name, parsed) in by_name {
        for dep in &parsed.depends {
            dependents.entry(dep.as_str()).or_default().push(name);
        }
    }
    let mut seen = HashSet::new();
    let mut stack = vec![step];
    while let Some(name) = stack.pop() {
        for dependent in dependents.get(name).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(*dependent) {
                stack.push(dependent);
            }
        }
    }
    seen
}

fn trigger_params(r: &mut Reader, pipeline: &Pipeline, root: &Node) {
    let trigger_nodes: &[Node] = match &root.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.value == Value::String("triggers".into()))
            .and_then(|(_, v)| match &v.value {
                Value::Seq(items) => Some(items.as_slice()),
                _ => None,
            })
            .unwrap_or_default(),
        _ => &[],
    };
    for (i, trigger) in pipeline.triggers.iter().enumerate() {
        let mark = trigger_nodes.get(i).map_or(root.mark, |n| n.mark);
        let targets: Vec<&String> = match trigger {
            Trigger::Webhook { params, .. } => params.keys().collect(),
            Trigger::Watch { param, .. } => vec![param],
            Trigger::Cron { .. } => Vec::new(),
            Trigger::After(after) => {
                if after.pipeline == pipeline.name {
                    r.error(
                        mark,
                        &format!("triggers[{i}].after.pipeline"),
                        format!("`{}` cannot start after its own runs: every run would start the next one", pipeline.name),
                    );
                }
                after.params.keys().collect()
            }
        };
        for name in targets {
            if !pipeline.params.contains_key(name) {
                r.error(
                    mark,
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
