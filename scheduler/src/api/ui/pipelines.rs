//! The pipelines page (triggers with the next cron instants, files that did not load), and a
//! pipeline's page: the form that starts a run (typed from its params), its recent runs, and
//! its metrics across runs as a sortable table with a chart per metric.

use std::collections::BTreeMap;

use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup};

use super::pages::{badge, csrf, encode, frame, raw, took, when, Section};
use super::runs::started;
use super::session::Viewer;
use super::{acted_by, problem, refuse_action, UiState};
use crate::daemon::Origin;
use crate::spec::{LoadedPipeline, ParamType};
use crate::store::{RunRecord, TriggerOrigin};

/// Runs shown on a pipeline's page, and read for its metrics across runs.
const RECENT_RUNS: usize = 50;

pub(super) async fn list(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let now = chrono::Utc::now();
    let body = ui.api.daemon.with_catalog(|catalog| {
        html! {
            h1 { "Pipelines" }
            p.sub { (catalog.pipelines.len()) " loaded"
                @if let Some(commit) = &catalog.commit { " · commit " span.mono { (commit) } } }
            @if !catalog.errors.is_empty() {
                div.notice {
                    strong { "Files that did not load" }
                    @for error in &catalog.errors {
                        p {
                            span.mono { (error.file.display()) }
                            @if let Some(hash) = &error.serving_last_good { " — serving its last good version " span.mono { (hash[..hash.len().min(12)]) } }
                        }
                        ul { @for problem in &error.problems { li.mono { (problem) } } }
                    }
                }
            }
            table {
                thead { tr { th { "Pipeline" } th { "Description" } th.num { "Steps" } th { "Triggers" } th { "Version" } th { "File" } } }
                tbody {
                    @for loaded in catalog.pipelines.values() {
                        @let p = &loaded.pipeline;
                        tr {
                            td { a href={ "/ui/pipelines/" (encode(&p.name)) } { (p.name) } }
                            td { (p.description.clone().unwrap_or_default()) }
                            td.num { (p.steps.len()) }
                            td { (triggers(loaded, now)) }
                            td.mono { (loaded.hash[..loaded.hash.len().min(12)]) }
                            td.mono { (loaded.path.display()) }
                        }
                    }
                }
            }
            @if !catalog.not_pipelines.is_empty() {
                p.sub { "Not pipelines (no " code { "steps" } "), passed over: "
                    @for (i, file) in catalog.not_pipelines.iter().enumerate() {
                        @if i > 0 { ", " } span.mono { (file.display()) }
                    }
                }
            }
        }
    });
    Html(frame("Pipelines", Section::Pipelines, &viewer, body).into_string()).into_response()
}

fn triggers(loaded: &LoadedPipeline, now: chrono::DateTime<chrono::Utc>) -> Markup {
    let listed = crate::cli::printers::listed_triggers(&loaded.pipeline, now);
    let now_ms = now.timestamp_millis().max(0) as u64;
    html! {
        @if listed.is_empty() { span.sub { "by hand" } }
        @for t in &listed {
            div {
                (t.kind) ": " span.mono { (t.what) }
                @if let (Some(next), Some(at)) = (&t.next, t.next_ms) {
                    " · next " span title=(next) { "in " (took(Some(at.saturating_sub(now_ms)))) }
                }
            }
        }
    }
}

pub(super) async fn page(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(prefill): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(loaded) = ui
        .api
        .daemon
        .with_catalog(|c| c.pipelines.get(&name).cloned())
    else {
        return problem(
            StatusCode::NOT_FOUND,
            &viewer,
            &format!("no pipeline named `{name}` is loaded"),
        );
    };
    let store = ui.api.daemon.engine().store.clone();
    let wanted = name.clone();
    let recent = tokio::task::spawn_blocking(move || recent_runs(&store, &wanted)).await;
    let recent = match recent {
        Ok(Ok(recent)) => recent,
        Ok(Err(err)) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &viewer, &err),
        Err(err) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &viewer, &err.to_string()),
    };
    let now = chrono::Utc::now();
    let p = &loaded.pipeline;
    let body = html! {
        h1 { (p.name) }
        p.sub {
            (p.description.clone().unwrap_or_default())
            " · " (p.steps.len()) " steps · version " span.mono { (loaded.hash[..loaded.hash.len().min(12)]) }
            " · " span.mono { (loaded.path.display()) }
        }
        div.panel { (triggers(&loaded, now)) }
        @if viewer.can_trigger() { (trigger_form(&loaded, &prefill, &viewer)) }
        h2 { "Recent runs" }
        @if recent.is_empty() { p.sub { "None yet." } } @else {
            table {
                thead { tr { th { "Run" } th { "State" } th { "Started" } th.num { "Took" } th { "Trigger" } } }
                tbody { @for (run, _) in recent.iter().take(20) { tr {
                    td { a.mono href={ "/ui/runs/" (encode(&run.id)) } { (run.id) } }
                    td { (badge(run.status.as_str(), None)) }
                    td { (when(run.created_ms)) }
                    td.num { (took(run.finished_ms.map(|f| f.saturating_sub(run.created_ms)))) }
                    td { (run.trigger.to_string()) }
                } } }
            }
            p { a href={ "/ui/runs?pipeline=" (encode(&p.name)) } { "every run of " (p.name) } }
        }
        (metrics_across_runs(&recent))
    };
    Html(frame(&p.name, Section::Pipelines, &viewer, body).into_string()).into_response()
}

/// The newest runs of `pipeline` with their metrics (`step.metric` → value), newest first.
type RunMetrics = (RunRecord, BTreeMap<String, f64>);

