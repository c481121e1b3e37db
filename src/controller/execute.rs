//! Carries out the planner's actions for one binding against Vault and the API server, and
//! tells people what happened (logs with accessors only, Events, metrics). It decides nothing
//! the planner could decide: outcomes come from `core::plan`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, stream};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::{EventType, Recorder};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::controller::budget::LookupBudget;
use crate::controller::context::{Error, LastDone, Memory, VouchedToken, key};
use crate::controller::effects::{RecordOps, VaultOps, event};
use crate::controller::failpoint;
use crate::controller::vouch::{
    Act, Claim, Vouched, revoke_counted, revoke_named, revoke_vouched, revoke_wrap_vouched,
    vouch_token,
};
use crate::core::plan::{
    Action, Issue, Outcome, Revoke, Settings, capped_at, expiry_outcome, renewal_increment,
};
use crate::crd::AgentSecretBinding;
use crate::metrics::{Metrics, RenewalResult, TokenKind};
use crate::record::seal::Authenticity;
use crate::record::writes::{self, WriteError};
use crate::record::{Phase, SecretsByName, WrapState};
use crate::vault::{Renewed, Revoked, TokenRequest, VaultError, WrapInfo};

/// What carrying out a plan met that the binding's status must show.
#[derive(Debug, Default)]
pub struct Executed {
    /// Pod name -> its Secret name, held by a Secret that is not this binding's record.
    pub names_taken: BTreeMap<String, String>,
    /// Vault was unavailable (message without secrets); later actions were not started.
    pub vault_unavailable: Option<String>,
    /// Lookups deferred because the global lookup budget was spent (tried again next round).
    pub lookups_deferred: usize,
    /// The first error that is neither of those (the binding retries with backoff).
    pub error: Option<Error>,
}

/// What one action met, besides success.
#[derive(Debug, PartialEq)]
enum Met {
    /// Nothing to report.
    Nothing,
    /// The pod's Secret name belongs to a Secret that is not ours.
    NameTaken { pod: String, secret: String },
    /// Vault did not answer (or its answer may have been lost).
    VaultUnavailable(String),
    /// The global lookup budget was spent: the lookup waits for the next round.
    LookupDeferred,
}

