//! `POST /hooks/{pipeline}/{trigger}`: webhooks that start runs, signed with HMAC-SHA256.
//!
//! Signatures (any one that matches any of the trigger's secrets is enough, so a secret can be
//! rotated by listing old and new, comma-separated, in the variable `secret_env` names):
//! - `X-Sluice-Signature: sha256=<hex>` over the raw body;
//! - `X-Sluice-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]` over `"{t}.{body}"`, refused
//!   more than [`TOLERANCE_SECS`] from now (replay protection);
//! - GitHub's `X-Hub-Signature-256: sha256=<hex>`.
//!
//! A signed delivery is deduplicated by what its signature covers (the body, or the timestamp
//! and the body): a delivery id header is not signed, so a captured delivery replayed with a new
//! id inside [`DEDUPE_WINDOW_MS`] returns the first run's id and starts nothing, and so does a
//! sender's redelivery. With `--require-webhook-timestamp` only the timestamped scheme is
//! accepted (replays are then also bounded by [`TOLERANCE_SECS`]). A webhook without a secret
//! (`insecure: true`) is deduplicated by its delivery id (`X-Sluice-Delivery`,
//! `X-GitHub-Delivery` or `Idempotency-Key`) when it sends one.
//!
//! Every delivery that starts nothing for a reason of the caller's (or of a missing secret) is
//! counted by its reason in `sluice_webhook_rejections_total` ([`WebhookRejection`]); one that
//! the concurrency policy skips counts as a trigger skip instead.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody};
use crate::daemon::{Origin, Started, TriggerError};
use crate::metrics::WebhookRejection;
use crate::spec::Trigger;
use crate::store::marks;
use crate::store::TriggerOrigin;

/// Largest body accepted; more is answered 413.
pub const MAX_BODY: usize = 1 << 20;
/// How far a timestamped signature may be from now.
pub const TOLERANCE_SECS: i64 = 300;
/// How long a delivery id is remembered.
pub const DEDUPE_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// A delivery that started a run, or that was seen before and started nothing.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Delivered {
    /// The run's id: the new run, or the one the same delivery started before.
    run: String,
    /// `true` when the delivery was seen before and nothing was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
}

/// A delivery the pipeline's concurrency policy skipped.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeliverySkipped {
    /// Why no run was started.
    skipped: String,
}

