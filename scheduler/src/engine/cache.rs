//! Step caching (`cache: true`): a ready step whose key matches an earlier successful attempt
//! is not run; that attempt's outputs, recorded values and metrics are reused.
//!
//! The key is the BLAKE3 of named components: the command, the image, the env (secret names,
//! never values), the workdir, the declared outputs, every param, the ids of every input
//! artifact, the hash of each file matched by `cache.inputs` and a format version. Keeping the
//! components, not only the key, lets a miss say what changed. An image step's hit is only
//! proposed: the worker runs it anyway unless the image it has now has the digest the earlier
//! attempt ran (a moved tag is a miss, never a stale hit).

use std::collections::BTreeMap;
use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sluice_worker::artifacts::{ArtifactRef, Artifacts};
use sluice_worker::task::{CacheProbe, TaskResult};

use crate::spec::Step;
use crate::store::{RunRecord, StepRecord, Store, StoreError};

/// Bumped when the meaning of a key changes, so old entries stop matching.
pub const CACHE_FORMAT: &str = "1";
/// Most files `cache.inputs` may match for one step.
const MAX_INPUT_FILES: usize = 100_000;

/// What caching decided for a step, kept on its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CacheNote {
    /// The key.
    pub key: String,
    /// The pipeline (the cache is per pipeline and step).
    pub pipeline: String,
    /// What went into the key, by name.
    pub components: BTreeMap<String, String>,
    /// The run whose attempt was reused, on a hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit_from: Option<String>,
    /// Why there was no hit (`param lr changed`, `first run with this key`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub miss: Vec<String>,
}

/// An earlier success, reusable by key (`k/<pipeline>/<step>/<key>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The run that made it.
    pub run_id: String,
    /// Its declared outputs.
    pub artifacts: Vec<ArtifactRef>,
    /// Its `$SLUICE_OUTPUTS`.
    pub outputs: BTreeMap<String, String>,
    /// Its metrics.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// The image id it ran in.
    pub image_digest: Option<String>,
}

impl CacheEntry {
    /// The entry a succeeded step with a cache note leaves.
    pub fn of(step: &StepRecord) -> CacheEntry {
        CacheEntry {
            run_id: step.run_id.clone(),
            artifacts: step.artifacts.clone(),
            outputs: step.outputs.clone(),
            metrics: step.metrics.clone(),
            image_digest: step.image_digest.clone(),
        }
    }
}

/// The components of `step`'s key in `run`, its upstream steps as `steps` has them.
pub fn components(
    run: &RunRecord,
    step: &Step,
    steps: &IndexMap<String, StepRecord>,
    artifacts: &Artifacts,
) -> Result<BTreeMap<String, String>, String> {
    let hash = |text: &str| blake3::hash(text.as_bytes()).to_hex().to_string();
    let mut parts = BTreeMap::new();
    parts.insert("format".to_string(), CACHE_FORMAT.to_string());
    let command = match &step.action {
        crate::spec::Action::Shell(text) => format!("run:{text}"),
        crate::spec::Action::Exec(argv) => format!(
            "command:{}",
            serde_json::to_string(argv).unwrap_or_default()
        ),
        crate::spec::Action::Uses { kind, .. } => format!("uses:{kind}"),
    };
    parts.insert("command".into(), hash(&command));
    parts.insert("image".into(), step.image.clone().unwrap_or_default());
    let env: Vec<(&String, &String)> = step.env.iter().collect();
    parts.insert(
        "env".into(),
        hash(&serde_json::to_string(&(env, &step.secrets)).unwrap_or_default()),
    );
    parts.insert("workdir".into(), step.workdir.clone().unwrap_or_default());
    parts.insert("outputs".into(), step.outputs.join(","));
    for (name, value) in &run.params {
        parts.insert(format!("param {name}"), hash(value));
    }
    for dep in &step.depends {
        let ids: Vec<&str> = steps
            .get(dep)
            .map(|s| s.artifacts.iter().map(|a| a.id.as_str()).collect())
            .unwrap_or_default();
        parts.insert(format!("input {dep}"), ids.join(","));
    }
    if let Some(policy) = &step.cache {
        for (path, id) in input_files(&run.base_dir, &policy.inputs, artifacts)? {
            parts.insert(format!("file {path}"), id);
        }
    }
    Ok(parts)
}

