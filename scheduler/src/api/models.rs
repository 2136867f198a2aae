//! `/api/v1/models`: the model registry (see [`crate::models`]).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/v1/models` | [`ModelList`] |
//! | `GET /api/v1/models/{name}` | [`ModelDetail`]: summary, every version, every alias |
//! | `GET /api/v1/models/{name}/versions/{version}` | [`VersionDetail`]; `version` is a number or `latest` |
//! | `GET /api/v1/models/{name}/aliases/{alias}` | [`VersionDetail`] of the version the alias points at |
//! | `GET /api/v1/models/{name}/history` | [`ModelHistory`] |
//! | `POST /api/v1/models/{name}/aliases/{alias}` `{"version": 3, "reason": "..."}` | [`AliasMoved`] (promote) |
//! | `POST /api/v1/models/{name}/aliases/{alias}/rollback` `{"reason": "..."}` | [`AliasMoved`] |
//!
//! A version is named by its own path segments rather than one `name@alias` segment, so every
//! part is a plain path segment and the alias routes read and write the same resource.
//! Names that are not model names are a 400, what does not exist a 404 whose message lists what
//! does, a rollback with nothing to go back to a 409. The writes need role `trigger` and record
//! the token's name as who moved the alias (`api` on an API without tokens).
//!
//! The answers are built by the functions here from a [`Store`], which `sluice models` also calls
//! on a data dir: the CLI prints the same JSON locally and with `--server`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::{ApiError, ApiState, ErrorBody};
use crate::models::{
    check_name, AliasAction, AliasRecord, HistoryEntry, ModelRef, ModelSummary, ModelVersion,
    RegistryError, Selector,
};
use crate::store::models::{AliasMove, MoveRequest};
use crate::store::Store;

/// Longest `reason` kept with an alias move: a sentence or a ticket link, not a document.
pub const MAX_REASON_BYTES: usize = 1024;

/// Every model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    /// In name order.
    pub models: Vec<ModelSummary>,
}

/// One model in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelDetail {
    /// Its name, versions' count, newest version and aliases.
    pub model: ModelSummary,
    /// Every version, oldest first.
    pub versions: Vec<ModelVersion>,
    /// Every alias with the versions it held before (what `rollback` goes back through).
    pub aliases: BTreeMap<String, AliasRecord>,
}

/// One version, with the aliases that point at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionDetail {
    /// The version's record (its fields, at the top level of the JSON).
    #[serde(flatten)]
    pub version: ModelVersion,
    /// The aliases pointing at it, in name order.
    pub aliases: Vec<String>,
}

/// A model's alias moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelHistory {
    /// The model.
    pub model: String,
    /// Oldest first.
    pub history: Vec<HistoryEntry>,
}

/// What a promotion or rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasMoved {
    /// The model.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// The version it held before, if any.
    pub from: Option<u64>,
    /// The version it holds now.
    pub to: u64,
    /// `false` when it already held `to`: nothing was written.
    pub moved: bool,
}

impl From<AliasMove> for AliasMoved {
    fn from(moved: AliasMove) -> AliasMoved {
        AliasMoved {
            model: moved.model,
            alias: moved.alias,
            from: moved.from,
            to: moved.to,
            moved: moved.moved,
        }
    }
}

/// An alias move asked for, by a person (`who`) rather than a step.
#[derive(Debug, Clone, Copy)]
pub struct AliasChange<'a> {
    /// The model.
    pub model: &'a str,
    /// The alias.
    pub alias: &'a str,
    /// `cli`, or the API token's name.
    pub who: &'a str,
    /// Why, if they said.
    pub reason: Option<&'a str>,
}

impl AliasChange<'_> {
    fn checked(&self) -> Result<Option<&str>, RegistryError> {
        valid("model name", self.model)?;
        valid("alias", self.alias)?;
        let reason = self.reason.map(str::trim).filter(|r| !r.is_empty());
        if reason.is_some_and(|r| r.len() > MAX_REASON_BYTES) {
            return Err(RegistryError::Invalid(format!(
                "a reason is at most {MAX_REASON_BYTES} bytes"
            )));
        }
        Ok(reason)
    }
}

fn valid(what: &str, name: &str) -> Result<(), RegistryError> {
    check_name(what, name).map_err(RegistryError::Invalid)
}

/// Every model, in name order.
pub fn list(store: &Store) -> Result<ModelList, RegistryError> {
    let mut models = store.models()?;
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ModelList { models })
}

