//! The thin I/O around the planner: read the binding's pods and records, run the plan's steps
//! against Vault and the API server, write the status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::SelectorExt;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::children::{self, ClaimError};
use crate::config::OperatorConfig;
use crate::crd::AgentSecretBinding;
use crate::metrics::Metrics;
use crate::model::{BINDING_FINALIZER, BINDING_LABEL, Phase, PodView, WrapState};
use crate::plan::{self, Action, Issue, Settings};
use crate::spec;
use crate::status::{self, Problems, StatusInput};
use crate::vault::{Revoked, TokenRequest, VaultClient, VaultError};

/// Field manager for everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "cubbyhole";
/// Safety-net requeue when nothing is due.
const IDLE_REQUEUE: Duration = Duration::from_secs(300);

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
}

impl Error {
    /// Static label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Vault(e) => e.category(),
            Error::Finalizer(_) => "finalizer",
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
    /// True once the first sync is done.
    pub fn is_ready(&self) -> bool {
        self.waiting
            .lock()
            .expect("readiness lock")
            .as_ref()
            .is_some_and(|w| w.is_empty())
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
    /// Event recorder.
    pub recorder: Recorder,
    /// Every binding (for conflicts).
    pub bindings: Store<AgentSecretBinding>,
    /// `namespace/secret` -> last lookup.
    pub last_lookup: Mutex<HashMap<String, Timestamp>>,
    /// `namespace/binding` -> consecutive failures (for backoff).
    pub failures: Mutex<HashMap<String, u32>>,
    /// First-sync tracking.
    pub readiness: Readiness,
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Reconciles one binding: finalizer first, then apply or clean up.
pub async fn reconcile(
    binding: Arc<AgentSecretBinding>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    let started = Instant::now();
    let ns = binding.namespace().unwrap_or_default();
    let name = binding.name_any();
    let api: Api<AgentSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, BINDING_FINALIZER, binding, |event| async {
        match event {
            Finalizer::Apply(b) => apply(&b, &ctx).await,
            Finalizer::Cleanup(b) => cleanup_binding(&b, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.reconciled(started.elapsed());
    ctx.readiness.reconciled(&key(&ns, &name));
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("failures lock")
            .remove(&key(&ns, &name));
    }
    result
}

/// Requeues a failed binding with exponential backoff (1 s doubling, at most 60 s).
pub fn error_policy(binding: Arc<AgentSecretBinding>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_error(error.category());
    let k = key(
        &binding.namespace().unwrap_or_default(),
        &binding.name_any(),
    );
    let mut failures = ctx.failures.lock().expect("failures lock");
    let n = failures.entry(k.clone()).or_default();
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(6)).min(Duration::from_secs(60));
    warn!(binding = %k, category = error.category(), error = %error, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

async fn apply(b: &AgentSecretBinding, ctx: &Context) -> Result<Requeue, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    let mut problems = Problems::default();
    let mut wake = None;
    let mut pods = vec![];
    let mut conflicts = BTreeMap::new();
    let mut records = list_records(&secrets, &name, &b.spec.secret_key).await?;
    match spec::validate(&b.spec, &ns, &ctx.config.allowed_roles) {
        Err(invalid) => problems.invalid = Some(invalid),
        Ok(valid) => {
            let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            pods = pods_api
                .list(&ListParams::default().labels_from(&valid.selector))
                .await?
                .items
                .iter()
                .filter_map(PodView::from_pod)
                .collect();
            conflicts = find_conflicts(ctx, b, &pods);
            let settings = Settings {
                binding: name.clone(),
                wrap_ttl: valid.wrap_ttl,
                lookup_period: ctx.config.lookup_period,
                agent_container: b.spec.agent_container.clone(),
                revoke_on_pod_deletion: b.spec.revoke_on_pod_deletion,
            };
            let last_lookup: HashMap<String, Timestamp> = {
                let all = ctx.last_lookup.lock().expect("lookup lock");
                records
                    .0
                    .iter()
                    .filter_map(|w| {
                        all.get(&key(&ns, &w.secret))
                            .map(|t| (w.secret.clone(), *t))
                    })
                    .collect()
            };
            let plan = plan::plan(&plan::Input {
                settings: &settings,
                pods: &pods,
                conflicts: &conflicts,
                wraps: &records.0,
                last_lookup: &last_lookup,
                now,
            });
            wake = plan.wake_at;
            tracing::debug!(namespace = %ns, binding = %name, actions = plan.actions.len(), wake_at = ?plan.wake_at, "planned");
            if !plan.actions.is_empty() {
                let mut step = Step {
                    ctx,
                    binding: b,
                    secrets: &secrets,
                    raw: &records.1,
                    settings: &settings,
                    problems: &mut problems,
                };
                let mut first_error = None;
                for action in plan.actions {
                    if let Err(e) = step.run(action).await {
                        first_error.get_or_insert(e);
                    }
                    if step.problems.vault_unavailable.is_some() {
                        // Every further step needs Vault too; report now, retry with backoff.
                        break;
                    }
                }
                records = list_records(&secrets, &name, &b.spec.secret_key).await?;
                if let Some(e) = first_error {
                    write_status(ctx, b, &pods, &records.0, &conflicts, &problems).await?;
                    return Err(e);
                }
                // Something changed: look again soon for follow-ups (e.g. the next round of a
                // recreated pod).
                wake = Some(wake.map_or(now, |w: Timestamp| w.min(now)));
            }
        }
    }
    write_status(ctx, b, &pods, &records.0, &conflicts, &problems).await?;
    if let Some(msg) = problems.vault_unavailable {
        return Err(Error::Vault(VaultError::Unreachable {
            op: "reconcile",
            detail: msg,
        }));
    }
    let delay = wake
        .map(|w| {
            let ms = w.as_millisecond() - Timestamp::now().as_millisecond();
            Duration::from_millis(ms.max(0) as u64)
        })
        .unwrap_or(IDLE_REQUEUE)
        .clamp(Duration::from_millis(500), IDLE_REQUEUE);
    tracing::debug!(namespace = %ns, binding = %name, requeue_in = ?delay, "reconciled");
    Ok(Requeue::requeue(delay))
}

/// The binding's records, and the raw Secrets by name (only for reading wrapping tokens).
async fn list_records(
    secrets: &Api<Secret>,
    binding: &str,
    secret_key: &str,
) -> Result<(Vec<WrapState>, BTreeMap<String, Secret>), kube::Error> {
    let list = secrets
        .list(&ListParams::default().labels(&format!("{BINDING_LABEL}={binding}")))
        .await?;
    let wraps = list
        .items
        .iter()
        .filter_map(|s| WrapState::from_secret(s, secret_key))
        .collect();
    let raw = list.items.into_iter().map(|s| (s.name_any(), s)).collect();
    Ok((wraps, raw))
}

fn find_conflicts(
    ctx: &Context,
    me: &AgentSecretBinding,
    pods: &[PodView],
) -> BTreeMap<String, Vec<String>> {
    let mut conflicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for other in ctx.bindings.state() {
        if other.namespace() != me.namespace()
            || other.name_any() == me.name_any()
            || other.meta().deletion_timestamp.is_some()
        {
            continue;
        }
        let Ok(selector) = spec::pod_selector(&other.spec) else {
            continue;
        };
        for pod in pods.iter().filter(|p| selector.matches(&p.labels)) {
            conflicts
                .entry(pod.name.clone())
                .or_default()
                .push(other.name_any());
        }
    }
    conflicts
}

async fn write_status(
    ctx: &Context,
    b: &AgentSecretBinding,
    pods: &[PodView],
    wraps: &[WrapState],
    conflicts: &BTreeMap<String, Vec<String>>,
    problems: &Problems,
) -> Result<(), Error> {
    let ns = b.namespace().unwrap_or_default();
    let status = status::compute(&StatusInput {
        generation: b.metadata.generation,
        pods,
        wraps,
        conflicts,
        problems,
        previous: b.status.as_ref(),
        now: Timestamp::now(),
    });
    ctx.metrics
        .set_outstanding(&ns, &b.name_any(), status.pending);
    if b.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<AgentSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": "cubbyhole.dev/v1alpha1",
        "kind": "AgentSecretBinding",
        "status": status,
    });
    api.patch_status(
        &b.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Runs plan steps for one binding.
struct Step<'a> {
    ctx: &'a Context,
    binding: &'a AgentSecretBinding,
    secrets: &'a Api<Secret>,
    raw: &'a BTreeMap<String, Secret>,
    settings: &'a Settings,
    problems: &'a mut Problems,
}

impl Step<'_> {
    async fn run(&mut self, action: Action) -> Result<(), Error> {
        match action {
            Action::Issue(issue) => self.issue(issue).await,
            Action::Lookup { wrap, if_invalid } => self.lookup(wrap, if_invalid).await,
            Action::ProbeExpiry { wrap } => self.probe_expiry(wrap).await,
            Action::ConfirmVault { wrap } => match self.ctx.vault.health().await {
                Ok(()) => {
                    match children::mark_vault_seen(self.secrets, &wrap, Timestamp::now()).await {
                        Err(ClaimError::Kube(e)) => Err(e.into()),
                        _ => Ok(()),
                    }
                }
                Err(e) => self.vault_failed(e),
            },
            Action::Settle {
                wrap,
                phase,
                verified,
                revoke_wrap,
                revoke_token,
                message,
            } => {
                self.settle(&wrap, phase, verified, revoke_wrap, revoke_token, &message)
                    .await
            }
            Action::Cleanup {
                wrap,
                revoke_wrap,
                revoke_token,
            } => self.cleanup(wrap, revoke_wrap, revoke_token).await,
        }
    }

    fn ns(&self) -> String {
        self.binding.namespace().unwrap_or_default()
    }

    async fn issue(&mut self, issue: Issue) -> Result<(), Error> {
        let binding = self.binding.name_any();
        let now = Timestamp::now();
        let rv = match children::claim(self.secrets, &binding, &issue, now).await {
            Ok(rv) => rv,
            Err(ClaimError::Taken) => {
                self.problems
                    .names_taken
                    .insert(issue.pod.clone(), issue.secret.clone());
                return Ok(());
            }
            Err(ClaimError::Lost) => return Ok(()),
            Err(ClaimError::Kube(e)) => return Err(e.into()),
        };
        if let Some(previous) = &issue.revoke_previous
            && self.settings.revoke_on_pod_deletion
        {
            self.revoke(previous, "token").await.ok();
        }
        let request = self.token_request(&issue);
        // Vault counts the wrap's TTL from its own receipt of the request: start the clock
        // before sending, so our expiry is never later than Vault's.
        let issued_at = Timestamp::now();
        match self.ctx.vault.create_wrapped_token(&request).await {
            Ok(wrap) => {
                crate::failpoint::hit("after-mint");
                let expires_at = issued_at
                    .saturating_add(SignedDuration::from_secs(wrap.ttl as i64))
                    .unwrap_or(issued_at);
                let delivered = children::deliver(
                    self.secrets,
                    &issue.secret,
                    &rv,
                    &self.binding.spec.secret_key,
                    &wrap,
                    issued_at,
                    expires_at,
                )
                .await;
                match delivered {
                    Ok(_) => {
                        self.ctx.metrics.wrap_issued();
                        info!(namespace = %self.ns(), binding = %binding, pod = %issue.pod, start = issue.start,
                            wrap_accessor = %wrap.accessor, accessor = %wrap.wrapped_accessor, "wrap issued");
                        let note = format!(
                            "issued wrap (accessor {}) for pod {} start {}, expires {}",
                            wrap.accessor, issue.pod, issue.start, expires_at
                        );
                        self.event_on_pod(
                            &issue.pod,
                            &issue.pod_uid,
                            EventType::Normal,
                            "WrapIssued",
                            "Issue",
                            &note,
                        )
                        .await;
                        self.event(EventType::Normal, "WrapIssued", "Issue", &note)
                            .await;
                        Ok(())
                    }
                    Err(e) => {
                        // Nobody can ever read this wrap: kill it and its token.
                        self.revoke(&wrap.accessor, "wrap").await.ok();
                        self.revoke(&wrap.wrapped_accessor, "token").await.ok();
                        match e {
                            ClaimError::Kube(e) => Err(e.into()),
                            _ => Ok(()),
                        }
                    }
                }
            }
            Err(e) if e.may_have_been_processed() => {
                warn!(namespace = %self.ns(), binding = %binding, pod = %issue.pod, error = %e,
                    "mint answer lost; the claim waits until any wrap it made has expired");
                self.problems.vault_unavailable = Some(e.to_string());
                Ok(())
            }
            Err(e) => {
                warn!(namespace = %self.ns(), binding = %binding, pod = %issue.pod, error = %e, "mint failed");
                children::record_failure(
                    self.secrets,
                    &issue.secret,
                    &rv,
                    &e.to_string(),
                    Timestamp::now(),
                )
                .await
                .ok();
                if e.is_unavailable() {
                    self.problems.vault_unavailable = Some(e.to_string());
                }
                self.ctx.metrics.transition(Phase::Failed.as_str());
                self.event(
                    EventType::Warning,
                    "VaultError",
                    "Issue",
                    &format!("minting for pod {} failed: {e}", issue.pod),
                )
                .await;
                Ok(())
            }
        }
    }

    fn token_request(&self, issue: &Issue) -> TokenRequest {
        let spec = &self.binding.spec.vault;
        let mut meta = spec.metadata.clone();
        meta.insert("namespace".into(), self.ns());
        meta.insert("pod".into(), issue.pod.clone());
        meta.insert("pod_uid".into(), issue.pod_uid.clone());
        meta.insert("binding".into(), self.binding.name_any());
        TokenRequest {
            role: spec.token_role.clone(),
            policies: spec.policies.clone(),
            ttl: spec.token_ttl.clone(),
            num_uses: spec.num_uses,
            meta,
            wrap_ttl_secs: self.settings.wrap_ttl.as_secs(),
        }
    }

    async fn lookup(&mut self, wrap: WrapState, if_invalid: Phase) -> Result<(), Error> {
        let Some(token) = self
            .raw
            .get(&wrap.secret)
            .and_then(|s| children::wrapping_token(s, &self.binding.spec.secret_key))
        else {
            return Ok(());
        };
        match self.ctx.vault.lookup_wrap(&token).await {
            Ok(Some(_)) => {
                self.ctx
                    .last_lookup
                    .lock()
                    .expect("lookup lock")
                    .insert(key(&self.ns(), &wrap.secret), Timestamp::now());
                Ok(())
            }
            Ok(None) if if_invalid == Phase::Tampered => {
                self.settle(
                    &wrap,
                    Phase::Tampered,
                    false,
                    false,
                    true,
                    "the wrap was consumed by someone other than the pod's agent",
                )
                .await
            }
            Ok(None) => {
                self.settle(
                    &wrap,
                    Phase::Unwrapped,
                    false,
                    false,
                    false,
                    "consumed (seen by lookup)",
                )
                .await
            }
            Err(e) => self.vault_failed(e),
        }
    }

    async fn probe_expiry(&mut self, wrap: WrapState) -> Result<(), Error> {
        let Some(wrap_accessor) = wrap.wrap_accessor.clone() else {
            return Ok(());
        };
        match self.revoke(&wrap_accessor, "wrap").await {
            Ok(Revoked::Existed) => {
                self.settle(&wrap, Phase::Expired, false, false, true,
                    "expired unconsumed: the pod's agent did not unwrap in time; its token was revoked").await
            }
            Ok(Revoked::NotFound) if wrap.expires_at.is_some_and(|e| Timestamp::now() >= e) => {
                // Too late to tell consumption from expiry: revoke to be safe.
                self.settle(&wrap, Phase::Expired, false, false, true,
                    "the wrap's expiry passed before it could be checked; its token was revoked to be safe").await
            }
            Ok(Revoked::NotFound) => {
                self.settle(&wrap, Phase::Unwrapped, false, false, false, "consumed (seen at the expiry check)")
                    .await
            }
            Err(e) => self.vault_failed(e),
        }
    }

    async fn settle(
        &mut self,
        wrap: &WrapState,
        phase: Phase,
        verified: bool,
        revoke_wrap: bool,
        revoke_token: bool,
        message: &str,
    ) -> Result<(), Error> {
        if let Err(e) = self.revoke_record(wrap, revoke_wrap, revoke_token).await {
            return self.vault_failed(e);
        }
        match children::settle(self.secrets, wrap, phase, verified, message).await {
            Ok(_) => {}
            Err(ClaimError::Kube(e)) => return Err(e.into()),
            Err(_) => return Ok(()),
        }
        self.ctx.metrics.transition(phase.as_str());
        let accessor = wrap.accessor.as_deref().unwrap_or("-");
        info!(namespace = %self.ns(), binding = %self.binding.name_any(), pod = %wrap.pod,
            phase = phase.as_str(), verified, accessor, "wrap settled");
        let note = format!("pod {} (token accessor {accessor}): {message}", wrap.pod);
        let (kind, reason) = match phase {
            Phase::Tampered => (EventType::Warning, "WrapTampered"),
            Phase::Expired => (EventType::Warning, "WrapExpired"),
            Phase::Failed => (EventType::Warning, "WrapRefused"),
            Phase::Revoked => (EventType::Normal, "WrapRevoked"),
            _ => (EventType::Normal, "WrapUnwrapped"),
        };
        self.event(kind, reason, "Track", &note).await;
        self.event_on_pod(&wrap.pod, &wrap.pod_uid, kind, reason, "Track", &note)
            .await;
        Ok(())
    }

    async fn cleanup(
        &mut self,
        wrap: WrapState,
        revoke_wrap: bool,
        revoke_token: bool,
    ) -> Result<(), Error> {
        if let Err(e) = self.revoke_record(&wrap, revoke_wrap, revoke_token).await {
            return self.vault_failed(e);
        }
        children::remove(self.secrets, &wrap).await?;
        self.ctx
            .last_lookup
            .lock()
            .expect("lookup lock")
            .remove(&key(&self.ns(), &wrap.secret));
        if revoke_token || revoke_wrap {
            self.ctx.metrics.transition(Phase::Revoked.as_str());
        }
        info!(namespace = %self.ns(), binding = %self.binding.name_any(), pod = %wrap.pod,
            revoke_wrap, revoke_token, "pod gone: record removed");
        let note = format!(
            "pod {} is gone: removed its Secret{}",
            wrap.pod,
            if revoke_token {
                " and revoked its token"
            } else {
                ""
            }
        );
        self.event(EventType::Normal, "WrapRevoked", "Cleanup", &note)
            .await;
        Ok(())
    }

    /// Revokes a record's wrapping token and/or inner token, as asked.
    async fn revoke_record(
        &self,
        wrap: &WrapState,
        revoke_wrap: bool,
        revoke_token: bool,
    ) -> Result<(), VaultError> {
        if revoke_wrap && let Some(a) = &wrap.wrap_accessor {
            self.revoke(a, "wrap").await?;
        }
        if revoke_token && let Some(a) = &wrap.accessor {
            self.revoke(a, "token").await?;
        }
        Ok(())
    }

    async fn revoke(&self, accessor: &str, kind: &str) -> Result<Revoked, VaultError> {
        let r = self.ctx.vault.revoke_accessor(accessor).await?;
        if r == Revoked::Existed {
            self.ctx.metrics.revoked(kind);
        }
        Ok(r)
    }

    fn vault_failed(&mut self, e: VaultError) -> Result<(), Error> {
        if e.is_unavailable() || e.may_have_been_processed() {
            self.problems.vault_unavailable = Some(e.to_string());
            Ok(())
        } else {
            Err(e.into())
        }
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: &str) {
        let reference = self.binding.object_ref(&());
        publish(&self.ctx.recorder, &reference, type_, reason, action, note).await;
    }

    async fn event_on_pod(
        &self,
        pod: &str,
        uid: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            namespace: Some(self.ns()),
            uid: Some(uid.into()),
            ..Default::default()
        };
        publish(&self.ctx.recorder, &reference, type_, reason, action, note).await;
    }
}

async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::debug!(error = %e, "event not published");
    }
}

