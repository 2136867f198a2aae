//! `--artifacts` and `--cache-size`, shared by `run`, `scheduler`, `server` and `worker`.

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use sluice_worker::artifacts::{ArtifactStore, Artifacts, StoreUrl};

/// Where artifacts are kept.
#[derive(Debug, Clone, Args)]
pub struct ArtifactArgs {
    /// The artifact store: a folder, `file:///PATH` or `s3://BUCKET/PREFIX` (endpoint, region
    /// and credentials from the `AWS_*` variables: MinIO, Ceph and R2 work too). Default:
    /// `artifacts` in the data dir. The scheduler and every worker must use the same store.
    #[arg(long, env = "SLUICE_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// Most bytes of downloaded blobs kept in the data dir's cache (least recently used go
    /// first): `20Gi`, `500M`. Not used with a local store, whose files are used in place.
    #[arg(long, env = "SLUICE_CACHE_SIZE", default_value = "10Gi", value_parser = crate::spec::values::memory)]
    pub cache_size: u64,
}

impl ArtifactArgs {
    /// The store's URL, `artifacts` under `data_dir` by default.
    pub fn url(&self, data_dir: &Path) -> Result<StoreUrl, String> {
        match &self.artifacts {
            Some(text) => StoreUrl::parse(text),
            None => Ok(StoreUrl::Local(data_dir.join("artifacts"))),
        }
    }

    /// Opens the store, with its cache under `data_dir/cache`.
    pub fn open(&self, data_dir: &Path) -> Result<Arc<Artifacts>, String> {
        let store = ArtifactStore::open(&self.url(data_dir)?)?;
        Artifacts::new(store, &data_dir.join("cache"), self.cache_size)
            .map(Arc::new)
            .map_err(|err| err.to_string())
    }
}
