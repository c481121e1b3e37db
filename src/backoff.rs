//! The wait between retries of a call that failed: from a first delay, doubling, capped.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Delays between retries: `first`, doubling each time, at most `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// From `first`, doubling, at most `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// What start-up reads use while the API server does not answer: 500 ms doubling to 30 s.
    pub fn at_start() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// The delay before the next try (the one after is twice as long, up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps the next delay; `false` when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.next_delay()) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        let mut start = Backoff::at_start();
        assert_eq!(start.next_delay(), Duration::from_millis(500));
        assert_eq!(
            (0..10).map(|_| start.next_delay()).last(),
            Some(Duration::from_secs(30))
        );
    }

    #[tokio::test]
    async fn a_wait_ends_early_on_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.wait(&shutdown).await);
    }
}
