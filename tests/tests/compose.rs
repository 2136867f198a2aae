//! `docker-compose.yml` at the workspace root: valid for the compose tool that is installed, and
//! it holds what the deployment needs (Redis, a scheduler, workers with the Docker socket, a GPU
//! worker, healthchecks, and Prometheus with Grafana in the `monitoring` profile).

use std::process::{Command, Output};

use serde_json::Value;
use sluice_tests::{text, workspace_root};

/// The compose tool here: `docker compose` (v2) or else `docker-compose` (v1).
#[derive(Clone, Copy)]
enum Compose {
    V2,
    V1,
}

impl Compose {
    /// The tool that answers `version`, if any. Without one the test is skipped with a printed
    /// reason, unless `SLUICE_REQUIRE_DOCKER=1`, where it fails.
    fn find() -> Option<Compose> {
        let answers = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .is_ok_and(|out| out.status.success())
        };
        if answers("docker", &["compose", "version"]) {
            return Some(Compose::V2);
        }
        if answers("docker-compose", &["version"]) {
            return Some(Compose::V1);
        }
        let why = "neither `docker compose` nor `docker-compose` is installed";
        if std::env::var("SLUICE_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("SLUICE_REQUIRE_DOCKER=1 but {why}");
        }
        eprintln!("skipped: {why}; set SLUICE_REQUIRE_DOCKER=1 to fail instead");
        None
    }

    /// Runs `compose -f docker-compose.yml [--profile P]... config ARGS...` in the workspace root.
    fn config(self, profiles: &[&str], args: &[&str]) -> Output {
        let mut command = match self {
            Compose::V2 => {
                let mut c = Command::new("docker");
                c.arg("compose");
                c
            }
            Compose::V1 => Command::new("docker-compose"),
        };
        command.args(["-f", "docker-compose.yml"]);
        for profile in profiles {
            command.args(["--profile", profile]);
        }
        let out = command
            .arg("config")
            .args(args)
            .current_dir(workspace_root())
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROFILES")
            .output()
            .expect("run the compose tool");
        assert!(
            out.status.success(),
            "compose config {args:?} failed ({}):\n{}",
            out.status,
            text(&out.stderr)
        );
        out
    }

    /// The resolved file, with the `gpu` and `monitoring` profiles on (v2 leaves inactive
    /// profiles out).
    fn resolved(self) -> Value {
        let profiles = ["gpu", "monitoring"];
        match self {
            Compose::V2 => {
                let out = self.config(&profiles, &["--format", "json"]);
                serde_json::from_slice(&out.stdout).expect("config --format json prints JSON")
            }
            Compose::V1 => {
                let out = self.config(&profiles, &[]);
                serde_yaml::from_slice(&out.stdout).expect("config prints YAML")
            }
        }
    }
}

/// Whether a service mounts `target` (short `src:dst[:mode]` or long `{target}` syntax).
fn mounts(service: &Value, target: &str) -> bool {
    service["volumes"].as_array().is_some_and(|volumes| {
        volumes.iter().any(|v| match v {
            Value::String(s) => s.split(':').nth(1) == Some(target),
            v => v["target"] == target,
        })
    })
}

/// Whether a service reserves GPUs: a device request whose capabilities include `gpu`.
fn reserves_gpus(service: &Value) -> bool {
    service["deploy"]["resources"]["reservations"]["devices"]
        .as_array()
        .is_some_and(|devices| {
            devices.iter().any(|d| {
                d["capabilities"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == "gpu"))
            })
        })
}

/// Whether a service has a healthcheck that is not disabled.
fn has_healthcheck(service: &Value) -> bool {
    let check = &service["healthcheck"];
    check["test"].as_array().is_some_and(|t| !t.is_empty()) && check["disable"] != true
}

