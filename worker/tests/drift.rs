//! Integration tests of `uses: drift` through its public API (`sluice_worker::drift::compare`)
//! and through the executor, on the fixtures of `tests/fixtures/drift/` (written by its
//! `generate.py`, whose `expected.json` holds scipy's numbers, checked against Evidently).
//!
//! No test asserts how fast something happened; the waits below only catch a hang.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_worker::drift::{
    compare, DataFormat, DriftError, DriftMethod, DriftOptions, DriftReport, DriftSpec,
};
use sluice_worker::executor::LocalExecutor;
use sluice_worker::task::{Outcome, StepCommand};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

/// How close a score must be to scipy's: relative, and exact where scipy says 0.
const RELATIVE: f64 = 1e-9;

/// Methods a column can be asked for by name, as `method:` spells them.
const METHODS: [(&str, DriftMethod); 5] = [
    ("ks", DriftMethod::Ks),
    ("wasserstein", DriftMethod::Wasserstein),
    ("jensen_shannon", DriftMethod::JensenShannon),
    ("psi", DriftMethod::Psi),
    ("chi_square", DriftMethod::ChiSquare),
];

/// Longest a single comparison may take here before it counts as a hang.
const HANG: Duration = Duration::from_secs(120);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drift")
}

fn expected() -> Value {
    let path = fixtures().join("expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn pair(name: &str) -> Value {
    expected()["pairs"][name].clone()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// A spec comparing two files with every default.
fn spec(reference: &str, current: &str, format: DataFormat) -> DriftSpec {
    serde_json::from_value(json!({
        "reference": reference,
        "current": current,
        "format": format,
    }))
    .expect("a minimal spec")
}

/// The spec of a fixture pair, its categorical columns declared.
fn pair_spec(pair: &Value) -> DriftSpec {
    let format = if pair["format"] == "csv" {
        DataFormat::Csv
    } else {
        DataFormat::Jsonl
    };
    DriftSpec {
        categorical: strings(&pair["categorical"]),
        ..spec(
            pair["reference"].as_str().expect("reference"),
            pair["current"].as_str().expect("current"),
            format,
        )
    }
}

/// Runs `compare` on its own thread, failing the test if it hangs.
fn run_compare(
    spec: &DriftSpec,
    in_dir: &Path,
    options: DriftOptions,
    cancel: &CancellationToken,
) -> Result<DriftReport, DriftError> {
    let (tx, rx) = mpsc::channel();
    let (spec, in_dir, cancel) = (spec.clone(), in_dir.to_path_buf(), cancel.clone());
    std::thread::spawn(move || {
        // The receiver is gone only when the test already failed.
        let _ = tx.send(compare(&spec, &in_dir, &options, &cancel));
    });
    rx.recv_timeout(HANG)
        .expect("compare did not return (a hang, or it panicked)")
}

fn compare_fixtures(spec: &DriftSpec) -> Result<DriftReport, DriftError> {
    run_compare(
        spec,
        &fixtures(),
        DriftOptions::default(),
        &CancellationToken::new(),
    )
}

fn ok(result: Result<DriftReport, DriftError>) -> DriftReport {
    result.unwrap_or_else(|e| panic!("compare failed: {e}"))
}

fn err(result: Result<DriftReport, DriftError>) -> String {
    match result {
        Ok(report) => panic!("compare succeeded where it should fail: {report:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= RELATIVE * want.abs(),
        "{what}: got {got:e}, scipy says {want:e} (relative error {:e})",
        ((got - want) / want).abs()
    );
}

// ---------------------------------------------------------------------------------------------
// Agreement with scipy and Evidently

#[test]
fn every_method_agrees_with_scipy_on_every_column() {
    let mut checked = 0;
    for name in ["small", "large", "ks"] {
        let pair = pair(name);
        let columns = pair["columns"].as_object().expect("columns");
        for (method_name, method) in METHODS {
            // The columns this method can score (KS and Wasserstein: numeric ones).
            let names: Vec<String> = columns
                .iter()
                .filter(|(_, c)| c["scores"].get(method_name).is_some())
                .map(|(n, _)| n.clone())
                .collect();
            let base = pair_spec(&pair);
            let spec = DriftSpec {
                categorical: base
                    .categorical
                    .iter()
                    .filter(|c| names.contains(c))
                    .cloned()
                    .collect(),
                columns: names.clone(),
                method,
                ..base
            };
            let report = ok(compare_fixtures(&spec));
            assert_eq!(report.columns.len(), names.len(), "{name}/{method_name}");
            for column in &report.columns {
                let what = format!("{name}: {method_name} of `{}`", column.name);
                assert_eq!(column.method.as_str(), method_name, "{what}");
                let want = columns[&column.name]["scores"][method_name]
                    .as_f64()
                    .expect("a score");
                assert_close(&what, column.score, want);
                checked += 1;
            }
        }
    }
    // 7 + 4 + 1 columns; KS and Wasserstein skip the 4 categorical ones, twice.
    assert_eq!(checked, 5 * 12 - 2 * 4);
}

#[test]
fn auto_picks_the_statistic_evidently_picks() {
    for name in ["small", "large", "ks"] {
        let pair = pair(name);
        let report = ok(compare_fixtures(&pair_spec(&pair)));
        let columns = pair["columns"].as_object().expect("columns");
        let names: Vec<&str> = report.columns.iter().map(|c| c.name.as_str()).collect();
        let want_names: Vec<&str> = columns.keys().map(String::as_str).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, want_names, "{name}: every column of the reference");
        for column in &report.columns {
            let want = &columns[&column.name]["auto"];
            let what = format!("{name}: `{}`", column.name);
            assert_eq!(column.method.as_str(), want["method"], "{what}");
            assert_close(&what, column.score, want["score"].as_f64().expect("score"));
            assert_eq!(
                column.threshold,
                want["threshold"].as_f64().expect("threshold")
            );
            assert_eq!(column.drifted, want["drifted"], "{what}");
            assert_eq!(
                serde_json::to_value(column.kind).expect("kind"),
                columns[&column.name]["kind"],
                "{what}"
            );
        }
        let drifted: Vec<&str> = report.drifted_columns().collect();
        let mut drifted_sorted = drifted.clone();
        drifted_sorted.sort_unstable();
        let mut want_drifted = strings(&pair["drifted_columns"]);
        want_drifted.sort_unstable();
        assert_eq!(drifted_sorted, want_drifted, "{name}: drifted columns");
        assert_eq!(report.drift, pair["drift"], "{name}: dataset drift");
        assert_close(
            &format!("{name}: drift share"),
            report.drift_share,
            pair["drift_share"].as_f64().expect("share"),
        );
    }
}

#[test]
fn columns_come_in_the_reference_header_order() {
    let report = ok(compare_fixtures(&pair_spec(&pair("small"))));
    let names: Vec<&str> = report.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["age", "income", "rating", "flag", "color", "plan", "region"]
    );
    assert_eq!(
        report.outputs()["drifted_columns"],
        "income,rating,plan,region"
    );
}

#[test]
fn dataset_drift_is_share_of_drifted_columns_at_or_above_drift_share() {
    // small: 4 of 7 columns drift; large: 2 of 4.
    let cases = [
        ("small", 4.0 / 7.0, true),
        ("small", 0.58, false),
        ("small", 0.1, true),
        ("small", 1.0, false),
        ("large", 0.5, true),
        ("large", 0.51, false),
        ("ks", 0.01, false),
    ];
    for (name, share, want) in cases {
        let spec = DriftSpec {
            drift_share: share,
            ..pair_spec(&pair(name))
        };
        let report = ok(compare_fixtures(&spec));
        assert_eq!(report.drift, want, "{name} at drift_share {share}");
        assert_eq!(report.outputs()["drift"], want.to_string());
    }
}

#[test]
fn threshold_overrides_the_default_for_every_column() {
    // KS p-values of `small`: age 0.081, income 2.3e-5; at 0.1 both drift.
    let spec = DriftSpec {
        columns: vec!["age".into(), "income".into()],
        threshold: Some(0.1),
        ..spec("small_reference.csv", "small_current.csv", DataFormat::Csv)
    };
    let report = ok(compare_fixtures(&spec));
    assert_eq!(report.columns.len(), 2);
    assert!(report
        .columns
        .iter()
        .all(|c| c.threshold == 0.1 && c.drifted));
    assert!(report.drift);
}

#[test]
fn bad_settings_are_refused() {
    let base = pair_spec(&pair("small"));
    let cases = [
        (
            DriftSpec {
                drift_share: 0.0,
                ..base.clone()
            },
            "`drift_share` must be above 0 and at most 1, not 0",
        ),
        (
            DriftSpec {
                threshold: Some(-1.0),
                ..base.clone()
            },
            "`threshold` must be a number of at least 0, not -1",
        ),
        (
            DriftSpec {
                columns: vec!["age".into(), "age".into()],
                categorical: Vec::new(),
                ..base.clone()
            },
            "`columns` lists `age` twice",
        ),
        (
            DriftSpec {
                columns: vec!["age".into()],
                ..base.clone()
            },
            "`categorical` names `color`, which is not a compared column (compared: age)",
        ),
        (
            DriftSpec {
                method: DriftMethod::Ks,
                ..base.clone()
            },
            "method `ks` compares numbers, and column `color` is categorical",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(err(compare_fixtures(&spec)), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad inputs: each names the file, column and row

/// A folder standing in for `$SLUICE_IN`, with files written into it.
struct InDir(tempfile::TempDir);

impl InDir {
    fn new() -> InDir {
        InDir(tempfile::tempdir().expect("a temporary folder"))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn write(&self, name: &str, text: &str) -> &InDir {
        std::fs::write(self.path().join(name), text).expect("writing a data file");
        self
    }
    fn compare(&self, spec: &DriftSpec) -> Result<DriftReport, DriftError> {
        run_compare(
            spec,
            self.path(),
            DriftOptions::default(),
            &CancellationToken::new(),
        )
    }
}

const GOOD_CSV: &str = "x,kind\n1.5,a\n2.5,b\n3.5,a\n";

fn csv_spec() -> DriftSpec {
    DriftSpec {
        categorical: vec!["kind".into()],
        ..spec("ref.csv", "cur.csv", DataFormat::Csv)
    }
}

#[test]
fn a_missing_column_lists_the_columns_the_file_has() {
    let spec = DriftSpec {
        columns: vec!["age".into(), "agee".into()],
        ..spec("small_reference.csv", "small_current.csv", DataFormat::Csv)
    };
    assert_eq!(
        err(compare_fixtures(&spec)),
        "column `agee` is not in the reference file `small_reference.csv`; its columns are: \
         age, income, rating, flag, color, plan, region"
    );

    let dir = InDir::new();
    dir.write("ref.csv", GOOD_CSV)
        .write("cur.csv", "x,kinds\n1,a\n");
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "column `kind` is not in the current file `cur.csv`; its columns are: x, kinds"
    );
}

#[test]
fn a_value_that_is_not_a_number_names_its_row_and_column() {
    let dir = InDir::new();
    dir.write("ref.csv", GOOD_CSV)
        .write("cur.csv", "x,kind\n1.5,a\n2.5,b\nabc,a\n");
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "column `x`, data row 3 (line 4) of the current file `cur.csv`: `abc` is not a number \
         (list the column in `categorical` to compare it as categories)"
    );

    // A quoted line break: the row and the line differ.
    dir.write("cur.csv", "kind,x\n\"a\nb\",1\nc,oops\n");
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "column `x`, data row 2 (line 4) of the current file `cur.csv`: `oops` is not a number \
         (list the column in `categorical` to compare it as categories)"
    );

    // A categorical fixture column compared as numbers.
    let spec = spec("small_reference.csv", "small_current.csv", DataFormat::Csv);
    assert_eq!(
        err(compare_fixtures(&spec)),
        "column `color`, data row 1 (line 2) of the reference file `small_reference.csv`: \
         `red` is not a number (list the column in `categorical` to compare it as categories)"
    );

    let jsonl = DriftSpec {
        categorical: vec!["kind".into()],
        ..spec_jsonl()
    };
    dir.write(
        "ref.jsonl",
        "{\"x\": 1, \"kind\": \"a\"}\n{\"x\": 2, \"kind\": \"b\"}\n",
    )
    .write(
        "cur.jsonl",
        "{\"x\": 1, \"kind\": \"a\"}\n\n{\"x\": \"2\", \"kind\": \"b\"}\n",
    );
    assert_eq!(
        err(dir.compare(&jsonl)),
        "column `x`, line 3 of the current file `cur.jsonl`: `\"2\"` is not a number (list the \
         column in `categorical` to compare it as categories)"
    );
}

fn spec_jsonl() -> DriftSpec {
    spec("ref.jsonl", "cur.jsonl", DataFormat::Jsonl)
}

#[test]
fn missing_and_infinite_values_are_refused() {
    let dir = InDir::new();
    dir.write("ref.csv", GOOD_CSV)
        .write("cur.csv", "x,kind\n1.5,a\n,b\n");
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "column `x`, data row 2 (line 3) of the current file `cur.csv`: the value is missing \
         (drift does not guess what a missing value means)"
    );
    dir.write("cur.csv", "x,kind\n1.5,a\ninf,b\n");
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "column `x`, data row 2 (line 3) of the current file `cur.csv`: `inf` is not a finite \
         number"
    );
    dir.write("ref.jsonl", "{\"x\": 1}\n{\"y\": 2}\n")
        .write("cur.jsonl", "{\"x\": 1}\n");
    assert_eq!(
        err(dir.compare(&spec_jsonl())),
        "column `x`, line 2 of the reference file `ref.jsonl`: the value is missing (drift does \
         not guess what a missing value means)"
    );
}

#[test]
fn empty_files_are_refused() {
    let dir = InDir::new();
    dir.write("ref.csv", "").write("cur.csv", GOOD_CSV);
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "the reference file `ref.csv` is empty"
    );
    dir.write("ref.csv", GOOD_CSV).write("cur.csv", "x,kind\n");
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "the current file `cur.csv` has a header but no rows"
    );
    dir.write("ref.jsonl", "\n\n")
        .write("cur.jsonl", "{\"x\": 1}\n");
    assert_eq!(
        err(dir.compare(&spec_jsonl())),
        "the reference file `ref.jsonl` is empty"
    );
}

