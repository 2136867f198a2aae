//! A step attempt's log, whole or followed while the step runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ApiState, ErrorBody};
use crate::store::{RunLookup, Store};
use sluice_worker::queue::{LogChunks, LogReader, LOG_START};
use sluice_worker::task::TaskKey;

/// How often a followed log is checked for more.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Largest chunk sent at once.
const CHUNK: usize = 64 * 1024;

/// Query of the log endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// Attempt number; the latest by default.
    attempt: Option<u32>,
    /// `stdout` (default) or `stderr`.
    #[param(inline)]
    stream: Option<LogStream>,
    /// Keep the response open and send more as the step writes it, until the attempt ends.
    #[serde(default)]
    follow: bool,
}

/// Which of an attempt's outputs.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum LogStream {
    /// What the step wrote to its standard output.
    #[default]
    Stdout,
    /// What it wrote to its standard error.
    Stderr,
}

impl LogStream {
    /// The name of its file in the attempt's folder.
    fn file(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout.log",
            LogStream::Stderr => "stderr.log",
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/runs/{run}/steps/{step}/logs",
    tag = "runs",
    operation_id = "step_logs",
    params(
        ("run" = String, Path, description = "A run's id, or a prefix only it has."),
        ("step" = String, Path, description = "The step's name."),
        LogQuery,
    ),
    responses(
        (status = 200, description = "The attempt's log as text, sent as it is read (with `follow`, until the attempt ends).", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 404, description = "No such run, step or attempt, or the step has not started.", body = ErrorBody),
        (status = 409, description = "Several runs start with that prefix, or the step replaced its log with something that is not a regular file.", body = ErrorBody),
        (status = 422, description = "The query string does not parse (`stream` is `stdout` or `stderr`).", body = ErrorBody),
        (status = 500, description = "The store failed, or the log cannot be opened.", body = ErrorBody),
    ),
)]
pub(super) async fn logs(
    State(state): State<ApiState>,
    Path((run_id, step)): Path<(String, String)>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    let source = LogSource {
        store: state.daemon.engine().store.clone(),
        remote: state.daemon.remote_logs(),
        shutdown: state.daemon.shutdown_token().clone(),
    };
    serve_log(source, &run_id, &step, query).await
}

/// Where logs are read from: the store's attempt folders, and the shared queue for workers
/// elsewhere.
pub(super) struct LogSource {
    pub store: Store,
    /// Logs that workers on other machines sent; `None` when every worker is in process.
    pub remote: Option<Arc<dyn LogReader>>,
    /// Ends followed logs when the server stops.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// An attempt's log, whole or followed.
pub(super) async fn serve_log(
    source: LogSource,
    run_id: &str,
    step: &str,
    query: LogQuery,
) -> Result<Response, ApiError> {
    let LogSource {
        store,
        remote,
        shutdown,
    } = source;
    let step = step.to_string();
    let run = match store.lookup_run(run_id).map_err(ApiError::internal)? {
        RunLookup::Found(run) => run,
        RunLookup::NotFound => return Err(ApiError::not_found(format!("no run `{run_id}`"))),
        RunLookup::Ambiguous => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("`{run_id}` matches several runs"),
            ))
        }
    };
    let record = store
        .step(&run.id, &step)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("run `{}` has no step `{step}`", run.id)))?;
    let number = query
        .attempt
        .or(record.last_attempt().map(|a| a.number))
        .ok_or_else(|| ApiError::not_found(format!("step `{step}` has not started yet")))?;
    let attempt = record
        .attempts
        .iter()
        .find(|a| a.number == number)
        .ok_or_else(|| ApiError::not_found(format!("step `{step}` has no attempt {number}")))?;
    let file = query.stream.unwrap_or_default().file();
    let path = attempt.dir.join(file);
    let follow = query.follow && !attempt.status.is_terminal();
    // Never through a link, never a FIFO or device: a step may have replaced its log's name.
    let opened = match sluice_worker::safe_fs::open_regular(&path) {
        Ok(file) => Ok(file),
        Err(sluice_worker::safe_fs::UnsafeFile::Io(err)) => return Err(ApiError::internal(err)),
        Err(unsafe_file) => Err(unsafe_file),
    };
    // A worker on another machine, without the data dir shared, sent its output through the
    // shared queue; so did the worker of a step that tampered with the file (from the file it
    // held open).
    let local = attempt.dir.exists() && opened.is_ok();
    if let (false, Some(remote)) = (local, remote) {
        let key = TaskKey {
            run_id: run.id.clone(),
            step: step.clone(),
            attempt: number,
        };
        let stream = file.trim_end_matches(".log").to_string();
        let remote = RemoteLog {
            reader: remote,
            store,
            key,
            stream,
        };
        let body = Body::from_stream(from_remote(remote, follow, shutdown.clone()));
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let opened = opened.map_err(|why| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("the {file} of `{step}` attempt {number} {why}; it is not served"),
        )
    })?;
    // Sent in chunks as it is read: a large log costs the server a chunk, not its size.
    let body = Body::from_stream(stream_file(Follow {
        path,
        file: opened.map(tokio::fs::File::from_std),
        store,
        run: run.id.clone(),
        step: step.clone(),
        attempt: number,
        follow,
        done: false,
        shutdown,
    }));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// Where an attempt's output sent through the shared queue is read from.
