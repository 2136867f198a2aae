//! Artifacts end to end with the real binary: the CLI over the data dir, gc, and two workers
//! that share no folder passing a folder through a real S3 server (moto).

use std::time::Duration;

use serde_json::Value;
use sluice_tests::cluster::Cluster;
use sluice_tests::s3::S3Server;
use sluice_tests::{step, text, Scratch};

const MAKE_AND_USE: &str = r#"name: data
params: {rows: "2"}
steps:
  make:
    run: |
      mkdir -p $SLUICE_OUT/set/deep
      seq 1 $PARAM_ROWS > $SLUICE_OUT/set/rows.txt
      echo constant > $SLUICE_OUT/set/deep/same.txt
      printf '#!/bin/sh\necho tool\n' > $SLUICE_OUT/set/tool.sh && chmod 755 $SLUICE_OUT/set/tool.sh
      echo "model for $PARAM_ROWS rows" > $SLUICE_OUT/model.bin
    outputs: [set/, model.bin]
  use:
    depends: [make]
    run: |
      cat $SLUICE_IN/make/set/rows.txt > $SLUICE_OUT/report.txt
      cat $SLUICE_IN/make/model.bin >> $SLUICE_OUT/report.txt
    outputs: [report.txt]
"#;

fn json(out: std::process::Output) -> Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn artifact<'a>(show: &'a Value, step_name: &str, output: &str) -> &'a Value {
    step(show, step_name)["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == output))
        .unwrap_or_else(|| panic!("no artifact {output} of {step_name}: {show:#}"))
}

