//! The runs page (filters, paging) and what acts on a run: cancel, retry, its logs and its
//! artifacts' bytes.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::pages::{badge, encode, frame, took, when, Section};
use super::session::Viewer;
use super::{acted_by, problem, refuse_action, UiState};
use crate::api::logs::{serve_log, LogQuery, LogSource};
use crate::api::runs::{list_runs, ListQuery};
use crate::daemon::{CancelError, Started, TriggerError};

/// States a run can be in, for the filter.
const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

pub(super) async fn list(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            &viewer,
            "bad query string",
        );
    };
    let store = ui.api.daemon.engine().store.clone();
    let shown = query.clone();
    let listed = tokio::task::spawn_blocking(move || list_runs(&store, query)).await;
    let answer = match listed {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => return err.into_response(),
        Err(err) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &viewer, &err.to_string()),
    };
    let (runs, next) = (answer.runs, answer.next_before);
    let pipelines: Vec<String> = ui
        .api
        .daemon
        .with_catalog(|c| c.pipelines.keys().cloned().collect());
    let filter_link = |before: &str| {
        let mut link = format!("/ui/runs?before={}", encode(before));
        if let Some(p) = &shown.pipeline {
            link.push_str(&format!("&pipeline={}", encode(p)));
        }
        if let Some(s) = &shown.status {
            link.push_str(&format!("&status={}", encode(s)));
        }
        link
    };
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/ui/runs" {
            select name="pipeline" {
                option value="" { "every pipeline" }
                @for name in &pipelines {
                    option value=(name) selected[shown.pipeline.as_deref() == Some(name.as_str())] { (name) }
                }
            }
            select name="status" {
                option value="" { "any state" }
                @for status in STATUSES {
                    option value=(status) selected[shown.status.as_deref() == Some(status)] { (status) }
                }
            }
            button.quiet type="submit" { "Filter" }
        }
        @if runs.is_empty() {
            p.sub { "No runs here yet. Start one from " a href="/ui/pipelines" { "a pipeline" } "." }
        } @else {
            table {
                thead { tr { th { "Run" } th { "Pipeline" } th { "State" } th { "Started" } th.num { "Took" } th { "Trigger" } th.num { "Steps" } } }
                tbody {
                    @for run in &runs {
                        tr {
                            td { a.mono href={ "/ui/runs/" (encode(&run.id)) } { (run.id) } }
                            td { a href={ "/ui/pipelines/" (encode(&run.pipeline)) } { (run.pipeline) } }
                            td { (badge(run.status.as_str(), None)) }
                            td { (when(run.created_ms)) }
                            td.num { (took(run.finished_ms.map(|f| f.saturating_sub(run.created_ms)))) }
                            td { (run.trigger.to_string()) }
                            td.num { (run.step_count) }
                        }
                    }
                }
            }
        }
        div.pager {
            @if shown.before.is_some() { a href="/ui/runs" { "← Newest" } }
            @if let Some(next) = &next { a href=(filter_link(next)) { "Older →" } }
        }
    };
    Html(frame("Runs", Section::Runs, &viewer, body).into_string()).into_response()
}

/// `?stream=stdout|stderr&attempt=N&follow=true`: the log as plain text.
pub(super) async fn log(
    State(ui): State<UiState>,
    Path((run, step)): Path<(String, String)>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "bad query string").into_response();
    };
    let daemon = &ui.api.daemon;
    let source = LogSource {
        store: daemon.engine().store.clone(),
        remote: daemon.remote_logs(),
        shutdown: daemon.shutdown_token().clone(),
    };
    match serve_log(source, &run, &step, query).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// `?path=` for a file of a folder artifact.
