//! Steps in containers, end to end: the real binary against the real Docker engine, with a
//! busybox image built locally (no registry is reachable here).

use std::time::Duration;

use sluice_tests::{
    containers_of_run, docker_ready, step, text, wait_output, wait_until, Scratch, TEST_IMAGE,
};

/// Starts `sluice run FILE` in the background and waits until its first container is up;
/// returns the runner and the run's id.
fn start_run_until_container(s: &Scratch, file: &str) -> (std::process::Child, String) {
    let child = s
        .sluice()
        .args(["run", file])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runs = s.data_dir().join("runs");
    let mut run_id = String::new();
    wait_until("the container to start", Duration::from_secs(60), || {
        let Some(entry) = std::fs::read_dir(&runs).ok().and_then(|mut d| d.next()) else {
            return false;
        };
        run_id = entry.unwrap().file_name().to_string_lossy().into_owned();
        !containers_of_run(&run_id).is_empty()
    });
    (child, run_id)
}

/// A pipeline file whose `IMAGE` placeholders name the test image.
fn pipeline(s: &Scratch, yaml: &str) -> String {
    let path = s.write("p.yaml", &yaml.replace("IMAGE", TEST_IMAGE));
    path.display().to_string()
}

#[test]
fn a_mixed_pipeline_passes_params_env_and_files_between_processes_and_containers() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        r#"name: mixed
params: {greeting: hello}
env: {SHARED: from-pipeline}
defaults: {pull: never}
steps:
  local_first:
    run: echo local > "$SLUICE_OUT/seed.txt"
    outputs: [seed.txt]
  in_container:
    depends: [local_first]
    image: IMAGE
    env: {OWN: step-env}
    run: |
      echo "$PARAM_GREETING $SHARED $OWN"
      echo "to stderr" >&2
      cat "$SLUICE_IN/local_first/seed.txt" > "$SLUICE_OUT/copied.txt"
      echo "container" >> "$SLUICE_OUT/copied.txt"
      echo "rows=3" >> "$SLUICE_OUTPUTS"
      echo '{"loss": 0.5}' > "$SLUICE_METRICS"
    outputs: [copied.txt]
  local_last:
    depends: [in_container]
    run: cat "$SLUICE_IN/in_container/copied.txt"
  exec_form:
    depends: [in_container]
    image: IMAGE
    command: [sh, -c, 'echo "$1"', ignored, "$HOME; not expanded"]
  failing:
    depends: [in_container]
    image: IMAGE
    run: exit 7
"#,
    );
    let out = s.run(&["run", &file]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run_id = s.latest_run_id();
    let show = s.show(&run_id);
    let container = step(&show, "in_container");
    assert_eq!(container["status"], "succeeded");
    assert_eq!(container["outputs"]["rows"], "3");
    assert_eq!(container["metrics"]["loss"], 0.5);
    let logs = s.run(&["logs", &run_id, "in_container"]);
    assert_eq!(text(&logs.stdout), "hello from-pipeline step-env\n");
    assert_eq!(text(&logs.stderr), "to stderr\n", "stderr is kept apart");
    let logs = s.run(&["logs", &run_id, "local_last"]);
    assert_eq!(text(&logs.stdout), "local\ncontainer\n");
    let logs = s.run(&["logs", &run_id, "exec_form"]);
    assert_eq!(text(&logs.stdout), "$HOME; not expanded\n");
    let failing = step(&show, "failing");
    assert_eq!(failing["status"], "failed");
    assert_eq!(failing["attempts"][0]["exit_code"], 7);
    assert!(
        containers_of_run(&run_id).is_empty(),
        "containers are removed after their step"
    );
}

#[test]
fn a_timeout_stops_the_container_and_removes_it() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: slow\nsteps:\n  slow: {image: IMAGE, pull: never, run: 'sleep 300', timeout: 1s}\n",
    );
    let out = s.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(1));
    let run_id = s.latest_run_id();
    let show = s.show(&run_id);
    let attempt = &step(&show, "slow")["attempts"][0];
    assert_eq!(attempt["outcome"], "timed_out");
    assert!(containers_of_run(&run_id).is_empty());
}

#[test]
fn running_out_of_memory_is_reported_as_such() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        r#"name: hungry
steps:
  hungry:
    image: IMAGE
    pull: never
    resources: {memory: 16Mi}
    run: 'x=$(head -c 200000000 /dev/zero | tr "\0" x); echo ${#x}'
"#,
    );
    let out = s.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(1));
    let show = s.show(&s.latest_run_id());
    let attempt = &step(&show, "hungry")["attempts"][0];
    assert_eq!(attempt["status"], "failed");
    let message = attempt["message"].as_str().unwrap_or_default();
    assert!(message.contains("out of memory (limit 16Mi)"), "{attempt}");
}

