//! Step logs through Redis: workers append chunks of a running step's output to a stream per
//! attempt, which the scheduler reads for `sluice logs` when the files are on another machine.

use std::time::Duration;

use super::*;

impl RedisQueue {
    /// `{prefix}logs:{run}:{step}:{attempt}`: a running step's output, in chunks.
    pub fn log_stream(&self, key: &TaskKey) -> String {
        format!(
            "{}logs:{}:{}:{}",
            self.config.prefix, key.run_id, key.step, key.attempt
        )
    }

    /// Scheduler side: chunks of one output stream (`stdout`/`stderr`) of an attempt after
    /// entry `after` (`0-0`, [`crate::queue::LOG_START`], for the start), waiting up to `block`
    /// for more when there are none.
    pub async fn read_log(
        &self,
        key: &TaskKey,
        stream: &str,
        after: &str,
        block: Option<Duration>,
    ) -> Result<LogChunks, QueueError> {
        let log = self.log_stream(key);
        let mut command = redis::cmd("XREAD");
        command.arg("COUNT").arg(256);
        if let Some(block) = block {
            command.arg("BLOCK").arg(block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&log).arg(after);
        // Its own connection: a blocking read must not hold up the shared one.
        let mut con = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(redis_error)?;
        let reply: Option<StreamReadReply> =
            command.query_async(&mut con).await.map_err(redis_error)?;
        let mut chunks = Vec::new();
        let mut last = after.to_string();
        let mut complete = false;
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            last = entry.id.clone();
            let which: Option<String> = entry.get("stream");
            if which.as_deref() != Some(stream) {
                continue;
            }
            if entry.map.contains_key("eof") {
                complete = true;
            } else if let Some(data) = entry.get::<Vec<u8>>("data") {
                chunks.push(data);
            }
        }
        Ok(LogChunks {
            chunks,
            next: last,
            complete,
        })
    }

    /// Appends a chunk of `stream` (`stdout`/`stderr`) of an attempt, or its end (`None`).
    pub(super) async fn append_log(
        &self,
        key: &TaskKey,
        stream: &str,
        chunk: Option<&[u8]>,
    ) -> Result<(), QueueError> {
        self.append_logs(key, &[(stream, chunk)]).await
    }

    /// Appends each `(stream, chunk or end)` in order, in one round trip.
    pub(super) async fn append_logs(
        &self,
        key: &TaskKey,
        entries: &[(&str, Option<&[u8]>)],
    ) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        self.add_log_entries(&mut pipe, key, entries);
        pipe.query_async::<()>(&mut self.commands.clone())
            .await
            .map_err(redis_error)
    }

    /// Ends the attempt's log on each of `streams`, in one round trip.
    pub(super) async fn end_log_streams(
        &self,
        key: &TaskKey,
        streams: &[&str],
    ) -> Result<(), QueueError> {
        self.append_logs(key, &log_ends(streams)).await
    }

    /// Adds to `pipe` the end markers of the attempt's log on each of `streams`.
    pub(super) fn add_log_ends(&self, pipe: &mut redis::Pipeline, key: &TaskKey, streams: &[&str]) {
        if !streams.is_empty() {
            self.add_log_entries(pipe, key, &log_ends(streams));
        }
    }

    /// Adds to `pipe` the commands that append each `(stream, chunk or end)` to the attempt's
    /// log, in order, and keep the log for its time to live.
    fn add_log_entries(
        &self,
        pipe: &mut redis::Pipeline,
        key: &TaskKey,
        entries: &[(&str, Option<&[u8]>)],
    ) {
        let log = self.log_stream(key);
        for (stream, chunk) in entries {
            let command = pipe
                .cmd("XADD")
                .arg(&log)
                .arg("MAXLEN")
                .arg("~")
                .arg(LOG_MAX_CHUNKS)
                .arg("*")
                .arg("stream")
                .arg(*stream);
            match chunk {
                Some(bytes) => command.arg("data").arg(*bytes),
                None => command.arg("eof").arg(1),
            }
            .ignore();
        }
        pipe.cmd("EXPIRE").arg(&log).arg(LOG_TTL_SECS).ignore();
    }
}

/// An end marker (no chunk) on each of `streams`, as [`RedisQueue::append_logs`] takes them.
fn log_ends<'a>(streams: &[&'a str]) -> Vec<(&'a str, Option<&'a [u8]>)> {
    streams.iter().map(|stream| (*stream, None)).collect()
}
