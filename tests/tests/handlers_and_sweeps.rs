//! `on_failure:` and `finally:` steps, and `matrix:` sweeps, through the real binary: embedded,
//! and through Redis with a worker for the cancel (the worker must let a `finally:` step run
//! although its run was cancelled).

use std::time::Duration;

use sluice_tests::cluster::{lines, Cluster};
use sluice_tests::{step, text, wait_until, Scratch};

const SWEEP: &str = r#"name: sweep
steps:
  train:
    matrix: {lr: ["0.1", "0.01"], depth: [3, 5]}
    run: |
      echo "{\"score\": $MATRIX_DEPTH}" > "$SLUICE_METRICS"
      echo "$MATRIX_LR-$MATRIX_DEPTH" > "$SLUICE_OUT/cell.txt"
    outputs: [cell.txt]
  pick:
    depends: [train]
    run: cat "$SLUICE_IN"/train*/cell.txt | sort
on_failure:
  alert:
    run: echo "alert $SLUICE_FAILED_STEPS" >> ../handlers.log
finally:
  report:
    depends: [pick]
    run: echo "report $SLUICE_RUN_STATUS [$SLUICE_FAILED_STEPS]" >> ../handlers.log
"#;

fn handlers_log(s: &Scratch) -> Vec<String> {
    lines(&s.path().join("handlers.log"))
}

#[test]
fn a_sweep_runs_every_combination_and_the_join_reads_them_all() {
    let s = Scratch::new();
    let file = s.write("p/sweep.yaml", SWEEP);
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run = s.latest_run_id();

    let out = s.run(&["logs", &run, "pick"]);
    assert_eq!(
        text(&out.stdout).lines().collect::<Vec<_>>(),
        ["0.01-3", "0.01-5", "0.1-3", "0.1-5"],
        "each expansion's outputs under $SLUICE_IN/train[...]/"
    );
    let show = s.show(&run);
    let cell = step(&show, "train[lr=0.01,depth=5]");
    assert_eq!(
        cell["matrix"],
        serde_json::json!({"lr": "0.01", "depth": "5"})
    );
    assert_eq!(cell["metrics"]["score"], 5);
    assert_eq!(step(&show, "alert")["status"], "skipped");
    assert_eq!(step(&show, "alert")["phase"], "on_failure");
    assert_eq!(step(&show, "report")["phase"], "finally");
    assert_eq!(handlers_log(&s), ["report succeeded []"]);

    // `sluice show` puts the handlers apart and the sweep side by side.
    let out = s.run(&["show", &run]);
    let shown = text(&out.stdout);
    let at = |needle: &str| {
        shown
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in\n{shown}"))
    };
    assert!(
        at("STEP ") < at("ON FAILURE") && at("ON FAILURE") < at("FINALLY"),
        "{shown}"
    );
    assert!(
        at("FINALLY") < at("SWEEP train (4 combinations)"),
        "{shown}"
    );
    let table: Vec<&str> = shown[at("SWEEP train")..].lines().skip(1).take(5).collect();
    assert_eq!(
        table,
        [
            "  lr    depth  STATUS     score",
            "  0.1   3      succeeded  3",
            "  0.1   5      succeeded  5",
            "  0.01  3      succeeded  3",
            "  0.01  5      succeeded  5",
        ],
        "{shown}"
    );

    // A name given on the command line means every expansion.
    let out = s.run(&[
        "run",
        file.to_str().unwrap(),
        "--only",
        "train",
        "--dry-run",
    ]);
    let plan = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{plan}{}", text(&out.stderr));
    assert!(plan.contains("train[lr=0.01,depth=5]"), "{plan}");
}

#[test]
fn a_failed_run_runs_on_failure_then_finally_and_keeps_its_exit_code() {
    let s = Scratch::new();
    let failing = SWEEP.replace("cat \"$SLUICE_IN\"/train*/cell.txt | sort", "exit 4");
    let file = s.write("p/sweep.yaml", &failing);
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        handlers_log(&s),
        ["alert pick", "report failed [pick]"],
        "on_failure first, then finally, each told which steps failed"
    );
    let show = s.show(&s.latest_run_id());
    assert_eq!(show["run"]["status"], "failed");
    assert_eq!(step(&show, "report")["status"], "succeeded");
}

#[test]
fn a_finally_step_runs_on_a_worker_after_its_run_was_cancelled() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let dir = cluster.scratch.path().to_path_buf();
    cluster.pipeline(
        "tidy",
        &format!(
            "name: tidy\nsteps:\n  work:\n    run: touch {started}; sleep 60\n  later:\n    run: 'true'\n    depends: [work]\nfinally:\n  cleanup:\n    run: echo \"$SLUICE_RUN_STATUS\" > {tidied}\n",
            started = dir.join("started").display(),
            tidied = dir.join("tidied").display(),
        ),
    );
    cluster.start_scheduler();
    let _worker = cluster.start_worker("w1", 2);
    let run = cluster.trigger("tidy");
    let timeout = Duration::from_secs(90);
    wait_until("the step to start", timeout, || {
        dir.join("started").exists()
    });
    let out = cluster.client(&["cancel", &run]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = cluster.wait_run(&run, timeout);
    assert_eq!(show["run"]["status"], "cancelled", "{show:#}");
    assert_eq!(step(&show, "work")["status"], "cancelled");
    assert_eq!(step(&show, "later")["status"], "cancelled");
    assert_eq!(step(&show, "cleanup")["status"], "succeeded", "{show:#}");
    assert_eq!(lines(&dir.join("tidied")), ["cancelled"]);
}
