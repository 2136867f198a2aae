//! `uses: deploy` with a real HTTP server: the alias moves only when the new version answers
//! its health check; an unhealthy version is rolled back to the one the alias held.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::Value;
use sluice_tests::{step, text, Scratch};

/// The server's folder is the "model": `health` exists only for a good one, so a bad version
/// answers 404 on `/health`.
fn pipeline(state: &Path, port: u16, version: &str) -> String {
    let state = state.display();
    format!(
        r#"name: ship
params: {{quality: good}}
steps:
  train:
    run: echo "$PARAM_QUALITY" > $SLUICE_OUT/model.txt
    outputs: [model.txt]
  register:
    depends: [train]
    uses: register
    with: {{model: svc, from: train/model.txt}}
  deploy:
    depends: [register]
    uses: deploy
    with:
      model: svc
      version: {version}
      alias: production
      run: |
        [ -f {state}/server.pid ] && kill $(cat {state}/server.pid) 2>/dev/null
        rm -rf {state}/serving {state}/server.pid && mkdir -p {state}/serving
        grep -q good $SLUICE_MODEL_DIR/model.txt && cp $SLUICE_MODEL_DIR/model.txt {state}/serving/health
        echo "$SLUICE_MODEL_VERSION" > {state}/serving/version
        setsid -f sh -c 'echo $$ > {state}/server.pid.new; exec python3 -m http.server {port} --bind 127.0.0.1 --directory {state}/serving' > /dev/null 2>&1 < /dev/null
        while [ ! -s {state}/server.pid.new ]; do sleep 0.05; done
        mv {state}/server.pid.new {state}/server.pid
      health: {{url: "http://127.0.0.1:{port}/health", timeout: 10s, interval: 100ms}}
"#
    )
}

/// Stops the test's server however the test ends.
struct Server<'a>(&'a Path);

impl Drop for Server<'_> {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("server.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The body of GET `path` on the test's server.
fn get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

fn run(s: &Scratch, file: &Path, params: &[&str]) -> Value {
    let mut args = vec!["run", file.to_str().unwrap()];
    for p in params {
        args.extend(["-p", p]);
    }
    let out = s.run(&args);
    assert!(out.status.code().is_some(), "{}", text(&out.stderr));
    s.show(&s.latest_run_id())
}

fn alias(s: &Scratch) -> Value {
    let out = s.run(&["models", "show", "svc@production", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn version_of(show: &Value) -> u64 {
    let version = show
        .get("version")
        .filter(|v| v.is_object())
        .unwrap_or(show);
    version["version"].as_u64().expect("a version number")
}

#[test]
fn a_healthy_version_takes_the_alias_and_an_unhealthy_one_is_rolled_back() {
    let s = Scratch::new();
    let state = s.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let _server = Server(&state);
    let port = free_port();
    let file = s.write("ship.yaml", &pipeline(&state, port, "register"));

    let first = run(&s, &file, &[]);
    let deploy = step(&first, "deploy");
    assert_eq!(deploy["status"], "succeeded", "{deploy:#}");
    assert_eq!(deploy["outputs"]["deployed"], "1");
    assert_eq!(version_of(&alias(&s)), 1);

    let bad = run(&s, &file, &["quality=bad"]);
    let deploy = step(&bad, "deploy");
    assert_eq!(deploy["status"], "failed");
    let message = deploy["attempts"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("svc:2")
            && message.contains("404")
            && message.contains("rolled back to svc:1: healthy"),
        "both outcomes are recorded: {message}"
    );
    assert_eq!(deploy["outputs"]["rolled_back_to"], "1", "{deploy:#}");
    assert_eq!(
        version_of(&alias(&s)),
        1,
        "the alias never moved to the bad version"
    );
    assert!(get(port, "/version").ends_with("\n1\n") || get(port, "/version").ends_with("1\n"));
    assert!(
        get(port, "/health").contains("200"),
        "version 1 serves again"
    );

    let history = s.run(&["models", "history", "svc", "--json"]);
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    let moves = history["history"].as_array().unwrap();
    assert_eq!(
        moves.len(),
        1,
        "one move: the bad version never held it: {history:#}"
    );
    assert_eq!(moves[0]["action"], "deploy");
    assert!(moves[0]["who"].as_str().unwrap().ends_with("/deploy"));
}

#[test]
fn deploying_the_version_the_alias_holds_does_nothing_and_says_so() {
    let s = Scratch::new();
    let state = s.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let _server = Server(&state);
    let port = free_port();
    let file = s.write("ship.yaml", &pipeline(&state, port, "register"));
    assert_eq!(step(&run(&s, &file, &[]), "deploy")["status"], "succeeded");
    let pinned = s.write("pinned.yaml", &pipeline(&state, port, "1"));
    let again = run(&s, &pinned, &[]);
    let deploy = step(&again, "deploy");
    assert_eq!(deploy["status"], "succeeded");
    let message = deploy["attempts"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("already holds") && message.contains("nothing to do"),
        "{message}"
    );
    let history = s.run(&["models", "history", "svc", "--json"]);
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(
        history["history"].as_array().unwrap().len(),
        1,
        "{history:#}"
    );
}
