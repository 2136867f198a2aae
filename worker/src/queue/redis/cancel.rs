//! Cancels: the scheduler publishes a run id and records it in a set; workers subscribe and
//! pass run ids on to their running steps.

use std::time::Duration;

use super::*;

impl RedisQueue {
    /// Subscribes to the cancel channel in the background and passes run ids on.
    pub(super) fn forward_cancellations(&self, client: redis::Client) {
        let sender = self.cancels.clone();
        let channel = self.key("cancel");
        let cancelled = self.key("cancelled");
        let closed = self.closed.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100));
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                let mut pubsub = tokio::select! {
                    result = subscribed => match result {
                        Ok(pubsub) => pubsub,
                        Err(_) => {
                            backoff.sleep().await;
                            continue;
                        }
                    },
                    _ = closed.cancelled() => return,
                };
                backoff.reset();
                // Cancels sent while this worker was not listening are in the set.
                if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                    let missed: Vec<String> = con.smembers(&cancelled).await.unwrap_or_default();
                    for run_id in missed {
                        let _ = sender.send(run_id);
                    }
                }
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                if let Ok(run_id) = message.get_payload::<String>() {
                                    let _ = sender.send(run_id);
                                }
                            }
                            None => break, // Connection lost: subscribe again.
                        },
                        _ = closed.cancelled() => return,
                    }
                }
            }
        });
    }

    /// Publishes a cancel of `run_id` and records it for workers that were not listening.
    pub(super) async fn publish_cancel(&self, run_id: &str) -> Result<(), QueueError> {
        let mut con = self.commands.clone();
        let cancelled = self.key("cancelled");
        let _: () = con.sadd(&cancelled, run_id).await.map_err(redis_error)?;
        let _: () = con
            .expire(&cancelled, 7 * 24 * 3600)
            .await
            .map_err(redis_error)?;
        let _: () = con
            .publish(self.key("cancel"), run_id)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}
