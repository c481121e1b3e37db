//! Read your own writes: the resourceVersion this replica last wrote to each record, so that an
//! ask right after another of the same pod does not plan from a cache that has not seen the
//! previous write yet (it would mint, lose the guarded write, revoke what it minted, and answer
//! "ask again").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::record::cached::version_reached;

/// How long a write is remembered: far longer than any watch takes to deliver it.
const REMEMBER: Duration = Duration::from_secs(60);
/// At most this many records are remembered (the oldest go first).
const MAX_REMEMBERED: usize = 10_000;

/// `namespace/secret` -> (resourceVersion written, when).
#[derive(Default)]
pub struct OwnWrites {
    written: Mutex<HashMap<String, (String, Instant)>>,
}

impl OwnWrites {
    /// Remembers that this replica wrote `resource_version` to `key`.
    pub fn wrote(&self, key: String, resource_version: String) {
        let mut written = self.written.lock().expect("own writes lock");
        let now = Instant::now();
        written.retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
        if written.len() >= MAX_REMEMBERED
            && let Some(oldest) = written
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            written.remove(&oldest);
        }
        written.insert(key, (resource_version, now));
    }

    /// True when a cached copy of `key` at `cached` (its resourceVersion, if it exists) may
    /// predate this replica's last write to it: read it from the API server instead. A cache
    /// that shows the write is trusted again from then on.
    pub fn cache_may_lag(&self, key: &str, cached: Option<&str>) -> bool {
        let mut written = self.written.lock().expect("own writes lock");
        let Some((rv, at)) = written.get(key) else {
            return false;
        };
        if at.elapsed() >= REMEMBER || cached.is_some_and(|c| version_reached(c, rv)) {
            written.remove(key);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_writes_are_all_remembered_up_to_the_bound_then_the_oldest_goes() {
        let own = OwnWrites::default();
        for i in 0..MAX_REMEMBERED {
            own.wrote(format!("ns/r{i}"), "1".into());
        }
        assert!(own.cache_may_lag("ns/r0", None), "the first is still known");
        assert!(own.cache_may_lag("ns/r1", None));
        own.wrote("ns/new".into(), "1".into());
        assert!(own.cache_may_lag("ns/new", None));
        let forgotten = (0..MAX_REMEMBERED)
            .filter(|i| !own.cache_may_lag(&format!("ns/r{i}"), None))
            .count();
        assert_eq!(forgotten, 1, "exactly one made room");
    }

    #[test]
    fn a_cache_behind_our_write_is_bypassed_until_it_shows_it() {
        let own = OwnWrites::default();
        assert!(
            !own.cache_may_lag("ns/r", None),
            "never written: trust the cache"
        );
        own.wrote("ns/r".into(), "7".into());
        assert!(
            own.cache_may_lag("ns/r", None),
            "the cache has not seen the create"
        );
        assert!(own.cache_may_lag("ns/r", Some("5")), "an older version");
        assert!(!own.cache_may_lag("ns/r", Some("7")), "caught up");
        own.wrote("ns/r".into(), "9".into());
        assert!(
            !own.cache_may_lag("ns/r", Some("12")),
            "a later write by someone else shows ours too"
        );
        assert!(
            !own.cache_may_lag("ns/r", Some("5")),
            "trusted again once caught up"
        );
        assert!(!own.cache_may_lag("ns/other", None));
    }
}