#[test]
fn a_ragged_csv_row_is_refused() {
    let dir = InDir::new();
    dir.write("ref.csv", "x,kind\n1.5,a\n2.5,b,extra\n3.5,a\n")
        .write("cur.csv", GOOD_CSV);
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "the reference file `ref.csv`, data row 2 (line 3): 3 fields where the header has 2"
    );
}

#[test]
fn a_jsonl_line_that_is_not_an_object_is_refused() {
    let dir = InDir::new();
    dir.write("ref.jsonl", "{\"x\": 1}\n[1, 2]\n")
        .write("cur.jsonl", "{\"x\": 1}\n");
    assert_eq!(
        err(dir.compare(&spec_jsonl())),
        "the reference file `ref.jsonl`, line 2: not a JSON object"
    );
    dir.write("ref.jsonl", "{\"x\": 1}\n{\"x\": 1,}\n");
    let message = err(dir.compare(&spec_jsonl()));
    assert!(
        message.starts_with("the reference file `ref.jsonl`, line 2: "),
        "{message}"
    );
}

#[test]
fn links_and_fifos_in_place_of_a_data_file_are_refused() {
    let dir = InDir::new();
    dir.write("cur.csv", GOOD_CSV);
    std::fs::write(dir.path().join("real.csv"), GOOD_CSV).expect("writing");
    std::os::unix::fs::symlink(dir.path().join("real.csv"), dir.path().join("ref.csv"))
        .expect("a symlink");
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "cannot open the reference file `ref.csv`: is a symbolic link, and Sluice does not \
         follow links in a step's folder"
    );

    // A link on the way to the file, not only at its end.
    std::fs::create_dir(dir.path().join("real")).expect("a folder");
    std::fs::write(dir.path().join("real/cur.csv"), GOOD_CSV).expect("writing");
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("up")).expect("link");
    let through = DriftSpec {
        reference: "real.csv".into(),
        current: "up/cur.csv".into(),
        ..csv_spec()
    };
    let message = err(dir.compare(&through));
    assert!(
        message.starts_with("cannot open the current file `up/cur.csv`: "),
        "{message}"
    );

    // A FIFO: refused without blocking on it (a hang fails the test through `run_compare`).
    std::fs::remove_file(dir.path().join("ref.csv")).expect("removing the link");
    nix::unistd::mkfifo(
        &dir.path().join("ref.csv"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("a FIFO");
    assert_eq!(
        err(dir.compare(&csv_spec())),
        "cannot open the reference file `ref.csv`: is not a regular file (a FIFO, socket, \
         device or folder)"
    );
}

#[test]
fn paths_that_leave_the_folder_are_refused() {
    let dir = InDir::new();
    dir.write("cur.csv", GOOD_CSV);
    for path in ["../ref.csv", "data/../../ref.csv", ""] {
        let spec = DriftSpec {
            reference: path.into(),
            ..csv_spec()
        };
        assert_eq!(
            err(dir.compare(&spec)),
            format!("the reference path `{path}` must name a file under $SLUICE_IN, without `..`")
        );
    }
    let spec = DriftSpec {
        current: "nowhere.csv".into(),
        reference: "cur.csv".into(),
        ..csv_spec()
    };
    assert_eq!(
        err(dir.compare(&spec)),
        "the current file `nowhere.csv` does not exist"
    );
}

// ---------------------------------------------------------------------------------------------
// Large data: cancellation and the memory budget

/// Writes `rows` rows of two numeric columns, different in the two files. With `bad_end`,
/// the current file's last value is not a number: a read that ignores cancellation reaches it
/// and fails with that instead of `Cancelled`, so the cancel tests need no clock.
fn write_large(dir: &InDir, rows: u64, bad_end: bool) {
    use std::io::Write;
    for (name, shift) in [("ref.csv", 0u64), ("cur.csv", 7)] {
        let file = std::fs::File::create(dir.path().join(name)).expect("creating");
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "a,b").expect("writing");
        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ shift;
        for i in 0..rows {
            // xorshift: cheap values with many distinct ones.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            writeln!(out, "{},{}", state % 100_000, (i + shift) % 977).expect("writing");
        }
        if bad_end && shift != 0 {
            writeln!(out, "1,not-a-number").expect("writing");
        }
        out.flush().expect("flushing");
    }
}