/// A model's summary, versions and aliases.
pub fn detail(store: &Store, name: &str) -> Result<ModelDetail, RegistryError> {
    valid("model name", name)?;
    let versions = store.model_versions(name)?;
    let aliases = store.aliases(name)?;
    let newest = versions.last();
    let model = ModelSummary {
        name: name.to_string(),
        versions: newest.map_or(0, |v| v.version),
        latest: newest.map(|v| v.version),
        aliases: aliases
            .iter()
            .map(|(a, r)| (a.clone(), r.version))
            .collect(),
        updated_ms: newest.map_or(0, |v| v.created_ms),
    };
    Ok(ModelDetail {
        model,
        versions,
        aliases,
    })
}

/// The version a reference names, with the aliases pointing at it.
pub fn version(store: &Store, reference: &ModelRef) -> Result<VersionDetail, RegistryError> {
    valid("model name", &reference.model)?;
    if let Selector::Alias(alias) = &reference.selector {
        valid("alias", alias)?;
    }
    let version = store.resolve_model(reference)?;
    let aliases = store
        .aliases(&reference.model)?
        .into_iter()
        .filter(|(_, record)| record.version == version.version)
        .map(|(alias, _)| alias)
        .collect();
    Ok(VersionDetail { version, aliases })
}

/// A model's alias history, oldest first.
pub fn history(store: &Store, name: &str) -> Result<ModelHistory, RegistryError> {
    valid("model name", name)?;
    Ok(ModelHistory {
        model: name.to_string(),
        history: store.model_history(name)?,
    })
}

/// Points an alias at `version`; one already there is left alone (`moved: false`).
pub fn promote(
    store: &Store,
    change: &AliasChange<'_>,
    version: u64,
) -> Result<AliasMoved, RegistryError> {
    let reason = change.checked()?;
    let request = MoveRequest {
        model: change.model,
        alias: change.alias,
        action: AliasAction::Promote,
        who: change.who,
        reason,
    };
    Ok(store.move_alias(&request, version, None)?.into())
}

/// Points an alias back at the version it held before its last move.
pub fn rollback(store: &Store, change: &AliasChange<'_>) -> Result<AliasMoved, RegistryError> {
    let reason = change.checked()?;
    Ok(store
        .rollback_alias(change.model, change.alias, change.who, reason)?
        .into())
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> ApiError {
        match err {
            err if err.is_not_found() => ApiError::not_found(err.to_string()),
            err @ RegistryError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, err.to_string())
            }
            err @ RegistryError::NothingToRollBack { .. } => {
                ApiError::new(StatusCode::CONFLICT, err.to_string())
            }
            RegistryError::Store(store) if store.may_pass() => {
                tracing::error!(error = %store, "The model registry cannot write now.");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("nothing was changed: the store cannot write now ({store}); try again"),
                )
            }
            other => ApiError::internal(other),
        }
    }
}

/// Who a request acts as: its token's name, or `api` on an API without tokens.
fn who(caller: &Caller) -> String {
    caller.0.clone().unwrap_or_else(|| "api".into())
}

