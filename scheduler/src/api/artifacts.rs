//! `/api/v1/artifacts`: listings, details, lineage, diffs and contents of artifacts, and
//! `POST /api/v1/gc`.

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ApiState, ErrorBody};
use crate::artifacts::gc::{self, GcPolicy, GcReport};
use crate::artifacts::{
    ArtifactDetail, ArtifactRow, Catalog, CatalogError, DiffEntry, LineageNode,
};

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> ApiError {
        match err {
            CatalogError::NotFound(_) => ApiError::not_found(err.to_string()),
            CatalogError::Ambiguous(_) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
            other => ApiError::internal(other),
        }
    }
}

pub(super) fn catalog(state: &ApiState) -> Catalog<'_> {
    let engine = state.daemon.engine();
    Catalog {
        store: &engine.store,
        artifacts: &engine.artifacts,
    }
}

/// Filters of the listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only artifacts made by runs of this pipeline.
    pipeline: Option<String>,
    /// Only artifacts made by this step.
    step: Option<String>,
}

/// Artifacts made.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ArtifactList {
    /// Newest first, one row per producing step.
    artifacts: Vec<ArtifactRow>,
}

#[utoipa::path(
    get,
    path = "/api/v1/artifacts",
    tag = "artifacts",
    operation_id = "list_artifacts",
    params(ListQuery),
    responses(
        (status = 200, description = "Artifacts made, newest first.", body = ArtifactList),
        (status = 422, description = "The query string does not parse.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ArtifactList>, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    let artifacts = catalog(&state).list(query.pipeline.as_deref(), query.step.as_deref())?;
    Ok(Json(ArtifactList { artifacts }))
}

#[utoipa::path(
    get,
    path = "/api/v1/artifacts/{id}",
    tag = "artifacts",
    operation_id = "show_artifact",
    params(("id" = String, Path, description = "An artifact's id, or a prefix only it has.")),
    responses(
        (status = 200, description = "The artifact: kind, size, files and producers.", body = ArtifactDetail),
        (status = 404, description = "No artifact has that id.", body = ErrorBody),
        (status = 409, description = "Several artifacts start with that prefix.", body = ErrorBody),
        (status = 500, description = "The store or the artifact store failed.", body = ErrorBody),
    ),
)]
pub(super) async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ArtifactDetail>, ApiError> {
    Ok(Json(catalog(&state).show(&id).await?))
}

/// Where an artifact came from.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Lineage {
    /// The artifact (depth 0), then what its producer read, and so on back to the first step.
    lineage: Vec<LineageNode>,
}

#[utoipa::path(
    get,
    path = "/api/v1/artifacts/{id}/lineage",
    tag = "artifacts",
    operation_id = "artifact_lineage",
    params(("id" = String, Path, description = "An artifact's id, or a prefix only it has.")),
    responses(
        (status = 200, description = "Its producers and their inputs, back to the first step.", body = Lineage),
        (status = 404, description = "No artifact has that id.", body = ErrorBody),
        (status = 409, description = "Several artifacts start with that prefix.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
    ),
)]
pub(super) async fn lineage(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Lineage>, ApiError> {
    let lineage = catalog(&state).lineage(&id)?;
    Ok(Json(Lineage { lineage }))
}

/// How two artifacts differ.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Diff {
    /// Paths added, removed and changed, with sizes.
    changes: Vec<DiffEntry>,
}

#[utoipa::path(
    get,
    path = "/api/v1/artifacts/{id}/diff/{other}",
    tag = "artifacts",
    operation_id = "diff_artifacts",
    params(
        ("id" = String, Path, description = "The first artifact's id, or a prefix only it has."),
        ("other" = String, Path, description = "The second artifact's id, or a prefix only it has."),
    ),
    responses(
        (status = 200, description = "Files added, removed and changed.", body = Diff),
        (status = 404, description = "No artifact has one of the ids.", body = ErrorBody),
        (status = 409, description = "Several artifacts start with one of the prefixes.", body = ErrorBody),
        (status = 500, description = "The store or the artifact store failed.", body = ErrorBody),
    ),
)]
pub(super) async fn diff(
    State(state): State<ApiState>,
    Path((old, new)): Path<(String, String)>,
) -> Result<Json<Diff>, ApiError> {
    let changes = catalog(&state).diff(&old, &new).await?;
    Ok(Json(Diff { changes }))
}

