//! Artifacts through the worker's executor, with a real local store and real processes: a
//! step's declared outputs are stored by content and reach the next step byte for byte, from
//! the store alone; hostile outputs are refused; corrupt blobs are caught.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use sluice_worker::artifacts::{ArtifactStore, Artifacts, StoreUrl};
use sluice_worker::executor::{Executor, StepExecutor};
use sluice_worker::task::{ArtifactKind, Outcome, TaskInput, TaskKey, TaskResult, TaskSpec};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

fn artifacts(store: &Path, cache: &Path, cap: u64) -> Arc<Artifacts> {
    let store = ArtifactStore::open(&StoreUrl::Local(store.to_path_buf())).unwrap();
    Arc::new(Artifacts::new(store, cache, cap).unwrap())
}

fn step_task(dir: &Path, step: &str, script: &str, outputs: &[&str]) -> TaskSpec {
    let mut t = task(dir, sh(script));
    t.key = TaskKey {
        run_id: "run-1".into(),
        step: step.into(),
        attempt: 1,
    };
    t.attempt_dir = dir.join("runs").join(step);
    t.outputs = outputs.iter().map(|s| s.to_string()).collect();
    t
}

async fn run_on(executor: &StepExecutor, t: &TaskSpec) -> TaskResult {
    tokio::time::timeout(RUN_LIMIT, executor.run(t, CancellationToken::new()))
        .await
        .expect("the executor returned")
}

