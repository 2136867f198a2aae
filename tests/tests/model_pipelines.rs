//! The model built-ins in real runs of the real binary: a gate that blocks registration, a
//! registered version with its lineage, a step that takes a model by alias, drift against a
//! version's own training data, and gc keeping what the registry names.

use serde_json::Value;
use sluice_tests::{step, text, Scratch};

/// prep → train → validate → gate → register (→ use the model, check drift against its data).
const LOOP: &str = r#"name: churn
params: {accuracy: "0.93", shift: "0"}
steps:
  prep:
    run: |
      echo "x,kind" > $SLUICE_OUT/train.csv
      for i in $(seq 1 200); do echo "$((i % 50)),k$((i % 3))" >> $SLUICE_OUT/train.csv; done
      echo "x,kind" > $SLUICE_OUT/batch.csv
      for i in $(seq 1 200); do echo "$((i % 50 + PARAM_SHIFT)),k$((i % 3))" >> $SLUICE_OUT/batch.csv; done
    outputs: [train.csv, batch.csv]
  train:
    depends: [prep]
    run: |
      mkdir -p $SLUICE_OUT/model && echo "weights $PARAM_ACCURACY" > $SLUICE_OUT/model/weights.bin
      echo '{"loss": 0.25}' > $SLUICE_METRICS
    outputs: [model/]
  validate:
    depends: [train]
    run: |
      echo "{\"accuracy\": $PARAM_ACCURACY}" > $SLUICE_METRICS
      echo "validated at accuracy $PARAM_ACCURACY" > $SLUICE_OUT/report.txt
    outputs: [report.txt]
  gate:
    depends: [validate]
    uses: gate
    with:
      metrics_from: [validate]
      require: {accuracy: ">= 0.9"}
      compare_to: churn@production
      max_regression: {accuracy: 0.01}
  register:
    depends: [gate, train]
    uses: register
    with: {model: churn, from: train/model, alias: production}
  serve:
    depends: [register]
    models: {current: churn@production}
    run: |
      cat $SLUICE_IN/models/current/weights.bin
      echo "served=$SLUICE_MODEL_CURRENT_VERSION" >> $SLUICE_OUTPUTS
  monitor:
    depends: [register, prep]
    uses: drift
    with:
      reference: churn@production:training-data/train.csv
      current: prep/batch.csv
      categorical: [kind]
"#;

