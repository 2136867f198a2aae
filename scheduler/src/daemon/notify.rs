//! Notifications (`notify:`): when a run ends the way a target asks, the daemon posts its summary
//! to the target's webhook, signed like incoming webhooks when the target names a secret.
//!
//! Nothing here can hold a run up or lose a notice: the notice is rendered and recorded in the
//! store (a mark) in the commit that takes the run out of the feed of finished runs (see
//! [`super::follow`]), and a delivery loop posts recorded notices in the background, retrying
//! with a doubling pause (1 s up to 5 min) until the receiver answers 2xx or eight tries failed.
//! A daemon killed in between posts it after its restart (a receiver may see a notice twice,
//! and can tell by `X-Sluice-Delivery`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use sluice_worker::task::now_ms;

use super::Daemon;
use crate::spec::notify::{Notify, NotifyFormat, NotifyOn};
use crate::store::{Changes, RunRecord, RunStatus, StepStatus, Store, StoreError};

/// A notice waiting to be posted, kept in the store until it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingNotice {
    /// Where to.
    pub url: String,
    /// The body, rendered when the run ended (every try posts the same).
    pub body: String,
    /// Variable holding the signing secret, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Tries so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not before this, ms since the epoch.
    #[serde(default)]
    pub next_ms: u64,
}

/// Tries before a notice is given up (logged as an error).
const MAX_ATTEMPTS: u32 = 8;
/// Longest wait between two tries.
const MAX_PAUSE: Duration = Duration::from_secs(300);
/// How long one post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Runs that ended this long before the daemon started are not notified about (runs of an
/// embedded `sluice run` found in the data dir long after).
const STALE: u64 = 10 * 60 * 1000;

/// The prefix of pending notices' marks.
const PREFIX: &str = "notify/";

/// Records the notices `run` calls for in `changes` (committed with the run leaving the feed).
pub(super) fn enqueue(
    daemon: &Daemon,
    store: &Store,
    run: &RunRecord,
    targets: &[Notify],
    changes: &mut Changes,
) -> Result<(), StoreError> {
    let finished = run.finished_ms.unwrap_or(run.created_ms);
    if finished.saturating_add(STALE) < daemon.started_ms {
        return Ok(());
    }
    // The `sluice run` that ran it notified (or left its notices pending) itself.
    if store.mark::<bool>(&notified_mark(&run.id))?.is_some() {
        return Ok(());
    }
    for (key, notice) in notices(store, run, targets)? {
        changes.put_mark(&key, &notice);
    }
    Ok(())
}

/// The mark a `sluice run` leaves once it took care of its run's notices.
fn notified_mark(run: &str) -> String {
    format!("notified/{run}")
}

/// The notices `run` calls for, each with the key of its pending mark.
fn notices(
    store: &Store,
    run: &RunRecord,
    targets: &[Notify],
) -> Result<Vec<(String, PendingNotice)>, StoreError> {
    let ended = match run.status {
        RunStatus::Succeeded => NotifyOn::Succeeded,
        RunStatus::Failed => NotifyOn::Failed,
        RunStatus::Cancelled => NotifyOn::Cancelled,
        RunStatus::Queued | RunStatus::Running => return Ok(Vec::new()),
    };
    let wanted: Vec<(usize, &Notify)> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.on.contains(&ended))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let summary = summary(store, run)?;
    let mut out = Vec::with_capacity(wanted.len());
    for (i, target) in wanted {
        let body = match target.format {
            NotifyFormat::Json => summary.to_string(),
            NotifyFormat::Slack => json!({ "text": slack_text(&summary) }).to_string(),
        };
        let notice = PendingNotice {
            url: target.webhook.clone(),
            body,
            secret_env: target.secret_env.clone(),
            attempts: 0,
            next_ms: 0,
        };
        out.push((format!("{PREFIX}{}/{i}", run.id), notice));
    }
    Ok(out)
}

/// Tries an embedded run makes before it leaves a notice to a daemon.
const EMBEDDED_ATTEMPTS: u32 = 3;

