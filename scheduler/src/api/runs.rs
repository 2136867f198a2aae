//! Pipelines, runs, workers: the JSON endpoints.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::daemon::{CancelError, Origin, Started, TriggerError};
use crate::store::TriggerOrigin;
use crate::store::{RunLookup, RunRecord, Store};

/// Most runs in one page.
const MAX_PAGE: usize = 1000;
/// Most runs looked at to fill one filtered page, so a rare filter cannot scan all history.
const MAX_SCANNED: usize = 20_000;

pub(super) async fn pipelines(State(state): State<ApiState>) -> Json<Value> {
    let now = chrono::Utc::now();
    state.daemon.with_catalog(|catalog| {
        let pipelines: Vec<Value> = catalog
            .pipelines
            .values()
            .map(|loaded| {
                let p = &loaded.pipeline;
                json!({
                    "name": p.name,
                    "description": p.description,
                    "file": loaded.path,
                    "hash": loaded.hash,
                    "steps": p.steps.keys().collect::<Vec<_>>(),
                    "params": p.params.keys().collect::<Vec<_>>(),
                    // Each with what it fires on and, for cron, the next instant.
                    "triggers": crate::cli::printers::listed_triggers(p, now),
                })
            })
            .collect();
        Json(json!({ "pipelines": pipelines, "errors": catalog.errors }))
    })
}

/// Body of a trigger: `{"params": {"min_accuracy": 0.9}, "no_cache": true}` (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TriggerBody {
    #[serde(default)]
    params: BTreeMap<String, Value>,
    /// Run every step, cached or not.
    #[serde(default)]
    no_cache: bool,
}

pub(super) async fn trigger(
    State(state): State<ApiState>,
    Path(pipeline): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // An empty body starts a run with the default params.
    let body: TriggerBody = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|err| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("bad request body: {err} (expected {{\"params\": {{\"name\": value}}}})"),
            )
        })?
    };
    let mut overrides = BTreeMap::new();
    for (name, value) in body.params.clone() {
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("param `{name}` must be a string, number or boolean, not {other}"),
                ))
            }
        };
        overrides.insert(name, text);
    }
    let daemon = state.daemon.clone();
    // Creating a run commits (and flushes) the store: off the async threads.
    // Who started it, when the API knows: `api by ci-bot`.
    let trigger = TriggerOrigin::Api {
        by: caller.0.clone(),
    };
    let origin = Origin {
        trigger,
        no_cache: body.no_cache,
        ..Origin::default()
    };
    let created =
        tokio::task::spawn_blocking(move || daemon.start_run(&pipeline, overrides, origin))
            .await
            .map_err(ApiError::internal)?;
    started_response(created)
}

/// Body of a retry: `{"from": "train"}` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryBody {
    #[serde(default)]
    from: Option<String>,
}

/// `POST /api/v1/runs/{id}/retry`: a new run that keeps the steps that succeeded.
pub(super) async fn retry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RetryBody = if body.iter().all(u8::is_ascii_whitespace) {
        RetryBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|err| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("bad request body: {err} (expected {{\"from\": \"STEP\"}} or nothing)"),
            )
        })?
    };
    let daemon = state.daemon.clone();
    let by = caller.0.clone();
    // Planning reads the run's records and creating the run commits: off the async threads.
    let created = tokio::task::spawn_blocking(move || daemon.retry(&id, body.from.as_deref(), by))
        .await
        .map_err(ApiError::internal)?;
    started_response(created)
}

/// The answer to a trigger or a retry.
fn started_response(created: Result<Started, TriggerError>) -> Result<Response, ApiError> {
    match created {
        Ok(Started::New(run)) => {
            Ok((StatusCode::CREATED, Json(json!({ "run": run }))).into_response())
        }
        Ok(Started::Skipped(reason)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("not started: {reason}"),
        )),
        Ok(Started::Existing(id)) => {
            Ok((StatusCode::OK, Json(json!({ "run": { "id": id } }))).into_response())
        }
        Err(err @ (TriggerError::UnknownPipeline(_) | TriggerError::UnknownRun(_))) => {
            Err(ApiError::not_found(err.to_string()))
        }
        Err(err @ TriggerError::Params(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            err.to_string(),
        )),
        Err(err @ TriggerError::CannotRetry(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, err.to_string()))
        }
        Err(err @ TriggerError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            err.to_string(),
        )),
        Err(TriggerError::Engine(err)) => Err(ApiError::engine(err)),
    }
}

/// Query of the run list.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct ListQuery {
    /// Most runs in the page (50 by default).
    pub(super) limit: Option<usize>,
    /// Runs older than this one.
    pub(super) before: Option<String>,
    /// Only this pipeline's.
    pub(super) pipeline: Option<String>,
    /// Only runs in this state.
    pub(super) status: Option<String>,
}

/// Longest param value shown in a list of runs; `GET /api/v1/runs/{id}` has them whole.
const LISTED_PARAM_BYTES: usize = 256;

pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    list_runs(&state.daemon.engine().store, query).map(Json)
}

