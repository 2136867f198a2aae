//! Running again and running a part: `sluice retry` (a new run of an ended run that keeps the
//! steps that succeeded, and the outputs the steps after them read, and runs the others;
//! embedded and through the API) and `sluice run --only | --from | --until` (a subset on the
//! outputs of earlier runs).

use sluice_tests::cluster::{http, Server};
use sluice_tests::{step, text, wait_until, Scratch};

/// `a` counts its runs and writes an output `b` reads; `b` fails until `fixed` exists; `c`
/// follows `b`; `d` stands alone.
const PIPELINE: &str = "name: flaky
params: {greeting: hello}
steps:
  a:
    run: echo x >> ../a-ran; echo \"$PARAM_GREETING\" > \"$SLUICE_OUT/a.txt\"
    outputs: [a.txt]
  b:
    depends: [a]
    run: test -e ../fixed && cp \"$SLUICE_IN/a/a.txt\" \"$SLUICE_OUT/b.txt\"
    outputs: [b.txt]
  c:
    depends: [b]
    run: cat \"$SLUICE_IN/b/b.txt\"
  d:
    run: echo x >> ../d-ran
";

fn runs_of_a(s: &Scratch) -> usize {
    std::fs::read_to_string(s.path().join("a-ran"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn retry_keeps_what_succeeded_and_runs_the_rest_with_its_inputs() {
    let s = Scratch::new();
    let file = s.write("p/flaky.yaml", PIPELINE);
    let out = s.run(&["run", file.to_str().unwrap(), "-p", "greeting=hi"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let failed = s.latest_run_id();

    // Nothing changed yet: `--resume` points at retry, a retry fails the same way.
    let out = s.run(&["run", "--resume", &failed]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(&format!("sluice retry {failed}")));

    std::fs::write(s.path().join("fixed"), "").unwrap();
    let out = s.run(&["retry", &failed[..10]]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "retrying run {failed} of `flaky`: keeping a, d; running b, c"
        )),
        "{stdout}"
    );
    assert_eq!(runs_of_a(&s), 1, "a succeeded before: it is not run again");
    let retried = s.latest_run_id();
    let show = s.show(&retried);
    assert_eq!(show["run"]["retry_of"], failed.as_str());
    assert_eq!(show["run"]["trigger"], format!("retry of {failed}"));
    assert_eq!(show["run"]["params"]["greeting"], "hi", "the same params");
    assert_eq!(
        step(&show, "a")["reason"],
        format!("kept from run {failed}")
    );
    for name in ["a", "b", "c", "d"] {
        assert_eq!(step(&show, name)["status"], "succeeded", "{name}");
    }
    // b read a's kept output.
    let out = s.run(&["logs", &retried, "c"]);
    assert_eq!(text(&out.stdout).trim(), "hi");

    let out = s.run(&["retry", &retried]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nothing to retry"),
        "{}",
        text(&out.stderr)
    );
    let out = s.run(&["retry", &retried, "--from", "zz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`zz` is not a step of `flaky`; its steps are: a, b, c, d"),
        "{}",
        text(&out.stderr)
    );
    let out = s.run(&["retry", &retried, "--from", "a"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(runs_of_a(&s), 2, "--from a runs a again");
}

#[test]
fn the_api_retries_a_run_and_says_why_it_cannot() {
    let s = Scratch::new();
    s.write("pipelines/flaky.yaml", PIPELINE);
    let server = Server::start(&s, &[]);
    let post = |path: &str, body: Option<&str>| {
        http("POST", &format!("{}{path}", server.url()), None, body)
    };
    let (status, reply) = post("/api/v1/pipelines/flaky/runs", None);
    assert_eq!(status, 201, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let failed = reply["run"]["id"].as_str().unwrap().to_string();
    let status_of = |id: &str| server.get(&format!("/api/v1/runs/{id}"))["run"]["status"].clone();
    wait_until(
        "the run to fail",
        std::time::Duration::from_secs(60),
        || status_of(&failed) == "failed",
    );
    std::fs::write(s.path().join("fixed"), "").unwrap();
    let (status, reply) = post(
        &format!("/api/v1/runs/{failed}/retry"),
        Some("{\"from\": \"d\"}"),
    );
    assert_eq!(status, 201, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["run"]["retry_of"], failed.as_str());
    let retried = reply["run"]["id"].as_str().unwrap().to_string();
    wait_until(
        "the retry to succeed",
        std::time::Duration::from_secs(60),
        || status_of(&retried) == "succeeded",
    );
    let lines = std::fs::read_to_string(s.path().join("d-ran")).unwrap();
    assert_eq!(lines.lines().count(), 2, "--from d ran d again");

    let (status, reply) = post(&format!("/api/v1/runs/{retried}/retry"), None);
    assert_eq!(status, 409, "{reply}");
    assert!(reply.contains("nothing to retry"), "{reply}");
    let (status, _) = post("/api/v1/runs/NOPE/retry", None);
    assert_eq!(status, 404);
    let (status, reply) = post(
        &format!("/api/v1/runs/{failed}/retry"),
        Some("{\"form\": \"d\"}"),
    );
    assert_eq!(status, 422, "{reply}");

    // The CLI against the server.
    let out = s.run(&["retry", &failed, "--server", &server.url(), "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains(&format!("(retry of {failed})")));
}

/// Each step counts its runs in `<step>-ran`; `train` reads what `ingest` wrote.
const SLICED: &str = "name: sliced
steps:
  ingest:
    run: echo x >> ../ingest-ran; echo data > \"$SLUICE_OUT/data.txt\"
    outputs: [data.txt]
  train:
    depends: [ingest]
    run: echo x >> ../train-ran; cat \"$SLUICE_IN/ingest/data.txt\"
  report:
    depends: [train]
    run: echo x >> ../report-ran
  lint:
    run: echo x >> ../lint-ran
";

fn runs_of(s: &Scratch, step: &str) -> usize {
    std::fs::read_to_string(s.path().join(format!("{step}-ran")))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn a_subset_runs_its_steps_on_the_inputs_an_earlier_run_made() {
    let s = Scratch::new();
    let file = s.write("p/sliced.yaml", SLICED);
    let file = file.to_str().unwrap();
    let out = s.run(&["run", file, "--only", "train"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no earlier run of `sliced` has a successful `ingest`"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(runs_of(&s, "train"), 0, "nothing ran");

    let out = s.run(&["run", file]);
    assert_eq!(out.status.code(), Some(0));
    let full = s.latest_run_id();

    let out = s.run(&["run", file, "--from", "train"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "--from train: running report, train; keeping ingest (run {full}); skipping 1 other step"
        )),
        "{stdout}"
    );
    let show = s.show(&s.latest_run_id());
    assert_eq!(show["run"]["status"], "succeeded");
    assert_eq!(
        step(&show, "ingest")["reason"],
        format!("kept from run {full}")
    );
    assert_eq!(step(&show, "lint")["status"], "skipped");
    assert_eq!(step(&show, "lint")["reason"], "not selected (--from train)");
    let counts = |s: &Scratch| ["ingest", "train", "report", "lint"].map(|n| runs_of(s, n));
    assert_eq!(counts(&s), [1, 2, 2, 1]);

    assert_eq!(
        s.run(&["run", file, "--until", "train"]).status.code(),
        Some(0)
    );
    assert_eq!(counts(&s), [2, 3, 2, 1]);
    assert_eq!(
        s.run(&["run", file, "--only", "lint,report"]).status.code(),
        Some(0)
    );
    assert_eq!(counts(&s), [2, 3, 3, 2], "report ran on the newest train");

    let out = s.run(&["run", file, "--from", "zz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`zz` is not a step of `sliced`"));
    let out = s.run(&["run", file, "--only", "lint", "--from", "train"]);
    assert_eq!(out.status.code(), Some(2), "--only and --from do not mix");
}