#[test]
fn cancel_stops_a_large_comparison() {
    let dir = InDir::new();
    write_large(&dir, 1_000_000, true);
    let spec = spec("ref.csv", "cur.csv", DataFormat::Csv);
    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::channel();
    let worker = {
        let (spec, in_dir, cancel) = (spec.clone(), dir.path().to_path_buf(), cancel.clone());
        std::thread::spawn(move || {
            let _ = tx.send(compare(&spec, &in_dir, &DriftOptions::default(), &cancel));
        })
    };
    cancel.cancel();
    let result = rx.recv_timeout(HANG).expect("compare did not stop");
    assert!(
        matches!(result, Err(DriftError::Cancelled)),
        "{:?}",
        result.map(|r| r.drift)
    );
    worker.join().expect("the comparison thread");

    // Cancelled before it starts: nothing is read.
    let result = run_compare(&spec, dir.path(), DriftOptions::default(), &cancel);
    assert!(matches!(result, Err(DriftError::Cancelled)));
}

#[test]
fn a_budget_smaller_than_the_data_gives_the_same_report() {
    for name in ["small", "large", "ks"] {
        let spec = pair_spec(&pair(name));
        let cancel = CancellationToken::new();
        let full = ok(run_compare(
            &spec,
            &fixtures(),
            DriftOptions::default(),
            &cancel,
        ));
        let rows: u64 = pair(name)["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|n| n.as_u64().expect("a count"))
            .sum();
        // One byte: a pass per numeric column. Two columns' worth: later passes of two.
        for budget in [1, (rows * 8 * 2) as usize, (rows * 8 * 3) as usize] {
            let options = DriftOptions {
                memory_budget: budget,
            };
            let small = ok(run_compare(&spec, &fixtures(), options, &cancel));
            assert_eq!(small, full, "{name} within {budget} bytes");
        }
    }
    // Many passes over larger data, each column checked against the one-pass report.
    let dir = InDir::new();
    write_large(&dir, 50_000, false);
    let spec = spec("ref.csv", "cur.csv", DataFormat::Csv);
    let cancel = CancellationToken::new();
    let full = ok(run_compare(
        &spec,
        dir.path(),
        DriftOptions::default(),
        &cancel,
    ));
    let tight = DriftOptions { memory_budget: 1 };
    assert_eq!(ok(run_compare(&spec, dir.path(), tight, &cancel)), full);
}

#[test]
fn a_bad_value_fails_whatever_the_budget() {
    // With one byte the first pass keeps no column past the first; `b` is read again later,
    // and its bad value must still fail the comparison with its row.
    let dir = InDir::new();
    dir.write("ref.csv", "a,b\n1,2\n2,3\n3,4\n")
        .write("cur.csv", "a,b\n1,2\n2,x\n3,4\n");
    let spec = spec("ref.csv", "cur.csv", DataFormat::Csv);
    let result = run_compare(
        &spec,
        dir.path(),
        DriftOptions { memory_budget: 1 },
        &CancellationToken::new(),
    );
    assert_eq!(
        err(result),
        "column `b`, data row 2 (line 3) of the current file `cur.csv`: `x` is not a number \
         (list the column in `categorical` to compare it as categories)"
    );
}

// ---------------------------------------------------------------------------------------------
// Through the executor: outputs, metrics and outcomes

/// A `uses: drift` task with `with`, whose `$SLUICE_IN` holds copies of the fixture `files`.
fn drift_task(dir: &Path, with: Value, files: &[&str]) -> sluice_worker::task::TaskSpec {
    let mut t = task(dir, StepCommand::Builtin("drift".into()));
    t.with = Some(with);
    std::fs::create_dir_all(t.in_dir()).expect("creating $SLUICE_IN");
    for file in files {
        std::fs::copy(fixtures().join(file), t.in_dir().join(file)).expect("copying a fixture");
    }
    t
}

#[tokio::test]
async fn the_step_reports_outputs_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let with = json!({
        "reference": "small_reference.csv",
        "current": "small_current.csv",
        "categorical": ["color", "plan", "region"],
    });
    let t = drift_task(
        dir.path(),
        with,
        &["small_reference.csv", "small_current.csv"],
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.message);
    assert_eq!(result.outputs["drift"], "true");
    assert_eq!(
        result.outputs["drifted_columns"],
        "income,rating,plan,region"
    );
    assert_eq!(result.outputs.len(), 2);
    let m = &result.metrics;
    assert_eq!(m["drift"], json!(true));
    assert_eq!(m["drifted_columns"], json!(4));
    assert_eq!(m["drift_share"], json!(4.0 / 7.0));
    let columns = m["columns"].as_object().expect("columns");
    assert_eq!(columns.len(), 7);
    let want = &pair("small")["columns"]["income"]["auto"];
    let income = &columns["income"];
    assert_eq!(income["method"], "ks");
    assert_eq!(income["kind"], "numeric");
    assert_eq!(income["threshold"], json!(0.05));
    assert_eq!(income["drifted"], json!(true));
    assert_close(
        "income",
        income["score"].as_f64().expect("score"),
        want["score"].as_f64().expect("score"),
    );
    assert_eq!(columns["plan"]["method"], "z_test");
    assert_eq!(columns["plan"]["kind"], "categorical");
    assert!(t.out_dir().is_dir(), "the step's out/ folder exists");
}

