//! The HTTP API (`/api/v1`), health endpoints, `/metrics`, and bearer-token checks.
//!
//! With tokens configured (see [`auth`]) every route but `/healthz`, `/readyz` and the signed
//! webhooks needs `Authorization: Bearer <token>` whose role allows it: `read` for every read
//! (`/metrics` included: it names pipelines and models, and Prometheus can send a token),
//! `trigger` to start and cancel runs and to move model aliases ([`models`]), `admin` to reload
//! and collect garbage. Errors are JSON `{"error": "..."}` with a status that fits: 404 for what
//! does not exist, 409 for a run already over, 422 for params that do not fit, 5xx for faults.

mod artifacts;
pub mod auth;
pub mod hooks;
pub mod host;
mod logs;
mod metrics;
pub mod models;
mod runs;
pub mod serve;
#[cfg(test)]
mod tests;
pub mod ui;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// The whole HTTP surface of a daemon.
pub fn router(state: ApiState) -> Router {
    let needs =
        |role: Role| axum::middleware::from_fn_with_state((state.clone(), role), auth::require);
    let reads = Router::new()
        .route("/api/v1/pipelines", get(runs::pipelines))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{run}", get(runs::show))
        .route("/api/v1/runs/{run}/events", get(runs::events))
        .route("/api/v1/runs/{run}/steps/{step}/logs", get(logs::logs))
        .route("/api/v1/workers", get(runs::workers))
        .route("/api/v1/pipelines/{pipeline}/skipped", get(runs::skipped))
        .route("/api/v1/artifacts", get(artifacts::list))
        .route("/api/v1/artifacts/{id}", get(artifacts::show))
        .route("/api/v1/artifacts/{id}/lineage", get(artifacts::lineage))
        .route("/api/v1/artifacts/{id}/diff/{other}", get(artifacts::diff))
        .route("/api/v1/artifacts/{id}/content", get(artifacts::content))
        .route("/api/v1/models", get(models::list_models))
        .route("/api/v1/models/{name}", get(models::show_model))
        .route(
            "/api/v1/models/{name}/versions/{version}",
            get(models::show_version),
        )
        .route(
            "/api/v1/models/{name}/aliases/{alias}",
            get(models::show_alias),
        )
        .route("/api/v1/models/{name}/history", get(models::show_history))
        .route("/metrics", get(metrics::metrics))
        .route_layer(needs(Role::Read));
    let triggers = Router::new()
        .route("/api/v1/pipelines/{pipeline}/runs", post(runs::trigger))
        .route("/api/v1/runs/{run}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{run}/retry", post(runs::retry))
        .route(
            "/api/v1/models/{name}/aliases/{alias}",
            post(models::promote_alias),
        )
        .route(
            "/api/v1/models/{name}/aliases/{alias}/rollback",
            post(models::rollback_alias),
        )
        .route_layer(needs(Role::Trigger));
    let admin = Router::new()
        .route("/api/v1/reload", post(runs::reload))
        .route("/api/v1/gc", post(artifacts::collect))
        .route_layer(needs(Role::Admin));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // Webhooks authenticate with their own HMAC signatures, not the API tokens.
        .route(
            "/hooks/{pipeline}/{trigger}",
            post(hooks::hook).layer(axum::extract::DefaultBodyLimit::max(hooks::MAX_BODY)),
        )
        .merge(reads)
        .merge(triggers)
        .merge(admin)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state.clone())
        // The web UI: pages under `/ui` (and `/`), signed in with a session of its own.
        .merge(ui::router(state))
}

/// A query string that does not parse is the caller's mistake: 422 with why, as JSON.
fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("bad query string: {}", rejection.body_text()),
    )
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match state.daemon.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}"))
            .into_response(),
    }
}
