//! A run's page: its DAG coloured by state (updated live over Server-Sent Events), its steps
//! with attempts, exit codes, durations, workers, outputs, metrics, artifacts and cache notes,
//! the selected step's log tail, and the buttons to cancel, retry or run it again.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use indexmap::IndexSet;
use maud::{html, Markup};
use serde::Deserialize;

use super::dag::{self, Graph};
use super::pages::{badge, csrf, encode, frame, raw, took, when, Section};
use super::runs::log_link;
use super::session::Viewer;
use super::{problem, UiState};
use crate::spec::{Phase, Pipeline};
use crate::store::{RunLookup, RunRecord, StepRecord, StepStatus, Store};

/// Boxes above this many are not drawn (the table still lists every step): a drawing that
/// large says nothing a person can read, and would weigh megabytes.
const MAX_DRAWN: usize = 2_000;
/// Steps offered as a list to retry from; past this many the name is typed.
const MAX_LISTED: usize = 200;
/// Steps listed per page of the table.
const STEPS_PER_PAGE: usize = 500;
/// Lines of the selected step's log shown on the page.
const TAIL_LINES: usize = 60;
/// How often live updates look at the store.
const LIVE_POLL: Duration = Duration::from_millis(700);

/// `?step=NAME` selects a step, `?expand=g-N` draws a group step by step, `?page=N` pages
/// the table.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RunQuery {
    step: Option<String>,
    expand: Option<String>,
    page: Option<usize>,
    /// Live updates: the attempt of `step` whose stdout the page shows...
    attempt: Option<u32>,
    /// ...and the byte of it the page's tail ends at.
    from: Option<u64>,
}

/// What a run's page is made of, read off the async threads.
struct Loaded {
    run: RunRecord,
    steps: Vec<StepRecord>,
    pipeline: Option<Arc<Pipeline>>,
}

fn load(ui: &UiState, store: &Store, id: &str) -> Result<Option<Loaded>, String> {
    let run = match store.lookup_run(id).map_err(|e| e.to_string())? {
        RunLookup::Found(run) => run,
        _ => return Ok(None),
    };
    let steps = store.steps(&run.id).map_err(|e| e.to_string())?;
    let pipeline = ui.definition(&run);
    Ok(Some(Loaded {
        run,
        steps,
        pipeline,
    }))
}

pub(super) async fn page(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    query: Result<Query<RunQuery>, QueryRejection>,
) -> Response {
    let Query(query) = query.unwrap_or_default();
    let store = ui.api.daemon.engine().store.clone();
    let reader = ui.clone();
    let wanted = id.clone();
    let loaded = tokio::task::spawn_blocking(move || load(&reader, &store, &wanted)).await;
    let loaded = match loaded {
        Ok(Ok(Some(loaded))) => loaded,
        Ok(Ok(None)) => return problem(StatusCode::NOT_FOUND, &viewer, &format!("no run `{id}`")),
        Ok(Err(err)) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &viewer, &err),
        Err(err) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &viewer, &err.to_string()),
    };
    let body = render(&loaded, &query, &viewer);
    let title = format!("{} {}", loaded.run.pipeline, short(&loaded.run.id));
    Html(frame(&title, Section::Runs, &viewer, body).into_string()).into_response()
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

