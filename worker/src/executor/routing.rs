//! Sends each task to the executor it needs: a container for steps with an image, a local
//! process otherwise.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{DockerExecutor, Executor, LocalExecutor};
use crate::artifacts::{ArtifactError, Artifacts};
use crate::secrets::SecretKey;
use crate::task::{Outcome, StepCommand, TaskResult, TaskSpec};

/// The executor a worker runs: local processes always, containers when Docker was reachable.
pub struct StepExecutor {
    local: LocalExecutor,
    docker: Result<Arc<DockerExecutor>, String>,
    /// Where inputs come from and outputs go; without it a step with either fails.
    artifacts: Option<Arc<Artifacts>>,
}

impl StepExecutor {
    /// Local processes only; `why` says why there is no Docker, for image steps' errors.
    pub fn local_only(why: impl Into<String>) -> StepExecutor {
        StepExecutor {
            local: LocalExecutor::default(),
            docker: Err(why.into()),
            artifacts: None,
        }
    }

    /// Local processes and containers.
    pub fn with_docker(docker: Arc<DockerExecutor>) -> StepExecutor {
        StepExecutor {
            local: LocalExecutor::default(),
            docker: Ok(docker),
            artifacts: None,
        }
    }

    /// Records local steps' process groups in `dir`, and first kills the groups a previous
    /// process left there that still run (a worker killed with `kill -9` and restarted).
    pub fn with_group_registry(mut self, dir: std::path::PathBuf) -> StepExecutor {
        match super::local::kill_orphaned_groups(&dir) {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(groups = n, dir = %dir.display(), "Killed steps a previous run of this worker left running.")
            }
            Err(err) => {
                tracing::warn!(error = %err, dir = %dir.display(), "Could not look for steps a previous run of this worker left.")
            }
        }
        self.local.groups_dir = Some(dir);
        self
    }

    /// Opens sealed secrets with `key` in local steps (a Docker executor gets its key before it
    /// is shared: [`DockerExecutor::secret_key`]).
    pub fn with_secret_key(mut self, key: Option<SecretKey>) -> StepExecutor {
        self.local.secret_key = key;
        self
    }

    /// Materialises inputs from, and stores declared outputs in, `artifacts`.
    pub fn with_artifacts(mut self, artifacts: Arc<Artifacts>) -> StepExecutor {
        self.artifacts = Some(artifacts);
        self
    }

    /// Whether image steps can run here.
    pub fn has_docker(&self) -> bool {
        self.docker.is_ok()
    }

    /// The Docker executor, when there is one.
    pub fn docker(&self) -> Option<Arc<DockerExecutor>> {
        self.docker.as_ref().ok().cloned()
    }
}

impl StepExecutor {
    /// `$SLUICE_IN/<step>/` from the store, in a fresh `in/` (a redelivered attempt's old one
    /// goes first, never followed).
    async fn materialise(&self, task: &TaskSpec) -> Result<(), String> {
        // A step with no upstream steps gets the empty `in/` its folder is prepared with; a
        // no-op reads nothing, and gets no folders at all (a chain of them touches no disk).
        let reads_nothing = matches!(&task.command, StepCommand::Builtin(kind) if !super::builtin::reads_inputs(kind));
        if task.inputs.is_empty() || reads_nothing {
            return Ok(());
        }
        let in_dir = task.in_dir();
        // On this thread, as the folders below: a hop to the blocking pool for one `mkdir`
        // cost more than the call.
        let prepared = std::fs::create_dir_all(&task.attempt_dir)
            .and_then(|_| crate::safe_fs::remove_entry(&in_dir));
        prepared.map_err(|err| format!("cannot prepare {}: {err}", in_dir.display()))?;
        if task.inputs.iter().all(|input| input.artifacts.is_empty()) {
            // Upstream steps that declared nothing: a folder each, empty, and no store needed.
            let made = std::fs::create_dir(&in_dir).and_then(|_| {
                task.inputs.iter().try_for_each(|input| {
                    let plain = crate::artifacts::manifest::is_safe_relative(&input.step)
                        && !input.step.contains('/');
                    if !plain {
                        return Err(std::io::Error::other(format!(
                            "`{}` cannot name a folder",
                            input.step
                        )));
                    }
                    std::fs::create_dir(in_dir.join(&input.step))
                })
            });
            return made.map_err(|err| format!("cannot prepare {}: {err}", in_dir.display()));
        }
        let Some(artifacts) = &self.artifacts else {
            return Err("the step has inputs, but this worker has no artifact store".into());
        };
        // A container sees `in/` read-only; a local process as root could write through a link.
        let link = task.image.is_some() || !nix::unistd::geteuid().is_root();
        artifacts
            .materialise(&task.inputs, &in_dir, link)
            .await
            .map_err(|err| format!("cannot fetch the step's inputs: {err}"))
    }

