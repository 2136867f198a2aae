//! The background readers: one task per consumer group that reads Redis and hands entries over
//! a channel, so callers can stop waiting at any moment without losing an entry.

use std::time::Duration;

use super::*;

impl RedisQueue {
    /// Reads a consumer group in a task of its own and hands entries over a channel of
    /// `capacity`, so callers can stop waiting at any moment without losing an entry to a
    /// blocking read they dropped. With `catch_up`, first re-reads this consumer's own pending
    /// entries (taken before a restart, never acknowledged), from where it left off each time.
    ///
    /// After a failed read it always catches up: Redis may have delivered entries to this
    /// consumer whose reply was lost (a timeout, a frozen process), and nobody else will ever be
    /// given them. With `held`, entries already handed over are not handed over again, and each
    /// one handed over is recorded there first.
    pub(super) fn spawn_reader(
        &self,
        streams: Vec<String>,
        group: &'static str,
        catch_up: bool,
        capacity: usize,
        held: Option<HeldEntries>,
    ) -> mpsc::Receiver<(String, StreamId)> {
        let (sender, receiver) = mpsc::channel(capacity);
        let client = self.client.clone();
        let consumer = self.config.consumer.clone();
        let closed = self.closed.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            // Its own connection; a response timeout longer than the block, so a frozen Redis is
            // noticed instead of waited on forever.
            let config = ConnectionManagerConfig::new().set_response_timeout(Some(
                Duration::from_millis(BLOCK_MS as u64) + Duration::from_secs(5),
            ));
            let mut backoff = Backoff::new(Duration::from_millis(100));
            let mut connection = None;
            // Per stream: where the catch-up has got to, or None once it is done.
            let mut pending_from: Vec<Option<String>> = streams
                .iter()
                .map(|_| catch_up.then(|| "0".to_string()))
                .collect();
            loop {
                if closed.is_cancelled() {
                    return;
                }
                let con = match &mut connection {
                    Some(con) => con,
                    None => {
                        match ConnectionManager::new_with_config(client.clone(), config.clone())
                            .await
                        {
                            Ok(con) => connection.insert(con),
                            Err(err) => {
                                tracing::warn!(error = %err, retry_in = ?backoff.peek(), "Redis is not answering; retrying.");
                                backoff.sleep().await;
                                continue;
                            }
                        }
                    }
                };
                // Read only once there is room to hand an entry over: with a capacity of one, a
                // worker holds at most the task it will run next, not tasks others could run.
                let permit = tokio::select! {
                    permit = sender.reserve() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return, // Nobody reads any more.
                    },
                    _ = closed.cancelled() => return,
                };
                let read = read_once(
                    con,
                    &mut commands.clone(),
                    &streams,
                    group,
                    &consumer,
                    &pending_from,
                    capacity,
                )
                .await;
                let reply = match read {
                    Ok(reply) => reply,
                    Err(err) => {
                        pending_from = streams.iter().map(|_| Some("0".to_string())).collect();
                        tracing::warn!(error = %err, retry_in = ?backoff.peek(), "Reading from Redis failed; retrying.");
                        if !backoff.sleep_unless(&closed).await {
                            return;
                        }
                        continue;
                    }
                };
                backoff.reset();
                let mut got: HashMap<String, Vec<StreamId>> = HashMap::new();
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    got.entry(key.key).or_default().extend(key.ids);
                }
                let mut permit = Some(permit);
                for (i, stream) in streams.iter().enumerate() {
                    let entries = got.remove(stream).unwrap_or_default();
                    if pending_from[i].is_some() {
                        pending_from[i] = entries.last().map(|e| e.id.clone());
                    }
                    for entry in entries {
                        if let Some(held) = &held {
                            let key = (stream.clone(), entry.id.clone());
                            let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                            if !held.insert(key) {
                                continue; // Already handed over (seen again by a catch-up).
                            }
                        }
                        match permit.take() {
                            Some(permit) => permit.send((stream.clone(), entry)),
                            None => {
                                if sender.send((stream.clone(), entry)).await.is_err() {
                                    return; // Nobody reads any more.
                                }
                            }
                        }
                    }
                }
            }
        });
        receiver
    }
}
