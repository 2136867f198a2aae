//! The daemon's own clock: fires cron triggers, starts runs for new files in watched folders
//! and for runs that `after:` triggers follow, and reloads the pipelines folder when its files
//! change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{base_dir_of, Catalog, Daemon, Origin, Started};
use crate::spec::Trigger;
use crate::store::marks::{self, CronMark, SeenMark};
use crate::store::{Changes, TriggerOrigin};
use crate::triggers::cron::{self, Schedule};

/// How often cron triggers and watched folders are looked at.
const TICK: Duration = Duration::from_millis(500);
/// How often the pipelines folder is checked for changes.
const RELOAD_EVERY: u32 = 4;
/// An instant that came due within this long of now is on time, not missed (the catch-up
/// policy is for downtime, not for a slow tick).
const ON_TIME: i64 = 60;

/// What the loop remembers between ticks.
#[derive(Default)]
struct Seen {
    /// Size and modification time of each candidate file at the last tick: a file is complete
    /// once they stop changing.
    files: HashMap<PathBuf, (u64, Option<std::time::SystemTime>)>,
}

/// Runs until the daemon shuts down.
pub(super) async fn run(daemon: Arc<Daemon>) {
    let dir = daemon.config.pipelines_dir.clone();
    let mut fingerprint = Catalog::fingerprint(&dir);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = Seen::default();
    let mut tick: u32 = 0;
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        let mut reload_now = false;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = hup => reload_now = true,
            _ = daemon.shutdown.cancelled() => return,
        }
        tick = tick.wrapping_add(1);
        let worker = daemon.clone();
        let dir = dir.clone();
        let check_folder = reload_now || tick % RELOAD_EVERY == 0;
        let result = tokio::task::spawn_blocking(move || {
            if check_folder {
                let now = Catalog::fingerprint(&dir);
                if reload_now || now != fingerprint {
                    match worker.reload() {
                        Ok((loaded, failed)) => {
                            tracing::info!(loaded, failed, "Pipelines folder changed; reloaded.")
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "Reloading the pipelines failed.")
                        }
                    }
                    fingerprint = now;
                }
            }
            fire_due_crons(&worker, Utc::now());
            start_for_new_files(&worker, &mut seen);
            super::follow::follow_finished_runs(&worker);
            super::notify::deliver_due(&worker);
            (fingerprint, seen)
        })
        .await;
        match result {
            Ok((new_fingerprint, new_seen)) => {
                fingerprint = new_fingerprint;
                seen = new_seen;
            }
            Err(err) => {
                tracing::error!(error = %err, "The trigger loop failed; it goes on.");
                seen = Seen::default();
            }
        }
    }
}

/// Starts a run for every cron instant that came due, and records how far each trigger got.
pub(super) fn fire_due_crons(daemon: &Arc<Daemon>, now: DateTime<Utc>) {
    type Cron = (String, String, String, crate::spec::Catchup, Schedule);
    let crons: Vec<Cron> = daemon.with_catalog(|c| {
        c.pipelines
            .values()
            .flat_map(|loaded| {
                loaded.pipeline.triggers.iter().filter_map(|t| match t {
                    Trigger::Cron {
                        schedule,
                        timezone,
                        catchup,
                        parsed,
                    } => Some((
                        loaded.pipeline.name.clone(),
                        schedule.clone(),
                        timezone.clone(),
                        *catchup,
                        parsed.as_ref().clone(),
                    )),
                    _ => None,
                })
            })
            .collect()
    });
    for (pipeline, expr, timezone, catchup, schedule) in crons {
        let key = marks::cron_key(&pipeline, &expr, &timezone);
        let store = &daemon.engine.store;
        let last = match store.mark::<CronMark>(&key) {
            Ok(Some(mark)) => DateTime::<Utc>::from_timestamp_millis(mark.through_ms),
            Ok(None) => None,
            Err(err) => {
                tracing::error!(pipeline, error = %err, "Cannot read a cron trigger's state.");
                continue;
            }
        };
        let Some(last) = last else {
            // A schedule seen for the first time starts from now: no history, nothing missed.
            record_through(daemon, &key, now);
            continue;
        };
        let due = cron::due(
            &schedule,
            last,
            now,
            catchup,
            chrono::Duration::seconds(ON_TIME),
        );
        if due.dropped > 0 {
            tracing::warn!(pipeline, schedule = %expr, dropped = due.dropped, ?catchup, "Missed cron instants not run (catch-up policy).");
        }
        for instant in &due.fire {
            let origin = Origin {
                trigger: TriggerOrigin::Cron {
                    schedule: expr.to_string(),
                    instant: instant.to_rfc3339(),
                },
                run_id: Some(cron::run_id(&pipeline, &key, *instant)),
                marks: vec![(
                    key.clone(),
                    json!(CronMark {
                        through_ms: instant.timestamp_millis()
                    }),
                )],
                ..Origin::default()
            };
            match daemon.start_run(&pipeline, Default::default(), origin) {
                Ok(Started::New(run)) => {
                    tracing::info!(pipeline, run = %run.id, instant = %instant, "Cron trigger fired.")
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(pipeline, instant = %instant, error = %err, "Cron trigger could not start a run.")
                }
            }
        }
        if due.handled_through > last {
            record_through(daemon, &key, due.handled_through);
        }
    }
}

