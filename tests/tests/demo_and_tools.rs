//! The shipped demo pipelines (train and deploy; monitor; retrain after repeated drift), and the
//! tools around pipeline files: validate, schema, graph.

use std::time::Duration;

use sluice_tests::cluster::{http, Server};
use sluice_tests::{step, text, wait_until, workspace_root, Scratch};

fn demo() -> String {
    demo_file("mlops")
}

fn demo_file(name: &str) -> String {
    workspace_root()
        .join(format!("pipelines/{name}.yaml"))
        .display()
        .to_string()
}

/// The port the demo's deploy step serves on; tests run a copy on a free port instead.
const DEMO_PORT: &str = "18080";

/// A copy of the demo in the scratch dir, serving on a free port (the health URL is a literal,
/// so it cannot be a param), with `edit` applied; its workdir points back at examples/mlops.
fn demo_copy(s: &Scratch, edit: impl Fn(String) -> String) -> (String, u16) {
    let port = free_port();
    let file = copy_demo(s, "mlops", "mlops.yaml", port);
    let yaml = edit(std::fs::read_to_string(&file).unwrap());
    std::fs::write(&file, yaml).unwrap();
    (file, port)
}

/// Copies `pipelines/NAME.yaml` to `to` in the scratch dir, its deploy serving on `port` and its
/// workdir pointing back at examples/mlops.
fn copy_demo(s: &Scratch, name: &str, to: &str, port: u16) -> String {
    let examples = workspace_root()
        .join("examples/mlops")
        .display()
        .to_string();
    let yaml = std::fs::read_to_string(demo_file(name)).unwrap();
    let yaml = yaml.replace(DEMO_PORT, &port.to_string()).replace(
        "workdir: ../examples/mlops",
        &format!("workdir: {examples}"),
    );
    s.write(to, &yaml).display().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Stops the demo's model server (pidfile under the data dir) however the test ends.
struct ModelServer(std::path::PathBuf);

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("serving/serve.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// The whole answer (status line, headers, body) to GET `path` on the demo's server.
fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

fn production(s: &Scratch) -> serde_json::Value {
    let out = s.run(&["models", "show", "mlops@production", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    match show.get("version").filter(|v| v.is_object()) {
        Some(version) => version.clone(),
        None => show,
    }
}

#[test]
fn the_demo_trains_gates_registers_and_deploys() {
    let s = Scratch::new();
    let _server = ModelServer(s.data_dir());
    let (file, port) = demo_copy(&s, |y| y);
    let out = s.run(&["run", &file]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let show = s.show(&s.latest_run_id());
    assert_eq!(show["run"]["status"], "succeeded");
    let yaml = std::fs::read_to_string(demo()).unwrap();
    assert!(yaml.contains(DEMO_PORT), "the demo serves on {DEMO_PORT}");
    for name in [
        "ingest", "version", "train", "validate", "gate", "register", "deploy",
    ] {
        assert_eq!(step(&show, name)["status"], "succeeded", "{name}");
    }
    let accuracy: f64 = step(&show, "validate")["metrics"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!(accuracy >= 0.9, "the gate passed with accuracy {accuracy}");
    assert_eq!(step(&show, "gate")["outputs"]["passed"], "true");
    assert_eq!(step(&show, "register")["outputs"]["version"], "1");
    assert_eq!(production(&s)["version"], 1);
    let health = get(port, "/health");
    assert!(health.starts_with("HTTP/1.0 200"), "{health}");
    assert!(health.contains("\"version\": \"1\""), "{health}");
}

/// Starts a run of `pipeline` on the server and waits until it ends; returns its id and status.
fn run_on(server: &Server, pipeline: &str, params: &str) -> (String, String) {
    let (status, reply) = http(
        "POST",
        &format!("{}/api/v1/pipelines/{pipeline}/runs", server.url()),
        None,
        Some(&format!("{{\"params\": {params}}}")),
    );
    assert_eq!(status, 201, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let id = reply["run"]["id"].as_str().unwrap().to_string();
    (id.clone(), wait_finished(server, &id))
}

fn wait_finished(server: &Server, id: &str) -> String {
    let mut status = String::new();
    wait_until("the run to finish", Duration::from_secs(120), || {
        status = server.get(&format!("/api/v1/runs/{id}"))["run"]["status"]
            .as_str()
            .unwrap()
            .to_string();
        ["succeeded", "failed", "cancelled"].contains(&status.as_str())
    });
    status
}

fn production_on(s: &Scratch, server: &Server) -> i64 {
    let out = s.run(&[
        "models",
        "show",
        "mlops@production",
        "--json",
        "--server",
        &server.url(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = show
        .get("version")
        .filter(|v| v.is_object())
        .unwrap_or(&show);
    version["version"].as_i64().expect("a version number")
}

/// The README's walk through the loop, against a real daemon: train and deploy; a calm batch; a
/// drifted batch (one breach: nothing); a second one starts retraining (`after:`), gated against
/// production, registered and deployed; then rolled back by hand.
#[test]
fn the_demo_loop_retrains_after_two_drifted_batches_and_rolls_back_by_hand() {
    let s = Scratch::new();
    let _model_server = ModelServer(s.data_dir());
    let port = free_port();
    for name in ["mlops", "monitor", "retrain"] {
        copy_demo(&s, name, &format!("pipelines/{name}.yaml"), port);
    }
    let server = Server::start(&s, &[]);
    assert_eq!(run_on(&server, "mlops", "{}").1, "succeeded");
    assert_eq!(production_on(&s, &server), 1);

    let (calm, status) = run_on(&server, "monitor", "{}");
    assert_eq!(status, "succeeded");
    let (first, _) = run_on(&server, "monitor", "{\"drift_shift\": 0.5}");
    let retrains = || -> Vec<serde_json::Value> {
        server
            .runs()
            .into_iter()
            .filter(|r| r["pipeline"] == "retrain")
            .collect()
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        retrains().is_empty(),
        "one drifted batch started retraining"
    );
    let (second, _) = run_on(&server, "monitor", "{\"drift_shift\": 0.5}");
    for (run, drift) in [(&calm, "false"), (&first, "true"), (&second, "true")] {
        let show = server.get(&format!("/api/v1/runs/{run}"));
        assert_eq!(step(&show, "drift")["outputs"]["drift"], drift, "{show:#}");
    }

    wait_until("retraining to start", Duration::from_secs(30), || {
        retrains().len() == 1
    });
    let retrain = retrains().remove(0);
    assert_eq!(retrain["trigger"], format!("after monitor run {second}"));
    assert_eq!(retrain["params"]["monitor_run"], second.as_str());
    assert_eq!(retrain["params"]["drift_shift"], "0.5");
    let id = retrain["id"].as_str().unwrap();
    assert_eq!(wait_finished(&server, id), "succeeded");
    let show = server.get(&format!("/api/v1/runs/{id}"));
    assert_eq!(step(&show, "gate")["outputs"]["passed"], "true");
    assert_eq!(step(&show, "train")["outputs"]["replaces_version"], "1");
    assert_eq!(step(&show, "deploy")["outputs"]["deployed"], "2");
    assert_eq!(production_on(&s, &server), 2);
    assert!(get(port, "/health").contains("\"version\": \"2\""));

    let out = s.run(&[
        "models",
        "rollback",
        "mlops",
        "--alias",
        "production",
        "--reason",
        "by hand",
        "--server",
        &server.url(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(production_on(&s, &server), 1);
}

#[test]
fn the_demo_gate_fails_the_run_and_keeps_its_metrics() {
    let s = Scratch::new();
    let _server = ModelServer(s.data_dir());
    let (file, _) = demo_copy(&s, |y| {
        assert!(y.contains("accuracy: \">= 0.9\""));
        y.replace("accuracy: \">= 0.9\"", "accuracy: \">= 0.9999\"")
    });
    let out = s.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(1));
    let show = s.show(&s.latest_run_id());
    let validate = step(&show, "validate");
    assert_eq!(validate["status"], "succeeded");
    assert!(validate["metrics"]["accuracy"].as_f64().is_some());
    assert_eq!(step(&show, "gate")["status"], "failed");
    for name in ["register", "deploy"] {
        assert_eq!(step(&show, name)["status"], "skipped", "{name}");
    }
    let out = s.run(&["models", "show", "mlops@production", "--json"]);
    assert!(!out.status.success(), "nothing was registered or deployed");
}

#[test]
fn validate_exits_0_for_valid_files_and_1_with_every_error_listed() {
    let s = Scratch::new();
    let out = s.run(&[
        "validate",
        &workspace_root().join("pipelines").display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.write(
        "dir/nested/bad.yml",
        "name: bad\nsteps:\n  a:\n    run: x\n    timout: 5s\n  b:\n    depends: [a, c]\n    run: y\n",
    );
    s.write("dir/good.yaml", "name: good\nsteps:\n  a: {run: x}\n");
    let dir = s.path().join("dir").display().to_string();
    let out = s.run(&["validate", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: unknown key `timout` in step `a`"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.yml:5:5"), "{stderr}");
    assert!(stderr.contains("did you mean `timeout`?"), "{stderr}");
    assert!(
        stderr.contains("step `b` depends on `c`, which is not a step"),
        "{stderr}"
    );
    assert!(stderr.contains("2 errors in 1 of 2 files"), "{stderr}");

    let out = s.run(&["validate", "--format", "json", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let bad = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["valid"] == false)
        .unwrap();
    assert_eq!(bad["errors"][0]["line"], 5);
    assert_eq!(bad["errors"][0]["step"], "a");
    assert_eq!(bad["errors"][0]["field"], "steps.a.timout");
}

#[test]
fn the_schema_accepts_every_shipped_pipeline_and_rejects_unknown_keys() {
    let s = Scratch::new();
    let out = s.run(&["schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in ["pipelines", "examples/docker"] {
        for entry in std::fs::read_dir(workspace_root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    let mut checked = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = yaml_to_json(&text);
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{} does not match the schema: {errors:?}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 1);
    let bad = yaml_to_json("name: x\nsteps:\n  a: {run: x, dependz: [b]}\n");
    assert!(!validator.is_valid(&bad));
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let s = Scratch::new();
    let out = s.run(&["graph", &demo()]);
    let dot = text(&out.stdout);
    assert!(dot.contains("\"validate\" -> \"gate\";"), "{dot}");
    assert!(dot.contains("\"gate\" -> \"register\";"), "{dot}");
    assert!(dot.contains("\"register\" -> \"deploy\";"), "{dot}");
    let out = s.run(&["graph", "--format", "mermaid", &demo()]);
    let mermaid = text(&out.stdout);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    let conditional = s.write(
        "when.yaml",
        "name: w\nsteps:\n  check: {run: x}\n  retrain:\n    depends: [check]\n    when: steps.check.outputs.drift == \"true\"\n    run: y\n",
    );
    let out = s.run(&[
        "graph",
        "--format",
        "mermaid",
        conditional.to_str().unwrap(),
    ]);
    let mermaid = text(&out.stdout);
    assert!(
        mermaid.contains("{\"retrain\"}"),
        "conditional steps are drawn as decisions: {mermaid}"
    );
}

/// Reads YAML with serde_yaml, a reader independent of Sluice's own, so the schema is checked
/// against the file as any YAML tool sees it.
fn yaml_to_json(text: &str) -> serde_json::Value {
    let value: serde_yaml::Value = serde_yaml::from_str(text).expect("valid YAML");
    serde_json::to_value(value).expect("YAML that maps to JSON")
}

#[test]
fn completions_cover_every_subcommand_and_bash_reads_them() {
    let s = Scratch::new();
    let out = s.run(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = s.write("sluice.bash", &text(&out.stdout));
    for word in ["retry", "trigger", "models", "--dry-run", "--from"] {
        assert!(
            text(&out.stdout).contains(word),
            "bash completions lack {word}"
        );
    }
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = s.run(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = s.run(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn validate_prints_warnings_and_still_exits_0() {
    let s = Scratch::new();
    let file = s.write(
        "w.yaml",
        "name: w\nparams: {mode: fast}\nsteps:\n  a: {run: x}\n  b:\n    depends: [a]\n    when: steps.a.outputs.m == \"params.mode\"\n    run: y\n",
    );
    let out = s.run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("warning: `when` compares with the text"),
        "{stderr}"
    );
    assert!(stderr.contains("w.yaml:7:11"), "{stderr}");
    let out = s.run(&["validate", "--format", "json", file.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"][0]["warnings"][0]["field"], "steps.b.when");
}

#[test]
fn validate_of_a_folder_passes_over_yaml_that_is_not_a_pipeline_but_not_a_named_file() {
    let s = Scratch::new();
    s.write("dir/good.yaml", "name: good\nsteps:\n  a: {run: x}\n");
    let compose = s.write(
        "dir/docker-compose.yml",
        "services:\n  redis: {image: redis:7}\n",
    );
    s.write(
        "dir/k8s/pod.yaml",
        "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Service\n",
    );
    s.write("dir/typo.yaml", "name: typo\nstpes:\n  a: {run: x}\n");
    let dir = s.path().join("dir").display().to_string();
    let out = s.run(&["validate", &dir]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("note: skipped ")
            && stderr.contains("docker-compose.yml: not a pipeline (no `steps`)"),
        "{stderr}"
    );
    assert!(stderr.contains("pod.yaml: not a pipeline"), "{stderr}");
    // One typo away from `steps` is a broken pipeline, not some other YAML.
    assert!(
        stderr.contains("error: unknown key `stpes` in the pipeline"),
        "{stderr}"
    );
    assert!(stderr.contains("2 errors in 1 of 2 files"), "{stderr}");

    s.write("dir/typo.yaml", "name: typo\nsteps:\n  a: {run: x}\n");
    let out = s.run(&["validate", "--format", "json", &dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["files"].as_array().unwrap().len(), 2);
    let skipped: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].ends_with("docker-compose.yml"), "{skipped:?}");

    // Named on the command line, it is checked, and fails.
    let out = s.run(&["validate", compose.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("error: the pipeline has no `steps`"),
        "{}",
        text(&out.stderr)
    );
    // A folder of other YAML only holds no pipeline to check.
    let only = s.path().join("dir/k8s").display().to_string();
    let out = s.run(&["validate", &only]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no pipeline files under the given paths"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn everyday_subcommands_show_examples_and_exit_codes_in_their_help() {
    let s = Scratch::new();
    for command in [
        "run", "validate", "runs", "show", "logs", "trigger", "retry", "cancel",
    ] {
        let out = s.run(&[command, "--help"]);
        assert!(out.status.success(), "{command}");
        let help = text(&out.stdout);
        assert!(
            help.contains(&format!("Examples:\n  sluice {command} ")),
            "{command} --help has no example:\n{help}"
        );
        assert!(help.contains("Exit codes: 0 "), "{command}:\n{help}");
    }
}
