//! The everyday client commands: `trigger --wait` on a failure (exit code, stderr tail, the
//! command for the whole log) and on Ctrl-C (the run goes on), `pipelines` (triggers, next cron
//! instant, load errors, here and on a scheduler), `runs --pipeline/--status`, and `show`'s
//! commit and attempt folders.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sluice_tests::cluster::{run_id_of, Server};
use sluice_tests::{text, wait_output, wait_until, Scratch};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `b` writes 15 lines to stderr and exits 3; `c` never runs.
const FAILING: &str = "name: failing
steps:
  a:
    run: echo fine
  b:
    depends: [a]
    run: for i in $(seq 1 15); do echo \"err line $i\" >&2; done; exit 3
  c:
    depends: [b]
    run: echo never
";

#[test]
fn trigger_wait_on_a_failed_run_prints_the_exit_code_the_stderr_tail_and_the_logs_command() {
    let s = Scratch::new();
    s.write("pipelines/failing.yaml", FAILING);
    let server = Server::start(&s, &[]);
    let url = server.url();

    let out = s.run(&["trigger", "failing", "--wait", "--server", &url]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let run = run_id_of(&stdout);
    assert!(
        stdout.contains(&format!("run {run} failed in "))
            && stdout.contains(": 1 succeeded, 1 failed, 1 skipped\n"),
        "{stdout}"
    );
    assert!(stdout.contains("--- `b` failed: exit code 3\n"), "{stdout}");
    // The last ten lines, as `sluice run` shows them.
    let tail: String = (6..=15).map(|i| format!("    err line {i}\n")).collect();
    assert!(
        stdout.contains(&format!("--- last lines of `b` stderr:\n{tail}")),
        "{stdout}"
    );
    assert!(!stdout.contains("    err line 5\n"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "    full log: sluice logs {run} b --server {url}\n"
        )),
        "{stdout}"
    );
    // The command it names works.
    let out = s.run(&["logs", &run, "b", "--stderr", "--server", &url]);
    assert!(text(&out.stderr).contains("err line 1\n"));

    // `retry --wait` follows the new run the same way.
    let out = s.run(&["retry", &run, "--server", &url, "--wait"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("--- `b` failed: exit code 3\n"), "{stdout}");
    assert!(stdout.contains("    err line 15\n"), "{stdout}");
    assert!(stdout.contains("full log: sluice logs "), "{stdout}");
}

#[test]
fn ctrl_c_while_waiting_leaves_the_run_going_and_says_how_to_cancel_it() {
    let s = Scratch::new();
    s.write(
        "pipelines/long.yaml",
        "name: long\nsteps:\n  nap:\n    run: sleep 60\n",
    );
    let server = Server::start(&s, &[]);
    let url = server.url();

    let mut child = s
        .sluice()
        .args(["trigger", "long", "--wait", "--server", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = Arc::clone(&seen);
        let mut stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // Once it prints the step running, it is following the run (and listening for Ctrl-C).
    wait_until("the step to run", TIMEOUT, || {
        seen.lock().unwrap().contains(" running")
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT");
    let out = wait_output(child, TIMEOUT);
    reader.join().expect("reader");
    let stdout = seen.lock().unwrap().clone();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    let run = run_id_of(&stdout);
    let cancel = format!("sluice cancel {run} --server {url}");
    assert!(
        stderr.contains(&format!("run {run} goes on on the scheduler")) && stderr.contains(&cancel),
        "{stderr}"
    );
    let status = |server: &Server| {
        server.get(&format!("/api/v1/runs/{run}"))["run"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status(&server), "running", "only the waiting stopped");

    // The command it printed cancels the run.
    let args: Vec<&str> = cancel.split_whitespace().skip(1).collect();
    let out = s.run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the run to be cancelled", TIMEOUT, || {
        status(&server) == "cancelled"
    });
}

#[test]
fn pipelines_lists_triggers_with_the_next_cron_instant_and_load_errors_with_their_line() {
    let s = Scratch::new();
    let nightly = s.write(
        "pipelines/nightly.yaml",
        "name: nightly
triggers:
  - cron: '0 3 * * *'
  - webhook: go
    insecure: true
steps:
  train:
    run: echo training
",
    );
    s.write(
        "pipelines/manual.yaml",
        "name: manual\nsteps:\n  a: {run: 'true'}\n",
    );
    s.write(
        "pipelines/broken.yaml",
        "name: broken\nsteps:\n  a:\n    run: echo\n    retyr: 2\n",
    );
    let check = |out: std::process::Output| {
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(
            stdout.starts_with("PIPELINE  VERSION       STEPS  FILE"),
            "{stdout}"
        );
        let row = stdout
            .lines()
            .find(|l| l.starts_with("nightly "))
            .unwrap_or_else(|| panic!("no nightly row: {stdout}"));
        assert!(
            row.contains("pipelines/nightly.yaml  cron `0 3 * * *` (UTC), next 20")
                && row.contains("T03:00:00Z (in "),
            "{stdout}"
        );
        assert!(
            stdout.contains("  webhook POST /hooks/nightly/go\n"),
            "{stdout}"
        );
        assert!(stdout.contains("\nmanual "), "{stdout}");
        assert!(
            stdout.contains("\n1 file not loaded:\npipelines/broken.yaml\n  pipelines/broken.yaml:5:5: unknown key `retyr`"),
            "{stdout}"
        );
        stdout
    };

    // Here, from the folder.
    check(s.run(&["pipelines"]));
    let out = s.run(&["pipelines", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let nightly_json = &listed["pipelines"][1];
    assert_eq!(nightly_json["name"], "nightly", "{listed:#}");
    assert_eq!(nightly_json["triggers"][0]["kind"], "cron");
    assert!(nightly_json["triggers"][0]["next"]
        .as_str()
        .is_some_and(|t| t.ends_with("T03:00:00Z")));
    assert_eq!(listed["errors"][0]["file"], "pipelines/broken.yaml");
    let out = s.run(&["pipelines", "--pipelines", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no folder nowhere"));

    // On the scheduler: the same table, from the API.
    let server = Server::start(&s, &[]);
    check(s.run(&["pipelines", "--server", &server.url()]));

    // A file that breaks keeps its last good version served, and the listing says so.
    std::fs::write(&nightly, "name: nightly\nsteps:\n  train:\n    rum: x\n").unwrap();
    wait_until("the broken file to be reported", TIMEOUT, || {
        server.get("/api/v1/pipelines")["errors"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    });
    let out = s.run(&["pipelines", "--server", &server.url()]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("serving the last good version: its file has errors (below)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pipelines/nightly.yaml (serving its last good version, "),
        "{stdout}"
    );
    assert!(
        stdout.contains("  pipelines/nightly.yaml:4:5: unknown key `rum`"),
        "{stdout}"
    );
}

#[test]
fn runs_filters_by_pipeline_and_status_here_and_on_the_server() {
    let s = Scratch::new();
    let ok = s.write(
        "pipelines/ok.yaml",
        "name: ok\nsteps:\n  a: {run: 'true'}\n",
    );
    let bad = s.write(
        "pipelines/bad.yaml",
        "name: bad\nsteps:\n  a: {run: 'exit 1'}\n",
    );
    for (file, code) in [(&ok, 0), (&bad, 1), (&ok, 0)] {
        let out = s.run(&["run", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stdout));
    }
    let listed = |out: std::process::Output| -> Vec<(String, String)> {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        runs.as_array()
            .expect("a list")
            .iter()
            .map(|r| {
                (
                    r["pipeline"].as_str().unwrap().to_string(),
                    r["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let ok_ok = vec![
        ("ok".to_string(), "succeeded".to_string()),
        ("ok".to_string(), "succeeded".to_string()),
    ];
    let bad_failed = vec![("bad".to_string(), "failed".to_string())];

    assert_eq!(
        listed(s.run(&["runs", "--json", "--pipeline", "ok"])),
        ok_ok
    );
    assert_eq!(
        listed(s.run(&["runs", "--json", "--status", "failed"])),
        bad_failed
    );
    assert_eq!(
        listed(s.run(&["runs", "--json", "--pipeline", "ok", "--limit", "1"])).len(),
        1
    );
    assert!(listed(s.run(&[
        "runs",
        "--json",
        "--pipeline",
        "bad",
        "--status",
        "succeeded"
    ]))
    .is_empty());
    let out = s.run(&["runs", "--status", "done"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("queued, running, succeeded, failed, cancelled"),
        "{stderr}"
    );

    // The scheduler over the same data dir filters the same way.
    let server = Server::start(&s, &[]);
    let url = server.url();
    assert_eq!(
        listed(s.run(&["runs", "--json", "--pipeline", "ok", "--server", &url])),
        ok_ok
    );
    assert_eq!(
        listed(s.run(&["runs", "--json", "--status", "failed", "--server", &url])),
        bad_failed
    );
    let out = s.run(&["runs", "--status", "failed", "--server", &url]);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "a header and one run: {stdout}");
    assert!(stdout.lines().nth(1).unwrap().contains(" bad "), "{stdout}");
}

#[test]
fn show_prints_the_commit_and_each_steps_attempt_folder() {
    let s = Scratch::new();
    let file = s.write(
        "pipelines/two.yaml",
        "name: two\nsteps:\n  a: {run: 'true'}\n  b: {run: 'true', depends: [a]}\n",
    );
    let git = |args: &[&str]| {
        Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(s.path())
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    };
    let in_git = git(&["init", "-q"]) && git(&["add", "pipelines"]) && git(&["commit", "-qm", "x"]);
    if !in_git {
        eprintln!("git is not usable here: the commit is not checked");
    }
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(s.path())
        .output()
        .map(|out| text(&out.stdout).trim().to_string())
        .unwrap_or_default();
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = s.latest_run_id();
    let check = |out: std::process::Output| {
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        if in_git {
            assert!(
                stdout.contains(&format!("\ncommit    {commit}\n")),
                "{stdout}"
            );
        }
        for step in ["a", "b"] {
            let folder = s.data_dir().join("runs").join(&run).join(step).join("1");
            assert!(
                stdout.contains(&format!("  folder: {}", folder.display())),
                "{stdout}"
            );
        }
    };
    check(s.run(&["show", &run]));
    let server = Server::start(&s, &[]);
    check(s.run(&["show", &run, "--server", &server.url()]));
}
