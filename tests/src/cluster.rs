//! A small cluster for distributed tests: a `redis-server` of the test's own, a `sluice
//! scheduler` and `sluice worker`s, all real processes that a test can kill, freeze and restart.
//!
//! Without `redis-server` on PATH the tests are skipped with a printed reason, unless
//! `SLUICE_REQUIRE_REDIS=1` (CI sets it), where they fail.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use crate::redis::{free_port, redis_available};
use crate::redis::{redis_command, wait_for_port};
use crate::{sluice_bin, text, wait_output, Scratch};

/// The lease the test schedulers give workers: short, so lost workers are noticed quickly.
pub const TEST_LEASE: &str = "2s";
/// Heartbeat of test workers, well under the lease.
pub const TEST_HEARTBEAT: &str = "300ms";

/// A process that is killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(self.pid(), signal);
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A frozen process must be thawed to die cleanly on some kernels; harmless otherwise.
        self.signal(Signal::SIGCONT);
        self.kill9();
    }
}

/// Redis, a scheduler and workers over one scratch folder with a `pipelines/` folder.
pub struct Cluster {
    /// Scratch folder: `pipelines/`, `data/`, logs.
    pub scratch: Scratch,
    /// Redis's port (kept across restarts).
    pub redis_port: u16,
    /// The API's port (kept across scheduler restarts).
    pub api_port: u16,
    redis: Option<Proc>,
    /// The scheduler, when running.
    pub scheduler: Option<Proc>,
    /// The API token [`Cluster::client`] sends, when the scheduler wants one.
    pub client_token: Option<String>,
    /// Redis with a password and TLS: (password, CA file), see [`Cluster::new_secured`].
    secured: Option<(String, PathBuf)>,
    starts: usize,
    /// The artifact store the scheduler and every worker get (`SLUICE_ARTIFACTS`): a shared
    /// folder by default, or an S3 URL with [`Cluster::store_env`].
    pub artifacts: String,
    /// Extra variables for the scheduler and the workers (the `AWS_*` of an S3 store).
    pub store_env: Vec<(String, String)>,
}

impl Cluster {
    /// A scratch folder with `pipelines/` and free ports; `None` without redis-server.
    fn unstarted() -> Option<Cluster> {
        if !redis_available() {
            return None;
        }
        let cluster = Cluster {
            scratch: Scratch::new(),
            redis_port: free_port(),
            api_port: free_port(),
            redis: None,
            scheduler: None,
            client_token: None,
            secured: None,
            starts: 0,
            artifacts: String::new(),
            store_env: Vec::new(),
        };
        std::fs::create_dir_all(cluster.scratch.path().join("pipelines")).expect("mkdir");
        Some(cluster)
    }

    /// Starts Redis only; `None` when the test is skipped (no redis-server).
    pub fn new() -> Option<Cluster> {
        let mut cluster = Cluster::unstarted()?;
        cluster.start_redis();
        Some(cluster)
    }

