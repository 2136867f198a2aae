//! The model registry's page: each model's aliases, versions (with the run that made each and
//! its metrics) and alias history, with the forms that promote and roll back aliases.

use axum::extract::{Extension, Form, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::pages::{csrf, encode, frame, when, Section};
use super::session::Viewer;
use super::{acted_by, problem, refuse_action, UiState};
use crate::api::models::{self, AliasChange, ModelDetail, ModelHistory};

/// History entries shown per model, newest first.
const HISTORY_SHOWN: usize = 12;

pub(super) async fn page(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let store = ui.api.daemon.engine().store.clone();
    let read = tokio::task::spawn_blocking(
        move || -> Result<Vec<(ModelDetail, ModelHistory)>, String> {
            let listed = models::list(&store).map_err(|e| e.to_string())?;
            listed
                .models
                .iter()
                .map(|m| {
                    let detail = models::detail(&store, &m.name).map_err(|e| e.to_string())?;
                    let history = models::history(&store, &m.name).map_err(|e| e.to_string())?;
                    Ok((detail, history))
                })
                .collect()
        },
    )
    .await;
    let registry = match read {
        Ok(Ok(registry)) => registry,
        Ok(Err(err)) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &viewer, &err),
        Err(err) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &viewer, &err.to_string()),
    };
    let body = html! {
        h1 { "Models" }
        @if registry.is_empty() { p.sub { "Nothing registered yet: a " code { "uses: register" } " step registers a model version." } }
        @for (detail, history) in &registry {
            @let name = &detail.model.name;
            h2 { (name) " · " (detail.versions.len()) " versions" }
            table {
                thead { tr { th { "Alias" } th.num { "Version" } th { "Before" } th { "Moved" } th {} } }
                tbody { @for (alias, record) in &detail.aliases { tr {
                    td { strong { (alias) } }
                    td.num { (record.version) }
                    td { (record.previous.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" → ")) }
                    td { (when(record.moved_ms)) }
                    td { @if viewer.can_trigger() && !record.previous.is_empty() {
                        form.inline method="post" action={ "/ui/models/" (encode(name)) "/rollback" } {
                            (csrf(&viewer))
                            input type="hidden" name="alias" value=(alias);
                            button.quiet type="submit" { "Roll back to " (record.previous.last().copied().unwrap_or_default()) }
                        }
                    } }
                } } }
            }
            @if viewer.can_trigger() {
                form.filters method="post" action={ "/ui/models/" (encode(name)) "/promote" } {
                    (csrf(&viewer))
                    "Point alias " input name="alias" placeholder="production" required size="12";
                    " at version " input name="version" type="number" min="1" required;
                    " " input name="reason" placeholder="why (optional)" size="24";
                    " " button type="submit" { "Promote" }
                }
            }
            table data-sortable {
                thead { tr { th.num { "Version" } th { "Registered" } th { "Run" } th { "Step" } th { "Metrics" } } }
                tbody { @for v in detail.versions.iter().rev() { tr {
                    td.num { (v.version) }
                    td { (when(v.created_ms)) }
                    td { a.mono href={ "/ui/runs/" (encode(&v.run_id)) } { (&v.run_id[v.run_id.len().saturating_sub(8)..]) } }
                    td { (v.step) }
                    td.mono { (v.metrics.iter().flat_map(|(step, m)| m.iter().map(move |(k, val)| format!("{step}.{k}={val}"))).collect::<Vec<_>>().join(" ")) }
                } } }
            }
            @if !history.history.is_empty() {
                table {
                    thead { tr { th { "When" } th { "Alias" } th { "Move" } th { "What" } th { "Who" } th { "Why" } } }
                    tbody { @for h in history.history.iter().rev().take(HISTORY_SHOWN) { tr {
                        td { (when(h.at_ms)) }
                        td { (h.alias) }
                        td.num { (h.from.map(|f| f.to_string()).unwrap_or_else(|| "-".into())) " → " (h.to) }
                        td { (format!("{:?}", h.action).to_lowercase()) }
                        td { (h.who) }
                        td { (h.reason.clone().unwrap_or_default()) }
                    } } }
                }
            }
        }
    };
    Html(frame("Models", Section::Models, &viewer, body).into_string()).into_response()
}

/// The fields of the promote and rollback forms.
#[derive(Debug, Deserialize)]
pub(super) struct AliasForm {
    csrf: String,
    alias: String,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

pub(super) async fn promote(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    Path(model): Path<String>,
    Form(form): Form<AliasForm>,
) -> Response {
    move_alias(ui, viewer, model, form, true).await
}

pub(super) async fn rollback(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
    Path(model): Path<String>,
    Form(form): Form<AliasForm>,
) -> Response {
    move_alias(ui, viewer, model, form, false).await
}

async fn move_alias(
    ui: UiState,
    viewer: Viewer,
    model: String,
    form: AliasForm,
    promote: bool,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf, "moving aliases") {
        return refused;
    }
    let store = ui.api.daemon.engine().store.clone();
    let who = acted_by(&viewer);
    let moved = tokio::task::spawn_blocking(move || {
        let change = AliasChange {
            model: &model,
            alias: form.alias.trim(),
            who: &who,
            reason: form.reason.as_deref(),
        };
        match (promote, form.version) {
            (true, Some(version)) => models::promote(&store, &change, version),
            (true, None) => Err(crate::models::RegistryError::Invalid(
                "a version is needed".into(),
            )),
            (false, _) => models::rollback(&store, &change),
        }
    })
    .await;
    match moved {
        Ok(Ok(_)) => Redirect::to("/ui/models").into_response(),
        Ok(Err(err)) => problem(StatusCode::UNPROCESSABLE_ENTITY, &viewer, &err.to_string()),
        Err(err) => problem(StatusCode::INTERNAL_SERVER_ERROR, &viewer, &err.to_string()),
    }
}
