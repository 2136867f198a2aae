//! The container a step's attempt runs in: name, labels, command, mounts, limits and GPUs.
//!
//! Kept apart from the executor as plain functions of the task, so the exact spec sent to Docker
//! can be tested without a Docker engine (there is no GPU here, but the GPU request can be
//! checked field by field).

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType};

use crate::task::{GpuRequest, StepCommand, TaskSpec};

/// Label naming the run of a container.
pub const LABEL_RUN: &str = "sluice.run";
/// Label naming the step.
pub const LABEL_STEP: &str = "sluice.step";
/// Label naming the attempt.
pub const LABEL_ATTEMPT: &str = "sluice.attempt";
/// Label naming the worker that started the container: how a restarted worker finds orphans.
pub const LABEL_WORKER: &str = "sluice.worker";

/// How a worker confines the containers it starts.
#[derive(Debug, Clone)]
pub struct ContainerLimits {
    /// Most processes in one container (`--pids-limit`): a fork bomb stays in its box.
    pub pids_limit: i64,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        ContainerLimits { pids_limit: 4096 }
    }
}

/// `sluice-<run>-<step>-<attempt>`: deterministic, so a retry or a restarted worker can find it.
/// A step name Docker does not allow in a container name (a matrix expansion such as
/// `train[lr=0.1]`) is written with `_` for each such character and a short hash of the real
/// name, so two expansions never share a container.
pub fn container_name(task: &TaskSpec) -> String {
    let step = &task.key.step;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let step = if step.chars().all(allowed) {
        step.clone()
    } else {
        let plain: String = step
            .chars()
            .map(|c| if allowed(c) { c } else { '_' })
            .collect();
        let hash = blake3::hash(step.as_bytes()).to_hex();
        format!("{}-{}", plain.trim_end_matches('_'), &hash[..8])
    };
    format!("sluice-{}-{}-{}", task.key.run_id, step, task.key.attempt)
}

/// The body of `POST /containers/create` for this attempt.
pub fn container_body(
    task: &TaskSpec,
    worker: &str,
    secrets: &[(String, String)],
    limits: &ContainerLimits,
) -> ContainerCreateBody {
    let (entrypoint, cmd) = match &task.command {
        // `run:` goes through the image's shell, as `docker run IMAGE sh -c TEXT` would.
        StepCommand::Shell(text) => (
            vec!["/bin/sh".to_string(), "-c".to_string()],
            vec![text.clone()],
        ),
        // `command:` replaces the image's entrypoint: the step says exactly what runs.
        StepCommand::Exec(argv) => (argv.clone(), Vec::new()),
        // Built-in kinds never reach a container (the executor runs them in the worker).
        StepCommand::Builtin(kind) => (vec![format!("sluice-builtin-{kind}")], Vec::new()),
    };
    let env = task
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(task.path_env().iter().map(|(k, v)| format!("{k}={v}")))
        .chain(secrets.iter().map(|(k, v)| format!("{k}={v}")))
        .chain(visible_devices(task).map(|devices| format!("CUDA_VISIBLE_DEVICES={devices}")))
        .collect();
    let labels = HashMap::from([
        (LABEL_RUN.to_string(), task.key.run_id.clone()),
        (LABEL_STEP.to_string(), task.key.step.clone()),
        (LABEL_ATTEMPT.to_string(), task.key.attempt.to_string()),
        (LABEL_WORKER.to_string(), worker.to_string()),
    ]);
    let workdir = task.workdir.display().to_string();
    ContainerCreateBody {
        image: task.image.clone(),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        env: Some(env),
        labels: Some(labels),
        working_dir: (!workdir.is_empty()).then_some(workdir),
        user: task.user.clone(),
        tty: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(host_config(task, limits)),
        ..Default::default()
    }
}