fn render(loaded: &Loaded, query: &RunQuery, viewer: &Viewer) -> Markup {
    let run = &loaded.run;
    let by_name: HashMap<&str, &StepRecord> =
        loaded.steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let graph = loaded
        .pipeline
        .as_ref()
        .map(|p| dag::layout(p, query.expand.as_deref()));
    let base = format!("/ui/runs/{}", encode(&run.id));
    let expand_q = query
        .expand
        .as_ref()
        .map(|e| format!("&expand={}", encode(e)))
        .unwrap_or_default();
    let selected = query.step.as_deref().and_then(|s| by_name.get(s).copied());
    // A selected step's stdout goes on from where the page's tail ends.
    let follow = selected
        .and_then(|step| step.last_attempt().map(|a| (step, a)))
        .map(|(step, a)| {
            let size = std::fs::symlink_metadata(a.dir.join("stdout.log")).map_or(0, |m| m.len());
            format!(
                "&step={}&attempt={}&from={size}",
                encode(&step.name),
                a.number
            )
        })
        .unwrap_or_default();
    let live = (!run.status.is_terminal()).then(|| {
        format!(
            "{base}/live?expand={}{follow}",
            encode(query.expand.as_deref().unwrap_or(""))
        )
    });
    html! {
        div data-live=[live] {
            h1 { "Run " span.mono { (run.id) } " " span class={ "badge st-" (run.status.as_str()) } data-run-status { (run.status.as_str()) } }
            p.sub {
                a href={ "/ui/pipelines/" (encode(&run.pipeline)) } { (run.pipeline) }
                " · " (run.trigger.to_string())
                " · started " (when(run.created_ms))
                " · took " (took(run.finished_ms.map(|f| f.saturating_sub(run.created_ms))))
                @if let Some(commit) = &run.commit { " · commit " span.mono { (commit) } }
                @if let Some(of) = &run.retry_of { " · retry of " a.mono href={ "/ui/runs/" (encode(of)) } { (of) } }
            }
            @if !run.params.is_empty() {
                dl.kv.panel {
                    @for (k, v) in &run.params { dt { (k) } dd.mono { (v) } }
                }
            }
            (actions(run, &loaded.steps, viewer))
            @match (&graph, &loaded.pipeline) {
                (Some(graph), Some(_)) if graph.nodes.len() <= MAX_DRAWN => {
                    h2 { "Graph" }
                    div.dagbox { (raw(drawing(graph, &by_name, &base, &expand_q))) }
                }
                (Some(graph), _) => {
                    p.notice { "The drawing is left out: it would have " (graph.nodes.len()) " boxes. The table lists every step." }
                }
                (None, _) => {
                    p.notice { "The pipeline definition stored with this run cannot be read, so there is no drawing." }
                }
            }
            @for (phase, heading) in [(Phase::Main, "Steps"), (Phase::OnFailure, "On failure"), (Phase::Finally, "Finally")] {
                @let section: Vec<&StepRecord> = loaded.steps.iter().filter(|s| s.phase == phase).collect();
                @if !section.is_empty() {
                    h2 { (heading) }
                    (step_table(&section, graph.as_ref(), &base, query, &by_name))
                }
            }
            (sweeps(&loaded.steps))
            @if let Some(step) = selected { (step_detail(run, step)) }
        }
    }
}

fn actions(run: &RunRecord, steps: &[StepRecord], viewer: &Viewer) -> Markup {
    let base = format!("/ui/runs/{}", encode(&run.id));
    let again = {
        let mut link = format!("/ui/pipelines/{}?", encode(&run.pipeline));
        for (k, v) in &run.params {
            link.push_str(&format!("p.{}={}&", encode(k), encode(v)));
        }
        link
    };
    html! {
        @if viewer.can_trigger() {
            div.actions {
                @if !run.status.is_terminal() {
                    form.inline method="post" action={ (base) "/cancel" } {
                        (csrf(viewer))
                        button.danger type="submit" { "Cancel run" }
                    }
                } @else {
                    form.inline method="post" action={ (base) "/retry" } {
                        (csrf(viewer))
                        @if steps.len() <= MAX_LISTED {
                            select name="from" title="also run this step and what follows it again" {
                                option value="" { "failed steps and what follows" }
                                @for step in steps { option value=(step.name) { "from " (step.name) } }
                            }
                        } @else {
                            input name="from" size="28" placeholder="from step (empty: the failed ones)" title="also run this step and what follows it again";
                        }
                        " "
                        button type="submit" { "Retry" }
                    }
                }
                a href=(again) { button.quiet type="button" { "Run again with these params…" } }
            }
        }
    }
}

fn drawing(
    graph: &Graph,
    by_name: &HashMap<&str, &StepRecord>,
    base: &str,
    expand_q: &str,
) -> String {
    dag::svg(
        graph,
        |node| dag::node_status(node, by_name),
        |node| match node.steps.as_slice() {
            [one] if !node.id.starts_with('g') => {
                format!("{base}?step={}{expand_q}#step", encode(one))
            }
            _ => format!("{base}?expand={}", encode(&node.id)),
        },
    )
}