    /// Stores the declared outputs of a successful attempt; a failure to do so fails it.
    async fn publish(&self, task: &TaskSpec, result: &mut TaskResult) {
        if result.outcome != Outcome::Succeeded || task.outputs.is_empty() {
            return;
        }
        let Some(artifacts) = &self.artifacts else {
            result.outcome = Outcome::Error;
            result.message =
                Some("the step declares outputs, but this worker has no artifact store".into());
            return;
        };
        let out = std::path::Path::new(crate::task::STEP_DIR).join("out");
        match artifacts
            .publish(&task.attempt_dir, &out, &task.outputs)
            .await
        {
            Ok(stored) => result.artifacts = stored,
            Err(err) => {
                // A step's own bad output is its failure; a store that cannot be reached is not.
                result.outcome = match err {
                    ArtifactError::BadOutput { .. } => Outcome::Failed,
                    _ => Outcome::Error,
                };
                result.message = Some(format!("cannot store the outputs: {err}"));
            }
        }
    }

    /// The earlier attempt `probe` offers, when this worker's `image` (pulled as the step's
    /// policy says) is the one it ran in and its blobs are all in the store; else why not.
    async fn reuse(
        &self,
        task: &TaskSpec,
        probe: &crate::task::CacheProbe,
        docker: &DockerExecutor,
        image: &str,
    ) -> Result<TaskResult, String> {
        docker.ensure_image(image, task.pull).await?;
        let digest = docker.image_id(image).await.unwrap_or_default();
        if digest != probe.image_digest {
            return Err(format!(
                "image digest changed ({} was {})",
                short(&digest),
                short(&probe.image_digest)
            ));
        }
        let Some(artifacts) = &self.artifacts else {
            return Err("this worker has no artifact store".into());
        };
        if !artifacts.contains_all(&probe.artifacts).await {
            return Err("the cached outputs are gone from the store".into());
        }
        let mut result = TaskResult::error(
            task.key.clone(),
            format!("cached from run {}", probe.run_id),
        );
        result.outcome = Outcome::Succeeded;
        result.outputs = probe.outputs.clone();
        result.metrics = probe.metrics.clone();
        result.artifacts = probe.artifacts.clone();
        result.image_digest = Some(digest);
        result.cached_from = Some(probe.run_id.clone());
        Ok(result)
    }

    async fn execute(&self, task: &TaskSpec, cancel: CancellationToken) -> TaskResult {
        if let StepCommand::Builtin(kind) = &task.command {
            return super::builtin::run(task, kind, cancel, &self.local).await;
        }
        match (&task.image, &self.docker) {
            (None, _) => self.local.run(task, cancel).await,
            (Some(image), Ok(docker)) => {
                let miss = match &task.cache_probe {
                    Some(probe) => match self.reuse(task, probe, docker, image).await {
                        Ok(hit) => return hit,
                        Err(why) => Some(why),
                    },
                    None => None,
                };
                let mut result = docker.run(task, cancel).await;
                result.image_digest = docker.image_id(image).await;
                result.cache_miss = miss;
                result
            }
            (Some(image), Err(why)) => TaskResult::error(
                task.key.clone(),
                format!("step needs image `{image}`, but this worker has no Docker: {why}"),
            ),
        }
    }
}

#[async_trait]
impl Executor for StepExecutor {
    async fn run(&self, task: &TaskSpec, cancel: CancellationToken) -> TaskResult {
        // A cancel stops a transfer too: inputs still arriving or outputs still uploading
        // (what was stored stays, content-addressed; a half-made download is never used).
        let cancelled = |what: &str| {
            let mut result = TaskResult::error(task.key.clone(), format!("cancelled while {what}"));
            result.outcome = Outcome::Cancelled;
            result
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return cancelled("its inputs were fetched"),
            fetched = self.materialise(task) => if let Err(message) = fetched {
                return TaskResult::error(task.key.clone(), message);
            },
        }
        let mut result = self.execute(task, cancel.clone()).await;
        if result.cached_from.is_none() {
            tokio::select! {
                _ = self.publish(task, &mut result) => {}
                _ = cancel.cancelled() => return cancelled("its outputs were stored"),
            }
        }
        result
    }
}

/// The first 12 characters of an image id after its `sha256:`.
fn short(digest: &str) -> &str {
    let digest = digest.strip_prefix("sha256:").unwrap_or(digest);
    &digest[..digest.len().min(12)]
}
