//! A real S3 server for the tests: moto's (`pip install 'moto[server]'`), started on a free
//! port with a bucket made. `.ci/run` installs it and sets `SLUICE_REQUIRE_S3=1`, so a missing
//! server fails the S3 tests there instead of skipping them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::redis::{free_port, wait_for_port};

/// A running moto server; killed when dropped.
pub struct S3Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The bucket made for the test.
    pub bucket: String,
}

/// `moto_server` from `SLUICE_MOTO_SERVER`, PATH, or the virtualenv `.ci/run` makes.
fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let venv = crate::workspace_root().join("target/moto-venv/bin/moto_server");
        venv.is_file().then_some(venv)
    })
}

impl S3Server {
    /// Starts one, or `None` (after saying so) when moto is not installed; with
    /// `SLUICE_REQUIRE_S3=1` that is a failure.
    pub fn start() -> Option<S3Server> {
        let Some(program) = moto_server() else {
            assert!(
                std::env::var("SLUICE_REQUIRE_S3").as_deref() != Ok("1"),
                "SLUICE_REQUIRE_S3=1 but moto_server is not installed"
            );
            eprintln!("skipping: moto_server (pip install 'moto[server]') is not installed");
            return None;
        };
        let port = free_port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        wait_for_port(port);
        let server = S3Server {
            child,
            port,
            bucket: "sluice-test".into(),
        };
        server.make_bucket();
        Some(server)
    }

    fn make_bucket(&self) {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("moto answers");
        let request = format!(
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket, self.port
        );
        stream.write_all(request.as_bytes()).expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "cannot make the bucket: {answer}"
        );
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The `AWS_*` variables that point a process at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
