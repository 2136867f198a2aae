//! A data dir while `sluice run` holds it: the holder serves `runs`, `show`, `logs --follow`
//! and `cancel` on its socket, runs another `sluice run`'s pipeline beside its own, and hands
//! the data dir back when it is done.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sluice_tests::{step, text, wait_output, wait_until, Scratch};

const WAIT: Duration = Duration::from_secs(60);

/// `hold` waits for a file before it ends, so the test decides when the holder lets go.
const HOLDER: &str = "name: holder
steps:
  hold:
    run: echo holding; touch ../holding; while [ ! -e ../release ]; do sleep 0.05; done; echo released
";

const OTHER: &str = "name: other
steps:
  a: {run: echo hello from other}
  b: {run: 'echo broken >&2; exit 3', depends: [a]}
";

fn start(s: &Scratch, file: &str) -> Child {
    s.sluice()
        .args(["run", file])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice run")
}

fn run_id_of(s: &Scratch, pipeline: &str) -> String {
    let out = s.run(&["runs", "--json", "--pipeline", pipeline]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    runs[0]["id"].as_str().expect("a run").to_string()
}

#[test]
fn while_a_run_holds_the_data_dir_other_commands_and_runs_go_through_it() {
    let s = Scratch::new();
    s.write("p/holder.yaml", HOLDER);
    s.write("p/other.yaml", OTHER);
    let holder = start(&s, "p/holder.yaml");
    wait_until("the holder's step to start", WAIT, || {
        s.path().join("holding").exists()
    });
    let socket = s.data_dir().join("sluice.sock");
    let mode = std::fs::metadata(&socket)
        .expect("the socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner may connect");

    // Reads go through the holder.
    let held = run_id_of(&s, "holder");
    assert_eq!(s.show(&held)["run"]["status"], "running");
    let out = s.run(&["show", &held]);
    assert!(text(&out.stdout).contains("hold"), "{}", text(&out.stdout));

    // A second run is run by the holder and followed here, with the usual end and exit code.
    let out = s.run(&["run", "p/other.yaml"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("run by the `sluice run` that holds this data dir"),
        "{stdout}"
    );
    assert!(stdout.contains("`b` failed: exit code 3"), "{stdout}");
    assert!(
        stdout.contains("broken"),
        "the failed step's stderr tail: {stdout}"
    );
    let other = run_id_of(&s, "other");
    let out = s.run(&["logs", &other, "a"]);
    assert_eq!(text(&out.stdout).trim(), "hello from other");
    assert_eq!(step(&s.show(&other), "b")["status"], "failed");

    // Logs followed through the holder end when the step does.
    let follower = s
        .sluice()
        .args(["logs", &held, "hold", "--follow", "--stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn logs");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(s.path().join("release"), "").expect("release");
    let followed = wait_output(follower, WAIT);
    assert_eq!(
        text(&followed.stdout),
        "holding\nreleased\n",
        "{}",
        text(&followed.stderr)
    );

    let out = wait_output(holder, WAIT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("hosting run"),
        "{}",
        text(&out.stderr)
    );
    assert!(!socket.exists(), "the socket goes with the holder");
    // The data dir is the store's again.
    assert_eq!(s.show(&held)["run"]["status"], "succeeded");
}

#[test]
fn cancel_and_ctrl_c_reach_runs_driven_by_the_holder() {
    let s = Scratch::new();
    s.write("p/holder.yaml", HOLDER);
    s.write(
        "p/sleeper.yaml",
        "name: sleeper\nsteps:\n  nap: {run: touch ../napping; sleep 60}\n",
    );
    let holder = start(&s, "p/holder.yaml");
    wait_until("the holder's step to start", WAIT, || {
        s.path().join("holding").exists()
    });

    // Ctrl-C on the `sluice run` that handed its pipeline over cancels that run.
    let sleeper = start(&s, "p/sleeper.yaml");
    wait_until("the hosted step to start", WAIT, || {
        s.path().join("napping").exists()
    });
    kill(Pid::from_raw(sleeper.id() as i32), Signal::SIGINT).expect("SIGINT");
    let out = wait_output(sleeper, WAIT);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let napped = run_id_of(&s, "sleeper");
    assert_eq!(s.show(&napped)["run"]["status"], "cancelled");

    // `sluice cancel` on the data dir reaches the holder's own run.
    let held = run_id_of(&s, "holder");
    let out = s.run(&["cancel", &held]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = wait_output(holder, WAIT);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(s.show(&held)["run"]["status"], "cancelled");
}
