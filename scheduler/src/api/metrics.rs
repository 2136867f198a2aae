//! `GET /metrics`: the daemon's metrics in Prometheus' text format (see [`crate::metrics`]).
//!
//! It is a read like any other: open when no tokens are configured, and with tokens it needs
//! one whose role allows reading. Prometheus sends one with `authorization: {credentials: ...}`
//! (or `credentials_file`) in the scrape config; see `examples/grafana/prometheus.yml`.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState, ErrorBody};

/// The daemon's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The metrics in Prometheus' text format 0.0.4 (runs and steps by pipeline and state, step durations, queues, workers, triggers, webhook rejections, leases lost, store size, model aliases).", content_type = "text/plain; version=0.0.4", body = String),
        (status = 500, description = "The metrics could not be encoded.", body = ErrorBody),
    ),
)]
pub(super) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let snapshot = state.daemon.snapshot().await;
    let text = state
        .daemon
        .metrics()
        .encode(&snapshot)
        .map_err(|err| ApiError::internal(format!("cannot encode the metrics: {err}")))?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}
