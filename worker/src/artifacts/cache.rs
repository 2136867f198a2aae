//! What a worker uses artifacts through: the store, a local cache of blobs with a size cap
//! (least recently used out first), and the hash cache that keeps verification cheap.
//!
//! With a local store the blobs are already files on this machine: they are used in place, not
//! copied into the cache. Either way a blob is verified against its id before it is used: a
//! download as it streams, a file on disk by hashing it whenever its size or mtime changed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::hash::HashCache;
use super::store::ArtifactStore;
use super::ArtifactError;

/// The cache's cap when `--cache-size` is not given.
pub const DEFAULT_CACHE_SIZE: u64 = 10 * 1024 * 1024 * 1024;

#[derive(Debug, Default)]
struct CacheState {
    /// Blob id to its size and when it was last used (a counter).
    blobs: HashMap<String, (u64, u64)>,
    used: u64,
    clock: u64,
    /// Blobs being materialised now, never evicted.
    pinned: HashMap<String, usize>,
}

/// The store, the blob cache and the hash cache of one process.
#[derive(Debug)]
pub struct Artifacts {
    store: ArtifactStore,
    cache_dir: PathBuf,
    cap: u64,
    pub(super) hashes: Arc<HashCache>,
    state: Mutex<CacheState>,
}

impl Artifacts {
    /// Artifacts in `store`, cached under `cache_dir` up to `cap` bytes.
    pub fn new(
        store: ArtifactStore,
        cache_dir: &Path,
        cap: u64,
    ) -> Result<Artifacts, ArtifactError> {
        let blobs = cache_dir.join("blobs");
        std::fs::create_dir_all(blobs.join("tmp"))
            .map_err(ArtifactError::io(format!("creating {}", blobs.display())))?;
        remove_stale_downloads(&blobs.join("tmp"));
        let mut state = CacheState::default();
        if !store.is_local() {
            // What an earlier process left, oldest first.
            let mut found = Vec::new();
            for entry in walk_cache(&blobs) {
                found.push(entry);
            }
            found.sort_by_key(|(_, _, modified)| *modified);
            for (id, size, _) in found {
                state.clock += 1;
                state.used += size;
                state.blobs.insert(id, (size, state.clock));
            }
        }
        Ok(Artifacts {
            hashes: Arc::new(HashCache::load(&cache_dir.join("hashes.json"))),
            store,
            cache_dir: blobs,
            cap,
            state: Mutex::new(state),
        })
    }

    /// The store.
    pub fn store(&self) -> &ArtifactStore {
        &self.store
    }

    /// Bytes the blob cache holds now.
    pub fn cached_bytes(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        self.cache_dir.join(&id[..2]).join(id)
    }

    /// Keeps `ids` from eviction until the guard is dropped.
    pub(super) fn pin(self: &Arc<Self>, ids: HashSet<String>) -> Pinned {
        let mut state = self.lock();
        for id in &ids {
            *state.pinned.entry(id.clone()).or_default() += 1;
        }
        Pinned {
            artifacts: self.clone(),
            ids,
        }
    }

