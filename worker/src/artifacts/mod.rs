//! Artifacts: every declared output of a successful attempt, content-addressed and kept in an
//! artifact store, so the next step's worker on any machine can fetch it by id.
//!
//! A file's id is the BLAKE3 hash of its bytes. A folder's id is the hash of its manifest:
//! the sorted relative paths of its files with their modes, sizes and ids. Blobs (file bytes
//! and manifests alike) live under `blobs/<first two hex digits>/<id>` in the store, are
//! uploaded only when absent, and are verified against their id whenever they are read.

pub mod cache;
pub mod hash;
pub mod manifest;
pub mod materialise;
pub mod publish;
pub mod store;
pub mod walk;

use serde::{Deserialize, Serialize};

pub use cache::{Artifacts, DEFAULT_CACHE_SIZE};
pub use manifest::{Manifest, ManifestEntry};
pub use store::{ArtifactStore, StoreUrl};

/// Whether an artifact is one file or a folder (its id is then a manifest's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// One file.
    File,
    /// A folder, described by a manifest.
    Dir,
}

/// One declared output of an attempt, as it was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactRef {
    /// The output as the step declared it (`model/`, `raw.csv`).
    pub name: String,
    /// Content id: BLAKE3 of the file, or of the folder's manifest.
    pub id: String,
    /// File or folder.
    pub kind: ArtifactKind,
    /// Bytes of content (all files of a folder together).
    pub size: u64,
    /// Number of files (1 for a file).
    pub files: u64,
}

impl ArtifactRef {
    /// Output `name`, a file with these bytes.
    pub fn file(name: &str, id: String, size: u64) -> ArtifactRef {
        ArtifactRef {
            name: name.to_string(),
            id,
            kind: ArtifactKind::File,
            size,
            files: 1,
        }
    }

    /// Output `name`, the folder `manifest` describes.
    pub fn folder(name: &str, manifest: &Manifest) -> ArtifactRef {
        ArtifactRef {
            name: name.to_string(),
            id: manifest.id(),
            kind: ArtifactKind::Dir,
            size: manifest.size(),
            files: manifest.files.len() as u64,
        }
    }

    /// The name without the trailing `/` a folder output is declared with.
    pub fn path_name(&self) -> &str {
        self.name.trim_end_matches('/')
    }
}

/// The outputs of one upstream step that an attempt gets under `$SLUICE_IN/<step>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInput {
    /// The upstream step.
    pub step: String,
    /// Its declared outputs.
    pub artifacts: Vec<ArtifactRef>,
}

/// Why artifacts could not be stored or fetched. Each message names the artifact or the store.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A blob's bytes do not hash to its id.
    #[error("artifact {id} is corrupt in the store {store}: its bytes hash to {actual}")]
    Corrupt {
        /// The id asked for.
        id: String,
        /// What the bytes hash to.
        actual: String,
        /// The store's URL.
        store: String,
    },
    /// No blob with this id in the store.
    #[error("artifact {id} is missing from the store {store}")]
    Missing {
        /// The id.
        id: String,
        /// The store's URL.
        store: String,
    },
    /// The store answered with an error, after its own retries.
    #[error("artifact store {store}: {source}")]
    Store {
        /// The store's URL.
        store: String,
        /// What it said.
        #[source]
        source: object_store::Error,
    },
    /// A declared output that cannot be stored (a link, a special file, a path out of
    /// `$SLUICE_OUT`).
    #[error("declared output `{output}`: {why}")]
    BadOutput {
        /// The output and, for a folder, the file in it.
        output: String,
        /// What is wrong.
        why: String,
    },
    /// A manifest that is not one Sluice wrote.
    #[error("artifact {id} is not a valid folder manifest: {why}")]
    BadManifest {
        /// The manifest's id.
        id: String,
        /// What is wrong.
        why: String,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ArtifactError {
    /// An [`ArtifactError::Io`] saying what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArtifactError {
        let what = what.into();
        move |source| ArtifactError::Io { what, source }
    }
}

/// Whether `id` looks like a content id (64 lowercase hex digits), so a hostile id can never
/// name a path outside the store or the cache.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
