//! What the scheduler knows of artifacts: which step of which run made each one (an index
//! written in the same commit as the step), their lineage through the steps' inputs, and the
//! listings, diffs and downloads of `sluice artifacts` and `/api/v1/artifacts`.

pub mod gc;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_worker::artifacts::{ArtifactError, ArtifactKind, Artifacts};

use crate::store::{Store, StoreError};

/// One producer of an artifact, as indexed (`x/<id>/<run>/<step>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexEntry {
    /// The output as declared (`model/`).
    pub name: String,
    /// File or folder.
    pub kind: ArtifactKind,
    /// Bytes.
    pub size: u64,
    /// Files.
    pub files: u64,
    /// The attempt that made it.
    pub attempt: u32,
    /// When that attempt ended.
    pub created_ms: u64,
}

/// An artifact in a listing: one row per (artifact, producing step).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ArtifactRow {
    /// Content id.
    pub id: String,
    /// Run that made it.
    pub run_id: String,
    /// Pipeline of that run.
    pub pipeline: String,
    /// Step that made it.
    pub step: String,
    #[serde(flatten)]
    /// What the index says.
    pub entry: IndexEntry,
}

/// An input a step read: an upstream step's output.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct InputUse {
    /// The upstream step.
    pub step: String,
    /// Its output's declared name.
    pub name: String,
    /// The artifact's id.
    pub id: String,
}

/// Everything recorded of who made an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Producer {
    /// The run, pipeline, step and the output's metadata.
    #[serde(flatten)]
    pub row: ArtifactRow,
    /// The params the run had.
    pub params: BTreeMap<String, String>,
    /// The git commit of the pipelines folder, when it was a git work tree.
    pub commit: Option<String>,
    /// The step's image as written, when it has one.
    pub image: Option<String>,
    /// The digest of that image the worker ran.
    pub image_digest: Option<String>,
    /// The local command, when it runs no image.
    pub command: Option<String>,
    /// The artifacts the step read.
    pub inputs: Vec<InputUse>,
}

/// `artifacts show`: an artifact, its files and its producers (the first made it; later
/// ones made the same bytes again).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ArtifactDetail {
    /// Content id.
    pub id: String,
    /// File or folder.
    pub kind: ArtifactKind,
    /// Bytes.
    pub size: u64,
    /// The files of a folder (path, size, id); a file artifact lists none.
    pub files: Vec<sluice_worker::artifacts::ManifestEntry>,
    /// Who made it, oldest first.
    pub producers: Vec<Producer>,
}

/// One node of a lineage: an artifact and the artifacts its producer read.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LineageNode {
    /// Content id.
    pub id: String,
    /// How far from the artifact asked about (0 for it).
    pub depth: usize,
    /// Its first producer (none when the index has no record of it).
    pub producer: Option<Producer>,
}

/// What an artifact holds ([`Catalog::contents`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    /// File or folder.
    pub kind: ArtifactKind,
    /// Bytes.
    pub size: u64,
    /// Its files; one with an empty path for a file artifact.
    pub files: Vec<sluice_worker::artifacts::ManifestEntry>,
}

/// How one path differs between two artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DiffEntry {
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// Path inside the folder (empty for two file artifacts).
    pub path: String,
    /// Size in the first artifact.
    pub old_size: Option<u64>,
    /// Size in the second.
    pub new_size: Option<u64>,
}

/// Why an artifact question has no answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No artifact has this id (or prefix).
    #[error("no artifact `{0}`")]
    NotFound(String),
    /// The prefix names several.
    #[error("`{0}` matches several artifacts; give more of the id")]
    Ambiguous(String),
    /// The store of records failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The artifact store failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

/// Artifact questions over the records and the artifact store.
pub struct Catalog<'a> {
    /// Records.
    pub store: &'a Store,
    /// Blobs.
    pub artifacts: &'a Artifacts,
}

