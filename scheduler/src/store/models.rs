//! The model registry's records (see [`crate::models`]).
//!
//! Keys: `mv/<model>/<version>` a version, `ma/<model>/<alias>` an alias, `mh/<model>/<seq>` the
//! alias history, `mr/<run>/<step>` what a `register` or `deploy` step did (so a step run again
//! after a crash finds its own earlier effect instead of repeating it). Numbers in keys are
//! 16 hex digits, so keys sort as numbers do.
//!
//! Every write takes the registry lock, reads what it changes, and commits one flushed batch:
//! concurrent promotions are serialised, and an alias and its history entry are written
//! together or not at all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_worker::task::now_ms;

use super::{decode, Store, StoreError};
use crate::models::*;

/// What a `register` or `deploy` step did, kept so that running it again does nothing new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepEffect {
    /// The model.
    pub model: String,
    /// The version registered or deployed.
    pub version: u64,
}

/// What an alias move did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AliasMove {
    /// The model.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// The version it held before.
    pub from: Option<u64>,
    /// The version it holds now.
    pub to: u64,
    /// `false` when the alias already held `to`: nothing was written.
    pub moved: bool,
}

/// An alias move asked for.
pub struct MoveRequest<'a> {
    /// The model.
    pub model: &'a str,
    /// The alias.
    pub alias: &'a str,
    /// What moves it.
    pub action: AliasAction,
    /// Who moves it.
    pub who: &'a str,
    /// Why.
    pub reason: Option<&'a str>,
}

fn version_key(model: &str, version: u64) -> String {
    format!("mv/{model}/{version:016x}")
}

fn alias_key(model: &str, alias: &str) -> String {
    format!("ma/{model}/{alias}")
}

fn effect_key(run_id: &str, step: &str) -> String {
    format!("mr/{run_id}/{step}")
}

impl Store {
    /// Registers `version` (its `version` field is ignored: the next number is taken) and,
    /// with `alias`, points the alias at it, in one commit. A `register` step that already
    /// registered (its effect is recorded) gets its earlier version back instead.
    pub fn register_model(
        &self,
        mut version: ModelVersion,
        alias: Option<&str>,
        who: &str,
    ) -> Result<ModelVersion, RegistryError> {
        check_name("model name", &version.model).map_err(RegistryError::Invalid)?;
        if let Some(alias) = alias {
            check_name("alias", alias).map_err(RegistryError::Invalid)?;
        }
        let _serialised = self.registry_lock();
        let effect = effect_key(&version.run_id, &version.registered_by);
        if let Some(done) = self.get::<StepEffect>(&effect)? {
            return self.model_version(&done.model, done.version);
        }
        version.version = self.latest_version(&version.model)?.unwrap_or(0) + 1;
        let mut batch = sled::Batch::default();
        put(
            &mut batch,
            &version_key(&version.model, version.version),
            &version,
        );
        let done = StepEffect {
            model: version.model.clone(),
            version: version.version,
        };
        put(&mut batch, &effect, &done);
        if let Some(alias) = alias {
            let request = MoveRequest {
                model: &version.model,
                alias,
                action: AliasAction::Register,
                who,
                reason: None,
            };
            self.stage_move(&mut batch, &request, version.version, None)?;
        }
        self.commit_batch(batch)?;
        Ok(version)
    }

    /// Points `alias` at `to` (which must exist), recording who, what and why. Moving an alias
    /// to the version it holds writes nothing and says so (`moved: false`). With `effect`
    /// (a `deploy` step's run and step), the step's effect is recorded in the same commit, and
    /// a step that already moved the alias gets that move back instead of moving it again.
    pub fn move_alias(
        &self,
        request: &MoveRequest<'_>,
        to: u64,
        effect: Option<(&str, &str)>,
    ) -> Result<AliasMove, RegistryError> {
        check_name("alias", request.alias).map_err(RegistryError::Invalid)?;
        let _serialised = self.registry_lock();
        self.model_version(request.model, to)?;
        if let Some((run, step)) = effect {
            if let Some(done) = self.get::<StepEffect>(&effect_key(run, step))? {
                return Ok(AliasMove {
                    model: done.model,
                    alias: request.alias.to_string(),
                    from: None,
                    to: done.version,
                    moved: false,
                });
            }
        }
        let mut batch = sled::Batch::default();
        let moved = self.stage_move(&mut batch, request, to, None)?;
        if let Some((run, step)) = effect {
            let done = StepEffect {
                model: request.model.to_string(),
                version: to,
            };
            put(&mut batch, &effect_key(run, step), &done);
        }
        if moved.moved || effect.is_some() {
            self.commit_batch(batch)?;
        }
        Ok(moved)
    }

