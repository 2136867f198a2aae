//! `GET /metrics` of the real daemons: the text passes `promtool check metrics` (Prometheus'
//! own parser and linter), and it counts what happened: runs by final state, steps, trigger
//! firings, a refused webhook by its reason, tasks waiting in the Redis queue, workers. With
//! tokens configured it is a read: a read token gets it, no token does not.
//!
//! Without `promtool` the check by it is skipped with a printed reason (the rest still runs),
//! unless `SLUICE_REQUIRE_PROMTOOL=1` (CI sets it), where it fails. The Redis test is skipped
//! without `redis-server` likewise (`SLUICE_REQUIRE_REDIS=1`).

use std::time::Duration;

use sluice_tests::cluster::{http, post_with_headers, Cluster, Server};
use sluice_tests::promtool::{check_metrics, promtool_available};
use sluice_tests::{text, wait_until, workspace_root, Scratch};

/// Checks `metrics` with promtool, when there is one (see the module docs).
fn promtool_accepts(metrics: &str) {
    if promtool_available() {
        if let Err(why) = check_metrics(metrics) {
            panic!("{why}\n--- the scraped text:\n{metrics}");
        }
    }
}

/// The value of the sample `series` (name and labels exactly as written) in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

fn start_run(server: &Server, pipeline: &str, body: &str) -> String {
    let (status, reply) = http(
        "POST",
        &format!("{}/api/v1/pipelines/{pipeline}/runs", server.url()),
        None,
        Some(body),
    );
    assert_eq!(status, 201, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    reply["run"]["id"].as_str().unwrap().to_string()
}

fn wait_status(server: &Server, run: &str, status: &str) {
    wait_until(
        &format!("run {run} to be {status}"),
        Duration::from_secs(60),
        || server.get(&format!("/api/v1/runs/{run}"))["run"]["status"] == status,
    );
}

#[test]
fn the_servers_metrics_pass_promtool_and_count_runs_steps_triggers_and_refused_webhooks() {
    let s = Scratch::new();
    s.write(
        "pipelines/nightly.yaml",
        "name: nightly
params: {fail: \"no\"}
triggers:
  - webhook: data
    secret_env: HOOK_SECRET
steps:
  fit:
    run: test \"$PARAM_FAIL\" != yes
",
    );
    let server = Server::start(&s, &[("HOOK_SECRET", "s3cret")]);
    let ok = start_run(&server, "nightly", "");
    wait_status(&server, &ok, "succeeded");
    let failing = start_run(&server, "nightly", r#"{"params": {"fail": "yes"}}"#);
    wait_status(&server, &failing, "failed");
    let (status, reply) = post_with_headers(
        &format!("{}/hooks/nightly/data", server.url()),
        &[("X-Sluice-Signature", format!("sha256={}", "0".repeat(64)))],
        b"{}",
    );
    assert_eq!(status, 401, "a wrong signature is refused: {reply}");
    let (status, reply) =
        post_with_headers(&format!("{}/hooks/nightly/nope", server.url()), &[], b"{}");
    assert_eq!(status, 404, "{reply}");

    // The counters are bumped right after the commit the API reads: wait for the last one.
    let mut metrics = String::new();
    wait_until(
        "the failed run to be counted",
        Duration::from_secs(30),
        || {
            let (status, body) = http("GET", &format!("{}/metrics", server.url()), None, None);
            assert_eq!(status, 200, "{body}");
            metrics = body;
            let failed = r#"sluice_runs_finished_total{pipeline="nightly",state="failed"}"#;
            sample(&metrics, failed) == Some(1.0)
        },
    );
    promtool_accepts(&metrics);
    let expect = [
        (r#"sluice_runs_started_total{pipeline="nightly"}"#, 2.0),
        (
            r#"sluice_runs_finished_total{pipeline="nightly",state="succeeded"}"#,
            1.0,
        ),
        (
            r#"sluice_runs_finished_total{pipeline="nightly",state="failed"}"#,
            1.0,
        ),
        (
            r#"sluice_runs_finished_total{pipeline="nightly",state="cancelled"}"#,
            0.0,
        ),
        (
            r#"sluice_steps_finished_total{pipeline="nightly",state="succeeded"}"#,
            1.0,
        ),
        (
            r#"sluice_steps_finished_total{pipeline="nightly",state="failed"}"#,
            1.0,
        ),
        (
            r#"sluice_step_duration_seconds_count{pipeline="nightly"}"#,
            2.0,
        ),
        (
            r#"sluice_trigger_firings_total{kind="api",pipeline="nightly"}"#,
            2.0,
        ),
        (
            r#"sluice_webhook_rejections_total{reason="bad_signature"}"#,
            1.0,
        ),
        (r#"sluice_webhook_rejections_total{reason="unknown"}"#, 1.0),
        (r#"sluice_workers{state="alive"}"#, 1.0),
        (r#"sluice_queue_depth{queue="default"}"#, 0.0),
        (r#"sluice_scrape_source_up{source="queue"}"#, 1.0),
        (r#"sluice_scrape_source_up{source="store"}"#, 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} should be {value} in:\n{metrics}"
        );
    }
    assert!(
        sample(&metrics, "sluice_store_size_bytes").is_some_and(|bytes| bytes > 0.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&ok) && !metrics.contains("step=\"") && !metrics.contains("fit"),
        "no run id or step name is a label:\n{metrics}"
    );
    // Every metric served is documented.
    let readme = metrics_section_of_readme();
    for family in metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap_or_default();
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is served but not in README.md's Metrics section"
        );
    }
}

/// README.md's `## Metrics` section.
fn metrics_section_of_readme() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let start = readme
        .find("\n## Metrics\n")
        .expect("README.md has a Metrics section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

#[test]
fn the_grafana_dashboards_queries_parse_and_use_only_documented_metrics() {
    let path = workspace_root().join("examples/grafana/dashboards/sluice.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_string())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let readme = metrics_section_of_readme();
    let wanted = [
        "sluice_runs_finished_total",
        "sluice_step_duration_seconds_bucket",
        "sluice_queue_depth",
        "sluice_queue_oldest_age_seconds",
        "sluice_workers",
        "sluice_worker_slots_free",
        "sluice_worker_gpus_free",
        "sluice_webhook_rejections_total",
        "sluice_trigger_firings_total",
    ];
    for name in wanted {
        assert!(
            exprs.iter().any(|e| e.contains(name)),
            "no panel shows {name}"
        );
    }
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("sluice_") {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word);
            assert!(
                readme.contains(&format!("`{family}`")),
                "{family} (in `{expr}`) is not in README.md's Metrics section"
            );
        }
    }
    // Each query parses as PromQL: promtool checks them as recording rules, with Grafana's
    // variables given values.
    if !promtool_available() {
        return;
    }
    let scratch = Scratch::new();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$pipeline", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = scratch.write("rules.yml", &rules);
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}\n{rules}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_schedulers_metrics_need_a_read_token_and_show_the_tasks_waiting_in_redis() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline("waits", "name: waits\nsteps:\n  only:\n    run: 'true'\n");
    let made = cluster
        .scratch
        .run(&["token", "new", "prometheus", "--role", "read"]);
    let made = text(&made.stdout);
    let viewer = made
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("token: ")
        .to_string();
    let line = made
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("tokens file line: ");
    let tokens = cluster.scratch.write("tokens", &format!("{line}\n"));
    cluster.start_scheduler_with(&[
        "--api-token",
        "s3cret",
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    cluster.client_token = Some("s3cret".into());
    // No worker: the run's task waits in the Redis stream.
    let run = cluster.trigger("waits");
    let url = format!("{}/metrics", cluster.server());
    assert_eq!(http("GET", &url, None, None).0, 401, "a token is needed");
    let mut metrics = String::new();
    wait_until(
        "the task to be counted as waiting",
        Duration::from_secs(30),
        || {
            let (status, body) = http("GET", &url, Some(&viewer), None);
            assert_eq!(status, 200, "a read token may scrape: {body}");
            metrics = body;
            sample(&metrics, r#"sluice_queue_depth{queue="default"}"#) == Some(1.0)
        },
    );
    promtool_accepts(&metrics);
    for (series, value) in [
        (
            r#"sluice_runs_active{pipeline="waits",state="running"}"#,
            1.0,
        ),
        (r#"sluice_workers{state="alive"}"#, 0.0),
        ("sluice_worker_slots_free", 0.0),
        (r#"sluice_scrape_source_up{source="workers"}"#, 1.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} should be {value} in:\n{metrics}"
        );
    }
    assert!(
        sample(
            &metrics,
            r#"sluice_queue_oldest_age_seconds{queue="default"}"#
        )
        .is_some(),
        "{metrics}"
    );
    // A worker takes the task: nothing waits, and the run's counters show it.
    let _worker = cluster.start_worker("w", 2);
    cluster.wait_run(&run, Duration::from_secs(60));
    wait_until(
        "the worker and the run to be counted",
        Duration::from_secs(30),
        || {
            let (_, body) = http("GET", &url, Some(&viewer), None);
            metrics = body;
            let succeeded = r#"sluice_runs_finished_total{pipeline="waits",state="succeeded"}"#;
            sample(&metrics, r#"sluice_workers{state="alive"}"#) == Some(1.0)
                && sample(&metrics, succeeded) == Some(1.0)
        },
    );
    promtool_accepts(&metrics);
    for (series, value) in [
        (r#"sluice_queue_depth{queue="default"}"#, 0.0),
        (r#"sluice_queue_oldest_age_seconds{queue="default"}"#, 0.0),
        (
            r#"sluice_runs_finished_total{pipeline="waits",state="succeeded"}"#,
            1.0,
        ),
        ("sluice_worker_slots", 2.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} should be {value} in:\n{metrics}"
        );
    }
}