fn step_table(
    steps: &[&StepRecord],
    graph: Option<&Graph>,
    base: &str,
    query: &RunQuery,
    by_name: &HashMap<&str, &StepRecord>,
) -> Markup {
    // Rows: a step, or one row for a collapsed group at its first member.
    let mut rows: Vec<Row> = Vec::new();
    let mut seen_groups: IndexSet<usize> = IndexSet::new();
    for step in steps {
        let node = graph.and_then(|g| g.node_of.get(&step.name).map(|&n| (&g.nodes[n], n)));
        match node {
            Some((node, n)) if node.steps.len() > 1 => {
                if seen_groups.insert(n) {
                    rows.push(Row::Group(node));
                }
            }
            _ => rows.push(Row::Step(step)),
        }
    }
    let page = query.page.unwrap_or(0);
    let pages = rows.len().div_ceil(STEPS_PER_PAGE).max(1);
    let shown = rows.iter().skip(page * STEPS_PER_PAGE).take(STEPS_PER_PAGE);
    let expand_q = query
        .expand
        .as_ref()
        .map(|e| format!("&expand={}", encode(e)))
        .unwrap_or_default();
    html! {
        table {
            thead { tr { th { "Step" } th { "State" } th.num { "Attempts" } th.num { "Exit" } th.num { "Took" } th { "Worker" } th { "Detail" } th { "Outputs and metrics" } } }
            tbody {
                @for row in shown {
                    @match row {
                        Row::Step(step) => {
                            @let last = step.last_attempt();
                            tr class=[(query.step.as_deref() == Some(step.name.as_str())).then_some("selected")] {
                                td { a href={ (base) "?step=" (encode(&step.name)) (expand_q) "#step" } { (step.name) } }
                                td { (badge(step.status.as_str(), Some(&step.name))) }
                                td.num { (step.attempts.len()) }
                                td.num { (last.and_then(|a| a.exit_code.map(|c| c.to_string()).or(a.signal.map(|s| format!("sig{s}")))).unwrap_or_else(|| "-".into())) }
                                td.num { (took(step.duration_ms())) }
                                td { (last.and_then(|a| a.worker.clone()).unwrap_or_default()) }
                                td { (detail(step)) }
                                td.mono { (values(step)) }
                            }
                        }
                        Row::Group(node) => {
                            tr {
                                td { a href={ (base) "?expand=" (encode(&node.id)) } { (node.label) } }
                                td { (badge(dag::node_status(node, by_name), None)) }
                                td colspan="6" { (counts(node, by_name)) " · " a href={ (base) "?expand=" (encode(&node.id)) } { "show each step" } }
                            }
                        }
                    }
                }
            }
        }
        @if pages > 1 {
            div.pager {
                @for p in 0..pages {
                    @if p == page { strong { (p + 1) } } @else { a href={ (base) "?page=" (p) (expand_q) } { (p + 1) } }
                }
            }
        }
    }
}

