//! A step attempt's log, whole or followed while the step runs.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ApiError, ApiState};
use crate::store::{RunLookup, Store};
use sluice_worker::task::TaskKey;

/// How often a followed log is checked for more.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Largest chunk sent at once.
const CHUNK: usize = 64 * 1024;

/// Query of the log endpoint.
#[derive(Debug, Deserialize)]
pub(super) struct LogQuery {
    /// Attempt number; the latest by default.
    attempt: Option<u32>,
    /// `stdout` (default) or `stderr`.
    stream: Option<String>,
    /// Keep the response open and send more as the step writes it, until the attempt ends.
    #[serde(default)]
    follow: bool,
}

pub(super) async fn logs(
    State(state): State<ApiState>,
    Path((run_id, step)): Path<(String, String)>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(super::bad_query)?;
    let store = state.daemon.engine().store.clone();
    let run = match store.lookup_run(&run_id).map_err(ApiError::internal)? {
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
    let file = match query.stream.as_deref().unwrap_or("stdout") {
        "stdout" => "stdout.log",
        "stderr" => "stderr.log",
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("stream must be `stdout` or `stderr`, not `{other}`"),
            ))
        }
    };
    let path = attempt.dir.join(file);
    let follow = query.follow && !attempt.status.is_terminal();
    // A worker on another machine, without the data dir shared: its output came through Redis.
    if let (false, Some(redis)) = (attempt.dir.exists(), state.daemon.redis()) {
        let key = TaskKey {
            run_id: run.id.clone(),
            step: step.clone(),
            attempt: number,
        };
        let stream = file.trim_end_matches(".log").to_string();
        let body = Body::from_stream(from_redis(
            redis,
            key,
            stream,
            follow,
            state.daemon.shutdown_token().clone(),
        ));
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let body = if follow {
        Body::from_stream(follow_file(
            path,
            store,
            run.id.clone(),
            step.clone(),
            number,
            state.daemon.shutdown_token().clone(),
        ))
    } else {
        match tokio::fs::read(&path).await {
            Ok(bytes) => Body::from(bytes),
            // Not written yet (queued) or never (the attempt did not start).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Body::empty(),
            Err(err) => return Err(ApiError::internal(err)),
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// An attempt's output as the worker sent it through Redis; with `follow`, until its end.
fn from_redis(
    redis: std::sync::Arc<sluice_worker::queue::RedisQueue>,
    key: TaskKey,
    stream: String,
    follow: bool,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let state = (redis, key, stream, "0-0".to_string(), false);
    futures_util::stream::unfold(state, move |(redis, key, stream, after, done)| {
        let shutdown = shutdown.clone();
        async move {
            if done || shutdown.is_cancelled() {
                return None;
            }
            loop {
                let block = follow.then_some(Duration::from_secs(1));
                let read = tokio::select! {
                    read = redis.read_log(&key, &stream, &after, block) => read,
                    _ = shutdown.cancelled() => return None,
                };
                let (chunks, next, complete) = match read {
                    Ok(read) => read,
                    Err(err) => {
                        let err = std::io::Error::other(err.to_string());
                        return Some((Err(err), (redis, key, stream, after, true)));
                    }
                };
                let no_more = next == after;
                let end = complete || (!follow && no_more);
                if !chunks.is_empty() || end {
                    let bytes = Bytes::from(chunks.concat());
                    return Some((Ok(bytes), (redis, key, stream, next, end)));
                }
            }
        }
    })
}

struct Follow {
    path: PathBuf,
    store: Store,
    run: String,
    step: String,
    attempt: u32,
    offset: u64,
    done: bool,
    /// The daemon stopping ends the response (otherwise it would wait for it forever).
    shutdown: tokio_util::sync::CancellationToken,
}

/// Sends what the file has, then more as it grows, until the attempt is over and all of it
/// was sent.
fn follow_file(
    path: PathBuf,
    store: Store,
    run: String,
    step: String,
    attempt: u32,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let state = Follow {
        path,
        store,
        run,
        step,
        attempt,
        offset: 0,
        done: false,
        shutdown,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.done || state.shutdown.is_cancelled() {
                return None;
            }
            // Whether the attempt was over before this read: then what is read is the last.
            let over = attempt_over(&state);
            match read_from(&state.path, state.offset).await {
                Ok(bytes) if !bytes.is_empty() => {
                    state.offset += bytes.len() as u64;
                    return Some((Ok(Bytes::from(bytes)), state));
                }
                Ok(_) if over => return None,
                Ok(_) => {}
                Err(err) => {
                    state.done = true;
                    return Some((Err(err), state));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = state.shutdown.cancelled() => return None,
            }
        }
    })
}

fn attempt_over(state: &Follow) -> bool {
    match state.store.step(&state.run, &state.step) {
        Ok(Some(record)) => record
            .attempts
            .iter()
            .find(|a| a.number == state.attempt)
            .is_none_or(|a| a.status.is_terminal()),
        _ => true,
    }
}

async fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    file.seek(SeekFrom::Start(offset)).await?;
    let mut buf = vec![0; CHUNK];
    let n = file.read(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}