#[test]
fn secrets_reach_the_container_and_are_masked_in_its_logs() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: secret\nsteps:\n  use: {image: IMAGE, pull: never, secrets: [TOKEN], run: 'echo \"token=$TOKEN\"'}\n",
    );
    let out = s
        .sluice()
        .args(["run", &file])
        .env("TOKEN", "hunter2-value")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logs = s.run(&["logs", &s.latest_run_id(), "use"]);
    assert_eq!(text(&logs.stdout), "token=***\n");
}

#[test]
fn a_container_can_run_as_another_user_and_still_write_its_outputs() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: nobody\nsteps:\n  write: {image: IMAGE, pull: never, user: '65534:65534', run: 'id -u > $SLUICE_OUT/uid', outputs: [uid]}\n",
    );
    let out = s.run(&["run", &file]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let dir = step(&s.show(&s.latest_run_id()), "write")["attempts"][0]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/step/out/uid")).unwrap(),
        "65534\n"
    );
    // Its folder is its own, and nobody else's to write.
    use std::os::unix::fs::MetadataExt;
    for folder in ["step", "step/out"] {
        let meta = std::fs::metadata(format!("{dir}/{folder}")).unwrap();
        assert_eq!(meta.uid(), 65534, "{folder}");
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{folder} is writable only by its owner"
        );
    }
}

#[test]
fn a_container_cannot_reach_its_logs_or_replace_them() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: swap\nsteps:\n  sneaky: {image: IMAGE, pull: never, run: 'echo before; ln -sf /etc/shadow $SLUICE_OUT/../../stdout.log 2>/dev/null || echo refused; echo after'}\n",
    );
    let out = s.run(&["run", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The logs are outside what the container sees: a link made where they would be is made
    // in the container's own file system, and the log Sluice keeps is whole.
    let logs = s.run(&["logs", &s.latest_run_id(), "sneaky"]);
    let log = text(&logs.stdout);
    assert!(
        log == "before\nafter\n" || log == "before\nrefused\nafter\n",
        "{log}"
    );
}

#[test]
fn a_missing_image_fails_the_step_clearly_instead_of_hanging() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        r#"name: missing
steps:
  never_pulled: {image: "sluice-no-such-image:1", pull: never, run: "true"}
  unreachable: {image: "registry.invalid/team/no-such-image:1", run: "true"}
"#,
    );
    let out = s.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(1));
    let show = s.show(&s.latest_run_id());
    let never = &step(&show, "never_pulled")["attempts"][0];
    assert_eq!(never["outcome"], "error");
    assert!(
        never["message"]
            .as_str()
            .unwrap()
            .contains("is not on this worker and the step says `pull: never`"),
        "{never}"
    );
    let unreachable = &step(&show, "unreachable")["attempts"][0];
    assert_eq!(unreachable["outcome"], "error");
    assert!(
        unreachable["message"]
            .as_str()
            .unwrap()
            .contains("cannot pull image `registry.invalid/team/no-such-image:1`"),
        "{unreachable}"
    );
}

#[test]
fn a_gpu_step_fails_fast_on_a_docker_without_the_nvidia_runtime() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: gpu\nsteps:\n  train: {image: IMAGE, pull: never, run: nvidia-smi, resources: {gpu: 1}}\n",
    );
    let out = s.run(&["run", &file]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "GPU steps need --gpus, containers too"
    );
    let out = s.run(&["run", &file, "--gpus", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let show = s.show(&s.latest_run_id());
    let attempt = &step(&show, "train")["attempts"][0];
    assert!(
        attempt["message"]
            .as_str()
            .unwrap()
            .contains("no NVIDIA runtime"),
        "{attempt}"
    );
}

#[test]
fn ctrl_c_stops_a_running_container() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: cancel\nsteps:\n  long: {image: IMAGE, pull: never, run: 'sleep 300'}\n",
    );
    let (child, run_id) = start_run_until_container(&s, &file);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(step(&s.show(&run_id), "long")["status"], "cancelled");
    assert!(
        containers_of_run(&run_id).is_empty(),
        "the cancelled container is removed"
    );
}

#[test]
fn containers_left_by_a_killed_runner_are_reaped_by_the_next_one() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: orphan\nsteps:\n  long: {image: IMAGE, pull: never, run: 'sleep 300'}\n",
    );
    let (mut child, run_id) = start_run_until_container(&s, &file);
    child.kill().unwrap(); // SIGKILL: the runner cannot clean up.
    child.wait().unwrap();
    assert_eq!(
        containers_of_run(&run_id).len(),
        1,
        "the orphan is still there"
    );

    let other = Scratch::new();
    let next = pipeline(
        &other,
        "name: next\nsteps:\n  quick: {image: IMAGE, pull: never, run: 'true'}\n",
    );
    let out = other.run(&["run", &next]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        containers_of_run(&run_id).is_empty(),
        "the next runner removed the orphan"
    );
}