#[tokio::test]
async fn bad_with_and_bad_data_fail_the_step_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = drift_task(dir.path(), json!({"reference": "a.csv"}), &[]);
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed);
    let message = result.message.unwrap_or_default();
    assert!(
        message.starts_with("the `with:` of `drift` is not valid: missing field `current`"),
        "{message}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let with = json!({"reference": "small_reference.csv", "current": "small_current.csv"});
    let t = drift_task(
        dir.path(),
        with,
        &["small_reference.csv", "small_current.csv"],
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed);
    assert_eq!(
        result.message.as_deref(),
        Some(
            "drift: column `color`, data row 1 (line 2) of the reference file \
             `small_reference.csv`: `red` is not a number (list the column in `categorical` \
             to compare it as categories)"
        )
    );
    assert!(result.outputs.is_empty());
}

#[tokio::test]
async fn a_cancelled_or_timed_out_step_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = drift_task(
        dir.path(),
        json!({"reference": "ref.csv", "current": "cur.csv"}),
        &[],
    );
    let data = InDir::new();
    write_large(&data, 1_000_000, true);
    for name in ["ref.csv", "cur.csv"] {
        std::fs::rename(data.path().join(name), t.in_dir().join(name)).expect("moving data");
    }
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = run_with(&LocalExecutor::default(), &t, cancel).await;
    assert_eq!(result.outcome, Outcome::Cancelled, "{:?}", result.message);

    t.timeout = Some(Duration::from_millis(1));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::TimedOut, "{:?}", result.message);
    assert_eq!(result.message.as_deref(), Some("timed out after 1ms"));
}

