//! Runs a step's attempt in a Docker container, through bollard.
//!
//! One container per attempt, named and labelled after it. The attempt's folder is bind-mounted
//! at the same path, so `$SLUICE_OUT`, `$SLUICE_IN`, `$SLUICE_OUTPUTS` and `$SLUICE_METRICS` mean
//! exactly what they mean for a local process. Logs are streamed to the same files, stdout and
//! stderr apart, secrets masked; the container is removed once its logs and outputs are saved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::container_spec::{container_body, container_name, ContainerLimits, LABEL_WORKER};
use super::registry_auth::RegistryAuth;
use super::{mask_result, prepare_attempt_dir, read_step_reports, resolve_secrets, Executor};
use crate::logs::Masker;
use crate::secrets::SecretKey;
use crate::task::{now_ms, Outcome, PullPolicy, TaskResult, TaskSpec};

/// Longest an image pull may take before the attempt fails.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// The Docker executor of one worker.
pub struct DockerExecutor {
    docker: Docker,
    worker: String,
    limits: ContainerLimits,
    auth: RegistryAuth,
    /// Whether the engine lists an NVIDIA runtime; GPU steps fail fast without one.
    nvidia: bool,
    /// Time between `docker stop`'s SIGTERM and its SIGKILL.
    pub kill_grace: Duration,
    /// Opens the step's sealed secrets (`sluice secrets set`).
    pub secret_key: Option<SecretKey>,
}

impl DockerExecutor {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and checks it answers.
    /// The error says why, for the worker to log before it goes on without Docker.
    pub async fn connect(worker: &str) -> Result<DockerExecutor, String> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| format!("cannot reach the Docker engine: {e}"))?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| "the Docker engine did not answer within 10 s".to_string())?
            .map_err(|e| format!("cannot reach the Docker engine: {e}"))?;
        let info = docker
            .info()
            .await
            .map_err(|e| format!("cannot reach the Docker engine: {e}"))?;
        let nvidia = info
            .runtimes
            .as_ref()
            .is_some_and(|runtimes| runtimes.contains_key("nvidia"));
        Ok(DockerExecutor {
            docker,
            worker: worker.to_string(),
            limits: ContainerLimits::default(),
            auth: RegistryAuth::load_default(),
            nvidia,
            kill_grace: super::local::DEFAULT_KILL_GRACE,
            secret_key: None,
        })
    }

    /// Removes containers that a previous life of a worker left behind: those labelled with a
    /// worker name for which `is_gone` holds. Returns how many were removed.
    pub async fn reap_orphans(&self, is_gone: impl Fn(&str) -> bool) -> Result<usize, String> {
        let filters = HashMap::from([("label", vec![LABEL_WORKER])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("cannot list containers: {e}"))?;
        let mut reaped = 0;
        for container in containers {
            let worker = container
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_WORKER))
                .cloned()
                .unwrap_or_default();
            let Some(id) = container.id else { continue };
            if worker == self.worker || !is_gone(&worker) {
                continue;
            }
            if self.remove(&id).await.is_ok() {
                tracing::info!(container = %id, %worker, "Removed a container left by a stopped worker.");
                reaped += 1;
            }
        }
        Ok(reaped)
    }

    /// Removes every container this worker started (a hard exit must not leave them running).
    pub async fn remove_own_containers(&self) {
        let label = format!("{LABEL_WORKER}={}", self.worker);
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        if let Ok(containers) = self.docker.list_containers(Some(options)).await {
            for id in containers.into_iter().filter_map(|c| c.id) {
                let _ = self.remove(&id).await;
            }
        }
    }

    async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Makes sure the image is there, pulling it as the policy says.
    /// The local id (`sha256:...`) of `image` as the engine has it now: what a step really
    /// ran, where a tag may since have moved.
    pub async fn image_id(&self, image: &str) -> Option<String> {
        self.docker
            .inspect_image(image)
            .await
            .ok()
            .and_then(|i| i.id)
    }

    pub(crate) async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), String> {
        let present = self.docker.inspect_image(image).await.is_ok();
        let pull = match policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent => !present,
            PullPolicy::Never if present => false,
            PullPolicy::Never => {
                return Err(format!(
                    "image `{image}` is not on this worker and the step says `pull: never`"
                ))
            }
        };
        if !pull {
            return Ok(());
        }
        // With no tag the engine pulls every tag of the repository: say `latest`, as `docker
        // pull` does.
        let options = match image_tag(image) {
            Some(_) => CreateImageOptionsBuilder::default()
                .from_image(image)
                .build(),
            None => CreateImageOptionsBuilder::default()
                .from_image(image)
                .tag("latest")
                .build(),
        };
        let credentials = self.auth.credentials_for(image);
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        let pulled = tokio::time::timeout(PULL_TIMEOUT, async {
            while let Some(item) = stream.next().await {
                item.map_err(|e| format!("cannot pull image `{image}`: {}", describe(&e)))?;
            }
            Ok::<(), String>(())
        })
        .await;
        match pulled {
            Ok(result) => result,
            Err(_) => Err(format!(
                "pulling image `{image}` took longer than {} s",
                PULL_TIMEOUT.as_secs()
            )),
        }
    }
}

