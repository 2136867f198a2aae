//! The Redis Streams queue against a real `redis-server` started by each test on a free port.
//! Without `redis-server` on PATH the tests are skipped with a printed reason, unless
//! `SLUICE_REQUIRE_REDIS=1` (CI sets it), where they fail.

use std::sync::Arc;
use std::time::Duration;

use sluice_tests::redis::{free_port, RedisServer};
use sluice_worker::executor::LocalExecutor;
use sluice_worker::pool::{run_worker, WorkerConfig};
use sluice_worker::queue::redis::WorkerInfo;
use sluice_worker::queue::{RedisQueue, RedisQueueConfig, TaskQueue};
use sluice_worker::task::{Outcome, StepCommand, TaskKey, TaskSpec, WorkerEvent};
use tokio_util::sync::CancellationToken;

fn start_redis() -> Option<RedisServer> {
    RedisServer::start()
}

async fn queue(redis: &RedisServer, consumer: &str, prefix: &str) -> RedisQueue {
    let config = RedisQueueConfig {
        url: redis.url(),
        ca_cert: None,
        prefix: prefix.to_string(),
        consumer: consumer.to_string(),
        queues: vec!["default".into()],
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        RedisQueue::connect(config, CancellationToken::new()),
    )
    .await
    .expect("connects in time")
    .expect("connects")
}

