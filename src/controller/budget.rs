//! The global budget of Vault lookups (`maxLookupsPerSecond`): a token bucket shared by every
//! binding. A lookup that finds the bucket empty is deferred, not queued: its wrap stays due
//! and is tried again on the binding's next round, oldest first, so the budget is spread over
//! the waiting wraps and never holds a round (or a mint, or a deadline revocation) up.
//!
//! Shared fairly between namespaces: within each second, a namespace that has taken its share
//! (the rate over the namespaces taking in that second) may take only from the upper half of
//! the bucket, so one tenant's thousands of outstanding wraps leave the lower half to the
//! others; alone, a namespace has the whole budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a namespace's takes count against its share.
const SHARE_WINDOW: Duration = Duration::from_secs(1);

/// At most `rate` lookups per second on average, in bursts of at most one second's worth.
#[derive(Debug)]
pub struct LookupBudget {
    rate: u32,
    clock: Clock,
    bucket: Mutex<Bucket>,
}

/// Where a budget reads the time: the only place it does.
#[derive(Clone, Copy, Debug)]
enum Clock {
    /// The process's monotonic clock (the operator).
    Wall,
    /// Time stands still at this instant: every take happens then (a simulated round, which
    /// must replay whatever the machine's speed).
    Stopped(Instant),
}

impl Clock {
    fn now(self) -> Instant {
        match self {
            Clock::Wall => Instant::now(),
            Clock::Stopped(at) => at,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Lookups taken per namespace since `window`.
    taken: HashMap<String, u32>,
    window: Instant,
}

impl LookupBudget {
    /// A budget of `rate` lookups per second on the wall clock; 0 means unlimited.
    pub fn new(rate: u32) -> Self {
        Self::on(rate, Clock::Wall)
    }

    /// A budget of `rate` lookups per second (0: unlimited) whose clock stands still at `at`:
    /// a full bucket that never refills, every take made at `at`. For a caller that owns the
    /// time (the simulation's round, at its virtual time), so that nothing it runs reads the
    /// wall clock through the budget.
    pub fn stopped_at(rate: u32, at: Instant) -> Self {
        Self::on(rate, Clock::Stopped(at))
    }

    fn on(rate: u32, clock: Clock) -> Self {
        let now = clock.now();
        Self {
            rate,
            clock,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(rate),
                at: now,
                taken: HashMap::new(),
                window: now,
            }),
        }
    }

    /// Takes one lookup from the budget for a round in `namespace`, at the budget's clock;
    /// false when it is spent for now (or, for a namespace over its share, down to its lower
    /// half).
    pub fn try_take(&self, namespace: &str) -> bool {
        self.try_take_at(namespace, self.clock.now())
    }

    /// [`LookupBudget::try_take`] at a given instant: the bucket's arithmetic, which reads no
    /// clock.
    fn try_take_at(&self, namespace: &str, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = f64::from(self.rate);
        let mut bucket = self.bucket.lock().expect("budget lock");
        let elapsed = now.saturating_duration_since(bucket.at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * rate).min(rate);
        bucket.at = bucket.at.max(now);
        if now.saturating_duration_since(bucket.window) >= SHARE_WINDOW {
            bucket.taken.clear();
            bucket.window = now;
        }
        let taken = bucket.taken.get(namespace).copied().unwrap_or(0);
        let takers = bucket.taken.len() + usize::from(taken == 0);
        // Alone in this second, a namespace is never over its share.
        let within_share = takers == 1 || f64::from(taken) < rate / takers as f64;
        let floor = if within_share { 1.0 } else { rate / 2.0 + 1.0 };
        if bucket.tokens >= floor {
            bucket.tokens -= 1.0;
            *bucket.taken.entry(namespace.to_string()).or_default() += 1;
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
        taken_by(budget, "ns", at, tries)
    }

    fn taken_by(budget: &LookupBudget, ns: &str, at: Instant, tries: u32) -> u32 {
        (0..tries).filter(|_| budget.try_take_at(ns, at)).count() as u32
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
        assert!(budget.try_take("ns"));
        assert!(
            !budget.try_take("ns"),
            "a second lookup within the same second"
        );
        assert!(LookupBudget::new(0).try_take("ns"));
    }

    #[test]
    fn a_stopped_clock_never_refills_and_never_reads_the_wall_clock() {
        let at = Instant::now();
        let budget = LookupBudget::stopped_at(2, at);
        assert!(budget.try_take("ns") && budget.try_take("ns"));
        // However long the machine takes, the budget's time stands at `at`.
        std::thread::sleep(Duration::from_millis(600));
        assert!(!budget.try_take("ns"), "refilled from the wall clock");
        // Its bucket is the same arithmetic: it refills from its own instant onwards.
        assert!(budget.try_take_at("ns", at + Duration::from_millis(500)));
        assert!(LookupBudget::stopped_at(0, at).try_take("ns"));
    }

    #[test]
    fn a_namespace_over_its_share_leaves_the_lower_half_to_the_others() {
        let budget = LookupBudget::new(100);
        let t0 = Instant::now();
        // Alone, a namespace has the whole burst, second after second.
        assert_eq!(taken_by(&budget, "noisy", t0, 500), 100);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(taken_by(&budget, "noisy", t1, 500), 100);
        // Once another namespace takes in the same second, the noisy one's share is half the
        // rate; past it, it may take only from the upper half of the bucket...
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(taken_by(&budget, "quiet", t2, 1), 1);
        assert_eq!(taken_by(&budget, "noisy", t2, 500), 50);
        // ...so the quiet namespace finds the lower half.
        assert_eq!(taken_by(&budget, "quiet", t2, 500), 49);
        // Half a second later the bucket holds 50 again: the noisy namespace, past its share,
        // takes from the upper half only (none: 50 is not above half), then refills above it.
        let t3 = t2 + Duration::from_millis(500);
        assert_eq!(taken_by(&budget, "noisy", t3, 500), 0);
        let t4 = t2 + Duration::from_millis(990);
        assert_eq!(
            taken_by(&budget, "noisy", t4, 500),
            49,
            "99 tokens down to 50"
        );
        // Over a minute of both asking for everything, each gets about half the rate.
        let (mut noisy, mut quiet) = (0, 0);
        for i in 1..=600 {
            let at = t2 + Duration::from_millis(100 * i);
            noisy += taken_by(&budget, "noisy", at, 50);
            quiet += taken_by(&budget, "quiet", at, 50);
        }
        assert!((2900..=3100).contains(&noisy), "noisy {noisy}");
        assert!((2900..=3100).contains(&quiet), "quiet {quiet}");
        assert!(noisy + quiet <= 6000 + 100);
    }

    #[test]
    fn zero_means_unlimited() {
        let budget = LookupBudget::new(0);
        assert_eq!(taken(&budget, Instant::now(), 10_000), 10_000);
        assert_eq!(budget.refill_interval(), Duration::ZERO);
    }
}