/// Runs a plan's actions for one binding, the actions of up to `concurrency` records at a
/// time. The actions of one record run in plan order; once Vault is found unavailable no
/// further action starts (every action needs Vault: the binding retries with backoff).
pub async fn run_all<V: VaultOps, R: RecordOps>(
    executor: &Executor<'_, V, R>,
    actions: Vec<Action>,
    concurrency: usize,
) -> Executed {
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let results: Vec<Executed> = stream::iter(by_record(actions))
        .map(|group| async move {
            let mut done = Executed::default();
            for action in group {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match executor.run(action).await {
                    Ok(Met::Nothing) => {}
                    Ok(Met::NameTaken { pod, secret }) => {
                        done.names_taken.insert(pod, secret);
                    }
                    Ok(Met::LookupDeferred) => done.lookups_deferred += 1,
                    Ok(Met::VaultUnavailable(message)) => {
                        done.vault_unavailable = Some(message);
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        done.error.get_or_insert(e);
                    }
                }
            }
            done
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut all = Executed::default();
    for done in results {
        all.names_taken.extend(done.names_taken);
        if let Some(v) = done.vault_unavailable {
            all.vault_unavailable.get_or_insert(v);
        }
        if let Some(e) = done.error {
            all.error.get_or_insert(e);
        }
        all.lookups_deferred += done.lookups_deferred;
    }
    all
}

/// Groups actions by the record they touch, keeping plan order within a group.
fn by_record(actions: Vec<Action>) -> Vec<Vec<Action>> {
    let mut groups: Vec<Vec<Action>> = vec![];
    let mut index: HashMap<String, usize> = HashMap::new();
    for action in actions {
        let record = match &action {
            Action::Issue(issue) => issue.secret.clone(),
            other => match other.record() {
                Some(w) => w.secret.clone(),
                None => {
                    groups.push(vec![action]);
                    continue;
                }
            },
        };
        match index.get(&record) {
            Some(&i) => groups[i].push(action),
            None => {
                index.insert(record, groups.len());
                groups.push(vec![action]);
            }
        }
    }
    groups
}

/// Carries out actions for one binding; shared by the actions running side by side. Vault and
/// the records are reached only through `vault` and `records` (see `controller::effects`).
pub struct Executor<'a, V, R> {
    /// Vault.
    pub vault: &'a V,
    /// The binding's records (writes, the read before a retried mint), Events and the clock.
    pub records: &'a R,
    /// What this process remembers between rounds (lookups, renewals, names found taken).
    pub memory: &'a Memory,
    /// The global budget of Vault lookups and renewals.
    pub lookups: &'a LookupBudget,
    /// Metrics.
    pub metrics: &'a Metrics,
    /// The binding.
    pub binding: &'a AgentSecretBinding,
    /// Its Secrets by name (to read wrapping tokens for lookups).
    pub secrets: &'a SecretsByName,
    /// Planner knobs.
    pub settings: &'a Settings,
    /// How long past its wrap's TTL a token nobody took lives (`tokenGrace`).
    pub token_grace: std::time::Duration,
    /// Whether routine per-pod Events are published (`routineEvents`).
    pub routine_events: bool,
}

impl<V: VaultOps, R: RecordOps> Executor<'_, V, R> {
    /// Runs one action. An action on a record that is not authentic is refused (the planner
    /// never makes one).
    async fn run(&self, action: Action) -> Result<Met, Error> {
        if let Some(w) = action.record()
            && w.authenticity != Authenticity::Authentic
        {
            warn!(namespace = %self.ns(), secret = %w.secret, "refusing a step on a record that is not authentic");
            return Ok(Met::Nothing);
        }
        match action {
            Action::Issue(issue) => self.issue(issue).await,
            Action::Lookup { wrap, if_consumed } => self.lookup(wrap, if_consumed).await,
            Action::ProbeExpiry { wrap } => self.probe_expiry(wrap).await,
            Action::Settle {
                wrap,
                outcome,
                start,
            } => {
                let revoke = outcome.revoke(wrap.phase);
                self.settle(&wrap, outcome, revoke, start).await
            }
            Action::Renew { wrap } => self.renew(wrap).await,
            Action::Cleanup { wrap, revoke } => self.cleanup(wrap, revoke).await,
        }
    }

    fn ns(&self) -> String {
        self.binding.namespace().unwrap_or_default()
    }

    async fn issue(&self, issue: Issue) -> Result<Met, Error> {
        let binding = self.binding.name_any();
        // A new start's previous token goes first: if Vault cannot revoke it now, nothing is
        // minted, and the record still names it for the next round or the pod's cleanup.
        if let Some(previous) = &issue.revoke_previous
            && self.settings.revoke_on_pod_deletion
            && let Err(e) = revoke_vouched(
                self.vault,
                self.metrics,
                self.claim(),
                &issue.pod_uid,
                previous,
            )
            .await
        {
            return vault_failed(e);
        }
        if issue.replaces.is_none()
            && let Some(met) = self.still_taken(&issue).await?
        {
            return Ok(met);
        }
        let request = crate::core::spec::token_request(
            self.binding,
            &issue.pod,
            &issue.pod_uid,
            self.settings.wrap_ttl,
            self.token_grace,
        );
        let key = self.binding.spec.secret_key.as_str();
        let minted = mint_and_record(
            self.vault,
            self.records,
            self.metrics,
            &issue,
            &request,
            Some(key),
        )
        .await;
        let (wrap, expires_at) = match minted {
            Minted::Delivered { wrap, expires_at } => (wrap, expires_at),
            Minted::VaultFailed(e) if e.may_have_been_processed() => {
                // Nothing names what that request may have made: nobody can hold its wrap, it
                // expires by itself and its token at wrapTTL + tokenGrace.
                warn!(namespace = %self.ns(), binding = %binding, pod = %issue.pod, error = %e,
                    "mint answer lost; whatever it made expires unheld");
                return Ok(Met::VaultUnavailable(e.to_string()));
            }
            Minted::VaultFailed(e) => return self.mint_failed(&issue, e).await,
            Minted::NotRecorded(WriteError::Taken) => return Ok(self.name_taken(&issue)),
            Minted::NotRecorded(WriteError::Lost) => return Ok(Met::Nothing),
            Minted::NotRecorded(WriteError::Kube(e)) => return Err(e.into()),
        };
        info!(namespace = %self.ns(), binding = %binding, pod = %issue.pod, start = issue.start,
            wrap_accessor = %wrap.accessor, accessor = %wrap.wrapped_accessor, "wrap issued");
        if self.routine_events {
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
        }
        Ok(Met::Nothing)
    }

    /// Vault refused the mint (or is down): the record says so (one write, no token) and the
    /// mint is retried after a pause.
    async fn mint_failed(&self, issue: &Issue, e: VaultError) -> Result<Met, Error> {
        warn!(namespace = %self.ns(), binding = %self.binding.name_any(), pod = %issue.pod, error = %e, "mint failed");
        let changes = writes::issue_changes(
            issue,
            writes::failure_changes(
                &e.to_string(),
                self.records.now(),
                writes::failures_after(issue),
            ),
        );
        match self.records.write_issue(issue, &changes, None).await {
            Err(WriteError::Taken) => return Ok(self.name_taken(issue)),
            Err(WriteError::Kube(k)) => return Err(k.into()),
            _ => {}
        }
        self.metrics.transition(Phase::Failed.as_str());
        self.event(
            EventType::Warning,
            "VaultError",
            "Issue",
            &format!("minting for pod {} failed: {e}", issue.pod),
        )
        .await;
        if e.is_unavailable() {
            return Ok(Met::VaultUnavailable(e.to_string()));
        }
        Ok(Met::Nothing)
    }

    /// For a name a Secret not of this binding was found holding before: reads it first, so a
    /// squatted name costs a read per retry, not a mint. `None`: free now (or ours), go on.
    async fn still_taken(&self, issue: &Issue) -> Result<Option<Met>, Error> {
        let k = key(&self.ns(), &issue.secret);
        if !self
            .memory
            .names_taken
            .lock()
            .expect("taken lock")
            .contains_key(&k)
        {
            return Ok(None);
        }
        let binding = self.binding.name_any();
        if let Some(label) = self.records.holder(&issue.secret).await?
            && label.as_deref() != Some(binding.as_str())
        {
            return Ok(Some(self.name_taken(issue)));
        }
        self.memory
            .names_taken
            .lock()
            .expect("taken lock")
            .remove(&k);
        Ok(None)
    }

    /// Remembers that a Secret not of this binding holds the issue's Secret name (its pod is
    /// not minted for again for a while, `Memory::names_taken`, then only once the name reads
    /// as free) and says so.
    fn name_taken(&self, issue: &Issue) -> Met {
        self.memory
            .names_taken
            .lock()
            .expect("taken lock")
            .insert(key(&self.ns(), &issue.secret), self.records.now());
        Met::NameTaken {
            pod: issue.pod.clone(),
            secret: issue.secret.clone(),
        }
    }

    /// Remembers when the record's token was last renewed (`Timestamp::MAX`: never again).
    fn remember_renewal(&self, wrap: &WrapState, accessor: &str, at: Timestamp) {
        let done = LastDone {
            accessor: accessor.to_string(),
            at,
        };
        self.memory
            .last_renewal
            .lock()
            .expect("renewal lock")
            .insert(key(&self.ns(), &wrap.secret), done);
    }

    /// The binding's token role's explicit max TTL, read at most every `ROLE_REREAD`.
    async fn role_explicit_max(&self) -> Result<Option<u64>, VaultError> {
        let role = &self.binding.spec.vault.token_role;
        let now = self.records.now();
        let known = self
            .memory
            .role_max
            .lock()
            .expect("role lock")
            .get(role)
            .copied();
        if let Some((max, read_at)) = known
            && now.duration_since(read_at) < ROLE_REREAD
        {
            return Ok(max);
        }
        let max = self.vault.role_explicit_max(role).await?;
        let mut roles = self.memory.role_max.lock().expect("role lock");
        roles.insert(role.clone(), (max, now));
        Ok(max)
    }

    /// Vault's word on the record's held token, asked once per accessor (a token's metadata
    /// never changes) and remembered while the record lives.
    async fn vouch_held(&self, wrap: &WrapState, accessor: &str) -> Result<Vouched, VaultError> {
        let k = key(&self.ns(), &wrap.secret);
        let known = self
            .memory
            .vouched
            .lock()
            .expect("vouched lock")
            .get(&k)
            .cloned();
        if let Some(v) = known.filter(|v| v.accessor == accessor) {
            return Ok(Vouched::Minted {
                hard_end: v.hard_end,
            });
        }
        let role_max = self.role_explicit_max().await?;
        let vouched = vouch_token(
            self.vault,
            self.metrics,
            self.claim(),
            &wrap.pod_uid,
            accessor,
            Act::Renew,
            role_max,
        )
        .await?;
        if let Vouched::Minted { hard_end } = vouched {
            let v = VouchedToken {
                accessor: accessor.to_string(),
                hard_end,
            };
            self.memory
                .vouched
                .lock()
                .expect("vouched lock")
                .insert(k, v);
        }
        Ok(vouched)
    }

    /// Extends the life of the token the pod's agent holds by the renewal window, never past
    /// its tokenTTL nor its own explicit max TTL, and only once Vault has vouched that it was
    /// minted for this record.
    async fn renew(&self, wrap: WrapState) -> Result<Met, Error> {
        let Some(accessor) = wrap.accessor.clone() else {
            return Ok(Met::Nothing);
        };
        let Some(increment) = renewal_increment(
            self.settings.renewal_window,
            self.token_ttl(),
            wrap.issued_at,
            self.records.now(),
        ) else {
            // At its tokenTTL: nothing more to give it (it ends by its own TTL).
            self.remember_renewal(&wrap, &accessor, Timestamp::MAX);
            return Ok(Met::Nothing);
        };
        if !self.lookups.try_take(&self.ns()) {
            self.metrics.lookup_deferred();
            return Ok(Met::LookupDeferred);
        }
        // A token Vault does not know is found gone by the renewal itself (one place says so).
        let hard_end = match self.vouch_held(&wrap, &accessor).await {
            Ok(Vouched::Minted { hard_end }) => hard_end,
            Ok(Vouched::Gone) => None,
            Ok(Vouched::Refused) => {
                self.remember_renewal(&wrap, &accessor, Timestamp::MAX);
                return Ok(Met::Nothing);
            }
            Err(e) => return vault_failed(e),
        };
        let Some(increment) = capped_at(increment, hard_end, self.records.now()) else {
            self.remember_renewal(&wrap, &accessor, Timestamp::MAX);
            return Ok(Met::Nothing);
        };
        let renewed = match self
            .vault
            .renew_accessor(&accessor, increment.as_secs().max(1))
            .await
        {
            Ok(r) => r,
            Err(e) => return vault_failed(e),
        };
        // A token Vault no longer knows is gone for good: said once, never renewed again.
        let renewed_at = match renewed {
            Renewed::For(_) => self.records.now(),
            Renewed::NotFound => Timestamp::MAX,
        };
        self.remember_renewal(&wrap, &accessor, renewed_at);
        match renewed {
            Renewed::For(ttl) => {
                self.metrics.renewal(RenewalResult::Renewed);
                tracing::debug!(namespace = %self.ns(), pod = %wrap.pod, accessor = %accessor, ttl, "token renewed");
            }
            Renewed::NotFound => {
                self.metrics.renewal(RenewalResult::Gone);
                warn!(namespace = %self.ns(), pod = %wrap.pod, accessor = %accessor,
                    "the token the pod's agent holds no longer exists in Vault");
                let note = format!(
                    "the token of pod {} (accessor {accessor}) no longer exists in Vault: it expired while nothing renewed it (was cubbyhole down longer than renewalWindow?) or was revoked; restart the pod's agent for a fresh wrap",
                    wrap.pod
                );
                self.event_on_pod(
                    &wrap.pod,
                    &wrap.pod_uid,
                    EventType::Warning,
                    "TokenGone",
                    "Renew",
                    &note,
                )
                .await;
            }
        }
        Ok(Met::Nothing)
    }

    async fn lookup(&self, wrap: WrapState, if_consumed: Outcome) -> Result<Met, Error> {
        let Some(token) = self
            .secrets
            .get(&wrap.secret)
            .and_then(|s| writes::wrapping_token(s, &self.binding.spec.secret_key))
        else {
            return Ok(Met::Nothing);
        };
        if !self.lookups.try_take(&self.ns()) {
            self.metrics.lookup_deferred();
            return Ok(Met::LookupDeferred);
        }
        match self.vault.wrap_is_live(&token).await {
            Ok(true) => {
                let done = LastDone {
                    accessor: wrap.wrap_accessor.clone().unwrap_or_default(),
                    at: self.records.now(),
                };
                self.memory
                    .last_lookup
                    .lock()
                    .expect("lookup lock")
                    .insert(key(&self.ns(), &wrap.secret), done);
                Ok(Met::Nothing)
            }
            Ok(false) => {
                let revoke = if_consumed.revoke(wrap.phase);
                self.settle(&wrap, if_consumed, revoke, wrap.start).await
            }
            Err(e) => vault_failed(e),
        }
    }

    async fn probe_expiry(&self, wrap: WrapState) -> Result<Met, Error> {
        let Some(wrap_accessor) = wrap.wrap_accessor.clone() else {
            return Ok(Met::Nothing);
        };
        match revoke_wrap_vouched(self.vault, self.metrics, self.claim(), &wrap_accessor).await {
            Ok(revoked) => {
                let outcome = expiry_outcome(revoked, wrap.expires_at, self.records.now());
                // The probe itself revoked the wrap.
                let revoke = outcome.revoke(wrap.phase);
                self.settle(&wrap, outcome, revoke, wrap.start).await
            }
            Err(e) => vault_failed(e),
        }
    }

    async fn settle(
        &self,
        wrap: &WrapState,
        outcome: Outcome,
        revoke: Revoke,
        start: u32,
    ) -> Result<Met, Error> {
        if let Err(e) = self.revoke_record(wrap, revoke).await {
            return vault_failed(e);
        }
        let phase = outcome.phase();
        let message = outcome.message();
        let verified = outcome.verified();
        match self
            .records
            .settle(wrap, phase, verified, message, start)
            .await
        {
            Ok(()) => {}
            Err(WriteError::Kube(e)) => return Err(e.into()),
            Err(_) => return Ok(Met::Nothing),
        }
        self.metrics.transition(phase.as_str());
        let accessor = wrap.accessor.as_deref().unwrap_or("-");
        info!(namespace = %self.ns(), binding = %self.binding.name_any(), pod = %wrap.pod,
            phase = phase.as_str(), verified = outcome.verified(), accessor, "wrap settled");
        let note = format!("pod {} (token accessor {accessor}): {message}", wrap.pod);
        let (kind, reason) = match phase {
            Phase::Tampered => (EventType::Warning, "WrapTampered"),
            Phase::Expired => (EventType::Warning, "WrapExpired"),
            Phase::Failed => (EventType::Warning, "WrapRefused"),
            Phase::Revoked => (EventType::Normal, "WrapRevoked"),
            _ => (EventType::Normal, "WrapUnwrapped"),
        };
        // Warnings reach the binding too (that is where people look for trouble); routine
        // settlements only the pod, and only when asked for (`routineEvents`).
        if kind == EventType::Warning {
            self.event(kind, reason, "Track", &note).await;
        }
        if kind == EventType::Warning || self.routine_events {
            self.event_on_pod(&wrap.pod, &wrap.pod_uid, kind, reason, "Track", &note)
                .await;
        }
        Ok(Met::Nothing)
    }

    async fn cleanup(&self, wrap: WrapState, revoke: Revoke) -> Result<Met, Error> {
        if let Err(e) = self.revoke_at_cleanup(&wrap, revoke).await {
            return vault_failed(e);
        }
        if let Err(e) = self.release_kept_token(&wrap, revoke).await {
            return vault_failed(e);
        }
        if !self.records.remove(&wrap).await? {
            // Changed since it was read (e.g. a new start took it over): the next round decides.
            return Ok(Met::Nothing);
        }
        let k = key(&self.ns(), &wrap.secret);
        self.memory.forget(&k);
        if revoke != Revoke::Nothing {
            self.metrics.transition(Phase::Revoked.as_str());
        }
        info!(namespace = %self.ns(), binding = %self.binding.name_any(), pod = %wrap.pod,
            revoke_wrap = revoke.wrap(), revoke_token = revoke.token(), "pod gone: record removed");
        let note = format!(
            "pod {} is gone: removed its Secret{}",
            wrap.pod,
            if revoke.token() {
                " and revoked its token"
            } else {
                ""
            }
        );
        if self.routine_events {
            self.event(EventType::Normal, "WrapRevoked", "Cleanup", &note)
                .await;
        }
        Ok(Met::Nothing)
    }

    /// Revokes what a cleanup asks. A binding that keeps its agents' tokens keeps one whose
    /// wrap is already gone even when the record reads `Issued`: the read may be stale (from
    /// before the write that said the agent took it), and a token nobody took ends by itself
    /// at wrapTTL + tokenGrace.
    async fn revoke_at_cleanup(&self, wrap: &WrapState, revoke: Revoke) -> Result<(), VaultError> {
        let keeps = !self.settings.revoke_on_pod_deletion;
        let (Revoke::WrapAndToken, true, Some(wrap_accessor)) =
            (revoke, keeps, &wrap.wrap_accessor)
        else {
            return self.revoke_record(wrap, revoke).await;
        };
        match revoke_wrap_vouched(self.vault, self.metrics, self.claim(), wrap_accessor).await? {
            Revoked::Existed => self.revoke_record(wrap, Revoke::Token).await,
            Revoked::NotFound => Ok(()),
        }
    }

    /// Revokes what `revoke` asks of the accessors the record names.
    async fn revoke_record(&self, wrap: &WrapState, revoke: Revoke) -> Result<(), VaultError> {
        revoke_named(self.vault, self.metrics, self.claim(), wrap, revoke).await
    }

    /// What Vault's answers about this binding's accessors must match.
    fn claim(&self) -> Claim<'_> {
        Claim::of(self.binding)
    }

    /// A token kept past its pod (`revokeOnPodDeletion: false`) is renewed once to the
    /// binding's tokenTTL (Vault caps it at the token's explicit max): from then on nothing
    /// renews it, and it ends by its own TTL.
    async fn release_kept_token(&self, wrap: &WrapState, revoke: Revoke) -> Result<(), VaultError> {
        let Some(accessor) = wrap.accessor.as_deref() else {
            return Ok(());
        };
        if revoke.token() || wrap.phase != Phase::Unwrapped || self.settings.revoke_on_pod_deletion
        {
            return Ok(());
        }
        let Some(rest) = renewal_increment(
            self.token_ttl().unwrap_or(KEPT_TOKEN_LIFE),
            self.token_ttl(),
            wrap.issued_at,
            self.records.now(),
        ) else {
            return Ok(());
        };
        let hard_end = match self.vouch_held(wrap, accessor).await? {
            Vouched::Minted { hard_end } => hard_end,
            Vouched::Gone | Vouched::Refused => return Ok(()),
        };
        let Some(rest) = capped_at(rest, hard_end, self.records.now()) else {
            return Ok(());
        };
        self.vault
            .renew_accessor(accessor, rest.as_secs().max(1))
            .await?;
        Ok(())
    }

    /// The binding's tokenTTL, if it sets one.
    fn token_ttl(&self) -> Option<std::time::Duration> {
        let ttl = self.binding.spec.vault.token_ttl.as_deref()?;
        humantime::parse_duration(ttl).ok()
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: &str) {
        let reference = self.binding.object_ref(&());
        self.records
            .publish(reference, event(type_, reason, action, note), true)
            .await;
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
        // Routine Events never repeat: sent once, not kept.
        let repeats = type_ == EventType::Warning;
        self.records
            .publish(reference, event(type_, reason, action, note), repeats)
            .await;
    }
}

