//! What the scheduler does with a ready task before it is queued, for steps that touch the
//! model registry.
//!
//! `register` and `gate` read and write the registry, which only the scheduler holds, so they
//! end here, without a worker: their result is applied like a cache hit's. For the kinds a
//! worker runs, what names the registry is resolved into the task: a step's `models:` inputs
//! become artifacts under `$SLUICE_IN/models/`, and `drift`'s references become paths the
//! worker opens (`DriftSpec` in `TaskSpec.with`). A registry lookup that fails fails the step
//! with a message naming what exists; nothing is queued for it.

use std::collections::{BTreeMap, HashSet};

use indexmap::IndexMap;
use sluice_worker::artifacts::{ArtifactKind, ArtifactRef, TaskInput};
use sluice_worker::drift::DriftSpec;
use sluice_worker::executor::deploy::{DeploySpec, HealthSpec};
use sluice_worker::task::{now_ms, Outcome, TaskResult, TaskSpec};

use crate::models::gate::{self, GateReport};
use crate::models::{AliasAction, ModelRef, ModelVersion, RegistryError, Selector, TrainingInput};
use crate::spec::builtins::{Builtin, DataRef, DeployArgs, DriftArgs, RegisterArgs, VersionFrom};
use crate::spec::{Action, Pipeline, Step};
use crate::store::models::MoveRequest;
use crate::store::{RunRecord, StepRecord, Store};

/// The folder under `$SLUICE_IN` that registry inputs are materialised in.
pub const MODELS_INPUT: &str = "models";

/// What the run's records say, for resolving a task.
pub struct Context<'a> {
    /// The registry.
    pub store: &'a Store,
    /// The run.
    pub run: &'a RunRecord,
    /// Its pipeline.
    pub pipeline: &'a Pipeline,
    /// Its steps as they stand.
    pub steps: &'a IndexMap<String, StepRecord>,
}

/// A task after [`prepare`].
pub struct Prepared {
    /// `Ok` to queue it, `Err` when it ended here.
    pub task: Result<TaskSpec, TaskResult>,
    /// A gate's table, to keep on the step's record.
    pub gate: Option<GateReport>,
    /// The versions its `models:` inputs resolved to (`current` → `churn:3`).
    pub models: BTreeMap<String, String>,
}

/// Ends `register` and `gate` tasks here; resolves registry inputs of the others. Tasks of
/// steps that name no model pass untouched.
pub fn prepare(cx: &Context<'_>, mut task: TaskSpec) -> Prepared {
    let mut prepared = Prepared {
        task: Err(TaskResult::error(task.key.clone(), "")),
        gate: None,
        models: BTreeMap::new(),
    };
    let Some(step) = cx.pipeline.steps.get(&task.key.step) else {
        prepared.task = Ok(task);
        return prepared;
    };
    let builtin = match &step.action {
        Action::Uses { builtin, .. } => Some(builtin.as_ref()),
        _ => None,
    };
    let ended = |outcome: Result<TaskResult, String>| {
        outcome.unwrap_or_else(|message| failed(&task, message))
    };
    match builtin {
        Some(Builtin::Register(args)) => {
            prepared.task = Err(ended(register(cx, &task, step, args)));
            return prepared;
        }
        Some(Builtin::Deploy(args)) => {
            let mut inputs = Vec::new();
            match deploy_spec(cx, args, &mut inputs) {
                Ok(Ok(spec)) => {
                    task.with = serde_json::to_value(spec).ok();
                    task.inputs.push(TaskInput {
                        step: MODELS_INPUT.to_string(),
                        artifacts: inputs,
                    });
                    prepared.task = Ok(task);
                }
                Ok(Err(version)) => {
                    let outputs = BTreeMap::from([("deployed".to_string(), version.to_string())]);
                    let message = format!(
                        "{}:{version} already holds {}@{}; nothing to do",
                        args.model, args.model, args.alias
                    );
                    prepared.task = Err(succeeded(&task, outputs, message));
                }
                Err(message) => prepared.task = Err(failed(&task, message)),
            }
            return prepared;
        }
        Some(Builtin::Gate(spec)) => {
            let report = judge(cx, spec);
            // A verdict fails the step (and is never retried: it would not change); a registry
            // that could not be read is an error, which the retry policy may try again.
            prepared.task = Err(match &report {
                Ok(report) => gate_result(&task, report),
                Err(message) => TaskResult::error(task.key.clone(), message.clone()),
            });
            prepared.gate = report.ok();
            return prepared;
        }
        _ => {}
    }
    let mut inputs = Vec::new();
    match model_inputs(cx, step, &mut task, &mut inputs) {
        Ok(resolved) => prepared.models = resolved,
        Err(message) => {
            prepared.task = Err(failed(&task, message));
            return prepared;
        }
    }
    if let Some(Builtin::Drift(args)) = builtin {
        match drift_spec(cx, args, &mut inputs) {
            Ok(spec) => task.with = serde_json::to_value(spec).ok(),
            Err(message) => {
                prepared.task = Err(failed(&task, message));
                return prepared;
            }
        }
    }
    if !inputs.is_empty() {
        task.inputs.push(TaskInput {
            step: MODELS_INPUT.to_string(),
            artifacts: inputs,
        });
    }
    prepared.task = Ok(task);
    prepared
}