/// The tag or digest of an image reference, if it has one (`host:5000/img` has none).
fn image_tag(image: &str) -> Option<&str> {
    if let Some((_, digest)) = image.split_once('@') {
        return Some(digest);
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map(|(_, tag)| tag)
}

/// Why the wait for a container ended.
enum Ending {
    Exited(i64),
    Lost(String),
    TimedOut,
    Cancelled,
}

#[async_trait]
impl Executor for DockerExecutor {
    async fn run(&self, task: &TaskSpec, cancel: CancellationToken) -> TaskResult {
        let Some(image) = task.image.clone() else {
            return TaskResult::error(task.key.clone(), "the Docker executor needs an image");
        };
        if task.resources.gpu.is_some() && !self.nvidia {
            return TaskResult::error(
                task.key.clone(),
                "the step asks for GPUs, but this worker's Docker engine has no NVIDIA runtime (install the NVIDIA Container Toolkit and restart Docker)",
            );
        }
        let secrets = match resolve_secrets(task, self.secret_key.as_ref()) {
            Ok(values) => values,
            Err(message) => return TaskResult::error(task.key.clone(), message),
        };
        let logs = match prepare_attempt_dir(task).await {
            Ok(logs) => logs,
            Err(err) => {
                return TaskResult::error(
                    task.key.clone(),
                    format!("cannot prepare the attempt folder: {err}"),
                )
            }
        };
        let pulled = tokio::select! {
            pulled = self.ensure_image(&image, task.pull) => pulled,
            _ = cancel.cancelled() => {
                let mut result = TaskResult::error(task.key.clone(), "cancelled while the image was pulled");
                result.outcome = Outcome::Cancelled;
                return result;
            }
        };
        if let Err(message) = pulled {
            return TaskResult::error(task.key.clone(), message);
        }
        // The image (or the step) may run as another user, who must be able to write outputs.
        if let Err(message) = self.hand_step_dir_to_user(task, &image).await {
            return TaskResult::error(task.key.clone(), message);
        }
        let name = container_name(task);
        // A redelivered attempt may find its container from an earlier delivery.
        if let Err(err) = self.remove(&name).await {
            return TaskResult::error(
                task.key.clone(),
                format!("cannot remove stale container `{name}`: {}", describe(&err)),
            );
        }
        let body = container_body(task, &self.worker, &secrets, &self.limits);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        if let Err(err) = self.docker.create_container(Some(options), body).await {
            return TaskResult::error(
                task.key.clone(),
                format!("cannot create the container: {}", describe(&err)),
            );
        }
        // Attached before the start, straight to the container's output: the engine's log driver
        // may rotate or drop what a step prints (json-file with max-size does), the attach
        // stream does not, and a slow reader holds the step back instead of losing its output.
        let attach_options = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            // Attached before the start, there is nothing earlier to replay; replaying the log
            // as well duplicated a fast container's output.
            .logs(false)
            .build();
        let output = match self
            .docker
            .attach_container(&name, Some(attach_options))
            .await
        {
            Ok(attached) => attached.output,
            Err(err) => {
                let _ = self.remove(&name).await;
                return TaskResult::error(
                    task.key.clone(),
                    format!("cannot attach to the container: {}", describe(&err)),
                );
            }
        };
        let started_ms = now_ms();
        if let Err(err) = self.docker.start_container(&name, None).await {
            let _ = self.remove(&name).await;
            return TaskResult::error(task.key.clone(), start_error(&err));
        }
        let masker = || Masker::new(secrets.iter().map(|(_, v)| v.clone()));
        let progress = Arc::new(AtomicU64::new(0));
        let log_copy = tokio::spawn(copy_logs(
            output,
            tokio::fs::File::from_std(logs.stdout),
            tokio::fs::File::from_std(logs.stderr),
            masker(),
            masker(),
            progress.clone(),
        ));
        let mut wait = self.docker.wait_container(&name, None);
        let timeout = async {
            match task.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let ending = tokio::select! {
            waited = wait.next() => exit_of(waited),
            _ = timeout => Ending::TimedOut,
            _ = cancel.cancelled() => Ending::Cancelled,
        };
        if matches!(ending, Ending::TimedOut | Ending::Cancelled) {
            self.stop(&name).await;
        }
        let drained = drain(log_copy, &progress).await;
        let oom = self
            .docker
            .inspect_container(&name, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
        let mut result = TaskResult::error(task.key.clone(), "");
        result.message = None;
        result.started_ms = started_ms;
        result.finished_ms = now_ms();
        match ending {
            Ending::Exited(code) => {
                result.exit_code = i32::try_from(code).ok();
                result.outcome = if code == 0 {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed
                };
                let limit = task.resources.memory.map_or("none".into(), human_bytes);
                if oom && code == 137 {
                    result.message =
                        Some(format!("killed for running out of memory (limit {limit})"));
                } else if oom {
                    // A child was killed, the step itself carried on: worth saying, not a failure.
                    result.message = Some(format!(
                        "a process of the step ran out of memory (limit {limit}) and was killed"
                    ));
                }
            }
            Ending::Lost(message) => {
                result.outcome = Outcome::Error;
                result.message = Some(message);
            }
            Ending::TimedOut => {
                result.outcome = Outcome::TimedOut;
                result.message = Some(format!(
                    "timed out after {}s",
                    task.timeout.unwrap_or_default().as_secs_f64()
                ));
            }
            Ending::Cancelled => {
                result.outcome = Outcome::Cancelled;
                result.message = Some("cancelled".into());
            }
        }
        match drained {
            Ok(()) => {}
            Err(problem) if result.outcome == Outcome::Succeeded => {
                // Output that never reached the log is not a clean success.
                result.outcome = Outcome::Error;
                result.message = Some(problem);
            }
            Err(problem) => {
                let message = result.message.take().unwrap_or_default();
                result.message = Some(
                    format!("{message}; {problem}")
                        .trim_start_matches("; ")
                        .to_string(),
                );
            }
        }
        if matches!(result.outcome, Outcome::Succeeded | Outcome::Failed) {
            result = read_step_reports(task, result, &secrets).await;
        }
        mask_result(&mut result, &secrets);
        if let Err(err) = self.remove(&name).await {
            tracing::warn!(container = %name, error = %err, "Could not remove a finished container.");
        }
        result
    }
}

impl DockerExecutor {
    /// `docker stop` (SIGTERM, then SIGKILL after the grace period), and a kill if that fails.
    async fn stop(&self, name: &str) {
        let grace = i32::try_from(self.kill_grace.as_secs()).unwrap_or(5);
        let options = StopContainerOptionsBuilder::default().t(grace).build();
        if self
            .docker
            .stop_container(name, Some(options))
            .await
            .is_err()
        {
            let options = KillContainerOptionsBuilder::default()
                .signal("KILL")
                .build();
            let _ = self.docker.kill_container(name, Some(options)).await;
        }
    }
}

/// The exit code from `wait_container`: bollard reports a non-zero exit as an error variant,
/// which is a normal result here; any other error means the engine was lost.
fn exit_of(waited: Option<Result<bollard::models::ContainerWaitResponse, DockerError>>) -> Ending {
    match waited {
        Some(Ok(response)) => Ending::Exited(response.status_code),
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ending::Exited(code),
        Some(Err(err)) => Ending::Lost(format!(
            "lost the Docker engine while the step ran: {}",
            describe(&err)
        )),
        None => Ending::Lost("the Docker engine ended the wait without an exit code".into()),
    }
}

/// A start failure in words a person can act on.
fn start_error(err: &DockerError) -> String {
    let text = describe(err);
    if text.contains("could not select device driver") {
        format!("the step asks for GPUs, but this worker's Docker engine has no NVIDIA runtime ({text})")
    } else {
        format!("cannot start the container: {text}")
    }
}

fn describe(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// How long the log stream may deliver nothing, after the container ended, before the engine is
/// taken to have stopped sending.
const LOG_STALL: Duration = Duration::from_secs(30);

/// Lets the log copy run to the end of the container's output, however long that takes while
/// bytes keep arriving; gives up only when the stream stalls. `Err` says what was lost.
async fn drain(
    mut copy: tokio::task::JoinHandle<std::io::Result<()>>,
    progress: &AtomicU64,
) -> Result<(), String> {
    let mut seen = progress.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(LOG_STALL, &mut copy).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(err))) => return Err(format!("cannot write the step's log: {err}")),
            Ok(Err(err)) => return Err(format!("the log copy failed: {err}")),
            Err(_) => {
                let now = progress.load(Ordering::Relaxed);
                if now == seen {
                    copy.abort();
                    return Err(format!(
                        "the Docker engine stopped sending the container's output after {now} bytes; the rest of its log is missing"
                    ));
                }
                seen = now;
            }
        }
    }
}

