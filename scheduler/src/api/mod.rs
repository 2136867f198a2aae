//! The HTTP API (`/api/v1`), health endpoints, `/metrics`, and bearer-token checks.
//!
//! `GET /api/v1/openapi.json` describes every route ([`openapi`]). With tokens configured (see
//! [`auth`]) every route but `/healthz`, `/readyz`, that document and the signed webhooks needs
//! `Authorization: Bearer <token>` whose role allows it: `read` for every read (`/metrics`
//! included: it names pipelines and models, and Prometheus can send a token), `trigger` to
//! start and cancel runs and to move model aliases ([`models`]), `admin` to reload and collect
//! garbage. The web UI ([`ui`]) signs in with the same tokens and keeps a session of its own.
//! Errors are JSON `{"error": "..."}` with a status that fits: 404 for what
//! does not exist, 409 for a run already over, 422 for params that do not fit, 5xx for faults.

mod artifacts;
pub mod auth;
pub mod hooks;
pub mod host;
mod logs;
mod metrics;
pub mod models;
pub mod openapi;
mod pipelines;
mod runs;
pub mod serve;
#[cfg(test)]
mod tests;
pub mod ui;
mod workers;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use auth::{Role, Tokens};

use crate::daemon::Daemon;

/// What every handler sees.
#[derive(Clone)]
pub struct ApiState {
    /// The scheduler.
    pub daemon: Arc<Daemon>,
    /// The tokens callers must bring; none configured means the API is open.
    pub tokens: Arc<Tokens>,
    /// Refuse webhook signatures without a timestamp (`--require-webhook-timestamp`).
    pub require_webhook_timestamp: bool,
}

/// An error answered as JSON with its status code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with a status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// What a failed start of a run answers: 503 while the store cannot write (a full disk:
    /// try again later, nothing was started), 500 otherwise.
    fn engine(err: crate::engine::EngineError) -> ApiError {
        use crate::engine::EngineError;
        match err {
            EngineError::Store(store) if store.may_pass() => {
                tracing::error!(error = %store, "A run could not be recorded: the store cannot write.");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("nothing was started: the store cannot write now ({store}); try again"),
                )
            }
            other => ApiError::internal(other),
        }
    }

    fn internal(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "API request failed.");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

/// The body of every error the API answers: `{"error": "why"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// The whole HTTP surface of a daemon, and `GET /api/v1/openapi.json` describing it.
///
/// Every route is registered with utoipa-axum's `routes!` from its handler's
/// `#[utoipa::path]` annotation, which names the path and method the router serves: the
/// document and the router are made from the same table, here, and cannot disagree (the
/// tests in [`openapi`] compare them anyway). A group's role is applied to its routes'
/// operations in the document by the same call that puts its guard in front of them
/// ([`openapi::guarded`]).
pub fn router(state: ApiState) -> Router {
    let reads = OpenApiRouter::new()
        .routes(routes!(pipelines::pipelines))
        .routes(routes!(runs::list))
        .routes(routes!(runs::show))
        .routes(routes!(runs::events))
        .routes(routes!(logs::logs))
        .routes(routes!(workers::workers))
        .routes(routes!(pipelines::skipped))
        .routes(routes!(artifacts::list))
        .routes(routes!(artifacts::show))
        .routes(routes!(artifacts::lineage))
        .routes(routes!(artifacts::diff))
        .routes(routes!(artifacts::content))
        .routes(routes!(models::list_models))
        .routes(routes!(models::show_model))
        .routes(routes!(models::show_version))
        .routes(routes!(models::show_alias))
        .routes(routes!(models::show_history))
        .routes(routes!(metrics::metrics));
    let triggers = OpenApiRouter::new()
        .routes(routes!(runs::trigger))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::retry))
        .routes(routes!(models::promote_alias))
        .routes(routes!(models::rollback_alias));
    let admin = OpenApiRouter::new()
        .routes(routes!(pipelines::reload))
        .routes(routes!(artifacts::collect));
    let (routes, document) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        // The document describes the API, not its data: served to anyone (see `openapi::serve`).
        .routes(routes!(openapi::serve))
        // Webhooks authenticate with their own HMAC signatures, not the API tokens.
        .routes(routes!(hooks::hook).layer(axum::extract::DefaultBodyLimit::max(hooks::MAX_BODY)))
        .merge(openapi::guarded(&state, Role::Read, reads))
        .merge(openapi::guarded(&state, Role::Trigger, triggers))
        .merge(openapi::guarded(&state, Role::Admin, admin))
        .split_for_parts();
    routes
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(Extension(openapi::Document::new(document)))
        .with_state(state.clone())
        // The web UI: pages under `/ui` (and `/`), signed in with a session of its own; not
        // part of the API document (it answers HTML to browsers).
        .merge(ui::router(state))
}

/// A request's JSON body as `T`; an empty body or `null` is `None` (the document marks such
/// bodies optional, and describes them as `T` or `null`). Anything but an object is the
/// caller's mistake, 422: serde would fill a struct from an array, field by field in order, so
/// `[null, true]` would otherwise pass for `{"dry_run": true}`-like bodies. `expected` shows
/// the body's shape in the message.
fn json_body<T: DeserializeOwned>(bytes: &[u8], expected: &str) -> Result<Option<T>, ApiError> {
    let bad = |why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("bad request body: {why} (expected {expected})"),
        )
    };
    // JSON's whitespace only: a form feed (ASCII whitespace to Rust) is not an empty body.
    if bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(None);
    }
    match serde_json::from_slice(bytes).map_err(|err| bad(err.to_string()))? {
        Value::Null => Ok(None),
        object @ Value::Object(_) => serde_json::from_value(object)
            .map(Some)
            .map_err(|err| bad(err.to_string())),
        other => Err(bad(format!("a JSON object is needed, not `{other}`"))),
    }
}

/// Reads a count or a version number from JSON: a number without a fractional part, from 0 to
/// 2^63-1 (what the document's `integer`, `int64`, `minimum: 0` admits). JSON Schema counts
/// `3.0` as an integer, and so do many JSON writers; serde alone refuses it.
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(whole) = number.as_u64().filter(|n| i64::try_from(*n).is_ok()) {
        return Ok(whole);
    }
    // Below 2^53 a float holds every whole number exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..EXACT).contains(&f) => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!(
            "`{number}` is not a whole number from 0 to 2^63-1"
        ))),
    }
}

/// [`whole_number`] for an optional field (`null` or absent: `None`).
fn whole_number_or_none<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] u64);
    Ok(Option::<Whole>::deserialize(deserializer)?.map(|Whole(n)| n))
}

/// A query string that does not parse is the caller's mistake: 422 with why, as JSON.
fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("bad query string: {}", rejection.body_text()),
    )
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    responses((status = 200, description = "The process runs.", body = String, content_type = "text/plain", example = "ok\n")),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the daemon can take work (its queue answers, its store writes).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready: the queue answers and the store writes.", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, description = "Not ready, with the reason (Redis down, a full disk).", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<ApiState>) -> Response {
    match state.daemon.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}"))
            .into_response(),
    }
}
