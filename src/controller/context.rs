//! The reconciler's shared state and its one error type.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::config::OperatorConfig;
use crate::controller::budget::LookupBudget;
use crate::controller::cache::{CachedBinding, IndexedCache};
use crate::controller::effects::{LiveRecords, OwnWrite};
use crate::controller::fair::FairSlots;
use crate::core::pod::CachedPod;
use crate::metrics::Metrics;
use crate::record::CachedRecord;
use crate::record::signing_keys::KeyRing;
use crate::record::writes::Records;
use crate::vault::{VaultClient, VaultError};

/// One error type for the reconciler; `category` is its metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Vault failed; the status says so.
    #[error("{0}")]
    Vault(#[from] VaultError),
    /// Adding or removing the binding finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A record changed between reading and removing it; retried with the change seen.
    #[error("record {0} changed while it was being removed; retrying")]
    RecordChanged(String),
    /// Vault was unavailable for some of this round's actions; the status says so and the
    /// binding is retried with backoff.
    #[error("{0}; retrying with backoff")]
    VaultUnavailable(String),
}

impl Error {
    /// Static label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Vault(e) => e.category(),
            Error::Finalizer(_) => "finalizer",
            Error::VaultUnavailable(_) => "unreachable",
            Error::RecordChanged(_) => "conflict",
        }
    }
}

/// Tracks "ready only after the first sync": every binding that existed at start-up has been
/// reconciled once.
#[derive(Default)]
pub struct Readiness {
    waiting: Mutex<Option<HashSet<String>>>,
}

impl Readiness {
    /// Records the bindings found by the initial list.
    pub fn expect(&self, keys: impl IntoIterator<Item = String>) {
        *self.waiting.lock().expect("readiness lock") = Some(keys.into_iter().collect());
    }
    /// A binding was reconciled.
    pub fn reconciled(&self, key: &str) {
        if let Some(w) = self.waiting.lock().expect("readiness lock").as_mut() {
            w.remove(key);
        }
    }
    /// Bindings still waiting for their first reconcile.
    pub fn waiting(&self) -> Vec<String> {
        self.waiting
            .lock()
            .expect("readiness lock")
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
    /// True once the first sync is done.
    pub fn is_ready(&self) -> bool {
        self.waiting
            .lock()
            .expect("readiness lock")
            .as_ref()
            .is_some_and(|w| w.is_empty())
    }
}

/// When a step was last taken on a record's wrap or token, and on which one: a new start's
/// wrap or token is another one, on which it was never taken.
#[derive(Clone, Debug)]
pub struct LastDone {
    /// The accessor of the wrap or token the step was taken on.
    pub accessor: String,
    /// When.
    pub at: Timestamp,
}

/// What this process remembers between rounds, by `namespace/secret` (lost on a restart: a
/// lookup or renewal then only comes early, a taken name is found again by its write).
#[derive(Default)]
pub struct Memory {
    /// Last lookup of the record's wrap.
    pub last_lookup: Mutex<HashMap<String, LastDone>>,
    /// When a Secret not of its binding was found holding that name (its pod is not minted for
    /// again until `TAKEN_NAME_RETRY` later).
    pub names_taken: Mutex<HashMap<String, Timestamp>>,
    /// Last renewal of the token the record's pod's agent holds.
    pub last_renewal: Mutex<HashMap<String, LastDone>>,
    /// What Vault vouched for the record's held token before its first renewal (asked once per
    /// accessor: a token's metadata never changes).
    pub vouched: Mutex<HashMap<String, VouchedToken>>,
    /// Token role -> its explicit max TTL in seconds, and when that was read.
    pub role_max: Mutex<HashMap<String, (Option<u64>, Timestamp)>>,
}

/// A held token Vault said was minted for its record.
#[derive(Clone, Debug, PartialEq)]
pub struct VouchedToken {
    /// Its accessor.
    pub accessor: String,
    /// When it must end by its own explicit max TTL, if it has one.
    pub hard_end: Option<Timestamp>,
}

impl Memory {
    /// Forgets a removed record's lookup and renewal times and what Vault vouched for it.
    pub fn forget(&self, key: &str) {
        self.last_lookup.lock().expect("lookup lock").remove(key);
        self.last_renewal.lock().expect("renewal lock").remove(key);
        self.vouched.lock().expect("vouched lock").remove(key);
    }
}

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Vault client.
    pub vault: VaultClient,
    /// Operator configuration.
    pub config: OperatorConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder for warnings: it keeps each Event for a few minutes, so a warning that
    /// repeats becomes one Event with a count.
    pub recorder: Recorder,
    /// Who publishes Events; routine ones (one per pod start, never repeated) go through a
    /// recorder of their own that keeps nothing (at 10,000 pods the kept copies would be the
    /// operator's largest cache).
    pub reporter: Reporter,
    /// Every binding, by namespace, its selector parsed (for conflicts and pod events).
    pub bindings: Arc<IndexedCache<CachedBinding>>,
    /// Every pod, by namespace, as the controller's pod watch sees it (read into what the
    /// planner reads).
    pub pods: Arc<IndexedCache<CachedPod>>,
    /// Every per-pod record (cubbyhole's Secrets), by namespace and binding, as the
    /// controller's Secret watch sees it (packed: a round unpacks its binding's).
    pub secrets: Arc<IndexedCache<CachedRecord>>,
    /// The reconcile slots (`reconcileConcurrency`), shared fairly between namespaces.
    pub slots: FairSlots,
    /// What the executor remembers between rounds.
    pub memory: Memory,
    /// `namespace/binding` -> consecutive failures (for backoff).
    pub failures: Mutex<HashMap<String, u32>>,
    /// First-sync tracking.
    pub readiness: Readiness,
    /// Keys that sign and verify per-pod records.
    pub record_keys: Arc<KeyRing>,
    /// `namespace/binding` -> record writes of its last round the next round waits to see in
    /// the record cache (`effects::until_cached`).
    pub unseen_writes: Mutex<HashMap<String, Vec<OwnWrite>>>,
    /// `namespace/binding` -> when this process last wrote the binding's status (counts are
    /// written at most once per `status::COUNTS_INTERVAL`).
    pub statuses_written: Mutex<HashMap<String, Instant>>,
    /// `namespace/secret` -> resourceVersion of forged records already reported (once each).
    pub forged: Mutex<HashMap<String, Option<String>>>,
    /// The global budget of Vault lookups (`maxLookupsPerSecond`).
    pub lookups: LookupBudget,
}