/// Streams the container's output to the attempt's log files, stdout and stderr apart.
async fn copy_logs(
    mut stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, DockerError>> + Send>,
    >,
    stdout: tokio::fs::File,
    stderr: tokio::fs::File,
    mut mask_out: Masker,
    mut mask_err: Masker,
    progress: Arc<AtomicU64>,
) -> std::io::Result<()> {
    // Unbuffered, so a followed log shows output as the container prints it.
    let (mut out, mut err) = (stdout, stderr);
    let written = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(LogOutput::StdOut { message }) => {
                    out.write_all(&mask_out.feed(&message)).await?;
                    progress.fetch_add(message.len() as u64, Ordering::Relaxed);
                }
                Ok(LogOutput::StdErr { message }) => {
                    err.write_all(&mask_err.feed(&message)).await?;
                    progress.fetch_add(message.len() as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    // Say so in the log itself: the output after this point is missing.
                    let note = format!("\n[sluice: the container's output stream broke: {e}]\n");
                    err.write_all(note.as_bytes()).await?;
                    break;
                }
            }
        }
        out.write_all(&mask_out.finish()).await?;
        err.write_all(&mask_err.finish()).await?;
        out.flush().await?;
        err.flush().await
    };
    written.await
}

/// The user a container runs as, as far as its folder's ownership is concerned.
#[derive(Debug, PartialEq, Eq)]
enum ContainerUser {
    /// uid 0: may write any folder of the worker's already.
    Root,
    /// A numeric uid, with a gid when one was given.
    Id(u32, Option<u32>),
    /// A name only the image's `/etc/passwd` knows.
    Name(String),
}