/// Vault being unavailable (or its answer lost) is reported, not returned as an error.
fn vault_failed(e: VaultError) -> Result<Met, Error> {
    if e.is_unavailable() || e.may_have_been_processed() {
        Ok(Met::VaultUnavailable(e.to_string()))
    } else {
        Err(e.into())
    }
}

/// How long a token kept past its pod lives when its binding sets no tokenTTL (Vault caps it
/// at the role's and the system's max TTL).
const KEPT_TOKEN_LIFE: std::time::Duration = std::time::Duration::from_secs(32 * 24 * 3600);

/// How long a token role's explicit max is trusted before it is read again.
const ROLE_REREAD: SignedDuration = SignedDuration::from_secs(300);

/// What one mint came to.
pub enum Minted {
    /// Vault minted the wrap and its record names it: it can be delivered (it is in the
    /// Secret already, or goes back to the agent that asked).
    Delivered {
        /// What Vault made.
        wrap: WrapInfo,
        /// When the wrap expires (counted from before the request: never later than Vault's).
        expires_at: Timestamp,
    },
    /// Vault did not answer with a wrap; `may_have_been_processed` says whether one may exist.
    VaultFailed(VaultError),
    /// The record write failed or lost: what was minted is already revoked.
    NotRecorded(WriteError),
}

