//! The document against the router it describes: the same routes with the same methods, the
//! roles the guards enforce, parameters that match the paths.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::http::StatusCode;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::OpenApi;

use super::{operations_mut, NAME_PATTERN, TOKEN_SCHEME};
use crate::api::tests::{Api, ADMIN};

/// `(METHOD, path)`.
type Route = (String, String);

/// The routes a router serves, with their methods.
///
/// axum lists a router's routes nowhere public; its `Debug` output has them (route ids to paths,
/// and route ids to method routers with the `Allow` header they answer 405s with), so this reads
/// that. A change of that format makes this panic, saying so: the test then fails loudly rather
/// than passing on an empty list. `HEAD` beside `GET` is axum's own (it answers `HEAD` with the
/// `GET` handler) and is not listed.
fn served(router: &axum::Router) -> BTreeSet<Route> {
    let text = format!("{router:?}");
    let unreadable = |what: &str| -> ! {
        panic!("axum's Debug output of a Router changed ({what}); update `served`:\n{text}")
    };
    let Some((path_router, _)) = text.split_once("fallback_router:") else {
        unreadable("no `fallback_router:`")
    };
    let Some((routes, node)) = path_router.split_once("node: Node { paths: {") else {
        unreadable("no `node: Node { paths: {`")
    };
    let mut paths = HashMap::new();
    for entry in node.split("RouteId(").skip(1) {
        let Some((id, rest)) = entry.split_once("): \"") else {
            unreadable("a path entry is not `RouteId(N): \"path\"`")
        };
        let path = rest.split('"').next().unwrap_or_default();
        paths.insert(id.to_string(), path.to_string());
    }
    let mut served = BTreeSet::new();
    for entry in routes.split("RouteId(").skip(1) {
        let Some((id, rest)) = entry.split_once("): MethodRouter(") else {
            unreadable("a route is not a method router")
        };
        let Some((_, allow)) = rest.split_once("allow_header: Bytes(b\"") else {
            unreadable("a method router has no `allow_header: Bytes(...)`")
        };
        let allow = allow.split('"').next().unwrap_or_default();
        let Some(path) = paths.get(id) else {
            unreadable("a route id has no path")
        };
        let methods: Vec<&str> = allow.split(',').collect();
        for method in &methods {
            if *method == "HEAD" && methods.contains(&"GET") {
                continue;
            }
            served.insert((method.to_string(), path.clone()));
        }
    }
    if served.is_empty() {
        unreadable("no routes found")
    }
    served
}

/// Every operation of the document with its method and path.
fn documented(document: &OpenApi) -> BTreeMap<Route, Operation> {
    let mut document = document.clone();
    let mut operations = BTreeMap::new();
    for (path, item) in document.paths.paths.iter_mut() {
        let methods = [
            "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
        ];
        let fields = [
            item.get.is_some(),
            item.put.is_some(),
            item.post.is_some(),
            item.delete.is_some(),
            item.options.is_some(),
            item.head.is_some(),
            item.patch.is_some(),
            item.trace.is_some(),
        ];
        let present = methods.iter().zip(fields).filter(|(_, f)| *f);
        for ((method, _), operation) in present.zip(operations_mut(item)) {
            operations.insert((method.to_string(), path.clone()), operation.clone());
        }
    }
    operations
}

/// The document the router serves, fetched through it without a token.
async fn fetch(api: &Api) -> OpenApi {
    let (status, body) = api.call("GET", super::PATH, None, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("the document parses as OpenAPI")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_is_documented_with_its_method_and_nothing_else() {
    let api = Api::start().await;
    let document = fetch(&api).await;
    // The web UI's pages (`/` and `/ui/...`) answer HTML to browsers: they are not the API,
    // and are checked by the UI's own tests.
    let served: BTreeSet<Route> = served(&api.router)
        .into_iter()
        .filter(|(_, path)| path != "/" && path != "/ui" && !path.starts_with("/ui/"))
        .collect();
    let documented: BTreeSet<Route> = documented(&document).into_keys().collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}\ndocumented but not served: {unserved:?}"
    );
    // The reader is not vacuous: the routes README lists are there.
    for route in [
        ("GET", "/healthz"),
        ("GET", "/api/v1/runs/{run}/steps/{step}/logs"),
        ("POST", "/hooks/{pipeline}/{trigger}"),
        ("POST", "/api/v1/models/{name}/aliases/{alias}"),
        ("GET", "/api/v1/models/{name}/aliases/{alias}"),
        ("GET", super::PATH),
    ] {
        let route = (route.0.to_string(), route.1.to_string());
        assert!(served.contains(&route), "{route:?} not served");
    }
}

#[test]
fn a_route_added_without_documentation_is_caught() {
    // What the test above relies on: a plain `.route()` shows up in what `served` reads.
    let router = axum::Router::new()
        .route("/a/{x}", axum::routing::get(|| async {}))
        .route("/b", axum::routing::post(|| async {}).delete(|| async {}));
    let expected: BTreeSet<Route> = [("GET", "/a/{x}"), ("DELETE", "/b"), ("POST", "/b")]
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(served(&router), expected);
}

