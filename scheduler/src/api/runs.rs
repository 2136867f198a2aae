//! `/api/v1/runs` and starting runs: lists, runs with their steps, events, triggers, retries,
//! cancels.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::{ApiError, ApiState, ErrorBody};
use crate::daemon::{CancelError, Origin, Started, TriggerError};
use crate::store::{EventRecord, RunStatus, StepRecord, TriggerOrigin};
use crate::store::{RunLookup, RunRecord, Store};

/// Most runs in one page.
const MAX_PAGE: usize = 1000;
/// Most runs looked at to fill one filtered page, so a rare filter cannot scan all history.
const MAX_SCANNED: usize = 20_000;

/// Body of a trigger: `{"params": {"min_accuracy": 0.9}, "no_cache": true}` (all optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TriggerBody {
    /// Values for the pipeline's declared params (strings, numbers or booleans); the rest keep
    /// their defaults.
    #[serde(default)]
    #[schema(schema_with = super::openapi::param_values)]
    params: BTreeMap<String, Value>,
    /// Run every step, cached or not.
    #[serde(default)]
    no_cache: bool,
}

/// A run just created.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StartedRun {
    /// The new run, as recorded.
    run: RunRecord,
}

#[utoipa::path(
    post,
    path = "/api/v1/pipelines/{pipeline}/runs",
    tag = "runs",
    operation_id = "trigger_run",
    params(("pipeline" = String, Path, description = "The pipeline's name.")),
    request_body(content = Option<TriggerBody>, description = "Params and options; an empty body starts a run with the defaults."),
    responses(
        (status = 201, description = "The run was created.", body = StartedRun),
        (status = 404, description = "No pipeline of that name is loaded.", body = ErrorBody),
        (status = 409, description = "The concurrency policy skipped it (`overlap: skip`).", body = ErrorBody),
        (status = 422, description = "The body is not JSON of this shape, or the params do not fit the pipeline's declarations.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The scheduler is shutting down, or the store cannot write now: nothing was started.", body = ErrorBody),
    ),
)]
pub(super) async fn trigger(
    State(state): State<ApiState>,
    Path(pipeline): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // An empty body starts a run with the default params.
    let body: TriggerBody =
        super::json_body(&body, r#"{"params": {"name": value}}"#)?.unwrap_or_default();
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
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryBody {
    /// Run this step and everything downstream of it again, even if it succeeded.
    #[serde(default)]
    from: Option<String>,
}

/// `POST /api/v1/runs/{id}/retry`: a new run that keeps the steps that succeeded.
#[utoipa::path(
    post,
    path = "/api/v1/runs/{run}/retry",
    tag = "runs",
    operation_id = "retry_run",
    params(("run" = String, Path, description = "A run's id, or a prefix only it has.")),
    request_body(content = Option<RetryBody>, description = "Where to start again; empty: from the steps that did not succeed."),
    responses(
        (status = 201, description = "The new run (`retry_of` set).", body = StartedRun),
        (status = 404, description = "No run has that id, or several share the prefix.", body = ErrorBody),
        (status = 409, description = "The run is still going, nothing failed (without `from`), `from` names no step, or the concurrency policy skipped it.", body = ErrorBody),
        (status = 422, description = "The body is not JSON of this shape, or the params no longer fit the pipeline.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The scheduler is shutting down, or the store cannot write now.", body = ErrorBody),
    ),
)]
pub(super) async fn retry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RetryBody =
        super::json_body(&body, r#"{"from": "STEP"} or nothing"#)?.unwrap_or_default();
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
            Ok((StatusCode::CREATED, Json(StartedRun { run })).into_response())
        }
        Ok(Started::Skipped(reason)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("not started: {reason}"),
        )),
        // Only triggers that carry a run id or a delivery to deduplicate (cron, webhooks) get
        // this; the API's triggers and retries carry neither, so it is not in their document.
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
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Most runs in the page (50 by default, at most 1000).
    #[param(minimum = 0, maximum = 18446744073709551615_u64)]
    pub(super) limit: Option<usize>,
    /// Runs older than this run id (the last page's `next_before`).
    pub(super) before: Option<String>,
    /// Only this pipeline's runs.
    pub(super) pipeline: Option<String>,
    /// Only runs in this state.
    #[param(value_type = Option<RunStatus>)]
    pub(super) status: Option<String>,
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunList {
    /// Newest first; param values over 256 bytes are cut (`… (N bytes)`).
    pub(super) runs: Vec<RunRecord>,
    /// Pass as `before` for the next page; `null` on the last one.
    pub(super) next_before: Option<String>,
}

