//! Integration tests of the local process executor, with real processes.
//!
//! Each test gets its own temporary folder; every wait is bounded by a timeout, and no test
//! asserts how fast something happened, only that it happened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_worker::executor::{Executor, LocalExecutor};
use sluice_worker::task::{Outcome, StepCommand, TaskSpec};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Waits for a file to exist (written by the step), within a generous limit.
async fn wait_for_file(path: &Path) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when `pid` no longer runs: no `/proc` entry, or only a zombie waiting to be reaped
/// (an orphan's reaper may be slow or absent in containers, but a zombie runs nothing).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('Z') | Some('X'))
        }
    }
}

/// Asserts that `pid` goes away within a few seconds; kills it if not, so a failure leaks nothing.
async fn assert_process_gone(pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !process_gone(pid) {
        if tokio::time::Instant::now() >= deadline {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("background process {pid} outlived its step");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_pid(path: &Path) -> i32 {
    let text = read(path);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("pid file {} holds {text:?}: {e}", path.display()))
}

/// A variable name no other test (or test binary) uses.
fn unique_var(tag: &str) -> String {
    format!("LOCAL_EXECUTOR_TEST_{tag}_{}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Exit statuses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn exit_zero_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), sh("exit 0"));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.signal, None);
    assert_eq!(result.key, t.key);
    assert!(result.finished_ms >= result.started_ms);
    assert!(result.started_ms > 0);
}

#[tokio::test]
async fn non_zero_exit_fails_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let result = run(&task(dir.path(), sh("exit 3"))).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.signal, None);
}

#[tokio::test]
async fn a_process_killed_by_a_signal_fails_and_records_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let result = run(&task(dir.path(), sh("kill -9 $$"))).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert_eq!(result.signal, Some(libc::SIGKILL));
    assert_eq!(result.exit_code, None);
    let message = result.message.unwrap_or_default();
    assert!(message.contains("signal"), "message: {message}");
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stdout_and_stderr_go_to_separate_logs_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        sh("echo out-1; echo err-1 >&2; printf 'out-2 no newline'; printf 'err-2\\n' >&2"),
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert_eq!(read(t.stdout_log()), "out-1\nout-2 no newline");
    assert_eq!(read(t.stderr_log()), "err-1\nerr-2\n");
}

#[tokio::test]
async fn logs_of_a_failing_step_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), sh("echo before; echo oops >&2; exit 1"));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed);
    assert_eq!(read(t.stdout_log()), "before\n");
    assert_eq!(read(t.stderr_log()), "oops\n");
}

#[tokio::test]
async fn a_large_output_is_streamed_to_the_log_in_full() {
    const SIZE: u64 = 200_000_000;
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), sh(&format!("head -c {SIZE} /dev/zero")));
    let hwm_before = vm_hwm_kib();
    let result = run(&t).await;
    let hwm_after = vm_hwm_kib();
    // Informational only: the peak RSS of the whole test process (other tests run alongside).
    eprintln!("VmHWM before: {hwm_before:?} KiB, after: {hwm_after:?} KiB");
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    let len = std::fs::metadata(t.stdout_log()).unwrap().len();
    assert_eq!(len, SIZE);
    assert_eq!(std::fs::metadata(t.stderr_log()).unwrap().len(), 0);
}

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn a_log_that_cannot_be_written_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        sh("head -c 20000000 /dev/zero; echo finished >&2"),
    );
    let Some(_disk) = SmallDisk::at(&t.attempt_dir, false) else {
        return;
    };
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Error, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("log"), "message: {message}");
}

#[tokio::test]
async fn a_small_output_to_a_full_disk_is_an_error_too() {
    // Less than one buffer: the failure only shows when the log is flushed at the end.
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), sh("echo hello"));
    let Some(_disk) = SmallDisk::at(&t.attempt_dir, true) else {
        return;
    };
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Error, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("log"), "message: {message}");
}