/// The one mint: asks Vault for `request`'s wrap and records it for `issue` (with the wrapping
/// token in the Secret's `secret_key` when the wrap is delivered by Secret); a wrap whose record
/// write fails is revoked at once with its token, as nobody can ever read it. The executor and
/// the request endpoint both mint here.
pub async fn mint_and_record(
    vault: &impl VaultOps,
    records: &impl RecordOps,
    metrics: &Metrics,
    issue: &Issue,
    request: &TokenRequest,
    secret_key: Option<&str>,
) -> Minted {
    // Vault counts the wrap's TTL from its own receipt of the request: start the clock
    // before sending, so our expiry is never later than Vault's.
    let issued_at = records.now();
    let wrap = match vault.create_wrapped_token(request).await {
        Ok(wrap) => wrap,
        Err(e) => return Minted::VaultFailed(e),
    };
    failpoint::hit("after-mint").await;
    let expires_at = issued_at
        .saturating_add(SignedDuration::from_secs(wrap.ttl as i64))
        .unwrap_or(issued_at);
    let ending = writes::deliver_changes(
        &wrap.accessor,
        &wrap.wrapped_accessor,
        issued_at,
        expires_at,
    );
    let changes = writes::issue_changes(issue, ending);
    let data = secret_key.map(|key| (key, &wrap.token));
    if let Err(e) = records.write_issue(issue, &changes, data).await {
        discard_unheld(vault, metrics, &wrap).await;
        return Minted::NotRecorded(e);
    }
    metrics.wrap_issued();
    Minted::Delivered { wrap, expires_at }
}

/// Revokes a wrap this process just minted that nobody can ever read (its record write
/// failed or lost a race), and the token inside it. Best effort: what a failure leaves ends
/// by itself at wrapTTL + tokenGrace.
pub async fn discard_unheld(vault: &impl VaultOps, metrics: &Metrics, wrap: &WrapInfo) {
    revoke_counted(vault, metrics, &wrap.accessor, TokenKind::Wrap)
        .await
        .ok();
    revoke_counted(vault, metrics, &wrap.wrapped_accessor, TokenKind::Token)
        .await
        .ok();
}

/// Publishes an Event; a failure is logged at debug level only (Events are best effort).
pub async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    if let Err(e) = recorder
        .publish(&event(type_, reason, action, note), reference)
        .await
    {
        tracing::debug!(error = %e, "event not published");
    }
}
