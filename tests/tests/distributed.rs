//! Failure tests of the distributed mode: a real redis-server, `sluice scheduler` and `sluice
//! worker` processes that the tests kill, freeze and restart. Each test ends by checking that
//! every run it started is over and that each step has at most one committed result.

use std::time::Duration;

use nix::sys::signal::Signal;
use sluice_tests::cluster::{assert_one_result_per_step, lines, Cluster};
use sluice_tests::{sluice_bin, step, text, wait_output, wait_until};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A step that appends its name and attempt to `ran.log` in the scratch folder, then sleeps.
fn marking_step(sleep: &str) -> String {
    format!("echo \"$SLUICE_STEP $SLUICE_ATTEMPT\" >> ../ran.log; sleep {sleep}")
}

#[test]
fn a_worker_killed_mid_step_is_replaced_and_the_run_succeeds() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // No retry policy: a lost worker is not the step's failure, so it runs again all the same.
    cluster.pipeline(
        "slow",
        &format!(
            "name: slow\nsteps:\n  work:\n    run: {}\n",
            serde_json::to_string(&marking_step("3")).unwrap()
        ),
    );
    cluster.start_scheduler();
    let mut first = cluster.start_worker("first", 1);
    let run = cluster.trigger("slow");
    let ran = cluster.scratch.path().join("ran.log");
    wait_until("the step to start", RUN_TIMEOUT, || !lines(&ran).is_empty());
    let _second = cluster.start_worker("second", 1);
    first.kill9();

    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    let work = step(&show, "work");
    let attempts = work["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{work:#}");
    assert_eq!(attempts[0]["outcome"], "lost", "{work:#}");
    assert_eq!(attempts[0]["worker"], "first");
    assert_eq!(attempts[1]["outcome"], "succeeded");
    assert_eq!(attempts[1]["worker"], "second");
    assert_eq!(lines(&ran), vec!["work 1", "work 2"]);
    assert_one_result_per_step(&show);
    // The killed worker never unregistered: it is listed as gone, the live one as alive.
    let state_of = |name: &str| {
        let out = cluster.client(&["workers", "--json"]);
        let workers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        workers
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["name"] == name)
            .map(|w| w["state"].as_str().unwrap_or_default().to_string())
    };
    wait_until(
        "the killed worker to be listed as gone",
        RUN_TIMEOUT,
        || state_of("first").as_deref() == Some("gone"),
    );
    assert_eq!(state_of("second").as_deref(), Some("alive"));
}

#[test]
fn a_step_lost_more_often_than_its_lost_budget_fails_and_is_dead_lettered() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // A generous failure budget that must not be used: losses are counted apart.
    cluster.pipeline(
        "fragile",
        &format!(
            "name: fragile\nsteps:\n  work:\n    retry: {{limit: 5, lost: 1}}\n    run: {}\n",
            serde_json::to_string(&marking_step("30")).unwrap()
        ),
    );
    cluster.start_scheduler();
    let run = cluster.trigger("fragile");
    let ran = cluster.scratch.path().join("ran.log");
    for (n, name) in ["first", "second"].iter().enumerate() {
        let mut worker = cluster.start_worker(name, 1);
        wait_until("the step to start", RUN_TIMEOUT, || lines(&ran).len() > n);
        worker.kill9();
    }
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "failed", "{show:#}");
    let work = step(&show, "work");
    let outcomes: Vec<&str> = work["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(outcomes, ["lost", "lost"], "{work:#}");
    let dead = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &cluster.redis_port.to_string(),
            "XRANGE",
            "sluice:dead",
            "-",
            "+",
        ])
        .output()
        .unwrap();
    let dead = String::from_utf8_lossy(&dead.stdout);
    assert!(dead.contains("its worker was lost 2 times"), "{dead}");
    assert_one_result_per_step(&show);
}