// ---------------------------------------------------------------------------------------------
// Parquet (fixtures written by pyarrow: tests/fixtures/drift/parquet.py)

/// The spec of a fixture pair with its files swapped for their Parquet copies.
fn parquet_twin(name: &str) -> DriftSpec {
    let pair = pair(name);
    let twin = |key: &str| {
        let text = pair[key].as_str().expect("a file name");
        let stem = text.rsplit_once('.').expect("an extension").0;
        format!("{stem}.parquet")
    };
    DriftSpec {
        reference: twin("reference"),
        current: twin("current"),
        format: DataFormat::Parquet,
        ..pair_spec(&pair)
    }
}

#[test]
fn a_parquet_pair_gives_the_report_of_its_text_twin() {
    // small: Snappy, int64 and dictionary-encoded string columns; large: Zstandard, two row
    // groups per file.
    for name in ["small", "large"] {
        for (method_name, method) in [("auto", DriftMethod::Auto)].into_iter().chain(METHODS) {
            let text = pair_spec(&pair(name));
            let parquet = parquet_twin(name);
            let numeric_only = matches!(method, DriftMethod::Ks | DriftMethod::Wasserstein);
            let pick = |spec: DriftSpec| DriftSpec {
                columns: if numeric_only {
                    Vec::new()
                } else {
                    spec.columns.clone()
                },
                method,
                ..spec
            };
            let (text, parquet) = (pick(text), pick(parquet));
            if numeric_only && !text.categorical.is_empty() {
                continue; // Covered column by column by the scipy test.
            }
            let (want, got) = (ok(compare_fixtures(&text)), ok(compare_fixtures(&parquet)));
            assert_eq!(
                got.columns.len(),
                want.columns.len(),
                "{name}/{method_name}"
            );
            for (g, w) in got.columns.iter().zip(&want.columns) {
                let what = format!("{name}/{method_name}: `{}`", w.name);
                assert_eq!(
                    (&g.name, g.kind, g.method),
                    (&w.name, w.kind, w.method),
                    "{what}"
                );
                assert_eq!(g.score, w.score, "{what}");
                assert_eq!(g.drifted, w.drifted, "{what}");
            }
            assert_eq!(got.drift, want.drift, "{name}/{method_name}");
        }
    }
}