pub(super) async fn artifact(
    State(ui): State<UiState>,
    Path(id): Path<String>,
    query: Result<Query<crate::api::artifacts::ContentQuery>, QueryRejection>,
) -> Response {
    match crate::api::artifacts::content(State(ui.api.clone()), Path(id), query).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// A folder artifact's files, each a download.
pub(super) async fn artifact_files(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let catalog = crate::api::artifacts::catalog(&ui.api);
    let listed = match catalog.resolve(&id) {
        Ok(id) => catalog.contents(&id).await.map(|contents| (id, contents)),
        Err(err) => Err(err),
    };
    let (id, contents) = match listed {
        Ok(listed) => listed,
        Err(err) => return problem(StatusCode::NOT_FOUND, &viewer, &err.to_string()),
    };
    let body = html! {
        h1 { "Artifact " span.mono { (id[..id.len().min(16)]) } }
        p.sub { (contents.files.len()) " files · " (crate::cli::human_bytes(contents.size)) }
        table {
            thead { tr { th { "File" } th.num { "Size" } th { "BLAKE3" } } }
            tbody { @for file in &contents.files { tr {
                td { a href={ "/ui/artifacts/" (encode(&id)) "?path=" (encode(&file.path)) } download { (file.path) } }
                td.num { (crate::cli::human_bytes(file.size)) }
                td.mono { (file.id[..file.id.len().min(16)]) }
            } } }
        }
    };
    Html(frame("Artifact", Section::Runs, &viewer, body).into_string()).into_response()
}

/// A form with only the CSRF token.
#[derive(Debug, Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    /// For a retry: run this step and what follows it again too.
    #[serde(default)]
    from: Option<String>,
}

pub(super) async fn cancel(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf, "cancelling") {
        return refused;
    }
    match ui.api.daemon.cancel(&id, &acted_by(&viewer)) {
        Ok(run) => Redirect::to(&format!("/ui/runs/{}", encode(&run.id))).into_response(),
        Err(err @ (CancelError::UnknownRun(_) | CancelError::Ambiguous(_))) => {
            problem(StatusCode::NOT_FOUND, &viewer, &err.to_string())
        }
        Err(err @ CancelError::Finished(..)) => {
            problem(StatusCode::CONFLICT, &viewer, &err.to_string())
        }
        Err(err) => problem(StatusCode::SERVICE_UNAVAILABLE, &viewer, &err.to_string()),
    }
}

pub(super) async fn retry(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf, "retrying") {
        return refused;
    }
    let daemon = ui.api.daemon.clone();
    let from = form.from.filter(|f| !f.is_empty());
    let by = Some(acted_by(&viewer));
    let created = tokio::task::spawn_blocking(move || daemon.retry(&id, from.as_deref(), by)).await;
    started(created.map_err(|e| e.to_string()), &viewer)
}

/// Where a trigger or a retry leads: the new run's page, or a page that says why not.
pub(super) fn started(
    created: Result<Result<Started, TriggerError>, String>,
    viewer: &Viewer,
) -> Response {
    match created {
        Ok(Ok(Started::New(run))) => {
            Redirect::to(&format!("/ui/runs/{}", encode(&run.id))).into_response()
        }
        Ok(Ok(Started::Existing(id))) => {
            Redirect::to(&format!("/ui/runs/{}", encode(&id))).into_response()
        }
        Ok(Ok(Started::Skipped(reason))) => problem(
            StatusCode::CONFLICT,
            viewer,
            &format!("not started: {reason}"),
        ),
        Ok(Err(err @ (TriggerError::Params(_) | TriggerError::CannotRetry(_)))) => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, viewer, &err.to_string())
        }
        Ok(Err(err @ (TriggerError::UnknownPipeline(_) | TriggerError::UnknownRun(_)))) => {
            problem(StatusCode::NOT_FOUND, viewer, &err.to_string())
        }
        Ok(Err(err)) => problem(StatusCode::SERVICE_UNAVAILABLE, viewer, &err.to_string()),
        Err(err) => problem(StatusCode::INTERNAL_SERVER_ERROR, viewer, &err),
    }
}

/// The link to a step's log.
pub(super) fn log_link(run: &str, step: &str, stream: &str) -> String {
    format!(
        "/ui/runs/{}/steps/{}/log?stream={stream}",
        encode(run),
        encode(step)
    )
}