#[test]
fn a_worker_restarted_under_the_same_name_does_not_keep_the_dead_ones_task() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // A container restarted in place keeps its name: the new process is not the old one, and
    // must not keep the old one's task alive by renewing it.
    cluster.pipeline(
        "restart",
        &format!(
            "name: restart\nsteps:\n  work:\n    run: {}\n",
            serde_json::to_string(&marking_step("1")).unwrap()
        ),
    );
    cluster.start_scheduler();
    let mut old = cluster.start_worker("same", 1);
    let run = cluster.trigger("restart");
    let ran = cluster.scratch.path().join("ran.log");
    wait_until("the step to start", RUN_TIMEOUT, || !lines(&ran).is_empty());
    old.kill9();
    let _new = cluster.start_worker("same", 1);
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    let work = step(&show, "work");
    let attempts = work["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "lost", "{work:#}");
    assert_eq!(attempts.last().unwrap()["outcome"], "succeeded", "{work:#}");
    assert_one_result_per_step(&show);
}

#[test]
fn a_task_delivered_to_a_frozen_worker_is_picked_up_when_it_wakes() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "wake",
        "name: wake\nsteps:\n  work: {run: 'echo \"work $SLUICE_ATTEMPT\" >> ../ran.log'}\n",
    );
    // A lease far longer than the freeze: the janitor must not be what saves the run.
    cluster.start_scheduler_with(&["--lease", "60s"]);
    let worker = cluster.start_worker("sleepy", 1);
    wait_until("the worker to register", RUN_TIMEOUT, || {
        cluster.client(&["workers", "--json"]).stdout.len() > 2
    });
    worker.signal(Signal::SIGSTOP);
    let run = cluster.trigger("wake");
    // Longer than the worker's read timeout: its blocked read was answered while it slept.
    std::thread::sleep(Duration::from_secs(8));
    worker.signal(Signal::SIGCONT);
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    let work = step(&show, "work");
    assert_eq!(work["attempts"].as_array().unwrap().len(), 1, "{work:#}");
    assert_eq!(lines(&cluster.scratch.path().join("ran.log")), ["work 1"]);
    assert_one_result_per_step(&show);
}

#[test]
fn a_result_delivered_to_a_frozen_scheduler_is_applied_when_it_wakes() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "late",
        "name: late\nsteps:\n  work: {run: 'sleep 1; echo \"work $SLUICE_ATTEMPT\" >> ../ran.log'}\n  after: {depends: [work], run: 'true'}\n",
    );
    cluster.start_scheduler_with(&["--lease", "60s"]);
    let _worker = cluster.start_worker("busy", 1);
    let run = cluster.trigger("late");
    wait_until("the step to start", RUN_TIMEOUT, || {
        cluster.step_status(&run, "work") == "running"
    });
    let scheduler = cluster.scheduler.as_ref().expect("running");
    scheduler.signal(Signal::SIGSTOP);
    // The result arrives while the scheduler sleeps, longer than its read's timeout.
    std::thread::sleep(Duration::from_secs(10));
    scheduler.signal(Signal::SIGCONT);
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    assert_eq!(lines(&cluster.scratch.path().join("ran.log")), ["work 1"]);
    assert_one_result_per_step(&show);
}

