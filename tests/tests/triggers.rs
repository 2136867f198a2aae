//! Triggers against the real daemon (`sluice server`; the scheduler runs the same trigger code):
//! cron across restarts, webhook authentication and dedupe, overlap races, watched folders,
//! reloading edited pipeline files.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_tests::cluster::{post_with_headers, Server};
use sluice_tests::{wait_until, Scratch};

const TIMEOUT: Duration = Duration::from_secs(60);

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn instant_of(run: &serde_json::Value) -> String {
    let trigger = run["trigger"].as_str().unwrap_or_default();
    trigger
        .split(" @ ")
        .nth(1)
        .unwrap_or_else(|| panic!("not a cron run: {run}"))
        .to_string()
}

#[test]
fn cron_fires_each_instant_once_across_a_restart() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/tick.yaml",
        "name: tick\ntriggers:\n  - cron: \"* * * * * *\"\n    catchup: all\nsteps:\n  a:\n    uses: noop\n",
    );
    let mut server = Server::start(&scratch, &[]);
    wait_until("two cron runs", TIMEOUT, || server.runs().len() >= 2);
    server.kill9();
    std::thread::sleep(Duration::from_millis(2500));
    server.restart(&scratch);
    let before = server.runs().len();
    wait_until("more cron runs after the restart", TIMEOUT, || {
        server.runs().len() >= before + 3
    });
    server.kill9();
    server.restart(&scratch);
    std::thread::sleep(Duration::from_secs(1));
    let runs = server.runs();
    let mut instants: Vec<String> = runs.iter().map(instant_of).collect();
    let count = instants.len();
    instants.sort();
    instants.dedup();
    assert_eq!(instants.len(), count, "an instant fired twice: {runs:#?}");
    // catchup: all ran the seconds missed while it was down: no gap between instants.
    let seconds: Vec<i64> = instants.iter().map(|i| chrono_seconds(i)).collect();
    for pair in seconds.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1,
            "a missed instant was not caught up: {instants:?}"
        );
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time like `2026-11-28T10:00:01+00:00`.
fn chrono_seconds(text: &str) -> i64 {
    let (date, time) = text.split_once('T').unwrap();
    let mut d = date.split('-').map(|p| p.parse::<i64>().unwrap());
    let (y, m, day) = (d.next().unwrap(), d.next().unwrap(), d.next().unwrap());
    let t: Vec<i64> = time[..8].split(':').map(|p| p.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]
}

