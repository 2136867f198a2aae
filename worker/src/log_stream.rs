//! Sends a running step's output through the queue as it is written, so a scheduler on
//! another machine can show it live (`sluice logs --follow`).
//!
//! The executors write stdout and stderr to the attempt's files (masked); this reads those
//! files from where it left off every [`POLL`] and publishes what is new, then, once the step
//! ended, the rest and an end marker.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use crate::queue::TaskQueue;
use crate::task::TaskSpec;

/// How often the files are looked at.
const POLL: Duration = Duration::from_millis(250);
/// Largest chunk published at once.
const CHUNK: usize = 64 * 1024;

/// Publishes `task`'s output until `ended` fires, then the rest and the end markers.
pub async fn stream_logs(queue: Arc<dyn TaskQueue>, task: TaskSpec, ended: CancellationToken) {
    let mut files = [
        ("stdout", task.stdout_log(), 0u64),
        ("stderr", task.stderr_log(), 0u64),
    ];
    loop {
        let last = ended.is_cancelled();
        for (name, path, offset) in &mut files {
            publish_new(queue.as_ref(), &task, name, path, offset).await;
        }
        if last {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = ended.cancelled() => {}
        }
    }
    for (name, _, _) in &files {
        if let Err(err) = queue.publish_log(&task.key, name, None).await {
            tracing::warn!(task = %task.key, error = %err, "Could not send the end of a step's log.");
        }
    }
}

async fn publish_new(
    queue: &dyn TaskQueue,
    task: &TaskSpec,
    name: &str,
    path: &PathBuf,
    offset: &mut u64,
) {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return; // Not created yet.
    };
    if file.seek(SeekFrom::Start(*offset)).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Err(err) = queue.publish_log(&task.key, name, Some(&buf[..n])).await {
            // The file keeps it all; the live view misses this chunk.
            tracing::debug!(task = %task.key, error = %err, "Could not send a log chunk.");
        }
        *offset += n as u64;
    }
}
