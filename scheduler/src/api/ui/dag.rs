//! A run's DAG as SVG, laid out here: no JavaScript library, no Graphviz.
//!
//! Steps go left to right by depth (a step stands one column right of its deepest dependency);
//! within a column they are ordered by where their dependencies stand, so edges cross little.
//! A wide fan-out (many steps with the same dependencies and the same dependents, a `matrix:`
//! sweep's expansions for one) is drawn as one group node with its counts, which the page can
//! expand: a 10,000-step fan-out stays a page of a few kilobytes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::spec::Pipeline;
use crate::store::{StepRecord, StepStatus};

/// Siblings that share dependencies and dependents are grouped from this many on.
pub const GROUP_FROM: usize = 8;

const NODE_W: usize = 184;
const NODE_H: usize = 34;
const GAP_X: usize = 56;
const GAP_Y: usize = 12;
const MARGIN: usize = 8;
/// Longest label drawn; the whole name is in the node's tooltip.
const LABEL_CHARS: usize = 24;

/// One box of the drawing: a step, or a group of sibling steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its id in the page (`s-<index>` for a step, `g-<index>` for a group).
    pub id: String,
    /// What it shows.
    pub label: String,
    /// The steps it stands for, in pipeline order.
    pub steps: Vec<String>,
    /// Its column and row.
    pub column: usize,
    /// Its row within the column.
    pub row: usize,
    /// Its section: 0 for the run's steps, 1 for `on_failure`, 2 for `finally` (drawn to the
    /// right of the sections before it, as they run after them).
    pub section: usize,
}

/// The laid-out graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Every box.
    pub nodes: Vec<Node>,
    /// `(from, to)` indexes into `nodes`: `to` depends on `from`.
    pub edges: Vec<(usize, usize)>,
    /// Each step's node index.
    pub node_of: HashMap<String, usize>,
}

/// Lays out `pipeline`'s steps; the group whose id is `expand` is drawn step by step.
pub fn layout(pipeline: &Pipeline, expand: Option<&str>) -> Graph {
    let names: Vec<&str> = pipeline.steps.keys().map(String::as_str).collect();
    let section_of = |i: usize| {
        pipeline
            .steps
            .get_index(i)
            .map_or(0, |(_, s)| s.phase as usize)
    };
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let mut depends: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (i, step) in pipeline.steps.values().enumerate() {
        for dep in &step.depends {
            if let Some(&d) = index.get(dep.as_str()) {
                depends[i].push(d);
                dependents[d].push(i);
            }
        }
    }
    // Siblings: the same dependencies and the same dependents.
    let mut families: BTreeMap<(Vec<usize>, Vec<usize>), Vec<usize>> = BTreeMap::new();
    for i in 0..names.len() {
        let mut up = depends[i].clone();
        let mut down = dependents[i].clone();
        up.sort_unstable();
        down.sort_unstable();
        families.entry((up, down)).or_default().push(i);
    }
    let mut group_of: Vec<Option<usize>> = vec![None; names.len()];
    let mut nodes: Vec<Node> = Vec::new();
    let mut node_of_step: Vec<usize> = vec![0; names.len()];
    let mut groups: Vec<Vec<usize>> = families
        .into_values()
        .filter(|members| members.len() >= GROUP_FROM)
        .collect();
    groups.sort_by_key(|members| members[0]);
    for (g, members) in groups.iter().enumerate() {
        let id = format!("g-{}", members[0]);
        if expand == Some(id.as_str()) {
            continue;
        }
        for &m in members {
            group_of[m] = Some(g);
        }
    }
    let mut group_node: HashMap<usize, usize> = HashMap::new();
    for i in 0..names.len() {
        match group_of[i] {
            Some(g) => {
                let n = *group_node.entry(g).or_insert_with(|| {
                    let members = &groups[g];
                    nodes.push(Node {
                        id: format!("g-{}", members[0]),
                        label: group_label(&members.iter().map(|&m| names[m]).collect::<Vec<_>>()),
                        steps: members.iter().map(|&m| names[m].to_string()).collect(),
                        column: 0,
                        row: 0,
                        section: section_of(members[0]),
                    });
                    nodes.len() - 1
                });
                node_of_step[i] = n;
            }
            None => {
                nodes.push(Node {
                    id: format!("s-{i}"),
                    label: names[i].to_string(),
                    steps: vec![names[i].to_string()],
                    column: 0,
                    row: 0,
                    section: section_of(i),
                });
                node_of_step[i] = nodes.len() - 1;
            }
        }
    }
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for (i, deps) in depends.iter().enumerate() {
        for &d in deps {
            let edge = (node_of_step[d], node_of_step[i]);
            if edge.0 != edge.1 {
                edges.push(edge);
            }
        }
    }
    edges.sort_unstable();
    edges.dedup();
    place(&mut nodes, &edges);
    let node_of = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), node_of_step[i]))
        .collect();
    Graph {
        nodes,
        edges,
        node_of,
    }
}