#[test]
fn a_frozen_worker_past_its_lease_has_its_late_result_refused() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // Attempt 1 takes long enough for the lease to run out while its worker is frozen; the
    // step process itself keeps running and ends on its own.
    cluster.pipeline(
        "frozen",
        "name: frozen\nsteps:\n  work:\n    retry: 2\n    run: |\n      echo \"work $SLUICE_ATTEMPT\" >> ../ran.log\n      if [ \"$SLUICE_ATTEMPT\" = 1 ]; then sleep 4; fi\n      echo \"result=$SLUICE_ATTEMPT\" >> \"$SLUICE_OUTPUTS\"\n",
    );
    cluster.start_scheduler();
    let frozen = cluster.start_worker("frozen", 1);
    let run = cluster.trigger("frozen");
    let ran = cluster.scratch.path().join("ran.log");
    wait_until("the step to start", RUN_TIMEOUT, || !lines(&ran).is_empty());
    frozen.signal(Signal::SIGSTOP);
    let _other = cluster.start_worker("other", 1);
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");

    // Thaw the first worker: it learns its lease is gone or reports attempt 1; either way the
    // committed state must not change.
    frozen.signal(Signal::SIGCONT);
    let log = frozen.log.clone();
    wait_until("the thawed worker to notice", RUN_TIMEOUT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("Lost the lease")
            || cluster.scheduler_logs().contains("Stale result rejected")
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = cluster.show(&run);
    let work = step(&after, "work");
    assert_eq!(work["status"], "succeeded");
    assert_eq!(
        work["outputs"]["result"], "2",
        "the late result overwrote newer work: {work:#}"
    );
    let attempts = work["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "lost", "{work:#}");
    assert_eq!(attempts.last().unwrap()["worker"], "other");
    assert_one_result_per_step(&after);
}

#[test]
fn a_scheduler_killed_mid_fan_out_resumes_without_running_anything_twice() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let mut yaml =
        String::from("name: fan\nsteps:\n  root:\n    run: echo \"$SLUICE_STEP\" >> ../ran.log\n");
    for i in 0..12 {
        yaml.push_str(&format!(
            "  leaf{i}:\n    depends: root\n    run: {}\n",
            serde_json::to_string(&marking_step("0.7")).unwrap()
        ));
    }
    yaml.push_str("  join:\n    depends: [");
    yaml.push_str(
        &(0..12)
            .map(|i| format!("leaf{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    yaml.push_str("]\n    run: echo \"$SLUICE_STEP\" >> ../ran.log\n");
    cluster.pipeline("fan", &yaml);
    cluster.start_scheduler();
    let _a = cluster.start_worker("a", 3);
    let _b = cluster.start_worker("b", 3);
    let run = cluster.trigger("fan");
    let ran = cluster.scratch.path().join("ran.log");
    // Some leaves done, others running or queued.
    wait_until("a few leaves to finish", RUN_TIMEOUT, || {
        lines(&ran).len() >= 7
    });
    cluster.kill_scheduler();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.start_scheduler();

    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    let mut names: Vec<String> = lines(&ran)
        .into_iter()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..12).map(|i| format!("leaf{i}")).collect();
    expected.extend(["join".to_string(), "root".to_string()]);
    expected.sort();
    assert_eq!(names, expected, "every step runs exactly once");
    assert_one_result_per_step(&show);
}

/// Group commit under load: 5,000 independent steps report their results as fast as two workers
/// run them, so the scheduler is nearly always between applying a batch of results, flushing it
/// and acknowledging it. It is killed three times while the results stream in; each restart
/// must take up the run from what was flushed, apply the unacknowledged results again (fenced
/// where they were already committed) and queue nothing twice.
#[test]
fn a_scheduler_killed_during_group_commits_of_a_wide_fan_out_loses_and_repeats_nothing() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    const STEPS: usize = 5000;
    let ran = cluster.scratch.path().join("ran.log");
    let mark = serde_json::to_string(&format!(
        "echo \"$SLUICE_STEP $SLUICE_ATTEMPT\" >> {}",
        ran.display()
    ))
    .unwrap();
    let mut yaml = String::from("name: wide\nparallelism: 10000\nsteps:\n");
    for i in 0..STEPS {
        yaml.push_str(&format!("  s{i}:\n    run: {mark}\n"));
    }
    cluster.pipeline("wide", &yaml);
    cluster.start_scheduler();
    let _a = cluster.start_worker("a", 4);
    let _b = cluster.start_worker("b", 4);
    let run = cluster.trigger("wide");
    for progress in [STEPS / 5, STEPS / 2, STEPS * 4 / 5] {
        wait_until("more steps to finish", RUN_TIMEOUT, || {
            lines(&ran).len() >= progress
        });
        cluster.kill_scheduler();
        std::thread::sleep(Duration::from_millis(300));
        cluster.start_scheduler();
    }

    let show = cluster.wait_run(&run, Duration::from_secs(300));
    assert_eq!(show["run"]["status"], "succeeded");
    let steps = show["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), STEPS);
    for step in steps {
        assert_eq!(step["status"], "succeeded", "{step:#}");
        assert_eq!(
            step["attempts"].as_array().map(Vec::len),
            Some(1),
            "{step:#}"
        );
    }
    let mut marks = lines(&ran);
    assert_eq!(marks.len(), STEPS, "every step ran, none twice");
    marks.sort();
    marks.dedup();
    assert_eq!(marks.len(), STEPS, "no step ran twice");
    assert!(
        marks.iter().all(|m| m.ends_with(" 1")),
        "every step ran as its first attempt"
    );
    // How many results were delivered again after being committed (the kill fell between a
    // flush and its acknowledgement), for the record: the assertions above hold either way.
    let fenced = cluster
        .scheduler_logs()
        .matches("Stale result rejected")
        .count();
    eprintln!("results delivered again after their commit and fenced: {fenced}");
}

#[test]
fn a_redis_restart_without_persistence_does_not_lose_the_run() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "chain",
        &format!(
            "name: chain\nsteps:\n  a:\n    run: {a}\n  b:\n    depends: a\n    run: {b}\n  c:\n    depends: b\n    run: {c}\n",
            a = serde_json::to_string(&marking_step("0")).unwrap(),
            b = serde_json::to_string(&marking_step("2")).unwrap(),
            c = serde_json::to_string(&marking_step("0")).unwrap(),
        ),
    );
    cluster.start_scheduler();
    let _w = cluster.start_worker("w", 2);
    let run = cluster.trigger("chain");
    let ran = cluster.scratch.path().join("ran.log");
    wait_until("step b to start", RUN_TIMEOUT, || {
        lines(&ran).iter().any(|l| l.starts_with("b "))
    });
    cluster.kill_redis();
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_redis();

    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    let c_runs = lines(&ran).iter().filter(|l| l.starts_with("c ")).count();
    assert_eq!(c_runs, 1, "{:?}", lines(&ran));
    assert_one_result_per_step(&show);
}

