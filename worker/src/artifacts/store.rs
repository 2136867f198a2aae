//! The artifact store: blobs by id in a local folder or an S3-compatible bucket, through the
//! `object_store` crate, whose backends retry with backoff and never show a half-written object
//! (a local put writes a temporary file and renames it; an S3 upload appears when complete).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, RetryConfig, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{is_valid_id, ArtifactError};

/// Parts of a large upload sent at a time, and so the most a transfer holds in memory.
const PART: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// Where artifacts are kept, as given to `--artifacts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A folder on this machine.
    Local(PathBuf),
    /// `s3://bucket/prefix`; endpoint, region and credentials from the `AWS_*` variables.
    S3 {
        /// The bucket.
        bucket: String,
        /// Key prefix, without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

impl StoreUrl {
    /// Reads `s3://bucket[/prefix]`, `file:///path` or a plain path.
    pub fn parse(text: &str) -> Result<StoreUrl, String> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "`{text}` names no bucket: write s3://BUCKET/PREFIX"
                ));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if scheme != "file" {
                return Err(format!(
                    "`{text}`: artifact stores are a folder, file:///PATH or s3://BUCKET/PREFIX, not {scheme}://"
                ));
            }
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        if path.is_empty() {
            return Err("the artifact store's path is empty".into());
        }
        Ok(StoreUrl::Local(PathBuf::from(path)))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Local(path) => write!(f, "{}", path.display()),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A blob as listed by the store.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    /// Its id.
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// When it was written.
    pub modified: std::time::SystemTime,
}

/// Blobs by id.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    local_root: Option<PathBuf>,
}

impl fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("url", &self.url)
            .finish()
    }
}

