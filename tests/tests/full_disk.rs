//! A data dir whose disk fills up under a running `sluice server` and is then freed: the
//! daemon says it is not ready and refuses new runs while writes fail, holds the run in flight
//! without losing its result, and carries on once there is room, without a restart.
//!
//! The disk is a small tmpfs mounted over the data dir, which needs root (CI runs as root);
//! elsewhere the test says it was skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_tests::cluster::{http, Server};
use sluice_tests::{wait_until, Scratch};

/// A tmpfs mounted at a folder, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        if Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout != b"0\n")
            .unwrap_or(true)
        {
            eprintln!("skipped: mounting a small disk needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount -t tmpfs failed");
        Some(SmallDisk(at.to_path_buf()))
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run_status(server: &Server, id: &str) -> String {
    let (_, body) = http(
        "GET",
        &format!("{}/api/v1/runs/{id}", server.url()),
        None,
        None,
    );
    let show: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    show["run"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn trigger(server: &Server, pipeline: &str) -> (u16, String) {
    let url = format!("{}/api/v1/pipelines/{pipeline}/runs", server.url());
    http("POST", &url, None, Some("{}"))
}

#[test]
fn a_full_disk_holds_runs_and_readiness_until_it_is_freed() {
    let s = Scratch::new();
    let Some(disk) = SmallDisk::mount(&s.data_dir(), "48m") else {
        return;
    };
    s.write(
        "pipelines/slow.yaml",
        "name: slow\nsteps:\n  wait: {run: 'sleep 3'}\n",
    );
    s.write(
        "pipelines/quick.yaml",
        "name: quick\nsteps:\n  go: {run: 'true'}\n",
    );
    let mut server = Server::start(&s, &[]);
    let readyz = format!("{}/readyz", server.url());
    assert_eq!(http("GET", &readyz, None, None).0, 200);

    let (status, body) = trigger(&server, "slow");
    assert_eq!(status, 201, "{body}");
    let slow: serde_json::Value = serde_json::from_str(&body).unwrap();
    let slow = slow["run"]["id"].as_str().unwrap().to_string();
    wait_until("the slow step to start", Duration::from_secs(30), || {
        run_status(&server, &slow) == "running"
    });

    let filler = disk.fill();
    // sled writes into pages it already has until it needs a new one; runs started until
    // then are recorded (and must finish later). The first that cannot be is refused.
    let mut accepted = Vec::new();
    let refused = (0..2000).find_map(|_| match trigger(&server, "quick") {
        (201, body) => {
            let run: serde_json::Value = serde_json::from_str(&body).unwrap();
            accepted.push(run["run"]["id"].as_str().unwrap().to_string());
            None
        }
        (status, body) => Some((status, body)),
    });
    let (status, body) = refused.expect("a run is refused once the disk is full");
    assert_eq!(
        status,
        503,
        "a run that cannot be recorded is refused: {body}\n{}",
        server.log_text()
    );
    // The probe is reused for a second, so readiness may lag the refusal by that much.
    wait_until("readiness to go", Duration::from_secs(10), || {
        http("GET", &readyz, None, None).0 == 503
    });
    let (status, body) = http("GET", &readyz, None, None);
    assert_eq!(
        status, 503,
        "not ready while the store cannot write: {body}"
    );
    assert!(
        body.contains("cannot write") && body.contains("No space left"),
        "{body}"
    );
    // The slow step ends while the disk is full; its result waits to be written.
    std::thread::sleep(Duration::from_secs(4));

    std::fs::remove_file(filler).unwrap();
    wait_until("the slow run to finish", Duration::from_secs(60), || {
        run_status(&server, &slow) == "succeeded"
    });
    wait_until("readiness to come back", Duration::from_secs(30), || {
        http("GET", &readyz, None, None).0 == 200
    });
    let (status, body) = trigger(&server, "quick");
    assert_eq!(status, 201, "{body}");
    let quick: serde_json::Value = serde_json::from_str(&body).unwrap();
    let quick = quick["run"]["id"].as_str().unwrap().to_string();
    wait_until("the quick run to succeed", Duration::from_secs(30), || {
        run_status(&server, &quick) == "succeeded"
    });

    // What was acknowledged after the recovery is on disk: a kill -9 keeps it.
    server.kill9();
    server.restart(&s);
    assert_eq!(run_status(&server, &slow), "succeeded");
    assert_eq!(run_status(&server, &quick), "succeeded");
    for run in &accepted {
        assert_eq!(&run_status(&server, run), "succeeded", "run {run}");
    }
    let first_log = std::fs::read_to_string(s.path().join("server-1.log")).unwrap();
    assert!(!first_log.contains("panicked"), "{first_log}");
    assert!(first_log.contains("The store writes again"), "{first_log}");
}