impl Catalog<'_> {
    /// Every artifact made, newest first, optionally of one pipeline and step.
    pub fn list(
        &self,
        pipeline: Option<&str>,
        step: Option<&str>,
    ) -> Result<Vec<ArtifactRow>, CatalogError> {
        let mut rows = self.rows("")?;
        rows.retain(|row| {
            pipeline.is_none_or(|p| row.pipeline == p) && step.is_none_or(|s| row.step == s)
        });
        rows.sort_by(|a, b| {
            b.entry
                .created_ms
                .cmp(&a.entry.created_ms)
                .then(a.id.cmp(&b.id))
        });
        Ok(rows)
    }

    fn rows(&self, id_prefix: &str) -> Result<Vec<ArtifactRow>, CatalogError> {
        let mut pipelines: BTreeMap<String, String> = BTreeMap::new();
        let mut rows = Vec::new();
        for (id, run_id, step, entry) in self.store.artifact_entries(id_prefix)? {
            let pipeline = match pipelines.get(&run_id) {
                Some(p) => p.clone(),
                None => {
                    let p = self
                        .store
                        .run(&run_id)?
                        .map(|r| r.pipeline)
                        .unwrap_or_default();
                    pipelines.insert(run_id.clone(), p.clone());
                    p
                }
            };
            rows.push(ArtifactRow {
                id,
                run_id,
                pipeline,
                step,
                entry,
            });
        }
        Ok(rows)
    }

    /// The full id an id or unique prefix of one names.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<String, CatalogError> {
        let prefix = id_or_prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CatalogError::NotFound(id_or_prefix.to_string()));
        }
        let ids: HashSet<String> = self.rows(&prefix)?.into_iter().map(|r| r.id).collect();
        match ids.len() {
            0 => Err(CatalogError::NotFound(id_or_prefix.to_string())),
            1 => Ok(ids.into_iter().next().expect("one id")),
            _ => Err(CatalogError::Ambiguous(id_or_prefix.to_string())),
        }
    }

    /// What artifact `id` (a full id) holds: its kind, size and files; a file artifact is one
    /// entry with an empty path. The one place that tells files from folders for show, diff,
    /// get and the content route.
    pub async fn contents(&self, id: &str) -> Result<Contents, CatalogError> {
        let entry = self
            .rows(id)?
            .into_iter()
            .next()
            .map(|r| r.entry)
            .ok_or_else(|| CatalogError::NotFound(id.to_string()))?;
        let files = match entry.kind {
            ArtifactKind::Dir => self.artifacts.manifest(id).await?.files,
            ArtifactKind::File => vec![sluice_worker::artifacts::ManifestEntry {
                path: String::new(),
                mode: 0o644,
                size: entry.size,
                id: id.to_string(),
            }],
        };
        Ok(Contents {
            kind: entry.kind,
            size: entry.size,
            files,
        })
    }

    /// `artifacts show`.
    pub async fn show(&self, id_or_prefix: &str) -> Result<ArtifactDetail, CatalogError> {
        let id = self.resolve(id_or_prefix)?;
        let mut rows = self.rows(&id)?;
        rows.sort_by_key(|r| r.entry.created_ms);
        let first = rows
            .first()
            .cloned()
            .ok_or_else(|| CatalogError::NotFound(id.clone()))?;
        let files = match first.entry.kind {
            ArtifactKind::Dir => self.artifacts.manifest(&id).await?.files,
            ArtifactKind::File => Vec::new(),
        };
        let producers = rows
            .into_iter()
            .map(|row| self.producer(row))
            .collect::<Result<_, _>>()?;
        Ok(ArtifactDetail {
            id,
            kind: first.entry.kind,
            size: first.entry.size,
            files,
            producers,
        })
    }

    /// What the run's record and definition say of the step that made `row`.
    fn producer(&self, row: ArtifactRow) -> Result<Producer, CatalogError> {
        let run = self.store.run(&row.run_id)?;
        let definition = match &run {
            Some(run) => self.store.pipeline(&run.definition_hash)?,
            None => None,
        };
        let pipeline = definition
            .as_ref()
            .and_then(|d| crate::spec::parse_str(&d.path.display().to_string(), &d.text).ok());
        let step = pipeline.as_ref().and_then(|p| p.steps.get(&row.step));
        let record = self.store.step(&row.run_id, &row.step)?;
        let mut inputs = Vec::new();
        for dep in step.map(|s| s.depends.clone()).unwrap_or_default() {
            if let Some(upstream) = self.store.step(&row.run_id, &dep)? {
                for artifact in upstream.artifacts {
                    inputs.push(InputUse {
                        step: dep.clone(),
                        name: artifact.name,
                        id: artifact.id,
                    });
                }
            }
        }
        let command = step.filter(|s| s.image.is_none()).map(|s| match &s.action {
            crate::spec::Action::Shell(text) => text.clone(),
            crate::spec::Action::Exec(argv) => argv.join(" "),
            crate::spec::Action::Uses { kind, .. } => format!("uses: {kind}"),
        });
        Ok(Producer {
            params: run.as_ref().map(|r| r.params.clone()).unwrap_or_default(),
            commit: run.as_ref().and_then(|r| r.commit.clone()),
            image: step.and_then(|s| s.image.clone()),
            image_digest: record.and_then(|r| r.image_digest),
            command,
            inputs,
            row,
        })
    }

    /// `artifacts lineage`: the artifact, the artifacts its producer read, theirs, and so on
    /// back to steps that read none; each artifact once.
    pub fn lineage(&self, id_or_prefix: &str) -> Result<Vec<LineageNode>, CatalogError> {
        let id = self.resolve(id_or_prefix)?;
        let mut seen = HashSet::from([id.clone()]);
        let mut queue = VecDeque::from([(id, 0usize)]);
        let mut nodes = Vec::new();
        while let Some((id, depth)) = queue.pop_front() {
            let mut rows = self.rows(&id)?;
            rows.sort_by_key(|r| r.entry.created_ms);
            let producer = match rows.into_iter().next() {
                Some(row) => Some(self.producer(row)?),
                None => None,
            };
            for input in producer.iter().flat_map(|p| &p.inputs) {
                if seen.insert(input.id.clone()) {
                    queue.push_back((input.id.clone(), depth + 1));
                }
            }
            nodes.push(LineageNode {
                id,
                depth,
                producer,
            });
        }
        Ok(nodes)
    }

    /// `artifacts diff`: paths added, removed and changed from `old` to `new`.
    pub async fn diff(&self, old: &str, new: &str) -> Result<Vec<DiffEntry>, CatalogError> {
        let files = |id: String| async move {
            let contents = self.contents(&id).await?;
            Ok::<_, CatalogError>(
                contents
                    .files
                    .into_iter()
                    .map(|f| (f.path, (f.size, f.id)))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let (old, new) = (
            files(self.resolve(old)?).await?,
            files(self.resolve(new)?).await?,
        );
        let mut changes = Vec::new();
        for (path, (size, id)) in &old {
            match new.get(path) {
                None => changes.push(DiffEntry {
                    change: "removed",
                    path: path.clone(),
                    old_size: Some(*size),
                    new_size: None,
                }),
                Some((new_size, new_id)) if new_id != id => changes.push(DiffEntry {
                    change: "changed",
                    path: path.clone(),
                    old_size: Some(*size),
                    new_size: Some(*new_size),
                }),
                Some(_) => {}
            }
        }
        for (path, (size, _)) in &new {
            if !old.contains_key(path) {
                changes.push(DiffEntry {
                    change: "added",
                    path: path.clone(),
                    old_size: None,
                    new_size: Some(*size),
                });
            }
        }
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(changes)
    }

    /// `artifacts get`: writes the artifact to `dest` (a file, or a folder for a folder
    /// artifact), verified. `dest` must not exist.
    pub async fn get(
        &self,
        id_or_prefix: &str,
        dest: &Path,
    ) -> Result<(String, u64), CatalogError> {
        let id = self.resolve(id_or_prefix)?;
        let io = |what: String| move |err| CatalogError::Artifact(ArtifactError::io(what)(err));
        if dest.exists() {
            return Err(io(format!("writing {}", dest.display()))(
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it exists already"),
            ));
        }
        let contents = self.contents(&id).await?;
        if contents.kind == ArtifactKind::Dir {
            std::fs::create_dir_all(dest).map_err(io(format!("creating {}", dest.display())))?;
        }
        let mut total = 0;
        let files = contents.files.into_iter().map(|f| {
            let path = if f.path.is_empty() {
                dest.to_path_buf()
            } else {
                dest.join(&f.path)
            };
            (path, f.id, f.mode)
        });
        for (path, blob, mode) in files {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("creating {}", parent.display())))?;
            }
            let source = self.artifacts.blob_path(&blob).await?;
            total +=
                std::fs::copy(&source, &path).map_err(io(format!("writing {}", path.display())))?;
            use std::os::unix::fs::PermissionsExt;
            // The mode the manifest recorded (executables stay executable), never set-id bits.
            let mode = 0o644 | (mode & 0o111);
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        }
        Ok((id, total))
    }
}
