//! One scheduler per prefix: a lease key names the live one.
//!
//! Two schedulers reading the same results stream split the results between them, and each
//! strands the runs whose results the other took. The scheduler takes `{prefix}scheduler` with
//! `SET NX PX` before it reads anything and renews it while it runs; a second one finds it held,
//! waits one lease (a killed scheduler's key runs out by then) and gives up if it is still held.

use std::time::Duration;

use super::{redis_error, RedisQueue};
use crate::queue::{LeaseState, QueueError};

/// Renews the lease if this holder still has it: 1 renewed, 0 held by another, -1 gone.
const RENEW: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif holder then
  return 0
else
  return -1
end
"#;

impl RedisQueue {
    fn lease_key(&self) -> String {
        self.key("scheduler")
    }

    /// Takes the scheduler lease for `holder`, waiting up to one `ttl` for a previous holder's
    /// to run out. `Err` names the live holder when it is still held after that.
    pub async fn acquire_scheduler_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), QueueError> {
        let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
        let mut logged = false;
        loop {
            if self.take_free_lease(holder, ttl).await? {
                return Ok(());
            }
            let current = self.lease_holder().await?;
            if tokio::time::Instant::now() >= deadline {
                return Err(QueueError::Refused(format!(
                    "another scheduler ({current}) is live on Redis prefix `{}`: stop it, or give this one another --redis-prefix",
                    self.config.prefix
                )));
            }
            if !logged {
                tracing::warn!(
                    holder = current,
                    "Another scheduler holds this Redis prefix; waiting for its lease to run out."
                );
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Renews the lease for `holder`. A lease Redis lost (restarted empty) is taken again.
    pub async fn renew_scheduler_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseState, QueueError> {
        let mut con = self.commands.clone();
        let renewed: i64 = redis::Script::new(RENEW)
            .key(self.lease_key())
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut con)
            .await
            .map_err(redis_error)?;
        match renewed {
            1 => Ok(LeaseState::Held),
            -1 if self.take_free_lease(holder, ttl).await? => Ok(LeaseState::Held),
            _ => self.lease_holder().await.map(LeaseState::TakenBy),
        }
    }

    /// Gives the lease up (a clean stop), so the next scheduler need not wait for it.
    pub async fn release_scheduler_lease(&self, holder: &str) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        let _: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        )
        .key(self.lease_key())
        .arg(holder)
        .invoke_async(&mut con)
        .await
        .map_err(redis_error)?;
        Ok(())
    }

    /// Takes the lease when nobody holds it (`SET NX PX`); whether it did.
    async fn take_free_lease(&self, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut con = self.commands.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.lease_key())
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        Ok(set.is_some())
    }

    async fn lease_holder(&self) -> Result<String, QueueError> {
        let mut con = self.commands.clone();
        let current: Option<String> = redis::cmd("GET")
            .arg(self.lease_key())
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        Ok(current.unwrap_or_default())
    }
}
