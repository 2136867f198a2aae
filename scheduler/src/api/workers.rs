//! `GET /api/v1/workers`: the workers a scheduler knows, and whether each is still heard from.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use sluice_worker::queue::WorkerInfo;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody};

/// The workers the scheduler knows.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkerList {
    /// Each with what it advertised and whether it is still heard from.
    workers: Vec<WorkerState>,
}

/// A worker as the scheduler sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkerState {
    /// What it advertises in its heartbeats.
    #[serde(flatten)]
    info: WorkerInfo,
    /// Milliseconds since its last heartbeat.
    seen_ms_ago: u64,
    /// Whether it is heard from within the lease.
    state: Liveness,
}

/// Whether a worker is still heard from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum Liveness {
    /// Heard from within the lease.
    Alive,
    /// Silent for longer than a lease: its tasks are being taken back.
    Gone,
}

#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "workers",
    operation_id = "list_workers",
    responses(
        (status = 200, description = "The workers with their queues, slots, GPUs, running steps and last heartbeat.", body = WorkerList),
        (status = 503, description = "The worker registry (Redis) cannot be read.", body = ErrorBody),
    ),
)]
pub(super) async fn workers(State(state): State<ApiState>) -> Result<Json<WorkerList>, ApiError> {
    let now = sluice_worker::task::now_ms();
    let workers = state.daemon.workers().await.map_err(|why| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot list workers: {why}"),
        )
    })?;
    let workers = workers
        .into_iter()
        .map(|info| {
            let seen_ms_ago = now.saturating_sub(info.heartbeat_ms);
            let gone = !state.daemon.is_alive(&info, now);
            WorkerState {
                info,
                seen_ms_ago,
                state: if gone {
                    Liveness::Gone
                } else {
                    Liveness::Alive
                },
            }
        })
        .collect();
    Ok(Json(WorkerList { workers }))
}
