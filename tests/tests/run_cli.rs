//! `sluice run` end to end: the real binary, real processes, the real store.

use std::time::Duration;

use sluice_tests::{process_alive, step, text, wait_output, wait_until, Scratch};

fn run_ok(s: &Scratch, file: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["run", file];
    args.extend_from_slice(extra);
    let out = s.run(&args);
    assert!(
        out.status.success(),
        "run failed\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    s.show(&s.latest_run_id())
}

#[test]
fn params_reach_steps_as_variables_and_are_never_spliced_into_shell_text() {
    let s = Scratch::new();
    let file = s.path().join("p.yaml");
    s.write(
        "p.yaml",
        r#"name: params
params:
  greeting: hello
  count: 3
steps:
  echo:
    run: printf '%s|%s' "$PARAM_GREETING" "$PARAM_COUNT" > "$SLUICE_OUT/said"
    outputs: [said]
"#,
    );
    let hostile = "$(touch pwned); `touch pwned2`";
    let show = run_ok(
        &s,
        file.to_str().unwrap(),
        &["-p", &format!("greeting={hostile}")],
    );
    assert_eq!(show["run"]["status"], "succeeded");
    let dir = step(&show, "echo")["attempts"][0]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    let said = std::fs::read_to_string(format!("{dir}/step/out/said")).unwrap();
    assert_eq!(said, format!("{hostile}|3"));
    assert!(!s.path().join("pwned").exists() && !s.path().join("pwned2").exists());
}

#[test]
fn bad_params_and_bad_files_exit_2_before_anything_runs() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        "name: typed\nparams: {n: 1}\nsteps:\n  a: {run: 'touch ran'}\n",
    );
    let file = file.to_str().unwrap();
    let out = s.run(&["run", file, "-p", "n=many"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("param `n`: expected an integer, got `many`"),
        "{}",
        text(&out.stderr)
    );
    let out = s.run(&["run", file, "-p", "m=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown param `m`"));
    let bad = s.write(
        "bad.yaml",
        "name: bad\nsteps:\n  a: {run: x, depends: [b]}\n",
    );
    let out = s.run(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.yaml:3:"),
        "{}",
        text(&out.stderr)
    );
    assert!(!s.path().join("ran").exists());
}

#[test]
fn a_run_past_its_timeout_is_stopped_and_fails() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        "name: slow\ntimeout: 2s\nsteps:\n  quick: {run: 'true'}\n  long: {run: 'sleep 60', depends: [quick]}\n  after: {run: 'true', depends: [long]}\n",
    );
    let started = std::time::Instant::now();
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the step was not stopped"
    );
    let show = s.show(&s.latest_run_id());
    assert_eq!(show["run"]["status"], "failed");
    assert_eq!(step(&show, "quick")["status"], "succeeded");
    assert_eq!(step(&show, "long")["status"], "cancelled");
    assert_eq!(
        step(&show, "after")["reason"],
        "the run's timeout (2s) passed"
    );
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        "name: plan\nparams: {n: 1}\nsteps:\n  b: {run: 'touch ran-b', depends: [a]}\n  a: {run: 'touch ran-a', outputs: [x.csv]}\n",
    );
    let file = file.to_str().unwrap();
    let out = s.run(&["run", file, "--dry-run", "-p", "n=3"]);
    let plan = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{plan}{}", text(&out.stderr));
    let a = plan.find("1. a  run: touch ran-a").expect(&plan);
    let b = plan.find("2. b  run: touch ran-b").expect(&plan);
    assert!(a < b, "{plan}");
    assert!(plan.contains("n = \"3\"  (from -p)"), "{plan}");
    assert!(plan.contains("outputs: x.csv"), "{plan}");
    assert!(!s.path().join("ran-a").exists() && !s.path().join("ran-b").exists());
    assert!(!s.data_dir().exists(), "the data dir was created");
    let out = s.run(&["run", file, "--dry-run", "-p", "n=many"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad param fails the dry run too"
    );
    // With a selection, the plan says which steps keep an earlier run's results.
    let out = s.run(&["run", file, "--dry-run", "--from", "b"]);
    let plan = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{plan}");
    assert!(
        plan.contains(
            "1. a  not run: kept from the newest earlier run in which it succeeded (--from b)"
        ),
        "{plan}"
    );
    assert!(plan.contains("2. b  run: touch ran-b"), "{plan}");
    assert!(!s.data_dir().exists(), "the data dir was created");
}

