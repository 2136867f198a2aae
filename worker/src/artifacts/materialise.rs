//! Building `$SLUICE_IN/<step>/` for an attempt from the artifacts of its upstream steps.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use super::manifest::{is_safe_relative, Manifest};
use super::{ArtifactError, ArtifactKind, Artifacts, TaskInput};

/// Largest manifest read (a million files is about 150 MB of JSON).
const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;

impl Artifacts {
    /// Fills `in_dir` (which must not exist yet) with a folder per input step holding its
    /// declared outputs. With `link`, files are hard-linked read-only from the cache (copied
    /// where links cannot be made, and for executable files, whose mode a shared link could not
    /// keep); without it every file is copied. Link only where the step cannot write through
    /// the link: a container with `in/` mounted read-only, or a process that is not root (for
    /// root, a file's mode is no obstacle, and a write would change the blob itself).
    pub async fn materialise(
        self: &Arc<Self>,
        inputs: &[TaskInput],
        in_dir: &Path,
        link: bool,
    ) -> Result<(), ArtifactError> {
        let ids: HashSet<String> = inputs
            .iter()
            .flat_map(|input| input.artifacts.iter().map(|a| a.id.clone()))
            .collect();
        // Held until every file is placed (by the job below): the blobs the plan names stay.
        let mut pinned = vec![self.pin(ids)];
        // First what goes where, fetching and verifying each blob (which waits on the network
        // and the blocking pool, not on this thread); then the folders and files, copies of
        // gigabytes included, in one job on the blocking pool, so a large input never holds
        // up the worker's other tasks (its heartbeats among them).
        let mut plan = vec![Placing::Dir(in_dir.to_path_buf())];
        for input in inputs {
            if !is_safe_relative(&input.step) || input.step.contains('/') {
                return Err(bad_name(&input.step));
            }
            let step_dir = in_dir.join(&input.step);
            plan.push(Placing::Dir(step_dir.clone()));
            for artifact in &input.artifacts {
                let name = artifact.path_name();
                if !is_safe_relative(name) {
                    return Err(bad_name(name));
                }
                let target = step_dir.join(name);
                if let Some(parent) = target.parent() {
                    plan.push(Placing::Dirs(step_dir.clone(), parent.to_path_buf()));
                }
                match artifact.kind {
                    ArtifactKind::File => {
                        let blob = self.blob_path(&artifact.id).await?;
                        plan.push(Placing::File(blob, target, 0o444));
                    }
                    ArtifactKind::Dir => {
                        let manifest = self.manifest(&artifact.id).await?;
                        plan.push(Placing::Dir(target.clone()));
                        pinned
                            .push(self.pin(manifest.files.iter().map(|f| f.id.clone()).collect()));
                        for entry in &manifest.files {
                            let blob = self.blob_path(&entry.id).await?;
                            let path = target.join(&entry.path);
                            if let Some(parent) = path.parent() {
                                plan.push(Placing::Dirs(target.clone(), parent.to_path_buf()));
                            }
                            plan.push(Placing::File(blob, path, read_only(entry.mode)));
                        }
                    }
                }
            }
        }
        // The pins go with the job: a step cancelled meanwhile drops this future, not the job,
        // and the blobs it is still placing must stay.
        tokio::task::spawn_blocking(move || {
            let _pinned = pinned;
            plan.iter().try_for_each(|step| step.carry_out(link))
        })
        .await
        .map_err(|err| ArtifactError::io("placing the inputs")(std::io::Error::other(err)))??;
        self.save();
        Ok(())
    }

    /// The manifest of folder artifact `id`, verified.
    pub async fn manifest(&self, id: &str) -> Result<Manifest, ArtifactError> {
        let path = self.blob_path(id).await?;
        let bytes = crate::safe_fs::read_regular(&path, MAX_MANIFEST_BYTES).map_err(|err| {
            ArtifactError::BadManifest {
                id: id.to_string(),
                why: err.to_string(),
            }
        })?;
        let bytes = bytes.ok_or_else(|| ArtifactError::Missing {
            id: id.to_string(),
            store: self.store().url().to_string(),
        })?;
        Manifest::parse(id, &bytes)
    }
}

/// One step of building `in/`, in the order [`Artifacts::materialise`] planned them.
enum Placing {
    /// A folder (its parent exists).
    Dir(std::path::PathBuf),
    /// The folders from the first (which exists) down to the second.
    Dirs(std::path::PathBuf, std::path::PathBuf),
    /// A blob put at a path with a mode.
    File(std::path::PathBuf, std::path::PathBuf, u32),
}

impl Placing {
    fn carry_out(&self, link: bool) -> Result<(), ArtifactError> {
        match self {
            Placing::Dir(path) => make_dir(path),
            Placing::Dirs(root, path) => make_dirs(root, path),
            Placing::File(blob, target, mode) => place(blob, target, *mode, link),
        }
    }
}

fn bad_name(name: &str) -> ArtifactError {
    ArtifactError::BadOutput {
        output: name.to_string(),
        why: "is not a path inside its step's folder".into(),
    }
}

/// The mode a materialised file gets: readable by all, executable where it was, never writable.
fn read_only(mode: u32) -> u32 {
    0o444 | (mode & 0o111)
}

fn make_dir(path: &Path) -> Result<(), ArtifactError> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            return Err(ArtifactError::io(format!("creating {}", path.display()))(
                err,
            ))
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(ArtifactError::io(format!("creating {}", path.display())))
}

/// Creates the folders from `root` (which exists) down to `path`.
fn make_dirs(root: &Path, path: &Path) -> Result<(), ArtifactError> {
    let Ok(below) = path.strip_prefix(root) else {
        return Ok(());
    };
    let mut current = root.to_path_buf();
    for part in below.components() {
        current.push(part);
        make_dir(&current)?;
    }
    Ok(())
}

/// Puts `blob` at `target`: a hard link when the mode allows one (blobs are 0444), else a copy.
fn place(blob: &Path, target: &Path, mode: u32, link: bool) -> Result<(), ArtifactError> {
    let what = || format!("placing {}", target.display());
    if link && mode == 0o444 && std::fs::hard_link(blob, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(blob, target).map_err(ArtifactError::io(what()))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))
        .map_err(ArtifactError::io(what()))
}