fn recent_runs(store: &crate::store::Store, pipeline: &str) -> Result<Vec<RunMetrics>, String> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    let mut scanned = 0;
    while out.len() < RECENT_RUNS && scanned < 20_000 {
        let page = store
            .list_runs(500, before.as_deref())
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        scanned += page.len();
        for run in page.into_iter().filter(|r| r.pipeline == pipeline) {
            let mut metrics = BTreeMap::new();
            for step in store.steps(&run.id).map_err(|e| e.to_string())? {
                for (key, value) in &step.metrics {
                    if let Some(number) = value.as_f64() {
                        metrics.insert(format!("{}.{key}", step.name), number);
                    }
                }
            }
            out.push((run, metrics));
            if out.len() >= RECENT_RUNS {
                break;
            }
        }
    }
    Ok(out)
}

fn trigger_form(
    loaded: &LoadedPipeline,
    prefill: &BTreeMap<String, String>,
    viewer: &Viewer,
) -> Markup {
    let p = &loaded.pipeline;
    let action = format!("/ui/pipelines/{}/trigger", encode(&p.name));
    html! {
        h2 { "Start a run" }
        form.panel method="post" action=(action) {
            (csrf(viewer))
            @if p.params.is_empty() { p.sub { "This pipeline has no params." } }
            dl.kv {
                @for (name, spec) in &p.params {
                    @let field = format!("p.{name}");
                    @let value = prefill.get(&field).cloned().or_else(|| spec.default.clone()).unwrap_or_default();
                    dt { label for=(field) { (name) } }
                    dd {
                        @match spec.kind {
                            ParamType::Boolean => {
                                select id=(field) name=(field) {
                                    option value="true" selected[value == "true"] { "true" }
                                    option value="false" selected[value != "true"] { "false" }
                                }
                            }
                            ParamType::Integer => { input id=(field) name=(field) type="number" step="1" value=(value) required[spec.default.is_none()]; }
                            ParamType::Number => { input id=(field) name=(field) type="number" step="any" value=(value) required[spec.default.is_none()]; }
                            ParamType::String => { input id=(field) name=(field) type="text" value=(value) required[spec.default.is_none()]; }
                        }
                        " " span.sub { (spec.kind.name()) @if let Some(d) = &spec.description { " — " (d) } }
                    }
                }
            }
            p { label { input type="checkbox" name="no_cache" value="true"; " run every step, cached or not" } }
            button type="submit" { "Start run" }
        }
    }
}

pub(super) async fn trigger(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let given = form.get("csrf").map(String::as_str).unwrap_or_default();
    if let Some(refused) = refuse_action(&viewer, given, "starting runs") {
        return refused;
    }
    let overrides: BTreeMap<String, String> = form
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("p.").map(|k| (k.to_string(), v.clone())))
        .collect();
    let origin = Origin {
        trigger: TriggerOrigin::Api {
            by: Some(acted_by(&viewer)),
        },
        no_cache: form.get("no_cache").is_some_and(|v| v == "true"),
        ..Origin::default()
    };
    let daemon = ui.api.daemon.clone();
    let created =
        tokio::task::spawn_blocking(move || daemon.start_run(&name, overrides, origin)).await;
    started(created.map_err(|e| e.to_string()), &viewer)
}

/// Params and metrics of the newest runs side by side, and a line per metric over time.
fn metrics_across_runs(runs: &[RunMetrics]) -> Markup {
    let metrics: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|(_, m)| m.keys()).collect();
    let params: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|(r, _)| r.params.keys()).collect();
    if metrics.is_empty() {
        return html! {};
    }
    html! {
        h2 { "Metrics across runs" }
        div.charts { @for metric in &metrics { (chart(metric, runs)) } }
        table data-sortable {
            thead { tr {
                th { "Run" } th { "State" }
                @for p in &params { th { (p) } }
                @for m in &metrics { th.num { (m) } }
            } }
            tbody { @for (run, values) in runs { tr {
                td { a.mono href={ "/ui/runs/" (encode(&run.id)) } { (&run.id[run.id.len().saturating_sub(8)..]) } }
                td { (badge(run.status.as_str(), None)) }
                @for p in &params { td.mono { (run.params.get(*p).cloned().unwrap_or_default()) } }
                @for m in &metrics { td.num { (values.get(*m).map(|v| format!("{v}")).unwrap_or_else(|| "-".into())) } }
            } } }
        }
    }
}

/// A metric over the runs that have it, oldest to newest, as a small SVG line chart.
fn chart(metric: &str, runs: &[RunMetrics]) -> Markup {
    let points: Vec<f64> = runs
        .iter()
        .rev()
        .filter_map(|(_, m)| m.get(metric).copied())
        .collect();
    let (w, h, pad) = (260.0, 110.0, 18.0);
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let step = if points.len() > 1 {
        (w - 2.0 * pad) / (points.len() - 1) as f64
    } else {
        0.0
    };
    let xy: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                pad + i as f64 * step,
                h - pad - (v - lo) / span * (h - 2.0 * pad),
            )
        })
        .collect();
    let line: Vec<String> = xy.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let mut svg = format!(
        r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><text x="6" y="13">"#
    );
    svg.push_str(&maud::html! { (metric) " (" (points.len()) " runs)" }.into_string());
    svg.push_str(&format!(r#"</text><text x="6" y="{}">{lo}</text><text x="{}" y="13" text-anchor="end">{hi}</text><polyline points="{}"/>"#, h - 4.0, w - 6.0, line.join(" ")));
    for (x, y) in &xy {
        svg.push_str(&format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5"/>"#));
    }
    svg.push_str("</svg>");
    raw(svg)
}