/// The role an operation's security requirement names, if it has one.
fn role_of(operation: &Operation) -> Option<String> {
    let security = operation.security.as_ref()?;
    let value = serde_json::to_value(security).expect("serialises");
    let scopes = value[0][TOKEN_SCHEME].as_array()?;
    assert_eq!(scopes.len(), 1, "one role per operation: {value}");
    scopes[0].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_operation_needs_the_role_its_guard_enforces() {
    let api = Api::start().await;
    let document = fetch(&api).await;
    let ranks = ["read", "trigger", "admin"];
    let callers = [
        ("no token", None, -1),
        ("viewer", Some(api.viewer.as_str()), 0),
        ("operator", Some(api.operator.as_str()), 1),
        ("admin", Some(ADMIN), 2),
    ];
    let mut checked = 0;
    for ((method, path), operation) in documented(&document) {
        let role = role_of(&operation);
        let needed = role.as_deref().map(|r| {
            ranks
                .iter()
                .position(|known| *known == r)
                .unwrap_or_else(|| panic!("{method} {path}: unknown role `{r}`")) as i32
        });
        let uri = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        for (who, token, rank) in callers {
            let (status, body) = api.call(&method, &uri, token, "").await;
            let expected = match needed {
                Some(_) if token.is_none() => Some(StatusCode::UNAUTHORIZED),
                Some(needed) if rank < needed => Some(StatusCode::FORBIDDEN),
                _ => None,
            };
            match expected {
                Some(expected) => assert_eq!(
                    status, expected,
                    "{method} {uri} by {who} (document: {role:?}): {body}"
                ),
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {uri} by {who} was refused ({status}) though the document says \
                     {role:?}: {body}"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} calls checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn parameters_match_paths_and_ids_are_unique() {
    let api = Api::start().await;
    let document = fetch(&api).await;
    assert_eq!(
        serde_json::to_value(&document).expect("serialises")["openapi"],
        "3.1.0"
    );
    let mut ids = BTreeSet::new();
    for ((method, path), operation) in documented(&document) {
        let id = operation.operation_id.clone().unwrap_or_default();
        assert!(
            ids.insert(id.clone()),
            "{method} {path}: operation id `{id}` twice"
        );
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|p| p.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let parameters = operation.parameters.clone().unwrap_or_default();
        let declared: BTreeSet<&str> = parameters
            .iter()
            .filter(|p| matches!(p.parameter_in, ParameterIn::Path))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(in_path, declared, "{method} {path}: path parameters");
        // Model and alias names are checked by one rule; the document says which.
        if path.starts_with("/api/v1/models/") {
            for parameter in &parameters {
                if ["name", "alias"].contains(&parameter.name.as_str()) {
                    let schema = serde_json::to_value(&parameter.schema).expect("serialises");
                    assert_eq!(
                        schema["pattern"], NAME_PATTERN,
                        "{method} {path}: `{}`",
                        parameter.name
                    );
                }
            }
        }
        assert!(
            operation
                .responses
                .responses
                .keys()
                .any(|s| s.starts_with('2')),
            "{method} {path}: no success answer documented"
        );
    }
}

#[test]
fn model_names_the_pattern_admits_are_the_ones_check_name_admits() {
    // The pattern, spelled out by hand for these samples: 1-64 of [a-z0-9_.-], no leading `.`.
    let long = "a".repeat(64);
    let too_long = "a".repeat(65);
    for (name, valid) in [
        ("churn", true),
        ("churn-v2.1_x", true),
        ("9", true),
        ("-", true),
        (long.as_str(), true),
        ("", false),
        (".hidden", false),
        ("Churn", false),
        ("a/b", false),
        ("a b", false),
        ("é", false),
        (too_long.as_str(), false),
    ] {
        assert_eq!(
            crate::models::check_name("model name", name).is_ok(),
            valid,
            "`{name}`"
        );
    }
    assert_eq!(NAME_PATTERN, "^[a-z0-9_-][a-z0-9_.-]{0,63}$");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_read_as_the_document_describes_them() {
    // What the fuzzer found the server doing apart from the document, each now as described.
    let api = Api::start().await;
    let admin = Some(ADMIN);
    let trigger = "/api/v1/pipelines/good/runs";
    // (method, path, body, status, a word the answer must contain)
    let table: &[(&str, &str, &str, u16, &str)] = &[
        // An optional body may be `null`, as the document's `oneOf [null, ...]` says.
        ("POST", trigger, "null", 201, "\"run\""),
        ("POST", "/api/v1/runs/nope/retry", "null", 404, "nope"),
        // JSON's whitespace is an empty body; a form feed is not JSON.
        ("POST", trigger, " \r\n\t", 201, "\"run\""),
        ("POST", trigger, "\x0c", 422, "bad request body"),
        // An array is not an object, though serde would fill a struct from one.
        ("POST", trigger, "[{}, true]", 422, "object"),
        ("POST", "/api/v1/gc", "[null, true]", 422, "map"),
        // A misspelt field is refused, not ignored (a dry run must not collect for real).
        (
            "POST",
            "/api/v1/gc",
            r#"{"dryrun": true}"#,
            422,
            "unknown field",
        ),
        // `2.0` is an integer to JSON Schema; numbers past int64 are not.
        (
            "POST",
            "/api/v1/gc",
            r#"{"dry_run": true, "keep_last": 2.0}"#,
            200,
            "\"dry_run\":true",
        ),
        (
            "POST",
            "/api/v1/gc",
            r#"{"dry_run": true, "keep_last": 9223372036854775808}"#,
            422,
            "2^63-1",
        ),
        (
            "POST",
            "/api/v1/models/m/aliases/a",
            r#"{"version": 1.5}"#,
            422,
            "whole number",
        ),
        (
            "GET",
            "/api/v1/runs/x/steps/y/logs?stream=both",
            "",
            422,
            "stdout",
        ),
    ];
    for (method, path, body, status, says) in table {
        let (got, answer) = api.call(method, path, admin, body).await;
        assert_eq!(got.as_u16(), *status, "{method} {path} {body}: {answer}");
        assert!(answer.contains(says), "{method} {path} {body}: {answer}");
    }
}