#[test]
fn the_compose_file_is_valid_and_deploys_redis_a_scheduler_and_workers() {
    let Some(compose) = Compose::find() else {
        return;
    };
    compose.config(&[], &["--quiet"]);

    let config = compose.resolved();
    let services = config["services"]
        .as_object()
        .unwrap_or_else(|| panic!("no services in {config}"));
    for name in ["redis", "scheduler", "worker"] {
        assert!(services.contains_key(name), "no `{name}` service");
    }
    for name in ["redis", "scheduler"] {
        assert!(
            has_healthcheck(&services[name]),
            "`{name}` has no healthcheck"
        );
    }
    let workers: Vec<_> = services
        .iter()
        .filter(|(name, _)| name.starts_with("worker"))
        .collect();
    for (name, service) in &workers {
        assert!(
            mounts(service, "/var/run/docker.sock"),
            "`{name}` does not mount the Docker socket"
        );
    }
    assert!(
        workers.iter().any(|(_, service)| reserves_gpus(service)),
        "no worker service reserves GPUs (deploy.resources.reservations.devices with [gpu])"
    );
    // Artifacts travel through an S3-compatible store, and no folder is shared between the
    // scheduler and the workers.
    assert!(services.contains_key("minio"), "no S3-compatible service");
    let sources = |service: &Value| -> Vec<String> {
        service["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| match v {
                Value::String(s) => s.split(':').next().map(str::to_string),
                v if v["type"] == "volume" => v["source"].as_str().map(str::to_string),
                _ => None,
            })
            .filter(|source| !source.starts_with('.') && !source.starts_with('/'))
            .collect()
    };
    let scheduler = &services["scheduler"];
    for (name, service) in workers
        .iter()
        .map(|(n, s)| (n.as_str(), *s))
        .chain([("scheduler", scheduler)])
    {
        let store = service["environment"]["SLUICE_ARTIFACTS"]
            .as_str()
            .unwrap_or_default();
        assert!(
            store.starts_with("s3://"),
            "`{name}` keeps artifacts in `{store}`"
        );
    }
    for (name, service) in &workers {
        let shared: Vec<String> = sources(service)
            .into_iter()
            .filter(|v| sources(scheduler).contains(v))
            .collect();
        assert!(
            shared.is_empty(),
            "`{name}` shares {shared:?} with the scheduler"
        );
    }
}

#[test]
fn the_monitoring_profile_runs_prometheus_and_grafana_on_the_examples_files() {
    let Some(compose) = Compose::find() else {
        return;
    };
    let config = compose.resolved();
    let services = &config["services"];
    // Only with `--profile monitoring`: a plain `up` starts neither.
    for name in ["prometheus", "grafana"] {
        let profiles = &services[name]["profiles"];
        assert!(
            profiles
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p == "monitoring")),
            "`{name}` is not in the monitoring profile: {profiles}"
        );
    }
    let source = |service: &Value, target: &str| -> String {
        service["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|v| match v {
                Value::String(s) => {
                    let mut parts = s.split(':');
                    let source = parts.next()?;
                    (parts.next() == Some(target)).then(|| source.to_string())
                }
                v => (v["target"] == target).then(|| v["source"].as_str().map(str::to_string))?,
            })
            .unwrap_or_else(|| panic!("nothing mounted at {target}: {service}"))
    };
    let root = workspace_root();
    let mounted = [
        (
            "prometheus",
            "/etc/prometheus/prometheus.yml",
            "examples/grafana/prometheus.yml",
        ),
        (
            "grafana",
            "/etc/grafana/provisioning",
            "examples/grafana/provisioning",
        ),
        (
            "grafana",
            "/etc/grafana/dashboards",
            "examples/grafana/dashboards",
        ),
    ];
    for (name, target, file) in mounted {
        let source = source(&services[name], target);
        assert!(
            source.ends_with(file) && root.join(file).exists(),
            "`{name}` mounts {source} at {target}, not {file}"
        );
    }
    // The scrape config the profile runs names the scheduler service and reads the token file
    // Prometheus' entrypoint writes.
    let scrape = std::fs::read_to_string(root.join("examples/grafana/prometheus.yml")).unwrap();
    assert!(scrape.contains("scheduler:8080"), "{scrape}");
    let command = services["prometheus"]["command"].to_string();
    assert!(command.contains("/tmp/sluice-token"), "{command}");
    assert!(
        scrape.contains("credentials_file: /tmp/sluice-token"),
        "{scrape}"
    );
}
