//! A step is untrusted code: what it does to its own folder must not reach the worker's
//! secrets, memory or time. Each test is an attack a step can make with a line of shell.

use std::time::Duration;

use sluice_worker::executor::LocalExecutor;
use sluice_worker::task::{Outcome, TaskResult, TaskSpec};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

/// A variable only this worker process has: what a leak would carry out.
fn plant_worker_secret(tag: &str) -> String {
    let value = format!("worker-only-{tag}-{}", std::process::id());
    std::env::set_var(
        format!("SLUICE_TEST_PLANTED_{}", tag.to_uppercase()),
        &value,
    );
    value
}

fn everything_recorded(result: &TaskResult) -> String {
    format!(
        "{:?} {:?} {:?}",
        result.outputs, result.metrics, result.message
    )
}

fn hostile(dir: &std::path::Path, script: &str) -> TaskSpec {
    with_sluice_env(task(dir, sh(script)))
}

#[tokio::test]
async fn outputs_and_metrics_linked_to_the_workers_environment_are_not_read() {
    let planted = plant_worker_secret("environ");
    let dir = tempfile::tempdir().unwrap();
    for (file, var) in [("outputs", "SLUICE_OUTPUTS"), ("metrics", "SLUICE_METRICS")] {
        // The worker reading `/proc/self/environ` would read its own environment.
        let t = hostile(
            dir.path(),
            &format!("rm -f \"${var}\"; ln -s /proc/self/environ \"${var}\""),
        );
        let result = run(&t).await;
        assert_eq!(result.outcome, Outcome::Failed, "{file}: {result:?}");
        let message = result.message.clone().unwrap_or_default();
        assert!(message.contains("symbolic link"), "{file}: {message}");
        assert!(!everything_recorded(&result).contains(&planted), "{file}");
    }
}

#[tokio::test]
async fn a_fifo_for_outputs_does_not_hang_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let t = hostile(
        dir.path(),
        "rm -f \"$SLUICE_OUTPUTS\"; mkfifo \"$SLUICE_OUTPUTS\"",
    );
    // `run` fails the test if the executor does not return within its limit.
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert!(
        result
            .message
            .unwrap_or_default()
            .contains("not a regular file"),
        "says why"
    );
}

#[tokio::test]
async fn a_device_or_a_huge_file_for_metrics_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    for script in [
        "ln -sf /dev/zero \"$SLUICE_METRICS\"",
        // Sparse: 50 GB that take no disk, and would take 50 GB of memory to read whole.
        "truncate -s 50G \"$SLUICE_METRICS\"",
    ] {
        let result = run(&hostile(dir.path(), script)).await;
        assert_eq!(result.outcome, Outcome::Failed, "{script}: {result:?}");
        assert!(result.metrics.is_empty(), "{script}");
    }
    let result = run(&hostile(dir.path(), "truncate -s 50G \"$SLUICE_METRICS\"")).await;
    assert!(
        result
            .message
            .unwrap_or_default()
            .contains("over the limit"),
        "says why"
    );
}

#[tokio::test]
async fn a_declared_output_that_is_a_link_out_of_the_folder_fails_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = hostile(dir.path(), "ln -s /etc/passwd \"$SLUICE_OUT/model.bin\"");
    t.outputs = vec!["model.bin".to_string()];
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert!(
        result.message.unwrap_or_default().contains("symbolic link"),
        "says why"
    );
}

#[tokio::test]
async fn a_step_that_swaps_its_log_for_a_link_leaves_the_captured_log_intact() {
    let dir = tempfile::tempdir().unwrap();
    // Stands for a host file the worker may write and the step may not (`/etc/passwd`).
    let canary = dir.path().join("canary");
    std::fs::write(&canary, "host file\n").unwrap();
    let t = hostile(
        dir.path(),
        &format!(
            "echo before; ln -sf {} \"$SLUICE_OUT/../../stdout.log\"; echo after",
            canary.display()
        ),
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    // The worker kept writing to the file it opened, never through the link.
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host file\n");
    // A redelivery starts from a clean folder: the link is removed, not followed (following it
    // would truncate the host file).
    let again = run(&with_sluice_env(task(dir.path(), sh("echo second")))).await;
    assert_eq!(again.outcome, Outcome::Succeeded, "{again:?}");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host file\n");
    let meta = std::fs::symlink_metadata(t.stdout_log()).unwrap();
    assert!(meta.is_file(), "the log is a regular file again");
    assert_eq!(std::fs::read_to_string(t.stdout_log()).unwrap(), "second\n");
}

#[tokio::test]
async fn secrets_are_masked_in_output_and_metric_names_and_in_messages() {
    let name = format!("TEST_SECRET_{}", std::process::id());
    let value = "s3cr3t-value";
    std::env::set_var(&name, value);
    let dir = tempfile::tempdir().unwrap();
    let mut t = hostile(
        dir.path(),
        &format!(
            "echo \"${name}=v\" >> \"$SLUICE_OUTPUTS\"; echo \"k=${name}\" >> \"$SLUICE_OUTPUTS\"; \
             printf '{{\"%s\": 1, \"nested\": {{\"%s\": \"%s\"}}}}' \"${name}\" \"${name}\" \"${name}\" > \"$SLUICE_METRICS\""
        ),
    );
    t.secrets = vec![name.clone()];
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    let recorded = everything_recorded(&result);
    assert!(!recorded.contains(value), "{recorded}");
    assert_eq!(result.outputs["***"], "v");
    assert_eq!(result.outputs["k"], "***");
    assert_eq!(result.metrics["***"], 1);
    // Nor do the files the step wrote keep it.
    for file in [t.outputs_file(), t.metrics_file()] {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(!text.contains(value), "{}: {text}", file.display());
    }
    // A bad output name quotes the name in its message: masked too.
    let mut bad = hostile(
        dir.path(),
        &format!("echo \"${name}!=v\" >> \"$SLUICE_OUTPUTS\""),
    );
    bad.secrets = vec![name.clone()];
    let result = run(&bad).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("not a valid output name"), "{message}");
    assert!(!message.contains(value), "{message}");
}

#[tokio::test]
async fn a_timeout_ends_an_attempt_whose_outputs_are_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = hostile(
        dir.path(),
        "rm -f \"$SLUICE_OUTPUTS\"; mkfifo \"$SLUICE_OUTPUTS\"; sleep 600",
    );
    t.timeout = Some(Duration::from_secs(1));
    let executor = LocalExecutor {
        kill_grace: Duration::from_millis(500),
        ..LocalExecutor::default()
    };
    let result = run_with(&executor, &t, CancellationToken::new()).await;
    assert_eq!(result.outcome, Outcome::TimedOut, "{result:?}");
}