impl ArtifactStore {
    /// Opens the store at `url` (a local folder is created if missing).
    pub fn open(url: &StoreUrl) -> Result<ArtifactStore, String> {
        let shown = url.to_string();
        match url {
            StoreUrl::Local(path) => {
                std::fs::create_dir_all(path)
                    .map_err(|err| format!("cannot create the artifact store {shown}: {err}"))?;
                let root = std::fs::canonicalize(path)
                    .map_err(|err| format!("cannot open the artifact store {shown}: {err}"))?;
                let fs = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|err| format!("cannot open the artifact store {shown}: {err}"))?;
                Ok(ArtifactStore {
                    inner: Arc::new(fs),
                    prefix: String::new(),
                    url: shown,
                    local_root: Some(root),
                })
            }
            StoreUrl::S3 { bucket, prefix } => {
                let endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                    .iter()
                    .find_map(|name| std::env::var(name).ok());
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        backoff: Default::default(),
                        max_retries: 5,
                        retry_timeout: Duration::from_secs(60),
                    });
                if endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"))
                {
                    builder = builder.with_allow_http(true);
                }
                if std::env::var("AWS_REGION").is_err()
                    && std::env::var("AWS_DEFAULT_REGION").is_err()
                {
                    builder = builder.with_region("us-east-1");
                }
                let s3 = builder
                    .build()
                    .map_err(|err| format!("cannot use the artifact store {shown}: {err}"))?;
                Ok(ArtifactStore {
                    inner: Arc::new(s3),
                    prefix: prefix.clone(),
                    url: shown,
                    local_root: None,
                })
            }
        }
    }

    /// The store's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether blobs are files on this machine ([`ArtifactStore::local_blob_path`]).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    fn relative_key(id: &str) -> String {
        format!("blobs/{}/{id}", &id[..2])
    }

    fn key(&self, id: &str) -> ObjectPath {
        let relative = Self::relative_key(id);
        if self.prefix.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{}/{relative}", self.prefix))
        }
    }

    fn checked<'a>(&self, id: &'a str) -> Result<&'a str, ArtifactError> {
        if is_valid_id(id) {
            Ok(id)
        } else {
            Err(ArtifactError::Missing {
                id: id.to_string(),
                store: self.url.clone(),
            })
        }
    }

    /// Where blob `id` is on disk, for a local store.
    pub fn local_blob_path(&self, id: &str) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        is_valid_id(id).then(|| root.join(Self::relative_key(id)))
    }

    fn store_error(&self, id: &str, err: object_store::Error) -> ArtifactError {
        match err {
            object_store::Error::NotFound { .. } => ArtifactError::Missing {
                id: id.to_string(),
                store: self.url.clone(),
            },
            source => ArtifactError::Store {
                store: self.url.clone(),
                source,
            },
        }
    }

    /// Whether blob `id` is in the store.
    pub async fn contains(&self, id: &str) -> Result<bool, ArtifactError> {
        let id = self.checked(id)?;
        match self.inner.head(&self.key(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(self.store_error(id, err)),
        }
    }

    /// Stores `bytes` as blob `id` (the caller hashed them).
    pub async fn put_bytes(&self, id: &str, bytes: Vec<u8>) -> Result<(), ArtifactError> {
        let id = self.checked(id)?;
        self.inner
            .put(&self.key(id), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|err| self.store_error(id, err))
    }

    /// Stores the file at `path` as blob `id`, streamed in parts so a large file never sits in
    /// memory. The caller opened `path` safely and hashed it; a local store copies it in with
    /// the kernel's copy (a reflink where the file system can) and renames it into place.
    pub async fn put_file(&self, id: &str, file: std::fs::File) -> Result<(), ArtifactError> {
        let id = self.checked(id)?.to_string();
        if let Some(target) = self.local_blob_path(&id) {
            return tokio::task::spawn_blocking(move || copy_into_place(file, &target))
                .await
                .map_err(|err| {
                    ArtifactError::io("copying into the store")(std::io::Error::other(err))
                })?;
        }
        let size = file
            .metadata()
            .map_err(ArtifactError::io("reading an output"))?
            .len();
        let mut file = tokio::fs::File::from_std(file);
        if size <= PART as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .await
                .map_err(ArtifactError::io("reading an output"))?;
            return self.put_bytes(&id, bytes).await;
        }
        let upload = self
            .inner
            .put_multipart(&self.key(&id))
            .await
            .map_err(|err| self.store_error(&id, err))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buffer = vec![0u8; PART];
        loop {
            let n = file
                .read(&mut buffer)
                .await
                .map_err(ArtifactError::io("reading an output"))?;
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|err| self.store_error(&id, err))?;
            writer.write(&buffer[..n]);
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|err| self.store_error(&id, err))
    }

    /// The store's answer for blob `id` (checked), not yet read.
    async fn get(&self, id: &str) -> Result<object_store::GetResult, ArtifactError> {
        self.inner
            .get(&self.key(id))
            .await
            .map_err(|err| self.store_error(id, err))
    }

    /// Blob `id`'s bytes, at most `cap` of them, verified against the id.
    pub async fn get_bytes(&self, id: &str, cap: u64) -> Result<Vec<u8>, ArtifactError> {
        let id = self.checked(id)?;
        let got = self.get(id).await?;
        if got.meta.size > cap {
            return Err(ArtifactError::Io {
                what: format!("artifact {id} in {}", self.url),
                source: std::io::Error::other(format!("is {} bytes, over {cap}", got.meta.size)),
            });
        }
        let bytes = got.bytes().await.map_err(|err| self.store_error(id, err))?;
        let actual = super::hash::hash_bytes(&bytes);
        if actual != id {
            return Err(self.corrupt(id, actual));
        }
        Ok(bytes.to_vec())
    }

    /// Writes blob `id` to the new file `dest`, hashing as it streams; a blob that does not hash
    /// to its id is an error and `dest` is removed. Returns the bytes written.
    pub async fn download(&self, id: &str, dest: &Path) -> Result<u64, ArtifactError> {
        let id = self.checked(id)?;
        let got = self.get(id).await?;
        let what = || format!("writing {}", dest.display());
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .map_err(ArtifactError::io(what()))?;
        let mut hasher = blake3::Hasher::new();
        let mut stream = got.into_stream();
        let mut total = 0u64;
        let result = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|err| self.store_error(id, err))?;
                hasher.update(&chunk);
                total += chunk.len() as u64;
                out.write_all(&chunk)
                    .await
                    .map_err(ArtifactError::io(what()))?;
            }
            out.flush().await.map_err(ArtifactError::io(what()))?;
            let actual = hasher.finalize().to_hex().to_string();
            if actual != id {
                return Err(self.corrupt(id, actual));
            }
            Ok(total)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    /// The error for a blob whose bytes hash to `actual`.
    pub fn corrupt(&self, id: &str, actual: String) -> ArtifactError {
        ArtifactError::Corrupt {
            id: id.to_string(),
            actual,
            store: self.url.clone(),
        }
    }

    /// Every blob in the store.
    pub async fn list(&self) -> Result<Vec<BlobInfo>, ArtifactError> {
        let prefix = if self.prefix.is_empty() {
            ObjectPath::from("blobs")
        } else {
            ObjectPath::from(format!("{}/blobs", self.prefix))
        };
        let mut listing = self.inner.list(Some(&prefix));
        let mut blobs = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|source| ArtifactError::Store {
                store: self.url.clone(),
                source,
            })?;
            let Some(id) = meta.location.filename() else {
                continue;
            };
            if is_valid_id(id) {
                blobs.push(BlobInfo {
                    id: id.to_string(),
                    size: meta.size,
                    modified: meta.last_modified.into(),
                });
            }
        }
        Ok(blobs)
    }

    /// Removes the temporary files that uploads killed midway left in a local store (a blob's
    /// name with a leading `.`), when older than `age`: a live upload is still writing its own.
    /// Returns how many went. An S3 store keeps no such files (an unfinished multipart upload
    /// is never visible; the bucket's lifecycle rules expire it).
    pub fn remove_stale_temporaries(&self, age: Duration) -> usize {
        let Some(root) = &self.local_root else {
            return 0;
        };
        let mut removed = 0;
        let folders = std::fs::read_dir(root.join("blobs"))
            .into_iter()
            .flatten()
            .flatten();
        for folder in folders {
            for entry in std::fs::read_dir(folder.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let temporary = entry.file_name().to_string_lossy().starts_with('.');
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|elapsed| elapsed > age);
                if temporary && old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Removes blob `id` (gone already is fine).
    pub async fn delete(&self, id: &str) -> Result<(), ArtifactError> {
        let id = self.checked(id)?;
        match self.inner.delete(&self.key(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(self.store_error(id, err)),
        }
    }
}

/// Copies `file` to a temporary name beside `target`, makes it read-only and renames it over
/// `target`: readers see the whole blob or none, and two workers storing the same blob at
/// once both end with the same bytes there.
fn copy_into_place(mut file: std::fs::File, target: &Path) -> Result<(), ArtifactError> {
    use std::os::unix::fs::PermissionsExt;
    let folder = target.parent().expect("a blob path has a folder");
    std::fs::create_dir_all(folder)
        .map_err(ArtifactError::io(format!("creating {}", folder.display())))?;
    let temporary = folder.join(format!(
        ".{}.{}-{}",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("blob"),
        std::process::id(),
        ulid_like()
    ));
    let what = || format!("copying into {}", temporary.display());
    let copied = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        std::io::copy(&mut file, &mut out)?;
        out.sync_all()?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o444))?;
        std::fs::rename(&temporary, target)
    })();
    if let Err(err) = copied {
        let _ = std::fs::remove_file(&temporary);
        return Err(ArtifactError::io(what())(err));
    }
    Ok(())
}

