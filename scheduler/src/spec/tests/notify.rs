//! `notify:`: what `validate` reads and refuses.

use super::*;
use crate::spec::notify::{NotifyFormat, NotifyOn};

#[test]
fn notify_targets_read_their_fields_and_default_to_failures_as_json() {
    let p = valid(
        "name: p\nnotify:\n  - webhook: https://hooks.example/a\n  - {webhook: http://10.0.0.1:8080/b, on: [succeeded, failed], format: slack, secret_env: HOOK}\nsteps:\n  a: {run: x}\n",
    );
    assert_eq!(p.notify.len(), 2);
    assert_eq!(p.notify[0].on, vec![NotifyOn::Failed]);
    assert_eq!(p.notify[0].format, NotifyFormat::Json);
    assert_eq!(p.notify[1].on, vec![NotifyOn::Succeeded, NotifyOn::Failed]);
    assert_eq!(p.notify[1].format, NotifyFormat::Slack);
    assert_eq!(p.notify[1].secret_env.as_deref(), Some("HOOK"));
    let one = valid("name: p\nnotify: {webhook: \"https://h/x\"}\nsteps:\n  a: {run: x}\n");
    assert_eq!(one.notify.len(), 1, "a single mapping is a list of one");
}

#[test]
fn notify_mistakes_name_their_field() {
    for (notify, field, says) in [
        ("[{on: [failed]}]", "notify[0]", "needs a `webhook` URL"),
        (
            "[{webhook: ftp://h/x}]",
            "notify[0].webhook",
            "is not an http:// or https:// URL",
        ),
        (
            "[{webhook: not a url}]",
            "notify[0].webhook",
            "is not an http:// or https:// URL",
        ),
        (
            "[{webhook: \"https://h\", on: [fail]}]",
            "notify[0].on",
            "expected one of succeeded, failed, cancelled",
        ),
        (
            "[{webhook: \"https://h\", format: teams}]",
            "notify[0].format",
            "expected one of json, slack",
        ),
        (
            "[{webhook: \"https://h\", secret_env: \"1X\"}]",
            "notify[0].secret_env",
            "",
        ),
        (
            "[{webhook: \"https://h\", when: failed}]",
            "notify[0].when",
            "unknown key `when`",
        ),
        ("yes", "notify", "must be a list"),
    ] {
        let text = format!("name: p\nnotify: {notify}\nsteps:\n  a: {{run: x}}\n");
        let d = one_error(&text);
        assert_eq!(d.field, field, "{notify}: {d}");
        assert!(d.message.contains(says), "{notify}: {d}");
        assert_eq!(d.line, 2, "{notify}: {d}");
    }
}
