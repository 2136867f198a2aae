//! `after:` triggers against the real daemon (`sluice server`): a pipeline starts when runs of
//! another one end a given way, only after enough breaches within the window, never twice in
//! its cooldown, once per qualifying run across `kill -9`, also for runs that finished while no
//! daemon ran.

use std::time::Duration;

use sluice_tests::cluster::{http, Server};
use sluice_tests::{wait_until, Scratch};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A monitor whose `check` step says whether it saw drift (`-p drift=true`).
const MONITOR: &str = "name: monitor
params:
  drift: {type: string, default: \"false\"}
steps:
  check:
    run: echo \"drift=$PARAM_DRIFT\" >> \"$SLUICE_OUTPUTS\"
";

fn retrain(breaches: &str, cooldown: &str) -> String {
    format!(
        "name: retrain
params:
  source: {{type: string, default: none}}
  drift: {{type: string, default: unknown}}
triggers:
  - after:
      pipeline: monitor
      status: succeeded
      when: steps.check.outputs.drift == \"true\"
      breaches: {breaches}
      cooldown: {cooldown}
    params: {{source: run.id, drift: steps.check.outputs.drift}}
steps:
  fit:
    run: echo \"retrained after $PARAM_SOURCE\"
"
    )
}

/// Starts a monitor run through the API and waits for it (and for the daemon to follow it).
fn monitor(server: &Server, drift: bool) -> String {
    let body = format!("{{\"params\": {{\"drift\": \"{drift}\"}}}}");
    let (status, reply) = http(
        "POST",
        &format!("{}/api/v1/pipelines/monitor/runs", server.url()),
        None,
        Some(&body),
    );
    assert_eq!(status, 201, "{reply}");
    let id = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["run"]["id"]
        .as_str()
        .expect("run id")
        .to_string();
    wait_until("the monitor run to finish", TIMEOUT, || {
        server.get(&format!("/api/v1/runs/{id}"))["run"]["status"] == "succeeded"
    });
    id
}

fn runs_of(server: &Server, pipeline: &str) -> Vec<serde_json::Value> {
    server
        .runs()
        .into_iter()
        .filter(|r| r["pipeline"] == pipeline)
        .collect()
}

/// Gives the daemon time to follow what finished (it looks twice a second).
fn settle() {
    std::thread::sleep(Duration::from_millis(2000));
}

#[test]
fn two_breaches_start_one_run_that_records_its_source_and_cooldown_holds_the_next() {
    let scratch = Scratch::new();
    scratch.write("pipelines/monitor.yaml", MONITOR);
    scratch.write(
        "pipelines/retrain.yaml",
        &retrain("{count: 2, within: 1h}", "1h"),
    );
    let server = Server::start(&scratch, &[]);

    // A calm run and one breach: nothing starts.
    monitor(&server, false);
    monitor(&server, true);
    settle();
    assert!(
        runs_of(&server, "retrain").is_empty(),
        "one breach started retraining"
    );

    // The second breach within the hour starts retraining, once.
    let second = monitor(&server, true);
    wait_until("retraining to start", TIMEOUT, || {
        runs_of(&server, "retrain").len() == 1
    });
    let run = &runs_of(&server, "retrain")[0];
    assert_eq!(
        run["trigger"],
        format!("after monitor run {second}"),
        "{run}"
    );
    assert_eq!(run["params"]["source"], second.as_str(), "{run}");
    assert_eq!(run["params"]["drift"], "true", "{run}");

    // Two more breaches: enough to start, but within the cooldown: held back and said so.
    monitor(&server, true);
    monitor(&server, true);
    settle();
    assert_eq!(runs_of(&server, "retrain").len(), 1, "cooldown ignored");
    let skipped = server.get("/api/v1/pipelines/retrain/skipped");
    let reasons = skipped["skipped"].to_string();
    assert!(reasons.contains("cooldown"), "{skipped}");
}

#[test]
fn each_qualifying_run_starts_once_across_kill_9_and_runs_finished_while_down_count() {
    let scratch = Scratch::new();
    scratch.write("pipelines/monitor.yaml", MONITOR);
    scratch.write("pipelines/retrain.yaml", &retrain("{count: 1}", "0s"));
    let mut server = Server::start(&scratch, &[]);
    let first = monitor(&server, true);
    wait_until("retraining after the first breach", TIMEOUT, || {
        runs_of(&server, "retrain").len() == 1
    });

    // Killed and restarted at once, twice: the breach it already acted on starts nothing new.
    for _ in 0..2 {
        server.kill9();
        server.restart(&scratch);
        settle();
    }
    assert_eq!(
        runs_of(&server, "retrain").len(),
        1,
        "a breach started twice"
    );

    // While no daemon runs, two monitor runs finish through `sluice run` on the same data dir:
    // the next daemon follows both.
    server.kill9();
    for drift in ["true", "true"] {
        let out = scratch.run(&[
            "run",
            "pipelines/monitor.yaml",
            "-p",
            &format!("drift={drift}"),
        ]);
        assert!(out.status.success(), "{}", sluice_tests::text(&out.stderr));
    }
    server.restart(&scratch);
    wait_until(
        "retraining for the runs that finished while down",
        TIMEOUT,
        || runs_of(&server, "retrain").len() == 3,
    );
    settle();
    let retrains = runs_of(&server, "retrain");
    assert_eq!(retrains.len(), 3, "{retrains:#?}");
    let mut sources: Vec<&str> = retrains
        .iter()
        .map(|r| r["params"]["source"].as_str().unwrap())
        .collect();
    sources.sort();
    sources.dedup();
    assert_eq!(
        sources.len(),
        3,
        "one breach started two runs: {retrains:#?}"
    );
    assert!(sources.contains(&first.as_str()));
    for run in &retrains {
        wait_until("retraining to finish", TIMEOUT, || {
            server.get(&format!("/api/v1/runs/{}", run["id"].as_str().unwrap()))["run"]["status"]
                == "succeeded"
        });
    }
}

#[test]
fn a_trigger_added_later_does_not_act_on_history() {
    let scratch = Scratch::new();
    scratch.write("pipelines/monitor.yaml", MONITOR);
    let server = Server::start(&scratch, &[]);
    monitor(&server, true);
    monitor(&server, true);
    // The retraining pipeline appears after those runs finished.
    scratch.write("pipelines/retrain.yaml", &retrain("{count: 1}", "0s"));
    wait_until("the new pipeline to load", TIMEOUT, || {
        server
            .get("/api/v1/pipelines")
            .to_string()
            .contains("retrain")
    });
    settle();
    assert!(
        runs_of(&server, "retrain").is_empty(),
        "acted on runs from before it existed"
    );
    let fresh = monitor(&server, true);
    wait_until("retraining after a fresh breach", TIMEOUT, || {
        runs_of(&server, "retrain").len() == 1
    });
    assert_eq!(
        runs_of(&server, "retrain")[0]["params"]["source"],
        fresh.as_str()
    );
}
