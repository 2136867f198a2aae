//! The HTTP API (`/api/v1`), health endpoints, and bearer-token checks on writes.
//!
//! Reads are open; writes (trigger, cancel, reload) need `Authorization: Bearer <token>` when the
//! daemon has a token. Errors are JSON `{"error": "..."}` with a status that fits: 404 for what
//! does not exist, 409 for a run already over, 422 for params that do not fit, 5xx for faults.

pub mod hooks;
mod logs;
mod runs;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::daemon::Daemon;

/// What every handler sees.
#[derive(Clone)]
pub struct ApiState {
    /// The scheduler.
    pub daemon: Arc<Daemon>,
    /// The bearer token writes need, if any.
    pub token: Option<Arc<str>>,
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
    let writes = Router::new()
        .route("/api/v1/pipelines/{pipeline}/runs", post(runs::trigger))
        .route("/api/v1/runs/{run}/cancel", post(runs::cancel))
        .route("/api/v1/reload", post(runs::reload))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/pipelines", get(runs::pipelines))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{run}", get(runs::show))
        .route("/api/v1/runs/{run}/events", get(runs::events))
        .route("/api/v1/runs/{run}/steps/{step}/logs", get(logs::logs))
        .route("/api/v1/workers", get(runs::workers))
        .route("/api/v1/pipelines/{pipeline}/skipped", get(runs::skipped))
        // Webhooks authenticate with their own HMAC signatures, not the API token.
        .route(
            "/hooks/{pipeline}/{trigger}",
            post(hooks::hook).layer(axum::extract::DefaultBodyLimit::max(hooks::MAX_BODY)),
        )
        .merge(writes)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
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

/// Refuses a write without the right bearer token (when the daemon has one).
async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if tokens_match(given, expected) {
        next.run(request).await
    } else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer <token>` with the scheduler's API token",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        response
    }
}

/// Compares in constant time; hashing first hides the length of the token too.
fn tokens_match(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::tokens_match;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(tokens_match("s3cret", "s3cret"));
        assert!(!tokens_match("s3cre", "s3cret"));
        assert!(!tokens_match("", "s3cret"));
        assert!(!tokens_match("s3cret ", "s3cret"));
    }
}
