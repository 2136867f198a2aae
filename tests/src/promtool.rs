//! `promtool check metrics` (Prometheus' own linter and parser) over what a daemon's `/metrics`
//! answers, so the text is checked by the reader that will scrape it, not by our own idea of it.
//!
//! Without `promtool` on PATH (Debian's `prometheus` package) the check is skipped with a
//! printed reason, unless `SLUICE_REQUIRE_PROMTOOL=1` (CI sets it), where it fails.

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether `promtool` can be run; see the module docs.
pub fn promtool_available() -> bool {
    crate::tool_available(
        "promtool",
        "SLUICE_REQUIRE_PROMTOOL",
        "apt-get install prometheus",
        ", so /metrics is not checked by it",
    )
}

/// Runs `promtool check metrics` on `text`; `Err` holds what it said. Call only after
/// [`promtool_available`].
pub fn check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("promtool does not start: {err}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin for promtool")?;
    stdin
        .write_all(text.as_bytes())
        .map_err(|err| format!("cannot write to promtool: {err}"))?;
    drop(stdin);
    let out = crate::wait_output(child, std::time::Duration::from_secs(60));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics failed ({}):\n{}{}",
            out.status,
            crate::text(&out.stdout),
            crate::text(&out.stderr)
        ))
    }
}