/// Which file of a folder artifact.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ContentQuery {
    /// The file's path inside a folder artifact; empty (the default) for a file artifact.
    #[serde(default)]
    path: String,
}

/// The bytes of a file artifact, or of one file (`?path=`) of a folder artifact, verified.
#[utoipa::path(
    get,
    path = "/api/v1/artifacts/{id}/content",
    tag = "artifacts",
    operation_id = "artifact_content",
    params(("id" = String, Path, description = "An artifact's id, or a prefix only it has."), ContentQuery),
    responses(
        (status = 200, description = "The file's bytes.", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, description = "No artifact has that id, or it has no file at `path`.", body = ErrorBody),
        (status = 409, description = "Several artifacts start with that prefix.", body = ErrorBody),
        (status = 422, description = "The query string does not parse.", body = ErrorBody),
        (status = 500, description = "The store or the artifact store failed, or the blob is not readable.", body = ErrorBody),
    ),
)]
pub(super) async fn content(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<ContentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    let catalog = catalog(&state);
    let id = catalog.resolve(&id)?;
    let blob = catalog
        .contents(&id)
        .await?
        .files
        .into_iter()
        .find(|f| f.path == query.path)
        .map(|f| f.id)
        .ok_or_else(|| {
            ApiError::not_found(format!("artifact {id} has no file `{}`", query.path))
        })?;
    let path = state
        .daemon
        .engine()
        .artifacts
        .blob_path(&blob)
        .await
        .map_err(|err| ApiError::from(CatalogError::from(err)))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// What `POST /api/v1/gc` takes. An unknown field is refused rather than ignored: a misspelt
/// `dry_run` must not collect for real.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GcRequest {
    /// `30d`, `12h`: finished runs older than this go (30 days when absent); at most a year.
    /// The pattern admits one number and unit, with as many digits as stay under 100 days in
    /// that unit (`sluice gc` sends seconds); combined forms such as `1h30m` are read too.
    #[schema(
        pattern = "^([0-9]{1,10}ms|[0-9]{1,7}s|[0-9]{1,5}m|[0-9]{1,3}h|[0-9]{1,2}d)$",
        example = "30d"
    )]
    older_than: Option<String>,
    /// The newest this many runs of each pipeline stay (1 when absent).
    #[serde(default, deserialize_with = "super::whole_number_or_none")]
    keep_last: Option<u64>,
    /// Say what would go, remove nothing.
    #[serde(default)]
    dry_run: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/gc",
    tag = "artifacts",
    operation_id = "collect_garbage",
    request_body(content = GcRequest, description = "What to keep; `{}` keeps the defaults."),
    responses(
        (status = 200, description = "What was removed (or, in a dry run, would be).", body = GcReport),
        (status = 422, description = "The body is not JSON of this shape (`Content-Type: application/json` is needed), or `older_than` is not a duration.", body = ErrorBody),
        (status = 500, description = "The store or the artifact store failed.", body = ErrorBody),
    ),
)]
pub(super) async fn collect(
    State(state): State<ApiState>,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<Json<GcReport>, ApiError> {
    // Read as an object first: serde would fill the struct from an array too.
    let Json(object) =
        body.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()))?;
    let request: GcRequest = serde_json::from_value(object.into())
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let older_than = crate::spec::values::duration(request.older_than.as_deref().unwrap_or("30d"))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("older_than: {e}")))?;
    let policy = GcPolicy {
        older_than,
        keep_last: usize::try_from(request.keep_last.unwrap_or(1)).unwrap_or(usize::MAX),
        dry_run: request.dry_run,
    };
    let engine = state.daemon.engine();
    let report = gc::collect(&engine.store, &engine.artifacts, &engine.data_dir, &policy).await?;
    Ok(Json(report))
}