#[test]
fn webhooks_check_signatures_dedupe_deliveries_and_map_params() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/ingest.yaml",
        "name: ingest\nparams:\n  dataset: {type: string}\n  size: {type: integer, default: 0}\ntriggers:\n  - webhook: s3\n    secret_env: HOOK_SECRET\n    params:\n      dataset: Records.0.s3.object.key\n      size: Records.0.s3.object.size\nsteps:\n  a:\n    run: echo \"$PARAM_DATASET $PARAM_SIZE\"\n",
    );
    let server = Server::start(&scratch, &[("HOOK_SECRET", "old-secret,new-secret")]);
    let url = format!("{}/hooks/ingest/s3", server.url());
    let body = br#"{"Records":[{"s3":{"object":{"key":"landing/2026-11-28.csv","size":1234}}}]}"#;

    let (status, _) = post_with_headers(&url, &[], body);
    assert_eq!(status, 401, "unsigned");
    let wrong = sign("guess", body);
    let (status, _) = post_with_headers(&url, &[("X-Sluice-Signature", wrong)], body);
    assert_eq!(status, 401, "wrong secret");
    assert!(
        server.runs().is_empty(),
        "a refused delivery starts and stores nothing"
    );

    let signed = sign("new-secret", body);
    let delivery = ("X-Sluice-Delivery", "delivery-1".to_string());
    let (status, answer) = post_with_headers(
        &url,
        &[("X-Sluice-Signature", signed.clone()), delivery.clone()],
        body,
    );
    assert_eq!(status, 202, "{answer}");
    let first: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let (status, again) = post_with_headers(
        &url,
        &[("X-Sluice-Signature", signed.clone()), delivery],
        body,
    );
    assert_eq!(status, 202);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        again["run"], first["run"],
        "a redelivery returns the first run"
    );
    assert_eq!(again["duplicate"], true);
    // A captured delivery replayed with a fresh (unsigned) delivery id starts nothing either:
    // a plain signature covers the body only, so the body is what is deduplicated.
    let (status, replay) = post_with_headers(
        &url,
        &[
            ("X-Sluice-Signature", signed.clone()),
            ("X-Sluice-Delivery", "attacker-chosen".to_string()),
        ],
        body,
    );
    assert_eq!(status, 202);
    let replay: serde_json::Value = serde_json::from_str(&replay).unwrap();
    assert_eq!(replay["run"], first["run"], "{replay}");
    assert_eq!(server.runs().len(), 1);
    // GitHub's header, signed with the old secret (rotation), for a new event.
    let next = br#"{"Records":[{"s3":{"object":{"key":"landing/2026-11-29.csv","size":1}}}]}"#;
    let (status, _) = post_with_headers(
        &url,
        &[("X-Hub-Signature-256", sign("old-secret", next))],
        next,
    );
    assert_eq!(status, 202);
    assert_eq!(server.runs().len(), 2);

    let run = first["run"].as_str().unwrap();
    let shown = server.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(shown["run"]["params"]["dataset"], "landing/2026-11-28.csv");
    assert_eq!(shown["run"]["params"]["size"], "1234");
    assert_eq!(shown["run"]["trigger"], "webhook:s3");

    let missing = br#"{"Records":[{"s3":{"object":{"size":1}}}]}"#;
    let (status, answer) = post_with_headers(
        &url,
        &[("X-Sluice-Signature", sign("new-secret", missing))],
        missing,
    );
    assert_eq!(status, 422);
    assert!(
        answer.contains("dataset") && answer.contains("Records.0.s3.object.key"),
        "{answer}"
    );
    let mistyped = br#"{"Records":[{"s3":{"object":{"key":"k","size":"big"}}}]}"#;
    let (status, answer) = post_with_headers(
        &url,
        &[("X-Sluice-Signature", sign("new-secret", mistyped))],
        mistyped,
    );
    assert_eq!(status, 422);
    assert!(answer.contains("size"), "{answer}");

    let huge = vec![b' '; 2 << 20];
    let (status, _) = post_with_headers(
        &url,
        &[("X-Sluice-Signature", sign("new-secret", &huge))],
        &huge,
    );
    assert_eq!(status, 413);
    let (status, _) = post_with_headers(
        &format!("{}/hooks/ingest/nope", server.url()),
        &[("X-Sluice-Signature", signed)],
        body,
    );
    assert_eq!(status, 404);
    assert_eq!(server.runs().len(), 2, "no failed delivery started a run");
}

#[test]
fn twenty_deliveries_at_once_with_limit_one_and_skip_start_exactly_one_run() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/single.yaml",
        "name: single\nconcurrency: {limit: 1, overlap: skip}\ntriggers:\n  - webhook: go\n    insecure: true\nsteps:\n  a:\n    run: sleep 2\n",
    );
    let server = Server::start(&scratch, &[]);
    let url = format!("{}/hooks/single/go", server.url());
    let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let url = url.clone();
                scope.spawn(move || {
                    post_with_headers(&url, &[("Idempotency-Key", format!("k{i}"))], b"{}")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let started = statuses.iter().filter(|(s, _)| *s == 202).count();
    let skipped = statuses
        .iter()
        .filter(|(s, b)| *s == 200 && b.contains("skipped"))
        .count();
    assert_eq!((started, skipped), (1, 19), "{statuses:?}");
    assert_eq!(server.runs().len(), 1);
    let recorded = server.get("/api/v1/pipelines/single/skipped");
    assert_eq!(recorded["skipped"].as_array().unwrap().len(), 19);
}

#[test]
fn overlap_queue_runs_one_at_a_time_in_order() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/queued.yaml",
        "name: queued\nconcurrency: {limit: 1, overlap: queue}\nsteps:\n  a:\n    run: echo \"start $SLUICE_RUN_ID\" >> ../order.log; sleep 0.5; echo \"end $SLUICE_RUN_ID\" >> ../order.log\n",
    );
    let server = Server::start(&scratch, &[]);
    for _ in 0..3 {
        let (status, body) = sluice_tests::cluster::http(
            "POST",
            &format!("{}/api/v1/pipelines/queued/runs", server.url()),
            None,
            None,
        );
        assert_eq!(status, 201, "{body}");
    }
    wait_until("three runs to succeed", TIMEOUT, || {
        server
            .runs()
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count()
            == 3
    });
    let log = std::fs::read_to_string(scratch.path().join("order.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 6);
    for pair in lines.chunks(2) {
        let start = pair[0].strip_prefix("start ").unwrap();
        assert_eq!(pair[1], format!("end {start}"), "runs overlapped: {log}");
    }
}

#[test]
fn a_new_file_in_a_watched_folder_starts_one_run_also_across_restarts() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/landing.yaml",
        "name: landing\nparams:\n  path: {type: string}\ntriggers:\n  - watch: {path: ../landing, pattern: \"*.csv\"}\nsteps:\n  a:\n    run: cat \"$PARAM_PATH\"\n",
    );
    std::fs::create_dir_all(scratch.path().join("landing")).unwrap();
    // Outside the pipelines folder: the daemon reads it only when told it may.
    let landing = scratch.path().join("landing").display().to_string();
    let mut server = Server::start(&scratch, &[("SLUICE_ALLOW_WATCH", &landing)]);
    scratch.write("landing/ignored.txt", "not a csv");
    scratch.write("landing/a.csv", "x,y\n1,2\n");
    wait_until("a run for a.csv", TIMEOUT, || server.runs().len() == 1);
    let run = &server.runs()[0];
    assert!(
        run["params"]["path"]
            .as_str()
            .unwrap()
            .ends_with("landing/a.csv"),
        "{run}"
    );
    server.kill9();
    server.restart(&scratch);
    scratch.write("landing/b.csv", "x,y\n3,4\n");
    wait_until("a run for b.csv", TIMEOUT, || server.runs().len() == 2);
    std::thread::sleep(Duration::from_secs(2));
    let runs = server.runs();
    assert_eq!(runs.len(), 2, "a.csv started again: {runs:#?}");
    assert!(runs[0]["params"]["path"]
        .as_str()
        .unwrap()
        .ends_with("b.csv"));
}

