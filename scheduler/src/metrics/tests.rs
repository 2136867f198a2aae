use serde_json::json;
use sluice_worker::queue::Backlog;

use super::*;
use crate::engine::RunObserver;
use crate::store::{RunRecord, StepRecord};

fn run(status: &str) -> RunRecord {
    serde_json::from_value(json!({
        "id": "01RUN", "pipeline": "churn", "definition_hash": "h", "trigger": "api",
        "params": {}, "base_dir": "/tmp", "parallelism": 2, "status": status,
        "created_ms": 1000, "finished_ms": null, "step_count": 2,
    }))
    .unwrap()
}

fn step(name: &str, status: &str, started_ms: Option<u64>, finished_ms: Option<u64>) -> StepRecord {
    let attempts = match started_ms {
        Some(_) => json!([{
            "number": 1, "status": status, "outcome": null, "exit_code": 0, "signal": null,
            "worker": "w", "queued_ms": 0, "started_ms": started_ms,
            "finished_ms": finished_ms, "message": null, "dir": "/tmp/a",
        }]),
        None => json!([]),
    };
    serde_json::from_value(json!({
        "run_id": "01RUN", "name": name, "index": 0, "status": status, "attempts": attempts,
        "outputs": {}, "metrics": {}, "reason": null, "retry_at_ms": null,
    }))
    .unwrap()
}

/// The sample lines of `text` (no comments), for exact comparisons.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

fn has(text: &str, line: &str) -> bool {
    samples(text).contains(&line)
}

