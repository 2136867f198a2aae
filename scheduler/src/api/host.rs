//! The part of the API a `sluice run` serves on its data dir's socket (see [`crate::host`]):
//! the run reads, logs, cancel, and starting a run of a file for another `sluice run`. No
//! tokens: the socket is the user's own (mode 0600). Not in `/api/v1/openapi.json`: only other
//! `sluice` commands of the same binary speak it, and its run reads answer with the daemon's
//! documented types (see [`super::openapi`]).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::logs::{serve_log, LogQuery, LogSource};
use super::runs::{
    cancel_answer, list_runs, run_events, show_run, ListQuery, RunDetail, RunEvents, RunList,
};
use super::ApiError;
use crate::host::{Host, Refused, Submission};

/// The socket's routes.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/runs", get(list))
        .route("/api/v1/runs/{run}", get(show))
        .route("/api/v1/runs/{run}/events", get(events))
        .route("/api/v1/runs/{run}/steps/{step}/logs", get(logs))
        .route("/api/v1/runs/{run}/cancel", post(cancel))
        .route("/api/v1/local/runs", post(submit))
        .fallback(|| async {
            ApiError::not_found(
                "a `sluice run` serves runs, logs and cancel on its data dir; `sluice server --data-dir DIR` serves the whole API",
            )
        })
        .with_state(host)
}

async fn list(
    State(host): State<Arc<Host>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    list_runs(host.store(), query).map(Json)
}

async fn show(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    show_run(host.store(), &id).map(Json)
}

async fn events(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<Json<RunEvents>, ApiError> {
    run_events(host.store(), &id).map(Json)
}

async fn logs(
    State(host): State<Arc<Host>>,
    Path((run_id, step)): Path<(String, String)>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    let source = LogSource {
        store: host.store().clone(),
        remote: None,
        shutdown: host.serving_token(),
    };
    serve_log(source, &run_id, &step, query).await
}

async fn cancel(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cancel_answer(host.cancel(&id))
}

async fn submit(
    State(host): State<Arc<Host>>,
    submission: Result<Json<Submission>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(submission) = submission
        .map_err(|why| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, why.body_text()))?;
    match host.submit(submission).await {
        Ok(run) => Ok((StatusCode::CREATED, Json(json!({ "run": run }))).into_response()),
        Err(err @ Refused::Invalid(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            err.to_string(),
        )),
        Err(err @ Refused::Finishing) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            err.to_string(),
        )),
        Err(Refused::Failed(err)) => Err(ApiError::internal(err)),
    }
}
