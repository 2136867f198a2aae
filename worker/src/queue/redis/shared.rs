//! The scheduler's capability traits ([`crate::queue::shared`]) over Redis: each method routes
//! to the inherent one that does the work, next to the keys it touches.

use std::time::Duration;

use async_trait::async_trait;

use super::RedisQueue;
use crate::queue::{
    LeaseState, LogChunks, LogReader, QueueError, Reclaimed, Upkeep, WorkerInfo, WorkerRegistry,
};
use crate::task::TaskKey;

#[async_trait]
impl WorkerRegistry for RedisQueue {
    async fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        RedisQueue::workers(self).await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        RedisQueue::ping(self).await
    }
}

#[async_trait]
impl LogReader for RedisQueue {
    async fn read_log(
        &self,
        key: &TaskKey,
        stream: &str,
        after: &str,
        block: Option<Duration>,
    ) -> Result<LogChunks, QueueError> {
        RedisQueue::read_log(self, key, stream, after, block).await
    }
}

#[async_trait]
impl Upkeep for RedisQueue {
    async fn lost_data(&self) -> Result<bool, QueueError> {
        RedisQueue::lost_data(self).await
    }

    async fn renew_scheduler_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseState, QueueError> {
        RedisQueue::renew_scheduler_lease(self, holder, ttl).await
    }

    async fn forget_silent_workers(&self, silent: Duration) -> Result<Vec<String>, QueueError> {
        RedisQueue::forget_silent_workers(self, silent).await
    }

    async fn task_queues(&self) -> Result<Vec<String>, QueueError> {
        RedisQueue::task_queues(self).await
    }

    async fn reclaim_idle(
        &self,
        queue: &str,
        min_idle: Duration,
    ) -> Result<Vec<Reclaimed>, QueueError> {
        RedisQueue::reclaim_idle(self, queue, min_idle).await
    }

    async fn forget_idle_consumers(
        &self,
        queue: &str,
        idle: Duration,
    ) -> Result<usize, QueueError> {
        RedisQueue::forget_idle_consumers(self, queue, idle).await
    }
}
