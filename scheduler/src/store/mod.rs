//! The sled store: the single source of truth for pipelines, runs, steps and history.
//!
//! Everything lives in one tree with prefixed keys, so that one [`Changes`] batch can update a
//! run, its steps and its history atomically, and one flush makes the batch durable before it is
//! reported to anyone.
//!
//! Keys: `p/<hash>` pipeline, `r/<run>` run, `s/<run>/<step>` step, `e/<run>/<seq>` the events
//! one commit added to a run's history, from sequence number `seq` on (an array, or one event),
//! `a/<run>` unfinished runs, `f/<run>` finished runs `after:` triggers have yet to decide on,
//! `m/<key>` trigger marks ([`marks`]); the model registry's are in [`models`].

#[cfg(test)]
mod batch_tests;
pub mod marks;
pub mod models;
#[cfg(test)]
mod models_tests;
pub mod records;
pub mod secrets;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_worker::backoff::Backoff;

pub use crate::artifacts::IndexEntry;
pub use records::*;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the store open (sled takes an exclusive file lock).
    #[error("the store in {path} is in use by another sluice process; one process at a time can open a data dir")]
    Locked {
        /// The store's folder.
        path: String,
    },
    /// sled could not open the data folder.
    #[error("cannot open the store in {path}: {cause}")]
    Open {
        /// The data folder.
        path: String,
        /// sled's error (in the message, not a `source`, so it is printed once).
        cause: sled::Error,
    },
    /// sled failed to read or write.
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    /// The database could not be reopened after a failed write; the next write tries again.
    #[error("the store is not open after a failed write ({0}); retrying")]
    Unavailable(String),
    /// A record could not be decoded: the store was written by an incompatible version.
    #[error("record `{key}` in the store cannot be read")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

impl StoreError {
    /// Whether trying again later may succeed: the disk failed or filled up, or the database is
    /// being reopened. Corruption, a bug report from sled or a bad record will not pass.
    pub fn may_pass(&self) -> bool {
        matches!(
            self,
            StoreError::Io(sled::Error::Io(_))
                | StoreError::Open {
                    cause: sled::Error::Io(_),
                    ..
                }
                | StoreError::Unavailable(_)
                | StoreError::Locked { .. }
        )
    }
}

/// What looking a run up by id or prefix found.
#[derive(Debug)]
// Returned once per lookup, never kept in bulk: boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum RunLookup {
    /// Exactly one run.
    Found(RunRecord),
    /// No run has that id or prefix.
    NotFound,
    /// Several runs start with that prefix.
    Ambiguous,
}

/// The store, opened by one process at a time (sled takes a file lock).
///
/// A failed write (a full disk) poisons a sled database for good: every later write returns the
/// same error. So after one the store reopens its database before the next write (what was
/// applied but not flushed is dropped with it: it was never acknowledged), and reports itself
/// unwritable until a write succeeds again, for `/readyz`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` while a reopen failed (the next write tries again).
    db: RwLock<Option<sled::Db>>,
    /// Why the last write failed, until a write succeeds; a write reopens the database first.
    write_failure: Mutex<Option<String>>,
    /// Serialises the model registry's writes (see [`models`]).
    registry: Mutex<()>,
}

/// The open database, read-locked against a reopen.
struct DbRef<'a>(RwLockReadGuard<'a, Option<sled::Db>>);

impl std::ops::Deref for DbRef<'_> {
    type Target = sled::Db;
    fn deref(&self) -> &sled::Db {
        // `Store::db` hands one out only when the database is open.
        self.0.as_ref().expect("checked by Store::db")
    }
}

/// Records to write together: all or nothing, and durable once [`Store::commit`] returns.
#[derive(Default)]
pub struct Changes {
    batch: sled::Batch,
    /// The events appended to each run's history, serialised, in order: written as one record
    /// per run (see [`Changes::put_event`]).
    events: Vec<(String, u64, Vec<Vec<u8>>)>,
    len: usize,
}

impl Changes {
    /// Stores a pipeline definition.
    pub fn put_pipeline(&mut self, pipeline: &PipelineRecord) {
        self.put(format!("p/{}", pipeline.hash), pipeline);
    }