/// `train[…] ×4` for a sweep's expansions, `a … (12 steps)` for other siblings.
fn group_label(members: &[&str]) -> String {
    let first = members.first().copied().unwrap_or_default();
    match first.split_once('[') {
        Some((written, _))
            if members
                .iter()
                .all(|m| m.starts_with(&format!("{written}["))) =>
        {
            format!("{written}[…] ×{}", members.len())
        }
        _ => format!("{first} … ({} steps)", members.len()),
    }
}

/// Columns by longest path from a root (nodes are in pipeline order, which is a topological
/// order once validated... but not necessarily, so it iterates to a fixed point), rows by the
/// mean row of each node's predecessors.
fn place(nodes: &mut [Node], edges: &[(usize, usize)]) {
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for &(from, to) in edges {
        preds[to].push(from);
    }
    let mut order = topological(nodes.len(), edges);
    // A section starts right of every column of the sections before it (a stable sort keeps
    // the order topological: nothing depends on a later section).
    order.sort_by_key(|&n| nodes[n].section);
    let mut column = vec![0usize; nodes.len()];
    let mut floor = 0;
    let mut section = 0;
    let mut widest = 0;
    for &n in &order {
        if nodes[n].section != section {
            section = nodes[n].section;
            floor = widest + 1;
        }
        column[n] = preds[n]
            .iter()
            .map(|&p| column[p] + 1)
            .max()
            .unwrap_or(0)
            .max(floor);
        widest = widest.max(column[n]);
    }
    let columns = column.iter().copied().max().map_or(0, |c| c + 1);
    let mut by_column: Vec<Vec<usize>> = vec![Vec::new(); columns];
    for &n in &order {
        by_column[column[n]].push(n);
    }
    let mut row = vec![0usize; nodes.len()];
    for members in &mut by_column {
        let weight = |n: &usize| -> f64 {
            let p = &preds[*n];
            if p.is_empty() {
                *n as f64
            } else {
                p.iter().map(|&q| row[q] as f64).sum::<f64>() / p.len() as f64
            }
        };
        let mut keyed: Vec<(f64, usize)> = members.iter().map(|n| (weight(n), *n)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (r, (_, n)) in keyed.iter().enumerate() {
            row[*n] = r;
        }
        *members = keyed.into_iter().map(|(_, n)| n).collect();
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        node.column = column[i];
        node.row = row[i];
    }
}

/// Kahn's order (nodes left over by a cycle, which validation rules out, come last).
fn topological(count: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut indegree = vec![0usize; count];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); count];
    for &(from, to) in edges {
        indegree[to] += 1;
        out[from].push(to);
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..count).filter(|&n| indegree[n] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(n) = ready.pop_front() {
        order.push(n);
        for &m in &out[n] {
            indegree[m] -= 1;
            if indegree[m] == 0 {
                ready.push_back(m);
            }
        }
    }
    if order.len() < count {
        let placed: std::collections::HashSet<usize> = order.iter().copied().collect();
        order.extend((0..count).filter(|n| !placed.contains(n)));
    }
    order
}

/// A node's state: a step's, or for a group the one that matters most (failed, then running,
/// then waiting, then done).
pub fn node_status(node: &Node, steps: &HashMap<&str, &StepRecord>) -> &'static str {
    let statuses: Vec<StepStatus> = node
        .steps
        .iter()
        .map(|s| {
            steps
                .get(s.as_str())
                .map_or(StepStatus::Pending, |r| r.status)
        })
        .collect();
    let any = |s: StepStatus| statuses.contains(&s);
    let all = |s: StepStatus| statuses.iter().all(|x| *x == s);
    if statuses.len() == 1 {
        return statuses[0].as_str();
    }
    if any(StepStatus::Failed) {
        "failed"
    } else if any(StepStatus::Running) {
        "running"
    } else if any(StepStatus::Queued) {
        "queued"
    } else if any(StepStatus::Pending) {
        "pending"
    } else if any(StepStatus::Cancelled) {
        "cancelled"
    } else if all(StepStatus::Skipped) {
        "skipped"
    } else {
        "succeeded"
    }
}