/// Limits, mounts and devices. Never privileged, no new privileges, the default bridge network,
/// and nothing mounted but the attempt's inputs (read-only) and its `step/` folder.
pub fn host_config(task: &TaskSpec, limits: &ContainerLimits) -> HostConfig {
    // Mounts rather than `binds` strings: a data dir whose path holds a `:` still works.
    let bind = |path: &Path, read_only: bool| Mount {
        target: Some(path.display().to_string()),
        source: Some(path.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    };
    // Inputs are hard links into the worker's blob cache: read-only, so a step cannot change
    // what later steps get.
    let mut mounts = vec![bind(&task.in_dir(), true)];
    // Only the step's part of the attempt's folder is writable: the logs beside it stay out of
    // the container's reach.
    mounts.push(bind(&task.step_dir(), false));
    let memory = task.resources.memory.map(|m| m.min(i64::MAX as u64) as i64);
    HostConfig {
        mounts: Some(mounts),
        nano_cpus: task.resources.cpu.map(|c| (c * 1e9).round() as i64),
        memory,
        // Equal to the memory limit: no swap on top, so the limit is the limit.
        memory_swap: memory,
        pids_limit: Some(limits.pids_limit),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        network_mode: Some("bridge".to_string()),
        device_requests: task
            .resources
            .gpu
            .as_ref()
            .map(|gpu| vec![device_request(task, gpu)]),
        ..Default::default()
    }
}

/// The `docker run --gpus` request: the devices the worker leased when it has an inventory,
/// otherwise the request as the step wrote it.
pub fn device_request(task: &TaskSpec, gpu: &GpuRequest) -> DeviceRequest {
    let base = DeviceRequest {
        driver: Some(String::new()),
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        ..Default::default()
    };
    if !task.gpus.is_empty() {
        return DeviceRequest {
            device_ids: Some(task.gpus.clone()),
            ..base
        };
    }
    match gpu {
        GpuRequest::Count(n) => DeviceRequest {
            count: Some(i64::from(*n)),
            ..base
        },
        GpuRequest::All => DeviceRequest {
            count: Some(-1),
            ..base
        },
        GpuRequest::Ids(ids) => DeviceRequest {
            device_ids: Some(ids.clone()),
            ..base
        },
    }
}

/// Inside the container Docker renumbers the devices it passes from 0. For `all` without an
/// inventory the count is unknown, and CUDA takes no `all`: the variable is left unset.
fn visible_devices(task: &TaskSpec) -> Option<String> {
    let count = match (&task.gpus, task.resources.gpu.as_ref()?) {
        (ids, _) if !ids.is_empty() => ids.len(),
        (_, GpuRequest::Count(n)) => *n as usize,
        (_, GpuRequest::Ids(ids)) => ids.len(),
        (_, GpuRequest::All) => return None,
    };
    Some(
        (0..count)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{TaskKey, TaskResources};

    fn task(gpu: Option<GpuRequest>, leased: &[&str]) -> TaskSpec {
        let key = TaskKey {
            run_id: "R1".into(),
            step: "train".into(),
            attempt: 2,
        };
        let command = StepCommand::Shell("python train.py".into());
        TaskSpec {
            pipeline: "p".into(),
            queue: "gpu".into(),
            image: Some("trainer:1".into()),
            user: Some("1000:1000".into()),
            resources: TaskResources {
                cpu: Some(1.5),
                memory: Some(512 << 20),
                gpu,
            },
            gpus: leased.iter().map(|s| s.to_string()).collect(),
            env: vec![("PARAM_X".into(), "1".into())],
            workdir: "/app".into(),
            ..TaskSpec::new(key, command, "/data/runs/R1/train/2".into())
        }
    }

    #[test]
    fn the_container_is_named_labelled_confined_and_mounted() {
        let t = task(None, &[]);
        assert_eq!(container_name(&t), "sluice-R1-train-2");
        let mut cell = t.clone();
        cell.key.step = "train[lr=0.1,depth=3]".into();
        let name = container_name(&cell);
        assert!(
            name.starts_with("sluice-R1-train_lr_0.1_depth_3-"),
            "{name}"
        );
        assert!(name.ends_with("-2") && name.len() == "sluice-R1-train_lr_0.1_depth_3-".len() + 10);
        cell.key.step = "train[lr=0.1,depth=5]".into();
        assert_ne!(
            container_name(&cell),
            name,
            "each expansion has its own container"
        );
        let body = container_body(
            &t,
            "w1",
            &[("TOKEN".into(), "s".into())],
            &ContainerLimits::default(),
        );
        assert_eq!(
            body.entrypoint.as_deref(),
            Some(&["/bin/sh".to_string(), "-c".to_string()][..])
        );
        assert_eq!(
            body.cmd.as_deref(),
            Some(&["python train.py".to_string()][..])
        );
        assert_eq!(body.working_dir.as_deref(), Some("/app"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let env = body.env.unwrap();
        assert!(env.contains(&"PARAM_X=1".to_string()) && env.contains(&"TOKEN=s".to_string()));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_WORKER], "w1");
        assert_eq!(labels[LABEL_ATTEMPT], "2");
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.memory, Some(512 << 20));
        assert_eq!(host.memory_swap, Some(512 << 20));
        assert_eq!(host.privileged, Some(false));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_string()])
        );
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        let mounts: Vec<(String, bool)> = host
            .mounts
            .unwrap()
            .into_iter()
            .map(|m| (m.source.unwrap(), m.read_only.unwrap()))
            .collect();
        assert_eq!(
            mounts,
            vec![
                ("/data/runs/R1/train/2/in".to_string(), true),
                ("/data/runs/R1/train/2/step".to_string(), false)
            ]
        );
        assert_eq!(host.device_requests, None);
    }

    #[test]
    fn gpu_forms_map_to_docker_device_requests_like_docker_run_gpus() {
        let caps = Some(vec![vec!["gpu".to_string()]]);
        let request = |t: &TaskSpec| {
            container_body(t, "w", &[], &ContainerLimits::default())
                .host_config
                .unwrap()
                .device_requests
                .unwrap()
        };
        // --gpus 2
        let r = request(&task(Some(GpuRequest::Count(2)), &[]));
        assert_eq!(
            r,
            vec![DeviceRequest {
                driver: Some(String::new()),
                count: Some(2),
                capabilities: caps.clone(),
                ..Default::default()
            }]
        );
        // --gpus all
        let r = request(&task(Some(GpuRequest::All), &[]));
        assert_eq!(r[0].count, Some(-1));
        assert_eq!(r[0].device_ids, None);
        // --gpus '"device=0,3"'
        let r = request(&task(
            Some(GpuRequest::Ids(vec!["0".into(), "3".into()])),
            &[],
        ));
        assert_eq!(
            r[0].device_ids,
            Some(vec!["0".to_string(), "3".to_string()])
        );
        assert_eq!(r[0].count, None);
        // A worker with an inventory passes exactly the devices it leased.
        let t = task(Some(GpuRequest::Count(2)), &["2", "3"]);
        let r = request(&t);
        assert_eq!(
            r[0].device_ids,
            Some(vec!["2".to_string(), "3".to_string()])
        );
        assert_eq!(r[0].count, None);
        let env = container_body(&t, "w", &[], &ContainerLimits::default())
            .env
            .unwrap();
        assert!(
            env.contains(&"CUDA_VISIBLE_DEVICES=0,1".to_string()),
            "{env:?}"
        );
    }

    #[test]
    fn exec_form_replaces_the_entrypoint() {
        let mut t = task(None, &[]);
        t.command = StepCommand::Exec(vec!["python".into(), "-c".into(), "print(1)".into()]);
        t.workdir = "".into();
        let body = container_body(&t, "w", &[], &ContainerLimits::default());
        assert_eq!(body.entrypoint.unwrap(), vec!["python", "-c", "print(1)"]);
        assert_eq!(body.cmd.unwrap(), Vec::<String>::new());
        assert_eq!(body.working_dir, None, "the image's own workdir");
    }
}
