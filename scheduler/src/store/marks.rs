//! Trigger bookkeeping kept in the store beside the runs it concerns: a typed value per kind of
//! mark and one function per kind of key, so no caller builds a key or reads a JSON field by
//! hand. Keys and fields are the ones stores have always held.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How far a cron schedule got: every instant up to this one was handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronMark {
    /// The last instant handled, ms since the epoch.
    pub through_ms: i64,
}

/// A webhook delivery or a watched file that was seen: the run it started, or why it started
/// none (the concurrency policy skipped it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeenMark {
    /// The run it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// When, ms since the epoch (deliveries dedupe only within a window).
    #[serde(default)]
    pub at_ms: u64,
    /// Why no run was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A trigger the concurrency policy skipped, for `GET /api/v1/pipelines/{p}/skipped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkipMark {
    /// What asked for the run.
    pub trigger: String,
    /// Why it was not started.
    pub reason: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// A cancel that was asked for: a scheduler restarted before the run ended cancels it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelMark {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Who asked (an API token's name, `api`, `cli`).
    pub by: String,
}

/// A cron trigger's state; the schedule and zone are part of the key, so a changed schedule
/// starts afresh instead of firing the old one's missed instants.
pub fn cron_key(pipeline: &str, schedule: &str, timezone: &str) -> String {
    let digest = Sha256::digest(format!("{schedule}\0{timezone}").as_bytes());
    format!("cron/{pipeline}/{}", hex::encode(&digest[..8]))
}

/// A webhook delivery, by a digest of what identifies it (its signed content or delivery id).
pub fn delivery_key(pipeline: &str, webhook: &str, identity: &[u8]) -> String {
    let identity = &identity[..identity.len().min(16)];
    format!("delivery/{pipeline}/{webhook}/{}", hex::encode(identity))
}

/// A file a `watch:` trigger saw.
pub fn watch_key(pipeline: &str, file: &std::path::Path) -> String {
    let digest = Sha256::digest(file.display().to_string().as_bytes());
    format!("watch/{pipeline}/{}", hex::encode(&digest[..12]))
}

/// A new skip of `pipeline`'s trigger; keys sort by time.
pub fn skip_key(pipeline: &str) -> String {
    format!("{}{}", skips_of(pipeline), ulid::Ulid::new())
}

/// The prefix of `pipeline`'s skips.
pub fn skips_of(pipeline: &str) -> String {
    format!("skipped/{pipeline}/")
}

/// A run's cancel.
pub fn cancel_key(run_id: &str) -> String {
    format!("cancel/{run_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_read_the_fields_stores_always_held() {
        let seen: SeenMark = serde_json::from_str(r#"{"run": "01ABC", "at_ms": 5}"#).unwrap();
        assert_eq!((seen.run.as_deref(), seen.at_ms), (Some("01ABC"), 5));
        let skipped: SeenMark = serde_json::from_str(r#"{"skipped": "limit"}"#).unwrap();
        assert_eq!(skipped.skipped.as_deref(), Some("limit"));
        let cron: CronMark = serde_json::from_str(r#"{"through_ms": 17}"#).unwrap();
        assert_eq!(cron.through_ms, 17);
        assert_eq!(cancel_key("R1"), "cancel/R1");
        assert!(skip_key("p").starts_with(&skips_of("p")));
        assert_eq!(
            cron_key("p", "0 3 * * *", "UTC"),
            cron_key("p", "0 3 * * *", "UTC")
        );
        assert_ne!(
            cron_key("p", "0 3 * * *", "UTC"),
            cron_key("p", "0 4 * * *", "UTC")
        );
    }
}
