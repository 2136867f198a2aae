//! Helpers for end-to-end tests: build and run the real `sluice` binary in a scratch folder.

pub mod cluster;
pub mod promtool;
pub mod redis;
pub mod s3;
pub mod schemathesis;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (where `pipelines/` and `examples/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The `sluice` binary, built once per test process with the same cargo that runs the tests.
///
/// Cargo only exposes `CARGO_BIN_EXE_*` to tests of the package that owns the binary; this
/// crate holds the cross-crate tests, so it asks cargo to build the binary instead.
pub fn sluice_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(path) = std::env::var("SLUICE_BIN") {
            return PathBuf::from(path);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "sluice", "--bin", "sluice"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the sluice binary failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        target.join("debug").join("sluice")
    })
}

/// Whether `program --version` runs. When it does not, a test that needs it fails if
/// `require_env` is `1` (CI sets it, so nothing is skipped there) and otherwise is skipped with
/// a printed reason (`install` says how to get it, `skipped` what goes unchecked).
pub fn tool_available(program: &str, require_env: &str, install: &str, skipped: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var(require_env).as_deref() != Ok("1"),
            "{require_env}=1 but {program} is not on PATH ({install})"
        );
        eprintln!(
            "skipped: {program} is not on PATH{skipped}; set {require_env}=1 to fail instead"
        );
    }
    found
}

/// A scratch folder with a data dir, for one test.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    /// A new empty scratch folder.
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The data dir used by [`Scratch::sluice`].
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes a file (a pipeline, usually) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// A `sluice` command with this scratch's data dir in its environment.
    pub fn sluice(&self) -> Command {
        let mut command = Command::new(sluice_bin());
        command
            .env("SLUICE_DATA_DIR", self.data_dir())
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        command
    }

    /// Runs `sluice ARGS...` to completion, with a generous timeout.
    pub fn run(&self, args: &[&str]) -> Output {
        let child = self
            .sluice()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        wait_output(child, Duration::from_secs(120))
    }

    /// `sluice show RUN --json`, parsed.
    pub fn show(&self, run_id: &str) -> serde_json::Value {
        let out = self.run(&["show", run_id, "--json"]);
        assert!(out.status.success(), "show failed: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("show --json prints JSON")
    }

    /// The id of the newest run in the store.
    pub fn latest_run_id(&self) -> String {
        let out = self.run(&["runs", "--json", "--limit", "1"]);
        assert!(out.status.success(), "runs failed: {}", text(&out.stderr));
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        runs[0]["id"].as_str().expect("a run id").to_string()
    }
}

/// Waits for a child with a timeout, killing it if it overstays, and collects its output. The
/// pipes are drained while it runs: a child that prints more than a pipe holds (64 KiB) would
/// otherwise block on its write and never exit.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break (status, false),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                break (child.wait().expect("wait"), true);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if timed_out {
        panic!(
            "command did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    out
}

/// Polls `condition` until it holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes as text, for messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The step called `name` in a `show --json` document.
pub fn step<'a>(show: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    show["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {show}"))
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The image the Docker tests run steps in (see `tests/docker/Dockerfile`).
pub const TEST_IMAGE: &str = "sluice-test-busybox";

/// Whether Docker tests can run here. Without an engine they are skipped with a printed reason,
/// unless `SLUICE_REQUIRE_DOCKER=1` (CI sets it), where a missing engine fails the test.
pub fn docker_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match info {
            Ok(out) if out.status.success() => build_test_image(),
            Ok(out) => Err(format!("docker info failed: {}", text(&out.stderr).trim())),
            Err(err) => Err(format!("no docker command: {err}")),
        }
    });
    match ready {
        Ok(()) => true,
        Err(why) if std::env::var("SLUICE_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("SLUICE_REQUIRE_DOCKER=1 but Docker is not usable: {why}")
        }
        Err(why) => {
            eprintln!("skipped: Docker is not usable here ({why}); set SLUICE_REQUIRE_DOCKER=1 to fail instead");
            false
        }
    }
}

/// Builds the test image from a static busybox unless it is already there.
fn build_test_image() -> Result<(), String> {
    let present = Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .output()
        .map_err(|e| e.to_string())?;
    if present.status.success() {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no static busybox (apt-get install busybox-static)")?;
    let context = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::copy(busybox, context.path().join("busybox")).map_err(|e| e.to_string())?;
    std::fs::copy(
        workspace_root().join("tests/docker/Dockerfile"),
        context.path().join("Dockerfile"),
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new("docker")
        .args(["build", "-q", "-t", TEST_IMAGE])
        .arg(context.path())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "building {TEST_IMAGE} failed: {}",
            text(&out.stderr)
        ))
    }
}

/// Containers (running or not) that carry the label `sluice.run=<run_id>`.
pub fn containers_of_run(run_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=sluice.run={run_id}"),
        ])
        .output()
        .expect("docker ps");
    text(&out.stdout).lines().map(str::to_string).collect()
}

impl Scratch {
    /// Starts `sluice run FILE` in the background (output captured) and waits until a step
    /// has written its pid to `pid_file` (relative to the scratch folder); returns both.
    pub fn start_run_until_pid(&self, file: &Path, pid_file: &str) -> (Child, i32) {
        let child = self
            .sluice()
            .arg("run")
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice run");
        let path = self.path().join(pid_file);
        let mut pid = 0;
        wait_until("the step to write its pid", Duration::from_secs(30), || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            pid > 0
        });
        (child, pid)
    }
}