    /// Points `alias` back at the version it held before its last move.
    pub fn rollback_alias(
        &self,
        model: &str,
        alias: &str,
        who: &str,
        reason: Option<&str>,
    ) -> Result<AliasMove, RegistryError> {
        let _serialised = self.registry_lock();
        let current = self.alias(model, alias)?;
        let Some(&back) = current.previous.last() else {
            return Err(RegistryError::NothingToRollBack {
                model: model.into(),
                alias: alias.into(),
            });
        };
        let mut previous = current.previous.clone();
        previous.pop();
        let request = MoveRequest {
            model,
            alias,
            action: AliasAction::Rollback,
            who,
            reason,
        };
        let mut batch = sled::Batch::default();
        let moved = self.stage_move(&mut batch, &request, back, Some(previous))?;
        self.commit_batch(batch)?;
        Ok(moved)
    }

    /// Adds an alias move and its history entry to `batch`; `previous` replaces the alias's
    /// list of earlier versions (a rollback pops it), else the version it leaves is pushed.
    fn stage_move(
        &self,
        batch: &mut sled::Batch,
        request: &MoveRequest<'_>,
        to: u64,
        previous: Option<Vec<u64>>,
    ) -> Result<AliasMove, RegistryError> {
        check_name("alias", request.alias).map_err(RegistryError::Invalid)?;
        let key = alias_key(request.model, request.alias);
        let old: Option<AliasRecord> = self.get(&key)?;
        let from = old.as_ref().map(|a| a.version);
        let moved = AliasMove {
            model: request.model.to_string(),
            alias: request.alias.to_string(),
            from,
            to,
            moved: from != Some(to),
        };
        if !moved.moved {
            return Ok(moved);
        }
        let previous = previous.unwrap_or_else(|| {
            let mut list = old.map(|a| a.previous).unwrap_or_default();
            list.extend(from);
            list
        });
        let now = now_ms();
        let record = AliasRecord {
            version: to,
            previous,
            moved_ms: now,
        };
        put(batch, &key, &record);
        let seq = self.next_history_seq(request.model)?;
        let entry = HistoryEntry {
            seq,
            alias: request.alias.to_string(),
            from,
            to,
            action: request.action,
            who: request.who.to_string(),
            at_ms: now,
            reason: request.reason.map(str::to_string),
        };
        put(batch, &format!("mh/{}/{seq:016x}", request.model), &entry);
        Ok(moved)
    }

