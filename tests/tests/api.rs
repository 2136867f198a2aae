//! The HTTP API and its CLI client against a real scheduler (Redis) or `sluice server`.

use std::process::Stdio;
use std::time::Duration;

use sluice_tests::cluster::{http, lines, run_id_of, Cluster, Server};
use sluice_tests::{process_alive, sluice_bin, step, text, wait_until, Scratch};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn the_flags_tokens_guard_a_real_scheduler_and_an_accepted_run_reaches_a_worker() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "good",
        "name: good\nparams:\n  epochs: {type: integer, default: 1}\nsteps:\n  only:\n    run: echo \"epochs=$PARAM_EPOCHS\"\n",
    );
    cluster.pipeline("broken", "name: broken\nsteps:\n  x:\n    rum: true\n");
    // A named read-only token from a tokens file (only its hash is in the file).
    let made = cluster
        .scratch
        .run(&["token", "new", "viewer", "--role", "read"]);
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
    assert!(!line.contains(&viewer));
    let tokens = cluster.scratch.write("tokens", &format!("{line}\n"));
    cluster.start_scheduler_with(&[
        "--api-token",
        "s3cret",
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    cluster.client_token = Some("s3cret".into());
    let _worker = cluster.start_worker("w", 1);
    let api = cluster.server();
    let token = Some("s3cret");

    assert_eq!(http("GET", &format!("{api}/healthz"), None, None).0, 200);
    assert_eq!(http("GET", &format!("{api}/readyz"), None, None).0, 200);
    let (status, body) = http(
        "POST",
        &format!("{api}/api/v1/pipelines/good/runs"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 403, "a read token cannot trigger: {body}");
    assert!(body.contains("`viewer` has role `read`"), "{body}");
    let (status, body) = http(
        "GET",
        &format!("{api}/api/v1/pipelines"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["pipelines"][0]["name"], "good");
    let problems = listed["errors"][0]["problems"].to_string();
    assert!(
        problems.contains("broken.yaml:4:5") && problems.contains("rum"),
        "a broken file is reported with its line and field: {problems}"
    );

    // Every status code is checked in process (scheduler/src/api/tests.rs); here, that the
    // flags' tokens guard a real scheduler and a run it accepts reaches a worker.
    let trigger = format!("{api}/api/v1/pipelines/good/runs");
    let (status, body) = http(
        "POST",
        &trigger,
        token,
        Some(r#"{"params": {"epochs": 7}}"#),
    );
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run = created["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["run"]["params"]["epochs"], "7");
    assert_eq!(
        created["run"]["trigger"], "api by api-token",
        "who started it"
    );

    let show = cluster.wait_run(&run, TIMEOUT);
    assert_eq!(show["run"]["status"], "succeeded");
    let out = cluster.client(&["logs", &run, "only"]);
    assert_eq!(text(&out.stdout), "epochs=7\n");

    let (status, body) = http(
        "POST",
        &format!("{api}/api/v1/runs/{run}/cancel"),
        token,
        None,
    );
    assert_eq!(status, 409, "a finished run cannot be cancelled: {body}");

    // The CLI says what went wrong and exits 2 on the user's mistakes.
    let out = cluster.client(&["trigger", "good", "--token", "wrong"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Bearer"),
        "{}",
        text(&out.stderr)
    );
    let out = cluster.client(&["trigger", "nope", "--token", "s3cret"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no pipeline named `nope`"));
}

#[test]
fn trigger_wait_follows_the_run_and_exits_on_its_outcome() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "passes",
        "name: passes\nsteps:\n  a:\n    run: echo hi\n  b:\n    depends: a\n    run: echo there\n",
    );
    cluster.pipeline(
        "fails",
        "name: fails\nsteps:\n  a:\n    run: exit 3\n  b:\n    depends: a\n    run: echo never\n",
    );
    cluster.start_scheduler();
    let _worker = cluster.start_worker("w", 2);

    let out = cluster.client(&["trigger", "passes", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("succeeded"));
    let out = cluster.client(&["trigger", "fails", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("failed") && stdout.contains("skipped"),
        "{stdout}"
    );

    let workers = cluster.client(&["workers", "--json"]);
    let workers: serde_json::Value = serde_json::from_slice(&workers.stdout).unwrap();
    assert_eq!(workers[0]["name"], "w");
    assert_eq!(workers[0]["slots"], 2);
    assert_eq!(workers[0]["queues"][0], "default");
}

#[test]
fn cancel_reaches_the_running_step_on_its_worker_and_kills_it() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "long",
        "name: long\nsteps:\n  wait:\n    run: echo $$ > ../step.pid; exec sleep 300\n  after:\n    depends: wait\n    run: echo never\n",
    );
    cluster.start_scheduler();
    let _worker = cluster.start_worker("w", 1);
    let run = cluster.trigger("long");
    let pid_file = cluster.scratch.path().join("step.pid");
    wait_until("the step to start", TIMEOUT, || {
        !lines(&pid_file).is_empty()
    });
    let pid: i32 = lines(&pid_file)[0].trim().parse().unwrap();
    assert!(process_alive(pid));

    let out = cluster.client(&["cancel", &run]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the step's process to be killed", TIMEOUT, || {
        !process_alive(pid)
    });
    let show = cluster.wait_run(&run, TIMEOUT);
    assert_eq!(show["run"]["status"], "cancelled");
    assert_eq!(step(&show, "wait")["status"], "cancelled");
    assert_eq!(step(&show, "after")["status"], "cancelled");
}

#[test]
fn logs_follow_streams_while_the_step_runs_and_ends_with_it() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pipeline(
        "talky",
        "name: talky\nsteps:\n  talk:\n    run: |\n      echo first\n      while [ ! -e ../go ]; do sleep 0.1; done\n      echo second\n",
    );
    cluster.start_scheduler();
    let _worker = cluster.start_worker("w", 1);
    let run = cluster.trigger("talky");
    wait_until("the step to run", TIMEOUT, || {
        cluster.step_status(&run, "talk") == "running"
    });
    let mut follow = cluster
        .scratch
        .sluice()
        .args([
            "logs",
            &run,
            "talk",
            "--stdout",
            "--follow",
            "--server",
            &cluster.server(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line arrives while the step still runs (it waits for `go`). Reads happen in a
    // thread so that every wait here has a timeout.
    let mut stdout = follow.stdout.take().unwrap();
    let (chunks, received) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || loop {
        let mut buf = [0u8; 256];
        match std::io::Read::read(&mut stdout, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if chunks.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    });
    let first = received
        .recv_timeout(TIMEOUT)
        .expect("the first line while the step runs");
    assert_eq!(first, b"first\n");
    assert_eq!(cluster.step_status(&run, "talk"), "running");
    std::fs::write(cluster.scratch.path().join("go"), "").unwrap();
    let mut rest = Vec::new();
    while let Ok(chunk) = received.recv_timeout(TIMEOUT) {
        rest.extend(chunk);
    }
    assert_eq!(text(&rest), "second\n");
    let status = sluice_tests::wait_output(follow, TIMEOUT).status;
    assert!(status.success());
}

#[test]
fn sluice_server_runs_pipelines_with_in_process_workers_and_no_redis() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/local.yaml",
        "name: local\nparams:\n  who: world\nsteps:\n  hello:\n    run: echo \"hello $PARAM_WHO\"\n    outputs: [greeting]\n  save:\n    depends: hello\n    run: echo greeting=done >> \"$SLUICE_OUTPUTS\"\n    outputs: [greeting]\n",
    );
    // Kept alive to the end of the test (dropping it kills the server).
    let running = Server::start(&scratch, &[]);
    let server = running.url();

    let run = |args: &[&str]| {
        let child = std::process::Command::new(sluice_bin())
            .args(args)
            .args(["--server", &server])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        sluice_tests::wait_output(child, TIMEOUT)
    };
    let out = run(&["trigger", "local", "-p", "who=sluice", "--wait"]);
    // `hello` promised an output it never wrote: the run fails and says so.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let run_id = run_id_of(&text(&out.stdout));
    let out = run(&["logs", &run_id, "hello"]);
    assert_eq!(text(&out.stdout), "hello sluice\n");
    let out = run(&["workers", "--json"]);
    let workers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(workers.as_array().unwrap().len(), 1);
}

#[test]
fn params_the_step_could_never_see_are_refused_and_listings_stay_small() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/p.yaml",
        "name: p\nparams:\n  note: {type: string, default: x}\nsteps:\n  a: {run: 'true'}\n",
    );
    let server = Server::start(&scratch, &[]);
    let trigger = format!("{}/api/v1/pipelines/p/runs", server.url());
    let body = |note: &str| serde_json::json!({ "params": { "note": note } }).to_string();
    let (status, answer) = http("POST", &trigger, None, Some(&body("a\u{0}b")));
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("NUL"), "{answer}");
    let (status, answer) = http("POST", &trigger, None, Some(&body(&"y".repeat(70_000))));
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("over the limit"), "{answer}");
    assert!(server.runs().is_empty(), "nothing refused was stored");
    let long = "z".repeat(10_000);
    let (status, answer) = http("POST", &trigger, None, Some(&body(&long)));
    assert_eq!(status, 201, "{answer}");
    let listed = &server.runs()[0];
    let shown = listed["params"]["note"].as_str().unwrap();
    assert!(
        shown.len() < 400 && shown.ends_with("(10000 bytes)"),
        "{shown}"
    );
    let id = listed["id"].as_str().unwrap();
    let whole = server.get(&format!("/api/v1/runs/{id}"));
    assert_eq!(whole["run"]["params"]["note"], long.as_str());
}

#[test]
fn connections_that_never_send_a_request_are_closed_and_do_not_lock_others_out() {
    use std::io::Read;
    let scratch = Scratch::new();
    scratch.write("pipelines/p.yaml", "name: p\nsteps:\n  a: {run: 'true'}\n");
    let server = Server::start(
        &scratch,
        &[
            ("SLUICE_MAX_CONNECTIONS", "8"),
            ("SLUICE_HEADER_TIMEOUT", "1s"),
        ],
    );
    let addr = server.url().trim_start_matches("http://").to_string();
    // Three times the cap, each silent: a slowloris.
    let mut idle: Vec<std::net::TcpStream> = (0..24)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    for stream in &idle {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    }
    // The server closes each (an accepted one after its header deadline; the waiting ones once
    // accepted in turn): the read ends instead of hanging until the test's limit.
    for (i, stream) in idle.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        if let Err(err) = stream.read(&mut buf) {
            let waited = matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
            assert!(!waited, "connection {i} was never closed");
        }
    }
    let (status, _) = http("GET", &format!("{}/healthz", server.url()), None, None);
    assert_eq!(status, 200);
}