/// A page of runs, newest first, filtered as the query asks.
pub(super) fn list_runs(store: &Store, mut query: ListQuery) -> Result<Value, ApiError> {
    if let Some(status) = &query.status {
        const STATUSES: &[&str] = &["queued", "running", "succeeded", "failed", "cancelled"];
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "status must be one of {}, not `{status}`",
                    STATUSES.join(", ")
                ),
            ));
        }
    }
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let mut before = query.before.take();
    let filtered = query.pipeline.is_some() || query.status.is_some();
    let keep = move |run: &RunRecord| {
        query.pipeline.as_ref().is_none_or(|p| &run.pipeline == p)
            && query
                .status
                .as_ref()
                .is_none_or(|s| run.status.as_str() == s)
    };
    let mut runs = Vec::new();
    let mut scanned = 0;
    loop {
        let page = store
            .list_runs(if filtered { MAX_PAGE } else { limit }, before.as_deref())
            .map_err(ApiError::internal)?;
        let exhausted = page.len() < if filtered { MAX_PAGE } else { limit };
        scanned += page.len();
        before = page.last().map(|r| r.id.clone());
        runs.extend(page.into_iter().filter(|r| keep(r)));
        if runs.len() >= limit || exhausted || scanned >= MAX_SCANNED {
            break;
        }
    }
    runs.truncate(limit);
    let next = (runs.len() == limit).then(|| runs.last().map(|r| r.id.clone()));
    // A page lists runs, not their data: long param values are cut (the run itself has them).
    for run in &mut runs {
        for value in run.params.values_mut() {
            if value.len() > LISTED_PARAM_BYTES {
                let mut cut = LISTED_PARAM_BYTES;
                while !value.is_char_boundary(cut) {
                    cut -= 1;
                }
                *value = format!("{}… ({} bytes)", &value[..cut], value.len());
            }
        }
    }
    Ok(json!({ "runs": runs, "next_before": next.flatten() }))
}

/// A run by its id or a prefix only it has: 404 when none, 409 when several.
pub(super) fn find_run(store: &Store, id: &str) -> Result<RunRecord, ApiError> {
    match store.lookup_run(id).map_err(ApiError::internal)? {
        RunLookup::Found(run) => Ok(run),
        RunLookup::NotFound => Err(ApiError::not_found(format!("no run `{id}`"))),
        RunLookup::Ambiguous => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{id}` matches several runs; give more of the id"),
        )),
    }
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    show_run(&state.daemon.engine().store, &id).map(Json)
}

/// A run and its steps.
pub(super) fn show_run(store: &Store, id: &str) -> Result<Value, ApiError> {
    let run = find_run(store, id)?;
    let steps = store.steps(&run.id).map_err(ApiError::internal)?;
    Ok(json!({ "run": run, "steps": steps }))
}

pub(super) async fn events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    run_events(&state.daemon.engine().store, &id).map(Json)
}

/// A run's history of events.
pub(super) fn run_events(store: &Store, id: &str) -> Result<Value, ApiError> {
    let run = find_run(store, id)?;
    let events = store.events(&run.id).map_err(ApiError::internal)?;
    Ok(json!({ "run": run.id, "events": events }))
}

pub(super) async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let by = caller.0.as_deref().unwrap_or("api");
    cancel_answer(state.daemon.cancel(&id, by))
}

/// What a cancel answers: 202 while the run stops, 404, 409 when it is over or the prefix is
/// ambiguous, 503 when nothing here drives it.
pub(super) fn cancel_answer(
    cancelled: Result<RunRecord, CancelError>,
) -> Result<Response, ApiError> {
    match cancelled {
        Ok(run) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "run": run.id, "status": "cancelling" })),
        )
            .into_response()),
        Err(err @ CancelError::UnknownRun(_)) => Err(ApiError::not_found(err.to_string())),
        Err(err @ (CancelError::Finished(..) | CancelError::Ambiguous(_))) => {
            Err(ApiError::new(StatusCode::CONFLICT, err.to_string()))
        }
        Err(err @ CancelError::NotDriven(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            err.to_string(),
        )),
        Err(CancelError::Store(err)) => Err(ApiError::internal(err)),
    }
}

pub(super) async fn workers(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let now = sluice_worker::task::now_ms();
    let workers = state.daemon.workers().await.map_err(|why| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot list workers: {why}"),
        )
    })?;
    let workers: Vec<Value> = workers
        .into_iter()
        .map(|w| {
            let mut value = serde_json::to_value(&w).unwrap_or_default();
            value["seen_ms_ago"] = json!(now.saturating_sub(w.heartbeat_ms));
            let alive = state.daemon.is_alive(&w, now);
            value["state"] = json!(if alive { "alive" } else { "gone" });
            value
        })
        .collect();
    Ok(Json(json!({ "workers": workers })))
}

pub(super) async fn skipped(
    State(state): State<ApiState>,
    Path(pipeline): Path<String>,
) -> Json<Value> {
    Json(json!({ "pipeline": pipeline, "skipped": state.daemon.skipped(&pipeline, 100) }))
}

pub(super) async fn reload(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let daemon = state.daemon.clone();
    let (loaded, failed) = tokio::task::spawn_blocking(move || daemon.reload())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "loaded": loaded, "failed": failed })))
}
