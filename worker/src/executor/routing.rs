//! Sends each task to the executor it needs: a container for steps with an image, a local
//! process otherwise.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{DockerExecutor, Executor, LocalExecutor};
use crate::secrets::SecretKey;
use crate::task::{StepCommand, TaskResult, TaskSpec};

/// The executor a worker runs: local processes always, containers when Docker was reachable.
pub struct StepExecutor {
    local: LocalExecutor,
    docker: Result<Arc<DockerExecutor>, String>,
}

impl StepExecutor {
    /// Local processes only; `why` says why there is no Docker, for image steps' errors.
    pub fn local_only(why: impl Into<String>) -> StepExecutor {
        StepExecutor {
            local: LocalExecutor::default(),
            docker: Err(why.into()),
        }
    }

    /// Local processes and containers.
    pub fn with_docker(docker: Arc<DockerExecutor>) -> StepExecutor {
        StepExecutor {
            local: LocalExecutor::default(),
            docker: Ok(docker),
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

    /// Whether image steps can run here.
    pub fn has_docker(&self) -> bool {
        self.docker.is_ok()
    }

    /// The Docker executor, when there is one.
    pub fn docker(&self) -> Option<Arc<DockerExecutor>> {
        self.docker.as_ref().ok().cloned()
    }
}

#[async_trait]
impl Executor for StepExecutor {
    async fn run(&self, task: &TaskSpec, cancel: CancellationToken) -> TaskResult {
        if let StepCommand::Builtin(kind) = &task.command {
            return super::builtin::run(task, kind).await;
        }
        match (&task.image, &self.docker) {
            (None, _) => self.local.run(task, cancel).await,
            (Some(_), Ok(docker)) => docker.run(task, cancel).await,
            (Some(image), Err(why)) => TaskResult::error(
                task.key.clone(),
                format!("step needs image `{image}`, but this worker has no Docker: {why}"),
            ),
        }
    }
}