fn task(dir: &std::path::Path, run: &str, step: &str, attempt: u32, command: &str) -> TaskSpec {
    let key = TaskKey {
        run_id: run.into(),
        step: step.into(),
        attempt,
    };
    let attempt_dir = dir.join(format!("{run}-{step}-{attempt}"));
    TaskSpec {
        pipeline: "p".into(),
        workdir: dir.to_path_buf(),
        ..TaskSpec::new(key, StepCommand::Shell(command.into()), attempt_dir)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_and_events_round_trip_and_each_task_goes_to_one_worker() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t1:").await;
    let (w1, w2) = (
        queue(&redis, "w1", "t1:").await,
        queue(&redis, "w2", "t1:").await,
    );
    for i in 0..20 {
        scheduler
            .dispatch(task(dir.path(), "r", &format!("s{i}"), 1, "true"))
            .await
            .unwrap();
    }
    let queues = vec!["default".to_string()];
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let worker = if i % 2 == 0 { &w1 } else { &w2 };
        let got = tokio::time::timeout(Duration::from_secs(5), worker.take(&queues))
            .await
            .unwrap()
            .unwrap();
        assert!(
            seen.insert(got.key.step.clone()),
            "{} delivered twice",
            got.key.step
        );
        worker
            .report(WorkerEvent::Started {
                key: got.key.clone(),
                worker: "w".into(),
                at_ms: 1,
            })
            .await
            .unwrap();
        worker.done(&got).await.unwrap();
    }
    assert_eq!(seen.len(), 20);
    let mut events = Vec::new();
    while events.len() < 20 {
        let batch = tokio::time::timeout(Duration::from_secs(5), scheduler.next_events(100))
            .await
            .unwrap()
            .unwrap();
        events.extend(batch);
    }
    scheduler.ack_events().await.unwrap();
    assert_eq!(events.len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_not_acknowledged_are_delivered_again_to_a_restarted_scheduler() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let worker = queue(&redis, "w", "t2:").await;
    let t = task(dir.path(), "r", "a", 1, "true");
    worker
        .report(WorkerEvent::Started {
            key: t.key.clone(),
            worker: "w".into(),
            at_ms: 1,
        })
        .await
        .unwrap();
    {
        let scheduler = queue(&redis, "scheduler", "t2:").await;
        let got = scheduler.next_events(10).await.unwrap();
        assert_eq!(got.len(), 1);
        // "Crash" before committing: no ack_events.
        scheduler.close();
    }
    let restarted = queue(&redis, "scheduler", "t2:").await;
    let again = tokio::time::timeout(Duration::from_secs(5), restarted.next_events(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.len(), 1, "the unacknowledged event comes back");
    restarted.ack_events().await.unwrap();
    let after = queue(&redis, "scheduler", "t2:").await;
    let nothing = tokio::time::timeout(Duration::from_millis(1500), after.next_events(10)).await;
    assert!(nothing.is_err(), "an acknowledged event does not come back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_whose_worker_went_silent_is_reclaimed_but_a_heartbeating_one_keeps_its_lease() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t3:").await;
    let worker = queue(&redis, "w", "t3:").await;
    let queues = vec!["default".to_string()];
    scheduler
        .dispatch(task(dir.path(), "r", "a", 1, "true"))
        .await
        .unwrap();
    let taken = worker.take(&queues).await.unwrap();
    // The worker dies: no heartbeat, no done. After the lease the janitor takes it back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = scheduler
        .reclaim_idle("default", Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].task.key, taken.key);
    scheduler.dead_letter(&again[0].task, "test").await.unwrap();
    // The frozen worker's next heartbeat learns that it lost the task.
    let info = |running| WorkerInfo {
        name: "w".into(),
        queues: queues.clone(),
        slots: 1,
        gpus: vec![],
        gpus_free: None,
        running,
        docker: false,
        heartbeat_ms: RedisQueue::now_ms(),
    };
    let lost = worker.heartbeat(&info(1)).await.unwrap();
    assert_eq!(lost, vec![taken.key.clone()]);
    // A live worker renews its lease with heartbeats, so its task is not taken away.
    scheduler
        .dispatch(task(dir.path(), "r", "b", 1, "true"))
        .await
        .unwrap();
    let held = worker.take(&queues).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(worker.heartbeat(&info(1)).await.unwrap().is_empty());
    }
    let again = scheduler
        .reclaim_idle("default", Duration::from_millis(200))
        .await
        .unwrap();
    assert!(again.is_empty(), "a renewed lease is not reclaimed");
    assert_eq!(scheduler.workers().await.unwrap()[0].name, "w");
    worker.done(&held).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_stops_waiting_loses_no_event() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t6:").await;
    let worker = queue(&redis, "w", "t6:").await;
    // The driver's select! drops next_events often; nothing may be lost to a dropped read.
    for _ in 0..3 {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), scheduler.next_events(10)).await;
        assert!(gave_up.is_err());
    }
    let t = task(dir.path(), "r", "a", 1, "true");
    worker
        .report(WorkerEvent::Started {
            key: t.key.clone(),
            worker: "w".into(),
            at_ms: 1,
        })
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), scheduler.next_events(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_on_several_queues_strands_no_task() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t7:").await;
    let worker = queue(&redis, "w", "t7:").await;
    let mut on_gpu = task(dir.path(), "r", "g", 1, "true");
    on_gpu.queue = "gpu".into();
    scheduler.dispatch(on_gpu).await.unwrap();
    scheduler
        .dispatch(task(dir.path(), "r", "d", 1, "true"))
        .await
        .unwrap();
    let queues = vec!["gpu".to_string(), "default".to_string()];
    let mut got = Vec::new();
    for _ in 0..2 {
        let t = tokio::time::timeout(Duration::from_secs(5), worker.take(&queues))
            .await
            .unwrap()
            .unwrap();
        got.push(t.key.step);
    }
    got.sort();
    assert_eq!(got, vec!["d", "g"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_of_a_run_cancelled_before_they_were_taken_never_start() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t8:").await;
    scheduler
        .dispatch(task(dir.path(), "run-x", "side-effect", 1, "touch ran"))
        .await
        .unwrap();
    scheduler
        .dispatch(task(dir.path(), "run-y", "other", 1, "true"))
        .await
        .unwrap();
    scheduler.cancel_run("run-x").await.unwrap();
    let worker = queue(&redis, "late-worker", "t8:").await;
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        worker.take(&["default".to_string()]),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        got.key.run_id, "run-y",
        "the cancelled run's task was skipped"
    );
}

/// An attempt queued twice (a scheduler restarted between its commit and its dispatch queues
/// it again) runs once: the second delivery is skipped, whichever worker reads it.
#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_queued_twice_runs_once() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t13:").await;
    let twice = task(dir.path(), "run-d", "train", 1, "true");
    scheduler.dispatch(twice.clone()).await.unwrap();
    scheduler.dispatch(twice).await.unwrap();
    scheduler
        .dispatch(task(dir.path(), "run-d", "after", 1, "true"))
        .await
        .unwrap();
    let queues = vec!["default".to_string()];
    let worker = queue(&redis, "w1", "t13:").await;
    let mut taken = Vec::new();
    for _ in 0..2 {
        let got = tokio::time::timeout(Duration::from_secs(5), worker.take(&queues))
            .await
            .unwrap()
            .unwrap();
        taken.push(got.key.step);
    }
    assert_eq!(taken, ["train", "after"], "the copy of `train` ran again");
    // Another worker finds nothing left: the copy was acknowledged, not left pending.
    let other = queue(&redis, "w2", "t13:").await;
    let more = tokio::time::timeout(Duration::from_millis(500), other.take(&queues)).await;
    assert!(more.is_err(), "another worker got {more:?}");
}

