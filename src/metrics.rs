//! Prometheus metrics. Labels are fixed words, namespaces and binding names, the version and
//! the commit: never a token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: String,
}

/// Which of the webhook's certificates: the label of
/// `cubbyhole_webhook_certificate_expiry_timestamp_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookCertificate {
    /// The certificate the webhook and the request endpoint serve.
    Serving,
    /// The CA that signed it (the operator's own, or `ca.crt` of cert-manager's Secret).
    Ca,
}

impl WebhookCertificate {
    /// The label value: `serving` or `ca`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookCertificate::Serving => "serving",
            WebhookCertificate::Ca => "ca",
        }
    }
}

/// The version label of `cubbyhole_build_info`: the package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit label of `cubbyhole_build_info`: the commit build.rs found (12 hex digits,
/// `-dirty` for a tree with changes, `unknown` without git).
pub const COMMIT: &str = env!("CUBBYHOLE_COMMIT");

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
    leader: Gauge,
    binding_ready: Family<BindingLabels, Gauge>,
    webhook_certificates: Family<CertificateLabels, Gauge>,
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
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: VERSION.into(),
                commit: COMMIT.into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1: the version and commit of this build",
            build_info,
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controller (without leader election: while it runs the controller), else 0",
            leader.clone(),
        );
        let binding_ready = Family::<BindingLabels, Gauge>::default();
        registry.register(
            "binding_ready",
            "1 when the binding's Ready condition is True, else 0; set by the leader at each reconcile, dropped when the binding is deleted",
            binding_ready.clone(),
        );
        let webhook_certificates = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "When the webhook's certificate this replica serves (certificate=serving) and the CA that signed it (certificate=ca) expire, unix seconds",
            webhook_certificates.clone(),
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
            leader,
            binding_ready,
            webhook_certificates,
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
    /// A wrap reached `phase` (its word: `Phase::as_str`).
    pub fn transition(&self, phase: &str) {
        self.transitions
            .get_or_create(&PhaseLabels {
                phase: phase.into(),
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
    /// The webhook's `which` certificate now loaded expires at `not_after` (unix seconds).
    pub fn webhook_certificate_expires(&self, which: WebhookCertificate, not_after: u64) {
        self.webhook_certificates
            .get_or_create(&CertificateLabels {
                certificate: which.as_str().into(),
            })
            .set(i64::try_from(not_after).unwrap_or(i64::MAX));
    }

    /// Sets the readiness gauge of one binding: 1 when `ready` (its computed status's `Ready`
    /// condition is `True`: `core::status::is_ready`), else 0.
    pub fn set_binding_ready(&self, namespace: &str, binding: &str, ready: bool) {
        self.binding_ready
            .get_or_create(&BindingLabels {
                namespace: namespace.into(),
                binding: binding.into(),
            })
            .set(i64::from(ready));
    }
    /// Drops the gauges of a deleted binding (outstanding wraps, readiness): a series lives
    /// only as long as its binding.
    pub fn forget_binding(&self, namespace: &str, binding: &str) {
        let labels = BindingLabels {
            namespace: namespace.into(),
            binding: binding.into(),
        };
        self.outstanding.remove(&labels);
        self.binding_ready.remove(&labels);
    }
    /// This replica started (`true`) or stopped (`false`) leading: it runs the controller.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::status::{READY, is_ready};
    use crate::crd::{AgentSecretBindingStatus, Condition};

    /// The sample lines of `name` (exactly that name, any labels) in the exposition.
    fn samples(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .map(str::to_string)
            .collect()
    }

    fn status(ready: &str) -> AgentSecretBindingStatus {
        AgentSecretBindingStatus {
            conditions: vec![Condition {
                type_: READY.into(),
                status: ready.into(),
                reason: "Ready".into(),
                message: String::new(),
                last_transition_time: "2026-12-02T00:00:00Z".into(),
                observed_generation: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn build_info_names_the_version_and_the_commit() {
        let metrics = Metrics::new();
        assert_eq!(
            samples(&metrics, "cubbyhole_build_info"),
            [format!(
                "cubbyhole_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                env!("CUBBYHOLE_COMMIT")
            )]
        );
        assert!(!COMMIT.is_empty());
    }

    #[test]
    fn leader_is_zero_until_this_replica_leads_and_again_after() {
        let metrics = Metrics::new();
        assert_eq!(
            samples(&metrics, "cubbyhole_leader"),
            ["cubbyhole_leader 0"]
        );
        metrics.set_leader(true);
        assert_eq!(
            samples(&metrics, "cubbyhole_leader"),
            ["cubbyhole_leader 1"]
        );
        metrics.set_leader(false);
        assert_eq!(
            samples(&metrics, "cubbyhole_leader"),
            ["cubbyhole_leader 0"]
        );
    }

    #[test]
    fn binding_readiness_follows_the_ready_condition_and_goes_with_the_binding() {
        let metrics = Metrics::new();
        let ready = |m: &Metrics| samples(m, "cubbyhole_binding_ready");
        metrics.set_binding_ready("team-a", "agents", is_ready(&status("True")));
        metrics.set_binding_ready("team-b", "tools", is_ready(&status("False")));
        metrics.set_binding_ready("team-b", "unsure", is_ready(&status("Unknown")));
        // No Ready condition yet (never reconciled through): not ready.
        metrics.set_binding_ready(
            "team-b",
            "new",
            is_ready(&AgentSecretBindingStatus::default()),
        );
        let mut got = ready(&metrics);
        got.sort();
        assert_eq!(
            got,
            [
                "cubbyhole_binding_ready{namespace=\"team-a\",binding=\"agents\"} 1",
                "cubbyhole_binding_ready{namespace=\"team-b\",binding=\"new\"} 0",
                "cubbyhole_binding_ready{namespace=\"team-b\",binding=\"tools\"} 0",
                "cubbyhole_binding_ready{namespace=\"team-b\",binding=\"unsure\"} 0",
            ]
        );
        // A Degraded condition alone does not make a Ready binding unready.
        let mut degraded = status("True");
        degraded.conditions.push(Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            ..degraded.conditions[0].clone()
        });
        metrics.set_binding_ready("team-b", "tools", is_ready(&degraded));
        assert!(
            ready(&metrics).contains(
                &"cubbyhole_binding_ready{namespace=\"team-b\",binding=\"tools\"} 1".into()
            )
        );
        // Deleted bindings leave no series behind (outstanding wraps neither).
        metrics.set_outstanding("team-a", "agents", 2);
        metrics.forget_binding("team-a", "agents");
        metrics.forget_binding("team-b", "tools");
        metrics.forget_binding("team-b", "new");
        metrics.forget_binding("team-b", "unsure");
        assert_eq!(ready(&metrics), Vec::<String>::new());
        assert_eq!(
            samples(&metrics, "cubbyhole_outstanding_wraps"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn webhook_certificate_expiry_is_exported() {
        let metrics = Metrics::new();
        metrics.webhook_certificate_expires(WebhookCertificate::Serving, 1_900_000_000);
        metrics.webhook_certificate_expires(WebhookCertificate::Ca, 2_100_000_000);
        let got = samples(
            &metrics,
            "cubbyhole_webhook_certificate_expiry_timestamp_seconds",
        );
        for which in ["serving", "ca"] {
            assert!(
                got.iter()
                    .any(|l| l.contains(&format!("{{certificate=\"{which}\"}}"))),
                "{got:?}"
            );
        }
    }
}
