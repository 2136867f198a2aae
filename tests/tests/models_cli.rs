//! `sluice models` end to end with the real binary: versions registered by a pipeline's
//! `uses: register` step, then listed, shown, promoted, rolled back and traced, on the data dir
//! and through a `sluice server` with tokens.

use std::process::Output;

use serde_json::Value;
use sluice_tests::cluster::Server;
use sluice_tests::{text, Scratch};

/// Trains a "model" from a param and registers it as `churn`, pointing `staging` at it.
const TRAIN_AND_REGISTER: &str = r#"name: churn
params: {lr: "0.1"}
steps:
  prep:
    run: echo "age,churned" > $SLUICE_OUT/train.csv
    outputs: [train.csv]
  train:
    depends: [prep]
    run: |
      echo "{\"lr\": $PARAM_LR}" > $SLUICE_OUT/model.json
    outputs: [model.json]
  register:
    depends: [train]
    uses: register
    with: {model: churn, from: train/model.json, alias: staging}
"#;

/// Three runs, three versions of `churn` (lr 0.1, 0.2, 0.3); `staging` ends at 3.
fn seed(s: &Scratch) {
    let file = s.write("pipelines/churn.yaml", TRAIN_AND_REGISTER);
    for lr in ["0.1", "0.2", "0.3"] {
        let out = s.run(&["run", file.to_str().unwrap(), "-p", &format!("lr={lr}")]);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json(out: Output) -> Value {
    serde_json::from_str(&ok(out)).expect("--json prints JSON")
}

/// Asserts the command exited 2 with `says` in its error.
fn refused(out: Output, says: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}{}", text(&out.stdout));
    assert!(stderr.contains(says), "expected `{says}` in: {stderr}");
}

#[test]
fn the_cli_lists_shows_promotes_rolls_back_and_traces_models() {
    let s = Scratch::new();
    seed(&s);

    let listed = ok(s.run(&["models", "ls"]));
    let row = listed
        .lines()
        .find(|l| l.starts_with("churn"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains("staging=3"), "{row}");
    let listed = json(s.run(&["models", "ls", "--json"]));
    assert_eq!(listed["models"][0]["name"], "churn");
    assert_eq!(listed["models"][0]["versions"], 3);

    // show: the version, its lineage and the aliases pointing at it.
    let shown = json(s.run(&["models", "show", "churn@staging", "--json"]));
    assert_eq!(shown["version"], 3);
    assert_eq!(shown["aliases"], serde_json::json!(["staging"]));
    assert_eq!(shown["params"]["lr"], "0.3");
    assert_eq!(shown["step"], "train");
    assert_eq!(shown["artifact"]["name"], "model.json");
    assert_eq!(shown["artifact"]["id"].as_str().unwrap().len(), 64);
    assert_eq!(shown["training_data"][0]["step"], "prep");
    let first = json(s.run(&["models", "show", "churn:1", "--json"]));
    assert_eq!(first["params"]["lr"], "0.1");
    assert_eq!(first["aliases"], serde_json::json!([]));
    let shown = ok(s.run(&["models", "show", "churn"]));
    assert!(
        shown.starts_with("model churn version 3 (staging)"),
        "{shown}"
    );
    assert!(shown.contains("made by    run "), "{shown}");
    assert!(shown.contains("params     lr=0.3"), "{shown}");
    assert!(shown.contains("trained on prep/train.csv"), "{shown}");

    // promote, again (nothing changes), then back.
    let said = ok(s.run(&[
        "models",
        "promote",
        "churn",
        "1",
        "--alias",
        "production",
        "--reason",
        "first to pass the gate",
    ]));
    assert_eq!(said.trim(), "churn@production promoted: now version 1");
    let said = ok(s.run(&["models", "promote", "churn", "2", "--alias", "production"]));
    assert_eq!(said.trim(), "churn@production promoted: version 1 → 2");
    let said = ok(s.run(&["models", "promote", "churn", "2", "--alias", "production"]));
    assert_eq!(
        said.trim(),
        "churn@production already points at version 2; nothing changed"
    );
    let shown = json(s.run(&["models", "show", "churn@production", "--json"]));
    assert_eq!(shown["version"], 2);
    let said = ok(s.run(&[
        "models",
        "rollback",
        "churn",
        "--alias",
        "production",
        "--reason",
        "latency",
    ]));
    assert_eq!(said.trim(), "churn@production rolled back: version 2 → 1");
    refused(
        s.run(&["models", "rollback", "churn", "--alias", "production"]),
        "nothing to roll back to",
    );

    let history = json(s.run(&["models", "history", "churn", "--json"]));
    let moves: Vec<String> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}->{} {} {}",
                e["action"].as_str().unwrap(),
                e["alias"].as_str().unwrap(),
                e["from"],
                e["to"],
                if e["who"].as_str().unwrap().starts_with("run ") {
                    "run"
                } else {
                    e["who"].as_str().unwrap()
                },
                e["reason"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            "register staging null->1 run -",
            "register staging 1->2 run -",
            "register staging 2->3 run -",
            "promote production null->1 cli first to pass the gate",
            "promote production 1->2 cli -",
            "rollback production 2->1 cli latency",
        ]
    );
    let table = ok(s.run(&["models", "history", "churn"]));
    assert!(table.contains("rollback  cli: latency"), "{table}");

    // What does not exist is named with what does; exit 2.
    refused(
        s.run(&["models", "show", "nope"]),
        "no model `nope`; models: churn",
    );
    refused(
        s.run(&["models", "show", "churn:9"]),
        "model `churn` has no version 9; versions: 1-3",
    );
    refused(
        s.run(&["models", "show", "churn@canary"]),
        "has no alias `canary`; aliases: production, staging",
    );
    refused(
        s.run(&["models", "promote", "churn", "9", "--alias", "production"]),
        "versions: 1-3",
    );
    refused(
        s.run(&["models", "promote", "nope", "1", "--alias", "production"]),
        "models: churn",
    );
    refused(
        s.run(&["models", "rollback", "churn", "--alias", "canary"]),
        "aliases: production, staging",
    );
    refused(s.run(&["models", "history", "nope"]), "models: churn");
    refused(s.run(&["models", "show", "Churn"]), "a-z");
    refused(
        s.run(&["models", "promote", "churn", "1", "--alias", "Prod"]),
        "alias `Prod`",
    );
}