#[test]
fn a_failed_step_skips_its_downstream_and_fails_the_run() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: failing
steps:
  ok: {run: "true"}
  broken: {run: "echo boom >&2; exit 3", depends: [ok]}
  after: {run: "touch after", depends: [broken]}
  beside: {run: "true", depends: [ok]}
"#,
    );
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("boom"),
        "the failing step's stderr tail is shown"
    );
    // Off a terminal each step says when it starts, and the log hint names the data dir (the
    // scratch's is not the default), so it works when pasted.
    let started = stdout.find("▸ broken").expect(&stdout);
    let failed = stdout.find("✗ broken").expect(&stdout);
    assert!(started < failed, "{stdout}");
    let run = s.latest_run_id();
    let data_dir = s.data_dir().canonicalize().unwrap();
    assert!(
        stdout.contains(&format!(
            "full log: sluice logs {run} broken --data-dir {}",
            data_dir.display()
        )),
        "{stdout}"
    );
    let show = s.show(&s.latest_run_id());
    assert_eq!(show["run"]["status"], "failed");
    assert_eq!(step(&show, "broken")["status"], "failed");
    assert_eq!(step(&show, "broken")["attempts"][0]["exit_code"], 3);
    assert_eq!(step(&show, "after")["status"], "skipped");
    assert_eq!(
        step(&show, "after")["reason"],
        "upstream step `broken` failed"
    );
    assert_eq!(step(&show, "beside")["status"], "succeeded");
    assert!(!s.path().join("after").exists());
}

#[test]
fn retries_follow_the_policy_and_keep_every_attempt() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: flaky
steps:
  flaky:
    # Fails twice, then succeeds: counts its attempts in a file.
    run: echo x >> attempts; [ "$(wc -l < attempts)" -ge 3 ]
    retry: { limit: 3, backoff: exponential, delay: 10ms }
  picky:
    run: exit 4
    retry: { limit: 3, delay: 10ms, on_exit_codes: [137] }
  killed:
    # SIGKILL counts as exit code 137, as a shell reports it: retried, then succeeds.
    run: echo x >> killed; [ "$(wc -l < killed)" -ge 2 ] || kill -9 $$
    retry: { limit: 2, delay: 10ms, on_exit_codes: [137] }
"#,
    );
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let show = s.show(&s.latest_run_id());
    let flaky = step(&show, "flaky");
    assert_eq!(flaky["status"], "succeeded");
    let attempts = flaky["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["status"], "failed");
    assert_eq!(attempts[2]["status"], "succeeded");
    let picky = step(&show, "picky");
    assert_eq!(picky["status"], "failed");
    assert_eq!(
        picky["attempts"].as_array().unwrap().len(),
        1,
        "exit 4 is not in on_exit_codes"
    );
    let killed = step(&show, "killed");
    assert_eq!(killed["status"], "succeeded");
    assert_eq!(killed["attempts"][0]["signal"], 9);
}

#[test]
fn a_timeout_kills_the_step_and_everything_it_started() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: slow
steps:
  slow:
    run: sleep 300 & echo $! > bg.pid; sleep 300
    timeout: 500ms
"#,
    );
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let show = s.show(&s.latest_run_id());
    let attempt = &step(&show, "slow")["attempts"][0];
    assert_eq!(attempt["outcome"], "timed_out");
    assert!(attempt["message"]
        .as_str()
        .unwrap()
        .contains("timed out after"));
    let pid: i32 = std::fs::read_to_string(s.path().join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        "the background sleep to die",
        Duration::from_secs(10),
        || !process_alive(pid),
    );
}

#[test]
fn outputs_metrics_and_conditions_flow_between_steps() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: flow
params: {threshold: 0.5}
steps:
  measure:
    run: |
      echo "score=0.7" >> "$SLUICE_OUTPUTS"
      echo '{"loss": 0.25, "epochs": 3}' > "$SLUICE_METRICS"
      echo model > "$SLUICE_OUT/model.bin"
    outputs: [model.bin]
  high:
    depends: [measure]
    when: steps.measure.outputs.score > 0.5
    run: cat "$SLUICE_IN/measure/model.bin" > "$SLUICE_OUT/copy"
  low:
    depends: [measure]
    when: steps.measure.outputs.score <= 0.5
    run: "true"
  after_low:
    depends: [low]
    run: "true"