    /// Stores a run, and keeps the index of unfinished runs (`a/`) in step with it, so a
    /// daemon that starts finds the runs to pick up without reading its whole history. A run
    /// that ends enters the feed of finished runs (`f/`) in the same commit, so `after:`
    /// triggers see every run that ended, even one that ended while no daemon ran.
    pub fn put_run(&mut self, run: &RunRecord) {
        self.put(format!("r/{}", run.id), run);
        let active = format!("a/{}", run.id);
        if run.status.is_terminal() {
            self.batch.remove(active.as_bytes());
            self.batch.insert(format!("f/{}", run.id).as_bytes(), &[]);
        } else {
            self.batch.insert(active.as_bytes(), &[]);
        }
        self.len += 1;
    }

    /// Stores a step; a succeeded one's artifacts go into the index of who made what
    /// (`x/<id>/<run>/<step>`), in the same commit.
    pub fn put_step(&mut self, step: &StepRecord) {
        self.put(format!("s/{}/{}", step.run_id, step.name), step);
        if step.status == StepStatus::Succeeded {
            let attempt = step.last_attempt();
            for artifact in &step.artifacts {
                let entry = IndexEntry {
                    name: artifact.name.clone(),
                    kind: artifact.kind,
                    size: artifact.size,
                    files: artifact.files,
                    attempt: attempt.map_or(0, |a| a.number),
                    created_ms: attempt.and_then(|a| a.finished_ms).unwrap_or(0),
                };
                let key = format!(
                    "x/{}/{}/{}/{}",
                    artifact.id, step.run_id, step.name, artifact.name
                );
                self.put(key, &entry);
            }
            // A fresh success is what later runs with the same key reuse (a hit reused one).
            if let Some(note) = step.cache.as_ref().filter(|n| n.hit_from.is_none()) {
                let entry = crate::engine::cache::CacheEntry::of(step);
                self.put(
                    format!("k/{}/{}/{}", note.pipeline, step.name, note.key),
                    &entry,
                );
                self.put(
                    format!("kl/{}/{}", note.pipeline, step.name),
                    &note.components,
                );
            }
        }
    }

    /// Records a trigger's bookkeeping (a cron trigger's last instant, a webhook delivery id,
    /// a watched file) with the run it started, in the same commit.
    pub fn put_mark(&mut self, key: &str, value: &impl Serialize) {
        self.put(format!("m/{key}"), value);
    }

    /// Removes a trigger's or a notification's mark.
    pub fn remove_mark(&mut self, key: &str) {
        self.batch.remove(format!("m/{key}").as_bytes());
        self.len += 1;
    }

    /// Takes a run out of the feed of finished runs: every `after:` trigger has decided on it.
    pub fn forget_finished(&mut self, run_id: &str) {
        self.batch.remove(format!("f/{run_id}").as_bytes());
        self.len += 1;
    }

    /// Appends to a run's history. The events of one change go into one record, keyed by the
    /// first one's sequence number (`e/{run}/{seq:016x}`; a JSON array when there are several,
    /// an object when one): a step's queued, started and finished events used to be a record
    /// each, and writing them was almost half of the scheduler's CPU in a wide fan-out.
    pub fn put_event(&mut self, run_id: &str, event: &EventRecord) {
        // Records are plain data; serialising them cannot fail.
        let bytes = serde_json::to_vec(event).unwrap_or_default();
        match self.events.iter_mut().find(|(run, _, _)| run == run_id) {
            Some((_, _, events)) => events.push(bytes),
            None => self
                .events
                .push((run_id.to_string(), event.seq, vec![bytes])),
        }
        self.len += 1;
    }