/// Notifies about a run that `sluice run` drove, before the process exits: the notices are
/// recorded as pending (with a mark that keeps a daemon from notifying again), posted with a
/// few quick tries, and those still refused stay pending for the next daemon on the data dir
/// (`sluice server` or `sluice scheduler`). Returns each target's outcome, for the terminal.
pub async fn notify_embedded(
    store: &Store,
    run: &RunRecord,
    targets: &[Notify],
) -> Result<Vec<(String, Result<(), String>)>, StoreError> {
    let pending = notices(store, run, targets)?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let mut changes = Changes::default();
    changes.put_mark(&notified_mark(&run.id), &true);
    for (key, notice) in &pending {
        changes.put_mark(key, notice);
    }
    store.commit(&changes)?;
    let mut outcomes = Vec::with_capacity(pending.len());
    for (key, notice) in pending {
        let mut outcome = Err(String::new());
        for attempt in 0..EMBEDDED_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            outcome = post(&key, &notice).await;
            if outcome.is_ok() {
                let mut done = Changes::default();
                done.remove_mark(&key);
                store.commit(&done)?;
                break;
            }
        }
        outcomes.push((notice.url, outcome));
    }
    Ok(outcomes)
}

/// The run's summary: what a person needs to act on it without opening anything else.
fn summary(store: &Store, run: &RunRecord) -> Result<Value, StoreError> {
    let steps = store.steps(&run.id)?;
    let count = |status: StepStatus| steps.iter().filter(|s| s.status == status).count();
    let failed: Vec<Value> = steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .map(|s| {
            let attempt = s.last_attempt();
            json!({
                "step": s.name,
                "attempts": s.attempts.len(),
                "exit_code": attempt.and_then(|a| a.exit_code),
                "message": attempt.and_then(|a| a.message.clone()),
                "log_tail": attempt
                    .map(|a| crate::logtail::tail_lines(&a.dir.join("stderr.log"), 10))
                    .unwrap_or_default(),
            })
        })
        .collect();
    let finished = run.finished_ms.unwrap_or(run.created_ms);
    let link = std::env::var("SLUICE_PUBLIC_URL")
        .ok()
        .map(|base| format!("{}/api/v1/runs/{}", base.trim_end_matches('/'), run.id));
    Ok(json!({
        "pipeline": run.pipeline,
        "run": run.id,
        "status": run.status.as_str(),
        "trigger": run.trigger.to_string(),
        "params": run.params,
        "created_ms": run.created_ms,
        "finished_ms": finished,
        "duration_ms": finished.saturating_sub(run.created_ms),
        "steps": {
            "succeeded": count(StepStatus::Succeeded),
            "failed": count(StepStatus::Failed),
            "skipped": count(StepStatus::Skipped),
            "cancelled": count(StepStatus::Cancelled),
        },
        "failed_steps": failed,
        "link": link,
    }))
}

/// The summary as one Slack message.
fn slack_text(summary: &Value) -> String {
    let status = summary["status"].as_str().unwrap_or("?");
    let mark = match status {
        "succeeded" => ":white_check_mark:",
        "failed" => ":x:",
        _ => ":no_entry_sign:",
    };
    let seconds = summary["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    let mut text = format!(
        "{mark} Sluice run `{}` of `{}` {status} in {seconds:.1}s",
        summary["run"].as_str().unwrap_or("?"),
        summary["pipeline"].as_str().unwrap_or("?"),
    );
    if let Some(link) = summary["link"].as_str() {
        text.push_str(&format!(" (<{link}|details>)"));
    }
    for step in summary["failed_steps"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "\n• `{}` failed{}",
            step["step"].as_str().unwrap_or("?"),
            step["exit_code"]
                .as_i64()
                .map(|c| format!(" (exit code {c})"))
                .unwrap_or_default()
        ));
        let tail: Vec<&str> = step["log_tail"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !tail.is_empty() {
            text.push_str(&format!("\n```{}```", tail.join("\n")));
        }
    }
    text
}