"#,
    );
    let show = run_ok(&s, file.to_str().unwrap(), &[]);
    assert_eq!(show["run"]["status"], "succeeded");
    let measure = step(&show, "measure");
    assert_eq!(measure["outputs"]["score"], "0.7");
    assert_eq!(measure["metrics"]["loss"], 0.25);
    assert_eq!(step(&show, "high")["status"], "succeeded");
    let dir = step(&show, "high")["attempts"][0]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/step/out/copy")).unwrap(),
        "model\n"
    );
    assert_eq!(step(&show, "low")["status"], "skipped");
    assert!(step(&show, "low")["reason"]
        .as_str()
        .unwrap()
        .contains("is false (value: \"0.7\")"));
    assert_eq!(step(&show, "after_low")["status"], "skipped");
}

#[test]
fn secrets_are_forwarded_and_masked_in_stored_logs() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: secret
steps:
  use:
    secrets: [API_TOKEN]
    run: |
      echo "token is $API_TOKEN"; [ "$API_TOKEN" = "s3cr3t-value" ]
      echo "seen=$API_TOKEN" >> "$SLUICE_OUTPUTS"
      printf '{"note": "%s"}' "$API_TOKEN" > "$SLUICE_METRICS"
  leak:
    run: 'echo "not forwarded: [$API_TOKEN]"' 
"#,
    );
    let out = s
        .sluice()
        .args(["run", file.to_str().unwrap()])
        .env("API_TOKEN", "s3cr3t-value")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = s.latest_run_id();
    let show = s.show(&run_id);
    assert_eq!(step(&show, "use")["outputs"]["seen"], "***");
    assert_eq!(step(&show, "use")["metrics"]["note"], "***");
    let logs = s.run(&["logs", &run_id, "use"]);
    assert_eq!(text(&logs.stdout), "token is ***\n");
    let logs = s.run(&["logs", &run_id, "leak"]);
    assert_eq!(
        text(&logs.stdout),
        "not forwarded: []\n",
        "undeclared variables are not inherited"
    );
}

#[test]
fn exec_form_passes_arguments_verbatim() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: exec
steps:
  args:
    command: [printf, "%s\n", "$HOME; echo pwned", "two words"]
"#,
    );
    run_ok(&s, file.to_str().unwrap(), &[]);
    let logs = s.run(&["logs", &s.latest_run_id(), "args"]);
    assert_eq!(text(&logs.stdout), "$HOME; echo pwned\ntwo words\n");
}

#[test]
fn parallelism_caps_how_many_steps_run_at_once() {
    let s = Scratch::new();
    let mut yaml = String::from("name: wide\nparallelism: 2\nsteps:\n");
    for i in 0..6 {
        yaml.push_str(&format!(
            "  s{i}:\n    run: mkdir -p running; touch running/$SLUICE_STEP; ls running | wc -l > \"$SLUICE_OUT/seen\"; sleep 0.2; rm running/$SLUICE_STEP\n"
        ));
    }
    let file = s.write("p.yaml", &yaml);
    let show = run_ok(&s, file.to_str().unwrap(), &[]);
    for i in 0..6 {
        let dir = step(&show, &format!("s{i}"))["attempts"][0]["dir"]
            .as_str()
            .unwrap()
            .to_string();
        let seen: usize = std::fs::read_to_string(format!("{dir}/step/out/seen"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(seen <= 2, "step s{i} saw {seen} steps running at once");
    }
}

#[test]
fn ctrl_c_cancels_the_run_and_kills_its_steps() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: long
steps:
  long:
    run: echo $$ > long.pid; exec sleep 300
  never: {run: "touch never", depends: [long]}
"#,
    );
    let (child, step_pid) = s.start_run_until_pid(&file, "long.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(!process_alive(step_pid), "the step's process was killed");
    let show = s.show(&s.latest_run_id());
    assert_eq!(show["run"]["status"], "cancelled");
    assert_eq!(step(&show, "long")["status"], "cancelled");
    assert_eq!(step(&show, "never")["status"], "cancelled");
    assert!(!s.path().join("never").exists());
}

#[test]
fn kill_9_loses_nothing_and_resume_keeps_what_succeeded() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: resumable
steps:
  first:
    run: echo ran >> first.count
  second:
    depends: [first]
    run: |
      if [ -f go ]; then echo resumed; exit 0; fi
      echo $$ > second.pid
      exec sleep 300
  third:
    depends: [second]
    run: echo ran >> third.count
"#,
    );
    let (mut child, orphan) = s.start_run_until_pid(&file, "second.pid");
    child.kill().unwrap(); // SIGKILL: no chance to clean up.
    child.wait().unwrap();
    // The killed runner could not stop its step: it is still running.
    assert!(process_alive(orphan), "the step outlived its runner");

    let run_id = s.latest_run_id();
    let show = s.show(&run_id);
    assert_eq!(
        show["run"]["status"], "running",
        "the store holds the run as it was"
    );
    assert_eq!(step(&show, "first")["status"], "succeeded");
    // A start is committed with the next change or within 100 ms, so either is a faithful record.
    let second = step(&show, "second")["status"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        second == "running" || second == "queued",
        "second is {second}"
    );

    std::fs::write(s.path().join("go"), "").unwrap();
    let out = s.run(&["run", "--resume", &run_id]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr)
            .contains("stopped step `second` (attempt 1), left running by the runner that died"),
        "{}",
        text(&out.stderr)
    );
    wait_until("the leftover step to die", Duration::from_secs(10), || {
        !process_alive(orphan)
    });
    let show = s.show(&run_id);
    assert_eq!(show["run"]["status"], "succeeded");
    let second = step(&show, "second");
    assert_eq!(second["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(
        second["attempts"][0]["message"],
        "the runner stopped before this attempt finished"
    );
    assert_eq!(
        std::fs::read_to_string(s.path().join("first.count")).unwrap(),
        "ran\n",
        "first ran once"
    );
    assert_eq!(
        std::fs::read_to_string(s.path().join("third.count")).unwrap(),
        "ran\n"
    );
    let kinds: Vec<&str> = show["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"run.resumed") && kinds.last() == Some(&"run.succeeded"),
        "{kinds:?}"
    );

    let again = s.run(&["run", "--resume", &run_id]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "a finished run cannot be resumed"
    );
}