/// The SVG: boxes coloured by state (`class="node st-<state>"`), each linking to its step (a
/// group to its expansion), edges as curves. `link` gives a node's link.
pub fn svg(
    graph: &Graph,
    status: impl Fn(&Node) -> &'static str,
    link: impl Fn(&Node) -> String,
) -> String {
    let columns = graph.nodes.iter().map(|n| n.column + 1).max().unwrap_or(1);
    let rows = graph.nodes.iter().map(|n| n.row + 1).max().unwrap_or(1);
    let width = MARGIN * 2 + columns * NODE_W + columns.saturating_sub(1) * GAP_X;
    let height = MARGIN * 2 + rows * NODE_H + rows.saturating_sub(1) * GAP_Y;
    let x = |n: &Node| MARGIN + n.column * (NODE_W + GAP_X);
    let y = |n: &Node| MARGIN + n.row * (NODE_H + GAP_Y);
    let mut out = String::with_capacity(graph.nodes.len() * 260 + graph.edges.len() * 90);
    let _ = write!(
        out,
        r#"<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="the run's steps and their dependencies"><g class="edges">"#
    );
    for &(from, to) in &graph.edges {
        let (a, b) = (&graph.nodes[from], &graph.nodes[to]);
        let (x1, y1) = (x(a) + NODE_W, y(a) + NODE_H / 2);
        let (x2, y2) = (x(b), y(b) + NODE_H / 2);
        let mid = (x1 + x2) / 2;
        let _ = write!(
            out,
            r#"<path d="M{x1} {y1}C{mid} {y1} {mid} {y2} {x2} {y2}"/>"#
        );
    }
    out.push_str("</g>");
    for node in &graph.nodes {
        let label: String = if node.label.chars().count() > LABEL_CHARS {
            let cut: String = node.label.chars().take(LABEL_CHARS - 1).collect();
            format!("{cut}…")
        } else {
            node.label.clone()
        };
        let _ = write!(
            out,
            r#"<a href="{href}"><g class="node st-{status}" data-node="{id}" transform="translate({x} {y})"><title>{title}</title><rect width="{NODE_W}" height="{NODE_H}" rx="6"/><text x="10" y="22">{label}</text></g></a>"#,
            href = escape(&link(node)),
            status = status(node),
            id = node.id,
            x = x(node),
            y = y(node),
            title = escape(&node.label),
            label = escape(&label),
        );
    }
    out.push_str("</svg>");
    out
}

/// Text for SVG written by hand (maud escapes the rest of the page).
fn escape(text: &str) -> String {
    maud::html! { (text) }.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(yaml: &str) -> Pipeline {
        crate::spec::parse_str("p.yaml", yaml).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn steps_stand_right_of_their_dependencies_and_joins_come_last() {
        let p = pipeline(
            "name: p\nsteps:\n  a: {run: x}\n  b: {run: x, depends: [a]}\n  c: {run: x, depends: [a]}\n  d: {run: x, depends: [b, c]}\n",
        );
        let g = layout(&p, None);
        let at = |name: &str| {
            let n = &g.nodes[g.node_of[name]];
            (n.column, n.row)
        };
        assert_eq!(at("a"), (0, 0));
        assert_eq!(at("b"), (1, 0));
        assert_eq!(at("c"), (1, 1));
        assert_eq!(at("d").0, 2);
        assert_eq!(g.edges.len(), 4);
    }

    #[test]
    fn handlers_stand_right_of_the_steps_they_run_after() {
        let p = pipeline(
            "name: p\nsteps:\n  a: {run: x}\n  b: {run: x, depends: [a]}\non_failure:\n  alert: {run: x}\nfinally:\n  tidy: {run: x}\n",
        );
        let g = layout(&p, None);
        let column = |name: &str| g.nodes[g.node_of[name]].column;
        assert_eq!((column("a"), column("b")), (0, 1));
        assert_eq!(column("alert"), 2);
        assert_eq!(column("tidy"), 3);
    }

    #[test]
    fn a_wide_fan_out_is_one_group_node_until_expanded() {
        let p = pipeline(
            "name: p\nsteps:\n  prep: {run: x}\n  train:\n    run: x\n    depends: [prep]\n    matrix: {seed: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n  pick: {run: x, depends: [train]}\n",
        );
        let g = layout(&p, None);
        assert_eq!(g.nodes.len(), 3, "{:?}", g.nodes);
        let group = &g.nodes[g.node_of["train[seed=4]"]];
        assert_eq!(group.label, "train[…] ×10");
        assert_eq!(group.steps.len(), 10);
        assert_eq!(g.edges.len(), 2);
        let expanded = layout(&p, Some(&group.id));
        assert_eq!(expanded.nodes.len(), 12);
        assert_eq!(expanded.edges.len(), 20);
    }

    #[test]
    fn a_group_shows_a_failure_first_then_what_is_running() {
        let node = Node {
            id: "g-1".into(),
            label: "g".into(),
            steps: vec!["a".into(), "b".into()],
            column: 0,
            row: 0,
            section: 0,
        };
        let record = |name: &str, status| StepRecord {
            status,
            ..StepRecord::pending("r", name, 0)
        };
        let (a, b) = (
            record("a", StepStatus::Running),
            record("b", StepStatus::Succeeded),
        );
        let steps: HashMap<&str, &StepRecord> = [("a", &a), ("b", &b)].into_iter().collect();
        assert_eq!(node_status(&node, &steps), "running");
        let a = record("a", StepStatus::Failed);
        let steps: HashMap<&str, &StepRecord> = [("a", &a), ("b", &b)].into_iter().collect();
        assert_eq!(node_status(&node, &steps), "failed");
    }

    #[test]
    fn names_are_escaped_in_the_drawing() {
        let p = pipeline("name: p\nsteps:\n  a: {run: x}\n");
        let g = layout(&p, None);
        let svg = svg(&g, |_| "pending", |_| "?a=<b>&c".into());
        assert!(svg.contains("href=\"?a=&lt;b&gt;&amp;c\""), "{svg}");
        assert!(svg.contains("st-pending"));
    }
}
