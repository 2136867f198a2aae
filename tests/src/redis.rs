//! `redis-server` for tests: a process of the test's own on a free port, without persistence,
//! started the same way by the worker crate's queue tests and by [`crate::cluster`].
//!
//! Without `redis-server` on PATH the tests are skipped with a printed reason, unless
//! `SLUICE_REQUIRE_REDIS=1` (CI sets it), where they fail.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Whether `redis-server` can be started; see the module docs.
pub fn redis_available() -> bool {
    crate::tool_available(
        "redis-server",
        "SLUICE_REQUIRE_REDIS",
        "apt-get install redis-server",
        "",
    )
}

/// `redis-server` listening as `listen` says (`--port N`, or TLS flags) on 127.0.0.1, with no
/// snapshot and no append-only file (a restart loses everything), run in `dir`.
pub fn redis_command(listen: &[String], dir: &Path) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args(listen)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Waits until something accepts connections on `port` (10 s at most).
pub fn wait_for_port(port: u16) {
    crate::wait_until(
        "redis to accept connections",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// A plain redis-server of a test's own, killed when dropped.
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port; `None` when the test is skipped (see the module docs).
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_on(free_port())
    }

    /// Starts one on `port` (a restart on the port an earlier one used).
    pub fn start_on(port: u16) -> Option<RedisServer> {
        if !redis_available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let child = redis_command(&["--port".into(), port.to_string()], dir.path())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        wait_for_port(port);
        Some(server)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