#[test]
fn a_step_printing_a_lot_streams_to_disk() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        "name: loud\nsteps:\n  loud: {run: 'head -c 50000000 /dev/zero | tr \"\\0\" x'}\n",
    );
    run_ok(&s, file.to_str().unwrap(), &[]);
    let show = s.show(&s.latest_run_id());
    let dir = step(&show, "loud")["attempts"][0]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    let len = std::fs::metadata(format!("{dir}/stdout.log"))
        .unwrap()
        .len();
    assert_eq!(len, 50_000_000);
}

#[test]
fn runs_lists_newest_first_and_show_accepts_an_id_prefix() {
    let s = Scratch::new();
    let file = s.write("p.yaml", "name: twice\nsteps:\n  a: {run: 'true'}\n");
    run_ok(&s, file.to_str().unwrap(), &[]);
    let first = s.latest_run_id();
    run_ok(&s, file.to_str().unwrap(), &[]);
    let second = s.latest_run_id();
    assert_ne!(first, second);
    assert!(second > first, "run ids sort by time");
    let out = s.run(&["runs"]);
    let listing = text(&out.stdout);
    let (at_first, at_second) = (
        listing.find(&first).unwrap(),
        listing.find(&second).unwrap(),
    );
    assert!(at_second < at_first, "newest first:\n{listing}");
    let out = s.run(&["show", &second[..20]]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(&second));
}

#[test]
fn an_attempt_interrupted_by_a_dead_runner_does_not_use_up_the_retry_budget() {
    let s = Scratch::new();
    let file = s.write(
        "p.yaml",
        r#"name: budget
steps:
  a:
    run: |
      if [ ! -f started ]; then touch started; echo $$ > a.pid; exec sleep 300; fi
      echo x >> tries; exit 3
    retry: {limit: 1, delay: 10ms}
"#,
    );
    let (mut child, _) = s.start_run_until_pid(&file, "a.pid");
    child.kill().unwrap();
    child.wait().unwrap();
    let run_id = s.latest_run_id();
    let out = s.run(&["run", "--resume", &run_id]);
    assert_eq!(out.status.code(), Some(1));
    let show = s.show(&run_id);
    let attempts = step(&show, "a")["attempts"].as_array().unwrap().clone();
    assert_eq!(
        attempts.len(),
        3,
        "interrupted, then the first try and its one retry"
    );
    assert_eq!(
        std::fs::read_to_string(s.path().join("tries")).unwrap(),
        "x\nx\n"
    );
}

#[test]
fn a_reader_that_stops_early_ends_a_printing_command_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let s = Scratch::new();
    let mut yaml = String::from("name: wide\nsteps:\n");
    for i in 0..5000 {
        yaml.push_str(&format!("  step_number_{i}: {{run: 'true'}}\n"));
    }
    let file = s.write("wide.yaml", &yaml);
    // `sluice graph wide.yaml | head -c 10`: far more than a pipe holds, and a reader that leaves.
    let mut child = s
        .sluice()
        .args(["graph", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// The signal a process gets for writing to a pipe nobody reads.
const SIGPIPE: i32 = 13;