#[test]
fn many_concurrent_triggers_while_workers_come_and_go_lose_and_duplicate_nothing() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "small",
        "name: small\ndefaults:\n  retry: 3\nsteps:\n  one:\n    run: sleep 0.2\n  two:\n    depends: one\n    run: sleep 0.2\n  three:\n    depends: two\n    run: echo \"$SLUICE_RUN_ID\" >> ../done.log\n",
    );
    cluster.start_scheduler();
    let mut leaving = cluster.start_worker("leaving", 4);
    let _staying = cluster.start_worker("staying", 4);
    let runs: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|_| scope.spawn(|| cluster.trigger("small")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    leaving.kill9();
    let _late = cluster.start_worker("late", 4);

    let mut unique = runs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 24, "each trigger started its own run");
    for run in &runs {
        let show = cluster.wait_run(run, RUN_TIMEOUT);
        assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
        assert_one_result_per_step(&show);
    }
    let listed = cluster.client(&["runs", "--json", "--limit", "100"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 24, "no run lost or added");
    let mut done = lines(&cluster.scratch.path().join("done.log"));
    done.sort();
    assert_eq!(done, unique, "the last step of each run ran once");
}

#[test]
fn a_busy_worker_keeps_the_lease_of_the_task_it_read_ahead() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // One slot, two parallel steps that each outlast the lease: the second waits on the worker
    // (read ahead) for longer than a lease, and must not be taken back as lost.
    cluster.pipeline(
        "busy",
        &format!(
            "name: busy\nsteps:\n  one:\n    run: {s}\n  two:\n    run: {s}\n",
            s = serde_json::to_string(&marking_step("3")).unwrap()
        ),
    );
    cluster.start_scheduler();
    let _worker = cluster.start_worker("only", 1);
    let run = cluster.trigger("busy");
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    for name in ["one", "two"] {
        let attempts = step(&show, name)["attempts"].as_array().unwrap().clone();
        assert_eq!(attempts.len(), 1, "{name} was taken back: {attempts:#?}");
    }
}

#[test]
fn step_logs_reach_the_scheduler_through_redis_when_the_worker_disk_is_elsewhere() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "talk",
        "name: talk\nsteps:\n  say:\n    run: |\n      for i in 1 2 3; do echo \"line $i\"; sleep 0.3; done\n      echo oops >&2\n",
    );
    cluster.start_scheduler();
    let _worker = cluster.start_worker("remote", 1);
    let run = cluster.trigger("talk");
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    // The worker kept its files in its own data dir: the scheduler's folder for the attempt
    // does not exist, as on another machine.
    let dir = step(&show, "say")["attempts"][0]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!std::path::Path::new(&dir).exists(), "{dir}");
    assert!(cluster
        .worker_attempt_dir("remote", &run, "say", 1)
        .join("stdout.log")
        .is_file());
    let out = cluster.client(&["logs", &run, "say"]);
    assert!(out.status.success(), "{}", sluice_tests::text(&out.stderr));
    assert_eq!(sluice_tests::text(&out.stdout), "line 1\nline 2\nline 3\n");
    assert_eq!(sluice_tests::text(&out.stderr), "oops\n");
}