/// A 256 KiB tmpfs mounted for the length of a test: a disk that really fills up. Mounting
/// needs root (CI runs as root); elsewhere the test says why it did nothing.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts it at `path`; with `full`, fills it before the step runs.
    fn at(path: &Path, full: bool) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        let disk = SmallDisk(path.to_path_buf());
        if full {
            // The executor empties the attempt's folder, not its parent: fill from beside it.
            let filler = std::fs::File::create(path.join("filler")).unwrap();
            let _ = std::io::Write::write_all(&mut &filler, &vec![0u8; 1 << 20]);
        }
        Some(disk)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Environment and arguments
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_step_sees_its_env_and_path_but_not_the_workers_other_variables() {
    let unrelated = unique_var("UNRELATED");
    std::env::set_var(&unrelated, "leaked-from-the-worker");
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(
        dir.path(),
        sh(&format!(
            "echo \"GREETING=$GREETING\"; echo \"LR=$LR\"; \
             echo \"UNRELATED=${{{unrelated}-unset}}\"; echo \"PATH=$PATH\"; echo \"HOME=$HOME\""
        )),
    );
    t.env = vec![
        ("GREETING".to_string(), "hello world".to_string()),
        ("LR".to_string(), "0.01".to_string()),
        ("HOME".to_string(), "/step/home".to_string()),
    ];
    let result = run(&t).await;
    std::env::remove_var(&unrelated);
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    let out = read(t.stdout_log());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "GREETING=hello world");
    assert_eq!(lines[1], "LR=0.01");
    assert_eq!(
        lines[2], "UNRELATED=unset",
        "an undeclared variable was inherited"
    );
    let path = std::env::var("PATH").expect("the test needs PATH");
    assert_eq!(lines[3], format!("PATH={path}"));
    assert_eq!(
        lines[4], "HOME=/step/home",
        "the task's env must win over inherited values"
    );
}

#[tokio::test]
async fn the_step_runs_in_its_workdir() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut t = task(dir.path(), sh("pwd -P; echo made > made.txt"));
    t.workdir = work.clone();
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert_eq!(
        read(t.stdout_log()).trim(),
        work.canonicalize().unwrap().display().to_string()
    );
    assert_eq!(read(work.join("made.txt")), "made\n");
}

#[tokio::test]
async fn exec_form_passes_arguments_verbatim_without_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "$HOME; echo pwned",
        "*",
        "a b",
        "`id`",
        "$(id)",
        "'quoted'",
        "",
    ];
    let mut argv = vec!["printf".to_string(), "[%s]\\n".to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let t = task(dir.path(), StepCommand::Exec(argv));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    let expected: String = args.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(read(t.stdout_log()), expected);
    assert!(!dir.path().join("pwned").exists());
}

#[tokio::test]
async fn a_command_that_does_not_exist_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        StepCommand::Exec(vec!["/nonexistent/prog".to_string()]),
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Error, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("/nonexistent/prog"), "message: {message}");
}

#[tokio::test]
async fn exec_with_an_empty_argv_is_an_error_not_a_panic() {
    // A task arrives deserialized from a queue; the executor's contract is a result for every
    // attempt, whatever happened, so a malformed command must not take the worker down.
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), StepCommand::Exec(Vec::new()));
    let executor = LocalExecutor::default();
    let t2 = t.clone();
    let joined = tokio::time::timeout(
        RUN_LIMIT,
        tokio::spawn(async move { executor.run(&t2, CancellationToken::new()).await }),
    )
    .await
    .expect("the executor did not return");
    let result = joined.expect("the executor panicked on an empty argv");
    assert_eq!(result.outcome, Outcome::Error, "{result:?}");
}

#[tokio::test]
async fn a_task_asking_for_an_image_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), sh("touch ran"));
    t.image = Some("python:3.12".to_string());
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Error, "{result:?}");
    assert!(result.message.unwrap_or_default().contains("python:3.12"));
    assert!(!dir.path().join("ran").exists());
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_secret_is_visible_to_the_step_and_masked_in_its_logs() {
    let name = unique_var("SECRET");
    let value = "s3cr3t-Value-9f1c";
    std::env::set_var(&name, value);
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(
        dir.path(),
        sh(&format!(
            "echo \"token=${name}\"; \
             if [ \"${name}\" = '{value}' ]; then echo visible; fi; \
             echo \"err ${name} end\" >&2"
        )),
    );
    t.secrets = vec![name.clone()];
    let result = run(&t).await;
    std::env::remove_var(&name);
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    let out = read(t.stdout_log());
    let err = read(t.stderr_log());
    assert_eq!(out, "token=***\nvisible\n");
    assert_eq!(err, "err *** end\n");
    assert!(!out.contains(value) && !err.contains(value));
}