#[test]
fn through_a_server_the_answers_are_the_same_and_the_token_is_who_moved_the_alias() {
    let s = Scratch::new();
    seed(&s);
    let local = json(s.run(&["models", "show", "churn@staging", "--json"]));

    let token_for = |name: &str, role: &str| {
        let made = ok(s.run(&["token", "new", name, "--role", role]));
        let mut lines = made.lines();
        let token = lines.next().unwrap().trim_start_matches("token: ");
        let line = lines
            .next()
            .unwrap()
            .trim_start_matches("tokens file line: ");
        (token.to_string(), line.to_string())
    };
    let (deployer, deployer_line) = token_for("deployer", "trigger");
    let (viewer, viewer_line) = token_for("viewer", "read");
    let tokens = s.write("tokens", &format!("{deployer_line}\n{viewer_line}\n"));
    let server = Server::start(&s, &[("SLUICE_TOKENS", tokens.to_str().unwrap())]);
    let url = server.url();
    let remote = |token: &str, args: &[&str]| {
        let mut all = vec!["models"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", &url, "--token", token]);
        s.run(&all)
    };

    // The server holds the data dir: locally the command says so and where to ask instead.
    let out = s.run(&["models", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--server URL"),
        "{}",
        text(&out.stderr)
    );

    let shown = json(remote(&viewer, &["show", "churn@staging", "--json"]));
    assert_eq!(shown, local, "the API answers what the data dir does");
    let listed = ok(remote(&viewer, &["ls"]));
    assert!(listed.contains("staging=3"), "{listed}");

    refused(
        remote(&viewer, &["promote", "churn", "2", "--alias", "production"]),
        "`viewer` has role `read`",
    );
    refused(
        remote("wrong", &["promote", "churn", "2", "--alias", "production"]),
        "token",
    );
    let said = ok(remote(
        &deployer,
        &[
            "promote",
            "churn",
            "2",
            "--alias",
            "production",
            "--reason",
            "canary ok",
        ],
    ));
    assert_eq!(said.trim(), "churn@production promoted: now version 2");
    refused(
        remote(&deployer, &["show", "churn:7"]),
        "versions: 1-3 (HTTP 404)",
    );
    refused(
        remote(&deployer, &["rollback", "churn", "--alias", "production"]),
        "nothing to roll back to",
    );

    let history = json(remote(&viewer, &["history", "churn", "--json"]));
    let last = history["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["action"], "promote");
    assert_eq!(last["who"], "deployer");
    assert_eq!(last["reason"], "canary ok");
}
