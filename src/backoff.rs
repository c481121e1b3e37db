//! The wait between retries of a call that failed: from a first delay, doubling, capped, and
//! jittered so that processes that failed together (an outage ending) do not retry in lockstep.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngExt};
use tokio_util::sync::CancellationToken;

/// Delays between retries: each a random point in the upper half of `first`, `2 × first`,
/// `4 × first`, ..., at most `max` ("equal jitter").
///
/// The floor (half the doubling delay) keeps the waits growing and honours a caller's minimum;
/// the random part spreads out callers that failed at the same instant. Each `Backoff` draws
/// from its own generator, seeded from the operating system, so two pods (or two retry loops in
/// one process) do not share a sequence.
#[derive(Debug)]
pub struct Backoff {
    ceiling: Duration,
    max: Duration,
    rng: StdRng,
}

impl Backoff {
    /// From `first`, doubling, at most `max`; each delay drawn from the upper half of that.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self::with_rng(first, max, rand::make_rng())
    }

    /// Like [`Backoff::new`], drawing from `rng`.
    fn with_rng(first: Duration, max: Duration, rng: StdRng) -> Self {
        Self {
            ceiling: first,
            max,
            rng,
        }
    }

    /// What start-up reads use while the API server does not answer: 500 ms doubling to 30 s
    /// (each delay between half of that and all of it).
    pub fn at_start() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// The delay before the next try: between half the current ceiling and the ceiling, which
    /// then doubles (up to the cap), so the next delay is at least this one while uncapped.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jitter(self.ceiling, &mut self.rng);
        self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
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

/// A delay drawn uniformly from `[ceiling / 2, ceiling]`, for a caller that counts its own
/// failures (the controller's requeue of a failed binding): bindings that failed together (a
/// Vault outage) then retry spread out, not at the same instant.
pub fn jittered(ceiling: Duration) -> Duration {
    jitter(ceiling, &mut rand::rng())
}

/// The wait before asking again after a server answered `Retry-After: retry_after`: never
/// sooner than it (nor than `backoff`, the caller's own next delay), drawn uniformly from the
/// half after it, so clients refused together (a rate limit, an endpoint starting) do not all
/// come back at the same instant.
pub fn after_retry_after(retry_after: Duration, backoff: Duration) -> Duration {
    // Half of it, plus a draw from its upper half: [retry_after, 1.5 × retry_after].
    (retry_after / 2)
        .saturating_add(jitter(retry_after, &mut rand::rng()))
        .max(backoff)
}

/// A uniformly random delay in `[ceiling / 2, ceiling]`.
fn jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    let half = ceiling / 2;
    half.saturating_add(half.mul_f64(rng.random_range(0.0..=1.0)))
        .min(ceiling)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn seeded(first: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff::with_rng(first, max, StdRng::seed_from_u64(seed))
    }

    fn delays(backoff: &mut Backoff, n: usize) -> Vec<Duration> {
        (0..n).map(|_| backoff.next_delay()).collect()
    }

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap_each_in_the_upper_half() {
        let ceilings = [1, 2, 4, 5, 5, 5].map(Duration::from_secs);
        for seed in 0..100 {
            let mut b = seeded(Duration::from_secs(1), Duration::from_secs(5), seed);
            for (delay, ceiling) in delays(&mut b, ceilings.len()).into_iter().zip(ceilings) {
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} of {ceiling:?}"
                );
            }
        }
        let mut start = Backoff::at_start();
        let first = start.next_delay();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        let last = delays(&mut start, 100).pop().unwrap();
        assert!(last >= Duration::from_secs(15) && last <= Duration::from_secs(30));
    }

    #[test]
    fn delays_grow_until_the_cap() {
        for seed in 0..100 {
            let mut b = seeded(Duration::from_millis(100), Duration::from_secs(60), seed);
            // 100 ms doubling reaches the 60 s cap at the eleventh delay: the ten before grow.
            let uncapped = delays(&mut b, 10);
            assert!(uncapped.windows(2).all(|w| w[0] <= w[1]), "{uncapped:?}");
            assert!(uncapped[9] >= uncapped[0] * 256, "{uncapped:?}");
        }
        // No cap to speak of, and many retries: the doubling saturates, nothing overflows.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        assert!(
            delays(&mut b, 200)
                .iter()
                .all(|d| *d >= Duration::from_millis(500))
        );
    }

    #[test]
    fn processes_failing_together_do_not_retry_in_lockstep() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(8));
        // The sequence is the generator's: the same seed repeats it, another seed does not.
        let one = delays(&mut seeded(first, max, 1), 8);
        assert_eq!(one, delays(&mut seeded(first, max, 1), 8));
        assert_ne!(one, delays(&mut seeded(first, max, 2), 8));
        // Each `new` seeds from the operating system.
        let mut a = Backoff::new(first, max);
        let mut b = Backoff::new(first, max);
        assert_ne!(delays(&mut a, 8), delays(&mut b, 8));
        // Two hundred processes retrying together spread over the upper half of the delay.
        let firsts: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(first, max).next_delay())
            .collect();
        let (lo, hi) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
        assert!(*hi - *lo > first / 4, "{lo:?}..{hi:?}");
    }

    #[test]
    fn requeues_of_bindings_failing_together_spread_over_the_upper_half() {
        let ceiling = Duration::from_secs(8);
        let requeues: Vec<Duration> = (0..200).map(|_| jittered(ceiling)).collect();
        assert!(requeues.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
        let (lo, hi) = (
            requeues.iter().min().unwrap(),
            requeues.iter().max().unwrap(),
        );
        assert!(*hi - *lo > ceiling / 4, "{lo:?}..{hi:?}");
    }

    #[test]
    fn clients_told_the_same_retry_after_come_back_spread_never_sooner() {
        let after = Duration::from_secs(4);
        let waits: Vec<Duration> = (0..200)
            .map(|_| after_retry_after(after, Duration::from_millis(500)))
            .collect();
        assert!(waits.iter().all(|w| *w >= after && *w <= after * 3 / 2));
        let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*hi - *lo > after / 4, "{lo:?}..{hi:?}");
        // The caller's own delay wins when it is longer.
        let long = Duration::from_secs(30);
        assert_eq!(after_retry_after(after, long), long);
    }

    #[tokio::test]
    async fn a_wait_ends_early_on_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.wait(&shutdown).await);
    }
}