#[utoipa::path(
    post,
    path = "/hooks/{pipeline}/{trigger}",
    tag = "webhooks",
    operation_id = "webhook",
    description = "Starts a run of `pipeline` for its `webhook: trigger`. Authenticated by an HMAC-SHA256 signature of the raw body with the trigger's secret (`X-Sluice-Signature: sha256=<hex>` or `t=<unix>,v1=<hex>` over `{t}.{body}`, or GitHub's `X-Hub-Signature-256`), not by an API token; a trigger with `insecure: true` takes unsigned deliveries.",
    params(
        ("pipeline" = String, Path, description = "The pipeline's name."),
        ("trigger" = String, Path, description = "The name of the pipeline's `webhook:` trigger."),
        ("X-Sluice-Signature" = Option<String>, Header, description = "`sha256=<hex>` over the body, or `t=<unix>,v1=<hex>` over `{t}.{body}`."),
        ("X-Hub-Signature-256" = Option<String>, Header, description = "GitHub's `sha256=<hex>` over the body."),
        ("X-Sluice-Delivery" = Option<String>, Header, description = "A delivery id, deduplicating deliveries to an `insecure` webhook (`X-GitHub-Delivery` and `Idempotency-Key` are read too)."),
    ),
    request_body(content = Option<Object>, description = "The sender's payload, signed as raw bytes; JSON when the trigger maps params from it. At most 1 MiB."),
    responses(
        (status = 200, description = "The concurrency policy skipped it: nothing was started.", body = DeliverySkipped),
        (status = 202, description = "A run was started, or (`duplicate`) this delivery was seen before.", body = Delivered),
        (status = 401, description = "The signature is missing, does not match, or its timestamp is too far from now.", body = ErrorBody),
        (status = 404, description = "The pipeline has no webhook of that name.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 422, description = "A param cannot be mapped from the body, or does not fit the pipeline.", body = ErrorBody),
        (status = 500, description = "The store failed.", body = ErrorBody),
        (status = 503, description = "The webhook's secret is not configured, the scheduler is shutting down, or the store cannot write now.", body = ErrorBody),
    ),
)]
pub(super) async fn hook(
    State(state): State<ApiState>,
    Path((pipeline, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let rejected = |reason: WebhookRejection| state.daemon.metrics().webhook_rejected(reason);
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                rejected(WebhookRejection::TooLarge);
            }
            return Ok(rejection.into_response());
        }
    };
    let trigger = state.daemon.with_catalog(|c| {
        c.pipelines.get(&pipeline).and_then(|loaded| {
            loaded.pipeline.triggers.iter().find_map(|t| match t {
                Trigger::Webhook {
                    name: n,
                    secret_env,
                    params,
                } if *n == name => Some((secret_env.clone(), params.clone())),
                _ => None,
            })
        })
    });
    let Some((secret_env, mapping)) = trigger else {
        rejected(WebhookRejection::Unknown);
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no webhook `{name}` on a pipeline `{pipeline}`"),
        ));
    };
    // Which scheme signed it, for a webhook with a secret (`None`: an `insecure` one).
    let signed = match &secret_env {
        None => None,
        Some(var) => {
            let secrets = secrets_from_env(var).ok_or_else(|| {
                tracing::error!(
                    pipeline,
                    webhook = name,
                    var,
                    "The webhook's secret variable is not set; refusing deliveries."
                );
                rejected(WebhookRejection::NotConfigured);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the webhook's secret is not configured on the scheduler (`{var}`)"),
                )
            })?;
            let now = chrono::Utc::now().timestamp();
            let verified = verify(
                &headers,
                &body,
                &secrets,
                now,
                state.require_webhook_timestamp,
            );
            match verified {
                Ok(signed) => Some(signed),
                Err(refusal) => {
                    tracing::warn!(pipeline, webhook = name, why = %refusal, "Webhook delivery refused.");
                    rejected(refusal.reason());
                    return Err(ApiError::new(StatusCode::UNAUTHORIZED, refusal.to_string()));
                }
            }
        }
    };
    let params =
        map_params(&body, &mapping).inspect_err(|_| rejected(WebhookRejection::BadPayload))?;
    // What identifies the delivery: what its signature covers, else its (unsigned) id.
    let identity = match signed {
        Some(Signed::Plain) => Some(Sha256::new().chain_update(&body).finalize()),
        Some(Signed::Timestamped(t)) => Some(
            Sha256::new()
                .chain_update(format!("{t}."))
                .chain_update(&body)
                .finalize(),
        ),
        None => delivery_id(&headers).map(|id| Sha256::digest(id.as_bytes())),
    };
    let dedupe = identity.map(|digest| marks::delivery_key(&pipeline, &name, &digest));
    let origin = Origin {
        trigger: TriggerOrigin::Webhook { name: name.clone() },
        dedupe,
        dedupe_window_ms: Some(DEDUPE_WINDOW_MS),
        ..Origin::default()
    };
    let daemon = state.daemon.clone();
    let started = tokio::task::spawn_blocking(move || daemon.start_run(&pipeline, params, origin))
        .await
        .map_err(ApiError::internal)?;
    match started {
        Ok(Started::New(run)) => Ok((
            StatusCode::ACCEPTED,
            Json(Delivered {
                run: run.id,
                duplicate: None,
            }),
        )
            .into_response()),
        Ok(Started::Existing(run)) => {
            rejected(WebhookRejection::Duplicate);
            Ok((
                StatusCode::ACCEPTED,
                Json(Delivered {
                    run,
                    duplicate: Some(true),
                }),
            )
                .into_response())
        }
        Ok(Started::Skipped(reason)) => {
            Ok((StatusCode::OK, Json(DeliverySkipped { skipped: reason })).into_response())
        }
        Err(err @ TriggerError::Params(_)) => {
            rejected(WebhookRejection::BadPayload);
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                err.to_string(),
            ))
        }
        Err(err @ (TriggerError::UnknownPipeline(_) | TriggerError::UnknownRun(_))) => {
            // Unloaded by a reload since the webhook was looked up.
            rejected(WebhookRejection::Unknown);
            Err(ApiError::new(StatusCode::NOT_FOUND, err.to_string()))
        }
        Err(err @ TriggerError::CannotRetry(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, err.to_string()))
        }
        Err(err @ TriggerError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            err.to_string(),
        )),
        Err(TriggerError::Engine(err)) => Err(ApiError::engine(err)),
    }
}