fn run(s: &Scratch, file: &str, params: &[&str]) -> (bool, Value) {
    let mut args = vec!["run", file];
    for p in params {
        args.extend(["-p", p]);
    }
    let out = s.run(&args);
    let id = s.latest_run_id();
    let show = s.show(&id);
    assert!(
        out.status.code().is_some(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (out.status.success(), show)
}

fn models_show(s: &Scratch, reference: &str) -> Value {
    let out = s.run(&["models", "show", reference, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn a_gate_decides_what_is_registered_and_later_steps_take_the_alias() {
    let s = Scratch::new();
    let file = s.write("p.yaml", LOOP);
    let file = file.to_str().unwrap();

    let (ok, first) = run(&s, file, &[]);
    assert!(ok, "{first:#}");
    let gate = step(&first, "gate");
    assert_eq!(gate["outputs"]["passed"], "true");
    assert!(
        gate["gate"]["compared_to"]
            .as_str()
            .unwrap()
            .contains("not registered yet"),
        "the first gate has nothing to compare with: {gate:#}"
    );
    assert_eq!(step(&first, "register")["outputs"]["version"], "1");
    assert_eq!(step(&first, "serve")["outputs"]["served"], "1");
    assert_eq!(step(&first, "serve")["models"]["current"], "churn:1");
    assert_eq!(step(&first, "monitor")["outputs"]["drift"], "false");

    // The version keeps its lineage: artifact, upstream metrics, params, training data.
    let v1 = models_show(&s, "churn@production");
    let text = v1.to_string();
    let model_id = step(&first, "train")["artifacts"][0]["id"].clone();
    assert!(text.contains(model_id.as_str().unwrap()), "{v1:#}");
    for expected in ["\"loss\"", "\"accuracy\"", "train.csv", "batch.csv", "0.93"] {
        assert!(text.contains(expected), "{expected} missing from {v1:#}");
    }

    // Worse than production by more than allowed, though above the threshold: blocked.
    let (ok, worse) = run(&s, file, &["accuracy=0.91"]);
    assert!(!ok);
    let gate = step(&worse, "gate");
    assert_eq!(gate["status"], "failed");
    let row = &gate["gate"]["rows"][0];
    assert_eq!(
        (
            row["metric"].as_str(),
            row["value"].as_f64(),
            row["compared"].as_f64(),
            row["passed"].as_bool()
        ),
        (Some("accuracy"), Some(0.91), Some(0.93), Some(false)),
        "{gate:#}"
    );
    assert_eq!(step(&worse, "register")["status"], "skipped");
    let human = s.run(&["show", worse["run"]["id"].as_str().unwrap()]);
    let printed = sluice_tests::text(&human.stdout);
    assert!(
        printed.contains("METRIC") && printed.contains("fell behind"),
        "`show` prints the gate's table: {printed}"
    );

    // Better: version 2 takes the alias, and the next step is served it.
    let (ok, better) = run(&s, file, &["accuracy=0.95"]);
    assert!(ok, "{better:#}");
    assert_eq!(step(&better, "register")["outputs"]["version"], "2");
    assert_eq!(step(&better, "serve")["outputs"]["served"], "2");
}

#[test]
fn drift_against_the_models_training_data_sees_a_shifted_batch() {
    let s = Scratch::new();
    let file = s.write("p.yaml", LOOP);
    let file = file.to_str().unwrap();
    assert!(run(&s, file, &[]).0);
    // The same pipeline with a shifted batch: x moves by 25 of its 0..49 range.
    let (ok, shifted) = run(&s, file, &["shift=25", "accuracy=0.94"]);
    assert!(ok, "{shifted:#}");
    let monitor = step(&shifted, "monitor");
    // One of two columns drifts: a share of 0.5 reaches `drift_share` (0.5), so the batch does.
    assert_eq!(monitor["outputs"]["drift"], "true", "{monitor:#}");
    assert_eq!(monitor["outputs"]["drifted_columns"], "x", "{monitor:#}");
    assert_eq!(monitor["metrics"]["columns"]["x"]["method"], "ks");
    assert_eq!(monitor["metrics"]["columns"]["kind"]["drifted"], false);
}

#[test]
fn gc_keeps_registered_models_and_their_training_data() {
    let s = Scratch::new();
    let file = s.write("p.yaml", LOOP);
    let file = file.to_str().unwrap();
    assert!(run(&s, file, &[]).0);
    let version = models_show(&s, "churn:1");
    let out = s.run(&["gc", "--older-than", "0s", "--keep-last", "0", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["runs"].as_array().unwrap().len(), 1, "{report:#}");
    // The validation report was the run's own; model, train.csv and batch.csv (the same bytes
    // as train.csv here) are the registry's.
    assert_eq!(report["blobs"], 1, "{report:#}");
    assert_eq!(report["kept_blobs"], 3, "{report:#}");

    // The registered folder and the data it was trained on are still whole.
    let model_id = version_field(&version, "artifact");
    let dest = s.path().join("model");
    let got = s.run(&["artifacts", "get", &model_id, dest.to_str().unwrap()]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert!(std::fs::read_to_string(dest.join("weights.bin"))
        .unwrap()
        .starts_with("weights"));
    let training = version_training_ids(&version);
    assert_eq!(training.len(), 2, "{version:#}");
    for (i, id) in training.iter().enumerate() {
        let dest = s.path().join(format!("training-{i}"));
        let got = s.run(&["artifacts", "get", id, dest.to_str().unwrap()]);
        assert!(got.status.success(), "{id}: {}", text(&got.stderr));
    }
}

/// The id of the version's registered artifact, wherever `models show --json` nests it.
fn version_field(show: &Value, name: &str) -> String {
    let version = show
        .get("version")
        .filter(|v| v.is_object())
        .unwrap_or(show);
    version[name]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {name}.id in {show:#}"))
        .to_string()
}

fn version_training_ids(show: &Value) -> Vec<String> {
    let version = show
        .get("version")
        .filter(|v| v.is_object())
        .unwrap_or(show);
    version["training_data"]
        .as_array()
        .unwrap_or_else(|| panic!("no training_data in {show:#}"))
        .iter()
        .map(|t| t["artifact"]["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn validate_checks_the_with_of_model_steps() {
    let s = Scratch::new();
    let bad = LOOP
        .replace("metrics_from: [validate]", "metric_from: [validate]")
        .replace("from: train/model", "from: train/weights");
    let file = s.write("bad.yaml", &bad);
    let out = s.run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("bad.yaml:"), "names the file: {said}");
    assert!(said.contains("metrics_from"), "did-you-mean: {said}");
    assert!(
        said.contains("does not declare") && said.contains("outputs of `train`: model/"),
        "register names a declared output: {said}"
    );
}