#[test]
fn an_edited_pipeline_takes_effect_and_a_broken_one_keeps_its_last_good_version() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "pipelines/edit.yaml",
        "name: edit\nsteps:\n  a:\n    run: echo one\n",
    );
    let server = Server::start(&scratch, &[]);
    let trigger = || {
        let (status, body) = sluice_tests::cluster::http(
            "POST",
            &format!("{}/api/v1/pipelines/edit/runs", server.url()),
            None,
            None,
        );
        assert_eq!(status, 201, "{body}");
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();
        created["run"].clone()
    };
    let first = trigger();
    std::fs::write(
        &file,
        "name: edit\nsteps:\n  a:\n    run: echo two\n  b:\n    depends: a\n    run: echo three\n",
    )
    .unwrap();
    wait_until("the edit to load", TIMEOUT, || {
        server.get("/api/v1/pipelines")["pipelines"][0]["steps"]
            .as_array()
            .is_some_and(|s| s.len() == 2)
    });
    let second = trigger();
    assert_ne!(first["definition_hash"], second["definition_hash"]);
    assert_eq!(second["step_count"], 2);

    std::fs::write(&file, "name: edit\nsteps:\n  a:\n    rum: oops\n").unwrap();
    wait_until("the broken file to be reported", TIMEOUT, || {
        server.get("/api/v1/pipelines")["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    });
    let listed = server.get("/api/v1/pipelines");
    let error = &listed["errors"][0];
    assert!(error["problems"].to_string().contains("rum"), "{error}");
    assert_eq!(error["serving_last_good"], second["definition_hash"]);
    let third = trigger();
    assert_eq!(
        third["definition_hash"], second["definition_hash"],
        "the last good version runs"
    );
}

#[test]
fn a_server_killed_mid_step_finishes_the_run_after_a_restart() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/two.yaml",
        "name: two\nsteps:\n  slow:\n    run: echo \"slow $SLUICE_ATTEMPT\" >> ../ran.log; sleep 2\n  after:\n    depends: slow\n    run: echo after >> ../ran.log\n",
    );
    let mut server = Server::start(&scratch, &[]);
    let (status, body) = sluice_tests::cluster::http(
        "POST",
        &format!("{}/api/v1/pipelines/two/runs", server.url()),
        None,
        None,
    );
    assert_eq!(status, 201, "{body}");
    let ran = scratch.path().join("ran.log");
    wait_until("the slow step to start", TIMEOUT, || ran.exists());
    server.kill9();
    server.restart(&scratch);
    wait_until("the run to succeed", TIMEOUT, || {
        server
            .runs()
            .first()
            .is_some_and(|r| r["status"] == "succeeded")
    });
    let log = std::fs::read_to_string(&ran).unwrap();
    assert!(log.ends_with("after\n"), "{log}");
}
