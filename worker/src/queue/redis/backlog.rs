//! The backlog of each task stream, for the scheduler's `/metrics`: how many tasks no worker
//! has taken yet, and how long the oldest of them has waited.
//!
//! Every task entry a worker settles is acknowledged and deleted together (`ack_and_delete`),
//! and so is one the janitor takes back, so a task stream holds exactly the entries not yet
//! delivered plus those delivered and pending in the workers' group: the waiting ones number
//! `XLEN - pending`. The group's `lag` (Redis 7) would say the same, but Redis cannot compute
//! it once entries were deleted in the middle of the stream, which is how this queue works,
//! so it is mostly `nil` here. The oldest waiting entry is the first one after the group's
//! last delivered id; its id holds the Redis clock's milliseconds when it was added, and its
//! age is measured against the same clock (`TIME`), so the scheduler's clock does not matter.

use redis::streams::{StreamInfoGroupsReply, StreamRangeReply};

use super::*;

impl RedisQueue {
    /// The backlog of every task stream under the prefix, by queue name.
    pub(super) async fn task_backlog(&self) -> Result<Vec<Backlog>, QueueError> {
        let mut backlog = Vec::new();
        for queue in self.task_queues().await? {
            backlog.push(self.queue_backlog(&queue).await?);
        }
        Ok(backlog)
    }

    async fn queue_backlog(&self, queue: &str) -> Result<Backlog, QueueError> {
        let stream = self.task_stream(queue);
        let mut con = self.commands.clone();
        let ((seconds, micros), length, groups): ((u64, u64), u64, StreamInfoGroupsReply) =
            // One transaction: the length and the pending count of the same moment.
            redis::pipe()
                .atomic()
                .cmd("TIME")
                .cmd("XLEN")
                .arg(&stream)
                .cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
        let redis_now_ms = seconds * 1000 + micros / 1000;
        // A stream whose group is not made yet had nothing delivered: all of it waits.
        let group = groups.groups.into_iter().find(|g| g.name == WORKERS_GROUP);
        let (pending, after) = match &group {
            Some(group) => (
                group.pending as u64,
                format!("({}", group.last_delivered_id),
            ),
            None => (0, "-".to_string()),
        };
        let waiting = length.saturating_sub(pending);
        let mut oldest_wait_ms = 0;
        if waiting > 0 {
            let first: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&after)
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
            if let Some(added_ms) = first.ids.first().and_then(|e| entry_ms(&e.id)) {
                oldest_wait_ms = redis_now_ms.saturating_sub(added_ms);
            }
        }
        Ok(Backlog {
            queue: queue.to_string(),
            waiting,
            oldest_wait_ms,
        })
    }
}

/// The milliseconds part of a stream entry id (`<ms>-<seq>`).
fn entry_ms(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::entry_ms;

    #[test]
    fn entry_ids_carry_the_time_they_were_added() {
        assert_eq!(entry_ms("1700000000123-0"), Some(1_700_000_000_123));
        assert_eq!(entry_ms("1700000000123-42"), Some(1_700_000_000_123));
        assert_eq!(entry_ms("nonsense"), None);
    }
}