struct RemoteLog {
    reader: Arc<dyn LogReader>,
    store: Store,
    key: TaskKey,
    stream: String,
}

/// An attempt's output as the worker sent it through the shared queue; with `follow`, until its
/// end: the worker's end marker, or, when none comes (a built-in step sends no log, a marker
/// can be lost), the attempt recorded as over and nothing more to read.
fn from_remote(
    remote: RemoteLog,
    follow: bool,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let state = (Arc::new(remote), LOG_START.to_string(), false);
    futures_util::stream::unfold(state, move |(remote, after, done)| {
        let shutdown = shutdown.clone();
        async move {
            if done || shutdown.is_cancelled() {
                return None;
            }
            let mut follow = follow;
            loop {
                let block = follow.then_some(Duration::from_secs(1));
                let read = tokio::select! {
                    read = remote.reader.read_log(&remote.key, &remote.stream, &after, block) => read,
                    _ = shutdown.cancelled() => return None,
                };
                let LogChunks {
                    chunks,
                    next,
                    complete,
                } = match read {
                    Ok(read) => read,
                    Err(err) => {
                        let err = std::io::Error::other(err.to_string());
                        return Some((Err(err), (remote, after, true)));
                    }
                };
                let no_more = next == after;
                let end = complete || (!follow && no_more);
                if !chunks.is_empty() || end {
                    let bytes = Bytes::from(chunks.concat());
                    return Some((Ok(bytes), (remote, next, end)));
                }
                let key = &remote.key;
                if follow && attempt_over(&remote.store, &key.run_id, &key.step, key.attempt) {
                    // One more read without waiting takes what came meanwhile, then it ends.
                    follow = false;
                }
            }
        }
    })
}

struct Follow {
    path: PathBuf,
    /// The log, once it exists; held, so a name the step swaps later changes nothing.
    file: Option<tokio::fs::File>,
    store: Store,
    run: String,
    step: String,
    attempt: u32,
    /// Wait for more until the attempt ends, instead of stopping at the end of the file.
    follow: bool,
    done: bool,
    /// The daemon stopping ends the response (otherwise it would wait for it forever).
    shutdown: tokio_util::sync::CancellationToken,
}

/// Sends what the file has, then (when following) more as it grows, until the attempt is over
/// and all of it was sent.
fn stream_file(state: Follow) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            if state.shutdown.is_cancelled() {
                // The server is stopping: what the log has is still sent, then it ends.
                state.follow = false;
            }
            // Whether the attempt was over before this read: then what is read is the last.
            let over =
                !state.follow || attempt_over(&state.store, &state.run, &state.step, state.attempt);
            match read_more(&mut state).await {
                Ok(bytes) if !bytes.is_empty() => return Some((Ok(Bytes::from(bytes)), state)),
                Ok(_) if over => return None,
                Ok(_) => {}
                Err(err) => {
                    state.done = true;
                    return Some((Err(err), state));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = state.shutdown.cancelled() => state.follow = false,
            }
        }
    })
}