/// The secrets in variable `var`, comma-separated (several during a rotation).
fn secrets_from_env(var: &str) -> Option<Vec<String>> {
    let value = std::env::var(var).ok()?;
    let secrets: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    (!secrets.is_empty()).then_some(secrets)
}

/// Which scheme a delivery's signature used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// `sha256=<hex>` over the body.
    Plain,
    /// `t=<unix>,v1=<hex>` over `"{t}.{body}"`, with this `t`.
    Timestamped(i64),
}

/// Why a delivery's signature is refused; the message is the 401's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No signature header at all.
    #[error("the delivery is not signed: send X-Sluice-Signature (or X-Hub-Signature-256)")]
    Unsigned,
    /// A header that is neither scheme.
    #[error("the signature header is not `sha256=<hex>` or `t=<unix>,v1=<hex>`")]
    Malformed,
    /// The plain scheme where only the timestamped one is accepted.
    #[error("this scheduler accepts only timestamped signatures (`t=<unix>,v1=<hex>` over `{{t}}.{{body}}`)")]
    TimestampRequired,
    /// A timestamp further than [`TOLERANCE_SECS`] from now.
    #[error("the signature's timestamp is too far from now (replayed or a wrong clock)")]
    Stale,
    /// No signature matches the body with any secret.
    #[error("the signature does not match the body")]
    Mismatch,
}

impl Refusal {
    /// The reason it is counted under.
    pub fn reason(self) -> WebhookRejection {
        match self {
            Refusal::Unsigned => WebhookRejection::Unsigned,
            Refusal::Malformed => WebhookRejection::Malformed,
            Refusal::TimestampRequired => WebhookRejection::TimestampRequired,
            Refusal::Stale => WebhookRejection::Stale,
            Refusal::Mismatch => WebhookRejection::BadSignature,
        }
    }
}

/// Checks the delivery's signature headers against `secrets`; `Err` says why it is refused.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[String],
    now_unix: i64,
    require_timestamp: bool,
) -> Result<Signed, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut offered = false;
    for value in [header("x-sluice-signature"), header("x-hub-signature-256")]
        .into_iter()
        .flatten()
    {
        offered = true;
        if let Some(hex_sig) = value.trim().strip_prefix("sha256=") {
            if require_timestamp {
                return Err(Refusal::TimestampRequired);
            }
            if secrets
                .iter()
                .any(|s| signature_matches(s, &[body], hex_sig))
            {
                return Ok(Signed::Plain);
            }
            continue;
        }
        // Timestamped: t=<unix>,v1=<hex>[,v1=<hex>...]
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in value.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                Some(("v1", sig)) => signatures.push(sig),
                _ => {}
            }
        }
        let Some(t) = timestamp else {
            return Err(Refusal::Malformed);
        };
        if now_unix.abs_diff(t) > TOLERANCE_SECS.unsigned_abs() {
            return Err(Refusal::Stale);
        }
        let prefix = format!("{t}.");
        let matched = signatures.iter().any(|sig| {
            secrets
                .iter()
                .any(|s| signature_matches(s, &[prefix.as_bytes(), body], sig))
        });
        if matched {
            return Ok(Signed::Timestamped(t));
        }
    }
    if offered {
        Err(Refusal::Mismatch)
    } else {
        Err(Refusal::Unsigned)
    }
}

/// HMAC-SHA256 of `parts` with `secret`, compared with `hex_sig` in constant time.
fn signature_matches(secret: &str, parts: &[&[u8]], hex_sig: &str) -> bool {
    let Ok(expected) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&expected).is_ok()
}