    /// Everything to write, as one sled batch.
    fn batch(&self) -> sled::Batch {
        let mut batch = self.batch.clone();
        for (run_id, first_seq, events) in &self.events {
            let value = match events.as_slice() {
                [one] => one.clone(),
                many => [&b"["[..], &many.join(&b","[..]), b"]"].concat(),
            };
            batch.insert(format!("e/{run_id}/{first_seq:016x}").as_bytes(), value);
        }
        batch
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn put(&mut self, key: String, value: &impl Serialize) {
        // Records are plain data; serialising them cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.batch.insert(key.as_bytes(), bytes);
        self.len += 1;
    }
}

impl Store {
    /// Opens (or creates) the store under `dir/store`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("store");
        let db = open_db(&path)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                db: RwLock::new(Some(db)),
                write_failure: Mutex::new(None),
                registry: Mutex::new(()),
            }),
        })
    }

    fn db(&self) -> Result<DbRef<'_>, StoreError> {
        let guard = self.inner.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(StoreError::Unavailable(
                self.write_failure().unwrap_or_default(),
            ));
        }
        Ok(DbRef(guard))
    }

    /// Applies `changes` atomically and flushes them to disk before returning. On failure
    /// nothing of `changes` is durable and the caller may commit the same changes again.
    pub fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write(|db| {
            db.apply_batch(changes.batch())?;
            db.flush()?;
            Ok(())
        })
    }

    /// Like [`Store::commit`], but waits out failures that can pass (a full disk, a reopen
    /// that failed), trying again after a pause that grows to 5 s: for a run's driver, which
    /// must neither drop what it applied nor go on before it is written.
    pub fn commit_patiently(&self, changes: &Changes) -> Result<(), StoreError> {
        let mut backoff = Backoff::new(std::time::Duration::from_millis(50));
        loop {
            match self.commit(changes) {
                Err(err) if err.may_pass() => std::thread::sleep(backoff.step()),
                done => return done,
            }
        }
    }

    /// Writes and flushes a probe record: `Err` says why the store cannot write now (a full
    /// disk), for readiness checks. A success after failures is the store's recovery.
    pub fn probe_write(&self) -> Result<(), StoreError> {
        self.write(|db| {
            db.insert(b"h/probe", &sluice_worker::task::now_ms().to_be_bytes())?;
            db.flush()?;
            Ok(())
        })
    }

    /// Why writes fail, while they do.
    pub fn write_failure(&self) -> Option<String> {
        self.inner
            .write_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn write(
        &self,
        write: impl FnOnce(&sled::Db) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.write_failure().is_some() {
            self.reopen()?;
        }
        let result = write(&*self.db()?);
        let mut failure = self
            .inner
            .write_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(()) => {
                if failure.take().is_some() {
                    tracing::info!(path = %self.inner.path.display(), "The store writes again.");
                }
            }
            Err(err) => {
                if failure.is_none() {
                    tracing::error!(path = %self.inner.path.display(), error = %err, "The store cannot write; retrying.");
                }
                *failure = Some(err.to_string());
                drop(failure);
                // At once, not at the next write: the failed batch was applied in memory, and
                // until the database is reopened readers would see it (a retried webhook told
                // of a run that was never written). While the disk stays full the reopen fails
                // and reads fail with it, which is the truth.
                let _ = self.reopen();
            }
        }
        result
    }

    /// Closes the poisoned database and opens it again from what is on disk.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        drop(db.take());
        // sled lets go of its file lock when its background thread ends, a moment later.
        let mut last = None;
        for _ in 0..50 {
            match open_db(&self.inner.path) {
                Ok(opened) => {
                    *db = Some(opened);
                    return Ok(());
                }
                Err(err @ StoreError::Locked { .. }) => {
                    last = Some(err);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or(StoreError::Unavailable(String::new())))
    }

    /// A pipeline definition by hash.
    pub fn pipeline(&self, hash: &str) -> Result<Option<PipelineRecord>, StoreError> {
        self.get(&format!("p/{hash}"))
    }

    /// A run by id.
    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.get(&format!("r/{id}"))
    }

    /// A run's steps in pipeline-file order.
    pub fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let mut steps: Vec<StepRecord> = self.scan(&format!("s/{run_id}/"))?;
        steps.sort_by_key(|s| s.index);
        Ok(steps)
    }

    /// One step of a run.
    pub fn step(&self, run_id: &str, step: &str) -> Result<Option<StepRecord>, StoreError> {
        self.get(&format!("s/{run_id}/{step}"))
    }

    /// A run's history, oldest first.
    pub fn events(&self, run_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        let mut events = Vec::new();
        for entry in self.db()?.scan_prefix(format!("e/{run_id}/").as_bytes()) {
            let (key, value) = entry?;
            events.extend(decode_events(&key, &value)?);
        }
        Ok(events)
    }

    /// The sequence number the next event of a run gets.
    pub fn next_event_seq(&self, run_id: &str) -> Result<u64, StoreError> {
        let prefix = format!("e/{run_id}/");
        match self.db()?.scan_prefix(prefix.as_bytes()).next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                let last = decode_events(&key, &value)?
                    .into_iter()
                    .map(|e| e.seq)
                    .max();
                Ok(last.map_or(0, |seq| seq + 1))
            }
            None => Ok(0),
        }
    }

    /// Up to `limit` runs, newest first, older than `before` when given (for paging).
    pub fn list_runs(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let end = match before {
            Some(id) => format!("r/{id}"),
            None => "r0".to_string(), // '0' sorts right after '/', so this ends the r/ range.
        };
        let mut runs = Vec::new();
        if limit == 0 {
            return Ok(runs);
        }
        for entry in self.db()?.range("r/".as_bytes()..end.as_bytes()).rev() {
            let (key, value) = entry?;
            runs.push(decode(&key, &value)?);
            if runs.len() >= limit {
                break;
            }
        }
        Ok(runs)
    }

    /// Index entries of artifacts whose id starts with `id_prefix`: (id, run, step, entry).
    pub fn artifact_entries(
        &self,
        id_prefix: &str,
    ) -> Result<Vec<(String, String, String, IndexEntry)>, StoreError> {
        self.db()?
            .scan_prefix(format!("x/{id_prefix}").as_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                let text = String::from_utf8_lossy(&key[2..]).into_owned();
                let mut parts = text.splitn(4, '/');
                let (id, run, step) = (parts.next(), parts.next(), parts.next());
                let value: IndexEntry = decode(&key, &value)?;
                Ok((
                    id.unwrap_or_default().to_string(),
                    run.unwrap_or_default().to_string(),
                    step.unwrap_or_default().to_string(),
                    value,
                ))
            })
            .collect()
    }

    /// The cache entry of `step` of `pipeline` for `key`.
    pub fn cache_entry(
        &self,
        pipeline: &str,
        step: &str,
        key: &str,
    ) -> Result<Option<crate::engine::cache::CacheEntry>, StoreError> {
        self.get(&format!("k/{pipeline}/{step}/{key}"))
    }

    /// The key components of the newest success of `step` of `pipeline` that had `cache:`.
    pub fn cache_latest(
        &self,
        pipeline: &str,
        step: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, StoreError> {
        self.get(&format!("kl/{pipeline}/{step}"))
    }

    /// Removes a run with its steps, history and index entries (but those of artifacts the
    /// model registry names), in one durable commit.
    pub fn remove_run(&self, run_id: &str) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        // What the registry names stays findable (`artifacts show`, `get`), its run gone.
        let registered: std::collections::HashSet<String> = self
            .all_model_versions()?
            .into_iter()
            .flat_map(|v| {
                let training = v.training_data.into_iter().map(|t| t.artifact.id);
                std::iter::once(v.artifact.id).chain(training)
            })
            .collect();
        for step in self.steps(run_id)? {
            for artifact in step
                .artifacts
                .iter()
                .filter(|a| !registered.contains(&a.id))
            {
                let key = format!(
                    "x/{}/{}/{}/{}",
                    artifact.id, run_id, step.name, artifact.name
                );
                batch.remove(key.as_bytes());
            }
        }
        for prefix in [
            format!("s/{run_id}/"),
            format!("e/{run_id}/"),
            format!("mr/{run_id}/"),
        ] {
            for key in self.db()?.scan_prefix(prefix.as_bytes()).keys() {
                batch.remove(key?);
            }
        }
        batch.remove(format!("r/{run_id}").as_bytes());
        batch.remove(format!("a/{run_id}").as_bytes());
        batch.remove(format!("f/{run_id}").as_bytes());
        self.write(|db| {
            db.apply_batch(batch)?;
            db.flush()?;
            Ok(())
        })
    }

    /// A trigger's mark (see [`marks`] for the kinds), `None` when there is none.
    pub fn mark<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.get(&format!("m/{key}"))
    }

    /// Marks whose key starts with `prefix`, in key order.
    pub fn marks<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, StoreError> {
        self.db()?
            .scan_prefix(format!("m/{prefix}").as_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key[2..]).into_owned();
                Ok((name, decode(&key, &value)?))
            })
            .collect()
    }

    /// Ids of the runs that finished and that `after:` triggers have not all decided on yet.
    pub fn finished_feed(&self) -> Result<Vec<String>, StoreError> {
        self.db()?
            .scan_prefix(b"f/")
            .keys()
            .map(|key| Ok(String::from_utf8_lossy(&key?[2..]).into_owned()))
            .collect()
    }

    /// Ids of the runs that have not finished, oldest first.
    pub fn unfinished_runs(&self) -> Result<Vec<String>, StoreError> {
        self.db()?
            .scan_prefix(b"a/")
            .keys()
            .map(|key| Ok(String::from_utf8_lossy(&key?[2..]).into_owned()))
            .collect()
    }

    /// A run by its id or by a prefix of it that only one run has (ids are long; people type
    /// the start of one).
    pub fn lookup_run(&self, id_or_prefix: &str) -> Result<RunLookup, StoreError> {
        if let Some(run) = self.run(id_or_prefix)? {
            return Ok(RunLookup::Found(run));
        }
        let mut matches = self
            .db()?
            .scan_prefix(format!("r/{id_or_prefix}").as_bytes());
        let first = match matches.next() {
            Some(entry) => {
                let (key, value) = entry?;
                decode(&key, &value)?
            }
            None => return Ok(RunLookup::NotFound),
        };
        Ok(match matches.next() {
            Some(_) => RunLookup::Ambiguous,
            None => RunLookup::Found(first),
        })
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.db()?.get(key.as_bytes())? {
            Some(value) => decode(key.as_bytes(), &value).map(Some),
            None => Ok(None),
        }
    }

    fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.db()?
            .scan_prefix(prefix.as_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                decode(&key, &value)
            })
            .collect()
    }
}

fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(16 * 1024 * 1024)
        .flush_every_ms(None)
        .open()
        .map_err(|cause| match &cause {
            // sled wraps the failed file lock in an `Other` error that only its text tells.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked {
                    path: path.display().to_string(),
                }
            }
            _ => StoreError::Open {
                path: path.display().to_string(),
                cause,
            },
        })
}

/// The events of one history record: several written together (an array), or one (an object,
/// as every event was stored before they were grouped).
fn decode_events(key: &[u8], value: &[u8]) -> Result<Vec<EventRecord>, StoreError> {
    match value.first() {
        Some(b'[') => decode(key, value),
        _ => decode(key, value).map(|event| vec![event]),
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> RunRecord {
        RunRecord {
            id: id.to_string(),
            pipeline: "p".into(),
            definition_hash: "h".into(),
            trigger: TriggerOrigin::Manual,
            params: Default::default(),
            base_dir: "/".into(),
            parallelism: 1,
            status: RunStatus::Running,
            created_ms: 0,
            finished_ms: None,
            step_count: 0,
            commit: None,
            no_cache: false,
            retry_of: None,
        }
    }

    /// sled lets go of its file lock when its last background thread has ended, which can be a
    /// moment after the `Db` is dropped; another process would simply start later.
    fn reopen(dir: &std::path::Path) -> Store {
        for _ in 0..100 {
            match Store::open(dir) {
                Err(StoreError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other.unwrap(),
            }
        }
        panic!("the store stayed locked after it was closed");
    }

    #[test]
    fn a_second_opener_is_told_the_store_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().expect("the lock is held");
        assert!(
            err.to_string().contains("in use by another sluice process"),
            "{err}"
        );
    }

    #[test]
    fn committed_records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut changes = Changes::default();
            changes.put_run(&run("01A"));
            changes.put_event(
                "01A",
                &EventRecord {
                    seq: 0,
                    at_ms: 1,
                    step: None,
                    attempt: None,
                    kind: EventKind::RunStarted,
                    detail: None,
                },
            );
            store.commit(&changes).unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.run("01A").unwrap().unwrap().id, "01A");
        assert_eq!(store.next_event_seq("01A").unwrap(), 1);
        assert_eq!(store.next_event_seq("01B").unwrap(), 0);
    }

    fn event(seq: u64, step: Option<&str>, kind: EventKind) -> EventRecord {
        EventRecord {
            seq,
            at_ms: seq,
            step: step.map(str::to_string),
            attempt: step.map(|_| 1),
            kind,
            detail: None,
        }
    }

    /// A commit's events share a record; a run's history reads back whole and in order across
    /// grouped records, single ones, and records stored one event each by earlier versions.
    #[test]
    fn a_history_written_in_groups_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // As an earlier version stored it: one record per event, an object each.
        let old = event(0, None, EventKind::RunStarted);
        store
            .db()
            .unwrap()
            .insert(b"e/01A/0000000000000000", serde_json::to_vec(&old).unwrap())
            .unwrap();
        let mut changes = Changes::default();
        changes.put_event("01A", &event(1, Some("a"), EventKind::StepQueued));
        changes.put_event("01B", &event(0, None, EventKind::RunStarted));
        changes.put_event("01A", &event(2, Some("a"), EventKind::StepStarted));
        changes.put_event("01A", &event(3, Some("a"), EventKind::StepSucceeded));
        store.commit(&changes).unwrap();
        let mut changes = Changes::default();
        changes.put_event("01A", &event(4, None, EventKind::RunSucceeded));
        store.commit(&changes).unwrap();
        let seqs = |run| -> Vec<u64> { store.events(run).unwrap().iter().map(|e| e.seq).collect() };
        assert_eq!(seqs("01A"), [0, 1, 2, 3, 4]);
        assert_eq!(seqs("01B"), [0]);
        assert_eq!(
            store.events("01A").unwrap()[3],
            event(3, Some("a"), EventKind::StepSucceeded)
        );
        assert_eq!(store.next_event_seq("01A").unwrap(), 5);
        // Two commits for 01A made two records (the second a single event), plus the old one.
        let records = store.db().unwrap().scan_prefix(b"e/01A/").count();
        assert_eq!(records, 3);
        let mut changes = Changes::default();
        changes.put_event("01B", &event(1, Some("b"), EventKind::StepQueued));
        changes.put_event("01B", &event(2, Some("b"), EventKind::StepStarted));
        store.commit(&changes).unwrap();
        assert_eq!(store.next_event_seq("01B").unwrap(), 3);
    }

    #[test]
    fn runs_list_newest_first_with_paging() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut changes = Changes::default();
        for id in ["01A", "01B", "01C"] {
            changes.put_run(&run(id));
        }
        store.commit(&changes).unwrap();
        let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list_runs(2, None).unwrap()), vec!["01C", "01B"]);
        assert_eq!(ids(store.list_runs(2, Some("01B")).unwrap()), vec!["01A"]);
        assert!(matches!(store.lookup_run("01B").unwrap(), RunLookup::Found(r) if r.id == "01B"));
        assert!(matches!(
            store.lookup_run("01").unwrap(),
            RunLookup::Ambiguous
        ));
        assert!(matches!(
            store.lookup_run("02").unwrap(),
            RunLookup::NotFound
        ));
    }

    #[test]
    fn unfinished_runs_follow_their_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut changes = Changes::default();
        for id in ["01A", "01B", "01C"] {
            changes.put_run(&run(id));
        }
        store.commit(&changes).unwrap();
        let mut finished = run("01B");
        finished.status = RunStatus::Succeeded;
        let mut changes = Changes::default();
        changes.put_run(&finished);
        store.commit(&changes).unwrap();
        assert_eq!(store.unfinished_runs().unwrap(), vec!["01A", "01C"]);
    }
}