/// Whether the attempt is recorded as over (or cannot be read: nothing more will come then).
fn attempt_over(store: &Store, run: &str, step: &str, attempt: u32) -> bool {
    match store.step(run, step) {
        Ok(Some(record)) => record
            .attempts
            .iter()
            .find(|a| a.number == attempt)
            .is_none_or(|a| a.status.is_terminal()),
        _ => true,
    }
}

async fn read_more(state: &mut Follow) -> std::io::Result<Vec<u8>> {
    if state.file.is_none() {
        state.file = match sluice_worker::safe_fs::open_regular(&state.path) {
            Ok(file) => file.map(tokio::fs::File::from_std),
            Err(sluice_worker::safe_fs::UnsafeFile::Io(err)) => return Err(err),
            Err(why) => return Err(std::io::Error::other(format!("the log {why}"))),
        };
    }
    let Some(file) = state.file.as_mut() else {
        return Ok(Vec::new()); // Not written yet.
    };
    let mut buf = vec![0; CHUNK];
    let n = file.read(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::json;
    use sluice_worker::queue::QueueError;

    /// A queue that never has a chunk nor an end marker: a built-in step's log, or one whose
    /// marker was lost. Each read answers at once.
    struct Silent;

    #[async_trait::async_trait]
    impl LogReader for Silent {
        async fn read_log(
            &self,
            _key: &TaskKey,
            _stream: &str,
            after: &str,
            _block: Option<Duration>,
        ) -> Result<LogChunks, QueueError> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(LogChunks {
                chunks: Vec::new(),
                next: after.to_string(),
                complete: false,
            })
        }
    }

    fn step_with_attempt(status: &str) -> crate::store::StepRecord {
        serde_json::from_value(json!({
            "run_id": "01RUN", "name": "gate", "index": 0, "status": status,
            "attempts": [{
                "number": 1, "status": status, "outcome": null, "exit_code": null,
                "signal": null, "worker": "w", "queued_ms": 0, "started_ms": 1,
                "finished_ms": null, "message": null, "dir": "/nowhere",
            }],
            "outputs": {}, "metrics": {}, "reason": null, "retry_at_ms": null,
        }))
        .unwrap()
    }

    /// A followed log that never gets an end marker ends once its attempt is recorded as over,
    /// instead of waiting until the server stops.
    #[tokio::test]
    async fn a_followed_remote_log_without_an_end_marker_ends_with_its_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut changes = crate::store::Changes::default();
        changes.put_step(&step_with_attempt("running"));
        store.commit(&changes).unwrap();
        let remote = RemoteLog {
            reader: Arc::new(Silent),
            store: store.clone(),
            key: TaskKey {
                run_id: "01RUN".into(),
                step: "gate".into(),
                attempt: 1,
            },
            stream: "stdout".into(),
        };
        let mut log = Box::pin(from_remote(
            remote,
            true,
            tokio_util::sync::CancellationToken::new(),
        ));
        // While the attempt runs, the follow keeps waiting.
        let early = tokio::time::timeout(Duration::from_millis(200), log.next()).await;
        assert!(
            early.is_err(),
            "the follow ended while the attempt ran: {early:?}"
        );
        let mut changes = crate::store::Changes::default();
        changes.put_step(&step_with_attempt("succeeded"));
        store.commit(&changes).unwrap();
        let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(10), log.collect::<Vec<_>>())
            .await
            .expect("the follow did not end with its attempt");
        assert!(rest
            .iter()
            .all(|chunk| chunk.as_ref().is_ok_and(|b| b.is_empty())));
    }
}