/// Longest param value shown in a list of runs; `GET /api/v1/runs/{id}` has them whole.
const LISTED_PARAM_BYTES: usize = 256;

#[utoipa::path(
    get,
    path = "/api/v1/runs",
    tag = "runs",
    operation_id = "list_runs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of runs, newest first.", body = RunList),
        (status = 422, description = "The query string does not parse, or `status` is not a run state.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    list_runs(&state.daemon.engine().store, query).map(Json)
}

/// A page of runs, newest first, filtered as the query asks.
pub(super) fn list_runs(store: &Store, mut query: ListQuery) -> Result<RunList, ApiError> {
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
    Ok(RunList {
        runs,
        next_before: next.flatten(),
    })
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

/// A run with its steps.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunDetail {
    /// The run.
    run: RunRecord,
    /// Its steps in file order, each with every attempt.
    steps: Vec<StepRecord>,
}

#[utoipa::path(
    get,
    path = "/api/v1/runs/{run}",
    tag = "runs",
    operation_id = "show_run",
    params(("run" = String, Path, description = "A run's id, or a prefix only it has.")),
    responses(
        (status = 200, description = "The run and its steps with every attempt.", body = RunDetail),
        (status = 404, description = "No run has that id.", body = ErrorBody),
        (status = 409, description = "Several runs start with that prefix.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
    ),
)]
pub(super) async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    show_run(&state.daemon.engine().store, &id).map(Json)
}

/// A run and its steps.
pub(super) fn show_run(store: &Store, id: &str) -> Result<RunDetail, ApiError> {
    let run = find_run(store, id)?;
    let steps = store.steps(&run.id).map_err(ApiError::internal)?;
    Ok(RunDetail { run, steps })
}

/// A run's history.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunEvents {
    /// The run's id.
    run: String,
    /// Every event, oldest first.
    events: Vec<EventRecord>,
}

#[utoipa::path(
    get,
    path = "/api/v1/runs/{run}/events",
    tag = "runs",
    operation_id = "run_events",
    params(("run" = String, Path, description = "A run's id, or a prefix only it has.")),
    responses(
        (status = 200, description = "The run's history.", body = RunEvents),
        (status = 404, description = "No run has that id.", body = ErrorBody),
        (status = 409, description = "Several runs start with that prefix.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
    ),
)]
pub(super) async fn events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RunEvents>, ApiError> {
    run_events(&state.daemon.engine().store, &id).map(Json)
}

/// A run's history of events.
pub(super) fn run_events(store: &Store, id: &str) -> Result<RunEvents, ApiError> {
    let run = find_run(store, id)?;
    let events = store.events(&run.id).map_err(ApiError::internal)?;
    Ok(RunEvents {
        run: run.id,
        events,
    })
}

/// What a cancel answers: the run is being cancelled.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Cancelling {
    /// The run's whole id.
    pub(super) run: String,
    /// Always `cancelling`: the run ends `cancelled` once its steps stopped.
    pub(super) status: CancelState,
}

/// Where a cancelled run stands when the cancel is answered.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum CancelState {
    /// Its steps are being stopped.
    Cancelling,
}

#[utoipa::path(
    post,
    path = "/api/v1/runs/{run}/cancel",
    tag = "runs",
    operation_id = "cancel_run",
    params(("run" = String, Path, description = "A run's id, or a prefix only it has.")),
    responses(
        (status = 202, description = "The run is being cancelled; it ends `cancelled`.", body = Cancelling),
        (status = 404, description = "No run has that id.", body = ErrorBody),
        (status = 409, description = "The run already finished, or several runs start with that prefix.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The run is unfinished but this daemon does not drive it.", body = ErrorBody),
    ),
)]
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
            Json(Cancelling {
                run: run.id,
                status: CancelState::Cancelling,
            }),
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
