//! The OpenAPI 3.1 document of the daemon's API, served at `GET /api/v1/openapi.json`.
//!
//! Each operation is described by its handler's `#[utoipa::path]` annotation, next to the
//! handler; [`super::router`] registers every route from those annotations (utoipa-axum takes the
//! path and method from them), so what the router serves and what the document says come from
//! one table. This file adds what belongs to no single handler: the title, the bearer-token
//! scheme, the role each route group needs ([`guarded`]), and the handler that serves it.
//!
//! The document is served without a token, like `/healthz`. It describes the API's shape, the
//! same for every daemon of this version (it is built from the code, never from pipelines, runs
//! or configuration), so it tells a caller nothing the source does not; and a client or a tool
//! (a generator, a fuzzer) needs it before it has a token, to learn that it needs one and which.
//!
//! The socket API a `sluice run` serves ([`super::host`]) is not in it: that socket is the
//! user's own (mode 0600), spoken only by other `sluice` commands of the same binary, and its
//! run reads answer with the same types as the daemon's documented routes.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr};
use utoipa::{Modify, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;

use super::auth::{self, Role};
use super::{ApiState, ErrorBody};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The name of the bearer-token scheme in the document's components.
pub const TOKEN_SCHEME: &str = "token";

/// Model and alias names in paths: what [`crate::models::check_name`] accepts (1-64 of a-z,
/// 0-9, `_`, `-`, `.`, not starting with `.`); anything else is answered 400. The annotations
/// in [`super::models`] repeat it (an attribute takes only a literal); a test holds them to it.
pub const NAME_PATTERN: &str = "^[a-z0-9_-][a-z0-9_.-]{0,63}$";

/// What is not per-handler: title, description, tags and the token scheme.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "The HTTP API of a Sluice daemon (`sluice scheduler`, `sluice server`): pipelines, runs, logs, workers, artifacts and the model registry. Errors are JSON `{\"error\": \"...\"}`. With API tokens configured, every route but `/healthz`, `/readyz`, this document and the signed webhooks needs `Authorization: Bearer <token>` whose role (`read` < `trigger` < `admin`) allows it: each operation's security requirement names that role."
    ),
    modifiers(&TokenScheme),
    components(schemas(ErrorBody)),
    tags(
        (name = "pipelines", description = "The pipelines the daemon serves."),
        (name = "runs", description = "Runs, their steps, events and logs."),
        (name = "workers", description = "The workers that take steps."),
        (name = "artifacts", description = "Outputs of steps, by content id, and their lineage."),
        (name = "models", description = "The model registry: versions, aliases, history."),
        (name = "webhooks", description = "Signed deliveries that start runs."),
        (name = "health", description = "Liveness and readiness."),
        (name = "meta", description = "This document."),
    )
)]
struct ApiDoc;

/// Adds the bearer-token scheme the guarded operations refer to.
struct TokenScheme;

impl Modify for TokenScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let scheme = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API token (`--api-token`, `--tokens FILE`; `sluice token new`). Needed only \
                 when the daemon has tokens configured; without any the API is open. The role an \
                 operation needs is the scope of its security requirement.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(TOKEN_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// The document's parts that no handler describes, for [`super::router`] to add routes to.
pub(super) fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// `routes` behind the token guard for `role`: the guard in front of each route, and in the
/// document each operation's security requirement naming `role` and the 401/403 the guard
/// answers. Both are made here from the same `role`, so the document cannot name another.
pub(super) fn guarded(
    state: &ApiState,
    role: Role,
    mut routes: OpenApiRouter<ApiState>,
) -> OpenApiRouter<ApiState> {
    for item in routes.get_openapi_mut().paths.paths.values_mut() {
        for operation in operations_mut(item) {
            require(operation, role);
        }
    }
    routes.route_layer(axum::middleware::from_fn_with_state(
        (state.clone(), role),
        auth::require,
    ))
}

/// Every operation of a path item.
pub(super) fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Marks `operation` as needing a token with `role`.
fn require(operation: &mut Operation, role: Role) {
    operation.security = Some(vec![SecurityRequirement::new(
        TOKEN_SCHEME,
        [role.as_str()],
    )]);
    let error = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build()
    };
    let unauthorized = ResponseBuilder::new()
        .description(
            "Tokens are configured and the request brings none of them \
             (`Authorization: Bearer <token>`).",
        )
        .header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("`Bearer`"))
                .build(),
        )
        .content("application/json", error())
        .build();
    let forbidden = ResponseBuilder::new()
        .description(format!(
            "The token's role is below `{}`; the message names both.",
            role.as_str()
        ))
        .content("application/json", error())
        .build();
    let responses = &mut operation.responses.responses;
    responses.insert("401".into(), unauthorized.into());
    responses.insert("403".into(), forbidden.into());
}

/// The schema of a trigger's `params`: names to strings, numbers or booleans (each reaches the
/// step as text; the pipeline's declarations then check it).
pub(super) fn param_values() -> Object {
    let scalar = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Boolean));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(RefOr::T(Schema::OneOf(scalar.build()))))
        .description(Some(
            "Values for the pipeline's declared params (strings, numbers or booleans); the \
             others keep their defaults.",
        ))
        .build()
}

/// The document a router serves, made once with the router.
#[derive(Clone)]
pub struct Document(Arc<OpenApi>);

impl Document {
    /// Wraps the document [`super::router`] assembled.
    pub fn new(document: OpenApi) -> Document {
        Document(Arc::new(document))
    }

    /// The document.
    pub fn get(&self) -> &OpenApi {
        &self.0
    }
}

/// `GET /api/v1/openapi.json`: this document. No token needed (see the module's header).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1).", body = Object, content_type = "application/json")),
)]
pub(super) async fn serve(Extension(document): Extension<Document>) -> Response {
    Json(document.get()).into_response()
}

#[cfg(test)]
mod tests;
