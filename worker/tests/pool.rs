//! Integration tests of the worker loop over the in-memory queue, running real processes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_worker::executor::LocalExecutor;
use sluice_worker::pool::{run_worker, WorkerConfig};
use sluice_worker::queue::{MemoryQueue, QueueError, TaskQueue};
use sluice_worker::task::{Outcome, StepCommand, TaskKey, TaskResult, TaskSpec, WorkerEvent};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

/// A shell task of `run_id`/`step` on `queue`, with its own attempt folder under `dir`.
fn task(dir: &Path, run_id: &str, step: &str, queue: &str, script: &str) -> TaskSpec {
    let key = TaskKey {
        run_id: run_id.to_string(),
        step: step.to_string(),
        attempt: 1,
    };
    let command = StepCommand::Shell(script.to_string());
    TaskSpec {
        pipeline: "tests".to_string(),
        queue: queue.to_string(),
        env: vec![("SLUICE_STEP".to_string(), step.to_string())],
        workdir: dir.to_path_buf(),
        ..TaskSpec::new(key, command, dir.join(run_id).join(step))
    }
}

struct Worker {
    handle: JoinHandle<Result<(), QueueError>>,
    shutdown: CancellationToken,
}

impl Worker {
    fn start(queue: &Arc<MemoryQueue>, name: &str, queues: &[&str], slots: usize) -> Worker {
        let shutdown = CancellationToken::new();
        let config = WorkerConfig {
            name: name.to_string(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            slots,
            gpus: Vec::new(),
            data_dir: None,
        };
        let handle = tokio::spawn(run_worker(
            queue.clone() as Arc<dyn TaskQueue>,
            Arc::new(LocalExecutor::default()),
            config,
            shutdown.clone(),
        ));
        Worker { handle, shutdown }
    }

    /// Fires the shutdown token and waits for the loop to end.
    async fn stop(self) {
        self.shutdown.cancel();
        let joined = tokio::time::timeout(LIMIT, self.handle)
            .await
            .expect("the worker loop did not stop after shutdown");
        joined
            .expect("the worker loop panicked")
            .expect("the worker loop failed");
    }
}

fn key_of(event: &WorkerEvent) -> &TaskKey {
    match event {
        WorkerEvent::Started { key, .. } => key,
        WorkerEvent::Finished(result) => &result.key,
    }
}

/// Collects events until `n` Finished events have arrived.
async fn collect_finished(queue: &MemoryQueue, n: usize) -> Vec<WorkerEvent> {
    tokio::time::timeout(LIMIT, async {
        let mut events = Vec::new();
        let mut finished = 0;
        while finished < n {
            for event in queue.next_events(16).await.expect("the queue closed") {
                if matches!(event, WorkerEvent::Finished(_)) {
                    finished += 1;
                }
                events.push(event);
            }
        }
        events
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} tasks finished in time"))
}

/// Collects events until the given task has started.
async fn wait_started(queue: &MemoryQueue, key: &TaskKey, seen: &mut Vec<WorkerEvent>) {
    tokio::time::timeout(LIMIT, async {
        loop {
            let batch = queue.next_events(16).await.expect("the queue closed");
            let found = batch
                .iter()
                .any(|e| matches!(e, WorkerEvent::Started { key: k, .. } if k == key));
            seen.extend(batch);
            if found {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{key} never started"))
}

fn finished<'a>(events: &'a [WorkerEvent], key: &TaskKey) -> &'a TaskResult {
    events
        .iter()
        .find_map(|e| match e {
            WorkerEvent::Finished(r) if &r.key == key => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Finished event for {key}"))
}

/// No event arrives for a short while (used only to check an absence).
async fn no_more_events(queue: &MemoryQueue) -> Vec<WorkerEvent> {
    tokio::time::timeout(Duration::from_millis(500), queue.next_events(16))
        .await
        .map(|r| r.expect("the queue closed"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dispatched_task_is_started_then_finished() {
    const N: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "worker-a", &["default"], 3);
    let mut tasks = Vec::new();
    for i in 0..N {
        let t = task(
            dir.path(),
            "run-1",
            &format!("s{i}"),
            "default",
            "echo \"hello $SLUICE_STEP\"",
        );
        tasks.push(t.clone());
        queue.dispatch(t).await.unwrap();
    }
    let events = collect_finished(&queue, N).await;
    worker.stop().await;

    let mut seen: HashMap<TaskKey, Vec<&WorkerEvent>> = HashMap::new();
    for event in &events {
        seen.entry(key_of(event).clone()).or_default().push(event);
    }
    assert_eq!(seen.len(), N, "events for unexpected tasks: {events:?}");
    for t in &tasks {
        let evs = &seen[&t.key];
        assert_eq!(evs.len(), 2, "{}: {evs:?}", t.key);
        match evs[0] {
            WorkerEvent::Started { worker, .. } => assert_eq!(worker, "worker-a"),
            other => panic!("{}: first event is {other:?}, not Started", t.key),
        }
        match evs[1] {
            WorkerEvent::Finished(result) => {
                assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}")
            }
            other => panic!("{}: second event is {other:?}, not Finished", t.key),
        }
        let log = std::fs::read_to_string(t.stdout_log()).unwrap();
        assert_eq!(log, format!("hello {}\n", t.key.step));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_is_reported_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "w", &["default"], 1);
    let bad = task(dir.path(), "run-1", "bad", "default", "exit 7");
    let good = task(dir.path(), "run-1", "good", "default", "true");
    queue.dispatch(bad.clone()).await.unwrap();
    queue.dispatch(good.clone()).await.unwrap();
    let events = collect_finished(&queue, 2).await;
    worker.stop().await;
    let bad_result = finished(&events, &bad.key);
    assert_eq!(bad_result.outcome, Outcome::Failed);
    assert_eq!(bad_result.exit_code, Some(7));
    assert_eq!(finished(&events, &good.key).outcome, Outcome::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_on_a_queue_the_worker_does_not_listen_to_are_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "cpu-worker", &["default"], 2);
    let gpu = task(dir.path(), "run-1", "train", "gpu", "touch gpu-ran");
    queue.dispatch(gpu.clone()).await.unwrap();
    let a = task(dir.path(), "run-1", "a", "default", "true");
    let b = task(dir.path(), "run-1", "b", "default", "true");
    queue.dispatch(a.clone()).await.unwrap();
    queue.dispatch(b.clone()).await.unwrap();

    let mut events = collect_finished(&queue, 2).await;
    events.extend(no_more_events(&queue).await);
    worker.stop().await;

    assert!(
        events.iter().all(|e| key_of(e) != &gpu.key),
        "the gpu task was touched: {events:?}"
    );
    assert_eq!(finished(&events, &a.key).outcome, Outcome::Succeeded);
    assert_eq!(finished(&events, &b.key).outcome, Outcome::Succeeded);
    assert!(!dir.path().join("gpu-ran").exists());
    // It is still waiting on its own queue.
    let left = tokio::time::timeout(LIMIT, queue.take(&["gpu".to_string()]))
        .await
        .expect("the gpu task is no longer on its queue")
        .unwrap();
    assert_eq!(left.key, gpu.key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_several_queues_takes_from_each() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "w", &["gpu", "default"], 2);
    let gpu = task(dir.path(), "run-1", "train", "gpu", "true");
    let cpu = task(dir.path(), "run-1", "ingest", "default", "true");
    queue.dispatch(cpu.clone()).await.unwrap();
    queue.dispatch(gpu.clone()).await.unwrap();
    let events = collect_finished(&queue, 2).await;
    worker.stop().await;
    assert_eq!(finished(&events, &gpu.key).outcome, Outcome::Succeeded);
    assert_eq!(finished(&events, &cpu.key).outcome, Outcome::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_run_cancels_the_running_task_of_that_run_only() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "w", &["default"], 2);
    let doomed = task(dir.path(), "run-cancel", "train", "default", "sleep 30");
    let marker = dir.path().join("keep-may-finish");
    let kept = task(
        dir.path(),
        "run-keep",
        "train",
        "default",
        &format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done; echo kept",
            marker.display()
        ),
    );
    queue.dispatch(doomed.clone()).await.unwrap();
    queue.dispatch(kept.clone()).await.unwrap();
    let mut events = Vec::new();
    wait_started(&queue, &doomed.key, &mut events).await;
    if !events
        .iter()
        .any(|e| matches!(e, WorkerEvent::Started { key, .. } if key == &kept.key))
    {
        wait_started(&queue, &kept.key, &mut events).await;
    }

    queue.cancel_run("run-cancel").await.unwrap();
    let first = collect_finished(&queue, 1).await;
    // Only now may the other run's task end, so it was running throughout the cancel.
    std::fs::write(&marker, "").unwrap();
    let rest = collect_finished(&queue, 1).await;
    worker.stop().await;

    assert_eq!(finished(&first, &doomed.key).outcome, Outcome::Cancelled);
    let kept_result = finished(&rest, &kept.key);
    assert_eq!(kept_result.outcome, Outcome::Succeeded, "{kept_result:?}");
    assert_eq!(
        std::fs::read_to_string(kept.stdout_log()).unwrap(),
        "kept\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_run_drops_that_runs_queued_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    // One slot: the second task waits on the queue while the first runs.
    let worker = Worker::start(&queue, "w", &["default"], 1);
    let first = task(dir.path(), "run-x", "first", "default", "sleep 30");
    let second = task(dir.path(), "run-x", "second", "default", "touch second-ran");
    queue.dispatch(first.clone()).await.unwrap();
    queue.dispatch(second.clone()).await.unwrap();
    let mut events = Vec::new();
    wait_started(&queue, &first.key, &mut events).await;
    queue.cancel_run("run-x").await.unwrap();
    events.extend(collect_finished(&queue, 1).await);
    events.extend(no_more_events(&queue).await);
    worker.stop().await;

    assert_eq!(finished(&events, &first.key).outcome, Outcome::Cancelled);
    assert!(
        events.iter().all(|e| key_of(e) != &second.key),
        "the cancelled run's queued task was run: {events:?}"
    );
    assert!(!dir.path().join("second-ran").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_an_idle_worker_and_it_takes_nothing_after() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "w", &["default"], 2);
    // Let the loop get to its wait on the queue before stopping it.
    tokio::task::yield_now().await;
    worker.stop().await;

    let late = task(dir.path(), "run-1", "late", "default", "touch late-ran");
    queue.dispatch(late.clone()).await.unwrap();
    let left = tokio::time::timeout(LIMIT, queue.take(&["default".to_string()]))
        .await
        .expect("the task dispatched after shutdown was taken")
        .unwrap();
    assert_eq!(left.key, late.key);
    assert!(!dir.path().join("late-ran").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_running_task_to_finish_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "w", &["default"], 1);
    let marker = dir.path().join("may-finish");
    let t = task(
        dir.path(),
        "run-1",
        "s",
        "default",
        &format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done; echo done",
            marker.display()
        ),
    );
    queue.dispatch(t.clone()).await.unwrap();
    let mut events = Vec::new();
    wait_started(&queue, &t.key, &mut events).await;
    worker.shutdown.cancel();
    std::fs::write(&marker, "").unwrap();
    let joined = tokio::time::timeout(LIMIT, worker.handle)
        .await
        .expect("the worker loop did not stop after shutdown");
    joined.unwrap().unwrap();
    events.extend(collect_finished(&queue, 1).await);
    assert_eq!(finished(&events, &t.key).outcome, Outcome::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_queue_stops_the_worker() {
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "w", &["default"], 1);
    tokio::task::yield_now().await;
    queue.close();
    let joined = tokio::time::timeout(LIMIT, worker.handle)
        .await
        .expect("the worker loop did not stop after the queue closed");
    joined.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_executor_cannot_run_still_gets_a_finished_event() {
    // The scheduler waits for a Finished event per Started one; a malformed task (here an
    // empty argv, as could arrive deserialized from a queue) must not leave it waiting forever.
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let worker = Worker::start(&queue, "w", &["default"], 1);
    let mut bad = task(dir.path(), "run-1", "bad", "default", "true");
    bad.command = StepCommand::Exec(Vec::new());
    let good = task(dir.path(), "run-1", "good", "default", "true");
    queue.dispatch(bad.clone()).await.unwrap();
    queue.dispatch(good.clone()).await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(20), collect_finished(&queue, 2))
        .await
        .expect("no Finished event for the malformed task");
    worker.stop().await;
    assert_eq!(finished(&events, &bad.key).outcome, Outcome::Error);
    assert_eq!(finished(&events, &good.key).outcome, Outcome::Succeeded);
}
