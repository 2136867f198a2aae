//! `sluice gc`: removes old finished runs (records, logs, attempt folders), then the blobs that
//! nothing kept refers to (mark and sweep).
//!
//! A blob is never removed when a kept run refers to it (directly, or as a file of a kept
//! folder), nor when it was written after the oldest unfinished run started: a step of that
//! run may have stored it and not reported yet.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sluice_worker::artifacts::{ArtifactKind, ArtifactRef, Artifacts};
use sluice_worker::task::now_ms;

use super::CatalogError;
use crate::store::{RunRecord, Store};

/// What to keep.
#[derive(Debug, Clone)]
pub struct GcPolicy {
    /// Finished runs that ended longer ago than this go.
    pub older_than: Duration,
    /// The newest this many runs of each pipeline stay, however old.
    pub keep_last: usize,
    /// Say what would go, remove nothing.
    pub dry_run: bool,
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct GcReport {
    /// Runs removed.
    pub runs: Vec<String>,
    /// Blobs removed.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs kept because something refers to them.
    pub kept_blobs: usize,
    /// Unreferenced blobs kept because they are newer than the oldest unfinished run.
    pub recent_blobs: usize,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Temporary files of uploads killed midway, over an hour old, removed from a local store.
    pub stale_uploads: usize,
}

/// Runs a collection over `store` and `artifacts`; `data_dir` holds the runs' folders.
pub async fn collect(
    store: &Store,
    artifacts: &Artifacts,
    data_dir: &std::path::Path,
    policy: &GcPolicy,
) -> Result<GcReport, CatalogError> {
    let started = SystemTime::now();
    let runs = store.list_runs(usize::MAX, None)?;
    let doomed = doomed_runs(&runs, policy, now_ms());
    let mut report = GcReport {
        dry_run: policy.dry_run,
        ..Default::default()
    };
    // Mark: every artifact of every run that stays, with the files of its folders.
    let mut marked = HashSet::new();
    let mut oldest_unfinished = None::<u64>;
    for run in runs.iter().filter(|r| !doomed.contains(&r.id)) {
        if !run.status.is_terminal() {
            oldest_unfinished =
                Some(oldest_unfinished.map_or(run.created_ms, |t| t.min(run.created_ms)));
        }
        for step in store.steps(&run.id)? {
            for artifact in &step.artifacts {
                mark(&mut marked, artifacts, artifact).await;
            }
        }
    }
    // Every registered model version, and the data it was trained on (a drift reference),
    // whatever became of the run that made it.
    for version in store.all_model_versions()? {
        mark(&mut marked, artifacts, &version.artifact).await;
        for input in &version.training_data {
            mark(&mut marked, artifacts, &input.artifact).await;
        }
    }
    // Records first: a blob is only unreferenced once no record names it.
    for run in runs.iter().filter(|r| doomed.contains(&r.id)) {
        if !policy.dry_run {
            store.remove_run(&run.id)?;
            let folder = data_dir.join("runs").join(&run.id);
            if let Err(err) = sluice_worker::safe_fs::remove_entry(&folder) {
                tracing::warn!(run = %run.id, error = %err, "Could not remove a run's folder.");
            }
        }
        report.runs.push(run.id.clone());
    }
    // Sweep: what nothing refers to and nothing in flight may have written.
    let cutoff = oldest_unfinished
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or(started)
        .min(started);
    if !policy.dry_run {
        report.stale_uploads = artifacts
            .store()
            .remove_stale_temporaries(Duration::from_secs(3600));
    }
    for blob in artifacts.store().list().await? {
        if marked.contains(&blob.id) {
            report.kept_blobs += 1;
        } else if blob.modified >= cutoff {
            report.recent_blobs += 1;
        } else {
            if !policy.dry_run {
                artifacts.store().delete(&blob.id).await?;
            }
            report.blobs += 1;
            report.bytes += blob.size;
        }
    }
    Ok(report)
}

/// Marks `artifact`, and a folder's files.
async fn mark(marked: &mut HashSet<String>, artifacts: &Artifacts, artifact: &ArtifactRef) {
    if marked.insert(artifact.id.clone()) && artifact.kind == ArtifactKind::Dir {
        // A folder whose manifest is gone has no files left to keep.
        if let Ok(manifest) = artifacts.manifest(&artifact.id).await {
            marked.extend(manifest.files.into_iter().map(|f| f.id));
        }
    }
}

/// The finished runs the policy removes: ended before the cut-off and not among the newest
/// `keep_last` of their pipeline.
fn doomed_runs(runs: &[RunRecord], policy: &GcPolicy, now: u64) -> HashSet<String> {
    let cutoff = now.saturating_sub(policy.older_than.as_millis() as u64);
    let mut by_pipeline: BTreeMap<&str, Vec<&RunRecord>> = BTreeMap::new();
    for run in runs {
        by_pipeline.entry(&run.pipeline).or_default().push(run);
    }
    let mut doomed = HashSet::new();
    for mut runs in by_pipeline.into_values() {
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        for run in runs.into_iter().skip(policy.keep_last) {
            let ended = run.finished_ms.unwrap_or(run.created_ms);
            if run.status.is_terminal() && ended < cutoff {
                doomed.insert(run.id.clone());
            }
        }
    }
    doomed
}
