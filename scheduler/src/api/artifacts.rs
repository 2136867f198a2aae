//! `/api/v1/artifacts`: listings, details, lineage, diffs and contents of artifacts, and
//! `POST /api/v1/gc`.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiState};
use crate::artifacts::gc::{self, GcPolicy};
use crate::artifacts::{Catalog, CatalogError};

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> ApiError {
        match err {
            CatalogError::NotFound(_) => ApiError::not_found(err.to_string()),
            CatalogError::Ambiguous(_) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
            other => ApiError::internal(other),
        }
    }
}

fn catalog(state: &ApiState) -> Catalog<'_> {
    let engine = state.daemon.engine();
    Catalog {
        store: &engine.store,
        artifacts: &engine.artifacts,
    }
}

/// Filters of the listing.
#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    pipeline: Option<String>,
    step: Option<String>,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    let rows = catalog(&state).list(query.pipeline.as_deref(), query.step.as_deref())?;
    Ok(Json(json!({ "artifacts": rows })))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let detail = catalog(&state).show(&id).await?;
    Ok(Json(
        serde_json::to_value(detail).map_err(ApiError::internal)?,
    ))
}

pub(super) async fn lineage(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let nodes = catalog(&state).lineage(&id)?;
    Ok(Json(json!({ "lineage": nodes })))
}

pub(super) async fn diff(
    State(state): State<ApiState>,
    Path((old, new)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let changes = catalog(&state).diff(&old, &new).await?;
    Ok(Json(json!({ "changes": changes })))
}

/// Which file of a folder artifact.
#[derive(Debug, Deserialize)]
pub(super) struct ContentQuery {
    #[serde(default)]
    path: String,
}

/// The bytes of a file artifact, or of one file (`?path=`) of a folder artifact, verified.
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

/// What `POST /api/v1/gc` takes.
#[derive(Debug, Deserialize)]
pub(super) struct GcRequest {
    /// `30d`, `12h`: finished runs older than this go (30 days when absent).
    older_than: Option<String>,
    /// The newest this many runs of each pipeline stay (1 when absent).
    keep_last: Option<usize>,
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn collect(
    State(state): State<ApiState>,
    body: Result<Json<GcRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) =
        body.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()))?;
    let older_than = crate::spec::values::duration(request.older_than.as_deref().unwrap_or("30d"))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("older_than: {e}")))?;
    let policy = GcPolicy {
        older_than,
        keep_last: request.keep_last.unwrap_or(1),
        dry_run: request.dry_run,
    };
    let engine = state.daemon.engine();
    let report = gc::collect(&engine.store, &engine.artifacts, &engine.data_dir, &policy).await?;
    Ok(Json(
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}
