//! Sends a running step's output through the queue as it is written, so a scheduler on
//! another machine can show it live (`sluice logs --follow`).
//!
//! The executors write stdout and stderr to the attempt's files (masked); this reads those
//! files from where it left off every `POLL` (250 ms) and publishes what is new, then, once the step
//! ended, the rest. The end markers ([`LOG_STREAMS`]) travel with the step's result
//! (`TaskQueue::finish`), or alone ([`end_logs`]) when there is no result to send.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::TaskQueue;
use crate::task::TaskSpec;

/// How often the files are looked at.
const POLL: Duration = Duration::from_millis(250);
/// Largest chunk published at once.
const CHUNK: usize = 64 * 1024;
/// Most bytes of one stream sent through the queue; Redis keeps about this much of a log
/// anyway, and a step that prints more keeps the rest in the worker's file.
const STREAM_CAP: u64 = 128 * 1024 * 1024;

/// One of the attempt's two log files, as far as it was sent.
struct Tail {
    name: &'static str,
    path: PathBuf,
    /// Held once opened, so the bytes sent are those the executor writes even if the step
    /// replaces the file's name with something else. Read on the async thread, with `fstat`
    /// and `pread`: a local file in the page cache answers at once, and a step that printed
    /// nothing (most polls, and a quick step's whole life) then costs two `fstat`s instead of
    /// half a dozen hops to the blocking pool.
    file: Option<std::fs::File>,
    offset: u64,
}

/// The streams of a step's log, each ended by a marker once the step is over.
pub const LOG_STREAMS: [&str; 2] = ["stdout", "stderr"];

/// Publishes `task`'s output until `ended` fires, then the rest; the end markers are the
/// caller's to send.
pub async fn stream_logs(queue: Arc<dyn TaskQueue>, task: TaskSpec, ended: CancellationToken) {
    let tail = |name, path| Tail {
        name,
        path,
        file: None,
        offset: 0,
    };
    let [stdout, stderr] = LOG_STREAMS;
    let mut files = [
        tail(stdout, task.stdout_log()),
        tail(stderr, task.stderr_log()),
    ];
    loop {
        let last = ended.is_cancelled();
        for file in &mut files {
            publish_new(queue.as_ref(), &task, file).await;
        }
        if last {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = ended.cancelled() => {}
        }
    }
}

/// Sends the end markers of `task`'s log on their own, for a step whose result is not sent
/// (handed back). A follower of the log waits for them: a few tries before giving up.
pub async fn end_logs(queue: &dyn TaskQueue, task: &TaskSpec) {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100));
    for tries_left in (0..4).rev() {
        match queue.end_logs(&task.key, &LOG_STREAMS).await {
            Ok(()) => break,
            Err(err) if tries_left == 0 => {
                tracing::warn!(task = %task.key, error = %err, "Could not send the end of a step's log.");
            }
            Err(_) => tokio::time::sleep(backoff.step()).await,
        }
    }
}

async fn publish_new(queue: &dyn TaskQueue, task: &TaskSpec, tail: &mut Tail) {
    if tail.offset >= STREAM_CAP {
        return;
    }
    // A handle whose file lost its name belongs to an earlier delivery of this attempt, which
    // the executor replaced: open the new one.
    let replaced = match tail.file.as_ref().map(|file| file.metadata()) {
        Some(Ok(m)) if std::os::unix::fs::MetadataExt::nlink(&m) == 0 => true,
        Some(Ok(m)) if m.len() <= tail.offset => return, // Nothing new.
        Some(_) => false,
        None => true,
    };
    if replaced {
        match crate::safe_fs::open_regular(&tail.path) {
            Ok(Some(file)) => {
                tail.file = Some(file);
                tail.offset = 0;
            }
            Ok(None) => return, // Not created yet.
            Err(err) => {
                if tail.file.is_none() {
                    tracing::warn!(task = %task.key, log = tail.name, error = %err, "Not streaming a step's log.");
                }
                return;
            }
        }
    }
    let Some(file) = tail.file.as_ref() else {
        return;
    };
    let mut buf = vec![0u8; CHUNK];
    while tail.offset < STREAM_CAP {
        let n = match file.read_at(&mut buf, tail.offset) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Err(err) = queue
            .publish_log(&task.key, tail.name, Some(&buf[..n]))
            .await
        {
            // The file keeps it all; the live view misses this chunk.
            tracing::debug!(task = %task.key, error = %err, "Could not send a log chunk.");
        }
        tail.offset += n as u64;
    }
    let note = format!(
        "\n[sluice: this log passed {} MiB; the rest stays in the worker's file]\n",
        STREAM_CAP >> 20
    );
    let _ = queue
        .publish_log(&task.key, tail.name, Some(note.as_bytes()))
        .await;
}