/// Notices being posted now, so a slow receiver is not posted to twice at once.
fn in_flight() -> &'static Mutex<HashSet<String>> {
    static IN_FLIGHT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    IN_FLIGHT.get_or_init(|| Mutex::new(HashSet::new()))
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    })
}

/// Starts posting the notices that are due (called by the daemon's clock; returns at once).
pub(super) fn deliver_due(daemon: &Arc<Daemon>) {
    let store = &daemon.engine.store;
    let pending = match store.marks::<PendingNotice>(PREFIX) {
        Ok(pending) => pending,
        Err(err) => {
            tracing::error!(error = %err, "Cannot read pending notifications.");
            return;
        }
    };
    let now = now_ms();
    for (key, notice) in pending {
        if notice.next_ms > now {
            continue;
        }
        let key = key.trim_start_matches("m/").to_string();
        if !in_flight()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            continue;
        }
        let store = store.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let outcome = post(&key, &notice).await;
            let mut changes = Changes::default();
            match outcome {
                Ok(()) => changes.remove_mark(&key),
                Err(why) if notice.attempts + 1 >= MAX_ATTEMPTS => {
                    tracing::error!(notice = %key, url = %notice.url, error = %why, "Gave up a notification after {MAX_ATTEMPTS} tries.");
                    changes.remove_mark(&key);
                }
                Err(why) => {
                    let pause = Duration::from_secs(1u64 << notice.attempts.min(9)).min(MAX_PAUSE);
                    tracing::warn!(notice = %key, url = %notice.url, error = %why, retry_in = ?pause, "A notification was not accepted; trying again.");
                    let next = PendingNotice {
                        attempts: notice.attempts + 1,
                        next_ms: now_ms() + pause.as_millis() as u64,
                        ..notice
                    };
                    changes.put_mark(&key, &next);
                }
            }
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(err) = store.commit(&changes) {
                    tracing::error!(error = %err, "Cannot record a notification's progress.");
                }
            })
            .await;
            in_flight()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        });
    }
}

async fn post(key: &str, notice: &PendingNotice) -> Result<(), String> {
    let mut request = client()
        .post(&notice.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Sluice-Delivery", key);
    if let Some(var) = &notice.secret_env {
        let secret = std::env::var(var)
            .map_err(|_| format!("the signing secret variable `{var}` is not set"))?;
        request = request.header("X-Sluice-Signature", signature(&secret, &notice.body));
    }
    let response = request
        .body(notice.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", response.status()))
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "{t}.{body}">`, the timestamped scheme incoming
/// webhooks accept, so one verifier serves both directions.
fn signature(secret: &str, body: &str) -> String {
    let t = now_ms() / 1000;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slack_message_names_the_run_the_failed_steps_and_their_last_lines() {
        let summary = json!({
            "run": "01J", "pipeline": "train", "status": "failed", "duration_ms": 3200,
            "link": "https://sluice.example/api/v1/runs/01J",
            "failed_steps": [{"step": "fit", "exit_code": 3, "log_tail": ["boom", "again"]}],
        });
        assert_eq!(
            slack_text(&summary),
            ":x: Sluice run `01J` of `train` failed in 3.2s (<https://sluice.example/api/v1/runs/01J|details>)\n• `fit` failed (exit code 3)\n```boom\nagain```"
        );
    }

    #[test]
    fn the_signature_verifies_with_the_incoming_webhook_verifier() {
        let sig = signature("s3cret", "{\"a\":1}");
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-sluice-signature", sig.parse().unwrap());
        let now = (now_ms() / 1000) as i64;
        let secrets = vec!["s3cret".to_string()];
        let verified = crate::api::hooks::verify(&headers, b"{\"a\":1}", &secrets, now, true);
        assert!(
            matches!(verified, Ok(crate::api::hooks::Signed::Timestamped(_))),
            "{sig}: {verified:?}"
        );
        let other = vec!["other".to_string()];
        assert!(crate::api::hooks::verify(&headers, b"{\"a\":1}", &other, now, true).is_err());
    }
}