#[tokio::test]
async fn a_missing_secret_is_an_error_naming_it() {
    let name = unique_var("MISSING_SECRET");
    std::env::remove_var(&name);
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), sh("touch ran"));
    t.secrets = vec![name.clone()];
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Error, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains(&name), "message: {message}");
    assert!(
        !dir.path().join("ran").exists(),
        "the step ran without its secret"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeout, cancel and stray processes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_step_past_its_timeout_is_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), sh("sleep 30"));
    t.timeout = Some(Duration::from_millis(300));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::TimedOut, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("timed out"), "message: {message}");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let mut t = task(
        dir.path(),
        sh(&format!(
            "sleep 300 & echo $! > '{}'; wait",
            pidfile.display()
        )),
    );
    t.timeout = Some(Duration::from_secs(2));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::TimedOut, "{result:?}");
    assert_process_gone(read_pid(&pidfile)).await;
}

#[tokio::test]
async fn a_step_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let mut t = task(
        dir.path(),
        sh(&format!(
            "trap '' TERM; sleep 300 & echo $! > '{}'; wait",
            pidfile.display()
        )),
    );
    t.timeout = Some(Duration::from_secs(1));
    let executor = LocalExecutor {
        kill_grace: Duration::from_millis(500),
        ..LocalExecutor::default()
    };
    let result = run_with(&executor, &t, CancellationToken::new()).await;
    assert_eq!(result.outcome, Outcome::TimedOut, "{result:?}");
    assert_eq!(result.signal, Some(libc::SIGKILL), "{result:?}");
    assert_process_gone(read_pid(&pidfile)).await;
}

#[tokio::test]
async fn cancelling_ends_the_step_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let t = task(
        dir.path(),
        sh(&format!(
            "sleep 300 & echo $! > '{0}.tmp'; mv '{0}.tmp' '{0}'; wait",
            pidfile.display()
        )),
    );
    let executor = LocalExecutor::default();
    let cancel = CancellationToken::new();
    let run = executor.run(&t, cancel.clone());
    let canceller = async {
        wait_for_file(&pidfile).await;
        cancel.cancel();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(run, canceller)
    })
    .await
    .expect("the executor did not return after its cancel");
    assert_eq!(result.outcome, Outcome::Cancelled, "{result:?}");
    assert_process_gone(read_pid(&pidfile)).await;
}

#[tokio::test]
async fn cancelling_returns_within_a_generous_bound() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let t = task(
        dir.path(),
        sh(&format!("echo yes > '{}'; sleep 30", marker.display())),
    );
    let executor = LocalExecutor::default();
    let cancel = CancellationToken::new();
    let handle = {
        let (t, cancel, executor) = (t.clone(), cancel.clone(), executor.clone());
        tokio::spawn(async move { executor.run(&t, cancel).await })
    };
    tokio::time::timeout(Duration::from_secs(30), wait_for_file(&marker))
        .await
        .expect("the step never started");
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the executor did not return within 10 s of the cancel")
        .unwrap();
    assert_eq!(result.outcome, Outcome::Cancelled, "{result:?}");
}

#[tokio::test]
async fn a_token_cancelled_before_the_run_gives_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), sh("sleep 30"));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = run_with(&LocalExecutor::default(), &t, cancel).await;
    assert_eq!(result.outcome, Outcome::Cancelled, "{result:?}");
}

#[tokio::test]
async fn a_background_process_holding_stdout_does_not_hang_the_step_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let t = task(
        dir.path(),
        sh(&format!(
            "sleep 300 & echo $! > '{}'; echo done; exit 0",
            pidfile.display()
        )),
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert_eq!(read(t.stdout_log()), "done\n");
    assert_process_gone(read_pid(&pidfile)).await;
}

/// Kills the process whose pid is in a file when dropped: for a process that left the step's
/// process group, which the executor cannot be expected to reap, so the test must.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string(&self.0) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

