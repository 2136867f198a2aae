//! Storing the declared outputs of a successful attempt.

use std::fs::File;
use std::io::Seek;
use std::path::Path;
use std::sync::Arc;

use super::manifest::{Manifest, ManifestEntry};
use super::walk::{open_found, open_output, Output};
use super::{ArtifactError, ArtifactRef, Artifacts};

/// Files of a folder output hashed per trip to the blocking pool (and so open at once).
const BATCH: usize = 64;

impl Artifacts {
    /// Hashes each declared output under `out_dir` (relative to `root`, the attempt's folder:
    /// nothing is read through a link below it), uploads the blobs the store lacks, and returns
    /// what was stored, in the order declared.
    pub async fn publish(
        self: &Arc<Self>,
        root: &Path,
        out_dir: &Path,
        outputs: &[String],
    ) -> Result<Vec<ArtifactRef>, ArtifactError> {
        let mut refs = Vec::new();
        for name in outputs {
            let relative = out_dir.join(name.trim_end_matches('/'));
            refs.push(self.publish_one(root, &relative, name).await?);
        }
        self.save();
        Ok(refs)
    }

    async fn publish_one(
        self: &Arc<Self>,
        root: &Path,
        relative: &Path,
        name: &str,
    ) -> Result<ArtifactRef, ArtifactError> {
        let (r, rel, n) = (root.to_path_buf(), relative.to_path_buf(), name.to_string());
        let output = blocking(move || open_output(&r, &rel, &n)).await?;
        match output {
            Output::File(file) => {
                let me = self.clone();
                let n = name.to_string();
                let (id, size, file) = blocking(move || me.hash_open(file, &n)).await?;
                self.upload_if_absent(&id, file).await?;
                Ok(ArtifactRef::file(name, id, size))
            }
            Output::Dir(found) => {
                let mut entries = Vec::with_capacity(found.len());
                let mut found = found.into_iter().peekable();
                while found.peek().is_some() {
                    let batch: Vec<_> = found.by_ref().take(BATCH).collect();
                    let me = self.clone();
                    let (r, rel, n) =
                        (root.to_path_buf(), relative.to_path_buf(), name.to_string());
                    let hashed = blocking(move || {
                        batch
                            .into_iter()
                            .map(|f| {
                                let file = open_found(&r, &rel, &n, &f.path)?;
                                let (id, size, file) = me.hash_open(file, &n)?;
                                let entry = ManifestEntry {
                                    path: f.path,
                                    mode: f.mode,
                                    size,
                                    id,
                                };
                                Ok((entry, file))
                            })
                            .collect::<Result<Vec<_>, ArtifactError>>()
                    })
                    .await?;
                    for (entry, file) in hashed {
                        self.upload_if_absent(&entry.id, file).await?;
                        entries.push(entry);
                    }
                }
                let manifest = Manifest::new(entries);
                let id = manifest.id();
                if !self.store().contains(&id).await? {
                    self.store().put_bytes(&id, manifest.to_bytes()).await?;
                }
                Ok(ArtifactRef::folder(name, &manifest))
            }
        }
    }

    /// Hashes an open output file and rewinds it for the upload.
    fn hash_open(&self, mut file: File, name: &str) -> Result<(String, u64, File), ArtifactError> {
        let what = || format!("hashing output `{name}`");
        let (id, size) = self
            .hashes
            .hash_file(&mut file)
            .map_err(ArtifactError::io(what()))?;
        file.rewind().map_err(ArtifactError::io(what()))?;
        Ok((id, size, file))
    }

    async fn upload_if_absent(&self, id: &str, file: File) -> Result<(), ArtifactError> {
        if self.store().contains(id).await? {
            return Ok(());
        }
        self.store().put_file(id, file).await
    }
}

/// Runs `job` on the blocking pool.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|err| ArtifactError::io("hashing outputs")(std::io::Error::other(err)))?
}

/// The artifact `path` (a file or a folder) would be, without storing anything: what
/// `sluice artifacts hash` prints. Links and special files are refused as in outputs.
pub fn identify(
    path: &Path,
    hashes: &super::hash::HashCache,
) -> Result<ArtifactRef, ArtifactError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(ArtifactError::io(format!("reading {}", path.display())))?;
    let (root, name) = match (path.parent(), path.file_name()) {
        (Some(root), Some(name)) => (root, Path::new(name)),
        _ => (Path::new("/"), Path::new(".")),
    };
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    let declared = format!("{}{}", name.display(), if meta.is_dir() { "/" } else { "" });
    let hash = |mut file: File| -> Result<(String, u64), ArtifactError> {
        hashes
            .hash_file(&mut file)
            .map_err(ArtifactError::io(format!("hashing {}", path.display())))
    };
    match open_output(root, name, &declared)? {
        Output::File(file) => {
            let (id, size) = hash(file)?;
            Ok(ArtifactRef::file(&declared, id, size))
        }
        Output::Dir(found) => {
            let mut entries = Vec::with_capacity(found.len());
            for f in found {
                let (id, size) = match hashes.known(&f.stamp) {
                    Some(id) => (id, f.stamp.size),
                    None => hash(open_found(root, name, &declared, &f.path)?)?,
                };
                entries.push(ManifestEntry {
                    path: f.path,
                    mode: f.mode,
                    size,
                    id,
                });
            }
            Ok(ArtifactRef::folder(&declared, &Manifest::new(entries)))
        }
    }
}