fn record_through(daemon: &Daemon, key: &str, through: DateTime<Utc>) {
    let mut changes = Changes::default();
    changes.put_mark(
        key,
        &CronMark {
            through_ms: through.timestamp_millis(),
        },
    );
    if let Err(err) = daemon.engine.store.commit(&changes) {
        tracing::error!(key, error = %err, "Cannot record a cron trigger's state.");
    }
}

/// Starts a run for each new, complete file in a watched folder; a file is started once, ever.
fn start_for_new_files(daemon: &Arc<Daemon>, seen: &mut Seen) {
    let watches: Vec<(String, PathBuf, String, String)> = daemon.with_catalog(|c| {
        c.pipelines
            .values()
            .flat_map(|loaded| {
                let base = base_dir_of(&loaded.path);
                loaded
                    .pipeline
                    .triggers
                    .iter()
                    .filter_map(move |t| match t {
                        Trigger::Watch {
                            path,
                            pattern,
                            param,
                        } => Some((
                            loaded.pipeline.name.clone(),
                            base.join(path),
                            pattern.clone(),
                            param.clone(),
                        )),
                        _ => None,
                    })
            })
            .collect()
    });
    let mut present = HashMap::new();
    for (pipeline, folder, pattern, param) in watches {
        let Ok(glob) = glob::Pattern::new(&pattern) else {
            tracing::error!(pipeline, pattern, "Invalid watch pattern.");
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue; // Not there yet: nothing arrived.
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !glob.matches(&name) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let file = entry.path();
            let now = (meta.len(), meta.modified().ok());
            let stable = seen.files.get(&file) == Some(&now);
            present.insert(file.clone(), now);
            if !stable {
                continue; // New or still being written: look again next tick.
            }
            let key = marks::watch_key(&pipeline, &file);
            if matches!(daemon.engine.store.mark::<SeenMark>(&key), Ok(Some(_))) {
                continue;
            }
            let origin = Origin {
                trigger: TriggerOrigin::Watch {
                    path: file.display().to_string(),
                },
                dedupe: Some(key.clone()),
                ..Origin::default()
            };
            let params = [(param.clone(), file.display().to_string())].into();
            match daemon.start_run(&pipeline, params, origin) {
                Ok(Started::New(run)) => {
                    tracing::info!(pipeline, run = %run.id, file = %file.display(), "New file; run started.")
                }
                Ok(Started::Skipped(reason)) => {
                    // Skipped is this file's turn: it is not offered again every tick.
                    let mut changes = Changes::default();
                    let seen = SeenMark {
                        skipped: Some(reason),
                        ..SeenMark::default()
                    };
                    changes.put_mark(&key, &seen);
                    let _ = daemon.engine.store.commit(&changes);
                }
                Ok(Started::Existing(_)) => {}
                Err(err) => {
                    tracing::error!(pipeline, file = %file.display(), error = %err, "New file; could not start a run.")
                }
            }
        }
    }
    seen.files = present;
}