#[tokio::test]
async fn a_process_that_left_the_group_holding_stdout_does_not_outlast_the_timeout() {
    // `setsid` puts the background process in a session of its own, out of reach of the group
    // kill, while it still holds the log pipe. The step itself exits at once; the attempt must
    // still end, at the latest when its timeout is due (and a cancel must still be heard).
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escaped.pid");
    let _cleanup = KillOnDrop(pidfile.clone());
    let mut t = task(
        dir.path(),
        // The step waits until the background process has left the group, so the test does
        // not race the group kill against `setsid`.
        sh(&format!(
            "setsid sh -c 'echo $$ > \"$0.tmp\"; mv \"$0.tmp\" \"$0\"; exec sleep 300' '{0}' & \
             while [ ! -e '{0}' ]; do sleep 0.01; done; echo done",
            pidfile.display()
        )),
    );
    t.timeout = Some(Duration::from_secs(2));
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        LocalExecutor::default().run(&t, CancellationToken::new()),
    )
    .await
    .expect("the executor still waits on a log pipe held by an escaped process, past the step's timeout");
    // Either ending is defensible (the step exited 0; the attempt overran): what matters is
    // that it ends.
    assert!(
        matches!(result.outcome, Outcome::Succeeded | Outcome::TimedOut),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_cancel_is_heard_while_an_escaped_process_holds_the_log_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escaped.pid");
    let mainpid = dir.path().join("main.pid");
    let _cleanup = KillOnDrop(pidfile.clone());
    let t = task(
        dir.path(),
        sh(&format!(
            "setsid sh -c 'echo $$ > \"$0.tmp\"; mv \"$0.tmp\" \"$0\"; exec sleep 300' '{0}' & \
             while [ ! -e '{0}' ]; do sleep 0.01; done; echo $$ > '{1}.tmp'; mv '{1}.tmp' '{1}'",
            pidfile.display(),
            mainpid.display()
        )),
    );
    let executor = LocalExecutor::default();
    let cancel = CancellationToken::new();
    let handle = {
        let (t, cancel) = (t.clone(), cancel.clone());
        tokio::spawn(async move { executor.run(&t, cancel).await })
    };
    // Wait until the step's own process has exited (and been reaped), then cancel.
    let main = read_pid_when_written(&mainpid).await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while !process_gone(main) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the step's shell never exited");
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the executor ignored the cancel: it still waits on the escaped process's pipe")
        .unwrap();
    assert!(
        matches!(result.outcome, Outcome::Succeeded | Outcome::Cancelled),
        "{result:?}"
    );
}

async fn read_pid_when_written(path: &Path) -> i32 {
    let text = wait_for_file(path).await;
    text.trim().parse().expect("a pid")
}

#[tokio::test]
async fn a_lot_of_output_on_both_streams_at_once_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        sh("head -c 5000000 /dev/zero >&2; head -c 3000000 /dev/zero; head -c 1000000 /dev/zero >&2"),
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert_eq!(std::fs::metadata(t.stdout_log()).unwrap().len(), 3_000_000);
    assert_eq!(std::fs::metadata(t.stderr_log()).unwrap().len(), 6_000_000);
}

// ---------------------------------------------------------------------------------------------
// Declared outputs, outputs and metrics files, inputs
// ---------------------------------------------------------------------------------------------

fn outputs_task(dir: &Path, script: &str) -> TaskSpec {
    let mut t = with_sluice_env(task(dir, sh(script)));
    t.outputs = vec!["model.txt".to_string(), "dir/".to_string()];
    t
}

#[tokio::test]
async fn all_declared_outputs_present_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let t = outputs_task(
        dir.path(),
        "echo weights > \"$SLUICE_OUT/model.txt\"; mkdir \"$SLUICE_OUT/dir\"",
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert_eq!(read(t.out_dir().join("model.txt")), "weights\n");
}

#[tokio::test]
async fn a_missing_declared_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = outputs_task(dir.path(), "mkdir \"$SLUICE_OUT/dir\"");
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("model.txt"), "message: {message}");
}

#[tokio::test]
async fn a_missing_declared_folder_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = outputs_task(dir.path(), "echo w > \"$SLUICE_OUT/model.txt\"");
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("dir/"), "message: {message}");
}

#[tokio::test]
async fn a_file_where_a_folder_was_declared_fails() {
    let dir = tempfile::tempdir().unwrap();
    let t = outputs_task(
        dir.path(),
        "echo w > \"$SLUICE_OUT/model.txt\"; echo not-a-dir > \"$SLUICE_OUT/dir\"",
    );
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert!(result.message.unwrap_or_default().contains("dir/"));
}

