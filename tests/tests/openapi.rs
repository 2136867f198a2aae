//! The API against its own OpenAPI document: a live `sluice server`, holding a run that made an
//! artifact and registered a model, fuzzed by schemathesis with every check it has (no 5xx, every
//! status, content type, header and body as documented, bad input refused, good input taken,
//! the token guard not ignored). Settings, and why webhooks are left out: `tests/schemathesis.toml`.
//!
//! Skipped without schemathesis, unless `SLUICE_REQUIRE_SCHEMATHESIS=1` (CI sets it).

use std::process::Stdio;
use std::time::Duration;

use sluice_tests::cluster::{http, Server};
use sluice_tests::schemathesis::schemathesis;
use sluice_tests::{text, wait_output, wait_until, workspace_root, Scratch};

/// The admin token the server is started with, and schemathesis sends.
const TOKEN: &str = "fuzz-admin-token";

/// A run of this leaves an artifact, a cache note, a gate report and a model version behind,
/// so the answers schemathesis checks hold every kind of record; its webhook and cron trigger
/// are listed by `GET /api/v1/pipelines`.
const DEMO: &str = r#"name: demo
description: The fixture of tests/tests/openapi.rs.
params:
  rows: {type: integer, default: 3}
triggers:
  - webhook: arrival
    insecure: true
  - cron: "0 3 * * *"
steps:
  make:
    run: 'echo made > "$SLUICE_OUT/out.txt"; echo "{\"acc\": 0.9}" > "$SLUICE_METRICS"; echo made; echo note >&2'
    outputs: [out.txt]
    cache: true
  gate:
    depends: [make]
    uses: gate
    with: { metrics_from: [make], require: { acc: ">= 0.5" } }
  register:
    depends: [make, gate]
    uses: register
    with: { model: demo, from: make/out.txt, alias: staging }
"#;

/// `GET path` with the token, as JSON.
fn get(server: &Server, path: &str) -> serde_json::Value {
    let (status, body) = http("GET", &format!("{}{path}", server.url()), Some(TOKEN), None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// A TOML array of strings.
fn toml_list(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

#[test]
fn the_api_answers_as_its_openapi_document_says() {
    let Some(program) = schemathesis() else {
        return;
    };
    let scratch = Scratch::new();
    scratch.write("pipelines/demo.yaml", DEMO);
    scratch.write(
        "pipelines/broken.yaml",
        "name: broken\nsteps:\n  x:\n    rum: true\n",
    );
    let server = Server::start(&scratch, &[("SLUICE_API_TOKEN", TOKEN)]);

    // Real records to fuzz with, next to the made-up ids.
    let (status, body) = http(
        "POST",
        &format!("{}/api/v1/pipelines/demo/runs", server.url()),
        Some(TOKEN),
        Some(""),
    );
    assert_eq!(status, 201, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let run = started["run"]["id"].as_str().expect("a run id").to_string();
    wait_until("the seeded run to succeed", Duration::from_secs(60), || {
        get(&server, &format!("/api/v1/runs/{run}"))["run"]["status"] == "succeeded"
    });
    let artifacts = get(&server, "/api/v1/artifacts");
    let artifact = artifacts["artifacts"][0]["id"]
        .as_str()
        .expect("the run made an artifact")
        .to_string();

    // The committed settings, with the seeded ids offered for the path parameters (half of
    // the time; the other half are generated).
    let settings = std::fs::read_to_string(workspace_root().join("tests/schemathesis.toml"))
        .expect("tests/schemathesis.toml");
    let dictionaries = [
        ("run", toml_list(&[&run])),
        ("step", toml_list(&["make", "gate", "register"])),
        ("id", toml_list(&[&artifact])),
        ("other", toml_list(&[&artifact])),
        ("pipeline", toml_list(&["demo"])),
        ("name", toml_list(&["demo"])),
        ("alias", toml_list(&["staging"])),
        ("version", toml_list(&["1", "latest"])),
    ];
    let mut config = settings;
    for (name, values) in &dictionaries {
        config.push_str(&format!("\n[dictionaries.{name}]\nvalues = {values}\n"));
    }
    config.push_str("\n[parameters]\n");
    for (name, _) in &dictionaries {
        config.push_str(&format!(
            "\"path.{name}\" = {{ dictionary = \"{name}\", probability = 0.5 }}\n"
        ));
    }
    let config_file = scratch.write("schemathesis.toml", &config);

    let child = std::process::Command::new(&program)
        .arg("--config-file")
        .arg(&config_file)
        .args(["run", &format!("{}/api/v1/openapi.json", server.url())])
        .args(["--checks", "all", "--no-color", "--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis starts");
    let out = wait_output(child, Duration::from_secs(110));
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    // The summary, in the test's output (`cargo test -- --nocapture` shows it on success too).
    let summary = report
        .rfind("SUMMARY")
        .map_or(report.as_str(), |at| &report[at..]);
    eprintln!("{summary}");
    assert!(
        out.status.success(),
        "schemathesis found answers that break the document:\n{report}\nserver log:\n{}",
        server.log_text()
    );
    assert!(
        report.contains("passed"),
        "schemathesis ran no test:\n{report}"
    );
}
