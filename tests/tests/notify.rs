//! `notify:` against the real daemon and a real HTTP receiver: a run that ends the way a target
//! asks is posted (its summary, the failed step's last log lines, signed), a receiver that
//! fails is tried again, other endings are not posted, and the daemon-wide `--notify-webhook`
//! covers pipelines without their own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_tests::cluster::{http, Server};
use sluice_tests::{wait_until, Scratch};

/// One request the receiver got: its headers (lower-cased names) and body.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP receiver on a free port that answers 500 to its first `failures` requests, 200 after.
fn receiver(failures: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line); // request line
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.trim().to_lowercase(), v.trim().to_string()));
                }
            }
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen.lock().unwrap().push(Received {
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let status = if i < failures {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

fn start_run(server: &Server, pipeline: &str) -> String {
    let (status, reply) = http(
        "POST",
        &format!("{}/api/v1/pipelines/{pipeline}/runs", server.url()),
        None,
        None,
    );
    assert_eq!(status, 201, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    reply["run"]["id"].as_str().unwrap().to_string()
}

fn wait_status(server: &Server, run: &str, status: &str) {
    wait_until("the run to end", Duration::from_secs(60), || {
        server.get(&format!("/api/v1/runs/{run}"))["run"]["status"] == status
    });
}

#[test]
fn a_failed_run_is_posted_signed_with_its_log_tail_and_retried_until_accepted() {
    let (url, got) = receiver(1);
    let s = Scratch::new();
    s.write(
        "pipelines/nightly.yaml",
        &format!(
            "name: nightly
params: {{fail: \"yes\"}}
notify:
  - on: [failed]
    webhook: {url}
    secret_env: HOOK_SECRET
steps:
  fit:
    run: echo \"loss went NaN\" >&2; test \"$PARAM_FAIL\" != yes
"
        ),
    );
    let server = Server::start(&s, &[("HOOK_SECRET", "s3cret")]);
    let run = start_run(&server, "nightly");
    wait_status(&server, &run, "failed");
    // The first post gets a 500; the notice is posted again a second later.
    wait_until("two posts", Duration::from_secs(30), || {
        got.lock().unwrap().len() >= 2
    });
    let posts = got.lock().unwrap().clone();
    assert_eq!(
        posts[0].body, posts[1].body,
        "every try posts the same notice"
    );
    let post = &posts[1];
    let summary: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(summary["run"], run.as_str());
    assert_eq!(summary["pipeline"], "nightly");
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["failed_steps"][0]["step"], "fit");
    assert_eq!(summary["failed_steps"][0]["exit_code"], 1);
    assert_eq!(summary["failed_steps"][0]["log_tail"][0], "loss went NaN");
    // Signed as incoming webhooks are: t=<unix>,v1=HMAC-SHA256(secret, "{t}.{body}").
    let signature = post.header("x-sluice-signature").expect("signed");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=..,v1=..");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(format!("{t}.{}", post.body).as_bytes());
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()));
    assert!(post.header("x-sluice-delivery").is_some());

    // Accepted: nothing more is posted for it.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(got.lock().unwrap().len(), 2);
}

#[test]
fn only_the_endings_asked_for_are_posted_and_the_daemon_default_covers_the_rest() {
    let (own_url, own) = receiver(0);
    let (default_url, default) = receiver(0);
    let s = Scratch::new();
    s.write(
        "pipelines/own.yaml",
        &format!(
            "name: own\nnotify: {{webhook: {own_url}, on: [failed]}}\nsteps:\n  a: {{run: \"true\"}}\n"
        ),
    );
    s.write(
        "pipelines/plain.yaml",
        "name: plain\nsteps:\n  a: {run: \"exit 3\"}\n",
    );
    let server = Server::start(
        &s,
        &[
            ("SLUICE_NOTIFY_WEBHOOK", default_url.as_str()),
            ("SLUICE_NOTIFY_ON", "failed,succeeded"),
            ("SLUICE_NOTIFY_FORMAT", "slack"),
        ],
    );
    let own_run = start_run(&server, "own");
    wait_status(&server, &own_run, "succeeded");
    let plain_run = start_run(&server, "plain");
    wait_status(&server, &plain_run, "failed");
    wait_until("the default target's post", Duration::from_secs(30), || {
        !default.lock().unwrap().is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        own.lock().unwrap().is_empty(),
        "a success is not posted to an on: [failed] target"
    );
    let posts = default.lock().unwrap().clone();
    assert_eq!(
        posts.len(),
        1,
        "only the pipeline without its own notify: {posts:?}"
    );
    let message: serde_json::Value = serde_json::from_str(&posts[0].body).unwrap();
    let text = message["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(":x: Sluice run `{plain_run}` of `plain` failed")),
        "{text}"
    );
    assert!(text.contains("`a` failed (exit code 3)"), "{text}");
}

/// The pipeline of the embedded tests: fails, notifies `url` about it.
fn failing_with_notify(url: &str) -> String {
    format!(
        "name: local\nnotify:\n  - webhook: {url}\nsteps:\n  fit:\n    run: echo boom >&2; exit 1\n"
    )
}

#[test]
fn sluice_run_posts_its_own_notices_before_it_exits() {
    let (url, got) = receiver(1);
    let s = Scratch::new();
    let file = s.write("p/local.yaml", &failing_with_notify(&url));
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = sluice_tests::text(&out.stderr);
    assert!(stderr.contains(&format!("notified {url}")), "{stderr}");
    let posts = got.lock().unwrap().clone();
    assert_eq!(posts.len(), 2, "refused once, then accepted");
    let summary: serde_json::Value = serde_json::from_str(&posts[1].body).unwrap();
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["failed_steps"][0]["log_tail"][0], "boom");
}

#[test]
fn a_notice_sluice_run_could_not_post_is_posted_by_the_next_daemon_once() {
    // Refused three times: more than `sluice run` tries.
    let (url, got) = receiver(3);
    let s = Scratch::new();
    let file = s.write("p/local.yaml", &failing_with_notify(&url));
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = sluice_tests::text(&out.stderr);
    assert!(
        stderr.contains("the next `sluice server` or `sluice scheduler`"),
        "{stderr}"
    );
    assert_eq!(got.lock().unwrap().len(), 3);

    std::fs::create_dir_all(s.path().join("pipelines")).unwrap();
    let _server = Server::start(&s, &[]);
    wait_until(
        "the daemon to post the notice",
        Duration::from_secs(30),
        || got.lock().unwrap().len() >= 4,
    );
    // It is posted from the notice left pending, not notified about a second time.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(got.lock().unwrap().len(), 4);
}
