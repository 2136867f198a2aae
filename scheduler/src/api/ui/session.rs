//! Who is looking at the web UI, and the checks every page and form goes through.
//!
//! With API tokens configured, the UI asks for one once (`/ui/login`) and keeps a session: a
//! random id in a cookie (`HttpOnly`, `SameSite=Strict`), the token's name and role in this
//! process's memory (a restart signs everyone out; no token is ever stored in the browser).
//! Without tokens the API is open, and so is the UI: a visitor gets an anonymous session with
//! every role. Either way each session has its own CSRF token, which every form carries and
//! every POST must return.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::UiState;
use crate::api::auth::Role;

/// The session cookie's name.
pub const COOKIE: &str = "sluice_session";
/// How long a session lasts without being used.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; the oldest go first (a client making sessions in a loop cannot grow
/// the map without bound).
const MAX_SESSIONS: usize = 10_000;

/// The person behind a request, as the session says.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token's name; `None` when the API is open.
    pub name: Option<String>,
    /// What they may do.
    pub role: Role,
    /// The token every form of theirs carries.
    pub csrf: String,
}

impl Viewer {
    /// Whether they may start and cancel runs.
    pub fn can_trigger(&self) -> bool {
        self.role >= Role::Trigger
    }
}

struct Session {
    viewer: Viewer,
    seen: Instant,
}

/// The sessions of this process.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `name` with `role`; its id for the cookie.
    pub fn create(&self, name: Option<String>, role: Role) -> Option<(String, Viewer)> {
        let id = random_hex()?;
        let viewer = Viewer {
            name,
            role,
            csrf: random_hex()?,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.seen.elapsed() < IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                viewer: viewer.clone(),
                seen: Instant::now(),
            },
        );
        Some((id, viewer))
    }

    /// The viewer of a live session, which is kept alive by the use.
    fn get(&self, id: &str) -> Option<Viewer> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let session = map.get_mut(id)?;
        if session.seen.elapsed() >= IDLE {
            map.remove(id);
            return None;
        }
        session.seen = Instant::now();
        Some(session.viewer.clone())
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// 32 random bytes as hex, from the kernel.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .ok()?;
    Some(hex::encode(bytes))
}

/// The session id a request's cookie holds.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` value of a session (`None` id: one that clears it).
pub fn cookie(id: Option<&str>) -> HeaderValue {
    let text = match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Middleware of every page but sign-in: the request's [`Viewer`] goes into its extensions;
/// without a session, an open API gets an anonymous one and a guarded one sends the browser
/// to sign in (a POST gets 401: a form needs a session it was rendered for).
pub async fn require_viewer(
    State(ui): State<UiState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(viewer) = session_id(request.headers()).and_then(|id| ui.sessions.get(&id)) {
        request.extensions_mut().insert(viewer);
        return next.run(request).await;
    }
    if !ui.api.tokens.required() {
        let Some((id, viewer)) = ui.sessions.create(None, Role::Admin) else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot make a session").into_response();
        };
        request.extensions_mut().insert(viewer);
        let mut response = next.run(request).await;
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie(Some(&id)));
        return response;
    }
    if request.method() != axum::http::Method::GET {
        return (StatusCode::UNAUTHORIZED, "sign in first: /ui/login").into_response();
    }
    let next_page = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/ui".into());
    let to = format!("/ui/login?next={}", super::pages::encode(&next_page));
    Redirect::to(&to).into_response()
}

/// Whether a form's CSRF token is the viewer's (compared in constant time).
pub fn csrf_ok(viewer: &Viewer, given: &str) -> bool {
    viewer.csrf.as_bytes().ct_eq(given.as_bytes()).into()
}
