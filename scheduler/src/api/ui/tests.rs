//! The web UI through the router in this process: sign-in and sessions, forms that need the
//! session's CSRF token and the right role, escaping, and a wide fan-out drawn as one box.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use tower::ServiceExt;

use crate::api::tests::{Api, ADMIN};

/// What a page answered: status, `Location`, `Set-Cookie`, body.
struct Answer {
    status: StatusCode,
    csp: Option<String>,
    location: Option<String>,
    cookie: Option<String>,
    body: String,
}

async fn send(
    api: &Api,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if form.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let request = request
        .body(Body::from(form.unwrap_or_default().to_string()))
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    let text = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (location, cookie) = (text(header::LOCATION), text(header::SET_COOKIE));
    let csp = text(header::CONTENT_SECURITY_POLICY);
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 8 << 20)
        .await
        .unwrap();
    Answer {
        status,
        csp,
        location,
        cookie,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Signs in with `token`; the `name=value` of the session cookie.
async fn sign_in(api: &Api, token: &str) -> String {
    let answer = send(
        api,
        "POST",
        "/ui/login",
        None,
        Some(&format!("token={token}&next=%2Fui%2Fruns")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let cookie = answer.cookie.expect("a session cookie");
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tokens_the_ui_asks_for_one_once_and_keeps_a_session() {
    let api = Api::start().await;
    let answer = send(&api, "GET", "/ui/runs", None, None).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(
        answer.location.as_deref(),
        Some("/ui/login?next=%2Fui%2Fruns")
    );
    let page = send(&api, "GET", "/ui/login", None, None).await;
    assert!(page.body.contains("type=\"password\""), "{}", page.body);

    let wrong = send(&api, "POST", "/ui/login", None, Some("token=nope")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("not one of this scheduler"));
    assert!(wrong.cookie.is_none());

    let answer = send(
        &api,
        "POST",
        "/ui/login",
        None,
        Some(&format!("token={}&next=%2Fui%2Fworkers", api.viewer)),
    )
    .await;
    assert_eq!(answer.location.as_deref(), Some("/ui/workers"));
    let cookie = answer.cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let page = send(&api, "GET", "/ui/runs", Some(&session), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page
        .csp
        .as_deref()
        .is_some_and(|csp| csp.contains("frame-ancestors 'none'")));
    assert!(page.body.contains("viewer (read)"), "{}", page.body);

    // Sign-in never sends the browser off the site.
    let answer = send(
        &api,
        "POST",
        "/ui/login",
        None,
        Some(&format!("token={ADMIN}&next=https%3A%2F%2Fevil.example%2F")),
    )
    .await;
    assert_eq!(answer.location.as_deref(), Some("/ui/runs"));

    // Signing out ends the session.
    let csrf = csrf_of(&page.body);
    let out = send(
        &api,
        "POST",
        "/ui/logout",
        Some(&session),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let again = send(&api, "GET", "/ui/runs", Some(&session), None).await;
    assert_eq!(
        again.status,
        StatusCode::SEE_OTHER,
        "the old cookie no longer works"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_need_the_sessions_csrf_token_and_the_trigger_role() {
    let api = Api::start().await;
    let admin = sign_in(&api, ADMIN).await;
    let page = send(&api, "GET", "/ui/pipelines/good", Some(&admin), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("name=\"p.epochs\" type=\"number\""),
        "a form typed from the params: {}",
        page.body
    );
    let csrf = csrf_of(&page.body);

    let forged = send(
        &api,
        "POST",
        "/ui/pipelines/good/trigger",
        Some(&admin),
        Some("csrf=0000&p.epochs=2"),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let started = send(
        &api,
        "POST",
        "/ui/pipelines/good/trigger",
        Some(&admin),
        Some(&format!("csrf={csrf}&p.epochs=2")),
    )
    .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    let run_page = started.location.unwrap();
    assert!(run_page.starts_with("/ui/runs/"), "{run_page}");
    let run = send(&api, "GET", &run_page, Some(&admin), None).await;
    assert!(
        run.body.contains("api by api-token (web UI)"),
        "{}",
        run.body
    );
    assert!(run.body.contains(">2<"), "the param as given");
    let bad = send(
        &api,
        "POST",
        "/ui/pipelines/good/trigger",
        Some(&admin),
        Some(&format!("csrf={csrf}&p.epochs=two")),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body.contains("epochs"), "{}", bad.body);

    // A read token sees the pages but cannot start anything.
    let viewer = sign_in(&api, &api.viewer).await;
    let page = send(&api, "GET", "/ui/pipelines/good", Some(&viewer), None).await;
    assert!(!page.body.contains("Start run"), "no form for a read token");
    let csrf = csrf_of(&page.body);
    let refused = send(
        &api,
        "POST",
        "/ui/pipelines/good/trigger",
        Some(&viewer),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn values_from_outside_are_escaped_on_every_page() {
    let api = Api::start().await;
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/pipelines/good/runs",
            Some(ADMIN),
            r#"{"params": {"epochs": 1, "note": "<script>alert(1)</script>"}}"#,
        )
        .await;
    // An undeclared param is refused by the API; the value reaches a page through a declared one.
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let session = sign_in(&api, ADMIN).await;
    let hostile = "p.epochs=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let page = send(
        &api,
        "GET",
        &format!("/ui/pipelines/good?{hostile}"),
        Some(&session),
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>alert(1)"));
}