fn delivery_id(headers: &HeaderMap) -> Option<String> {
    ["x-sluice-delivery", "x-github-delivery", "idempotency-key"]
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// Params from the JSON body by the trigger's mapping (`param: payload.path`); the engine then
/// checks their types against the pipeline's declarations.
fn map_params(
    body: &[u8],
    mapping: &indexmap::IndexMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    if mapping.is_empty() {
        return Ok(BTreeMap::new());
    }
    let payload: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the body is not JSON ({err}), and params are mapped from it"),
        )
    })?;
    let mut params = BTreeMap::new();
    for (param, path) in mapping {
        let value = lookup(&payload, path).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("param `{param}`: the payload has no `{path}`"),
            )
        })?;
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "param `{param}`: `{path}` is {}, not a string, number or boolean",
                        kind(other)
                    ),
                ))
            }
        };
        params.insert(param.clone(), text);
    }
    Ok(params)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
        _ => "a scalar",
    }
}

/// `Records.0.s3.object.key`, `Records[0].s3.object.key` or `$.Records[0]...` in `payload`.
pub fn lookup<'v>(payload: &'v Value, path: &str) -> Option<&'v Value> {
    let path = path.strip_prefix("$.").unwrap_or(path);
    let normalised = path.replace('[', ".").replace(']', "");
    let mut at = payload;
    for part in normalised.split('.').filter(|p| !p.is_empty()) {
        at = match at {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn sign(secret: &str, data: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn githubs_published_test_vector_is_accepted() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let secret = vec!["It's a Secret to Everybody".to_string()];
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(
            verify(&h, b"Hello, World!", &secret, 0, false),
            Ok(Signed::Plain)
        );
        assert!(verify(&h, b"Hello, World?", &secret, 0, false).is_err());
        // With timestamps required, the plain scheme is refused even when it matches.
        assert!(verify(&h, b"Hello, World!", &secret, 0, true).is_err());
    }

    #[test]
    fn sluice_signatures_plain_timestamped_and_rotated() {
        let secrets = vec!["old".to_string(), "new".to_string()];
        let body = br#"{"a":1}"#;
        let plain = format!("sha256={}", sign("new", body));
        assert_eq!(
            verify(
                &headers(&[("x-sluice-signature", &plain)]),
                body,
                &secrets,
                0,
                false
            ),
            Ok(Signed::Plain)
        );
        let wrong = format!("sha256={}", sign("other", body));
        assert!(verify(
            &headers(&[("x-sluice-signature", &wrong)]),
            body,
            &secrets,
            0,
            false
        )
        .is_err());
        assert_eq!(
            verify(&headers(&[]), body, &secrets, 0, false),
            Err(Refusal::Unsigned)
        );
        assert!(Refusal::Unsigned.to_string().contains("not signed"));

        let t = 1_800_000_000;
        let signed = |secret: &str| sign(secret, format!("{t}.{{\"a\":1}}").as_bytes());
        let stamped = format!("t={t},v1={},v1={}", signed("stale"), signed("old"));
        let h = headers(&[("x-sluice-signature", &stamped)]);
        assert_eq!(
            verify(&h, body, &secrets, t + 10, true),
            Ok(Signed::Timestamped(t))
        );
        assert_eq!(
            verify(&h, body, &secrets, t + TOLERANCE_SECS + 1, false),
            Err(Refusal::Stale)
        );
        assert!(Refusal::Stale.to_string().contains("too far"));
        // The timestamp is signed too: moving it breaks the signature.
        let moved = format!("t={},v1={}", t + 1, signed("old"));
        assert!(verify(
            &headers(&[("x-sluice-signature", &moved)]),
            body,
            &secrets,
            t,
            false
        )
        .is_err());
    }

    #[test]
    fn payload_paths() {
        let payload: Value = serde_json::json!({
            "Records": [{"s3": {"object": {"key": "landing/a.csv", "size": 10}}}]
        });
        for path in [
            "Records.0.s3.object.key",
            "Records[0].s3.object.key",
            "$.Records[0].s3.object.key",
        ] {
            assert_eq!(
                lookup(&payload, path),
                Some(&serde_json::json!("landing/a.csv"))
            );
        }
        assert_eq!(lookup(&payload, "Records.1.s3"), None);
        assert_eq!(lookup(&payload, "Records.0.nope"), None);
    }
}