#[test]
fn parquet_nulls_nan_and_infinity_are_refused_by_row() {
    let dir = InDir::new();
    let spec = spec("ref.parquet", "cur.parquet", DataFormat::Parquet);
    for (file, problem) in [
        (
            "bad_null.parquet",
            "the value is missing (drift does not guess what a missing value means)",
        ),
        ("bad_nan.parquet", "`NaN` is not a finite number"),
        ("bad_inf.parquet", "`inf` is not a finite number"),
    ] {
        for copy in ["ref.parquet", "cur.parquet"] {
            std::fs::copy(fixtures().join(file), dir.path().join(copy)).unwrap();
        }
        assert_eq!(
            err(dir.compare(&spec)),
            format!("column `x`, row 2 of the reference file `ref.parquet`: {problem}"),
            "{file}"
        );
    }
}

#[test]
fn a_file_that_is_not_parquet_or_lacks_a_column_is_refused() {
    let dir = InDir::new();
    dir.write("ref.parquet", "age,income\n1,2\n");
    std::fs::copy(
        fixtures().join("small_current.parquet"),
        dir.path().join("cur.parquet"),
    )
    .unwrap();
    let spec = spec("ref.parquet", "cur.parquet", DataFormat::Parquet);
    let message = err(dir.compare(&spec));
    assert!(
        message.contains("the reference file `ref.parquet`")
            && message.contains("not a readable Parquet file"),
        "{message}"
    );
    std::fs::copy(
        fixtures().join("large_reference.parquet"),
        dir.path().join("ref.parquet"),
    )
    .unwrap();
    let message = err(dir.compare(&spec));
    assert!(
        message.contains("`lat`") && message.contains("age, income"),
        "a missing column lists the columns the file has: {message}"
    );
}

#[test]
fn a_damaged_parquet_file_is_an_error_never_a_panic() {
    let good = std::fs::read(fixtures().join("large_reference.parquet")).unwrap();
    let dir = InDir::new();
    std::fs::copy(
        fixtures().join("large_current.parquet"),
        dir.path().join("cur.parquet"),
    )
    .unwrap();
    let spec = spec("ref.parquet", "cur.parquet", DataFormat::Parquet);
    // Flipped bytes all over the file (pages, dictionary, footer), then cut files.
    let mut damaged: Vec<Vec<u8>> = (0..good.len())
        .step_by(97)
        .map(|at| {
            let mut bytes = good.clone();
            bytes[at] ^= 0x5a;
            bytes
        })
        .collect();
    damaged.extend([8, good.len() / 2, good.len() - 9].map(|n| good[..n].to_vec()));
    for bytes in damaged {
        std::fs::write(dir.path().join("ref.parquet"), &bytes).unwrap();
        // Ok (a flip in a value) or a clear error; run_compare fails the test on a panic.
        if let Err(err) = dir.compare(&spec) {
            assert!(err.to_string().contains("ref.parquet"), "{err}");
        }
    }
}