    /// Like [`Cluster::new`], with a Redis that needs `password` and speaks only TLS (a
    /// self-signed certificate made here with `openssl`); schedulers and workers get
    /// `rediss://:password@...` and `--redis-ca`.
    pub fn new_secured(password: &str) -> Option<Cluster> {
        let mut cluster = Cluster::unstarted()?;
        let dir = cluster.scratch.path();
        // A CA, and the server's certificate signed by it (a self-signed CA certificate used
        // as the server's own is refused by rustls, rightly).
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write");
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=sluice-test-ca",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "redis-key.pem",
                "-out",
                "redis.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "redis.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "redis-cert.pem",
            ],
        ];
        for args in steps {
            let made = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs (Debian's `openssl` package)");
            assert!(made.status.success(), "{}", text(&made.stderr));
        }
        cluster.secured = Some((password.to_string(), dir.join("ca.pem")));
        cluster.start_redis();
        Some(cluster)
    }

    /// `redis://127.0.0.1:PORT/` (`rediss://:PASSWORD@...` when secured).
    pub fn redis_url(&self) -> String {
        match &self.secured {
            Some((password, _)) => format!("rediss://:{password}@127.0.0.1:{}/", self.redis_port),
            None => format!("redis://127.0.0.1:{}/", self.redis_port),
        }
    }

    /// What schedulers and workers need besides `--redis` (the CA of a secured Redis).
    fn redis_args(&self) -> Vec<String> {
        match &self.secured {
            Some((_, ca)) => vec!["--redis-ca".into(), ca.display().to_string()],
            None => Vec::new(),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Writes `pipelines/NAME.yaml`.
    pub fn pipeline(&self, name: &str, text: &str) -> PathBuf {
        self.scratch.write(&format!("pipelines/{name}.yaml"), text)
    }

    fn log_path(&mut self, what: &str) -> PathBuf {
        self.starts += 1;
        self.scratch
            .path()
            .join(format!("{what}-{}.log", self.starts))
    }

    /// Starts redis-server without persistence (a restart loses everything).
    pub fn start_redis(&mut self) {
        let log = self.log_path("redis");
        let port = self.redis_port.to_string();
        let listen: Vec<String> = match &self.secured {
            None => vec!["--port".into(), port],
            Some((password, ca)) => {
                let cert = ca.with_file_name("redis-cert.pem");
                let key = ca.with_file_name("redis-key.pem");
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                    "--requirepass",
                    password,
                ]
                .iter()
                .map(|s| s.to_string())
                .chain(["--tls-cert-file".into(), cert.display().to_string()])
                .chain(["--tls-key-file".into(), key.display().to_string()])
                .chain(["--tls-ca-cert-file".into(), ca.display().to_string()])
                .collect()
            }
        };
        let child = redis_command(&listen, self.scratch.path())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("redis-server starts");
        self.redis = Some(Proc { child, log });
        wait_for_port(self.redis_port);
    }

    /// Redis's process, when it runs (to freeze it).
    pub fn redis_proc(&self) -> Option<&Proc> {
        self.redis.as_ref()
    }

    /// Kills Redis (kill -9: no save).
    pub fn kill_redis(&mut self) {
        if let Some(mut redis) = self.redis.take() {
            redis.kill9();
        }
    }

    /// Starts the scheduler and waits until its API answers.
    pub fn start_scheduler(&mut self) {
        self.start_scheduler_with(&[]);
    }

    /// Starts the scheduler with extra flags.
    pub fn start_scheduler_with(&mut self, extra: &[&str]) {
        let log = self.log_path("scheduler");
        let mut child = Command::new(sluice_bin())
            .args([
                "scheduler",
                "--pipelines",
                "pipelines",
                "--listen",
                &format!("127.0.0.1:{}", self.api_port),
                "--redis",
                &self.redis_url(),
            ])
            .args(self.redis_args())
            // The test lease, unless the test gives its own.
            .args(
                (!extra.contains(&"--lease"))
                    .then_some(["--lease", TEST_LEASE])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .env("SLUICE_DATA_DIR", self.scratch.data_dir())
            .env("SLUICE_ARTIFACTS", self.artifact_store())
            .envs(self.store_env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env_remove("SLUICE_API_TOKEN")
            .current_dir(self.scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("scheduler starts");
        // The first line says where it listens, once the API is up.
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("scheduler output");
        assert!(
            line.contains("listening on"),
            "scheduler did not start: {line}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.scheduler = Some(Proc { child, log });
    }

    /// `kill -9` the scheduler.
    pub fn kill_scheduler(&mut self) {
        if let Some(mut scheduler) = self.scheduler.take() {
            scheduler.kill9();
        }
    }

    /// The artifact store the scheduler and every worker share (a folder, as a mounted volume
    /// or an S3 bucket would be); each keeps its own data dir beside it.
    pub fn artifact_store(&self) -> String {
        if self.artifacts.is_empty() {
            self.scratch.path().join("artifacts").display().to_string()
        } else {
            self.artifacts.clone()
        }
    }

    /// The folder where worker `name` kept attempt `attempt` of `step` in `run`: its own data
    /// dir, not the scheduler's.
    pub fn worker_attempt_dir(&self, name: &str, run: &str, step: &str, attempt: u32) -> PathBuf {
        self.scratch
            .path()
            .join(format!("worker-state-{name}"))
            .join("data/runs")
            .join(run)
            .join(step)
            .join(attempt.to_string())
    }

    /// Starts a worker named `name` with `slots` slots.
    pub fn start_worker(&mut self, name: &str, slots: usize) -> Proc {
        self.start_worker_with(name, slots, &[])
    }

    /// Starts a worker named `name` with `slots` slots and extra flags.
    pub fn start_worker_with(&mut self, name: &str, slots: usize, extra: &[&str]) -> Proc {
        let log = self.log_path(&format!("worker-{name}"));
        let child = Command::new(sluice_bin())
            .args([
                "worker",
                "--redis",
                &self.redis_url(),
                "--name",
                name,
                "--slots",
                &slots.to_string(),
                "--heartbeat",
                TEST_HEARTBEAT,
                "--lease",
                TEST_LEASE,
                "--grace",
                "5s",
            ])
            .args(self.redis_args())
            .args(extra)
            // Per test: a worker restarted kills what its namesake in this folder left.
            .arg("--state-dir")
            .arg(self.scratch.path().join(format!("worker-state-{name}")))
            .env("SLUICE_ARTIFACTS", self.artifact_store())
            .envs(self.store_env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .current_dir(self.scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("worker starts");
        Proc { child, log }
    }

    /// `sluice ARGS... --server URL`, to completion.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        let child = self
            .scratch
            .sluice()
            .args(args)
            .args(["--server", &self.server()])
            .envs(self.client_token.iter().map(|t| ("SLUICE_API_TOKEN", t)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        wait_output(child, Duration::from_secs(120))
    }

    /// Starts a run of `pipeline` through the API; returns its id.
    pub fn trigger(&self, pipeline: &str) -> String {
        let out = self.client(&["trigger", pipeline]);
        assert!(
            out.status.success(),
            "trigger failed: {}",
            text(&out.stderr)
        );
        run_id_of(&text(&out.stdout))
    }

    /// `sluice show RUN --json --server`, parsed.
    pub fn show(&self, run_id: &str) -> serde_json::Value {
        let out = self.client(&["show", run_id, "--json"]);
        assert!(out.status.success(), "show failed: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// Waits until the run is over (through the API); returns `show --json`.
    pub fn wait_run(&self, run_id: &str, timeout: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let finished = |show: &serde_json::Value| {
            matches!(
                show["run"]["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        };
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            last = self.show(run_id);
            if finished(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "run {run_id} did not finish within {timeout:?}: {last:#}\nscheduler log:\n{}",
            self.scheduler
                .as_ref()
                .map(Proc::log_text)
                .unwrap_or_default()
        );
    }

    /// Status of a step of a run, through the API.
    pub fn step_status(&self, run_id: &str, step: &str) -> String {
        let show = self.show(run_id);
        crate::step(&show, step)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every scheduler log so far, joined.
    pub fn scheduler_logs(&self) -> String {
        let mut logs = String::new();
        if let Ok(entries) = std::fs::read_dir(self.scratch.path()) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with("scheduler-") {
                    logs.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
        logs
    }
}

/// The run id in `run ID of `P` started`.
pub fn run_id_of(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no run id in {stdout:?}"))
        .to_string()
}

/// Lines of a file, or none.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Checks what every failure test ends with: the run is over and each of its steps has at
/// most one successful attempt (one committed result).
pub fn assert_one_result_per_step(show: &serde_json::Value) {
    for step in show["steps"].as_array().expect("steps") {
        let successes = step["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .filter(|a| a["outcome"] == "succeeded")
            .count();
        assert!(
            successes <= 1,
            "step with two committed successes: {step:#}"
        );
    }
}

/// One HTTP/1.1 request over a plain socket (the tests need status codes and bodies, nothing
/// more); returns the status and the body.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if let Some(token) = token {
        headers.push(("Authorization", format!("Bearer {token}")));
    }
    request(method, url, &headers, body.unwrap_or("").as_bytes())
}

/// A POST with extra headers; returns the status and body.
pub fn post_with_headers(url: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    request("POST", url, headers, body)
}

fn request(method: &str, url: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (413) before reading a large body: a failed write is not an error.
    let _ = stream.write_all(&bytes);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A `sluice server` (in-process workers, no Redis) over a scratch folder with `pipelines/`.
pub struct Server {
    /// The process, when running.
    pub proc: Option<Proc>,
    /// Its API port (kept across restarts).
    pub port: u16,
    env: Vec<(String, String)>,
    starts: usize,
}

impl Server {
    /// Starts `sluice server` in `scratch` with extra environment.
    pub fn start(scratch: &Scratch, env: &[(&str, &str)]) -> Server {
        let mut server = Server {
            proc: None,
            port: free_port(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
        };
        server.restart(scratch);
        server
    }

    /// Starts it again (after [`Server::kill9`]).
    pub fn restart(&mut self, scratch: &Scratch) {
        self.starts += 1;
        let log = scratch.path().join(format!("server-{}.log", self.starts));
        let mut child = scratch
            .sluice()
            .args([
                "server",
                "--pipelines",
                "pipelines",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
            ])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server output");
        assert!(
            line.contains("listening on"),
            "server did not start: {line}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.proc = Some(Proc { child, log });
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET path`, parsed as JSON.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = http("GET", &format!("{}{path}", self.url()), None, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Vec<serde_json::Value> {
        self.get("/api/v1/runs?limit=1000")["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Its logs so far.
    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

/// The worker names in the registry of the Redis on `port` (`HKEYS sluice:workers`), through
/// `redis-cli`; `(false, _)` when it could not be asked.
pub fn registered_workers(port: u16) -> (bool, String) {
    match Command::new("redis-cli")
        .args(["-p", &port.to_string(), "HKEYS", "sluice:workers"])
        .output()
    {
        Ok(out) if out.status.success() => (true, text(&out.stdout)),
        _ => (false, String::new()),
    }
}
