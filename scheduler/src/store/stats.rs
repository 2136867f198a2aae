//! What `/metrics` reads from the store at each scrape: its size on disk and where every model
//! alias points. Both are read without scanning runs, so a scrape stays cheap however much
//! history the store keeps.

use super::{decode, Store, StoreError};
use crate::models::AliasRecord;

impl Store {
    /// Bytes the database takes on disk, as sled counts them (its files, with space that is
    /// not reclaimed yet).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db()?.size_on_disk()?)
    }

    /// Every alias of every model, as (model, alias, version), in key order: one scan of the
    /// aliases, none of the versions.
    pub fn every_alias(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut aliases = Vec::new();
        for entry in self.db()?.scan_prefix(b"ma/") {
            let (key, value) = entry?;
            let record: AliasRecord = decode(&key, &value)?;
            // `ma/{model}/{alias}`: names hold no `/` (see `crate::models::check_name`).
            let text = String::from_utf8_lossy(&key[3..]);
            if let Some((model, alias)) = text.split_once('/') {
                aliases.push((model.to_string(), alias.to_string(), record.version));
            }
        }
        Ok(aliases)
    }
}