#[tokio::test]
async fn outputs_and_metrics_files_are_read_into_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_sluice_env(task(
        dir.path(),
        sh("echo accuracy=0.93 >> \"$SLUICE_OUTPUTS\"; \
            echo 'model_uri=s3://bucket/m?a=b' >> \"$SLUICE_OUTPUTS\"; \
            echo '{\"loss\": 0.1, \"epochs\": 3}' > \"$SLUICE_METRICS\""),
    ));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert_eq!(
        result.outputs.get("accuracy").map(String::as_str),
        Some("0.93")
    );
    assert_eq!(
        result.outputs.get("model_uri").map(String::as_str),
        Some("s3://bucket/m?a=b")
    );
    assert_eq!(result.outputs.len(), 2);
    assert_eq!(result.metrics.get("loss"), Some(&serde_json::json!(0.1)));
    assert_eq!(result.metrics.get("epochs"), Some(&serde_json::json!(3)));
}

#[tokio::test]
async fn a_step_writing_no_reports_has_empty_outputs_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_sluice_env(task(dir.path(), sh("true")));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert!(result.outputs.is_empty());
    assert!(result.metrics.is_empty());
}

#[tokio::test]
async fn invalid_metrics_json_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_sluice_env(task(
        dir.path(),
        sh("echo '{\"loss\": ' > \"$SLUICE_METRICS\""),
    ));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("SLUICE_METRICS"), "message: {message}");
}

#[tokio::test]
async fn metrics_that_are_not_an_object_fail() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_sluice_env(task(
        dir.path(),
        sh("echo '[0.1, 0.2]' > \"$SLUICE_METRICS\""),
    ));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert!(result
        .message
        .unwrap_or_default()
        .contains("SLUICE_METRICS"));
}

#[tokio::test]
async fn a_malformed_outputs_line_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_sluice_env(task(
        dir.path(),
        sh("echo ok=1 >> \"$SLUICE_OUTPUTS\"; echo 'no equals sign' >> \"$SLUICE_OUTPUTS\""),
    ));
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("line 2"), "message: {message}");
}

#[tokio::test]
async fn a_failing_step_is_not_turned_into_a_report_failure() {
    // The exit code is the story; reports are only checked after a successful exit.
    let dir = tempfile::tempdir().unwrap();
    let mut t = outputs_task(dir.path(), "echo '{' > \"$SLUICE_METRICS\"; exit 4");
    t.outputs.push("never.txt".to_string());
    let result = run(&t).await;
    assert_eq!(result.outcome, Outcome::Failed);
    assert_eq!(result.exit_code, Some(4));
}

/// A no-op after another step succeeds without touching the disk: no attempt folder, no `in/`.
#[tokio::test]
async fn a_noop_step_succeeds_and_makes_no_folders() {
    use sluice_worker::artifacts::TaskInput;
    use sluice_worker::executor::StepExecutor;
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), StepCommand::Builtin("noop".into()));
    t.inputs.push(TaskInput {
        step: "upstream".into(),
        artifacts: Vec::new(),
    });
    let executor = StepExecutor::local_only("no Docker in this test");
    let result = tokio::time::timeout(RUN_LIMIT, executor.run(&t, CancellationToken::new()))
        .await
        .expect("a no-op hung");
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    assert!(
        !t.attempt_dir.exists(),
        "a no-op made {}",
        t.attempt_dir.display()
    );
}

/// A no-op declares no outputs it cannot write: `outputs:` on one fails it, saying why.
#[tokio::test]
async fn a_noop_step_with_outputs_fails_naming_the_output() {
    use sluice_worker::executor::StepExecutor;
    let dir = tempfile::tempdir().unwrap();
    let mut t = task(dir.path(), StepCommand::Builtin("noop".into()));
    t.outputs.push("model.bin".into());
    let executor = StepExecutor::local_only("no Docker in this test");
    let result = tokio::time::timeout(RUN_LIMIT, executor.run(&t, CancellationToken::new()))
        .await
        .expect("a no-op hung");
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("`model.bin`"), "message: {message}");
    assert!(
        message.contains("`noop` writes no outputs"),
        "message: {message}"
    );
}
