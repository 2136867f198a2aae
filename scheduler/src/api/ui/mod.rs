//! The web UI: pages rendered here from the store and the daemon (no separate process, no
//! npm, no CDN), with one stylesheet and one small script for live updates and sorting. Every
//! page reads fine without the script.
//!
//! Pages live under `/ui` (`/` leads there); they use the same records as the API and share
//! its handlers' code where they serve the same thing (logs, artifact downloads). Sign-in and
//! forms: see [`session`].

mod dag;
mod models;
mod pages;
mod pipelines;
mod run;
mod runs;
pub mod session;
#[cfg(test)]
mod tests;
mod workers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use serde::Deserialize;

use super::ApiState;
use crate::spec::Pipeline;
use session::Sessions;

/// What the UI's handlers see.
#[derive(Clone)]
pub struct UiState {
    /// The API's state: the daemon and its tokens.
    pub api: ApiState,
    /// Signed-in browsers.
    pub sessions: Arc<Sessions>,
    /// Pipelines as stored with runs, by definition hash: a 10,000-step definition takes a
    /// tenth of a second to read, and a run's page and live updates need it again and again.
    definitions: Arc<Mutex<HashMap<String, Arc<Pipeline>>>>,
}

/// Most stored definitions kept read.
const DEFINITIONS_KEPT: usize = 32;

impl UiState {
    /// The UI's state over the API's.
    pub fn new(api: ApiState) -> UiState {
        UiState {
            api,
            sessions: Arc::new(Sessions::default()),
            definitions: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The pipeline a run ran, as stored with it; `None` when it cannot be read.
    fn definition(&self, run: &crate::store::RunRecord) -> Option<Arc<Pipeline>> {
        if let Some(found) = self
            .definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run.definition_hash)
        {
            return Some(found.clone());
        }
        let store = &self.api.daemon.engine().store;
        let (_, pipeline) = crate::engine::stored_definition(store, run).ok()?;
        let pipeline = Arc::new(pipeline);
        let mut kept = self.definitions.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= DEFINITIONS_KEPT {
            kept.clear();
        }
        kept.insert(run.definition_hash.clone(), pipeline.clone());
        Some(pipeline)
    }
}

/// The UI's routes; `/ui/login` and the static files need no session, the rest do.
pub fn router(state: ApiState) -> Router {
    let ui = UiState::new(state);
    let pages = Router::new()
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{run}", get(run::page))
        .route("/ui/runs/{run}/live", get(run::live))
        .route("/ui/runs/{run}/steps/{step}/log", get(runs::log))
        .route("/ui/runs/{run}/cancel", post(runs::cancel))
        .route("/ui/runs/{run}/retry", post(runs::retry))
        .route("/ui/artifacts/{id}", get(runs::artifact))
        .route("/ui/artifacts/{id}/files", get(runs::artifact_files))
        .route("/ui/pipelines", get(pipelines::list))
        .route("/ui/pipelines/{pipeline}", get(pipelines::page))
        .route("/ui/pipelines/{pipeline}/trigger", post(pipelines::trigger))
        .route("/ui/workers", get(workers::page))
        .route("/ui/models", get(models::page))
        .route("/ui/models/{model}/promote", post(models::promote))
        .route("/ui/models/{model}/rollback", post(models::rollback))
        .route("/ui/logout", post(logout))
        .route_layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            session::require_viewer,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/static/app.css", get(stylesheet))
        .route("/ui/static/app.js", get(script))
        .merge(pages)
        .layer(axum::middleware::map_response(protect))
        .with_state(ui)
}

/// Headers on every page: its own files only (no inline script, nothing from elsewhere), never
/// inside another site's frame (clickjacking of the cancel and promote buttons), forms posted
/// to this site only, no guessing of content types.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/app.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/app.js"),
    )
        .into_response()
}

/// Where sign-in leads afterwards.
#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(Query(query): Query<LoginQuery>) -> Html<String> {
    Html(login_form(query.next.as_deref(), None).into_string())
}

fn login_form(next: Option<&str>, problem: Option<&str>) -> maud::Markup {
    html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Sluice" }
                link rel="stylesheet" href="/ui/static/app.css";
            }
            body {
                div.login.panel {
                    h1 { "Sluice" }
                    p.sub { "This scheduler asks for an API token (" code { "sluice token new NAME" } ")." }
                    @if let Some(problem) = problem { p.error { (problem) } }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next.unwrap_or("/ui/runs"));
                        label for="token" { "API token" }
                        input #token type="password" name="token" autocomplete="current-password" autofocus;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(ui): State<UiState>, Form(form): Form<LoginForm>) -> Response {
    let (name, role) = match ui.api.tokens.identify(&form.token) {
        Some(found) => (Some(found.0), found.1),
        None if !ui.api.tokens.required() => (None, super::auth::Role::Admin),
        None => {
            let page = login_form(
                form.next.as_deref(),
                Some("That token is not one of this scheduler's."),
            );
            return (StatusCode::UNAUTHORIZED, Html(page.into_string())).into_response();
        }
    };
    let Some((id, _)) = ui.sessions.create(name, role) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot make a session").into_response();
    };
    // Only a path of this site: `next` must not send the browser elsewhere.
    let next = form
        .next
        .filter(|n| n.starts_with("/ui") && !n.starts_with("//"))
        .unwrap_or_else(|| "/ui/runs".into());
    let mut response = Redirect::to(&next).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::cookie(Some(&id)));
    response
}

/// A form that only proves it came from a page of this session.
#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(ui): State<UiState>,
    axum::Extension(viewer): axum::Extension<session::Viewer>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !session::csrf_ok(&viewer, &form.csrf) {
        return forbidden();
    }
    if let Some(id) = session::session_id(&headers) {
        ui.sessions.remove(&id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::cookie(None));
    response
}

/// Why a form may not act, as the answer to send: a CSRF token that is not the session's, or
/// a viewer without the `trigger` role (`what` says what was asked, for the message).
fn refuse_action(viewer: &session::Viewer, csrf: &str, what: &str) -> Option<Response> {
    if !session::csrf_ok(viewer, csrf) {
        return Some(forbidden());
    }
    if !viewer.can_trigger() {
        let message = format!("{what} needs a token with the `trigger` role");
        return Some(problem(StatusCode::FORBIDDEN, viewer, &message));
    }
    None
}

/// Who acted, as a run's trigger or the registry's history records it.
fn acted_by(viewer: &session::Viewer) -> String {
    format!("{} (web UI)", viewer.name.as_deref().unwrap_or("someone"))
}

/// The answer to a form whose CSRF token is not the session's.
fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "this form is out of date or not from this site; reload the page and try again",
    )
        .into_response()
}

/// A page saying what went wrong, with the status that fits.
fn problem(status: StatusCode, viewer: &session::Viewer, message: &str) -> Response {
    let body = html! {
        h1 { "Something is not right" }
        p.error { (message) }
        p { a href="/ui/runs" { "Back to the runs" } }
    };
    let page = pages::frame("Problem", pages::Section::Runs, viewer, body);
    (status, Html(page.into_string())).into_response()
}
