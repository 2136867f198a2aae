//! A folder artifact's manifest: what its id is the hash of.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::{hash, is_valid_id, ArtifactError};

/// The manifest format; a change that alters ids bumps it.
pub const MANIFEST_FORMAT: u32 = 1;
/// Most files one folder artifact may hold.
pub const MAX_FILES: usize = 1_000_000;

/// One file of a folder artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ManifestEntry {
    /// Path relative to the folder, `/`-separated, never `..` or absolute.
    pub path: String,
    /// Permission bits (`0o644`, `0o755`).
    pub mode: u32,
    /// Bytes.
    pub size: u64,
    /// BLAKE3 of the bytes.
    pub id: String,
}

/// The files of a folder, sorted by path. Serialised as compact JSON, whose BLAKE3 is the
/// folder's id: the same files with the same modes give the same id on any machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Files, sorted by path.
    pub files: Vec<ManifestEntry>,
}

impl Manifest {
    /// A manifest of `files` (sorted here).
    pub fn new(mut files: Vec<ManifestEntry>) -> Manifest {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            format: MANIFEST_FORMAT,
            files,
        }
    }

    /// The bytes that are stored and hashed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// The folder's id.
    pub fn id(&self) -> String {
        hash::hash_bytes(&self.to_bytes())
    }

    /// Total bytes of the files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Reads a manifest that was fetched as blob `id` (already verified against it), checking
    /// everything a hostile store could put in one: paths out of the folder, bad ids, duplicates.
    pub fn parse(id: &str, bytes: &[u8]) -> Result<Manifest, ArtifactError> {
        let bad = |why: String| ArtifactError::BadManifest {
            id: id.to_string(),
            why,
        };
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|err| bad(format!("not JSON: {err}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format {} is not {MANIFEST_FORMAT}",
                manifest.format
            )));
        }
        if manifest.files.len() > MAX_FILES {
            return Err(bad(format!("more than {MAX_FILES} files")));
        }
        for pair in manifest.files.windows(2) {
            if pair[0].path >= pair[1].path {
                return Err(bad(format!(
                    "`{}` is out of order or repeated",
                    pair[1].path
                )));
            }
        }
        for entry in &manifest.files {
            if !is_safe_relative(&entry.path) {
                return Err(bad(format!("path `{}` leaves the folder", entry.path)));
            }
            if !is_valid_id(&entry.id) {
                return Err(bad(format!("`{}` has no valid id", entry.path)));
            }
        }
        // A file and a folder of the same name cannot both be made.
        for pair in manifest.files.windows(2) {
            if pair[1].path.starts_with(&format!("{}/", pair[0].path)) {
                return Err(bad(format!(
                    "`{}` is both a file and a folder",
                    pair[0].path
                )));
            }
        }
        Ok(manifest)
    }
}

/// A relative path made only of normal components.
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            mode: 0o644,
            size: 1,
            id: hash::hash_bytes(path.as_bytes()),
        }
    }

    #[test]
    fn the_id_does_not_depend_on_the_order_files_were_found_in() {
        let a = Manifest::new(vec![entry("b"), entry("a/x")]);
        let b = Manifest::new(vec![entry("a/x"), entry("b")]);
        assert_eq!(a.id(), b.id());
        let changed = Manifest::new(vec![
            entry("a/x"),
            ManifestEntry {
                mode: 0o755,
                ..entry("b")
            },
        ]);
        assert_ne!(a.id(), changed.id());
        assert_eq!(Manifest::parse(&a.id(), &a.to_bytes()).unwrap(), a);
    }

    #[test]
    fn a_hostile_manifest_is_refused() {
        for path in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "",
            "./a",
        ] {
            let manifest = Manifest {
                format: MANIFEST_FORMAT,
                files: vec![entry(path)],
            };
            let err = Manifest::parse("x", &manifest.to_bytes()).unwrap_err();
            assert!(
                err.to_string().contains("leaves the folder"),
                "{path}: {err}"
            );
        }
        let clash = Manifest::new(vec![entry("a"), entry("a/b")]);
        assert!(Manifest::parse("x", &clash.to_bytes()).is_err());
        let repeated = Manifest {
            format: 1,
            files: vec![entry("a"), entry("a")],
        };
        assert!(Manifest::parse("x", &repeated.to_bytes()).is_err());
    }
}
