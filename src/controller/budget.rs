//! The global budget of Vault lookups (`maxLookupsPerSecond`): a token bucket shared by every
//! binding. A lookup that finds the bucket empty is deferred, not queued: its wrap stays due
//! and is tried again on the binding's next round, oldest first, so the budget is spread over
//! the waiting wraps and never holds a round (or a mint, or a deadline revocation) up.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `rate` lookups per second on average, in bursts of at most one second's worth.
#[derive(Debug)]
pub struct LookupBudget {
    rate: u32,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl LookupBudget {
    /// A budget of `rate` lookups per second; 0 means unlimited.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(rate),
                at: Instant::now(),
            }),
        }
    }

    /// Takes one lookup from the budget; false when it is spent for now.
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// [`LookupBudget::try_take`] at a given instant.
    fn try_take_at(&self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = f64::from(self.rate);
        let mut bucket = self.bucket.lock().expect("budget lock");
        let elapsed = now.saturating_duration_since(bucket.at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * rate).min(rate);
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next lookup fits, at the full rate (for pacing a deferred round).
    pub fn refill_interval(&self) -> Duration {
        if self.rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / self.rate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(budget: &LookupBudget, at: Instant, tries: u32) -> u32 {
        (0..tries).filter(|_| budget.try_take_at(at)).count() as u32
    }

    #[test]
    fn a_full_bucket_gives_one_seconds_worth_then_refills_at_the_rate() {
        let budget = LookupBudget::new(10);
        let t0 = Instant::now();
        assert_eq!(
            taken(&budget, t0, 50),
            10,
            "a burst is at most a second's worth"
        );
        assert_eq!(taken(&budget, t0 + Duration::from_millis(100), 50), 1);
        assert_eq!(taken(&budget, t0 + Duration::from_millis(350), 50), 2);
        // A long pause does not bank more than one second's worth.
        assert_eq!(taken(&budget, t0 + Duration::from_secs(60), 50), 10);
        assert_eq!(budget.refill_interval(), Duration::from_millis(100));
    }

    #[test]
    fn over_a_minute_the_rate_holds() {
        let budget = LookupBudget::new(7);
        let t0 = Instant::now();
        let granted: u32 = (0..600)
            .map(|i| taken(&budget, t0 + Duration::from_millis(100 * i), 20))
            .sum();
        // 60 s at 7/s, plus the initial burst of 7.
        assert!((420..=427).contains(&granted), "{granted}");
    }

    #[test]
    fn the_wall_clock_entry_takes_from_the_same_bucket() {
        let budget = LookupBudget::new(1);
        assert!(budget.try_take());
        assert!(!budget.try_take(), "a second lookup within the same second");
        assert!(LookupBudget::new(0).try_take());
    }

    #[test]
    fn zero_means_unlimited() {
        let budget = LookupBudget::new(0);
        assert_eq!(taken(&budget, Instant::now(), 10_000), 10_000);
        assert_eq!(budget.refill_interval(), Duration::ZERO);
    }
}