/// Revokes everything a binding minted and deletes its records (finalizer and sweep).
pub async fn cleanup_records(
    ctx: &Context,
    namespace: &str,
    binding: &str,
) -> Result<usize, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let list = secrets
        .list(&ListParams::default().labels(&format!("{BINDING_LABEL}={binding}")))
        .await?;
    let mut removed = 0;
    for s in &list.items {
        let Some(wrap) = WrapState::from_secret(s, "") else {
            continue;
        };
        if matches!(wrap.phase, Phase::Issued | Phase::Claimed)
            && let Some(a) = &wrap.wrap_accessor
            && ctx.vault.revoke_accessor(a).await? == Revoked::Existed
        {
            ctx.metrics.revoked("wrap");
        }
        if !matches!(
            wrap.phase,
            Phase::Expired | Phase::Revoked | Phase::Tampered
        ) && let Some(a) = &wrap.accessor
            && ctx.vault.revoke_accessor(a).await? == Revoked::Existed
        {
            ctx.metrics.revoked("token");
        }
        children::remove(&secrets, &wrap).await?;
        removed += 1;
    }
    Ok(removed)
}

async fn cleanup_binding(b: &AgentSecretBinding, ctx: &Context) -> Result<Requeue, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let removed = cleanup_records(ctx, &ns, &name).await?;
    ctx.metrics.forget_binding(&ns, &name);
    info!(namespace = %ns, binding = %name, removed, "binding deleted: revoked and removed its records");
    Ok(Requeue::await_change())
}
