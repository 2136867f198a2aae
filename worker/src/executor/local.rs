//! Runs a step as a local process in its own process group.
//!
//! The group matters: a shell step that starts children (`python train.py | tee log`) must be
//! killed whole on timeout or cancel, and anything it left in the background is killed when it
//! exits, so no stray process outlives its step or keeps its log pipes open.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{mask_result, prepare_attempt_dir, read_step_reports, resolve_secrets, Executor};
use crate::logs::{capture, Masker};
use crate::secrets::SecretKey;
use crate::task::{now_ms, Outcome, StepCommand, TaskResult, TaskSpec};

/// Variables a local step inherits from the runner; everything else must be declared, so a
/// step's behaviour does not depend on whoever happened to start the runner.
const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SHELL", "TERM",
];

/// How long a process gets between SIGTERM and SIGKILL on timeout or cancel.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// The local process executor.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Where each running step's process group is recorded (a file per group), so the next
    /// process of this worker can kill what this one left if it is killed.
    pub groups_dir: Option<std::path::PathBuf>,
    /// Opens the step's sealed secrets (`sluice secrets set`).
    pub secret_key: Option<SecretKey>,
}

impl Default for LocalExecutor {
    fn default() -> Self {
        LocalExecutor {
            kill_grace: DEFAULT_KILL_GRACE,
            groups_dir: None,
            secret_key: None,
        }
    }
}

/// Why the wait for the process ended.
enum Ending {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
    LogFailed,
    WaitFailed(std::io::Error),
}

