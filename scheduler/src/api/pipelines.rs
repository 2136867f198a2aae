//! `/api/v1/pipelines`: what the daemon serves, the triggers its concurrency policies skipped,
//! and `POST /api/v1/reload`.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody};
use crate::cli::printers::ListedTrigger;
use crate::daemon::LoadError;
use crate::store::marks::SkipMark;

/// `GET /api/v1/pipelines`: what the daemon serves, and the files it could not load.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PipelineList {
    /// The loaded pipelines, by name.
    pipelines: Vec<PipelineSummary>,
    /// Files skipped, each with every problem found in it.
    errors: Vec<LoadError>,
}

/// One loaded pipeline.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PipelineSummary {
    /// Its `name`.
    name: String,
    /// Its `description`, if it has one.
    description: Option<String>,
    /// The file it was read from.
    #[schema(value_type = String)]
    file: std::path::PathBuf,
    /// SHA-256 of the definition served: what runs started now record.
    hash: String,
    /// Its steps, in file order.
    steps: Vec<String>,
    /// The params it declares.
    params: Vec<String>,
    /// What fires it and, for cron, the next instant.
    triggers: Vec<ListedTrigger>,
}

#[utoipa::path(
    get,
    path = "/api/v1/pipelines",
    tag = "pipelines",
    operation_id = "list_pipelines",
    responses((status = 200, description = "The loaded pipelines and the files that failed to load.", body = PipelineList)),
)]
pub(super) async fn pipelines(State(state): State<ApiState>) -> Json<PipelineList> {
    let now = chrono::Utc::now();
    state.daemon.with_catalog(|catalog| {
        let pipelines = catalog
            .pipelines
            .values()
            .map(|loaded| {
                let p = &loaded.pipeline;
                PipelineSummary {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    file: loaded.path.clone(),
                    hash: loaded.hash.clone(),
                    steps: p.steps.keys().cloned().collect(),
                    params: p.params.keys().cloned().collect(),
                    triggers: crate::cli::printers::listed_triggers(p, now),
                }
            })
            .collect();
        Json(PipelineList {
            pipelines,
            errors: catalog.errors.clone(),
        })
    })
}

/// Triggers a pipeline's concurrency policy skipped.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SkippedList {
    /// The pipeline asked about.
    pipeline: String,
    /// The latest 100, newest first.
    skipped: Vec<SkipMark>,
}

#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{pipeline}/skipped",
    tag = "pipelines",
    operation_id = "skipped_triggers",
    params(("pipeline" = String, Path, description = "The pipeline's name (an unknown one has none).")),
    responses((status = 200, description = "The triggers skipped, newest first.", body = SkippedList)),
)]
pub(super) async fn skipped(
    State(state): State<ApiState>,
    Path(pipeline): Path<String>,
) -> Json<SkippedList> {
    let skipped = state.daemon.skipped(&pipeline, 100);
    Json(SkippedList { pipeline, skipped })
}

/// What a reload found.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Reloaded {
    /// Pipelines loaded.
    loaded: usize,
    /// Files that failed to load (listed by `GET /api/v1/pipelines`).
    failed: usize,
}

#[utoipa::path(
    post,
    path = "/api/v1/reload",
    tag = "pipelines",
    operation_id = "reload",
    responses(
        (status = 200, description = "The pipelines folder was read again.", body = Reloaded),
        (status = 500, description = "The folder cannot be read.", body = ErrorBody),
    ),
)]
pub(super) async fn reload(State(state): State<ApiState>) -> Result<Json<Reloaded>, ApiError> {
    let daemon = state.daemon.clone();
    let (loaded, failed) = tokio::task::spawn_blocking(move || daemon.reload())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(Reloaded { loaded, failed }))
}