    /// A file on this machine holding blob `id`, verified: the local store's own file, or the
    /// cache's copy (downloaded first when absent).
    pub async fn blob_path(&self, id: &str) -> Result<PathBuf, ArtifactError> {
        if !super::is_valid_id(id) {
            return Err(ArtifactError::Missing {
                id: id.to_string(),
                store: self.store.url().to_string(),
            });
        }
        if let Some(path) = self.store.local_blob_path(id) {
            return match self.verify(&path, id).await? {
                true => Ok(path),
                false => Err(ArtifactError::Missing {
                    id: id.to_string(),
                    store: self.store.url().to_string(),
                }),
            };
        }
        let path = self.cache_path(id);
        match self.verify(&path, id).await {
            Ok(true) => {
                let mut state = self.lock();
                state.clock += 1;
                let clock = state.clock;
                if let Some(entry) = state.blobs.get_mut(id) {
                    entry.1 = clock;
                }
                return Ok(path);
            }
            Ok(false) => {}
            // A cached copy that went bad is fetched again.
            Err(ArtifactError::Corrupt { .. }) => {
                tracing::warn!(blob = id, "A cached blob was corrupt; fetching it again.");
                let _ = std::fs::remove_file(&path);
                self.forget(id);
            }
            Err(err) => return Err(err),
        }
        let folder = path.parent().expect("a cache path has a folder");
        std::fs::create_dir_all(folder)
            .map_err(ArtifactError::io(format!("creating {}", folder.display())))?;
        let temporary = self.cache_dir.join("tmp").join(format!(
            "{id}.{}.{}",
            std::process::id(),
            crate::task::now_ms()
        ));
        let _ = std::fs::remove_file(&temporary);
        let size = self.store.download(id, &temporary).await?;
        use std::os::unix::fs::PermissionsExt;
        let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o444))
            .and_then(|_| std::fs::rename(&temporary, &path));
        if let Err(err) = placed {
            let _ = std::fs::remove_file(&temporary);
            return Err(ArtifactError::io(format!("caching {}", path.display()))(
                err,
            ));
        }
        {
            let mut state = self.lock();
            state.clock += 1;
            let clock = state.clock;
            if let Some((old, _)) = state.blobs.insert(id.to_string(), (size, clock)) {
                state.used -= old;
            }
            state.used += size;
        }
        self.evict();
        Ok(path)
    }

    /// Whether `path` holds blob `id`: `false` when it does not exist, an error when its bytes
    /// hash to something else.
    async fn verify(&self, path: &Path, id: &str) -> Result<bool, ArtifactError> {
        let path = path.to_path_buf();
        let hashes = self.hashes.clone();
        let store = self.store.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(err) => {
                    return Err(ArtifactError::io(format!("reading {}", path.display()))(
                        err,
                    ))
                }
            };
            let (actual, _) = hashes
                .hash_file(&mut file)
                .map_err(ArtifactError::io(format!("reading {}", path.display())))?;
            if actual != id {
                hashes.forget(&file);
                return Err(store.corrupt(&id, actual));
            }
            Ok(true)
        })
        .await
        .map_err(|err| ArtifactError::io("verifying a blob")(std::io::Error::other(err)))?
    }

    fn forget(&self, id: &str) {
        let mut state = self.lock();
        if let Some((size, _)) = state.blobs.remove(id) {
            state.used -= size;
        }
    }

    /// Removes least recently used blobs until the cache is under its cap; pinned ones stay.
    fn evict(&self) {
        let victims: Vec<String> = {
            let state = self.lock();
            if state.used <= self.cap {
                return;
            }
            let mut candidates: Vec<(&String, &(u64, u64))> = state
                .blobs
                .iter()
                .filter(|(id, _)| !state.pinned.contains_key(*id))
                .collect();
            candidates.sort_by_key(|(_, (_, used))| *used);
            let mut over = state.used - self.cap;
            let mut victims = Vec::new();
            for (id, (size, _)) in candidates {
                if over == 0 {
                    break;
                }
                over = over.saturating_sub(*size);
                victims.push(id.clone());
            }
            victims
        };
        for id in victims {
            let _ = std::fs::remove_file(self.cache_path(&id));
            self.forget(&id);
        }
    }

    /// The BLAKE3 of the file at `path` (through the hash cache).
    pub fn hash_path(&self, path: &Path) -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let (id, _) = self.hashes.hash_file(&mut file)?;
        Ok(id)
    }

    /// The artifact `path` would be (see [`super::publish::identify`]), through the hash cache.
    pub fn identify(&self, path: &Path) -> Result<super::ArtifactRef, ArtifactError> {
        let identified = super::publish::identify(path, &self.hashes);
        self.save();
        identified
    }

    /// Writes the hash cache to disk.
    pub fn save(&self) {
        self.hashes.save();
    }
}

/// Blobs [`Artifacts::pin`] keeps from eviction.
pub(super) struct Pinned {
    artifacts: Arc<Artifacts>,
    ids: HashSet<String>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut state = self.artifacts.lock();
        for id in &self.ids {
            if let Some(count) = state.pinned.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    state.pinned.remove(id);
                }
            }
        }
    }
}

/// Removes downloads a killed process left (an hour old: a live one is still writing its own).
fn remove_stale_downloads(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// (id, size, mtime) of each blob file in the cache folder.
fn walk_cache(blobs: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut found = Vec::new();
    let Ok(folders) = std::fs::read_dir(blobs) else {
        return found;
    };
    for folder in folders.flatten() {
        let Ok(files) = std::fs::read_dir(folder.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(id) = name.to_str().filter(|n| super::is_valid_id(n)) else {
                continue;
            };
            if let Ok(meta) = file.metadata() {
                found.push((
                    id.to_string(),
                    meta.len(),
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                ));
            }
        }
    }
    found
}

impl Artifacts {
    /// Whether every blob of `refs` (the files of folders too) is in the store: a cache hit
    /// whose outputs are gone is a miss, never a broken step.
    pub async fn contains_all(&self, refs: &[super::ArtifactRef]) -> bool {
        for artifact in refs {
            if !self.store.contains(&artifact.id).await.unwrap_or(false) {
                return false;
            }
            if artifact.kind == super::ArtifactKind::Dir {
                let Ok(manifest) = self.manifest(&artifact.id).await else {
                    return false;
                };
                for file in manifest.files {
                    if !self.store.contains(&file.id).await.unwrap_or(false) {
                        return false;
                    }
                }
            }
        }
        true
    }
}
