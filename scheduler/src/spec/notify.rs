//! The `notify:` list: where a daemon posts a run's summary when it ends.
//!
//! ```yaml
//! notify:
//!   - on: [failed, cancelled]
//!     webhook: https://hooks.slack.com/services/T000/B000/XXXX
//!     format: slack
//!   - webhook: https://ops.example.com/sluice
//!     secret_env: SLUICE_NOTIFY_SECRET   # signs the body like incoming webhooks are signed
//! ```

use super::reader::{join, Reader};
use super::values;
use super::yaml::{Node, Value};

const NOTIFY_KEYS: &[&str] = &["on", "webhook", "format", "secret_env"];

/// One place a run's end is posted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The run endings that are posted (default: failed).
    pub on: Vec<NotifyOn>,
    /// `http://` or `https://` URL.
    pub webhook: String,
    /// The body's shape.
    pub format: NotifyFormat,
    /// Variable (of the daemon's environment) holding the HMAC secret that signs the body.
    pub secret_env: Option<String>,
}

/// A run ending a notification can be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOn {
    /// Every step succeeded or was skipped.
    Succeeded,
    /// A step failed.
    Failed,
    /// Someone cancelled it.
    Cancelled,
}

impl NotifyOn {
    /// The word in files and bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Succeeded => "succeeded",
            NotifyOn::Failed => "failed",
            NotifyOn::Cancelled => "cancelled",
        }
    }
}

/// The body's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// Sluice's own JSON summary.
    Json,
    /// A Slack incoming-webhook message (`{"text": ...}`).
    Slack,
}

/// Reads `notify:` (a list, or one mapping).
pub fn notify(r: &mut Reader, node: &Node) -> Option<Vec<Notify>> {
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Map(_) => vec![node],
        other => {
            r.error(
                node.mark,
                "notify",
                format!(
                    "`notify` must be a list of `{{webhook: URL, on: [...]}}`, found {}",
                    other.kind()
                ),
            );
            return None;
        }
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        match target(r, item, &format!("notify[{i}]")) {
            Some(t) => out.push(t),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn target(r: &mut Reader, node: &Node, path: &str) -> Option<Notify> {
    let fields = r.mapping(node, path, "a notify target", NOTIFY_KEYS)?;
    let Some((_, url_node)) = fields.get("webhook") else {
        r.error(node.mark, path, "a notify target needs a `webhook` URL");
        return None;
    };
    let field = join(path, "webhook");
    let webhook = r.string(url_node, &field)?;
    match reqwest::Url::parse(&webhook) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        _ => {
            r.error(
                url_node.mark,
                &field,
                format!("`{webhook}` is not an http:// or https:// URL"),
            );
            return None;
        }
    }
    let on = match fields.get("on") {
        Some((_, n)) => {
            let field = join(path, "on");
            let words: Vec<&Node> = match &n.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![n],
            };
            let mut on = Vec::new();
            for word in words {
                let choice = r.choice(
                    word,
                    &field,
                    &[
                        ("succeeded", NotifyOn::Succeeded),
                        ("failed", NotifyOn::Failed),
                        ("cancelled", NotifyOn::Cancelled),
                    ],
                )?;
                if !on.contains(&choice) {
                    on.push(choice);
                }
            }
            on
        }
        None => vec![NotifyOn::Failed],
    };
    let format = match fields.get("format") {
        Some((_, n)) => r.choice(
            n,
            &join(path, "format"),
            &[("json", NotifyFormat::Json), ("slack", NotifyFormat::Slack)],
        )?,
        None => NotifyFormat::Json,
    };
    let secret_env = match fields.get("secret_env") {
        Some((_, n)) => {
            let field = join(path, "secret_env");
            let var = r.string(n, &field)?;
            values::variable_name(&var)
                .map_err(|m| r.error(n.mark, &field, m))
                .ok()?;
            Some(var)
        }
        None => None,
    };
    Some(Notify {
        on,
        webhook,
        format,
        secret_env,
    })
}