    /// Every model's name, in order.
    pub fn model_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = Vec::new();
        for key in self.db()?.scan_prefix(b"mv/").keys() {
            let key = key?;
            let text = String::from_utf8_lossy(&key[3..]);
            if let Some((name, _)) = text.split_once('/') {
                if names.last().map(String::as_str) != Some(name) {
                    names.push(name.to_string());
                }
            }
        }
        // Keys sort `churn-a/` before `churn/` (`-` before `/`): sort by name.
        names.sort_unstable();
        Ok(names)
    }

    /// Every model with its aliases, in name order.
    pub fn models(&self) -> Result<Vec<ModelSummary>, StoreError> {
        let mut out = Vec::new();
        for name in self.model_names()? {
            let latest: Option<ModelVersion> = self.last(&format!("mv/{name}/"))?;
            let aliases = self
                .aliases(&name)?
                .into_iter()
                .map(|(alias, record)| (alias, record.version))
                .collect();
            out.push(ModelSummary {
                versions: latest.as_ref().map_or(0, |v| v.version),
                latest: latest.as_ref().map(|v| v.version),
                updated_ms: latest.as_ref().map_or(0, |v| v.created_ms),
                aliases,
                name,
            });
        }
        Ok(out)
    }

    /// A model's versions, oldest first; an unknown model is an error naming those that exist.
    pub fn model_versions(&self, model: &str) -> Result<Vec<ModelVersion>, RegistryError> {
        let versions: Vec<ModelVersion> = self.scan(&format!("mv/{model}/"))?;
        if versions.is_empty() {
            return Err(self.unknown_model(model));
        }
        Ok(versions)
    }

    /// One version of a model.
    pub fn model_version(&self, model: &str, version: u64) -> Result<ModelVersion, RegistryError> {
        if let Some(found) = self.get(&version_key(model, version))? {
            return Ok(found);
        }
        match self.latest_version(model)? {
            Some(latest) => Err(RegistryError::UnknownVersion {
                model: model.into(),
                version,
                latest,
            }),
            None => Err(self.unknown_model(model)),
        }
    }

    /// The version a reference names.
    pub fn resolve_model(&self, reference: &ModelRef) -> Result<ModelVersion, RegistryError> {
        let model = reference.model.as_str();
        match &reference.selector {
            Selector::Version(v) => self.model_version(model, *v),
            Selector::Alias(alias) => {
                let record = self.alias(model, alias)?;
                self.model_version(model, record.version)
            }
            Selector::Latest => self
                .last(&format!("mv/{model}/"))?
                .ok_or_else(|| self.unknown_model(model)),
        }
    }

    /// A model's aliases by name.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, AliasRecord>, StoreError> {
        let prefix = format!("ma/{model}/");
        self.db()?
            .scan_prefix(prefix.as_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                let alias = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                Ok((alias, decode(&key, &value)?))
            })
            .collect()
    }

    /// One alias of a model; an unknown one is an error naming those that exist.
    pub fn alias(&self, model: &str, alias: &str) -> Result<AliasRecord, RegistryError> {
        if let Some(record) = self.get(&alias_key(model, alias))? {
            return Ok(record);
        }
        if self.latest_version(model)?.is_none() {
            return Err(self.unknown_model(model));
        }
        Err(RegistryError::UnknownAlias {
            model: model.into(),
            alias: alias.into(),
            known: list_or_none(self.aliases(model)?.keys()),
        })
    }

    /// A model's alias history, oldest first.
    pub fn model_history(&self, model: &str) -> Result<Vec<HistoryEntry>, RegistryError> {
        if self.latest_version(model)?.is_none() {
            return Err(self.unknown_model(model));
        }
        Ok(self.scan(&format!("mh/{model}/"))?)
    }

    /// The version a `register` step of a run registered, if it did.
    pub fn step_effect(&self, run_id: &str, step: &str) -> Result<Option<StepEffect>, StoreError> {
        self.get(&effect_key(run_id, step))
    }

    /// Every registered version of every model (for `gc`, which keeps their artifacts).
    pub fn all_model_versions(&self) -> Result<Vec<ModelVersion>, StoreError> {
        self.scan("mv/")
    }

    fn latest_version(&self, model: &str) -> Result<Option<u64>, StoreError> {
        let last: Option<ModelVersion> = self.last(&format!("mv/{model}/"))?;
        Ok(last.map(|v| v.version))
    }

    fn next_history_seq(&self, model: &str) -> Result<u64, StoreError> {
        let last: Option<HistoryEntry> = self.last(&format!("mh/{model}/"))?;
        Ok(last.map_or(0, |e| e.seq + 1))
    }

    fn last<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Option<T>, StoreError> {
        match self.db()?.scan_prefix(prefix.as_bytes()).next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                decode(&key, &value).map(Some)
            }
            None => Ok(None),
        }
    }

    fn unknown_model(&self, model: &str) -> RegistryError {
        RegistryError::UnknownModel {
            name: model.into(),
            known: list_or_none(self.model_names().unwrap_or_default()),
        }
    }

    fn registry_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn commit_batch(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.write(|db| {
            db.apply_batch(batch)?;
            db.flush()?;
            Ok(())
        })
    }
}

fn put(batch: &mut sled::Batch, key: &str, value: &impl Serialize) {
    // Records are plain data; serialising them cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    batch.insert(key.as_bytes(), bytes);
}
