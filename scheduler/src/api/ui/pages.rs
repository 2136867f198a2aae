//! What every page shares: the frame with the navigation, and small renderings (states,
//! times, durations) written once.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::Viewer;
use crate::cli::human_ms;

/// Which section of the navigation a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Runs and a run.
    Runs,
    /// Pipelines, a pipeline, its trigger form and metrics.
    Pipelines,
    /// Workers.
    Workers,
    /// The model registry.
    Models,
}

/// A whole page: `title`, the navigation (with `here` marked), then `body`.
pub fn frame(title: &str, here: Section, viewer: &Viewer, body: Markup) -> Markup {
    let link = |section: Section, href: &str, text: &str| {
        html! { a href=(href) class=[(section == here).then_some("here")] { (text) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Sluice" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/runs" { "Sluice" }
                    nav {
                        (link(Section::Runs, "/ui/runs", "Runs"))
                        (link(Section::Pipelines, "/ui/pipelines", "Pipelines"))
                        (link(Section::Workers, "/ui/workers", "Workers"))
                        (link(Section::Models, "/ui/models", "Models"))
                    }
                    div.who {
                        @if let Some(name) = &viewer.name {
                            span { (name) " (" (viewer.role.as_str()) ")" }
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button.quiet type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A state as a coloured badge; `of` names the step whose badge live updates change.
pub fn badge(status: &str, of: Option<&str>) -> Markup {
    html! { span class={ "badge st-" (status) } data-status-of=[of] { (status) } }
}

/// `2026-12-06T23:02:22Z`.
pub fn when(ms: u64) -> String {
    crate::cli::printers::timestamp(ms)
}

/// How long something took, or `-`.
pub fn took(ms: Option<u64>) -> String {
    ms.map(human_ms).unwrap_or_else(|| "-".into())
}

/// Text for a URL's path segment or query value: everything but unreserved characters
/// percent-encoded.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Hidden input with the viewer's CSRF token, for every form that changes something.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// SVG made by the page's own code (already escaped where it holds text).
pub fn raw(svg: String) -> Markup {
    PreEscaped(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_unreserved_characters_only() {
        assert_eq!(encode("train[lr=0.1,d=3]"), "train%5Blr%3D0.1%2Cd%3D3%5D");
        assert_eq!(encode("a b/c?d&e"), "a%20b%2Fc%3Fd%26e");
        assert_eq!(encode("ok-1_2.3~"), "ok-1_2.3~");
    }
}