impl Context {
    /// A context with empty caches and memory: the operator's before its watches fill them,
    /// and `cubbyhole uninstall`'s, which reads the API server directly. Events are published
    /// as the `cubbyhole` controller, instance `POD_NAME`.
    pub fn new(
        client: Client,
        vault: VaultClient,
        config: OperatorConfig,
        metrics: Metrics,
        record_keys: Arc<KeyRing>,
    ) -> Self {
        let reporter = Reporter {
            controller: "cubbyhole".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            vault,
            metrics,
            bindings: Default::default(),
            pods: Default::default(),
            secrets: Default::default(),
            slots: FairSlots::new(config.reconcile_concurrency.into()),
            memory: Default::default(),
            failures: Default::default(),
            readiness: Readiness::default(),
            record_keys,
            statuses_written: Default::default(),
            unseen_writes: Default::default(),
            forged: Default::default(),
            lookups: LookupBudget::new(config.max_lookups_per_second),
            config,
        }
    }

    /// `records` with this operator's Event recorders: what the executor, the sweep and the
    /// request endpoint write records and publish Events through.
    pub fn live_records<'a>(&'a self, records: Records<'a>) -> LiveRecords<'a> {
        LiveRecords {
            records,
            recorder: &self.recorder,
            client: &self.client,
            reporter: &self.reporter,
            written: Default::default(),
        }
    }
}

/// `namespace/name`, the key of the per-binding and per-Secret maps.
pub fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_every_initial_binding_was_reconciled() {
        let r = Readiness::default();
        assert!(!r.is_ready(), "not ready before the initial list");
        r.expect(["ns/a".to_string(), "ns/b".to_string()]);
        r.reconciled("ns/a");
        assert!(!r.is_ready());
        assert_eq!(r.waiting(), vec!["ns/b".to_string()]);
        r.reconciled("ns/b");
        assert!(r.is_ready());
        let empty = Readiness::default();
        empty.expect([]);
        assert!(empty.is_ready());
    }
}