#[async_trait]
impl Executor for LocalExecutor {
    async fn run(&self, task: &TaskSpec, cancel: CancellationToken) -> TaskResult {
        if let Some(image) = &task.image {
            return TaskResult::error(
                task.key.clone(),
                format!("step asks for image `{image}`, but this worker runs local processes only"),
            );
        }
        let secret_values = match resolve_secrets(task, self.secret_key.as_ref()) {
            Ok(values) => values,
            Err(message) => return TaskResult::error(task.key.clone(), message),
        };
        match &task.command {
            StepCommand::Exec(argv) if argv.is_empty() => {
                return TaskResult::error(task.key.clone(), "the step's command is empty");
            }
            StepCommand::Builtin(kind) => {
                return super::builtin::run(task, kind, cancel.clone(), self).await
            }
            _ => {}
        }
        let logs = match prepare_attempt_dir(task).await {
            Ok(logs) => logs,
            Err(err) => {
                return TaskResult::error(
                    task.key.clone(),
                    format!(
                        "cannot prepare the attempt folder {}: {err}",
                        task.attempt_dir.display()
                    ),
                )
            }
        };
        let mut command = match &task.command {
            StepCommand::Shell(text) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(text);
                c
            }
            StepCommand::Exec(argv) => {
                let mut c = Command::new(resolve_program(&argv[0], &task.env));
                c.args(&argv[1..]);
                c
            }
            StepCommand::Builtin(kind) => Command::new(format!("sluice-builtin-{kind}")),
        };
        command
            .current_dir(&task.workdir)
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(task.env.iter().map(|(k, v)| (k, v)))
            .envs(task.path_env())
            .envs(secret_values.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if task.resources.gpu.is_some() {
            // The devices the worker leased to this attempt, and no others.
            command.env("CUDA_VISIBLE_DEVICES", task.gpus.join(","));
        }
        if !task.workdir.is_dir() {
            return TaskResult::error(
                task.key.clone(),
                format!(
                    "the step's workdir {} does not exist",
                    task.workdir.display()
                ),
            );
        }
        let started_ms = now_ms();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                let what = match &task.command {
                    StepCommand::Shell(_) => "sh".to_string(),
                    StepCommand::Exec(argv) => argv[0].clone(),
                    StepCommand::Builtin(kind) => kind.clone(),
                };
                return TaskResult::error(
                    task.key.clone(),
                    format!("cannot start `{what}` in {}: {err}", task.workdir.display()),
                );
            }
        };
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let _registered = pgid.map(|pgid| {
            // Written before anything else can go wrong, so a runner killed with `kill -9` leaves
            // behind where its step runs, for `--resume` to stop it (no fsync: kill -9 of the
            // runner does not lose what the kernel already has).
            let record = process_record(pgid);
            let _ = crate::safe_fs::write_new(
                &task.attempt_dir.join(PROCESS_FILE),
                record.as_bytes(),
                0o600,
            );
            let registered = self.groups_dir.as_ref().and_then(|dir| {
                let file = dir.join(pgid.to_string());
                // Usually the folder is there and no record has this group's number: one
                // call. Otherwise the folder is made, or a stale record of a reused number
                // removed, and the record written again.
                let written = crate::safe_fs::write_new(&file, record.as_bytes(), 0o600);
                if written.is_err() {
                    std::fs::create_dir_all(dir).ok()?;
                    let _ = crate::safe_fs::remove_entry(&file);
                    crate::safe_fs::write_new(&file, record.as_bytes(), 0o600).ok()?;
                }
                Some(file)
            });
            RunningGroup::register(pgid, registered)
        });
        let masks = || Masker::new(secret_values.iter().map(|(_, v)| v.clone()));
        // A log that cannot be written (a full disk) ends the attempt rather than letting the
        // process block on a pipe nobody reads.
        let log_failed = CancellationToken::new();
        let spawn_capture = |reader: Option<_>, file: std::fs::File| {
            let masker = masks();
            let failed = log_failed.clone();
            reader.map(|reader| {
                tokio::spawn(async move {
                    let copied = capture(reader, tokio::fs::File::from_std(file), masker).await;
                    if copied.is_err() {
                        failed.cancel();
                    }
                    copied
                })
            })
        };
        let stdout = spawn_capture(child.stdout.take().map(boxed), logs.stdout);
        let stderr = spawn_capture(child.stderr.take().map(boxed), logs.stderr);
        let ending = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => Ending::Exited(status),
                Err(err) => Ending::WaitFailed(err),
            },
            _ = sleep_or_forever(task.timeout) => Ending::TimedOut,
            _ = cancel.cancelled() => Ending::Cancelled,
            _ = log_failed.cancelled() => Ending::LogFailed,
        };
        let status = match ending {
            Ending::Exited(status) => Ok(status),
            other => {
                let status = self.stop(&mut child, pgid).await;
                Err((other, status))
            }
        };
        // Whatever the step left in the background goes too, so the log pipes close.
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let drained = drain_logs(stdout, stderr, self.kill_grace, &cancel).await;
        let finished_ms = now_ms();
        let mut result = TaskResult::error(task.key.clone(), "");
        result.started_ms = started_ms;
        result.finished_ms = finished_ms;
        result.message = None;
        match status {
            Ok(status) => {
                result.exit_code = status.code();
                result.signal = status.signal();
                result.outcome = if status.success() {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed
                };
                if let Some(signal) = status.signal() {
                    result.message = Some(format!("killed by signal {signal}"));
                }
            }
            Err((ending, status)) => {
                result.exit_code = status.and_then(|s| s.code());
                result.signal = status.and_then(|s| s.signal());
                let (outcome, message) = match ending {
                    Ending::TimedOut => (
                        Outcome::TimedOut,
                        format!(
                            "timed out after {}",
                            humanize(task.timeout.unwrap_or_default())
                        ),
                    ),
                    Ending::Cancelled => (Outcome::Cancelled, "cancelled".to_string()),
                    Ending::LogFailed => {
                        (Outcome::Error, "cannot write the step's log".to_string())
                    }
                    Ending::WaitFailed(err) => {
                        (Outcome::Error, format!("lost track of the process: {err}"))
                    }
                    Ending::Exited(_) => unreachable!("handled above"),
                };
                result.outcome = outcome;
                result.message = Some(message);
            }
        }
        let log_error = match drained {
            Drained::Complete => None,
            Drained::Abandoned(note) => {
                // The step's own exit decides its outcome; the escaped process is worth a note.
                result.message.get_or_insert(note);
                None
            }
            Drained::Failed(err) => Some(err),
        };
        if let Some(err) = log_error {
            if matches!(
                result.outcome,
                Outcome::Succeeded | Outcome::Failed | Outcome::Error
            ) {
                result.outcome = Outcome::Error;
                result.message = Some(format!("cannot write the step's log: {err}"));
            }
        }
        if matches!(result.outcome, Outcome::Succeeded | Outcome::Failed) {
            result = read_step_reports(task, result, &secret_values).await;
        }
        mask_result(&mut result, &secret_values);
        result
    }
}

impl LocalExecutor {
    /// SIGTERM to the group, then SIGKILL after the grace period; returns the exit status.
    async fn stop(&self, child: &mut Child, pgid: Option<Pid>) -> Option<ExitStatus> {
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGTERM);
        }
        match tokio::time::timeout(self.kill_grace, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                child.wait().await.ok()
            }
        }
    }
}

type LogTask = tokio::task::JoinHandle<std::io::Result<u64>>;

/// The file in an attempt's folder that says which process group runs it: `<pgid> <start time>`.
pub const PROCESS_FILE: &str = "process";

/// `<pgid> <start time in clock ticks since boot>`: the start time tells a recycled pid apart.
fn process_record(pgid: Pid) -> String {
    format!(
        "{} {}",
        pgid,
        process_start_time(pgid.as_raw()).unwrap_or(0)
    )
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
pub fn process_start_time(pid: i32) -> Option<u64> {
    use std::io::Read;
    // Read into a buffer the line fits in (52 numbers and a 16-byte name): /proc hands it over
    // in one read, where `read_to_string` sizes its buffer from a zero-length fstat and reads
    // it in six growing pieces, for every step started.
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]).ok()? {
            0 => break,
            n => len += n,
        }
    }
    let stat = std::str::from_utf8(&buf[..len]).ok()?;
    // The command name (field 2) may hold spaces; everything after its closing paren is plain.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the process group an attempt's folder says runs it, if that same group still lives:
