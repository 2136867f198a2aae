//! The API's status codes, answered by the router in this process (no socket, no worker): what
//! each caller mistake gets, and which token may do what.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sluice_worker::queue::MemoryQueue;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::auth::{new_token, Tokens};
use super::{router, ApiState};
use crate::daemon::{Daemon, DaemonConfig, Workers};
use crate::engine::Engine;
use crate::store::Store;

/// A daemon over a scratch folder with pipelines `good` (an integer param) and `broken`, no
/// workers, the admin token `s3cret`, the read token `viewer` and the trigger token `operator`
/// returns.
pub(super) struct Api {
    pub(super) router: axum::Router,
    pub(super) viewer: String,
    pub(super) operator: String,
    /// The daemon's store, to seed the model registry.
    pub(super) store: Store,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

pub(super) const ADMIN: &str = "s3cret";

impl Api {
    pub(super) async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let pipelines = dir.path().join("pipelines");
        std::fs::create_dir(&pipelines).unwrap();
        std::fs::write(
            pipelines.join("good.yaml"),
            "name: good\nparams:\n  epochs: {type: integer, default: 1}\nsteps:\n  only: {run: 'true'}\n",
        )
        .unwrap();
        std::fs::write(
            pipelines.join("broken.yaml"),
            "name: broken\nsteps:\n  x:\n    rum: true\n",
        )
        .unwrap();
        let (viewer, line) = new_token("viewer", "read").unwrap();
        let (operator, operator_line) = new_token("operator", "trigger").unwrap();
        let tokens_file = dir.path().join("tokens");
        std::fs::write(&tokens_file, format!("{line}\n{operator_line}\n")).unwrap();
        let data_dir = dir.path().join("data");
        let store = sluice_worker::artifacts::ArtifactStore::open(
            &sluice_worker::artifacts::StoreUrl::Local(data_dir.join("artifacts")),
        )
        .unwrap();
        let artifacts =
            sluice_worker::artifacts::Artifacts::new(store, &data_dir.join("cache"), 1 << 30)
                .unwrap();
        let store = Store::open(&data_dir).unwrap();
        let engine = Engine {
            store: store.clone(),
            queue: Arc::new(MemoryQueue::default()),
            data_dir,
            artifacts: Arc::new(artifacts),
        };
        let config = DaemonConfig {
            pipelines_dir: pipelines,
            watch_allowed: Vec::new(),
            lease_holder: None,
            lease: Duration::from_secs(30),
            notify: Vec::new(),
        };
        let shutdown = CancellationToken::new();
        let daemon = Daemon::start(
            engine,
            config,
            Workers::InProcess(Vec::new()),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let state = ApiState {
            daemon,
            tokens: Arc::new(Tokens::new(Some(ADMIN), Some(&tokens_file)).unwrap()),
            require_webhook_timestamp: false,
        };
        Api {
            router: router(state),
            viewer,
            operator,
            store,
            shutdown,
            _dir: dir,
        }
    }

