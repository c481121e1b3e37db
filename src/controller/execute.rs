//! Carries out the planner's steps for one binding against Vault and the API server, and tells
//! people what happened (logs with accessors only, Events, metrics).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, stream};

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::controller::context::{Context, Error, key};
use crate::core::plan::{Action, Issue, Settings};
use crate::core::status::Problems;
use crate::crd::AgentSecretBinding;
use crate::record::seal::Authenticity;
use crate::record::writes::{self, ClaimError, Records};
use crate::record::{Phase, WrapState};
use crate::vault::{Revoked, TokenRequest, VaultError};

/// Runs a plan's steps for one binding, the steps of up to `concurrency` records at a time.
/// The steps of one record run in plan order; once Vault is found unavailable no further step
/// starts (every step needs Vault: the binding retries with backoff). Problems met are added
/// to `problems`; returns the first error.
#[allow(clippy::too_many_arguments)]
pub async fn run_all(
    ctx: &Context,
    binding: &AgentSecretBinding,
    records: Records<'_>,
    raw: &BTreeMap<String, Secret>,
    settings: &Settings,
    actions: Vec<Action>,
    concurrency: usize,
    problems: &mut Problems,
) -> Option<Error> {
    let mut groups: Vec<Vec<Action>> = vec![];
    let mut by_record: HashMap<String, usize> = HashMap::new();
    for action in actions {
        let record = match &action {
            Action::Issue(issue) => Some(issue.secret.clone()),
            other => other.record().map(|w| w.secret.clone()),
        };
        match record {
            Some(r) => match by_record.get(&r) {
                Some(&i) => groups[i].push(action),
                None => {
                    by_record.insert(r, groups.len());
                    groups.push(vec![action]);
                }
            },
            None => groups.push(vec![action]),
        }
    }
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let outcomes: Vec<(Option<Error>, Problems)> = stream::iter(groups)
        .map(|group| async move {
            let mut found = Problems::default();
            let mut first = None;
            let mut step = Step {
                ctx,
                binding,
                records,
                raw,
                settings,
                problems: &mut found,
            };
            for action in group {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(e) = step.run(action).await {
                    first.get_or_insert(e);
                }
                if step.problems.vault_unavailable.is_some() {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            (first, found)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut first_error = None;
    for (error, found) in outcomes {
        if let Some(e) = error {
            first_error.get_or_insert(e);
        }
        problems.names_taken.extend(found.names_taken);
        if let Some(v) = found.vault_unavailable {
            problems.vault_unavailable.get_or_insert(v);
        }
    }
    first_error
}

/// Runs plan steps for one binding.
pub struct Step<'a> {
    /// Shared state.
    pub ctx: &'a Context,
    /// The binding.
    pub binding: &'a AgentSecretBinding,
    /// Its records: Secrets in its namespace, and how writes are signed.
    pub records: Records<'a>,
    /// Its Secrets by name (to read wrapping tokens for lookups).
    pub raw: &'a BTreeMap<String, Secret>,
    /// Planner knobs.
    pub settings: &'a Settings,
    /// Problems met so far (for the status).
    pub problems: &'a mut Problems,
}

/// What revoking a wrap by accessor shortly before its expiry says about it: the phase, whether
/// the inner token must be revoked, and the record's message. 204 (`Existed`): nobody unwrapped
/// it, it is Expired and its token goes too. "No token" (`NotFound`): it was consumed, unless its
/// expiry has already passed, when consumption cannot be told from expiry and the token is
/// revoked to be safe.
fn probe_verdict(
    revoked: Revoked,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> (Phase, bool, &'static str) {
    match revoked {
        Revoked::Existed => (
            Phase::Expired,
            true,
            "expired unconsumed: the pod's agent did not unwrap in time; its token was revoked",
        ),
        Revoked::NotFound if expires_at.is_some_and(|e| now >= e) => (
            Phase::Expired,
            true,
            "the wrap's expiry passed before it could be checked; its token was revoked to be safe",
        ),
        Revoked::NotFound => (
            Phase::Unwrapped,
            false,
            "consumed (seen at the expiry check)",
        ),
    }
}

impl Step<'_> {
    /// Runs one step; Vault being unavailable is recorded in `problems`, not returned. A step
    /// on a record that is not authentic is refused (the planner never makes one).
    pub async fn run(&mut self, action: Action) -> Result<(), Error> {
        if let Some(w) = action.record()
            && w.authenticity != Authenticity::Authentic
        {
            warn!(namespace = %self.ns(), secret = %w.secret, "refusing a step on a record that is not authentic");
            return Ok(());
        }
        match action {
            Action::Issue(issue) => self.issue(issue).await,
            Action::Lookup { wrap, if_invalid } => self.lookup(wrap, if_invalid).await,
            Action::ProbeExpiry { wrap } => self.probe_expiry(wrap).await,
            Action::ConfirmVault { wrap } => self.confirm_vault(wrap).await,
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
        // A new start's previous token goes first: if Vault cannot revoke it now, nothing is
        // claimed, and the record still names it for the next round or the pod's cleanup.
        if let Some(previous) = &issue.revoke_previous
            && self.settings.revoke_on_pod_deletion
            && let Err(e) = self.revoke(previous, "token").await
        {
            return self.vault_failed(e);
        }
        let now = Timestamp::now();
        let claimed = match writes::claim(&self.records, &issue, now).await {
            Ok(c) => c,
            Err(ClaimError::Taken) => {
                self.problems
                    .names_taken
                    .insert(issue.pod.clone(), issue.secret.clone());
                return Ok(());
            }
            Err(ClaimError::Lost) => return Ok(()),
            Err(ClaimError::Kube(e)) => return Err(e.into()),
        };
        crate::controller::failpoint::hit("after-claim");
        let request = self.token_request(&issue);
        // Vault counts the wrap's TTL from its own receipt of the request: start the clock
        // before sending, so our expiry is never later than Vault's.
        let issued_at = Timestamp::now();
        match self.ctx.vault.create_wrapped_token(&request).await {
            Ok(wrap) => {
                crate::controller::failpoint::hit("after-mint");
                let expires_at = issued_at
                    .saturating_add(SignedDuration::from_secs(wrap.ttl as i64))
                    .unwrap_or(issued_at);
                let delivered = writes::deliver(
                    &self.records,
                    &claimed,
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
                writes::record_failure(&self.records, &claimed, &e.to_string(), Timestamp::now())
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
            .and_then(|s| writes::wrapping_token(s, &self.binding.spec.secret_key))
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

    /// After a lost mint answer: once Vault answers again, record when (the wait starts then).
    async fn confirm_vault(&mut self, wrap: WrapState) -> Result<(), Error> {
        if let Err(e) = self.ctx.vault.health().await {
            return self.vault_failed(e);
        }
        match writes::mark_vault_seen(&self.records, &wrap, Timestamp::now()).await {
            Err(ClaimError::Kube(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn probe_expiry(&mut self, wrap: WrapState) -> Result<(), Error> {
        let Some(wrap_accessor) = wrap.wrap_accessor.clone() else {
            return Ok(());
        };
        match self.revoke(&wrap_accessor, "wrap").await {
            Ok(revoked) => {
                let (phase, revoke_token, message) =
                    probe_verdict(revoked, wrap.expires_at, Timestamp::now());
                self.settle(&wrap, phase, false, false, revoke_token, message)
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
        match writes::settle(&self.records, wrap, phase, verified, message).await {
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
        writes::remove(self.records.api, &wrap).await?;
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

/// Publishes an Event; a failure is logged at debug level only (Events are best effort).
pub async fn publish(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn expiry_probe_revoking_a_live_wrap_means_expired_and_revokes_its_token() {
        let (phase, revoke_token, message) = probe_verdict(Revoked::Existed, Some(t(60)), t(55));
        assert_eq!((phase, revoke_token), (Phase::Expired, true));
        assert!(message.contains("did not unwrap"), "{message}");
    }

    #[test]
    fn expiry_probe_finding_no_token_before_expiry_means_consumed() {
        let (phase, revoke_token, message) = probe_verdict(Revoked::NotFound, Some(t(60)), t(55));
        assert_eq!((phase, revoke_token), (Phase::Unwrapped, false));
        assert!(message.contains("consumed"), "{message}");
        // Without a known expiry the answer is taken at its word too.
        assert_eq!(
            probe_verdict(Revoked::NotFound, None, t(55)).0,
            Phase::Unwrapped
        );
    }

    #[test]
    fn expiry_probe_finding_no_token_after_expiry_revokes_to_be_safe() {
        for now in [60, 61] {
            let (phase, revoke_token, _) = probe_verdict(Revoked::NotFound, Some(t(60)), t(now));
            assert_eq!((phase, revoke_token), (Phase::Expired, true), "at {now}");
        }
    }
}