#[test]
fn a_worker_stops_on_sigterm_even_when_redis_is_gone() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let mut worker = cluster.start_worker("leaving", 1);
    let port = cluster.redis_port;
    let registered = || {
        let (status, body) = sluice_tests::cluster::registered_workers(port);
        status && body.contains("leaving")
    };
    wait_until("the worker to register", RUN_TIMEOUT, registered);
    cluster.kill_redis();
    std::thread::sleep(Duration::from_millis(500));
    worker.signal(Signal::SIGTERM);
    let mut status = None;
    wait_until("the worker to exit", RUN_TIMEOUT, || {
        status = worker.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{}", worker.log_text());
}

#[test]
fn a_second_scheduler_on_the_same_prefix_is_refused() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline("p", "name: p\nsteps:\n  a: {run: 'true'}\n");
    cluster.start_scheduler();
    // Its own data dir and port, the same Redis and prefix: it would split the results.
    let other_data = cluster.scratch.path().join("other-data");
    let child = std::process::Command::new(sluice_bin())
        .args([
            "scheduler",
            "--pipelines",
            "pipelines",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--redis", &cluster.redis_url(), "--lease", "2s"])
        .env("SLUICE_DATA_DIR", &other_data)
        .current_dir(cluster.scratch.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, RUN_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("another scheduler"),
        "{}",
        text(&out.stderr)
    );
    // The first one still works.
    let _worker = cluster.start_worker("w", 1);
    let run = cluster.trigger("p");
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
}

#[test]
fn a_worker_restarted_after_kill_9_kills_the_step_its_predecessor_left_running() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "orphan",
        "name: orphan\nsteps:\n  work: {run: 'echo $$ >> ../pids; sleep 300'}\n",
    );
    cluster.start_scheduler();
    let mut first = cluster.start_worker("same", 1);
    let _run = cluster.trigger("orphan");
    let pids = cluster.scratch.path().join("pids");
    wait_until("the step to start", RUN_TIMEOUT, || {
        !lines(&pids).is_empty()
    });
    let orphan: i32 = lines(&pids)[0].parse().unwrap();
    first.kill9();
    // A local step outlives its killed worker...
    std::thread::sleep(Duration::from_millis(500));
    assert!(sluice_tests::process_alive(orphan), "the orphan runs on");
    // ...until the worker comes back on the machine.
    let _again = cluster.start_worker("same", 1);
    wait_until("the orphan to be killed", RUN_TIMEOUT, || {
        !sluice_tests::process_alive(orphan)
    });
}

#[test]
fn a_worker_cut_off_from_redis_stops_its_step_before_it_runs_elsewhere() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "cut",
        "name: cut\nsteps:\n  work: {run: 'echo \"start $SLUICE_ATTEMPT\" >> ../ran.log; sleep 8; echo \"end $SLUICE_ATTEMPT\" >> ../ran.log'}\n",
    );
    cluster.start_scheduler();
    let _worker = cluster.start_worker("island", 1);
    let run = cluster.trigger("cut");
    let ran = cluster.scratch.path().join("ran.log");
    wait_until("the step to start", RUN_TIMEOUT, || !lines(&ran).is_empty());
    // Nobody can renew anything while Redis is frozen: longer than the lease.
    let redis = cluster.redis_proc().expect("redis runs");
    redis.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(7));
    redis.signal(Signal::SIGCONT);
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    // Attempt 1 was stopped by its own worker and handed back, never reported as cancelled;
    // only attempt 2 ran to its end.
    assert_eq!(lines(&ran), ["start 1", "start 2", "end 2"], "{show:#}");
    let work = step(&show, "work");
    assert_eq!(work["attempts"][0]["outcome"], "lost", "{work:#}");
    assert_one_result_per_step(&show);
}

#[test]
fn redis_with_a_password_and_tls_works_and_the_password_stays_out_of_logs() {
    let password = "pw-that-must-not-be-logged";
    let Some(mut cluster) = Cluster::new_secured(password) else {
        return;
    };
    cluster.pipeline("p", "name: p\nsteps:\n  a: {run: 'echo over tls'}\n");
    cluster.start_scheduler();
    let worker = cluster.start_worker("tls", 1);
    let run = cluster.trigger("p");
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    // Plain text to the TLS port is not Redis to a client: nothing answers it as such.
    let plain = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &cluster.redis_port.to_string(),
            "-a",
            password,
            "PING",
        ])
        .output()
        .unwrap();
    assert!(
        !text(&plain.stdout).contains("PONG"),
        "{}",
        text(&plain.stdout)
    );
    let logs = format!("{}{}", cluster.scheduler_logs(), worker.log_text());
    assert!(!logs.contains(password), "{logs}");
}

#[test]
fn a_cancel_ends_the_run_even_when_the_steps_worker_is_frozen() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "stuck",
        &format!(
            "name: stuck\nsteps:\n  work:\n    run: {}\n",
            serde_json::to_string(&marking_step("300")).unwrap()
        ),
    );
    // A lease far longer than the test: only the cancel's own grace can end the run.
    cluster.start_scheduler_with(&["--lease", "300s"]);
    let worker = cluster.start_worker("frozen", 1);
    let run = cluster.trigger("stuck");
    let ran = cluster.scratch.path().join("ran.log");
    wait_until("the step to start", RUN_TIMEOUT, || !lines(&ran).is_empty());
    worker.signal(Signal::SIGSTOP);
    let out = cluster.client(&["cancel", &run]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = cluster.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(show["run"]["status"], "cancelled", "{show:#}");
    let attempt = &step(&show, "work")["attempts"][0];
    assert_eq!(attempt["status"], "cancelled", "{attempt:#}");
    worker.signal(Signal::SIGCONT);
}
