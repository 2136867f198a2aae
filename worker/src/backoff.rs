//! The pause between tries of something that fails for reasons outside Sluice (Redis away, a
//! full disk): it starts short, doubles after each failure up to [`Backoff::MAX`], and starts
//! short again after a success. One type, so every retry loop waits the same way.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A doubling pause; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
}

impl Backoff {
    /// The longest pause.
    pub const MAX: Duration = Duration::from_secs(5);

    /// Pauses starting at `first`.
    pub fn new(first: Duration) -> Backoff {
        Backoff { first, next: first }
    }

    /// The pause the next wait takes (for logging `retry_in`).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The pause to take now; the next one is twice as long (at most [`Backoff::MAX`]).
    pub fn step(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        pause
    }

    /// After a success: the next pause is the first one again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the pause.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.step()).await;
    }

    /// Sleeps the pause unless `stop` is cancelled first; `false` when it was.
    pub async fn sleep_unless(&mut self, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.step()) => true,
            _ = stop.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_start_again_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100));
        let pauses: Vec<u64> = (0..8).map(|_| backoff.step().as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.peek(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_cancelled_stop_ends_the_sleep() {
        let stop = CancellationToken::new();
        stop.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(3600));
        assert!(!backoff.sleep_unless(&stop).await);
    }
}