#[test]
fn a_run_and_its_steps_are_counted_once_when_final_and_kept_steps_not_at_all() {
    let metrics = Metrics::default();
    let mut tally = RunTally::new(metrics.clone(), ["kept".to_string()]);
    let running = run("running");
    // Created: the kept step is already final (it ran in an earlier run).
    tally.on_step(&running, &step("kept", "succeeded", Some(0), Some(1)));
    tally.on_step(&running, &step("fit", "running", Some(1000), None));
    tally.on_run(&running);
    // Final, then committed again with a note: counted once.
    let fit = step("fit", "failed", Some(1000), Some(3500));
    tally.on_step(&running, &fit);
    tally.on_step(&running, &fit);
    tally.on_step(&running, &step("report", "skipped", None, None));
    let failed = run("failed");
    tally.on_run(&failed);
    tally.on_run(&failed);

    let text = metrics.encode(&Snapshot::default()).unwrap();
    assert!(
        has(
            &text,
            r#"sluice_runs_finished_total{pipeline="churn",state="failed"} 1"#
        ),
        "{text}"
    );
    assert!(has(
        &text,
        r#"sluice_steps_finished_total{pipeline="churn",state="failed"} 1"#
    ));
    assert!(has(
        &text,
        r#"sluice_steps_finished_total{pipeline="churn",state="skipped"} 1"#
    ));
    assert!(!text.contains(r#"state="succeeded"} 1"#), "{text}");
    // Only the step that ran has a duration: 2.5 s, in the buckets from 2.5 s up.
    for line in [
        r#"sluice_step_duration_seconds_count{pipeline="churn"} 1"#,
        r#"sluice_step_duration_seconds_sum{pipeline="churn"} 2.5"#,
        r#"sluice_step_duration_seconds_bucket{pipeline="churn",le="1"} 0"#,
        r#"sluice_step_duration_seconds_bucket{pipeline="churn",le="2.5"} 1"#,
        r#"sluice_step_duration_seconds_bucket{pipeline="churn",le="+Inf"} 1"#,
    ] {
        assert!(has(&text, line), "{line} missing from:\n{text}");
    }
}

#[test]
fn triggers_rejections_and_lost_leases_are_counted_by_their_bounded_labels() {
    let metrics = Metrics::default();
    metrics.run_started(TriggerKind::from(&TriggerOrigin::Api { by: None }), "churn");
    metrics.run_started(TriggerKind::Cron, "churn");
    metrics.trigger_skipped(TriggerKind::Webhook, "churn");
    metrics.webhook_rejected(WebhookRejection::BadSignature);
    metrics.webhook_rejected(WebhookRejection::BadSignature);
    metrics.lease_lost("gpu");
    let text = metrics.encode(&Snapshot::default()).unwrap();
    for line in [
        r#"sluice_runs_started_total{pipeline="churn"} 2"#,
        r#"sluice_trigger_firings_total{kind="api",pipeline="churn"} 1"#,
        r#"sluice_trigger_firings_total{kind="cron",pipeline="churn"} 1"#,
        r#"sluice_trigger_skips_total{kind="webhook",pipeline="churn"} 1"#,
        r#"sluice_webhook_rejections_total{reason="bad_signature"} 2"#,
        r#"sluice_leases_lost_total{queue="gpu"} 1"#,
    ] {
        assert!(has(&text, line), "{line} missing from:\n{text}");
    }
}

#[test]
fn loaded_pipelines_show_their_run_counters_from_zero() {
    let metrics = Metrics::default();
    let snapshot = Snapshot {
        pipelines: vec!["nightly".into()],
        ..Snapshot::default()
    };
    let text = metrics.encode(&snapshot).unwrap();
    for line in [
        r#"sluice_runs_started_total{pipeline="nightly"} 0"#,
        r#"sluice_runs_finished_total{pipeline="nightly",state="succeeded"} 0"#,
        r#"sluice_runs_finished_total{pipeline="nightly",state="failed"} 0"#,
        r#"sluice_runs_finished_total{pipeline="nightly",state="cancelled"} 0"#,
    ] {
        assert!(has(&text, line), "{line} missing from:\n{text}");
    }
}

#[test]
fn the_gauges_of_a_snapshot_and_the_sources_that_did_not_answer() {
    let snapshot = Snapshot {
        pipelines: vec![],
        active_runs: [("churn".to_string(), (2, 1))].into(),
        backlog: Some(vec![Backlog {
            queue: "gpu".into(),
            waiting: 3,
            oldest_wait_ms: 1500,
        }]),
        workers: Some(WorkerCounts {
            alive: 2,
            gone: 1,
            slots: 8,
            slots_free: 5,
            gpus: 4,
            gpus_free: 1,
        }),
        store_bytes: None,
        aliases: Some(vec![("churn".into(), "production".into(), 7)]),
    };
    let text = Metrics::default().encode(&snapshot).unwrap();
    for line in [
        r#"sluice_runs_active{pipeline="churn",state="running"} 2"#,
        r#"sluice_runs_active{pipeline="churn",state="waiting"} 1"#,
        r#"sluice_queue_depth{queue="gpu"} 3"#,
        r#"sluice_queue_oldest_age_seconds{queue="gpu"} 1.5"#,
        r#"sluice_workers{state="alive"} 2"#,
        r#"sluice_workers{state="gone"} 1"#,
        "sluice_worker_slots 8",
        "sluice_worker_slots_free 5",
        "sluice_worker_gpus 4",
        "sluice_worker_gpus_free 1",
        r#"sluice_model_alias_version{model="churn",alias="production"} 7"#,
        r#"sluice_scrape_source_up{source="queue"} 1"#,
        r#"sluice_scrape_source_up{source="store"} 0"#,
    ] {
        assert!(has(&text, line), "{line} missing from:\n{text}");
    }
    assert!(!text.contains("sluice_store_size_bytes"), "{text}");
    let with_store = Snapshot {
        store_bytes: Some(4096),
        ..Snapshot::default()
    };
    let text = Metrics::default().encode(&with_store).unwrap();
    assert!(has(&text, "sluice_store_size_bytes 4096"), "{text}");
    assert!(
        text.contains("# TYPE sluice_store_size_bytes gauge"),
        "{text}"
    );
}

#[test]
fn a_drift_report_sets_each_columns_newest_score_and_verdict() {
    let metrics = Metrics::default();
    let mut tally = RunTally::new(metrics.clone(), []);
    let mut drift = step("check", "failed", Some(0), Some(10));
    drift.metrics = serde_json::from_value(json!({
        "drift": true, "drift_share": 0.5, "drifted_columns": 1,
        "columns": {
            "age": {"method": "psi", "score": 0.31, "threshold": 0.2, "drifted": true, "kind": "numeric"},
            "plan": {"method": "chi2", "score": 0.8, "threshold": 0.05, "drifted": false, "kind": "categorical"}
        }
    }))
    .unwrap();
    tally.on_step(&run("running"), &drift);
    let text = metrics.encode(&Snapshot::default()).unwrap();
    assert!(
        has(
            &text,
            r#"sluice_drift_score{pipeline="churn",column="age"} 0.31"#
        ),
        "{text}"
    );
    assert!(
        has(
            &text,
            r#"sluice_drift_detected{pipeline="churn",column="age"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            &text,
            r#"sluice_drift_detected{pipeline="churn",column="plan"} 0"#
        ),
        "{text}"
    );
}
