//! The secret store: one sealed file per secret under `<data-dir>/secrets/`.
//!
//! Files rather than sled records, so that `sluice secrets set` works while a scheduler holds
//! the store's lock, and a scheduler sees a new value at the next step it dispatches without a
//! reload. Each file is written whole to a temporary name, synced and renamed, so a crash leaves
//! the old value or the new one. The scheduler reads these files but cannot open them: only the
//! key holders (`secrets set` and the workers) can.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sluice_worker::safe_fs;
use sluice_worker::secrets::{sealed_key_id, SecretError, SecretKey, MAX_SECRET_BYTES};

/// The longest sealed file read: a full-size value in base64 plus the header.
const MAX_SEALED_BYTES: u64 = (MAX_SECRET_BYTES as u64) * 2;

/// Why a secret could not be stored or listed.
#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    /// The name cannot be an environment variable.
    #[error("`{0}` is not a secret name: use letters, digits and `_`, not starting with a digit")]
    BadName(String),
    /// Sealing refused the value.
    #[error(transparent)]
    Value(#[from] SecretError),
    /// Other secrets were sealed with a different key: workers could open only some of them.
    #[error("the secrets in {dir} are sealed with key {stored}, not with this key ({given}); use that key, or remove them first")]
    MixedKeys {
        /// The store's folder.
        dir: String,
        /// The key id the stored secrets name.
        stored: String,
        /// The key id given now.
        given: String,
    },
    /// The file system failed.
    #[error("secret store {dir}: {source}")]
    Io {
        /// The store's folder.
        dir: String,
        /// The error.
        source: io::Error,
    },
}

/// One stored secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredSecret {
    /// The secret's name, as steps' `secrets:` name it.
    pub name: String,
    /// The id of the key it is sealed with.
    pub key_id: String,
    /// When it was last set, in ms since the epoch.
    pub updated_ms: u64,
}

/// The secret store of one data dir.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
}

/// Whether `name` can be a secret (and so an environment variable's name).
pub fn is_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SecretStore {
    /// The store of the data dir `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> SecretStore {
        SecretStore {
            dir: data_dir.join("secrets"),
        }
    }

    fn io(&self, source: io::Error) -> SecretStoreError {
        SecretStoreError::Io {
            dir: self.dir.display().to_string(),
            source,
        }
    }

    /// Seals `value` with `key` and stores it as `name`, replacing what was there.
    pub fn set(&self, key: &SecretKey, name: &str, value: &str) -> Result<(), SecretStoreError> {
        if !is_secret_name(name) {
            return Err(SecretStoreError::BadName(name.to_string()));
        }
        let stored = self.list()?;
        if let Some(other) = stored
            .iter()
            .find(|s| s.name != name && s.key_id != key.id())
        {
            return Err(SecretStoreError::MixedKeys {
                dir: self.dir.display().to_string(),
                stored: other.key_id.clone(),
                given: key.id(),
            });
        }
        let sealed = key.seal(name, value)?;
        self.write_atomically(name, sealed.as_bytes())
            .map_err(|e| self.io(e))
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let temp = self.dir.join(format!(".{name}.{}.tmp", ulid::Ulid::new()));
        let written = (|| {
            let mut file = safe_fs::create_new(&temp, 0o600)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, self.dir.join(name))?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// The sealed text of `name`, or `None` when the store does not have it.
    pub fn sealed(&self, name: &str) -> Result<Option<String>, SecretStoreError> {
        if !is_secret_name(name) {
            return Ok(None);
        }
        match safe_fs::read_regular(&self.dir.join(name), MAX_SEALED_BYTES) {
            Ok(Some(bytes)) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Ok(None) => Ok(None),
            Err(err) => Err(self.io(io::Error::other(err.to_string()))),
        }
    }

    /// Every stored secret, by name.
    pub fn list(&self) -> Result<Vec<StoredSecret>, SecretStoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut secrets = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io(e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_secret_name(&name) {
                continue;
            }
            // A link, FIFO or unreadable file under a secret's name is never read; it is left
            // out (and said so) rather than making every `ls` and `set` fail.
            let sealed = match self.sealed(&name) {
                Ok(Some(sealed)) => sealed,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(secret = %name, error = %err, "Skipped a secret file that is not a regular file Sluice wrote.");
                    continue;
                }
            };
            let updated_ms = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            secrets.push(StoredSecret {
                key_id: sealed_key_id(&sealed).unwrap_or("?").to_string(),
                name,
                updated_ms,
            });
        }
        secrets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(secrets)
    }

    /// Removes `name`; `false` when there was no such secret.
    pub fn remove(&self, name: &str) -> Result<bool, SecretStoreError> {
        if !is_secret_name(name) {
            return Err(SecretStoreError::BadName(name.to_string()));
        }
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_list_and_remove_without_the_value_on_disk() {
        let data = tempfile::tempdir().unwrap();
        let store = SecretStore::in_data_dir(data.path());
        let key = SecretKey::generate();
        assert!(store.list().unwrap().is_empty());
        store.set(&key, "API_TOKEN", "hunter2-value").unwrap();
        store.set(&key, "API_TOKEN", "hunter3-value").unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].name.as_str(), listed[0].key_id.clone()),
            ("API_TOKEN", key.id())
        );
        let sealed = store.sealed("API_TOKEN").unwrap().unwrap();
        assert!(!sealed.contains("hunter"));
        assert_eq!(
            key.open("API_TOKEN", &sealed).unwrap().as_str(),
            "hunter3-value"
        );
        let file = data.path().join("secrets/API_TOKEN");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(store.remove("API_TOKEN").unwrap());
        assert!(!store.remove("API_TOKEN").unwrap());
        assert_eq!(store.sealed("API_TOKEN").unwrap(), None);
    }

    #[test]
    fn a_second_key_is_refused_and_bad_names_too() {
        let data = tempfile::tempdir().unwrap();
        let store = SecretStore::in_data_dir(data.path());
        store.set(&SecretKey::generate(), "A", "one").unwrap();
        let err = store.set(&SecretKey::generate(), "B", "two").unwrap_err();
        assert!(matches!(err, SecretStoreError::MixedKeys { .. }), "{err}");
        for bad in ["", "1A", "A-B", "../A", "A B"] {
            assert!(matches!(
                store.set(&SecretKey::generate(), bad, "x"),
                Err(SecretStoreError::BadName(_))
            ));
        }
        assert_eq!(store.sealed("../A").unwrap(), None);
    }

    #[test]
    fn a_linked_secret_file_is_not_followed() {
        let data = tempfile::tempdir().unwrap();
        let store = SecretStore::in_data_dir(data.path());
        std::fs::create_dir(data.path().join("secrets")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", data.path().join("secrets/A")).unwrap();
        assert!(store.sealed("A").is_err());
        // It does not stop the store from listing or taking the others.
        assert!(store.list().unwrap().is_empty());
        store.set(&SecretKey::generate(), "B", "two").unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
