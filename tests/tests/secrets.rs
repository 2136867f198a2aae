//! The encrypted secret store end to end: `sluice secrets` stores a value sealed, a step that
//! names it receives it, and the value in clear is nowhere else: not in the data dir, not in
//! the logs, not in Redis.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_tests::cluster::Cluster;
use sluice_tests::{step, text, wait_output, Scratch};

/// A value unlikely to appear anywhere by chance.
const VALUE: &str = "s3cr3t-7f1c9a2e-value";

/// The step prints the secret (so masking is tested) and leaves its SHA-256 (so the test can
/// tell that it got the right value without the value being written anywhere).
const PIPELINE: &str = r#"name: uses-secret
steps:
  call:
    run: |
      echo "token is $API_TOKEN"
      printf '%s' "$API_TOKEN" | sha256sum | cut -d' ' -f1 > "$SLUICE_OUT/digest"
    secrets: [API_TOKEN]
    outputs: [digest]
"#;

fn keygen(s: &Scratch, file: &str) -> std::path::PathBuf {
    let out = s.run(&["secrets", "keygen"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.write(file, &text(&out.stdout))
}

/// `sluice secrets set NAME --secret-key-file KEY` with `value` on standard input.
fn set(s: &Scratch, data_dir: &Path, key: &Path, name: &str, value: &str) -> std::process::Output {
    let mut child = s
        .sluice()
        .args(["secrets", "set", name, "--secret-key-file"])
        .arg(key)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    wait_output(child, Duration::from_secs(30))
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn step_digest(show: &serde_json::Value) -> String {
    let dir = step(show, "call")["attempts"][0]["dir"].as_str().unwrap();
    digest_in(std::path::Path::new(dir))
}

fn digest_in(attempt_dir: &std::path::Path) -> String {
    std::fs::read_to_string(attempt_dir.join("step/out/digest"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_stored_secret_reaches_its_step_and_is_never_kept_in_clear() {
    let s = Scratch::new();
    let key = keygen(&s, "key");
    let out = set(&s, &s.data_dir(), &key, "API_TOKEN", VALUE);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let listed = s.run(&["secrets", "ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["name"], "API_TOKEN");
    assert!(!listed.to_string().contains(VALUE));

    let file = s.write("p.yaml", PIPELINE);
    let out = s.run(&[
        "run",
        file.to_str().unwrap(),
        "--secret-key-file",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = s.show(&s.latest_run_id());
    assert_eq!(
        step_digest(&show),
        digest(VALUE),
        "the step got the stored value"
    );
    let logs = s.run(&["logs", show["run"]["id"].as_str().unwrap(), "call"]);
    assert!(
        text(&logs.stdout).contains("token is ***"),
        "{}",
        text(&logs.stdout)
    );
    assert_eq!(files_containing(&s.data_dir(), VALUE), Vec::<String>::new());
}

#[test]
fn a_missing_secret_or_key_is_refused_before_the_run_and_a_wrong_key_fails_the_step() {
    let s = Scratch::new();
    let key = keygen(&s, "key");
    let other = keygen(&s, "other-key");
    assert!(set(&s, &s.data_dir(), &key, "API_TOKEN", VALUE)
        .status
        .success());
    let file = s.write("p.yaml", PIPELINE);
    let file = file.to_str().unwrap();

    let message = |extra: &[&str]| {
        let mut args = vec!["run", file];
        args.extend_from_slice(extra);
        let out = s.run(&args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let show = s.show(&s.latest_run_id());
        step(&show, "call")["attempts"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Embedded runs check every secret before anything runs, and name all that are missing.
    let refused = |extra: &[&str]| {
        let mut args = vec!["run", file];
        args.extend_from_slice(extra);
        let out = s.run(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
        text(&out.stderr)
    };
    let without = refused(&[]);
    assert!(
        without.contains("`API_TOKEN` (step `call`) is in the secret store, but no key was given"),
        "{without}"
    );
    // A key that is not the one the secret was sealed with is found out when the step opens
    // it, and the step says so.
    let wrong = message(&["--secret-key-file", other.to_str().unwrap()]);
    assert!(wrong.contains("was sealed with key"), "{wrong}");

    // A second key is refused at `set`, so workers never hold half the secrets.
    let out = set(&s, &s.data_dir(), &other, "OTHER", "x");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("sealed with key"),
        "{}",
        text(&out.stderr)
    );

    assert!(s.run(&["secrets", "rm", "API_TOKEN"]).status.success());
    let gone = refused(&["--secret-key-file", key.to_str().unwrap()]);
    assert!(
        gone.contains(
            "`API_TOKEN` (step `call`) is neither in the secret store nor in this environment"
        ),
        "{gone}"
    );
    assert_eq!(
        s.run(&["secrets", "rm", "API_TOKEN"]).status.code(),
        Some(1)
    );
}

#[test]
fn through_redis_the_secret_travels_sealed_and_only_the_worker_holds_the_key() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let s = &cluster.scratch;
    let key = keygen(s, "key");
    assert!(set(s, &s.data_dir(), &key, "API_TOKEN", VALUE)
        .status
        .success());
    cluster.pipeline("uses-secret", PIPELINE);
    // Everything Redis is told, as it is told.
    let monitor_log = cluster.scratch.path().join("monitor.log");
    let mut monitor = Command::new("redis-cli")
        .args(["-p", &cluster.redis_port.to_string(), "monitor"])
        .stdout(std::fs::File::create(&monitor_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli (Debian's redis-tools) runs");
    cluster.start_scheduler(); // without the key
    let _worker = cluster.start_worker_with("w", 1, &["--secret-key-file", key.to_str().unwrap()]);
    let run = cluster.trigger("uses-secret");
    let show = cluster.wait_run(&run, Duration::from_secs(90));
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    let worker_dir = cluster.worker_attempt_dir("w", &run, "call", 1);
    assert_eq!(digest_in(&worker_dir), digest(VALUE));
    std::thread::sleep(Duration::from_millis(300));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let seen = std::fs::read_to_string(&monitor_log).unwrap();
    assert!(
        seen.contains("sluice-sealed-v1"),
        "the task went through Redis sealed"
    );
    assert!(!seen.contains(VALUE), "Redis saw the value in clear");
    assert_eq!(
        files_containing(cluster.scratch.path(), VALUE),
        Vec::<String>::new()
    );
}