/// A name part unique within this process.
fn ulid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        crate::task::now_ms(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("s3://bucket/a/b/").unwrap(),
            StoreUrl::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://bucket").unwrap().to_string(),
            "s3://bucket"
        );
        assert_eq!(
            StoreUrl::parse("file:///srv/a").unwrap(),
            StoreUrl::Local("/srv/a".into())
        );
        assert_eq!(
            StoreUrl::parse("rel/dir").unwrap(),
            StoreUrl::Local("rel/dir".into())
        );
        assert!(StoreUrl::parse("gs://x").unwrap_err().contains("not gs://"));
        assert!(StoreUrl::parse("s3:///x").is_err());
    }

    #[tokio::test]
    async fn a_local_store_keeps_blobs_by_id_and_refuses_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&StoreUrl::Local(dir.path().join("store"))).unwrap();
        let id = super::super::hash::hash_bytes(b"hello");
        assert!(!store.contains(&id).await.unwrap());
        store.put_bytes(&id, b"hello".to_vec()).await.unwrap();
        assert!(store.contains(&id).await.unwrap());
        assert_eq!(store.get_bytes(&id, 100).await.unwrap(), b"hello");
        assert!(store.contains("../../etc/passwd").await.is_err());
        // Bytes that do not match their id are caught on the way out.
        let wrong = super::super::hash::hash_bytes(b"other");
        store.put_bytes(&wrong, b"hello".to_vec()).await.unwrap();
        let err = store.get_bytes(&wrong, 100).await.unwrap_err();
        assert!(err.to_string().contains("is corrupt"), "{err}");
        let dest = dir.path().join("out");
        assert!(store.download(&wrong, &dest).await.is_err());
        assert!(!dest.exists(), "a corrupt download leaves nothing behind");
        assert_eq!(store.list().await.unwrap().len(), 2);
        // What a killed upload left: removed once old, a live one's kept.
        let folder = dir.path().join("store/blobs").join(&id[..2]);
        let stale = folder.join(format!(".{id}.1-1"));
        let live = folder.join(format!(".{id}.2-2"));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(&live, b"half").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(store.remove_stale_temporaries(Duration::from_secs(3600)), 1);
        assert!(!stale.exists() && live.exists());
        assert_eq!(
            store.list().await.unwrap().len(),
            2,
            "temporaries are never listed as blobs"
        );
    }
}
