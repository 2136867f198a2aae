//! Step caching end to end: a hit reuses an earlier success, each kind of change is a miss that
//! says why, `--no-cache` runs everything, a hit whose blobs are gone runs again, and an image
//! step's hit is only taken when the image's digest is the one it ran.

use serde_json::Value;
use sluice_tests::{step, text, Scratch};

const PIPELINE: &str = r#"name: cached
params: {lr: "0.1"}
defaults: {cache: true}
steps:
  prep:
    run: |
      echo ran >> ../prep.count
      mkdir $SLUICE_OUT/data
      echo "$PARAM_LR" > $SLUICE_OUT/data/lr.txt
      echo "rows=3" >> $SLUICE_OUTPUTS
      echo '{"loss": 0.5}' > $SLUICE_METRICS
    outputs: [data/]
    cache: {inputs: ['src/*.py']}
  train:
    depends: [prep]
    run: |
      echo ran >> ../train.count
      cat $SLUICE_IN/prep/data/lr.txt > $SLUICE_OUT/model
    outputs: [model]
  report:
    depends: [train]
    cache: false
    run: cat $SLUICE_IN/train/model
"#;

struct Fixture {
    s: Scratch,
    file: String,
}

impl Fixture {
    fn new() -> Fixture {
        let s = Scratch::new();
        s.write("work/src/code.py", "print(1)\n");
        let file = s.write("work/p.yaml", PIPELINE).display().to_string();
        Fixture { s, file }
    }

    fn run(&self, extra: &[&str]) -> Value {
        let mut args = vec!["run", self.file.as_str()];
        args.extend_from_slice(extra);
        let out = self.s.run(&args);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        self.s.show(&self.s.latest_run_id())
    }

    /// How often each step really ran (its script counts).
    fn ran(&self, step: &str) -> usize {
        std::fs::read_to_string(self.s.path().join(format!("{step}.count")))
            .map_or(0, |t| t.lines().count())
    }
}

fn cache(show: &Value, name: &str) -> Value {
    step(show, name)["cache"].clone()
}

fn misses(show: &Value, name: &str) -> Vec<String> {
    cache(show, name)["miss"]
        .as_array()
        .map(|m| m.iter().map(|r| r.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn a_hit_reuses_outputs_metrics_and_artifacts_and_each_change_says_why_it_missed() {
    let f = Fixture::new();
    let first = f.run(&[]);
    assert_eq!(misses(&first, "prep"), ["no earlier successful attempt"]);
    assert_eq!((f.ran("prep"), f.ran("train")), (1, 1));
    let first_id = first["run"]["id"].as_str().unwrap();

    let second = f.run(&[]);
    assert_eq!((f.ran("prep"), f.ran("train")), (1, 1), "nothing ran again");
    for name in ["prep", "train"] {
        assert_eq!(cache(&second, name)["hit_from"], first_id, "{name}");
        assert_eq!(
            step(&second, name)["artifacts"],
            step(&first, name)["artifacts"]
        );
    }
    assert_eq!(step(&second, "prep")["outputs"]["rows"], "3");
    assert_eq!(step(&second, "prep")["metrics"]["loss"], 0.5);
    // A step after a hit gets the reused outputs; one without cache runs every time.
    assert_eq!(step(&second, "report")["status"], "succeeded");
    assert!(cache(&second, "report").is_null());
    let shown = f.s.run(&["show", second["run"]["id"].as_str().unwrap()]);
    assert!(
        text(&shown.stdout).contains("cached"),
        "{}",
        text(&shown.stdout)
    );

    // A param: both steps miss (train because its input changed too).
    let by_param = f.run(&["-p", "lr=0.2"]);
    assert_eq!(misses(&by_param, "prep"), ["param lr changed"]);
    assert_eq!(
        misses(&by_param, "train"),
        ["input prep changed", "param lr changed"]
    );
    assert_eq!((f.ran("prep"), f.ran("train")), (2, 2));

    // The code the step reads: a file matched by cache.inputs.
    f.s.write("work/src/code.py", "print(2)\n");
    let by_file = f.run(&["-p", "lr=0.2"]);
    assert_eq!(misses(&by_file, "prep"), ["file src/code.py changed"]);
    // prep made the same bytes, so train's input did not change: train hits.
    assert!(
        cache(&by_file, "train")["hit_from"].is_string(),
        "{:#}",
        cache(&by_file, "train")
    );
    assert_eq!((f.ran("prep"), f.ran("train")), (3, 2));

    // The command itself.
    let edited = PIPELINE.replace(
        "echo ran >> ../train.count",
        "echo ran >> ../train.count; true",
    );
    f.s.write("work/p.yaml", &edited);
    let by_command = f.run(&["-p", "lr=0.2"]);
    assert_eq!(misses(&by_command, "train"), ["command changed"]);

    // --no-cache runs everything, and says so.
    let forced = f.run(&["-p", "lr=0.2", "--no-cache"]);
    assert_eq!(misses(&forced, "prep"), ["--no-cache"]);
    assert_eq!((f.ran("prep"), f.ran("train")), (4, 4));
}

#[test]
fn a_hit_whose_blobs_are_gone_runs_the_step_again() {
    let f = Fixture::new();
    let first = f.run(&[]);
    // Every blob of prep's folder removed behind the cache's back.
    let blobs = f.s.data_dir().join("artifacts/blobs");
    let folder = step(&first, "prep")["artifacts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(blobs.join(&folder[..2]).join(&folder)).unwrap();
    let second = f.run(&[]);
    assert_eq!(
        misses(&second, "prep"),
        ["the cached outputs are gone from the store"]
    );
    assert_eq!(f.ran("prep"), 2);
    assert_eq!(step(&second, "prep")["status"], "succeeded");
    // It stored them again: a third run hits.
    let third = f.run(&[]);
    assert!(cache(&third, "prep")["hit_from"].is_string());
}

#[test]
fn an_image_steps_hit_needs_the_digest_it_ran_and_a_moved_tag_is_a_miss() {
    if !sluice_tests::docker_ready() {
        return;
    }
    let s = Scratch::new();
    let tag = format!("sluice-cache-test:{}", std::process::id());
    let build = |label: &str| {
        let context = s.path().join(format!("ctx-{label}"));
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(
            context.join("Dockerfile"),
            format!("FROM {}\nLABEL variant={label}\n", sluice_tests::TEST_IMAGE),
        )
        .unwrap();
        let out = std::process::Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(&context)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    build("one");
    let file = s.write(
        "p.yaml",
        &format!("name: img\nsteps:\n  s:\n    image: {tag}\n    pull: never\n    cache: true\n    run: echo hi > $SLUICE_OUT/o\n    outputs: [o]\n"),
    );
    let file = file.to_str().unwrap();
    let go = || {
        let out = s.run(&["run", file]);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        s.show(&s.latest_run_id())
    };
    let first = go();
    let digest = step(&first, "s")["image_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let second = go();
    assert_eq!(step(&second, "s")["cache"]["hit_from"], first["run"]["id"]);
    // The same tag, another image: not reused.
    build("two");
    let third = go();
    let miss = step(&third, "s")["cache"]["miss"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        miss.starts_with("image digest changed"),
        "{:#}",
        step(&third, "s")
    );
    assert_ne!(step(&third, "s")["image_digest"].as_str().unwrap(), digest);
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &tag])
        .output();
}
