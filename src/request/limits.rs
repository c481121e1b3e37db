//! Rate limits of the request endpoint: a token bucket per pod and one per namespace, so a
//! crash-looping pod or a namespace full of them cannot mint thousands of tokens. Buckets live
//! in memory on each replica; full ones are forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RequestLimits;

/// Most buckets kept before the full ones are dropped.
const PRUNE_ABOVE: usize = 4096;

/// One token bucket: `tokens` at `at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

/// How fast a bucket refills and how much it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens per second.
    pub per_second: f64,
    /// Capacity.
    pub burst: f64,
}

impl Rate {
    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// A full bucket at `now`.
    pub fn full(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.burst,
            at: now,
        }
    }

    /// How long until `b` holds one token; zero when it does.
    pub fn wait(&self, b: Bucket, now: Instant) -> Duration {
        let missing = 1.0 - self.refilled(b, now);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.per_second)
        }
    }

    /// `b` with one token taken at `now` (only when [`Rate::wait`] is zero).
    pub fn take(&self, b: Bucket, now: Instant) -> Bucket {
        Bucket {
            tokens: self.refilled(b, now) - 1.0,
            at: now,
        }
    }

    /// Whether `b` is back to its burst at `now` (forgettable).
    pub fn is_full(&self, b: Bucket, now: Instant) -> bool {
        self.refilled(b, now) >= self.burst
    }
}

/// The per-pod and per-namespace buckets of one replica.
pub struct Limits {
    pod: Rate,
    namespace: Rate,
    buckets: Mutex<(HashMap<String, Bucket>, HashMap<String, Bucket>)>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(config: &RequestLimits) -> Self {
        Self {
            pod: Rate {
                per_second: 1.0 / config.pod_refill.as_secs_f64().max(0.001),
                burst: config.pod_burst.max(1) as f64,
            },
            namespace: Rate {
                per_second: config.namespace_per_second.max(1) as f64,
                burst: config.namespace_burst.max(1) as f64,
            },
            buckets: Mutex::default(),
        }
    }

    /// Takes one ask for pod uid `pod` in `namespace` at `now`, or says how long to wait.
    /// Nothing is taken from either bucket unless both allow it.
    pub fn take(&self, namespace: &str, pod: &str, now: Instant) -> Result<(), Duration> {
        let mut guard = self.buckets.lock().expect("limits lock");
        let (pods, namespaces) = &mut *guard;
        let p = pods.get(pod).copied().unwrap_or(self.pod.full(now));
        let n = namespaces
            .get(namespace)
            .copied()
            .unwrap_or(self.namespace.full(now));
        let wait = self.pod.wait(p, now).max(self.namespace.wait(n, now));
        if !wait.is_zero() {
            return Err(wait);
        }
        pods.insert(pod.to_string(), self.pod.take(p, now));
        namespaces.insert(namespace.to_string(), self.namespace.take(n, now));
        if pods.len() > PRUNE_ABOVE {
            pods.retain(|_, b| !self.pod.is_full(*b, now));
        }
        if namespaces.len() > PRUNE_ABOVE {
            namespaces.retain(|_, b| !self.namespace.is_full(*b, now));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(&RequestLimits {
            pod_burst: 3,
            pod_refill: Duration::from_secs(10),
            namespace_burst: 5,
            namespace_per_second: 1,
        })
    }

    #[test]
    fn a_pod_gets_its_burst_then_one_ask_per_refill() {
        let l = limits();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take("ns", "pod-a", t0).unwrap();
        }
        let wait = l.take("ns", "pod-a", t0).unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(10));
        // Another pod is not held back by the first (the namespace still has room).
        l.take("ns", "pod-b", t0).unwrap();
        let later = t0 + Duration::from_secs(10);
        l.take("ns", "pod-a", later).unwrap();
        assert!(l.take("ns", "pod-a", later).is_err());
    }

    #[test]
    fn a_namespace_is_capped_across_its_pods_and_refusals_cost_nothing() {
        let l = limits();
        let t0 = Instant::now();
        for i in 0..5 {
            l.take("ns", &format!("pod-{i}"), t0).unwrap();
        }
        let wait = l.take("ns", "pod-9", t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // The refused ask took nothing from pod-9's own bucket.
        let t1 = t0 + Duration::from_secs(3);
        for _ in 0..3 {
            l.take("ns", "pod-9", t1).unwrap();
        }
        // Other namespaces are untouched.
        l.take("other", "pod-x", t0).unwrap();
    }

    #[test]
    fn buckets_back_to_full_are_forgotten_once_there_are_many_and_busy_ones_are_kept() {
        let l = Limits::new(&RequestLimits {
            pod_burst: 3,
            pod_refill: Duration::from_secs(10),
            namespace_burst: 100_000,
            namespace_per_second: 100_000,
        });
        let t0 = Instant::now();
        for i in 0..PRUNE_ABOVE {
            l.take(&format!("ns-{i}"), &format!("pod-{i}"), t0).unwrap();
        }
        let sizes = |l: &Limits| {
            let guard = l.buckets.lock().unwrap();
            (guard.0.len(), guard.1.len())
        };
        assert_eq!(sizes(&l), (PRUNE_ABOVE, PRUNE_ABOVE), "none pruned yet");
        // One pod asks its whole burst away just before the others are full again.
        let t1 = t0 + Duration::from_secs(30);
        for _ in 0..3 {
            l.take("ns-0", "pod-0", t1).unwrap();
        }
        // Past the threshold: every bucket full again is dropped, the busy pod's is kept.
        l.take("ns-new", "pod-new", t1).unwrap();
        assert_eq!(sizes(&l), (2, 2), "the busy pod and the newcomer");
        assert!(
            l.take("ns-0", "pod-0", t1).is_err(),
            "its empty bucket kept"
        );
    }

    #[test]
    fn a_bucket_is_full_only_at_its_burst() {
        let rate = Rate {
            per_second: 1.0,
            burst: 3.0,
        };
        let t0 = Instant::now();
        let empty = Bucket {
            tokens: 0.0,
            at: t0,
        };
        assert!(!rate.is_full(empty, t0));
        assert!(!rate.is_full(empty, t0 + Duration::from_millis(2_999)));
        assert!(rate.is_full(empty, t0 + Duration::from_secs(3)));
        assert!(rate.is_full(rate.full(t0), t0));
    }
}