/// A task that outlives a cancel (a run's `finally:` handler) starts although its run was
/// cancelled before any worker took it.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_outlives_a_cancel_starts_after_its_run_was_cancelled() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t14:").await;
    let mut cleanup = task(dir.path(), "run-c", "cleanup", 1, "true");
    cleanup.outlives_cancel = true;
    scheduler.dispatch(cleanup).await.unwrap();
    scheduler.cancel_run("run-c").await.unwrap();
    let worker = queue(&redis, "w", "t14:").await;
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        worker.take(&["default".to_string()]),
    )
    .await
    .expect("the handler's task was skipped")
    .unwrap();
    assert_eq!(got.key.step, "cleanup");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_scheduler_catches_up_on_its_pending_events_in_order() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let worker = queue(&redis, "w", "t9:").await;
    for i in 0..5 {
        let t = task(dir.path(), "r", &format!("s{i}"), 1, "true");
        worker
            .report(WorkerEvent::Started {
                key: t.key,
                worker: "w".into(),
                at_ms: 1,
            })
            .await
            .unwrap();
    }
    {
        let first = queue(&redis, "scheduler", "t9:").await;
        let mut n = 0;
        while n < 5 {
            n += first.next_events(10).await.unwrap().len();
        }
        first.close(); // Crashed before committing anything.
    }
    let restarted = queue(&redis, "scheduler", "t9:").await;
    let mut steps = Vec::new();
    while steps.len() < 5 {
        let batch = tokio::time::timeout(Duration::from_secs(5), restarted.next_events(2))
            .await
            .unwrap()
            .unwrap();
        assert!(batch.len() <= 2);
        for event in batch {
            if let WorkerEvent::Started { key, .. } = event {
                steps.push(key.step);
            }
        }
    }
    assert_eq!(
        steps,
        vec!["s0", "s1", "s2", "s3", "s4"],
        "each pending event once, in order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_a_running_worker_and_stops_its_task() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = Arc::new(queue(&redis, "scheduler", "t4:").await);
    let worker_queue: Arc<dyn TaskQueue> = Arc::new(queue(&redis, "w", "t4:").await);
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run_worker(
        worker_queue,
        Arc::new(LocalExecutor::default()),
        WorkerConfig {
            name: "w".into(),
            queues: vec!["default".into()],
            slots: 2,
            gpus: vec![],
            data_dir: None,
        },
        shutdown.clone(),
    ));
    scheduler
        .dispatch(task(dir.path(), "run-x", "long", 1, "sleep 60"))
        .await
        .unwrap();
    // Wait for it to start.
    let started = tokio::time::timeout(Duration::from_secs(10), scheduler.next_events(10))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(started[0], WorkerEvent::Started { .. }));
    scheduler.cancel_run("run-x").await.unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(10), scheduler.next_events(10))
        .await
        .unwrap()
        .unwrap();
    let WorkerEvent::Finished(result) = &finished[0] else {
        panic!("{finished:?}")
    };
    assert_eq!(result.outcome, Outcome::Cancelled);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_is_down_at_start_is_waited_for() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let connecting = tokio::spawn(async move {
        let config = RedisQueueConfig {
            url,
            ca_cert: None,
            prefix: "t5:".into(),
            consumer: "w".into(),
            queues: vec![],
        };
        RedisQueue::connect(config, CancellationToken::new()).await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!connecting.is_finished(), "still retrying");
    let Some(_redis) = RedisServer::start_on(port) else {
        return;
    };
    let queue = tokio::time::timeout(Duration::from_secs(15), connecting)
        .await
        .unwrap()
        .unwrap();
    assert!(queue.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_of_stopped_workers_are_forgotten_unless_they_hold_a_task() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t9:").await;
    let queues = vec!["default".to_string()];
    let (idle, holding) = (
        queue(&redis, "w@1", "t9:").await,
        queue(&redis, "w@2", "t9:").await,
    );
    // `w@1` runs a task to its end (it exists in the group now, holding nothing) and stops.
    scheduler
        .dispatch(task(dir.path(), "r", "a", 1, "true"))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), idle.take(&queues))
        .await
        .unwrap()
        .unwrap();
    idle.done(&first).await.unwrap();
    idle.close();
    // Its reader's last blocking read (one second) must end before anything is queued.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    scheduler
        .dispatch(task(dir.path(), "r", "b", 1, "true"))
        .await
        .unwrap();
    let _held = tokio::time::timeout(Duration::from_secs(5), holding.take(&queues))
        .await
        .unwrap()
        .unwrap();
    holding.close();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let forgotten = scheduler
        .forget_idle_consumers("default", Duration::from_secs(1))
        .await
        .unwrap();
    // `w@1` holds nothing and goes; `w@2` still holds task `b`, whose lease the janitor decides.
    assert_eq!(forgotten, 1);
    let again = scheduler
        .forget_idle_consumers("default", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_silent_for_long_are_dropped_from_the_registry() {
    use sluice_worker::queue::redis::WorkerInfo;
    let Some(redis) = start_redis() else { return };
    let scheduler = queue(&redis, "scheduler", "t10:").await;
    let info = |name: &str, heartbeat_ms| WorkerInfo {
        name: name.into(),
        queues: vec!["default".into()],
        slots: 1,
        gpus: vec![],
        gpus_free: None,
        running: 0,
        docker: false,
        heartbeat_ms,
    };
    let now = RedisQueue::now_ms();
    let live = queue(&redis, "live@1", "t10:").await;
    live.heartbeat(&info("live", now)).await.unwrap();
    let dead = queue(&redis, "dead@1", "t10:").await;
    dead.heartbeat(&info("dead", now - 600_000)).await.unwrap();
    let dropped = scheduler
        .forget_silent_workers(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(dropped, ["dead"]);
    let names: Vec<String> = scheduler
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["live"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backlog_counts_tasks_no_worker_took_per_queue() {
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t30:").await;
    assert_eq!(scheduler.backlog().await.unwrap(), vec![]);
    let on = |queue: &str, step: &str| TaskSpec {
        queue: queue.into(),
        ..task(dir.path(), "r", step, 1, "true")
    };
    scheduler
        .dispatch_batch(&[on("default", "a"), on("gpu", "b"), on("gpu", "c")])
        .await
        .unwrap();
    let waiting = |backlog: Vec<sluice_worker::queue::Backlog>| -> Vec<(String, u64)> {
        backlog.into_iter().map(|b| (b.queue, b.waiting)).collect()
    };
    assert_eq!(
        waiting(scheduler.backlog().await.unwrap()),
        [("default".to_string(), 1), ("gpu".to_string(), 2)]
    );
    // Taken by a worker, a task no longer waits (it is pending in the group until settled).
    let worker = queue(&redis, "w@1", "t30:").await;
    let taken = tokio::time::timeout(Duration::from_secs(5), worker.take(&["default".into()]))
        .await
        .unwrap()
        .unwrap();
    let backlog = scheduler.backlog().await.unwrap();
    assert_eq!(backlog[0].queue, "default");
    assert_eq!((backlog[0].waiting, backlog[0].oldest_wait_ms), (0, 0));
    assert_eq!(backlog[1].waiting, 2, "{backlog:?}");
    worker.done(&taken).await.unwrap();
    assert_eq!(
        waiting(scheduler.backlog().await.unwrap()),
        [("default".to_string(), 0), ("gpu".to_string(), 2)]
    );
}

#[test]
fn passwords_are_taken_out_of_redis_urls_for_logs() {
    use sluice_worker::queue::redis::redacted;
    assert_eq!(
        redacted("rediss://:s3cret@host:6380/0"),
        "rediss://:***@host:6380/0"
    );
    assert_eq!(
        redacted("redis://app:s3cret@host/"),
        "redis://app:***@host/"
    );
    assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_task_ends_its_log_with_its_result_and_only_when_asked() {
    use sluice_worker::log_stream::LOG_STREAMS;
    use sluice_worker::queue::LOG_START;
    use sluice_worker::task::TaskResult;
    let Some(redis) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = queue(&redis, "scheduler", "t-ends:").await;
    let worker = queue(&redis, "w1", "t-ends:").await;
    let queues = vec!["default".to_string()];
    for (step, log_ends) in [("streamed", &LOG_STREAMS[..]), ("quiet", &[][..])] {
        scheduler
            .dispatch(task(dir.path(), "r", step, 1, "true"))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), worker.take(&queues))
            .await
            .unwrap()
            .unwrap();
        worker
            .publish_log(&got.key, "stdout", Some(b"hello\n"))
            .await
            .unwrap();
        let result = TaskResult::error(got.key.clone(), "done");
        worker
            .finish(&got, vec![WorkerEvent::Finished(result)], log_ends)
            .await
            .unwrap();
        let events = tokio::time::timeout(Duration::from_secs(5), scheduler.next_events(10))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&events[..], [WorkerEvent::Finished(r)] if r.key == got.key),
            "{events:?}"
        );
        let stdout = scheduler
            .read_log(&got.key, "stdout", LOG_START, None)
            .await
            .unwrap();
        assert_eq!(stdout.chunks, vec![b"hello\n".to_vec()], "{step}");
        let stderr = scheduler
            .read_log(&got.key, "stderr", LOG_START, None)
            .await
            .unwrap();
        let ended = !log_ends.is_empty();
        assert_eq!((stdout.complete, stderr.complete), (ended, ended), "{step}");
    }
    scheduler.ack_events().await.unwrap();
}