/// Each file under `base` matched by `globs`, with its hash (through the hash cache: a file
/// that did not change is not read again). Links are not followed out of `base`.
fn input_files(
    base: &Path,
    globs: &[String],
    artifacts: &Artifacts,
) -> Result<Vec<(String, String)>, String> {
    let mut files = BTreeMap::new();
    for pattern in globs {
        let full = base.join(pattern);
        let matches = glob::glob(&full.to_string_lossy())
            .map_err(|err| format!("cache input `{pattern}`: {err}"))?;
        for path in matches.flatten() {
            let Ok(relative) = path.strip_prefix(base) else {
                continue;
            };
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|err| format!("cache input {}: {err}", path.display()))?;
            if !meta.is_file() {
                continue;
            }
            if files.len() >= MAX_INPUT_FILES {
                return Err(format!(
                    "cache inputs match more than {MAX_INPUT_FILES} files"
                ));
            }
            let id = artifacts
                .hash_path(&path)
                .map_err(|err| format!("cache input {}: {err}", path.display()))?;
            files.insert(relative.display().to_string(), id);
        }
    }
    Ok(files.into_iter().collect())
}

/// The key of these components.
pub fn key_of(components: &BTreeMap<String, String>) -> String {
    blake3::hash(&serde_json::to_vec(components).unwrap_or_default())
        .to_hex()
        .to_string()
}

/// What changed from `before` (the components of the newest success) to `now`, in words.
pub fn reasons(
    before: Option<&BTreeMap<String, String>>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let Some(before) = before else {
        return vec!["no earlier successful attempt".into()];
    };
    let mut reasons = Vec::new();
    for (name, value) in now {
        match before.get(name) {
            Some(old) if old == value => {}
            Some(_) => reasons.push(format!("{name} changed")),
            None => reasons.push(format!("{name} is new")),
        }
    }
    for name in before.keys().filter(|k| !now.contains_key(*k)) {
        reasons.push(format!("{name} is gone"));
    }
    if reasons.is_empty() {
        reasons.push("no earlier successful attempt with this key".into());
    }
    reasons
}

/// Named key components.
pub type Components = BTreeMap<String, String>;

/// The entry for `key`, and the components of the newest success of this step (for reasons).
pub fn lookup(
    store: &Store,
    pipeline: &str,
    step: &str,
    key: &str,
) -> Result<(Option<CacheEntry>, Option<Components>), StoreError> {
    Ok((
        store.cache_entry(pipeline, step, key)?,
        store.cache_latest(pipeline, step)?,
    ))
}

/// The result that ends a step with an earlier attempt's outcome, without running it.
pub fn hit_result(task: &sluice_worker::task::TaskSpec, entry: &CacheEntry) -> TaskResult {
    let now = sluice_worker::task::now_ms();
    let mut result = TaskResult::error(
        task.key.clone(),
        format!("cached from run {}", entry.run_id),
    );
    result.outcome = sluice_worker::task::Outcome::Succeeded;
    result.started_ms = now;
    result.finished_ms = now;
    result.outputs = entry.outputs.clone();
    result.metrics = entry.metrics.clone();
    result.artifacts = entry.artifacts.clone();
    result.image_digest = entry.image_digest.clone();
    result.cached_from = Some(entry.run_id.clone());
    result
}

/// What a worker checks before reusing `entry` for an image step.
pub fn probe(entry: &CacheEntry) -> Option<CacheProbe> {
    Some(CacheProbe {
        image_digest: entry.image_digest.clone()?,
        run_id: entry.run_id.clone(),
        artifacts: entry.artifacts.clone(),
        outputs: entry.outputs.clone(),
        metrics: entry.metrics.clone(),
    })
}