enum Row<'a> {
    Step(&'a StepRecord),
    Group(&'a dag::Node),
}

fn counts(node: &dag::Node, by_name: &HashMap<&str, &StepRecord>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &node.steps {
        let status = by_name
            .get(step.as_str())
            .map_or("pending", |s| s.status.as_str());
        *counts.entry(status).or_default() += 1;
    }
    counts
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why it was skipped or cancelled, how its last attempt ended, what the cache decided.
fn detail(step: &StepRecord) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(reason) = &step.reason {
        parts.push(reason.clone());
    } else if let Some(message) = step.last_attempt().and_then(|a| a.message.clone()) {
        parts.push(message);
    }
    if let Some(note) = &step.cache {
        if let Some(run) = &note.hit_from {
            parts.push(format!("cached from run {run}"));
        } else if !note.miss.is_empty() {
            parts.push(format!("cache miss: {}", note.miss.join(", ")));
        }
    }
    parts.join("; ")
}

fn values(step: &StepRecord) -> String {
    let outputs = step.outputs.iter().map(|(k, v)| format!("{k}={v}"));
    let metrics = step.metrics.iter().map(|(k, v)| format!("{k}={v}"));
    outputs.chain(metrics).collect::<Vec<_>>().join(" ")
}

/// One table per `matrix:` step: its values, state and metrics side by side.
fn sweeps(steps: &[StepRecord]) -> Markup {
    let sweeps = crate::store::sweeps(steps);
    html! {
        @for (written, cells) in &sweeps {
            @let axes: IndexSet<&str> = cells.iter().flat_map(|c| c.matrix.keys().map(String::as_str)).collect();
            @let metrics: IndexSet<&str> = cells.iter().flat_map(|c| c.metrics.keys().map(String::as_str)).collect();
            h2 { "Sweep " (written) " (" (cells.len()) " combinations)" }
            table data-sortable {
                thead { tr {
                    @for axis in &axes { th { (axis) } }
                    th { "State" }
                    @for metric in &metrics { th.num { (metric) } }
                } }
                tbody {
                    @for cell in cells { tr {
                        @for axis in &axes { td.mono { (cell.matrix.get(*axis).cloned().unwrap_or_default()) } }
                        td { (badge(cell.status.as_str(), None)) }
                        @for metric in &metrics { td.num { (cell.metrics.get(*metric).map(|v| v.to_string()).unwrap_or_else(|| "-".into())) } }
                    } }
                }
            }
        }
    }
}

fn step_detail(run: &RunRecord, step: &StepRecord) -> Markup {
    let last = step.last_attempt();
    let tail = |file: &str| {
        last.map(|a| crate::logtail::tail_lines(&a.dir.join(file), TAIL_LINES))
            .unwrap_or_default()
            .join("\n")
    };
    html! {
        h2 #step { "Step " (step.name) " " (badge(step.status.as_str(), Some(&step.name))) }
        @if !step.attempts.is_empty() {
            table {
                thead { tr { th.num { "#" } th { "State" } th.num { "Exit" } th { "Worker" } th { "Queued" } th.num { "Took" } th { "Message" } th { "Folder" } } }
                tbody {
                    @for a in &step.attempts {
                        tr {
                            td.num { (a.number) }
                            td { (badge(a.status.as_str(), None)) }
                            td.num { (a.exit_code.map(|c| c.to_string()).or(a.signal.map(|s| format!("sig{s}"))).unwrap_or_else(|| "-".into())) }
                            td { (a.worker.clone().unwrap_or_default()) }
                            td { (when(a.queued_ms)) }
                            td.num { (took(a.started_ms.zip(a.finished_ms).map(|(s, f)| f.saturating_sub(s)))) }
                            td { (a.message.clone().unwrap_or_default()) }
                            td.mono { (a.dir.display()) }
                        }
                    }
                }
            }
        }
        @if !step.artifacts.is_empty() {
            h2 { "Artifacts" }
            table {
                thead { tr { th { "Name" } th { "Id" } th.num { "Size" } th.num { "Files" } } }
                tbody {
                    @for artifact in &step.artifacts {
                        tr {
                            td { (artifact.name) }
                            td.mono {
                                @if artifact.files <= 1 {
                                    a href={ "/ui/artifacts/" (encode(&artifact.id)) } download=(artifact.name) { (artifact.id[..artifact.id.len().min(16)]) }
                                } @else {
                                    a href={ "/ui/artifacts/" (encode(&artifact.id)) "/files" } { (artifact.id[..artifact.id.len().min(16)]) }
                                }
                            }
                            td.num { (crate::cli::human_bytes(artifact.size)) }
                            td.num { (artifact.files) }
                        }
                    }
                }
            }
        }
        @if let Some(gate) = &step.gate {
            h2 { "Gate" }
            pre.log { @for line in gate.table() { (line) "\n" } }
        }
        @if let Some(attempt) = last {
            h2 { "Log (last " (TAIL_LINES) " lines of attempt " (attempt.number) ")" }
            p {
                a href=(log_link(&run.id, &step.name, "stdout")) { "whole stdout" } " · "
                a href=(log_link(&run.id, &step.name, "stderr")) { "whole stderr" }
                @if !attempt.status.is_terminal() { " · " a href={ (log_link(&run.id, &step.name, "stdout")) "&follow=true" } { "follow stdout" } }
            }
            pre.log #stdout-tail { (tail("stdout.log")) }
            @let errors = tail("stderr.log");
            @if !errors.is_empty() { pre.log { (errors) } }
        }
    }
}

/// Live updates: a snapshot of every box's and step's state, then what changed, every
/// [`LIVE_POLL`], until the run ends (the page then reloads for the details).
pub(super) async fn live(
    State(ui): State<UiState>,
    Path(id): Path<String>,
    query: Result<Query<RunQuery>, QueryRejection>,
) -> Response {
    let Query(query) = query.unwrap_or_default();
    let store = ui.api.daemon.engine().store.clone();
    let shutdown = ui.api.daemon.shutdown_token().clone();
    let expand = query.expand.filter(|e| !e.is_empty());
    let log = query.step.filter(|s| !s.is_empty()).map(|step| LogFollow {
        step,
        attempt: query.attempt.unwrap_or(0),
        offset: query.from.unwrap_or(0),
    });
    let stream = futures_util::stream::unfold(
        Live {
            ui,
            store,
            id,
            expand,
            log,
            graph: None,
            nodes: HashMap::new(),
            steps: HashMap::new(),
            first: true,
            ended: false,
            shutdown,
        },
        |mut live| async move {
            if live.ended {
                return None;
            }
            if !live.first {
                tokio::select! {
                    _ = tokio::time::sleep(LIVE_POLL) => {}
                    _ = live.shutdown.cancelled() => return None,
                }
            }
            live.first = false;
            let events = live.poll().await;
            Some((futures_util::stream::iter(events), live))
        },
    );
    use futures_util::StreamExt;
    let stream = stream.flatten().map(Ok::<Event, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What a live stream has sent so far.
struct Live {
    ui: UiState,
    store: Store,
    id: String,
    expand: Option<String>,
    /// The selected step's stdout, followed.
    log: Option<LogFollow>,
    graph: Option<Graph>,
    nodes: HashMap<String, &'static str>,
    steps: HashMap<String, &'static str>,
    first: bool,
    ended: bool,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Live {
    async fn poll(&mut self) -> Vec<Event> {
        let (ui, store, id) = (self.ui.clone(), self.store.clone(), self.id.clone());
        let loaded = tokio::task::spawn_blocking(move || load(&ui, &store, &id)).await;
        let Ok(Ok(Some(loaded))) = loaded else {
            self.ended = true;
            return Vec::new();
        };
        if self.graph.is_none() {
            self.graph = loaded
                .pipeline
                .as_ref()
                .map(|p| dag::layout(p, self.expand.as_deref()));
        }
        let by_name: HashMap<&str, &StepRecord> =
            loaded.steps.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut nodes = serde_json::Map::new();
        if let Some(graph) = &self.graph {
            for node in &graph.nodes {
                let status = dag::node_status(node, &by_name);
                if self.nodes.get(&node.id) != Some(&status) {
                    self.nodes.insert(node.id.clone(), status);
                    nodes.insert(node.id.clone(), status.into());
                }
            }
        }
        let mut steps = serde_json::Map::new();
        for step in &loaded.steps {
            let status = status_str(step.status);
            if self.steps.get(&step.name) != Some(&status) {
                self.steps.insert(step.name.clone(), status);
                steps.insert(step.name.clone(), status.into());
            }
        }
        let mut events = Vec::new();
        if !nodes.is_empty() {
            events.push(
                Event::default()
                    .event("nodes")
                    .data(serde_json::Value::Object(nodes).to_string()),
            );
        }
        if !steps.is_empty() {
            events.push(
                Event::default()
                    .event("steps")
                    .data(serde_json::Value::Object(steps).to_string()),
            );
        }
        if let Some(text) = self.more_log(&loaded.steps).await {
            events.push(Event::default().event("log").data(text));
        }
        self.ended = loaded.run.status.is_terminal();
        let run = serde_json::json!({"status": loaded.run.status.as_str(), "ended": self.ended});
        events.push(Event::default().event("run").data(run.to_string()));
        events
    }
}

/// Where a followed stdout stands.
struct LogFollow {
    step: String,
    attempt: u32,
    offset: u64,
}

/// Most of a log sent in one live update.
const LOG_CHUNK: u64 = 64 * 1024;

impl Live {
    /// What the followed step wrote to stdout since the last update (from its start when a new
    /// attempt began), as JSON text `{"reset": bool, "text": "..."}`.
    async fn more_log(&mut self, steps: &[StepRecord]) -> Option<String> {
        let follow = self.log.as_mut()?;
        let attempt = steps
            .iter()
            .find(|s| s.name == follow.step)?
            .last_attempt()?
            .clone();
        let reset = attempt.number != follow.attempt;
        if reset {
            follow.attempt = attempt.number;
            follow.offset = 0;
        }
        let (path, offset) = (attempt.dir.join("stdout.log"), follow.offset);
        let read = tokio::task::spawn_blocking(move || read_from(&path, offset))
            .await
            .ok()??;
        follow.offset += read.len() as u64;
        if read.is_empty() && !reset {
            return None;
        }
        let text = String::from_utf8_lossy(&read).into_owned();
        Some(serde_json::json!({"reset": reset, "text": text}).to_string())
    }
}

/// Up to [`LOG_CHUNK`] bytes of a log from `offset`; never through a link, never a FIFO (a
/// step may have replaced its log's name).
fn read_from(path: &std::path::Path, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = sluice_worker::safe_fs::open_regular(path).ok()??;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::new();
    file.take(LOG_CHUNK).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn status_str(status: StepStatus) -> &'static str {
    status.as_str()
}