    /// The status and body of one request.
    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Body::from(body.to_string())).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_mistakes_get_the_status_that_names_them() {
    let api = Api::start().await;
    let admin = Some(ADMIN);
    let trigger = "/api/v1/pipelines/good/runs";
    // (method, path, token, body, status, a word the answer must contain)
    type Row<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);
    let table: &[Row] = &[
        ("GET", "/healthz", None, "", 200, "ok"),
        ("GET", "/api/v1/runs", None, "", 401, "token"),
        ("GET", "/api/v1/pipelines", None, "", 401, "token"),
        ("GET", "/api/v1/workers", Some("wrong"), "", 401, "token"),
        // `/metrics` is a read: a read token scrapes it, no token does not.
        ("GET", "/metrics", None, "", 401, "token"),
        (
            "GET",
            "/metrics",
            Some(&api.viewer),
            "",
            200,
            "sluice_runs_started_total{pipeline=\"good\"} 0",
        ),
        ("POST", trigger, None, "", 401, "token"),
        ("POST", trigger, Some("wrong"), "", 401, "token"),
        (
            "POST",
            trigger,
            Some(&api.viewer),
            "",
            403,
            "`viewer` has role `read`",
        ),
        (
            "POST",
            "/api/v1/reload",
            Some(&api.viewer),
            "",
            403,
            "admin",
        ),
        (
            "GET",
            "/api/v1/pipelines",
            Some(&api.viewer),
            "",
            200,
            "broken.yaml:4:5",
        ),
        (
            "POST",
            trigger,
            admin,
            r#"{"params": {"epochs": "many"}}"#,
            422,
            "epochs",
        ),
        (
            "POST",
            trigger,
            admin,
            r#"{"params": {"epoch": 3}}"#,
            422,
            "did you mean `epochs`",
        ),
        ("POST", trigger, admin, "{not json", 422, "error"),
        (
            "POST",
            trigger,
            admin,
            "{\"params\": {\"epochs\": \"a\\u0000b\"}}",
            422,
            "NUL",
        ),
        (
            "POST",
            "/api/v1/pipelines/nope/runs",
            admin,
            "",
            404,
            "nope",
        ),
        ("GET", "/api/v1/runs/nope", admin, "", 404, "nope"),
        // Artifacts: reads for `read`, collection for `admin` only.
        ("GET", "/api/v1/artifacts", None, "", 401, "token"),
        (
            "GET",
            "/api/v1/artifacts",
            Some(&api.viewer),
            "",
            200,
            "artifacts",
        ),
        (
            "GET",
            "/api/v1/artifacts/abc123",
            Some(&api.viewer),
            "",
            404,
            "no artifact `abc123`",
        ),
        (
            "GET",
            "/api/v1/artifacts/..%2F..%2Fetc",
            Some(&api.viewer),
            "",
            404,
            "no artifact",
        ),
        (
            "GET",
            "/api/v1/artifacts/abc/content",
            Some(&api.viewer),
            "",
            404,
            "no artifact",
        ),
        ("POST", "/api/v1/gc", Some(&api.viewer), "{}", 403, "admin"),
        (
            "POST",
            "/api/v1/gc",
            admin,
            r#"{"older_than": "soon"}"#,
            422,
            "older_than",
        ),
        (
            "POST",
            "/api/v1/gc",
            admin,
            r#"{"dry_run": true}"#,
            200,
            "\"dry_run\":true",
        ),
        ("GET", "/api/v1/runs?limit=many", admin, "", 422, "query"),
        (
            "GET",
            "/api/v1/runs?status=done",
            admin,
            "",
            422,
            "not `done`",
        ),
        ("GET", "/api/v1/nothing", admin, "", 404, "\"error\""),
        ("POST", "/api/v1/runs/nope/cancel", admin, "", 404, "nope"),
    ];
    for (method, path, token, body, status, says) in table {
        let (got, answer) = api.call(method, path, *token, body).await;
        assert_eq!(got.as_u16(), *status, "{method} {path} {body}: {answer}");
        assert!(answer.contains(says), "{method} {path} {body}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_is_created_by_its_caller_and_a_finished_one_cannot_be_cancelled() {
    let api = Api::start().await;
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/pipelines/good/runs",
            Some(ADMIN),
            r#"{"params": {"epochs": 7}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["run"]["params"]["epochs"], "7");
    assert_eq!(created["run"]["trigger"], "api by api-token");
    let run = created["run"]["id"].as_str().unwrap().to_string();
    // No worker here: the run waits until it is cancelled, then a second cancel is too late.
    let cancel = format!("/api/v1/runs/{run}/cancel");
    let (status, body) = api.call("POST", &cancel, Some(ADMIN), "").await;
    assert!(status.is_success(), "{status} {body}");
    let mut finished = false;
    for _ in 0..200 {
        let (_, body) = api
            .call("GET", &format!("/api/v1/runs/{run}"), Some(ADMIN), "")
            .await;
        let shown: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if shown["run"]["status"] == "cancelled" {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(finished, "the run ends cancelled");
    let (status, body) = api.call("POST", &cancel, Some(ADMIN), "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// A version of `model` made by `run`, for seeding the registry.
fn model_version(model: &str, run: &str) -> crate::models::ModelVersion {
    crate::models::ModelVersion {
        model: model.into(),
        version: 0,
        artifact: sluice_worker::task::ArtifactRef::file("model.json", "a".repeat(64), 42),
        pipeline: "churn".into(),
        run_id: run.into(),
        step: "train".into(),
        registered_by: "register".into(),
        metrics: Default::default(),
        params: Default::default(),
        training_data: Vec::new(),
        commit: Some("abc123".into()),
        image_digest: None,
        created_ms: 1,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_model_registry_reads_for_read_tokens_and_moves_aliases_for_trigger_tokens() {
    let api = Api::start().await;
    for run in ["r1", "r2", "r3"] {
        let alias = (run == "r1").then_some("production");
        api.store
            .register_model(model_version("churn", run), alias, "run")
            .unwrap();
    }
    let viewer = Some(api.viewer.as_str());
    let admin = Some(ADMIN);
    let promote = "/api/v1/models/churn/aliases/production";
    let rollback = "/api/v1/models/churn/aliases/production/rollback";
    // (method, path, token, body, status, a word the answer must contain)
    type Row<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);
    let table: &[Row] = &[
        ("GET", "/api/v1/models", None, "", 401, "token"),
        (
            "GET",
            "/api/v1/models",
            viewer,
            "",
            200,
            "\"name\":\"churn\"",
        ),
        (
            "GET",
            "/api/v1/models/churn",
            viewer,
            "",
            200,
            "\"latest\":3",
        ),
        (
            "GET",
            "/api/v1/models/churn/versions/2",
            viewer,
            "",
            200,
            "\"run_id\":\"r2\"",
        ),
        (
            "GET",
            "/api/v1/models/churn/versions/latest",
            viewer,
            "",
            200,
            "\"version\":3",
        ),
        (
            "GET",
            "/api/v1/models/churn/aliases/production",
            viewer,
            "",
            200,
            "\"aliases\":[\"production\"]",
        ),
        (
            "GET",
            "/api/v1/models/churn/history",
            viewer,
            "",
            200,
            "register",
        ),
        (
            "GET",
            "/api/v1/models/nope",
            viewer,
            "",
            404,
            "models: churn",
        ),
        (
            "GET",
            "/api/v1/models/nope/history",
            viewer,
            "",
            404,
            "models: churn",
        ),
        (
            "GET",
            "/api/v1/models/churn/versions/9",
            viewer,
            "",
            404,
            "versions: 1-3",
        ),
        (
            "GET",
            "/api/v1/models/churn/versions/0",
            viewer,
            "",
            400,
            "version number",
        ),
        (
            "GET",
            "/api/v1/models/churn/versions/x",
            viewer,
            "",
            400,
            "version number",
        ),
        (
            "GET",
            "/api/v1/models/churn/aliases/canary",
            viewer,
            "",
            404,
            "aliases: production",
        ),
        ("GET", "/api/v1/models/Churn", viewer, "", 400, "a-z"),
        ("GET", "/api/v1/models/..%2Fx", viewer, "", 400, "a-z"),
        ("POST", promote, None, r#"{"version": 2}"#, 401, "token"),
        (
            "POST",
            promote,
            viewer,
            r#"{"version": 2}"#,
            403,
            "`viewer` has role `read`",
        ),
        ("POST", rollback, viewer, "", 403, "trigger"),
        (
            "POST",
            promote,
            admin,
            r#"{"version": 9}"#,
            404,
            "versions: 1-3",
        ),
        ("POST", promote, admin, "", 422, "version"),
        (
            "POST",
            promote,
            admin,
            r#"{"version": 2, "why": 1}"#,
            422,
            "why",
        ),
        (
            "POST",
            "/api/v1/models/nope/aliases/production",
            admin,
            r#"{"version": 1}"#,
            404,
            "models: churn",
        ),
        (
            "POST",
            "/api/v1/models/churn/aliases/Prod",
            admin,
            r#"{"version": 1}"#,
            400,
            "alias `Prod`",
        ),
        (
            "POST",
            "/api/v1/models/churn/aliases/staging/rollback",
            admin,
            "",
            404,
            "aliases: production",
        ),
        ("POST", rollback, admin, "", 409, "nothing to roll back to"),
    ];
    for (method, path, token, body, status, says) in table {
        let (got, answer) = api.call(method, path, *token, body).await;
        assert_eq!(got.as_u16(), *status, "{method} {path} {body}: {answer}");
        assert!(answer.contains(says), "{method} {path} {body}: {answer}");
    }

    // A promotion records the token's name and reason; the same again changes nothing.
    let (status, body) = api
        .call(
            "POST",
            promote,
            admin,
            r#"{"version": 3, "reason": "auc up"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let moved: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (moved["from"].as_u64(), moved["to"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(moved["moved"], true);
    let (_, body) = api.call("POST", promote, admin, r#"{"version": 3}"#).await;
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["moved"], false, "{body}");
    let (status, body) = api
        .call("POST", rollback, admin, r#"{"reason": "alerts"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let back: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (back["from"].as_u64(), back["to"].as_u64()),
        (Some(3), Some(1))
    );

    let (_, body) = api
        .call("GET", "/api/v1/models/churn/history", viewer, "")
        .await;
    let history: serde_json::Value = serde_json::from_str(&body).unwrap();
    let moves: Vec<(String, String, String)> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["who"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected = [
        ("register", "run", ""),
        ("promote", "api-token", "auc up"),
        ("rollback", "api-token", "alerts"),
    ]
    .map(|(a, w, r)| (a.to_string(), w.to_string(), r.to_string()));
    assert_eq!(moves, expected);
    assert_eq!(api.store.alias("churn", "production").unwrap().version, 1);
}