/// what a runner that died left behind. Returns whether it killed one.
pub fn kill_recorded_group(attempt_dir: &std::path::Path) -> bool {
    kill_group_in(&attempt_dir.join(PROCESS_FILE))
}

/// Kills every still-running group recorded in `dir` (a worker's group registry) and empties
/// it; returns how many it killed.
pub fn kill_orphaned_groups(dir: &std::path::Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        if kill_group_in(&entry.path()) {
            killed += 1;
        }
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(killed)
}

/// Kills the group a `<pgid> <start time>` record names, if that same group still lives.
fn kill_group_in(record: &std::path::Path) -> bool {
    // Never through a link, never more than a line: the step could have written this file.
    let Ok(Some(bytes)) = crate::safe_fs::read_regular(record, 128) else {
        return false;
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut parts = text.split_whitespace();
    let (Some(Ok(pgid)), Some(Ok(started))) = (
        parts.next().map(str::parse::<i32>),
        parts.next().map(str::parse::<u64>),
    ) else {
        return false;
    };
    if pgid <= 1 || process_start_time(pgid) != Some(started) {
        return false;
    }
    killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
}

/// Process groups of steps running in this process, so a hard exit (a second Ctrl-C) can take
/// them along instead of leaving them running. A global because the exit path has nothing else.
static RUNNING_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Kills every step process group this process started and that still runs.
pub fn kill_running_groups() {
    let groups = RUNNING_GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    for pgid in groups.iter() {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
    }
}

/// Membership of [`RUNNING_GROUPS`] (and of the worker's group registry, when it has one) for
/// as long as the value lives.
struct RunningGroup(i32, Option<std::path::PathBuf>);

impl RunningGroup {
    fn register(pgid: Pid, registered: Option<std::path::PathBuf>) -> RunningGroup {
        RUNNING_GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pgid.as_raw());
        RunningGroup(pgid.as_raw(), registered)
    }
}

impl Drop for RunningGroup {
    fn drop(&mut self) {
        RUNNING_GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|g| *g != self.0);
        if let Some(file) = &self.1 {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Finds a bare program name on the step's `PATH` (its own if it sets one, else the worker's).
///
/// Giving the spawn an absolute path lets the standard library use `posix_spawn` instead of
/// `fork`: with a changed environment it must otherwise search `PATH` itself after a fork, and
/// forking a large multi-threaded worker costs more than a short step.
fn resolve_program(program: &str, env: &[(String, String)]) -> std::path::PathBuf {
    if program.contains('/') {
        return program.into();
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| program.into())
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Both pipes as one type, so one closure can spawn either copy.
fn boxed(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    Box::new(pipe)
}

/// Waits for both log copies to reach the end of their pipes, for at most `grace` (or until a
/// cancel). A process the step started outside its group (`setsid`) survives the group kill and
/// can hold a pipe open forever; the attempt must still end, so the copies are then abandoned.
async fn drain_logs(
    stdout: Option<LogTask>,
    stderr: Option<LogTask>,
    grace: Duration,
    cancel: &CancellationToken,
) -> Drained {
    let tasks: Vec<LogTask> = stdout.into_iter().chain(stderr).collect();
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let joined = async {
        let mut first_error = None;
        for task in tasks {
            let copied = task.await.map_err(std::io::Error::other).and_then(|r| r);
            if let Err(err) = copied {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Drained::Complete, Drained::Failed)
    };
    tokio::select! {
        result = joined => result,
        _ = tokio::time::sleep(grace) => {
            aborts.iter().for_each(|a| a.abort());
            Drained::Abandoned(format!(
                "a process the step started outside its process group still held its output {} after the step exited; the rest of its output was not captured",
                humanize(grace)
            ))
        }
        _ = cancel.cancelled() => {
            aborts.iter().for_each(|a| a.abort());
            Drained::Complete
        }
    }
}

/// How the copying of a step's output ended.
enum Drained {
    /// Both pipes reached their end and every byte was written.
    Complete,
    /// Something outside the step's group kept a pipe open; copying stopped. Says why.
    Abandoned(String),
    /// Writing the log failed (a full disk).
    Failed(std::io::Error),
}

async fn sleep_or_forever(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// A duration as step messages write it (`750ms`, `2.5s`).
pub(super) fn humanize(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_read_from_its_stat_line_even_with_a_strange_name() {
        // A program named with spaces and parens: everything after the last `)` is plain.
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("a) b (c");
        std::fs::copy("/bin/sleep", &program).unwrap();
        let mut child = std::process::Command::new(&program)
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(stat.contains("(a) b (c)"), "{stat}");
        let expected: u64 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(process_start_time(pid), Some(expected), "{stat}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            process_start_time(pid),
            None,
            "a reaped process has no stat line"
        );
    }
}