fn container_user(user: &str) -> ContainerUser {
    let (name, group) = user.split_once(':').unwrap_or((user, ""));
    match name {
        "" | "root" | "0" => ContainerUser::Root,
        _ => match name.parse::<u32>() {
            Ok(uid) => ContainerUser::Id(uid, group.parse().ok()),
            Err(_) => ContainerUser::Name(user.to_string()),
        },
    }
}

impl DockerExecutor {
    /// Gives the step's folder to the user its container runs as (the step's `user:`, else the
    /// image's `USER`), and to nobody else: never world-writable.
    async fn hand_step_dir_to_user(&self, task: &TaskSpec, image: &str) -> Result<(), String> {
        let user = match &task.user {
            Some(user) => user.clone(),
            None => self
                .docker
                .inspect_image(image)
                .await
                .ok()
                .and_then(|i| i.config)
                .and_then(|c| c.user)
                .unwrap_or_default(),
        };
        let (uid, gid) = match container_user(&user) {
            ContainerUser::Root => return Ok(()),
            ContainerUser::Id(uid, gid) => (uid, gid),
            ContainerUser::Name(name) => {
                return Err(format!(
                    "the container would run as user `{name}`, a name the worker cannot turn into a uid to give it the step's folder: set `user: UID[:GID]` on the step"
                ))
            }
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if uid == me {
            return Ok(());
        }
        if me != 0 {
            return Err(format!(
                "the container runs as uid {uid}, and a worker that is not root can give the step's folder only to its own uid ({me}): run the worker as root or set `user: \"{me}\"` on the step"
            ));
        }
        for path in [
            task.step_dir(),
            task.out_dir(),
            task.in_dir(),
            task.outputs_file(),
        ] {
            std::os::unix::fs::lchown(&path, Some(uid), gid).map_err(|err| {
                format!(
                    "cannot give {} to the container's uid {uid}: {err}",
                    path.display()
                )
            })?;
        }
        Ok(())
    }
}

fn human_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes % (1 << 30) == 0 {
        format!("{}Gi", bytes >> 30)
    } else if bytes % MIB == 0 {
        format!("{}Mi", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::{container_user, image_tag, ContainerUser};

    #[test]
    fn container_users_are_root_ids_or_names() {
        assert_eq!(container_user(""), ContainerUser::Root);
        assert_eq!(container_user("0:0"), ContainerUser::Root);
        assert_eq!(container_user("root"), ContainerUser::Root);
        assert_eq!(container_user("1000"), ContainerUser::Id(1000, None));
        assert_eq!(
            container_user("65534:65534"),
            ContainerUser::Id(65534, Some(65534))
        );
        assert_eq!(
            container_user("jovyan"),
            ContainerUser::Name("jovyan".into())
        );
    }

    #[test]
    fn tags_are_found_after_the_registry_port() {
        assert_eq!(image_tag("python"), None);
        assert_eq!(image_tag("python:3.11-slim"), Some("3.11-slim"));
        assert_eq!(image_tag("localhost:5000/img"), None);
        assert_eq!(image_tag("localhost:5000/img:1"), Some("1"));
        assert_eq!(image_tag("img@sha256:abc"), Some("sha256:abc"));
    }
}