/// A result that fails `task` with `message`.
fn failed(task: &TaskSpec, message: String) -> TaskResult {
    let mut result = TaskResult::error(task.key.clone(), message);
    result.outcome = Outcome::Failed;
    result
}

/// A result that ends `task` successfully with `outputs` and `message`.
fn succeeded(task: &TaskSpec, outputs: BTreeMap<String, String>, message: String) -> TaskResult {
    let mut result = TaskResult::error(task.key.clone(), message);
    result.outcome = Outcome::Succeeded;
    result.outputs = outputs;
    result
}

/// Registers the output `args.from` names as the next version of `args.model`, with the
/// lineage the run's records hold. A step run again after a crash gets the version it
/// registered the first time (the store keeps each step's effect).
fn register(
    cx: &Context<'_>,
    task: &TaskSpec,
    step: &Step,
    args: &RegisterArgs,
) -> Result<TaskResult, String> {
    let source = cx
        .steps
        .get(&args.from.step)
        .ok_or_else(|| format!("step `{}` is not in this run", args.from.step))?;
    let artifact = source
        .artifacts
        .iter()
        .find(|a| a.path_name() == args.from.path)
        .cloned()
        .ok_or_else(|| {
            let recorded: Vec<&str> = source.artifacts.iter().map(|a| a.name.as_str()).collect();
            format!(
                "step `{}` recorded no output `{}`; it recorded: {}",
                args.from.step,
                args.from.path,
                crate::models::list_or_none(recorded)
            )
        })?;
    let upstream = upstream_of(cx.pipeline, &step.name);
    let metrics = cx
        .steps
        .iter()
        .filter(|(name, record)| upstream.contains(name.as_str()) && !record.metrics.is_empty())
        .map(|(name, record)| (name.clone(), record.metrics.clone()))
        .collect();
    let training_data = cx
        .pipeline
        .steps
        .get(&args.from.step)
        .map(|producer| {
            producer
                .depends
                .iter()
                .filter_map(|dep| cx.steps.get(dep))
                .flat_map(|dep| {
                    dep.artifacts.iter().map(|artifact| TrainingInput {
                        step: dep.name.clone(),
                        artifact: artifact.clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let version = ModelVersion {
        model: args.model.clone(),
        version: 0,
        artifact,
        pipeline: cx.run.pipeline.clone(),
        run_id: cx.run.id.clone(),
        step: args.from.step.clone(),
        registered_by: step.name.clone(),
        metrics,
        params: cx.run.params.clone(),
        training_data,
        commit: cx.run.commit.clone(),
        image_digest: source.image_digest.clone(),
        created_ms: now_ms(),
    };
    let who = format!("run {}/{}", cx.run.id, step.name);
    let registered = cx
        .store
        .register_model(version, args.alias.as_deref(), &who)
        .map_err(|err| format!("cannot register `{}`: {err}", args.model))?;
    let outputs = BTreeMap::from([
        ("model".to_string(), registered.model.clone()),
        ("version".to_string(), registered.version.to_string()),
    ]);
    let mut message = format!("registered {}:{}", registered.model, registered.version);
    if let Some(alias) = &args.alias {
        message.push_str(&format!(" as {}@{alias}", registered.model));
    }
    Ok(succeeded(task, outputs, message))
}

/// What a `deploy` worker needs: the version and the one the alias holds now, both placed
/// under `models/` (`model/`, `previous/`). `Ok(Err(version))` when the alias already holds
/// the version: nothing to deploy.
fn deploy_spec(
    cx: &Context<'_>,
    args: &DeployArgs,
    inputs: &mut Vec<ArtifactRef>,
) -> Result<Result<DeploySpec, u64>, String> {
    let number = match &args.version {
        VersionFrom::Number(n) => *n,
        VersionFrom::Step(step) => cx
            .steps
            .get(step)
            .and_then(|s| s.outputs.get("version"))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("step `{step}` recorded no version"))?,
    };
    let version = resolve(
        cx.store,
        &ModelRef {
            model: args.model.clone(),
            selector: Selector::Version(number),
        },
    )?;
    let previous = match cx.store.alias(&args.model, &args.alias) {
        Ok(held) if held.version == number => return Ok(Err(number)),
        Ok(held) => Some(
            cx.store
                .model_version(&args.model, held.version)
                .map_err(|err| format!("cannot read `{}@{}`: {err}", args.model, args.alias))?,
        ),
        Err(err) if err.is_not_found() => None,
        Err(err) => {
            return Err(format!(
                "cannot read `{}@{}`: {err}",
                args.model, args.alias
            ))
        }
    };
    inputs.push(placed(&version.artifact, "model"));
    if let Some(previous) = &previous {
        inputs.push(placed(&previous.artifact, "previous"));
    }
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(Ok(DeploySpec {
        model: args.model.clone(),
        version: number,
        alias: args.alias.clone(),
        run: args.run.clone(),
        health: HealthSpec {
            url: args.health.url.clone(),
            expect_status: args.health.expect_status,
            timeout_ms: millis(args.health.timeout),
            interval_ms: millis(args.health.interval),
        },
        previous: previous.map(|p| p.version),
    }))
}

/// Moves a succeeded `deploy` step's alias to the version it deployed, before its success is
/// recorded; a step that already moved it (a result delivered twice) gets its earlier move.
/// When the alias cannot be moved the step fails, saying so.
pub fn settle_deploy(cx: &Context<'_>, result: &mut TaskResult) {
    let Some(step) = cx.pipeline.steps.get(&result.key.step) else {
        return;
    };
    let Action::Uses { builtin, .. } = &step.action else {
        return;
    };
    let Builtin::Deploy(args) = builtin.as_ref() else {
        return;
    };
    if result.outcome != Outcome::Succeeded {
        return;
    }
    let Some(version) = result.outputs.get("deployed").and_then(|v| v.parse().ok()) else {
        result.outcome = Outcome::Failed;
        result.message = Some("the deploy step reported no deployed version".into());
        return;
    };
    let who = format!("run {}/{}", cx.run.id, step.name);
    let request = MoveRequest {
        model: &args.model,
        alias: &args.alias,
        action: AliasAction::Deploy,
        who: &who,
        reason: None,
    };
    match cx
        .store
        .move_alias(&request, version, Some((&cx.run.id, &step.name)))
    {
        Ok(moved) => {
            let note = match moved.from {
                Some(from) if moved.moved => {
                    format!("{}@{}: {from} → {}", args.model, args.alias, moved.to)
                }
                _ => format!("{}@{} → {}", args.model, args.alias, moved.to),
            };
            let message = result.message.take().unwrap_or_default();
            result.message = Some(format!("{message}; {note}"));
        }
        Err(err) => {
            result.outcome = Outcome::Failed;
            result.message = Some(format!(
                "deployed {}:{version}, but `{}@{}` could not be moved: {err}",
                args.model, args.model, args.alias
            ));
        }
    }
}

/// Every step `name` depends on, directly or through others.
fn upstream_of<'p>(pipeline: &'p Pipeline, name: &str) -> HashSet<&'p str> {
    let mut seen = HashSet::new();
    let mut todo: Vec<&str> = pipeline
        .steps
        .get(name)
        .map(|s| s.depends.iter().map(String::as_str).collect())
        .unwrap_or_default();
    while let Some(next) = todo.pop() {
        if let Some((key, step)) = pipeline.steps.get_key_value(next) {
            if seen.insert(key.as_str()) {
                todo.extend(step.depends.iter().map(String::as_str));
            }
        }
    }
    seen
}

/// The gate's table: `spec`'s metrics from the run's records, against the compared version
/// when the registry has it (with none, the thresholds alone decide). `Err` only when the
/// registry could not be read.
fn judge(cx: &Context<'_>, spec: &gate::GateSpec) -> Result<GateReport, String> {
    let metrics: IndexMap<String, serde_json::Map<String, serde_json::Value>> = spec
        .metrics_from
        .iter()
        .filter_map(|name| Some((name.clone(), cx.steps.get(name)?.metrics.clone())))
        .collect();
    let compared = match &spec.compare_to {
        None => None,
        Some(reference) => match cx.store.resolve_model(reference) {
            Ok(version) => Some(version),
            Err(err) if err.is_not_found() => None,
            Err(err) => return Err(format!("cannot read `{reference}`: {err}")),
        },
    };
    let mut report = gate::evaluate(spec, &metrics, compared.as_ref());
    if let (Some(reference), None) = (&spec.compare_to, &compared) {
        report.compared_to = Some(format!("{reference} (not registered yet: thresholds only)"));
    }
    Ok(report)
}

/// The gate step's result: succeeded with `passed=true`, or failed with the failing rows.
fn gate_result(task: &TaskSpec, report: &GateReport) -> TaskResult {
    let outputs = BTreeMap::from([("passed".to_string(), report.passed.to_string())]);
    let mut result = succeeded(task, outputs, report.summary());
    if !report.passed {
        result.outcome = Outcome::Failed;
    }
    result
}

/// Resolves the step's `models:` into artifacts under `models/<name>/`, with
/// `SLUICE_MODEL_<NAME>_VERSION` set; returns what each name resolved to.
fn model_inputs(
    cx: &Context<'_>,
    step: &Step,
    task: &mut TaskSpec,
    inputs: &mut Vec<ArtifactRef>,
) -> Result<BTreeMap<String, String>, String> {
    let mut resolved = BTreeMap::new();
    for (name, reference) in &step.models {
        let version = resolve(cx.store, reference)?;
        inputs.push(placed(&version.artifact, name));
        task.env
            .push((model_version_env(name), version.version.to_string()));
        resolved.insert(
            name.clone(),
            format!("{}:{}", version.model, version.version),
        );
    }
    Ok(resolved)
}

/// The variable a model input's version reaches the step in: `current` →
/// `SLUICE_MODEL_CURRENT_VERSION`.
pub fn model_version_env(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SLUICE_MODEL_{upper}_VERSION")
}

/// `artifact` renamed to land under `models/<folder>/`: a folder's files directly in it, a file
/// by its own name.
fn placed(artifact: &ArtifactRef, folder: &str) -> ArtifactRef {
    let mut placed = artifact.clone();
    placed.name = match artifact.kind {
        ArtifactKind::Dir => format!("{folder}/"),
        ArtifactKind::File => {
            let file = artifact.path_name().rsplit('/').next().unwrap_or("model");
            format!("{folder}/{file}")
        }
    };
    placed
}

fn resolve(store: &Store, reference: &ModelRef) -> Result<ModelVersion, String> {
    store.resolve_model(reference).map_err(|err| match err {
        RegistryError::Store(err) => format!("cannot read `{reference}` from the registry: {err}"),
        other => format!("`{reference}`: {other}"),
    })
}

/// `drift`'s arguments as the worker takes them: each batch as a path under `$SLUICE_IN` (an
/// upstream output, or a version's training data materialised under `models/`) or an
/// absolute path.
fn drift_spec(
    cx: &Context<'_>,
    args: &DriftArgs,
    inputs: &mut Vec<ArtifactRef>,
) -> Result<DriftSpec, String> {
    let mut path = |role: &str, data: &DataRef| -> Result<String, String> {
        Ok(match data {
            DataRef::Output(output) => format!("{}/{}", output.step, output.path),
            DataRef::Path(path) => cx.run.base_dir.join(path).display().to_string(),
            DataRef::TrainingData { model, file } => {
                let version = resolve(cx.store, model)?;
                let (artifact, inside) = training_file(&version, model, file.as_deref())?;
                let folder = format!("{role}.training-data");
                let mut placed = artifact.clone();
                placed.name = format!("{folder}/{}", artifact.name);
                inputs.push(placed);
                format!("{MODELS_INPUT}/{folder}/{inside}")
            }
        })
    };
    Ok(DriftSpec {
        reference: path("reference", &args.reference)?,
        current: path("current", &args.current)?,
        format: args.format,
        columns: args.columns.clone(),
        categorical: args.categorical.clone(),
        method: args.method,
        threshold: args.threshold,
        drift_share: args.drift_share,
    })
}

/// The training-data artifact `file` names (its name, or a path inside a folder artifact),
/// or the only one when `file` is not given; with the path to the file from the artifact's
/// folder.
fn training_file<'v>(
    version: &'v ModelVersion,
    model: &ModelRef,
    file: Option<&str>,
) -> Result<(&'v ArtifactRef, String), String> {
    let names = || {
        crate::models::list_or_none(
            version
                .training_data
                .iter()
                .map(|t| format!("{}/{}", t.step, t.artifact.name)),
        )
    };
    let artifacts = || version.training_data.iter().map(|t| &t.artifact);
    match file {
        None => match version.training_data.as_slice() {
            [only] if only.artifact.kind == ArtifactKind::File => {
                Ok((&only.artifact, only.artifact.name.clone()))
            }
            _ => Err(format!(
                "`{model}:training-data` must name a file ({}:{} was trained on: {})",
                version.model,
                version.version,
                names()
            )),
        },
        Some(file) => artifacts()
            .find_map(|a| {
                let name = a.path_name();
                if a.kind == ArtifactKind::File && name == file {
                    return Some((a, name.to_string()));
                }
                let below = file.strip_prefix(name)?.strip_prefix('/')?;
                (a.kind == ArtifactKind::Dir && !below.is_empty())
                    .then(|| (a, format!("{name}/{below}")))
            })
            .ok_or_else(|| {
                format!(
                    "{}:{} was not trained on `{file}`; its training data: {}",
                    version.model,
                    version.version,
                    names()
                )
            }),
    }
}