fn run(s: &Scratch, file: &str, rows: &str) -> Value {
    let out = s.run(&["run", file, "-p", &format!("rows={rows}")]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    s.show(&s.latest_run_id())
}

#[test]
fn the_cli_lists_shows_gets_diffs_and_traces_artifacts() {
    let s = Scratch::new();
    let file = s.write("p.yaml", MAKE_AND_USE);
    let file = file.to_str().unwrap();
    let first = run(&s, file, "2");
    let second = run(&s, file, "3");
    let (set1, set2) = (
        artifact(&first, "make", "set/"),
        artifact(&second, "make", "set/"),
    );
    assert_eq!(set1["kind"], "dir");
    assert_eq!(set1["files"], 3);
    assert_ne!(set1["id"], set2["id"], "different rows, different folder");

    let listed = json(s.run(&["artifacts", "ls", "--step", "make", "--json"]));
    let ids: Vec<&str> = listed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        4,
        "two outputs of make in each of two runs: {listed:#}"
    );
    assert_eq!(ids[0].len(), 64);

    // A prefix is enough; show names the producer, its params and command, and the files.
    let id2 = set2["id"].as_str().unwrap();
    let shown = json(s.run(&["artifacts", "show", &id2[..10], "--json"]));
    assert_eq!(shown["id"], id2);
    let producer = &shown["producers"][0];
    assert_eq!(producer["step"], "make");
    assert_eq!(producer["run_id"], second["run"]["id"]);
    assert_eq!(producer["params"]["rows"], "3");
    assert!(producer["command"].as_str().unwrap().contains("seq 1"));
    let paths: Vec<&str> = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["deep/same.txt", "rows.txt", "tool.sh"]);

    let diff = json(s.run(&[
        "artifacts",
        "diff",
        set1["id"].as_str().unwrap(),
        id2,
        "--json",
    ]));
    let changes = diff["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "only rows.txt changed: {diff:#}");
    assert_eq!(changes[0]["change"], "changed");
    assert_eq!(changes[0]["path"], "rows.txt");
    assert_eq!(
        (
            changes[0]["old_size"].as_u64(),
            changes[0]["new_size"].as_u64()
        ),
        (Some(4), Some(6))
    );

    // The report's lineage goes back through make's two outputs.
    let report = artifact(&second, "use", "report.txt")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let lineage = json(s.run(&["artifacts", "lineage", &report, "--json"]));
    let nodes = lineage["lineage"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{lineage:#}");
    assert_eq!(nodes[0]["producer"]["step"], "use");
    let inputs: Vec<&str> = nodes[0]["producer"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["set/", "model.bin"]);
    assert!(nodes[1..]
        .iter()
        .all(|n| n["producer"]["step"] == "make" && n["depth"] == 1));

    // get writes the folder, verified, and refuses to overwrite.
    let dest = s.path().join("got");
    let out = s.run(&["artifacts", "get", id2, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dest.join("rows.txt")).unwrap(),
        "1\n2\n3\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("deep/same.txt")).unwrap(),
        "constant\n"
    );
    assert!(!s
        .run(&["artifacts", "get", id2, dest.to_str().unwrap()])
        .status
        .success());
    let tool = std::process::Command::new(dest.join("tool.sh"))
        .output()
        .unwrap();
    assert_eq!(
        text(&tool.stdout),
        "tool\n",
        "the executable stays executable"
    );
    // What was written hashes to the id it came from (the same files, the same modes).
    let hashed = json(s.run(&["artifacts", "hash", dest.to_str().unwrap(), "--json"]));
    assert_eq!(hashed["id"], id2, "{hashed:#}");
    let missing = s.run(&["artifacts", "show", "abcdef"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("no artifact `abcdef`"));

    // show RUN lists each step's output ids.
    let shown = s.run(&["show", second["run"]["id"].as_str().unwrap()]);
    assert!(
        text(&shown.stdout).contains(&format!("artifact: {}  set/", &id2[..12])),
        "{}",
        text(&shown.stdout)
    );
}

#[test]
fn gc_removes_old_runs_and_the_blobs_only_they_used() {
    let s = Scratch::new();
    let file = s.write("p.yaml", MAKE_AND_USE);
    let file = file.to_str().unwrap();
    let old = run(&s, file, "5");
    let kept = run(&s, file, "2");
    let old_set = artifact(&old, "make", "set/")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let kept_set = artifact(&kept, "make", "set/")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let blobs = || -> usize { walk(&s.data_dir().join("artifacts/blobs")) };
    let before = blobs();
    // A dry run removes nothing and says what it would.
    let dry = json(s.run(&[
        "gc",
        "--older-than",
        "0s",
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(dry["runs"].as_array().unwrap().len(), 1);
    assert_eq!(blobs(), before);
    let report = json(s.run(&["gc", "--older-than", "0s", "--keep-last", "1", "--json"]));
    assert_eq!(report["runs"][0], old["run"]["id"]);
    // The old run's set folder, rows file, model and report are its own; deep/same.txt is shared.
    assert_eq!(report["blobs"], 4, "{report:#}");
    assert_eq!(blobs(), before - 4);
    assert!(report["bytes"].as_u64().unwrap() > 0);
    assert!(!s
        .run(&["show", old["run"]["id"].as_str().unwrap()])
        .status
        .success());
    assert!(!s
        .data_dir()
        .join("runs")
        .join(old["run"]["id"].as_str().unwrap())
        .exists());
    assert_eq!(
        s.run(&["artifacts", "show", &old_set]).status.code(),
        Some(2)
    );
    let dest = s.path().join("kept");
    let out = s.run(&["artifacts", "get", &kept_set, dest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the kept run's artifacts are whole: {}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("deep/same.txt")).unwrap(),
        "constant\n"
    );
    // Nothing old is left to take.
    let again = json(s.run(&["gc", "--older-than", "0s", "--keep-last", "1", "--json"]));
    assert_eq!(
        (
            again["runs"].as_array().unwrap().len(),
            again["blobs"].as_u64()
        ),
        (0, Some(0))
    );
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn workers_that_share_no_folder_pass_a_folder_through_s3_byte_for_byte() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let Some(s3) = S3Server::start() else { return };
    cluster.artifacts = s3.url("team-a");
    cluster.store_env = s3.env();
    cluster.pipeline(
        "split",
        r#"name: split
steps:
  make:
    queue: cpu
    run: |
      mkdir -p $SLUICE_OUT/features/part
      head -c 3000000 /dev/urandom > $SLUICE_OUT/features/part/big.bin
      echo small > $SLUICE_OUT/features/small.txt
      cd $SLUICE_OUT/features && sha256sum part/big.bin small.txt > ../sums.txt
    outputs: [features/, sums.txt]
  check:
    queue: gpu
    depends: [make]
    run: |
      cd $SLUICE_IN/make/features && sha256sum -c ../sums.txt
      echo "$(hostname) checked" > $SLUICE_OUT/ok.txt
    outputs: [ok.txt]
"#,
    );
    cluster.start_scheduler();
    let _cpu = cluster.start_worker_with("cpu-box", 1, &["--queues", "cpu"]);
    let _gpu = cluster.start_worker_with("gpu-box", 1, &["--queues", "gpu"]);
    let run = cluster.trigger("split");
    let show = cluster.wait_run(&run, Duration::from_secs(120));
    assert_eq!(show["run"]["status"], "succeeded", "{show:#}");
    assert_eq!(step(&show, "make")["attempts"][0]["worker"], "cpu-box");
    assert_eq!(step(&show, "check")["attempts"][0]["worker"], "gpu-box");
    // Each worker kept its files in its own data dir; the GPU box never had make's folder.
    assert!(cluster
        .worker_attempt_dir("cpu-box", &run, "make", 1)
        .join("step/out/features/part/big.bin")
        .is_file());
    assert!(!cluster
        .worker_attempt_dir("gpu-box", &run, "make", 1)
        .exists());
    let fetched = cluster
        .worker_attempt_dir("gpu-box", &run, "check", 1)
        .join("in/make/features/part/big.bin");
    let made = cluster
        .worker_attempt_dir("cpu-box", &run, "make", 1)
        .join("step/out/features/part/big.bin");
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&made).unwrap()
    );
    // Nothing went through the scheduler's data dir: the blobs are in the bucket only.
    assert!(!cluster.scratch.data_dir().join("artifacts/blobs").exists());
    // And the scheduler serves them: `artifacts get --server` writes the same bytes.
    let features = artifact(&show, "make", "features/")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dest = cluster.scratch.path().join("got");
    let out = cluster.client(&["artifacts", "get", &features, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(dest.join("part/big.bin")).unwrap(),
        std::fs::read(&made).unwrap()
    );
    let listed = cluster.client(&["artifacts", "ls", "--pipeline", "split", "--json"]);
    let listed = json(listed);
    assert_eq!(listed["artifacts"].as_array().unwrap().len(), 3);
}

#[test]
fn kill_9_during_an_upload_leaves_no_partial_blob_and_the_resumed_run_stores_it_whole() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: upload
steps:
  make:
    run: head -c 600000000 /dev/zero > $SLUICE_OUT/big
    outputs: [big]
  use:
    depends: [make]
    run: test "$(wc -c < $SLUICE_IN/make/big)" -eq 600000000
"#,
    );
    let blobs = s.data_dir().join("artifacts/blobs");
    // (temporary files, finished blobs) in the store now.
    let scan = || -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
        let mut found = (Vec::new(), Vec::new());
        for folder in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
            for entry in std::fs::read_dir(folder.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let temporary = entry.file_name().to_string_lossy().starts_with('.');
                if temporary {
                    &mut found.0
                } else {
                    &mut found.1
                }
                .push(entry.path());
            }
        }
        found
    };
    let mut child = s
        .sluice()
        .args(["run", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sluice_tests::wait_until("the upload to start", Duration::from_secs(60), || {
        !scan().0.is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever is visible under an id is whole: nothing half-written has a blob's name.
    for blob in scan().1 {
        let bytes = std::fs::read(&blob).unwrap();
        let name = blob.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            blake3::hash(&bytes).to_hex().to_string(),
            name,
            "{}",
            blob.display()
        );
    }
    let run = s.latest_run_id();
    let out = s.run(&["run", "--resume", &run]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let show = s.show(&run);
    assert_eq!(step(&show, "use")["status"], "succeeded");
    let id = artifact(&show, "make", "big")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = std::fs::read(blobs.join(&id[..2]).join(&id)).unwrap();
    assert_eq!(stored.len(), 600_000_000);
    assert_eq!(blake3::hash(&stored).to_hex().to_string(), id);
}
