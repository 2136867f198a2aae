//! BLAKE3 hashing of files, and a cache of hashes keyed on what `stat` says, so a file that has
//! not changed is not read again (DVC's approach).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Bytes read at a time: large enough that BLAKE3 spreads each chunk over every core.
const CHUNK: usize = 8 * 1024 * 1024;
/// Most entries the cache keeps; past it the cache starts over (old attempts' files).
const MAX_ENTRIES: usize = 500_000;
/// A file changed this recently (in nanoseconds) is hashed again next time.
const RACY_NS: i64 = 2_000_000_000;

/// The hex BLAKE3 hash of everything `file` holds from where it is, and the bytes read.
pub fn hash_reader(mut file: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        // Fill the whole chunk, so the parallel hash sees big inputs even from short reads.
        while filled < CHUNK {
            match file.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if filled == 0 {
            break;
        }
        total += filled as u64;
        if filled >= 128 * 1024 {
            hasher.update_rayon(&buffer[..filled]);
        } else {
            hasher.update(&buffer[..filled]);
        }
        if filled < CHUNK {
            break;
        }
    }
    Ok((hasher.finalize().to_hex().to_string(), total))
}

/// The hex BLAKE3 hash of `bytes`.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// What `stat` says of a file, as the hash cache keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Bytes.
    pub size: u64,
    /// Modification time, in nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    id: String,
}

/// Hashes of files by (device, inode), valid while size and mtime stay the same (not ctime:
/// hard-linking a cached blob into an attempt's folder moves it). Kept in
/// one file, written whole (temporary file and rename) by [`HashCache::save`].
#[derive(Debug, Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    entries: Mutex<HashMap<String, Entry>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl HashCache {
    /// A cache that lives in memory only.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// The cache kept in `file`; a missing or unreadable file starts an empty one.
    pub fn load(file: &Path) -> HashCache {
        let entries = std::fs::read(file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        HashCache {
            file: Some(file.to_path_buf()),
            entries: Mutex::new(entries),
            dirty: Default::default(),
        }
    }

    /// The hash of the open regular file `file` and its size, from the cache when `stat` says
    /// it is unchanged, else by reading it (from its start).
    pub fn hash_file(&self, file: &mut File) -> io::Result<(String, u64)> {
        let meta = file.metadata()?;
        let key = format!("{}:{}", meta.dev(), meta.ino());
        let stamp = Stamp::of(&meta);
        if let Some(entry) = self.lock().get(&key) {
            if entry.stamp == stamp {
                return Ok((entry.id.clone(), stamp.size));
            }
        }
        let (id, size) = hash_reader(&mut *file)?;
        // Only a file that did not change while it was read is remembered, and not one changed
        // in the last seconds: a write in the same clock tick could keep size and times as
        // they are (git's "racy" files).
        let settled = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|now| (now.as_nanos() as i64) - stamp.mtime_ns > RACY_NS);
        if settled && Stamp::of(&file.metadata()?) == stamp && size == stamp.size {
            let mut entries = self.lock();
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(
                key,
                Entry {
                    stamp,
                    id: id.clone(),
                },
            );
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok((id, size))
    }

    /// The hash of the file `stat` describes, when the cache knows it unchanged: no need to
    /// open it.
    pub fn known(&self, stat: &FileStamp) -> Option<String> {
        let key = format!("{}:{}", stat.dev, stat.ino);
        let entries = self.lock();
        let entry = entries.get(&key)?;
        (entry.stamp.size == stat.size && entry.stamp.mtime_ns == stat.mtime_ns)
            .then(|| entry.id.clone())
    }

    /// Forgets what the cache knows of `file` (after it was found corrupt).
    pub fn forget(&self, file: &File) {
        if let Ok(meta) = file.metadata() {
            self.lock()
                .remove(&format!("{}:{}", meta.dev(), meta.ino()));
        }
    }

    /// Writes the cache to its file if it changed. Failures only cost re-hashing later.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let bytes = match serde_json::to_vec(&*self.lock()) {
            Ok(bytes) => bytes,
            Err(_) => return,
        };
        let temporary = file.with_extension(format!("tmp-{}", std::process::id()));
        let written =
            std::fs::write(&temporary, bytes).and_then(|_| std::fs::rename(&temporary, file));
        if let Err(err) = written {
            let _ = std::fs::remove_file(&temporary);
            tracing::debug!(error = %err, file = %file.display(), "Could not save the hash cache.");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    #[test]
    fn the_hash_is_blake3_of_the_bytes_whatever_the_chunking() {
        let bytes: Vec<u8> = (0..(CHUNK * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        let (id, size) = hash_reader(&bytes[..]).unwrap();
        assert_eq!(id, blake3::hash(&bytes).to_hex().to_string());
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(hash_reader(&b""[..]).unwrap().0, hash_bytes(b""));
    }

    #[test]
    fn an_unchanged_file_is_not_read_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"one").unwrap();
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let cache = HashCache::load(&dir.path().join("hashes.json"));
        let mut file = File::open(&path).unwrap();
        assert_eq!(cache.hash_file(&mut file).unwrap().0, hash_bytes(b"one"));
        // A file written just now is not remembered (a write in the same tick could hide).
        std::fs::write(dir.path().join("new"), b"x").unwrap();
        let fresh = HashCache::in_memory();
        fresh
            .hash_file(&mut File::open(dir.path().join("new")).unwrap())
            .unwrap();
        assert!(fresh.lock().is_empty());
        cache.save();
        // A reloaded cache answers from its file: the entry is there.
        let reloaded = HashCache::load(&dir.path().join("hashes.json"));
        assert_eq!(reloaded.lock().len(), 1);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&path)
            .unwrap();
        file.write_all(b"two").unwrap();
        file.set_modified(an_hour_ago + std::time::Duration::from_secs(1))
            .unwrap();
        file.rewind().unwrap();
        assert_eq!(reloaded.hash_file(&mut file).unwrap().0, hash_bytes(b"two"));
    }
}