#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "models",
    operation_id = "list_models",
    responses(
        (status = 200, description = "Every model with its versions' count, newest version, aliases and last update.", body = ModelList),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The store cannot be used now (a full disk, a reopening): try again.", body = ErrorBody),
    ),
)]
pub(super) async fn list_models(
    State(state): State<ApiState>,
) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(list(&state.daemon.engine().store)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{name}",
    tag = "models",
    operation_id = "show_model",
    params(("name" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The model's name.")),
    responses(
        (status = 200, description = "The model: summary, every version, every alias.", body = ModelDetail),
        (status = 400, description = "Not a model name.", body = ErrorBody),
        (status = 404, description = "No such model (the message lists those that exist).", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The store cannot be used now (a full disk, a reopening): try again.", body = ErrorBody),
    ),
)]
pub(super) async fn show_model(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    Ok(Json(detail(&state.daemon.engine().store, &name)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{name}/versions/{version}",
    tag = "models",
    operation_id = "show_model_version",
    params(
        ("name" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The model's name."),
        ("version" = String, Path, pattern = "^(latest|[1-9][0-9]{0,18})$", description = "A version number (1, 2, ...) or `latest`.", example = "latest"),
    ),
    responses(
        (status = 200, description = "The version, with the aliases pointing at it.", body = VersionDetail),
        (status = 400, description = "Not a model name, or `version` is neither a number from 1 nor `latest`.", body = ErrorBody),
        (status = 404, description = "No such model or version (the message lists what exists).", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The store cannot be used now (a full disk, a reopening): try again.", body = ErrorBody),
    ),
)]
pub(super) async fn show_version(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionDetail>, ApiError> {
    let selector = match version.as_str() {
        "latest" => Selector::Latest,
        number => Selector::Version(number.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`{number}` is not a version number (1, 2, ...) or `latest`"),
            )
        })?),
    };
    let reference = ModelRef {
        model: name,
        selector,
    };
    Ok(Json(self::version(
        &state.daemon.engine().store,
        &reference,
    )?))
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{name}/aliases/{alias}",
    tag = "models",
    operation_id = "show_model_alias",
    params(
        ("name" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The model's name."),
        ("alias" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The alias (`production`, `staging`, ...)."),
    ),
    responses(
        (status = 200, description = "The version the alias points at, with every alias pointing at it.", body = VersionDetail),
        (status = 400, description = "Not a model or alias name.", body = ErrorBody),
        (status = 404, description = "No such model or alias (the message lists what exists).", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The store cannot be used now (a full disk, a reopening): try again.", body = ErrorBody),
    ),
)]
pub(super) async fn show_alias(
    State(state): State<ApiState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<VersionDetail>, ApiError> {
    let reference = ModelRef {
        model: name,
        selector: Selector::Alias(alias),
    };
    Ok(Json(version(&state.daemon.engine().store, &reference)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{name}/history",
    tag = "models",
    operation_id = "model_history",
    params(("name" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The model's name.")),
    responses(
        (status = 200, description = "Every alias move, oldest first.", body = ModelHistory),
        (status = 400, description = "Not a model name.", body = ErrorBody),
        (status = 404, description = "No such model.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The store cannot be used now (a full disk, a reopening): try again.", body = ErrorBody),
    ),
)]
pub(super) async fn show_history(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModelHistory>, ApiError> {
    Ok(Json(history(&state.daemon.engine().store, &name)?))
}

/// Body of a promotion.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PromoteBody {
    /// The version the alias is to point at.
    #[serde(deserialize_with = "super::whole_number")]
    #[schema(minimum = 1)]
    version: u64,
    /// Why, for the history.
    #[serde(default)]
    reason: Option<String>,
}

/// Body of a rollback (optional).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    /// Why, for the history.
    #[serde(default)]
    reason: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/models/{name}/aliases/{alias}",
    tag = "models",
    operation_id = "promote_model_alias",
    params(
        ("name" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The model's name."),
        ("alias" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The alias to point at `version`."),
    ),
    request_body(content = PromoteBody, description = "The version, and why (kept in the history)."),
    responses(
        (status = 200, description = "The alias points at `version` (`moved: false` when it already did).", body = AliasMoved),
        (status = 400, description = "Not a model or alias name, or a `reason` over 1 KiB.", body = ErrorBody),
        (status = 404, description = "No such model, version or alias (the message lists what exists).", body = ErrorBody),
        (status = 422, description = "The body is not JSON of this shape.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The store cannot write now: nothing was changed.", body = ErrorBody),
    ),
)]
pub(super) async fn promote_alias(
    State(state): State<ApiState>,
    Path((name, alias)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Result<Json<AliasMoved>, ApiError> {
    let expected = r#"{"version": 3, "reason": "why"}"#;
    let request: PromoteBody = super::json_body(&bytes, expected)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("bad request body: the version is missing (expected {expected})"),
        )
    })?;
    let store = state.daemon.engine().store.clone();
    let who = who(&caller);
    // A move commits and flushes the store: off the async threads.
    let moved = tokio::task::spawn_blocking(move || {
        let change = AliasChange {
            model: &name,
            alias: &alias,
            who: &who,
            reason: request.reason.as_deref(),
        };
        promote(&store, &change, request.version)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(moved))
}

#[utoipa::path(
    post,
    path = "/api/v1/models/{name}/aliases/{alias}/rollback",
    tag = "models",
    operation_id = "rollback_model_alias",
    params(
        ("name" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The model's name."),
        ("alias" = String, Path, pattern = "^[a-z0-9_-][a-z0-9_.-]{0,63}$", description = "The alias to move back."),
    ),
    request_body(content = Option<RollbackBody>, description = "Why (kept in the history); may be empty."),
    responses(
        (status = 200, description = "The alias points at the version it held before its last move.", body = AliasMoved),
        (status = 409, description = "The alias never pointed at another version: nothing to roll back to.", body = ErrorBody),
        (status = 400, description = "Not a model or alias name, or a `reason` over 1 KiB.", body = ErrorBody),
        (status = 404, description = "No such model, version or alias (the message lists what exists).", body = ErrorBody),
        (status = 422, description = "The body is not JSON of this shape.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The store cannot write now: nothing was changed.", body = ErrorBody),
    ),
)]
pub(super) async fn rollback_alias(
    State(state): State<ApiState>,
    Path((name, alias)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Result<Json<AliasMoved>, ApiError> {
    let request =
        super::json_body(&bytes, r#"{"reason": "why"}"#)?.unwrap_or(RollbackBody { reason: None });
    let store = state.daemon.engine().store.clone();
    let who = who(&caller);
    let moved = tokio::task::spawn_blocking(move || {
        let change = AliasChange {
            model: &name,
            alias: &alias,
            who: &who,
            reason: request.reason.as_deref(),
        };
        rollback(&store, &change)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(moved))
}
