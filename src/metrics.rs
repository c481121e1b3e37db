//! Prometheus metrics. Labels are fixed words, namespaces and binding names: never a token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::record::Phase;

/// Which of a record's two tokens: the label of `cubbyhole_revocations_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// The wrapping token (single use, short TTL).
    Wrap,
    /// The token inside the wrap.
    Token,
}

impl TokenKind {
    /// The label value: `wrap` or `token`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Wrap => "wrap",
            TokenKind::Token => "token",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevocationLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BindingLabels {
    namespace: String,
    binding: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultErrorLabels {
    operation: String,
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// What a renewal by accessor found: the label of `cubbyhole_token_renewals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewalResult {
    /// The token lives on for another renewal window.
    Renewed,
    /// Vault knows no such token any more (it expired or was revoked).
    Gone,
    /// Not renewed: Vault does not say the token was minted for the record naming it.
    Refused,
}

impl RenewalResult {
    /// The label value: `renewed`, `gone` or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            RenewalResult::Renewed => "renewed",
            RenewalResult::Gone => "gone",
            RenewalResult::Refused => "refused",
        }
    }
}

/// All of cubbyhole's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    wraps_issued: Counter,
    transitions: Family<PhaseLabels, Counter>,
    revocations: Family<RevocationLabels, Counter>,
    outstanding: Family<BindingLabels, Gauge>,
    vault_errors: Family<VaultErrorLabels, Counter>,
    vault_latency: Family<OperationLabels, Histogram>,
    reconcile_duration: Histogram,
    reconcile_errors: Family<CategoryLabels, Counter>,
    forged_records: Family<NamespaceLabels, Counter>,
    lookups_deferred: Counter,
    renewals: Family<ResultLabels, Counter>,
    revocations_refused: Family<NamespaceLabels, Counter>,
    unverified_released: Family<NamespaceLabels, Counter>,
    oversized_ignored: Family<NamespaceLabels, Counter>,
    oversized_pods: Family<NamespaceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `cubbyhole_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cubbyhole");
        let wraps_issued = Counter::default();
        registry.register(
            "wraps_issued",
            "Wrapped tokens minted and delivered",
            wraps_issued.clone(),
        );
        let transitions = Family::<PhaseLabels, Counter>::default();
        registry.register(
            "wrap_transitions",
            "Wraps reaching a phase (Unwrapped, Expired, Revoked, Tampered, Failed)",
            transitions.clone(),
        );
        let revocations = Family::<RevocationLabels, Counter>::default();
        registry.register(
            "revocations",
            "Revocations by accessor that found a live token, by kind (wrap, token)",
            revocations.clone(),
        );
        let outstanding = Family::<BindingLabels, Gauge>::default();
        registry.register(
            "outstanding_wraps",
            "Wraps issued and not yet consumed, expired or revoked",
            outstanding.clone(),
        );
        let vault_errors = Family::<VaultErrorLabels, Counter>::default();
        registry.register(
            "vault_errors",
            "Failed Vault requests by operation and category",
            vault_errors.clone(),
        );
        let vault_latency = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "vault_request_duration_seconds",
            "Vault request latency by operation",
            vault_latency.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent reconciling one binding",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            reconcile_errors.clone(),
        );
        let forged_records = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "forged_records",
            "Per-pod records not written by the operator (bad signature, or unsigned and naming tokens not theirs), left untouched",
            forged_records.clone(),
        );
        let lookups_deferred = Counter::default();
        registry.register(
            "lookups_deferred",
            "Wrap lookups deferred to a later round because maxLookupsPerSecond was spent",
            lookups_deferred.clone(),
        );
        let renewals = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_renewals",
            "Renewals of agents' tokens by accessor, by result (renewed; gone: Vault no longer knows the token)",
            renewals.clone(),
        );
        let revocations_refused = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "revocations_refused",
            "Token revocations not made because Vault's metadata for the accessor did not name the record's namespace, pod and binding",
            revocations_refused.clone(),
        );
        let unverified_released = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "unverified_records_released",
            "Records whose signature no longer verifies (record key lost or rotated away, or forged) whose finalizer was released when their Secret was deleted, without any Vault call",
            unverified_released.clone(),
        );
        let oversized_ignored = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "oversized_secrets_ignored",
            "Watch events of Secrets labelled as records but too large to be one, cached without their content and never read as records",
            oversized_ignored.clone(),
        );
        let oversized_pods = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "oversized_pods_ignored",
            "Watch events of pods whose labels exceed 16 KiB, read without their labels (so no binding selects them)",
            oversized_pods.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            wraps_issued,
            transitions,
            revocations,
            outstanding,
            vault_errors,
            vault_latency,
            reconcile_duration,
            reconcile_errors,
            forged_records,
            lookups_deferred,
            renewals,
            revocations_refused,
            unverified_released,
            oversized_ignored,
            oversized_pods,
        }
    }

    /// Registers a metric defined elsewhere (the admission webhook's) under `cubbyhole_`.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .expect("metrics registry lock")
            .register(name, help, metric);
    }

    /// The text exposition format for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encoding metrics");
        out
    }

    /// A wrap was minted and delivered.
    pub fn wrap_issued(&self) {
        self.wraps_issued.inc();
    }
    /// A wrap reached `phase`.
    pub fn transition(&self, phase: Phase) {
        self.transitions
            .get_or_create(&PhaseLabels {
                phase: phase.as_str().into(),
            })
            .inc();
    }
    /// A live token of `kind` was revoked.
    pub fn revoked(&self, kind: TokenKind) {
        self.revocations
            .get_or_create(&RevocationLabels {
                kind: kind.as_str().into(),
            })
            .inc();
    }
    /// Sets the outstanding-wrap gauge of one binding.
    pub fn set_outstanding(&self, namespace: &str, binding: &str, n: u32) {
        self.outstanding
            .get_or_create(&BindingLabels {
                namespace: namespace.into(),
                binding: binding.into(),
            })
            .set(n as i64);
    }
    /// Drops the gauge of a deleted binding.
    pub fn forget_binding(&self, namespace: &str, binding: &str) {
        self.outstanding.remove(&BindingLabels {
            namespace: namespace.into(),
            binding: binding.into(),
        });
    }
    /// A Vault request failed.
    pub fn vault_error(&self, operation: &str, category: &str) {
        self.vault_errors
            .get_or_create(&VaultErrorLabels {
                operation: operation.into(),
                category: category.into(),
            })
            .inc();
    }
    /// A Vault request took `d`.
    pub fn vault_latency(&self, operation: &str, d: Duration) {
        self.vault_latency
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .observe(d.as_secs_f64());
    }
    /// A reconcile took `d`.
    pub fn reconciled(&self, d: Duration) {
        self.reconcile_duration.observe(d.as_secs_f64());
    }
    /// A reconcile failed with `category`.
    pub fn reconcile_error(&self, category: &str) {
        self.reconcile_errors
            .get_or_create(&CategoryLabels {
                category: category.into(),
            })
            .inc();
    }
    /// A labelled Secret in `namespace` was too large to be a record (cached as a stub).
    pub fn oversized_ignored(&self, namespace: &str) {
        self.oversized_ignored
            .get_or_create(&NamespaceLabels {
                namespace: namespace.into(),
            })
            .inc();
    }
    /// A pod in `namespace` carried too many labels to be read with them.
    pub fn oversized_pod(&self, namespace: &str) {
        self.oversized_pods
            .get_or_create(&NamespaceLabels {
                namespace: namespace.into(),
            })
            .inc();
    }
    /// A lookup was deferred: the global lookup budget was spent.
    pub fn lookup_deferred(&self) {
        self.lookups_deferred.inc();
    }
    /// A forged record was found (and left untouched) in `namespace`.
    pub fn forged_record(&self, namespace: &str) {
        self.forged_records
            .get_or_create(&NamespaceLabels {
                namespace: namespace.into(),
            })
            .inc();
    }
    /// A renewal by accessor ended with `result`.
    pub fn renewal(&self, result: RenewalResult) {
        self.renewals
            .get_or_create(&ResultLabels {
                result: result.as_str().into(),
            })
            .inc();
    }
    /// A revocation in `namespace` was refused: Vault did not vouch for the token.
    pub fn revocation_refused(&self, namespace: &str) {
        self.revocations_refused
            .get_or_create(&NamespaceLabels {
                namespace: namespace.into(),
            })
            .inc();
    }
    /// A record in `namespace` that no longer verifies was released at its deletion.
    pub fn unverified_released(&self, namespace: &str) {
        self.unverified_released
            .get_or_create(&NamespaceLabels {
                namespace: namespace.into(),
            })
            .inc();
    }
}