#[tokio::test]
async fn a_file_and_a_folder_reach_the_next_step_from_the_store_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let producer = StepExecutor::local_only("tests").with_artifacts(artifacts(
        &store,
        &dir.path().join("c1"),
        1 << 30,
    ));
    let make = step_task(
        dir.path(),
        "train",
        "printf 'w1' > $SLUICE_OUT/model.bin; mkdir -p $SLUICE_OUT/features/sub; \
         printf 'a,b\\n' > $SLUICE_OUT/features/x.csv; printf 'deep' > $SLUICE_OUT/features/sub/y; \
         printf '#!/bin/sh\\necho hi\\n' > $SLUICE_OUT/features/run.sh; chmod 755 $SLUICE_OUT/features/run.sh",
        &["model.bin", "features/"],
    );
    let made = run_on(&producer, &make).await;
    assert_eq!(made.outcome, Outcome::Succeeded, "{made:?}");
    assert_eq!(made.artifacts.len(), 2);
    let (file, folder) = (&made.artifacts[0], &made.artifacts[1]);
    assert_eq!(
        (file.kind, file.size, file.files),
        (ArtifactKind::File, 2, 1)
    );
    assert_eq!(file.id, blake3::hash(b"w1").to_hex().to_string());
    assert_eq!((folder.kind, folder.files), (ArtifactKind::Dir, 3));
    // The producer's folder is gone: the consumer has only the store (another machine's view).
    std::fs::remove_dir_all(dir.path().join("runs/train")).unwrap();
    let consumer = StepExecutor::local_only("tests").with_artifacts(artifacts(
        &store,
        &dir.path().join("c2"),
        1 << 30,
    ));
    let mut read = step_task(
        dir.path(),
        "eval",
        "cat $SLUICE_IN/train/model.bin; cat $SLUICE_IN/train/features/x.csv $SLUICE_IN/train/features/sub/y; \
         $SLUICE_IN/train/features/run.sh; echo > $SLUICE_IN/train/model.bin && echo WROTE",
        &[],
    );
    read.inputs = vec![TaskInput {
        step: "train".into(),
        artifacts: made.artifacts.clone(),
    }];
    let got = run_on(&consumer, &read).await;
    let stdout = std::fs::read_to_string(read.stdout_log()).unwrap();
    assert!(stdout.starts_with("w1a,b\ndeephi\n"), "{stdout}");
    let mode = std::fs::metadata(read.in_dir().join("train/model.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "inputs are read-only");
    // Whether the write was refused (a user) or went into a copy (root), the stored blob is
    // as it was: the next consumer reads the original.
    if nix::unistd::geteuid().is_root() {
        assert_eq!(got.outcome, Outcome::Succeeded, "{got:?}");
    } else {
        assert_eq!(
            got.outcome,
            Outcome::Failed,
            "the write into an input must fail: {got:?}"
        );
    }
    let mut again = step_task(dir.path(), "eval2", "cat $SLUICE_IN/train/model.bin", &[]);
    again.inputs = read.inputs.clone();
    let reread = run_on(&consumer, &again).await;
    assert_eq!(reread.outcome, Outcome::Succeeded, "{reread:?}");
    assert_eq!(std::fs::read_to_string(again.stdout_log()).unwrap(), "w1");
    // The same outputs again are the same ids, stored once.
    let again = run_on(&producer, &make).await;
    assert_eq!(again.artifacts, made.artifacts);
}

#[tokio::test]
async fn links_fifos_and_escapes_in_outputs_fail_the_step_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let executor = StepExecutor::local_only("tests").with_artifacts(artifacts(
        &dir.path().join("store"),
        &dir.path().join("c"),
        1 << 30,
    ));
    let cases = [
        (
            "mkdir $SLUICE_OUT/m; ln -s /etc/passwd $SLUICE_OUT/m/leak",
            "m/",
            "`leak` is a symbolic link",
        ),
        (
            "mkdir $SLUICE_OUT/m; mkfifo $SLUICE_OUT/m/pipe",
            "m/",
            "`pipe` is a FIFO",
        ),
        ("ln -s /etc/passwd $SLUICE_OUT/f", "f", "symbolic link"),
        (
            "mkdir -p $SLUICE_OUT/m; ln -s /etc $SLUICE_OUT/m/etc",
            "m/",
            "`etc` is a symbolic link",
        ),
    ];
    for (script, output, expected) in cases {
        let t = step_task(dir.path(), "s", script, &[output]);
        let result = run_on(&executor, &t).await;
        assert_eq!(result.outcome, Outcome::Failed, "{script}: {result:?}");
        let message = result.message.unwrap_or_default();
        assert!(message.contains(expected), "{script}: {message}");
    }
    assert!(
        std::fs::read_dir(dir.path().join("store/blobs")).map_or(true, |mut d| d.next().is_none()),
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_corrupt_blob_fails_the_attempt_and_is_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let executor = StepExecutor::local_only("tests").with_artifacts(artifacts(
        &store,
        &dir.path().join("c"),
        1 << 30,
    ));
    let made = run_on(
        &executor,
        &step_task(dir.path(), "a", "echo data > $SLUICE_OUT/d", &["d"]),
    )
    .await;
    let id = made.artifacts[0].id.clone();
    let blob = store.join("blobs").join(&id[..2]).join(&id);
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, "evil\n").unwrap();
    let mut read = step_task(dir.path(), "b", "cat $SLUICE_IN/a/d", &[]);
    read.inputs = vec![TaskInput {
        step: "a".into(),
        artifacts: made.artifacts,
    }];
    let result = run_on(&executor, &read).await;
    assert_eq!(result.outcome, Outcome::Error, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(
        message.contains(&format!("artifact {id} is corrupt")),
        "{message}"
    );
    assert!(!read.stdout_log().exists(), "the step never ran");
}

#[tokio::test]
async fn a_step_cancelled_before_its_inputs_arrive_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let executor = StepExecutor::local_only("tests").with_artifacts(artifacts(
        &dir.path().join("store"),
        &dir.path().join("c"),
        1 << 30,
    ));
    let made = run_on(
        &executor,
        &step_task(dir.path(), "a", "echo x > $SLUICE_OUT/d", &["d"]),
    )
    .await;
    let mut read = step_task(dir.path(), "b", "echo ran", &[]);
    read.inputs = vec![TaskInput {
        step: "a".into(),
        artifacts: made.artifacts,
    }];
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = tokio::time::timeout(RUN_LIMIT, executor.run(&read, cancel))
        .await
        .unwrap();
    assert_eq!(result.outcome, Outcome::Cancelled, "{result:?}");
    assert!(result.message.unwrap_or_default().contains("inputs"));
    assert!(!read.stdout_log().exists(), "the step never ran");
}