#[test]
fn without_docker_image_steps_are_refused_and_local_steps_still_run() {
    let s = Scratch::new();
    let with_image = pipeline(&s, "name: img\nsteps:\n  a: {image: IMAGE, run: 'true'}\n");
    let out = s
        .sluice()
        .args(["run", &with_image])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("step `a` runs in an image, but cannot reach the Docker engine"),
        "{stderr}"
    );
    let local = s.write("local.yaml", "name: local\nsteps:\n  a: {run: 'true'}\n");
    let out = s
        .sluice()
        .args(["run", local.to_str().unwrap()])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn local_gpu_steps_get_devices_of_their_own() {
    let s = Scratch::new();
    let mut yaml = String::from("name: gpus\nsteps:\n");
    for i in 0..4 {
        yaml.push_str(&format!(
            "  g{i}: {{run: 'echo \"$CUDA_VISIBLE_DEVICES\" > \"$SLUICE_OUT/devices\"; sleep 0.2', resources: {{gpu: 1}}}}\n"
        ));
    }
    yaml.push_str("  both: {run: 'echo \"$CUDA_VISIBLE_DEVICES\" > \"$SLUICE_OUT/devices\"', resources: {gpu: 2}}\n");
    let file = s.write("p.yaml", &yaml);
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "GPU steps need --gpus");
    assert!(
        text(&out.stderr).contains("pass --gpus"),
        "{}",
        text(&out.stderr)
    );

    let out = s.run(&["run", file.to_str().unwrap(), "--gpus", "0,1"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let show = s.show(&s.latest_run_id());
    let devices = |name: &str| {
        let dir = step(&show, name)["attempts"][0]["dir"]
            .as_str()
            .unwrap()
            .to_string();
        std::fs::read_to_string(format!("{dir}/step/out/devices"))
            .unwrap()
            .trim()
            .to_string()
    };
    for i in 0..4 {
        let d = devices(&format!("g{i}"));
        assert!(d == "0" || d == "1", "g{i} saw {d}");
    }
    assert_eq!(devices("both"), "0,1");
    // No two steps held a device at once: each step's window is disjoint from any other that
    // saw the same device.
    let window = |name: &str| {
        let a = &step(&show, name)["attempts"][0];
        (
            a["started_ms"].as_u64().unwrap(),
            a["finished_ms"].as_u64().unwrap(),
        )
    };
    let names = ["g0", "g1", "g2", "g3", "both"];
    for a in names {
        for b in names {
            if a >= b {
                continue;
            }
            let shared = devices(a)
                .split(',')
                .any(|d| devices(b).split(',').any(|e| e == d));
            let (sa, fa) = window(a);
            let (sb, fb) = window(b);
            let overlap = sa < fb && sb < fa;
            assert!(
                !(shared && overlap),
                "{a} and {b} held the same device at once"
            );
        }
    }
}

#[test]
fn a_container_printing_a_lot_has_all_of_it_in_its_log() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: loud\nsteps:\n  loud: {image: IMAGE, pull: never, run: 'head -c 100000000 /dev/zero | tr \"\\0\" x; echo; echo done-marker'}\n",
    );
    let out = s.run(&["run", &file]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let show = s.show(&s.latest_run_id());
    let dir = step(&show, "loud")["attempts"][0]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    let log = std::fs::read(format!("{dir}/stdout.log")).unwrap();
    assert_eq!(log.len(), 100_000_000 + 1 + "done-marker\n".len());
    assert!(log.ends_with(b"\ndone-marker\n"));
}

#[test]
fn a_child_killed_for_memory_does_not_fail_a_step_that_carries_on() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        r#"name: survivor
steps:
  survivor:
    image: IMAGE
    pull: never
    resources: {memory: 16Mi}
    run: 'sh -c "x=\$(head -c 200000000 /dev/zero | tr \"\\0\" x)"; echo survived'
"#,
    );
    let out = s.run(&["run", &file]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let show = s.show(&s.latest_run_id());
    let attempt = &step(&show, "survivor")["attempts"][0];
    assert_eq!(attempt["exit_code"], 0);
    let message = attempt["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ran out of memory (limit 16Mi) and was killed"),
        "{attempt}"
    );
}

#[test]
fn an_image_whose_user_is_not_root_can_write_its_outputs() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let context = s.path().join("img");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {TEST_IMAGE}\nUSER 1000:1000\n"),
    )
    .unwrap();
    let tag = "sluice-test-busybox-nonroot";
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(&context)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    let file = s.write(
        "p.yaml",
        &format!("name: nonroot\nsteps:\n  write: {{image: {tag}, pull: never, run: 'id -u > $SLUICE_OUT/uid; echo k=v >> $SLUICE_OUTPUTS', outputs: [uid]}}\n"),
    );
    let out = s.run(&["run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let show = s.show(&s.latest_run_id());
    assert_eq!(step(&show, "write")["outputs"]["k"], "v");
}

#[test]
fn a_second_ctrl_c_leaves_no_container_behind() {
    if !docker_ready() {
        return;
    }
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "name: stubborn\nsteps:\n  long: {image: IMAGE, pull: never, run: \"trap '' TERM; sleep 300\"}\n",
    );
    let (child, run_id) = start_run_until_container(&s, &file);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130));
    assert!(
        containers_of_run(&run_id).is_empty(),
        "the hard exit removed its container"
    );
}
