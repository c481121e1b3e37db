//! The pure decision core: given a binding's pods, its per-pod records and the clock, decide
//! what to mint, look up, probe, settle and clean up. No I/O; every rule is unit-tested here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::agent::receipt::result;
use crate::core::pod::{
    ObservedReceipt, PodView, UNWRAP_CONTAINER, is_valid_secret_name, secret_name,
};
use crate::record::{Phase, WrapState};
use crate::vault::Revoked;

/// How many times one start's wrap is replaced after expiring before the pod took it.
pub const MAX_REPLACEMENTS: u32 = 3;

/// The pause after the `n`th expiry before the next replacement: 5 s, 20 s, 80 s.
pub fn replacement_pause(n: u32) -> Duration {
    Duration::from_secs(5 << (2 * n.min(4)))
}

/// How often an outstanding wrap the agent reported invalid is looked up again.
pub const SUSPECT_RECHECK: Duration = Duration::from_secs(1);
/// The pause before retrying a mint that failed `failures` times in a row: 5 s, doubling with
/// each failure, at most 5 minutes.
pub fn failed_mint_pause(failures: u32) -> Duration {
    Duration::from_secs(5 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(300))
}

/// Per-binding knobs the planner needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Binding name.
    pub binding: String,
    /// Wrap TTL.
    pub wrap_ttl: Duration,
    /// Lookup cadence per outstanding wrap.
    pub lookup_period: Duration,
    /// Container whose restarts are new starts.
    pub agent_container: Option<String>,
    /// Revoke a pod's token when the pod goes.
    pub revoke_on_pod_deletion: bool,
    /// How long a held token lives past each renewal; it is renewed every half of it.
    pub renewal_window: Duration,
    /// Request delivery: the pods' agents ask the endpoint for their wraps, which writes each
    /// start's record; the planner never mints, it only follows and ends what was asked for.
    pub on_request: bool,
}

impl Settings {
    /// How long before expiry the wrap is revoked to learn whether it was consumed:
    /// a sixth of the TTL, between 1 and 5 seconds.
    pub fn expiry_margin(&self) -> Duration {
        (self.wrap_ttl / 6).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }
}

/// Mint a wrap for a pod start.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Secret name.
    pub secret: String,
    /// Start number.
    pub start: u32,
    /// The record this replaces (a restart, a lost or failed mint); `None` creates the Secret.
    pub replaces: Option<WrapState>,
    /// Previous start's live token to revoke (agent restart).
    pub revoke_previous: Option<String>,
    /// Receipts finished at or before this belong to earlier starts.
    pub receipts_after: Option<Timestamp>,
    /// How many times this start's wrap has been replaced, this mint included (0: not a
    /// replacement).
    pub replaced: u32,
}

/// One step for the I/O layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Claim, mint, deliver.
    Issue(Issue),
    /// `sys/wrapping/lookup`; if the wrap is no longer valid, settle as `if_consumed`.
    Lookup {
        /// The record.
        wrap: WrapState,
        /// What a consumed wrap means: a plain consumption, or tampering when the agent
        /// reported the wrap invalid.
        if_consumed: Outcome,
    },
    /// Shortly before expiry: revoke the wrap; Vault's answer decides the outcome
    /// ([`expiry_outcome`]).
    ProbeExpiry {
        /// The record.
        wrap: WrapState,
    },
    /// Record how the wrap ended, remove the wrapping token from the Secret, revoke what the
    /// outcome asks ([`Outcome::revoke`]).
    Settle {
        /// The record.
        wrap: WrapState,
        /// How it ended.
        outcome: Outcome,
        /// The start the record belongs to from now on: the agent instance that took the
        /// wrap. An agent that restarted before it unwrapped is still this start, so the token
        /// it holds is never revoked as the previous start's.
        start: u32,
    },
    /// The pod's agent holds the token and the pod lives: extend the token's life by the
    /// renewal window (`auth/token/renew-accessor`), so Vault ends it within the window once
    /// nobody renews it.
    Renew {
        /// The record.
        wrap: WrapState,
    },
    /// The pod is gone: revoke as asked and delete the Secret.
    Cleanup {
        /// The record.
        wrap: WrapState,
        /// What to revoke of what the record names.
        revoke: Revoke,
    },
}

/// What to revoke of the accessors a record names (a missing accessor is skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoke {
    /// Nothing: the token stays alive (consumed, and kept by `revokeOnPodDeletion: false`).
    Nothing,
    /// The inner token only (the wrap is consumed or already gone).
    Token,
    /// The wrapping token and the inner token.
    WrapAndToken,
}

impl Revoke {
    /// Whether the wrapping token is revoked.
    pub fn wrap(self) -> bool {
        self == Revoke::WrapAndToken
    }

    /// Whether the inner token is revoked.
    pub fn token(self) -> bool {
        self != Revoke::Nothing
    }
}

/// How a delivered wrap ends: each variant is one rule of the planner (or of the expiry probe)
/// and fixes the phase recorded, whether the receipt was verified, what is revoked and the
/// record's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The agent's receipt names this wrap's token.
    UnwrappedByAgent,
    /// A lookup found the wrap consumed and no receipt says otherwise (e.g. `vault unwrap`).
    ConsumedSeenByLookup,
    /// The expiry probe found the wrap already consumed.
    ConsumedSeenAtExpiry,
    /// The agent unwrapped a token that is not the one minted for this start.
    ForeignTokenUnwrapped,
    /// The wrap was consumed, and the agent says it found it invalid: someone else took it.
    ConsumedByAnother,
    /// Nobody unwrapped it before the expiry probe revoked it.
    ExpiredUnconsumed,
    /// The expiry passed before the probe could tell consumption from expiry.
    ExpiryPassedUnchecked,
    /// The agent refused the wrap: its creation path was not the expected one.
    RefusedByAgent,
    /// The agent unwrapped the token but could not store it.
    AgentCouldNotStore,
}

impl Outcome {
    /// The phase recorded.
    pub fn phase(self) -> Phase {
        match self {
            Outcome::UnwrappedByAgent
            | Outcome::ConsumedSeenByLookup
            | Outcome::ConsumedSeenAtExpiry => Phase::Unwrapped,
            Outcome::ForeignTokenUnwrapped | Outcome::ConsumedByAnother => Phase::Tampered,
            Outcome::ExpiredUnconsumed | Outcome::ExpiryPassedUnchecked => Phase::Expired,
            Outcome::RefusedByAgent => Phase::Failed,
            Outcome::AgentCouldNotStore => Phase::Revoked,
        }
    }

    /// Whether the agent's receipt proved the unwrap.
    pub fn verified(self) -> bool {
        self == Outcome::UnwrappedByAgent
    }

    /// What to revoke when a record in phase `from` ends this way. A consumed token stays
    /// with whoever holds it only when the agent holds it; a wrap that may still be live
    /// (the record is `Issued` and nobody proved it consumed) goes with its token.
    pub fn revoke(self, from: Phase) -> Revoke {
        let wrap_may_be_live = matches!(
            self,
            Outcome::ForeignTokenUnwrapped | Outcome::RefusedByAgent | Outcome::AgentCouldNotStore
        );
        match self {
            Outcome::UnwrappedByAgent
            | Outcome::ConsumedSeenByLookup
            | Outcome::ConsumedSeenAtExpiry => Revoke::Nothing,
            _ if wrap_may_be_live && from == Phase::Issued => Revoke::WrapAndToken,
            _ => Revoke::Token,
        }
    }

    /// The record's message: what happened, for a person.
    pub fn message(self) -> &'static str {
        match self {
            Outcome::UnwrappedByAgent => "unwrapped by the pod's agent (receipt verified)",
            Outcome::ConsumedSeenByLookup => "consumed (seen by lookup)",
            Outcome::ConsumedSeenAtExpiry => "consumed (seen at the expiry check)",
            Outcome::ForeignTokenUnwrapped => {
                "the agent unwrapped a token that is not the one minted for this pod start"
            }
            Outcome::ConsumedByAnother => {
                "the wrap was consumed by someone other than the pod's agent"
            }
            Outcome::ExpiredUnconsumed => {
                "expired unconsumed: the pod's agent did not unwrap in time; its token was revoked"
            }
            Outcome::ExpiryPassedUnchecked => {
                "the wrap's expiry passed before it could be checked; its token was revoked to be safe"
            }
            Outcome::RefusedByAgent => {
                "the agent refused the wrap: unexpected creation path (check --expect-path, or the Secret was altered)"
            }
            Outcome::AgentCouldNotStore => {
                "the agent unwrapped the token but could not store it; token revoked"
            }
        }
    }
}

/// What revoking a wrap by accessor shortly before its expiry says about it. Revoked
/// (`Existed`): nobody unwrapped it, it expired unconsumed. No such wrap (`NotFound`): it was
/// consumed, unless its expiry has already passed, when consumption cannot be told from expiry
/// and the token is revoked to be safe.
pub fn expiry_outcome(revoked: Revoked, expires_at: Option<Timestamp>, now: Timestamp) -> Outcome {
    match revoked {
        Revoked::Existed => Outcome::ExpiredUnconsumed,
        Revoked::NotFound if expires_at.is_some_and(|e| now >= e) => Outcome::ExpiryPassedUnchecked,
        Revoked::NotFound => Outcome::ConsumedSeenAtExpiry,
    }
}

impl Action {
    /// The existing record this step acts on, if any.
    pub fn record(&self) -> Option<&WrapState> {
        match self {
            Action::Issue(i) => i.replaces.as_ref(),
            Action::Lookup { wrap, .. }
            | Action::ProbeExpiry { wrap }
            | Action::Settle { wrap, .. }
            | Action::Renew { wrap }
            | Action::Cleanup { wrap, .. } => Some(wrap),
        }
    }
}

/// What the I/O layer should do now, and when to look again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Steps, cleanups first.
    pub actions: Vec<Action>,
    /// Earliest time something other than a renewal becomes due.
    pub wake_at: Option<Timestamp>,
    /// Earliest time a held token's renewal becomes due (kept apart: renewals recur for as
    /// long as pods live, so they alone never mean there is work left to settle).
    pub renew_at: Option<Timestamp>,
    /// Pod name -> the Secret name it asks for, which is not a valid name (nothing is minted).
    pub invalid_names: BTreeMap<String, String>,
    /// Pod name -> its Secret name, held by a record that is not ours (left untouched).
    pub names_taken: BTreeMap<String, String>,
}

impl Plan {
    fn wake(&mut self, at: Timestamp) {
        self.wake_at = earliest(self.wake_at, Some(at));
    }

    fn renew(&mut self, at: Timestamp) {
        self.renew_at = earliest(self.renew_at, Some(at));
    }

    /// When the binding must be looked at again: the earlier of the two.
    pub fn next_round(&self) -> Option<Timestamp> {
        earliest(self.wake_at, self.renew_at)
    }
}

/// The earlier of two times, either of which may be unknown.
pub fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Everything the planner reads.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// Knobs.
    pub settings: &'a Settings,
    /// Pods the binding selects.
    pub pods: &'a [PodView],
    /// Pod name -> other bindings that also select it. Such a pod gets no new mint (no first
    /// wrap, no retry, no wrap for a new start) while the conflict lasts; a wrap it already
    /// holds is still tracked, settled and cleaned up, never revoked for the conflict alone.
    pub conflicts: &'a BTreeMap<String, Vec<String>>,
    /// The binding's authentic per-pod records (the only ones acted on).
    pub wraps: &'a [WrapState],
    /// Secret names of this binding's other records (forged, or unsigned and not adopted):
    /// never touched; a pod whose Secret name is one of them is reported as taken.
    pub untrusted: &'a BTreeSet<String>,
    /// Secret name -> last lookup time (in memory; a restart only causes early lookups).
    pub last_lookup: &'a HashMap<String, Timestamp>,
    /// Secret name -> last renewal of its token (in memory; a restart only renews early).
    pub last_renewal: &'a HashMap<String, Timestamp>,
    /// The clock.
    pub now: Timestamp,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// True when a record's pod is gone (or replaced, or no longer selected), finished, or the
/// record itself is being deleted: nobody can use its wrap or token any more.
fn orphaned(pods: &[PodView], wrap: &WrapState) -> bool {
    wrap.deleting
        || pods
            .iter()
            .find(|p| p.uid == wrap.pod_uid)
            .is_none_or(|p| p.finished)
}

/// The records whose pod is gone (or left the selector), revoked and removed.
fn cleanups(settings: &Settings, pods: &[PodView], wraps: &[WrapState], plan: &mut Plan) {
    for wrap in wraps.iter().filter(|w| orphaned(pods, w)) {
        plan.actions.push(cleanup(settings, wrap));
    }
}

/// What every binding owes its records whether or not it may mint (an invalid spec, a role no
/// longer allowed): the tokens of pods that are gone are revoked, and the tokens pods' agents
/// hold are renewed while their pods live. `pods` are the records' pods that exist.
pub fn upkeep(
    settings: &Settings,
    pods: &[PodView],
    wraps: &[WrapState],
    last_renewal: &HashMap<String, Timestamp>,
    now: Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    cleanups(settings, pods, wraps, &mut plan);
    let half = settings.renewal_window / 2;
    let mut due: Vec<(Timestamp, Action)> = vec![];
    for wrap in wraps
        .iter()
        .filter(|w| holds_token(w) && !orphaned(pods, w))
    {
        match last_renewal.get(&wrap.secret) {
            Some(at) if now < add(*at, half) => plan.renew(add(*at, half)),
            last => {
                let since = last.copied().unwrap_or(Timestamp::MIN);
                due.push((since, Action::Renew { wrap: wrap.clone() }));
                plan.renew(add(now, half));
            }
        }
    }
    // The longest unrenewed first: when the Vault budget runs out, what waits is what was
    // renewed most recently.
    due.sort_by_key(|(since, _)| *since);
    plan.actions.extend(due.into_iter().map(|(_, a)| a));
    plan
}

/// How far to extend a held token from `now`: the renewal window, but never past the binding's
/// tokenTTL counted from the mint (OpenBao does not cap a renewal by accessor at the token's
/// explicit max TTL). `None` once the token has reached its tokenTTL: it is left to end.
pub fn renewal_increment(
    window: Duration,
    token_ttl: Option<Duration>,
    issued_at: Option<Timestamp>,
    now: Timestamp,
) -> Option<Duration> {
    let end = token_ttl
        .zip(issued_at)
        .map(|(max, issued)| add(issued, max));
    capped_at(window, end, now)
}

/// `increment` from `now`, cut to end at `end` (`None`: no end). `None` once `end` has come:
/// nothing left to give.
pub fn capped_at(increment: Duration, end: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    let Some(end) = end else {
        return Some(increment);
    };
    let left = Duration::try_from(now.duration_until(end)).ok()?;
    (!left.is_zero()).then(|| increment.min(left))
}

/// True when the record's token was taken by the pod's agent (a verified receipt, or a
/// consumption nothing contradicts): the token the operator keeps alive.
fn holds_token(wrap: &WrapState) -> bool {
    wrap.phase == Phase::Unwrapped && wrap.accessor.is_some()
}

/// Decides the next actions for one binding.
pub fn plan(input: &Input) -> Plan {
    let mut plan = Plan::default();
    let mut actions: Vec<Action> = vec![];
    for wrap in input.wraps.iter().filter(|w| !orphaned(input.pods, w)) {
        let pod = input
            .pods
            .iter()
            .find(|p| p.uid == wrap.pod_uid)
            .expect("not orphaned");
        if !pod.terminating {
            judge(input, pod, wrap, &mut plan, &mut actions);
        }
    }
    for pod in input.pods {
        if input.settings.on_request {
            break;
        }
        if pod.terminating || pod.finished || input.wraps.iter().any(|w| w.pod_uid == pod.uid) {
            continue;
        }
        if input.conflicts.contains_key(&pod.name) {
            continue;
        }
        // A record for an older pod of the same name is cleaned up first; mint next round.
        let name = secret_name(pod, &input.settings.binding);
        if !is_valid_secret_name(&name) {
            plan.invalid_names.insert(pod.name.clone(), name);
            continue;
        }
        // Another pod's record (or another pod of this round) holds the name: one at a time.
        if input.wraps.iter().any(|w| w.secret == name)
            || actions
                .iter()
                .any(|a| matches!(a, Action::Issue(i) if i.secret == name))
        {
            continue;
        }
        if input.untrusted.contains(&name) {
            plan.names_taken.insert(pod.name.clone(), name);
            continue;
        }
        actions.push(Action::Issue(Issue {
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            secret: name,
            start: agent_restarts(input.settings, pod),
            replaces: None,
            revoke_previous: None,
            receipts_after: None,
            replaced: 0,
        }));
    }
    // Routine lookups go last, the longest unchecked first: when the global lookup budget
    // runs out, what is deferred is what was checked most recently.
    actions.sort_by_key(|a| match a {
        Action::Lookup {
            wrap,
            if_consumed: Outcome::ConsumedSeenByLookup,
        } => (1, last_looked_at(input, wrap)),
        _ => (0, Timestamp::MIN),
    });
    let upkeep = upkeep(
        input.settings,
        input.pods,
        input.wraps,
        input.last_renewal,
        input.now,
    );
    if let Some(at) = upkeep.renew_at {
        plan.renew(at);
    }
    // Cleanups first, then new mints and settlements, then renewals, then routine lookups.
    let (lookups, steps): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| {
        matches!(
            a,
            Action::Lookup {
                if_consumed: Outcome::ConsumedSeenByLookup,
                ..
            }
        )
    });
    let (mut renewals, cleanups): (Vec<Action>, Vec<Action>) = upkeep
        .actions
        .into_iter()
        .partition(|a| matches!(a, Action::Renew { .. }));
    // A record with another step this round (a settlement, say) is renewed next round.
    renewals.retain(|r| !steps.iter().any(|a| a.record() == r.record()));
    plan.actions = cleanups
        .into_iter()
        .chain(steps)
        .chain(renewals)
        .chain(lookups)
        .collect();
    plan
}

fn cleanup(settings: &Settings, wrap: &WrapState) -> Action {
    Action::Cleanup {
        wrap: wrap.clone(),
        revoke: revocations(wrap, settings.revoke_on_pod_deletion),
    }
}

/// What to revoke when a record goes. An unconsumed wrap and its token always go; a consumed
/// token only when `revoke_consumed` (the binding's `revokeOnPodDeletion`, or the binding
/// itself going); a settled record that is not `Unwrapped` names nothing live.
pub fn revocations(wrap: &WrapState, revoke_consumed: bool) -> Revoke {
    match wrap.phase {
        Phase::Issued | Phase::Claimed => Revoke::WrapAndToken,
        Phase::Unwrapped if revoke_consumed => Revoke::Token,
        _ => Revoke::Nothing,
    }
}

/// When the wrap was last seen valid: its last lookup (in memory), else its issue time.
fn last_looked_at(input: &Input, wrap: &WrapState) -> Timestamp {
    input
        .last_lookup
        .get(&wrap.secret)
        .copied()
        .or(wrap.issued_at)
        .unwrap_or(input.now)
}

fn agent_restarts(settings: &Settings, pod: &PodView) -> u32 {
    if settings.on_request {
        // On request a start is the pod's run at the ask, written by the endpoint.
        return 0;
    }
    settings
        .agent_container
        .as_ref()
        .and_then(|c| pod.restart_counts.get(c).copied())
        .unwrap_or(0)
}

/// What an ask of `pod`'s agent is, against the pod's record (request delivery).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AskKind {
    /// The first ask of the pod, or one from a run after the one the record was served for:
    /// served.
    NewRun,
    /// From the run the record was already served for: a replay of the pod's identity token,
    /// or (when the kubelet has not reported the restart yet) a new run seen early.
    SameRun,
}

/// Whether an ask of `pod`'s agent comes from a run the record `current` was not served for.
/// The record's start is the pod's run number at the ask that wrote it.
pub fn ask_kind(pod: &PodView, current: Option<&WrapState>) -> AskKind {
    match current {
        Some(c) if pod.runs() <= c.start => AskKind::SameRun,
        _ => AskKind::NewRun,
    }
}

/// Whether a second ask from the run `current` was served for may be served again: only while
/// the wrap it was served is still pending (`wrap_pending`: Vault's word), which is what an
/// agent whose answer was lost on the way sees. Once the wrap is taken, the run is served.
pub fn serve_same_run(current: &WrapState, wrap_pending: bool) -> bool {
    current.phase == Phase::Issued && current.wrap_accessor.is_some() && wrap_pending
}

/// The issue an ask of `pod`'s agent makes (request delivery): the pod's current run, after
/// `current` (the pod's record, if it has one), which it takes over. The endpoint revokes what
/// `current` names before minting.
pub fn asked(pod: &PodView, secret: String, current: Option<WrapState>) -> Issue {
    Issue {
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        secret,
        start: pod.runs().max(current.as_ref().map_or(0, |c| c.start)),
        receipts_after: pod
            .newest_receipt_time()
            .or(current.as_ref().and_then(|c| c.receipts_after)),
        replaces: current,
        revoke_previous: None,
        replaced: 0,
    }
}

/// Receipts written for the current start.
fn current_receipts<'a>(
    settings: &Settings,
    pod: &'a PodView,
    wrap: &WrapState,
) -> Vec<&'a ObservedReceipt> {
    pod.receipts
        .iter()
        // Only the agent's container speaks for the pod: an app container's termination
        // message claiming an unwrap would otherwise hide a theft.
        .filter(|r| {
            r.container == UNWRAP_CONTAINER
                || settings.agent_container.as_ref() == Some(&r.container)
        })
        .filter(|r| match (r.finished_at, wrap.receipts_after) {
            (Some(f), Some(after)) => f > after,
            _ => true,
        })
        .filter(|r| r.receipt.accessor.is_none() || r.receipt.accessor != wrap.previous_accessor)
        .collect()
}

fn judge(
    input: &Input,
    pod: &PodView,
    wrap: &WrapState,
    plan: &mut Plan,
    actions: &mut Vec<Action>,
) {
    let s = input.settings;
    let now = input.now;
    // Selected by another binding too: nothing new is minted for it (see `Input::conflicts`).
    // On request, only the agent's own ask mints.
    let may_mint = !input.conflicts.contains_key(&pod.name) && !s.on_request;
    match wrap.phase {
        Phase::Claimed => {
            // A claim written by an earlier version, whose mint answer was lost: nobody holds
            // what that mint made (it ends by its TTL), so the start is simply issued again.
            if may_mint {
                actions.push(retry(s, pod, wrap));
            }
            return;
        }
        Phase::Failed if wrap.refused_by_agent() => {
            // The agent refused the delivered wrap (e.g. an unexpected creation path): a fresh
            // one for its next run, a few times for the same start, each after a longer pause.
            let restarts = agent_restarts(s, pod);
            if may_mint && restarts > wrap.start {
                actions.push(fresh_wrap(pod, wrap, restarts, None));
            } else if may_mint && wrap.replaced < MAX_REPLACEMENTS {
                replace_after(
                    long_ago_if_unknown(wrap.issued_at),
                    pod,
                    wrap,
                    now,
                    plan,
                    actions,
                );
            }
            return;
        }
        Phase::Failed => {
            let retry_at = add(
                long_ago_if_unknown(wrap.claimed_at),
                failed_mint_pause(wrap.failures),
            );
            if now < retry_at {
                plan.wake(retry_at);
            } else if may_mint {
                actions.push(retry(s, pod, wrap));
            }
            return;
        }
        _ => {}
    }
    // The agent found an outstanding wrap invalid: a theft, or a stale volume. Vault decides,
    // on the wrap's usual schedule, only sooner.
    let mut if_consumed = Outcome::ConsumedSeenByLookup;
    let mut period = s.lookup_period;
    match judge_receipts(s, pod, wrap) {
        Some(Action::Lookup {
            if_consumed: suspected,
            ..
        }) if wrap.phase == Phase::Issued => {
            if_consumed = suspected;
            period = period.min(SUSPECT_RECHECK);
        }
        Some(step) => {
            actions.push(step);
            return;
        }
        None => {}
    }
    if wrap.phase == Phase::Issued {
        let expires = wrap.expires_at.unwrap_or(now);
        let probe_at = sub(expires, s.expiry_margin());
        let lookup_at = add(last_looked_at(input, wrap), period);
        let suspect = if_consumed != Outcome::ConsumedSeenByLookup;
        if now >= probe_at {
            actions.push(Action::ProbeExpiry { wrap: wrap.clone() });
        } else if !wrap.has_token {
            // Nothing to look up with (asked for on request, or the token was removed from
            // the Secret): the receipt or the expiry probe decides.
            plan.wake(probe_at);
        } else if now >= lookup_at || (suspect && !input.last_lookup.contains_key(&wrap.secret)) {
            actions.push(Action::Lookup {
                wrap: wrap.clone(),
                if_consumed,
            });
            plan.wake(add(now, period).min(probe_at));
        } else {
            plan.wake(lookup_at.min(probe_at));
        }
        return;
    }
    // Expired before the pod took it (a slow image pull, a slow node): the same start gets a
    // fresh wrap, a few times, each after a longer pause.
    let restarts = agent_restarts(s, pod);
    if may_mint
        && wrap.phase == Phase::Expired
        && restarts <= wrap.start
        && wrap.replaced < MAX_REPLACEMENTS
        && !current_receipts(s, pod, wrap)
            .iter()
            .any(|r| r.receipt.is_unwrapped())
    {
        replace_after(
            long_ago_if_unknown(wrap.expires_at),
            pod,
            wrap,
            now,
            plan,
            actions,
        );
        return;
    }
    // Settled: a new start of the agent container gets a fresh wrap.
    if may_mint && wrap.phase.is_settled() && s.agent_container.is_some() && restarts > wrap.start {
        let previous = wrap
            .accessor
            .clone()
            .filter(|_| wrap.phase == Phase::Unwrapped);
        actions.push(fresh_wrap(pod, wrap, restarts, previous));
    }
}

/// The time a pause is counted from, when the record does not say (an unparseable or missing
/// annotation): long past, so the step it paces is taken now and the record it writes carries
/// the time. Counting from `now` instead would move the goal with every round: never taken.
fn long_ago_if_unknown(at: Option<Timestamp>) -> Timestamp {
    at.unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Replaces `wrap` for the same start once the pause for its next replacement has passed
/// since `since` (its expiry or its refusal).
fn replace_after(
    since: Timestamp,
    pod: &PodView,
    wrap: &WrapState,
    now: Timestamp,
    plan: &mut Plan,
    actions: &mut Vec<Action>,
) {
    let at = add(since, replacement_pause(wrap.replaced));
    if now < at {
        plan.wake(at);
    } else {
        actions.push(fresh_wrap(pod, wrap, wrap.start, None));
    }
}

/// A fresh wrap for `start` (a new start, or a replacement within the same one) replacing
/// `wrap`. Whatever the agent reported so far is about the old wrap, not this one.
fn fresh_wrap(
    pod: &PodView,
    wrap: &WrapState,
    start: u32,
    revoke_previous: Option<String>,
) -> Action {
    let mut issue = reissue(pod, wrap, start, revoke_previous);
    if start == wrap.start {
        issue.replaced = wrap.replaced + 1;
    }
    issue.receipts_after = pod.newest_receipt_time().or(wrap.receipts_after);
    Action::Issue(issue)
}

/// Mints again for a start whose mint failed (or, written by an earlier version, whose answer
/// was lost). The previous start's token, revoked before the first attempt, is revoked again
/// (an attempt may have stopped before revoking it; a gone token costs one call).
fn retry(s: &Settings, pod: &PodView, wrap: &WrapState) -> Action {
    let previous = wrap
        .previous_accessor
        .clone()
        .filter(|_| s.agent_container.is_some() && wrap.start > 0);
    Action::Issue(reissue(pod, wrap, wrap.start, previous))
}

/// The issue that takes `wrap` over for `start` (the replacement count carries over within one
/// start).
fn reissue(pod: &PodView, wrap: &WrapState, start: u32, revoke_previous: Option<String>) -> Issue {
    Issue {
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        secret: wrap.secret.clone(),
        start,
        replaces: Some(wrap.clone()),
        revoke_previous,
        receipts_after: wrap.receipts_after,
        replaced: if start == wrap.start {
            wrap.replaced
        } else {
            0
        },
    }
}

/// What the agent's receipts say about an Issued or Unwrapped wrap.
fn judge_receipts(settings: &Settings, pod: &PodView, wrap: &WrapState) -> Option<Action> {
    if !matches!(wrap.phase, Phase::Issued | Phase::Unwrapped) || wrap.verified {
        return None;
    }
    let settle = |outcome| {
        // The instance that took the wrap is the current one: its restarts before the unwrap
        // belong to this start.
        let start = match outcome {
            Outcome::UnwrappedByAgent => wrap.start.max(agent_restarts(settings, pod)),
            _ => wrap.start,
        };
        Some(Action::Settle {
            wrap: wrap.clone(),
            outcome,
            start,
        })
    };
    // What the agent reported to the endpoint (request delivery) counts like its termination
    // message.
    let reported = wrap.reported.clone().map(|receipt| ObservedReceipt {
        container: String::new(),
        receipt,
        finished_at: None,
    });
    for r in reported.iter().chain(current_receipts(settings, pod, wrap)) {
        let receipt = &r.receipt;
        if receipt.is_unwrapped() {
            if receipt.accessor.is_some() && receipt.accessor == wrap.accessor {
                return settle(Outcome::UnwrappedByAgent);
            }
            return settle(Outcome::ForeignTokenUnwrapped);
        }
        match receipt.result.as_str() {
            result::INVALID_WRAPPING_TOKEN if wrap.phase == Phase::Unwrapped => {
                return settle(Outcome::ConsumedByAnother);
            }
            // Consumed (seen by lookup, so the wrap was removed from the Secret) before the
            // agent ever read it: someone else took it.
            result::TOKEN_FILE_UNREADABLE
                if wrap.phase == Phase::Unwrapped && !settings.on_request =>
            {
                return settle(Outcome::ConsumedByAnother);
            }
            result::INVALID_WRAPPING_TOKEN => {
                // Confirm with Vault: an agent reading a stale volume is not a theft.
                return Some(Action::Lookup {
                    wrap: wrap.clone(),
                    if_consumed: Outcome::ConsumedByAnother,
                });
            }
            result::UNEXPECTED_CREATION_PATH => return settle(Outcome::RefusedByAgent),
            result::WRITE_FAILED => return settle(Outcome::AgentCouldNotStore),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::receipt::Receipt;
    use crate::rng::Rng;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn settings() -> Settings {
        Settings {
            binding: "b".into(),
            wrap_ttl: Duration::from_secs(60),
            lookup_period: Duration::from_secs(10),
            agent_container: Some("agent".into()),
            revoke_on_pod_deletion: true,
            renewal_window: Duration::from_secs(600),
            on_request: false,
        }
    }

    fn pod(name: &str) -> PodView {
        PodView {
            name: name.into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        }
    }

    #[test]
    fn the_expiry_probe_comes_a_sixth_of_the_ttl_early_within_1_to_5_seconds() {
        let margin = |secs| {
            let s = Settings {
                wrap_ttl: Duration::from_secs(secs),
                ..settings()
            };
            s.expiry_margin().as_secs()
        };
        assert_eq!(
            (margin(3), margin(12), margin(24), margin(60)),
            (1, 2, 4, 5)
        );
    }

    #[test]
    fn the_next_round_is_the_earlier_of_the_wake_and_the_renewal() {
        let mut plan = Plan::default();
        assert_eq!(plan.next_round(), None);
        plan.wake_at = Some(t(20));
        assert_eq!(plan.next_round(), Some(t(20)));
        plan.renew(t(30));
        assert_eq!(plan.next_round(), Some(t(20)));
        plan.renew(t(5));
        assert_eq!(plan.next_round(), Some(t(5)));
    }

    /// A record of pod `name`'s start 0, issued at `at` seconds of the test clock.
    pub(crate) fn issued(name: &str, at: i64) -> WrapState {
        WrapState {
            secret: format!("{name}-b-wrap"),
            resource_version: Some("1".into()),
            pod: name.into(),
            pod_uid: format!("uid-{name}"),
            start: 0,
            phase: Phase::Issued,
            claimed_at: None,
            wrap_accessor: Some("wacc".into()),
            accessor: Some("acc".into()),
            previous_accessor: None,
            issued_at: Some(t(at)),
            expires_at: Some(t(at + 60)),
            verified: false,
            message: None,
            receipts_after: None,
            replaced: 0,
            reported: None,
            failures: 0,
            has_token: true,
            deleting: false,
            authenticity: crate::record::seal::Authenticity::Authentic,
            annotations: Default::default(),
        }
    }

    fn run(pods: &[PodView], wraps: &[WrapState], now: i64) -> Plan {
        run_with(&settings(), pods, wraps, &BTreeMap::new(), now)
    }

    fn run_with(
        s: &Settings,
        pods: &[PodView],
        wraps: &[WrapState],
        conflicts: &BTreeMap<String, Vec<String>>,
        now: i64,
    ) -> Plan {
        run_untrusted(s, pods, wraps, conflicts, &BTreeSet::new(), now)
    }

    fn run_untrusted(
        s: &Settings,
        pods: &[PodView],
        wraps: &[WrapState],
        conflicts: &BTreeMap<String, Vec<String>>,
        untrusted: &BTreeSet<String>,
        now: i64,
    ) -> Plan {
        // Every held token counts as just renewed: renewals have tests of their own.
        let renewed: HashMap<String, Timestamp> =
            wraps.iter().map(|w| (w.secret.clone(), t(now))).collect();
        plan(&Input {
            settings: s,
            pods,
            conflicts,
            wraps,
            untrusted,
            last_lookup: &HashMap::new(),
            last_renewal: &renewed,
            now: t(now),
        })
    }

    fn receipt(r: Receipt, at: i64) -> ObservedReceipt {
        ObservedReceipt {
            container: UNWRAP_CONTAINER.into(),
            receipt: r,
            finished_at: Some(t(at)),
        }
    }

    #[test]
    fn on_request_the_planner_never_mints_and_follows_what_the_agent_asked_for() {
        let s = Settings {
            on_request: true,
            ..settings()
        };
        let mut p = pod("a");
        p.restart_counts.insert("agent".into(), 4);
        // A pod without a record waits for its agent to ask.
        let plan = run_with(&s, std::slice::from_ref(&p), &[], &BTreeMap::new(), 0);
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        // An asked-for record (no token in its Secret) is never looked up: the probe decides.
        let mut w = issued("a", 0);
        w.has_token = false;
        let plan = run_with(
            &s,
            std::slice::from_ref(&p),
            std::slice::from_ref(&w),
            &BTreeMap::new(),
            30,
        );
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.wake_at, Some(t(55)));
        let plan = run_with(
            &s,
            std::slice::from_ref(&p),
            std::slice::from_ref(&w),
            &BTreeMap::new(),
            55,
        );
        assert!(matches!(plan.actions[..], [Action::ProbeExpiry { .. }]));
        // The receipt the agent reported to the endpoint verifies it, its start unchanged by
        // container restarts.
        let mut reported = w.clone();
        reported.reported = Some(Receipt::unwrapped("acc"));
        let plan = run_with(
            &s,
            std::slice::from_ref(&p),
            &[reported],
            &BTreeMap::new(),
            30,
        );
        assert_eq!(
            plan.actions,
            vec![Action::Settle {
                wrap: {
                    let mut r = w.clone();
                    r.reported = Some(Receipt::unwrapped("acc"));
                    r
                },
                outcome: Outcome::UnwrappedByAgent,
                start: 0,
            }]
        );
        // Expired, refused or failed: nothing is minted again; the agent's next ask is.
        for phase in [Phase::Expired, Phase::Failed, Phase::Unwrapped] {
            let mut settled = w.clone();
            settled.phase = phase;
            let plan = run_with(
                &s,
                std::slice::from_ref(&p),
                &[settled],
                &BTreeMap::new(),
                500,
            );
            assert!(
                !plan.actions.iter().any(|a| matches!(a, Action::Issue(_))),
                "{phase:?}: {:?}",
                plan.actions
            );
        }
    }

    #[test]
    fn an_ask_is_the_pods_current_run_taking_the_pods_record_over() {
        let mut p = pod("a");
        let first = asked(&p, "a-b-wrap".into(), None);
        assert_eq!((first.start, first.replaces.is_none()), (0, true));
        let mut w = issued("a", 0);
        w.start = 3;
        w.receipts_after = Some(t(7));
        // Runs count every container's restarts, init containers' too.
        p.restart_counts.insert("cubbyhole-ask".into(), 1);
        p.restart_counts.insert("agent".into(), 4);
        let next = asked(&p, w.secret.clone(), Some(w.clone()));
        assert_eq!(next.start, 5);
        assert_eq!(next.receipts_after, Some(t(7)));
        assert_eq!(next.replaces, Some(w.clone()));
        assert_eq!(next.revoke_previous, None);
        // Served again in the same run (a lost answer): the record's start stays.
        p.restart_counts.clear();
        assert_eq!(asked(&p, w.secret.clone(), Some(w)).start, 3);
    }

    #[test]
    fn only_a_new_run_is_served_and_the_same_run_only_while_its_wrap_is_pending() {
        let mut p = pod("a");
        assert_eq!(ask_kind(&p, None), AskKind::NewRun);
        let mut w = issued("a", 0);
        w.start = 1;
        p.restart_counts.insert("agent".into(), 1);
        assert_eq!(ask_kind(&p, Some(&w)), AskKind::SameRun);
        p.restart_counts.insert("cubbyhole-ask".into(), 1);
        assert_eq!(ask_kind(&p, Some(&w)), AskKind::NewRun);
        // The same run: a lost answer (the wrap still pending) is served again, nothing else.
        assert!(serve_same_run(&w, true));
        assert!(!serve_same_run(&w, false));
        for phase in [
            Phase::Unwrapped,
            Phase::Expired,
            Phase::Tampered,
            Phase::Failed,
        ] {
            let mut settled = w.clone();
            settled.phase = phase;
            assert!(!serve_same_run(&settled, true), "{phase:?}");
        }
        w.wrap_accessor = None;
        assert!(!serve_same_run(&w, true));
    }

    #[test]
    fn new_pod_gets_exactly_one_issue() {
        let p = run(&[pod("a")], &[], 0);
        assert_eq!(p.actions.len(), 1);
        let Action::Issue(i) = &p.actions[0] else {
            panic!("{p:?}")
        };
        assert_eq!(
            (i.secret.as_str(), i.start, i.replaces.is_none()),
            ("a-b-wrap", 0, true)
        );
        // Once a record exists, nothing more is minted for this start.
        let p = run(&[pod("a")], &[issued("a", 0)], 1);
        assert!(p.actions.is_empty(), "{p:?}");
    }

    #[test]
    fn a_wrap_that_expired_before_a_slow_pod_took_it_is_replaced_a_few_times() {
        let s = Settings {
            agent_container: None,
            ..settings()
        };
        let mut w = issued("a", 0);
        w.phase = Phase::Expired;
        // Expired at 60: replaced 5 s later, then 20 s, then 80 s after each expiry.
        let p = run_with(
            &s,
            &[pod("a")],
            std::slice::from_ref(&w),
            &BTreeMap::new(),
            62,
        );
        assert!(p.actions.is_empty(), "{p:?}");
        assert_eq!(p.wake_at, Some(t(65)));
        let p = run_with(
            &s,
            &[pod("a")],
            std::slice::from_ref(&w),
            &BTreeMap::new(),
            65,
        );
        let [Action::Issue(i)] = &p.actions[..] else {
            panic!("{p:?}")
        };
        assert_eq!(
            (i.start, i.replaced, i.revoke_previous.as_deref()),
            (0, 1, None)
        );
        assert_eq!(i.replaces.as_ref(), Some(&w));
        w.replaced = 2;
        let p = run_with(
            &s,
            &[pod("a")],
            std::slice::from_ref(&w),
            &BTreeMap::new(),
            100,
        );
        assert_eq!(p.wake_at, Some(t(140)));
        // The agent ran after the expiry and found its wrap invalid: still replaced.
        let mut late = pod("a");
        late.receipts
            .push(receipt(Receipt::failed(result::INVALID_WRAPPING_TOKEN), 70));
        let p = run_with(&s, &[late], std::slice::from_ref(&w), &BTreeMap::new(), 140);
        let [Action::Issue(i)] = &p.actions[..] else {
            panic!("{p:?}")
        };
        // That report is about the expired wrap, not the fresh one.
        assert_eq!(i.receipts_after, Some(t(70)));
        // At most three replacements; none for a pod whose agent unwrapped something, or a
        // pod that is leaving.
        w.replaced = MAX_REPLACEMENTS;
        let p = run_with(
            &s,
            &[pod("a")],
            std::slice::from_ref(&w),
            &BTreeMap::new(),
            10_000,
        );
        assert!(p.actions.is_empty(), "{p:?}");
        w.replaced = 0;
        let mut took = pod("a");
        took.receipts.push(receipt(Receipt::unwrapped("other"), 70));
        let leaving = PodView {
            terminating: true,
            ..pod("a")
        };
        for p in [took, leaving] {
            let plan = run_with(&s, &[p], std::slice::from_ref(&w), &BTreeMap::new(), 10_000);
            assert!(plan.actions.is_empty(), "{plan:?}");
        }
    }

    #[test]
    fn a_wrap_the_agent_refused_is_replaced_a_few_times_then_left() {
        let mut w = issued("a", 0);
        w.phase = Phase::Failed;
        let mut p = pod("a");
        p.receipts.push(receipt(
            Receipt::failed(result::UNEXPECTED_CREATION_PATH),
            3,
        ));
        // Issued at 0: the next wrap 5 s later, for the same start while the agent has not
        // restarted.
        let plan = run(std::slice::from_ref(&p), std::slice::from_ref(&w), 2);
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert_eq!(plan.wake_at, Some(t(5)));
        let plan = run(std::slice::from_ref(&p), std::slice::from_ref(&w), 5);
        let [Action::Issue(i)] = &plan.actions[..] else {
            panic!("{plan:?}")
        };
        assert_eq!((i.start, i.replaced, i.receipts_after), (0, 1, Some(t(3))));
        // Three times at most for one start...
        w.replaced = MAX_REPLACEMENTS;
        assert!(
            run(std::slice::from_ref(&p), std::slice::from_ref(&w), 1_000)
                .actions
                .is_empty()
        );
        // ...but a restarted agent is a new start: a fresh wrap at once.
        p.restart_counts.insert("agent".into(), 1);
        let plan = run(std::slice::from_ref(&p), std::slice::from_ref(&w), 6);
        let [Action::Issue(i)] = &plan.actions[..] else {
            panic!("{plan:?}")
        };
        assert_eq!((i.start, i.replaced), (1, 0));
        // A failed mint is not a refusal: retried 5 s after its attempt, as before.
        let mut failed = issued("a", 0);
        failed.phase = Phase::Failed;
        failed.issued_at = None;
        failed.claimed_at = Some(t(10));
        let plan = run(&[pod("a")], std::slice::from_ref(&failed), 12);
        assert_eq!(plan.wake_at, Some(t(15)));
    }

    #[test]
    fn two_pods_asking_for_one_secret_name_get_one_mint_at_a_time() {
        let p = |name: &str| PodView {
            secret_name: Some("shared".into()),
            ..pod(name)
        };
        let plan = run(&[p("a"), p("b")], &[], 0);
        assert!(
            matches!(&plan.actions[..], [Action::Issue(i)] if i.secret == "shared"),
            "{plan:?}"
        );
    }

    #[test]
    fn an_invalid_annotated_secret_name_is_reported_not_minted() {
        let p = PodView {
            secret_name: Some("Not_Valid".into()),
            ..pod("a")
        };
        let plan = run(&[p], &[], 0);
        assert!(plan.actions.is_empty());
        assert_eq!(
            plan.invalid_names.get("a").map(String::as_str),
            Some("Not_Valid")
        );
    }

    #[test]
    fn conflicted_terminating_and_finished_pods_get_nothing() {
        let mut conflicts = BTreeMap::new();
        conflicts.insert("a".to_string(), vec!["other".to_string()]);
        let terminating = PodView {
            terminating: true,
            ..pod("c")
        };
        let finished = PodView {
            finished: true,
            ..pod("d")
        };
        let p = run_with(
            &settings(),
            &[pod("a"), terminating, finished],
            &[],
            &conflicts,
            0,
        );
        assert!(p.actions.is_empty(), "{p:?}");
    }

    #[test]
    fn a_pod_that_gains_a_second_binding_keeps_its_wrap_but_gets_no_new_mint() {
        let conflicts = BTreeMap::from([("a".to_string(), vec!["other".to_string()])]);
        let s = settings();
        let mut restarted = pod("a");
        restarted.restart_counts.insert("agent".into(), 1);
        // A live wrap is not revoked for the conflict: it is still tracked as usual.
        let w = issued("a", 0);
        let p = run_with(&s, &[pod("a")], std::slice::from_ref(&w), &conflicts, 10);
        assert!(matches!(p.actions[..], [Action::Lookup { .. }]), "{p:?}");
        let p = run_with(&s, &[pod("a")], std::slice::from_ref(&w), &conflicts, 55);
        assert!(
            matches!(p.actions[..], [Action::ProbeExpiry { .. }]),
            "{p:?}"
        );
        // A new start: no wrap while conflicted, one once the conflict is gone.
        let mut w = issued("a", 0);
        w.phase = Phase::Unwrapped;
        w.verified = true;
        let none = BTreeMap::new();
        let p = run_with(
            &s,
            std::slice::from_ref(&restarted),
            std::slice::from_ref(&w),
            &conflicts,
            20,
        );
        assert!(p.actions.is_empty(), "{p:?}");
        let p = run_with(&s, &[restarted], &[w], &none, 20);
        assert!(matches!(p.actions[..], [Action::Issue(_)]), "{p:?}");
        // No retry of a refused mint.
        let mut w = issued("a", 0);
        w.phase = Phase::Failed;
        w.claimed_at = Some(t(0));
        let p = run_with(&s, &[pod("a")], std::slice::from_ref(&w), &conflicts, 30);
        assert!(p.actions.is_empty(), "{p:?}");
        // An earlier version's claim whose mint answer was lost: no re-mint either.
        let mut w = issued("a", 0);
        w.phase = Phase::Claimed;
        w.claimed_at = Some(t(0));
        w.wrap_accessor = None;
        w.accessor = None;
        let p = run_with(&s, &[pod("a")], std::slice::from_ref(&w), &conflicts, 5);
        assert!(p.actions.is_empty(), "{p:?}");
        let p = run_with(&s, &[pod("a")], &[w], &none, 5);
        assert!(matches!(p.actions[..], [Action::Issue(_)]), "{p:?}");
        // When the pod goes, its record is cleaned up as usual.
        let p = run_with(&s, &[], &[issued("a", 0)], &conflicts, 5);
        assert!(matches!(p.actions[..], [Action::Cleanup { .. }]), "{p:?}");
    }

    #[test]
    fn due_lookups_come_after_other_actions_the_longest_unchecked_first() {
        let s = settings();
        let pods = [pod("a"), pod("b"), pod("c"), pod("new")];
        let wraps = [issued("a", 0), issued("b", 0), issued("c", 0)];
        // a was looked up last at 8 s, b never since its issue at 0 s, c at 4 s.
        let last_lookup = HashMap::from([
            ("a-b-wrap".to_string(), t(8)),
            ("c-b-wrap".to_string(), t(4)),
        ]);
        let p = plan(&Input {
            settings: &s,
            pods: &pods,
            conflicts: &BTreeMap::new(),
            wraps: &wraps,
            untrusted: &BTreeSet::new(),
            last_lookup: &last_lookup,
            last_renewal: &HashMap::new(),
            now: t(20),
        });
        let order: Vec<&str> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Issue(i) => i.pod.as_str(),
                Action::Lookup { wrap, .. } => wrap.pod.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(order, ["new", "b", "c", "a"]);
    }

    #[test]
    fn lookups_are_paced_and_expiry_is_probed() {
        let w = issued("a", 0);
        assert!(
            run(&[pod("a")], std::slice::from_ref(&w), 5)
                .actions
                .is_empty()
        );
        assert_eq!(
            run(&[pod("a")], std::slice::from_ref(&w), 5).wake_at,
            Some(t(10))
        );
        assert!(matches!(
            run(&[pod("a")], std::slice::from_ref(&w), 10).actions[0],
            Action::Lookup {
                if_consumed: Outcome::ConsumedSeenByLookup,
                ..
            }
        ));
        // Margin for 60s is 5s: at 55s the wrap is probed by revocation.
        assert!(matches!(
            run(&[pod("a")], &[w], 55).actions[0],
            Action::ProbeExpiry { .. }
        ));
    }

    #[test]
    fn every_outcome_has_one_phase_one_revocation_and_a_message() {
        use Outcome::*;
        use Revoke::*;
        // outcome, phase, verified, revoke from Issued, revoke from Unwrapped
        let table = [
            (UnwrappedByAgent, Phase::Unwrapped, true, Nothing, Nothing),
            (
                ConsumedSeenByLookup,
                Phase::Unwrapped,
                false,
                Nothing,
                Nothing,
            ),
            (
                ConsumedSeenAtExpiry,
                Phase::Unwrapped,
                false,
                Nothing,
                Nothing,
            ),
            (
                ForeignTokenUnwrapped,
                Phase::Tampered,
                false,
                WrapAndToken,
                Token,
            ),
            (ConsumedByAnother, Phase::Tampered, false, Token, Token),
            (ExpiredUnconsumed, Phase::Expired, false, Token, Token),
            (ExpiryPassedUnchecked, Phase::Expired, false, Token, Token),
            (RefusedByAgent, Phase::Failed, false, WrapAndToken, Token),
            (
                AgentCouldNotStore,
                Phase::Revoked,
                false,
                WrapAndToken,
                Token,
            ),
        ];
        for (outcome, phase, verified, from_issued, from_unwrapped) in table {
            assert_eq!(outcome.phase(), phase, "{outcome:?}");
            assert_eq!(outcome.verified(), verified, "{outcome:?}");
            assert_eq!(outcome.revoke(Phase::Issued), from_issued, "{outcome:?}");
            assert_eq!(
                outcome.revoke(Phase::Unwrapped),
                from_unwrapped,
                "{outcome:?}"
            );
            assert!(!outcome.message().is_empty());
        }
        let messages: BTreeSet<&str> = table.iter().map(|row| row.0.message()).collect();
        assert_eq!(
            messages.len(),
            table.len(),
            "each outcome says what happened"
        );
        assert!(ExpiredUnconsumed.message().contains("did not unwrap"));
        assert!(ConsumedSeenAtExpiry.message().contains("consumed"));
        assert!(WrapAndToken.wrap() && WrapAndToken.token());
        assert!(!Token.wrap() && Token.token());
        assert!(!Nothing.wrap() && !Nothing.token());
    }

    #[test]
    fn expiry_probe_revoking_a_live_wrap_means_expired_and_revokes_its_token() {
        let outcome = expiry_outcome(Revoked::Existed, Some(t(60)), t(55));
        assert_eq!(outcome, Outcome::ExpiredUnconsumed);
        assert_eq!(
            (outcome.phase(), outcome.revoke(Phase::Issued)),
            (Phase::Expired, Revoke::Token)
        );
    }

    #[test]
    fn expiry_probe_finding_no_token_before_expiry_means_consumed() {
        let outcome = expiry_outcome(Revoked::NotFound, Some(t(60)), t(55));
        assert_eq!(outcome, Outcome::ConsumedSeenAtExpiry);
        assert_eq!(
            (outcome.phase(), outcome.revoke(Phase::Issued)),
            (Phase::Unwrapped, Revoke::Nothing)
        );
        // Without a known expiry the answer is taken at its word too.
        assert_eq!(
            expiry_outcome(Revoked::NotFound, None, t(55)),
            Outcome::ConsumedSeenAtExpiry
        );
    }

    #[test]
    fn expiry_probe_finding_no_token_after_expiry_revokes_to_be_safe() {
        for now in [60, 61] {
            let outcome = expiry_outcome(Revoked::NotFound, Some(t(60)), t(now));
            assert_eq!(outcome, Outcome::ExpiryPassedUnchecked, "at {now}");
            assert_eq!(
                (outcome.phase(), outcome.revoke(Phase::Issued)),
                (Phase::Expired, Revoke::Token),
                "at {now}"
            );
        }
    }

    #[test]
    fn a_gone_record_revokes_what_is_outstanding_and_a_consumed_token_only_when_asked() {
        let mut w = issued("a", 0);
        for phase in [Phase::Issued, Phase::Claimed] {
            w.phase = phase;
            assert_eq!(revocations(&w, false), Revoke::WrapAndToken, "{phase:?}");
            assert_eq!(revocations(&w, true), Revoke::WrapAndToken, "{phase:?}");
        }
        w.phase = Phase::Unwrapped;
        assert_eq!(revocations(&w, true), Revoke::Token);
        assert_eq!(revocations(&w, false), Revoke::Nothing);
        for phase in [
            Phase::Expired,
            Phase::Revoked,
            Phase::Tampered,
            Phase::Failed,
        ] {
            w.phase = phase;
            assert_eq!(revocations(&w, true), Revoke::Nothing, "{phase:?}");
        }
    }

    #[test]
    fn matching_receipt_verifies_without_vault() {
        let mut p = pod("a");
        p.receipts.push(receipt(Receipt::unwrapped("acc"), 3));
        let plan = run(&[p], &[issued("a", 0)], 3);
        assert!(matches!(
            &plan.actions[0],
            Action::Settle {
                outcome: Outcome::UnwrappedByAgent,
                ..
            }
        ));
    }

    #[test]
    fn receipts_count_only_from_the_agents_container() {
        // An app container's termination message claiming the unwrap is not a receipt.
        let mut p = pod("a");
        let mut forged = receipt(Receipt::unwrapped("acc"), 3);
        forged.container = "app".into();
        p.receipts.push(forged);
        let plan = run(&[p.clone()], &[issued("a", 0)], 3);
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::Settle { .. })),
            "{:?}",
            plan.actions
        );
        // The binding's agentContainer speaks for the pod (settings() names "agent").
        p.receipts[0].container = "agent".into();
        let plan = run(&[p], &[issued("a", 0)], 3);
        assert!(matches!(
            &plan.actions[0],
            Action::Settle {
                outcome: Outcome::UnwrappedByAgent,
                ..
            }
        ));
    }

    #[test]
    fn a_suspect_wrap_is_looked_up_at_once_unless_it_just_was() {
        let mut p = pod("a");
        p.receipts
            .push(receipt(Receipt::failed(result::INVALID_WRAPPING_TOKEN), 0));
        let w = issued("a", 0);
        let lookups = |last: &HashMap<String, Timestamp>| {
            let renewed = HashMap::new();
            let planned = plan(&Input {
                settings: &settings(),
                pods: std::slice::from_ref(&p),
                conflicts: &BTreeMap::new(),
                wraps: std::slice::from_ref(&w),
                untrusted: &BTreeSet::new(),
                last_lookup: last,
                last_renewal: &renewed,
                now: t(0),
            });
            planned
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Lookup { .. }))
                .count()
        };
        // Never looked up: at once, before its usual period.
        assert_eq!(lookups(&HashMap::new()), 1);
        // Looked up this very instant: not again before the recheck.
        let just = HashMap::from([(w.secret.clone(), t(0))]);
        assert_eq!(lookups(&just), 0);
    }

    #[test]
    fn foreign_or_failed_receipts_are_tampering() {
        let mut p = pod("a");
        p.receipts
            .push(receipt(Receipt::unwrapped("someone-else"), 3));
        let plan = run(&[p], &[issued("a", 0)], 3);
        assert!(matches!(
            &plan.actions[0],
            Action::Settle {
                outcome: Outcome::ForeignTokenUnwrapped,
                ..
            }
        ));
        // Consumed (by lookup) and the agent says invalid: someone else took it.
        let mut p = pod("a");
        p.receipts
            .push(receipt(Receipt::failed(result::INVALID_WRAPPING_TOKEN), 3));
        let mut w = issued("a", 0);
        w.phase = Phase::Unwrapped;
        let plan = run(std::slice::from_ref(&p), &[w], 3);
        assert!(matches!(
            &plan.actions[0],
            Action::Settle {
                outcome: Outcome::ConsumedByAnother,
                ..
            }
        ));
        // Consumed (by lookup) and the agent finds its file empty: the same.
        let mut empty = pod("a");
        empty
            .receipts
            .push(receipt(Receipt::failed(result::TOKEN_FILE_UNREADABLE), 3));
        let mut w = issued("a", 0);
        w.phase = Phase::Unwrapped;
        let plan = run(std::slice::from_ref(&empty), std::slice::from_ref(&w), 3);
        assert!(matches!(
            &plan.actions[0],
            Action::Settle {
                outcome: Outcome::ConsumedByAnother,
                ..
            }
        ));
        // An empty file while the wrap is outstanding is the kubelet being slow: nothing.
        let plan = run(std::slice::from_ref(&empty), &[issued("a", 0)], 3);
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::Settle { .. })),
            "{:?}",
            plan.actions
        );
        // Still Issued: confirm with Vault first.
        let plan = run(&[p], &[issued("a", 0)], 3);
        assert!(matches!(
            &plan.actions[0],
            Action::Lookup {
                if_consumed: Outcome::ConsumedByAnother,
                ..
            }
        ));
    }

    #[test]
    fn an_agent_refusing_or_failing_to_store_the_wrap_settles_it() {
        for (result, outcome) in [
            (result::UNEXPECTED_CREATION_PATH, Outcome::RefusedByAgent),
            (result::WRITE_FAILED, Outcome::AgentCouldNotStore),
        ] {
            let mut p = pod("a");
            p.receipts.push(receipt(Receipt::failed(result), 3));
            let plan = run(&[p], &[issued("a", 0)], 3);
            assert_eq!(
                plan.actions,
                vec![Action::Settle {
                    wrap: issued("a", 0),
                    outcome,
                    start: 0,
                }],
                "{result}"
            );
        }
    }

    #[test]
    fn receipts_of_earlier_starts_are_ignored() {
        let mut p = pod("a");
        p.receipts
            .push(receipt(Receipt::failed(result::INVALID_WRAPPING_TOKEN), 3));
        let mut w = issued("a", 10);
        w.receipts_after = Some(t(3));
        assert!(
            run(std::slice::from_ref(&p), std::slice::from_ref(&w), 11)
                .actions
                .is_empty()
        );
        w.receipts_after = None;
        w.previous_accessor = Some("old".into());
        p.receipts = vec![receipt(Receipt::unwrapped("old"), 3)];
        assert!(
            run(std::slice::from_ref(&p), std::slice::from_ref(&w), 11)
                .actions
                .is_empty()
        );
        // A receipt that finished after the current start began is this start's.
        w.receipts_after = Some(t(3));
        p.receipts = vec![receipt(Receipt::unwrapped("acc"), 5)];
        assert!(matches!(
            run(&[p], &[w], 11).actions[..],
            [Action::Settle {
                outcome: Outcome::UnwrappedByAgent,
                ..
            }]
        ));
    }

    #[test]
    fn an_agent_restarted_before_its_unwrap_keeps_its_start_and_its_token() {
        // The agent's first run failed before unwrapping; the kubelet restarted it and the
        // second run took the still-valid wrap.
        let mut p = pod("a");
        p.restart_counts.insert("agent".into(), 1);
        p.receipts.push(receipt(Receipt::unwrapped("acc"), 3));
        let w = issued("a", 0);
        let plan = run(std::slice::from_ref(&p), std::slice::from_ref(&w), 3);
        assert_eq!(
            plan.actions,
            vec![Action::Settle {
                wrap: w.clone(),
                outcome: Outcome::UnwrappedByAgent,
                start: 1,
            }]
        );
        // Settled as start 1: nothing is reissued and the token in use is not revoked.
        let mut settled = w;
        settled.phase = Phase::Unwrapped;
        settled.verified = true;
        settled.start = 1;
        let plan = run(&[p], &[settled], 4);
        assert!(plan.actions.is_empty(), "{plan:?}");
    }

    #[test]
    fn agent_restart_after_settle_reissues_and_revokes_previous_token() {
        let mut p = pod("a");
        p.restart_counts.insert("agent".into(), 1);
        let mut w = issued("a", 0);
        // Outstanding: the restarted agent can still unwrap it; no new wrap.
        assert!(
            run(std::slice::from_ref(&p), std::slice::from_ref(&w), 5)
                .actions
                .is_empty()
        );
        w.phase = Phase::Unwrapped;
        w.verified = true;
        let plan = run(std::slice::from_ref(&p), std::slice::from_ref(&w), 20);
        let Action::Issue(i) = &plan.actions[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(i.start, 1);
        assert_eq!(i.revoke_previous.as_deref(), Some("acc"));
        assert!(i.replaces.is_some());
        // Without an agent container, restarts do not count.
        let s = Settings {
            agent_container: None,
            ..settings()
        };
        assert!(
            run_with(&s, &[p], &[w], &BTreeMap::new(), 20)
                .actions
                .is_empty()
        );
    }

    #[test]
    fn an_earlier_versions_claim_is_issued_again_at_once() {
        // Nobody holds what a lost mint made (nothing names it; Vault ends it by its TTL).
        let mut w = issued("a", 0);
        w.phase = Phase::Claimed;
        w.claimed_at = Some(t(0));
        w.wrap_accessor = None;
        w.accessor = None;
        let p = run(&[pod("a")], std::slice::from_ref(&w), 1);
        let Action::Issue(i) = &p.actions[0] else {
            panic!("{p:?}")
        };
        assert_eq!(i.replaces.as_ref(), Some(&w));
    }

    #[test]
    fn a_retried_claim_for_a_new_start_revokes_the_previous_token_again() {
        // The restart's claim took the record over (previous_accessor) but its mint failed
        // (or its answer was lost): the previous start's token may still be live.
        let mut w = issued("a", 0);
        w.phase = Phase::Failed;
        w.start = 1;
        w.claimed_at = Some(t(0));
        w.wrap_accessor = None;
        w.accessor = None;
        w.previous_accessor = Some("acc-0".into());
        let mut p = pod("a");
        p.restart_counts.insert("agent".into(), 1);
        let plan = run(std::slice::from_ref(&p), std::slice::from_ref(&w), 5);
        let Action::Issue(i) = &plan.actions[0] else {
            panic!("{plan:?}")
        };
        assert_eq!((i.start, i.revoke_previous.as_deref()), (1, Some("acc-0")));
        w.phase = Phase::Claimed;
        let plan = run(std::slice::from_ref(&p), std::slice::from_ref(&w), 100);
        let Action::Issue(i) = &plan.actions[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(i.revoke_previous.as_deref(), Some("acc-0"));
        // Without an agent container there are no new starts, so no previous token to revoke;
        // nor for the first start, whatever the record says.
        let no_agent = Settings {
            agent_container: None,
            ..settings()
        };
        let plan = run_with(
            &no_agent,
            std::slice::from_ref(&p),
            std::slice::from_ref(&w),
            &BTreeMap::new(),
            100,
        );
        let Action::Issue(i) = &plan.actions[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(i.revoke_previous, None);
        w.start = 0;
        let plan = run(std::slice::from_ref(&p), std::slice::from_ref(&w), 100);
        let Action::Issue(i) = &plan.actions[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(
            i.revoke_previous, None,
            "the first start has no previous token"
        );
        // The first start has no previous token.
        w.previous_accessor = None;
        let plan = run(&[p], &[w], 100);
        let Action::Issue(i) = &plan.actions[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(i.revoke_previous, None);
    }

    #[test]
    fn failed_mint_is_retried_after_a_pause() {
        let mut w = issued("a", 0);
        w.phase = Phase::Failed;
        w.claimed_at = Some(t(0));
        assert!(
            run(&[pod("a")], std::slice::from_ref(&w), 2)
                .actions
                .is_empty()
        );
        assert!(matches!(
            run(&[pod("a")], std::slice::from_ref(&w), 5).actions[0],
            Action::Issue(_)
        ));
        // Each failure in a row doubles the pause, up to 5 minutes: a role Vault refuses
        // costs a pod a few mints an hour, not one every 5 s.
        w.failures = 4;
        let plan = run(&[pod("a")], std::slice::from_ref(&w), 39);
        assert!(plan.actions.is_empty());
        assert_eq!(plan.wake_at, Some(t(40)));
        assert!(matches!(
            run(&[pod("a")], std::slice::from_ref(&w), 40).actions[0],
            Action::Issue(_)
        ));
        let pauses: Vec<u64> = (0..10).map(|n| failed_mint_pause(n).as_secs()).collect();
        assert_eq!(pauses, [5, 5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_record_without_the_time_a_pause_counts_from_is_acted_on_now() {
        // Counted from `now`, the pause would move with every round and never end.
        let mut failed = issued("a", 0);
        failed.phase = Phase::Failed;
        failed.claimed_at = None;
        failed.issued_at = None;
        let mut expired = issued("a", 0);
        expired.phase = Phase::Expired;
        expired.expires_at = None;
        for w in [failed, expired] {
            let plan = run(&[pod("a")], std::slice::from_ref(&w), 1_000);
            assert!(
                matches!(plan.actions.as_slice(), [Action::Issue(_)]),
                "{:?} without its time: {:?}",
                w.phase,
                plan.actions
            );
        }
    }

    #[test]
    fn gone_pods_are_cleaned_up_and_revoked() {
        let plan = run(&[], &[issued("a", 0)], 5);
        assert_eq!(
            plan.actions,
            vec![Action::Cleanup {
                wrap: issued("a", 0),
                revoke: Revoke::WrapAndToken,
            }]
        );
        // revokeOnPodDeletion=false keeps a consumed token alive, but never an unconsumed wrap.
        let s = Settings {
            revoke_on_pod_deletion: false,
            ..settings()
        };
        let mut w = issued("a", 0);
        w.phase = Phase::Unwrapped;
        let plan = run_with(&s, &[], &[w], &BTreeMap::new(), 5);
        assert!(matches!(
            plan.actions[0],
            Action::Cleanup {
                revoke: Revoke::Nothing,
                ..
            }
        ));
        // A recreated pod with the same name: old record cleaned first, new one next round.
        let mut newer = pod("a");
        newer.uid = "uid-new".into();
        let plan = run(&[newer], &[issued("a", 0)], 5);
        assert_eq!(plan.actions.len(), 1);
        assert!(matches!(plan.actions[0], Action::Cleanup { .. }));
    }

    #[test]
    fn a_pod_whose_secret_name_holds_an_untrusted_record_is_reported_not_served() {
        let untrusted = BTreeSet::from(["a-b-wrap".to_string()]);
        let p = run_untrusted(
            &settings(),
            &[pod("a"), pod("c")],
            &[],
            &BTreeMap::new(),
            &untrusted,
            0,
        );
        assert_eq!(p.names_taken.get("a").map(String::as_str), Some("a-b-wrap"));
        // The other pod is served as usual; nothing touches the untrusted record.
        assert_eq!(p.actions.len(), 1, "{p:?}");
        assert!(matches!(&p.actions[0], Action::Issue(i) if i.pod == "c"));
    }

    #[test]
    fn every_step_names_the_record_it_acts_on() {
        let w = issued("a", 0);
        let plan = run(&[], std::slice::from_ref(&w), 5);
        assert_eq!(plan.actions[0].record(), Some(&w));
        let plan = run(&[pod("b")], &[], 0);
        assert_eq!(plan.actions[0].record(), None);
    }

    const PHASES: [Phase; 7] = Phase::ALL;

    type Case = (
        Vec<PodView>,
        Vec<WrapState>,
        BTreeMap<String, Vec<String>>,
        BTreeSet<String>,
        i64,
    );

    fn random_case(rng: &mut Rng) -> Case {
        let mut pods = vec![];
        let mut wraps = vec![];
        let mut conflicts = BTreeMap::new();
        let mut untrusted = BTreeSet::new();
        for i in 0..rng.below(6) {
            let mut p = pod(&format!("p{i}"));
            p.terminating = rng.chance(150);
            p.finished = rng.chance(150);
            p.restart_counts.insert("agent".into(), rng.below(3) as u32);
            // Some pods ask for a Secret name: shared with other pods, or not a valid one.
            p.secret_name = match rng.below(20) {
                0 | 1 => Some("shared".into()),
                2 => Some("Not_Valid".into()),
                _ => None,
            };
            if rng.chance(300) {
                let r = match rng.below(7) {
                    0 => Receipt::unwrapped("acc"),
                    1 => Receipt::unwrapped("other"),
                    2 => Receipt::failed(result::INVALID_WRAPPING_TOKEN),
                    3 => Receipt::failed(result::TOKEN_FILE_UNREADABLE),
                    4 => Receipt::failed(result::UNEXPECTED_CREATION_PATH),
                    5 => Receipt::failed(result::VAULT_UNREACHABLE),
                    _ => Receipt::failed(result::WRITE_FAILED),
                };
                p.receipts.push(receipt(r, rng.below(100) as i64));
            }
            if rng.chance(200) {
                conflicts.insert(p.name.clone(), vec!["other".to_string()]);
            }
            if rng.chance(600) {
                let mut w = issued(&p.name, rng.below(100) as i64);
                w.phase = PHASES[rng.below(7) as usize];
                w.start = rng.below(3) as u32;
                w.claimed_at = rng.chance(700).then(|| t(rng.below(100) as i64));
                // A record whose times did not parse (hand-edited, or an older writer).
                if rng.chance(100) {
                    w.issued_at = None;
                    w.expires_at = None;
                }
                w.verified = rng.chance(200);
                w.deleting = rng.chance(100);
                w.replaced = rng.below(u64::from(MAX_REPLACEMENTS) + 1) as u32;
                w.failures = rng.below(4) as u32;
                if rng.chance(200) {
                    w.wrap_accessor = None;
                    w.accessor = None;
                }
                if rng.chance(100) {
                    w.pod_uid = "uid-of-an-older-pod".into();
                }
                wraps.push(w);
            } else if rng.chance(300) {
                // A forged (or not yet adopted) record holds this pod's Secret name.
                untrusted.insert(secret_name(&p, "b"));
            }
            pods.push(p);
        }
        if rng.chance(200) {
            untrusted.insert("unrelated-forged".to_string());
        }
        // Records of pods that are gone.
        for i in 0..rng.below(3) {
            let mut w = issued(&format!("gone{i}"), 0);
            w.phase = PHASES[rng.below(7) as usize];
            wraps.push(w);
        }
        (pods, wraps, conflicts, untrusted, rng.below(200) as i64)
    }

    /// What a pod is owed this round, read from the inputs by the rules the planner states (its
    /// doc comments and the README), not by its code: the liveness side of the random test.
    #[derive(Debug, PartialEq)]
    enum Owed {
        /// No mint this round: leaving, conflicted, holding an outstanding wrap, waiting out a
        /// pause, out of replacements, its record to be settled or cleaned up first, or its
        /// Secret name not free.
        Nothing,
        /// A mint taking its own record over (a retry, a replacement, a new start).
        Mint,
        /// A first record under this Secret name (of the pods asking for one name, one at a
        /// time).
        Record(String),
    }

    fn owed(
        s: &Settings,
        p: &PodView,
        wraps: &[WrapState],
        conflicts: &BTreeMap<String, Vec<String>>,
        untrusted: &BTreeSet<String>,
        now: Timestamp,
    ) -> Owed {
        if s.on_request || p.terminating || p.finished || conflicts.contains_key(&p.name) {
            return Owed::Nothing;
        }
        let Some(w) = wraps.iter().find(|w| w.pod_uid == p.uid) else {
            // A name held by any record (an older pod's is removed first) or by a record that
            // is not ours is not free; an invalid one is reported.
            let name = secret_name(p, &s.binding);
            let free = is_valid_secret_name(&name)
                && !untrusted.contains(&name)
                && !wraps.iter().any(|w| w.secret == name);
            return if free {
                Owed::Record(name)
            } else {
                Owed::Nothing
            };
        };
        if w.deleting {
            // Its record is cleaned up first.
            return Owed::Nothing;
        }
        // A pause counts from a known time (the record's); from an unknown one it never ends.
        let passed = |since: Option<Timestamp>, pause: Duration| {
            // An unknown time is long past (`long_ago_if_unknown`).
            since.is_none_or(|t| t.as_second() + pause.as_secs() as i64 <= now.as_second())
        };
        // The agent container's instance now running, and what it reported about this record.
        let run = s
            .agent_container
            .as_ref()
            .and_then(|c| p.restart_counts.get(c))
            .copied()
            .unwrap_or(0);
        let new_start = run > w.start;
        let reports: Vec<&Receipt> = p
            .receipts
            .iter()
            .filter(|r| {
                r.container == UNWRAP_CONTAINER || s.agent_container.as_ref() == Some(&r.container)
            })
            .filter(|r| {
                w.receipts_after
                    .is_none_or(|a| r.finished_at.is_none_or(|f| f > a))
            })
            .filter(|r| r.receipt.accessor.is_none() || r.receipt.accessor != w.previous_accessor)
            .map(|r| &r.receipt)
            .collect();
        let took = reports.iter().any(|r| r.is_unwrapped());
        let decisive = reports.iter().any(|r| {
            r.is_unwrapped()
                || [
                    result::INVALID_WRAPPING_TOKEN,
                    result::TOKEN_FILE_UNREADABLE,
                    result::UNEXPECTED_CREATION_PATH,
                    result::WRITE_FAILED,
                ]
                .contains(&r.result.as_str())
        });
        let owed = match w.phase {
            // A mint whose answer was lost: issued again at once.
            Phase::Claimed => true,
            // An outstanding wrap: followed, never replaced.
            Phase::Issued => false,
            // Refused by the agent: a new start at once, the same start a few times, paced.
            Phase::Failed if w.refused_by_agent() => {
                new_start
                    || (w.replaced < MAX_REPLACEMENTS
                        && passed(w.issued_at, replacement_pause(w.replaced)))
            }
            // A failed mint: retried after its backoff.
            Phase::Failed => passed(w.claimed_at, failed_mint_pause(w.failures)),
            // An unverified unwrap the agent reported on is settled first.
            Phase::Unwrapped if !w.verified && decisive => false,
            // Expired before this start's agent took it: replaced a few times, paced.
            Phase::Expired if !new_start && w.replaced < MAX_REPLACEMENTS && !took => {
                passed(w.expires_at, replacement_pause(w.replaced))
            }
            // Settled: a new start of the agent container gets a fresh wrap.
            _ => new_start && s.agent_container.is_some(),
        };
        if owed { Owed::Mint } else { Owed::Nothing }
    }

    #[test]
    fn invariants_hold_on_random_inputs() {
        let mut rng = Rng::new(1);
        // How often each kind of mint was owed (the liveness check must have had work).
        let mut owed_kinds: BTreeMap<String, u32> = BTreeMap::new();
        for case in 0..20_000 {
            let (pods, wraps, conflicts, untrusted, now) = random_case(&mut rng);
            let plan = if rng.chance(500) {
                run_untrusted(&settings(), &pods, &wraps, &conflicts, &untrusted, now)
            } else {
                // Nothing renewed since the operator started.
                plan(&Input {
                    settings: &settings(),
                    pods: &pods,
                    conflicts: &conflicts,
                    wraps: &wraps,
                    untrusted: &untrusted,
                    last_lookup: &HashMap::new(),
                    last_renewal: &HashMap::new(),
                    now: t(now),
                })
            };
            let ctx = format!(
                "case {case}: pods {pods:?}\nwraps {wraps:?}\nuntrusted {untrusted:?}\nplan {plan:?}"
            );
            // An untrusted record is never touched, and a pod needing its name is reported.
            for action in &plan.actions {
                if let Action::Issue(i) = action {
                    assert!(
                        !untrusted.contains(&i.secret),
                        "claimed an untrusted name: {ctx}"
                    );
                }
            }
            for (pod, name) in &plan.names_taken {
                assert!(untrusted.contains(name), "{ctx}");
                assert!(pods.iter().any(|p| &p.name == pod), "{ctx}");
            }
            for p in &pods {
                let name = secret_name(p, "b");
                if untrusted.contains(&name)
                    && is_valid_secret_name(&name)
                    && !p.terminating
                    && !p.finished
                    && !conflicts.contains_key(&p.name)
                    && !wraps.iter().any(|w| w.pod_uid == p.uid)
                {
                    assert_eq!(plan.names_taken.get(&p.name), Some(&name), "{ctx}");
                }
            }
            let mut touched_records = std::collections::HashSet::new();
            let mut issued_uids = std::collections::HashSet::new();
            for action in &plan.actions {
                let record = match action {
                    Action::Issue(i) => {
                        // One mint per pod start, never for a pod that cannot hold it.
                        assert!(issued_uids.insert(i.pod_uid.clone()), "two mints: {ctx}");
                        let p = pods
                            .iter()
                            .find(|p| p.uid == i.pod_uid)
                            .expect("pod exists");
                        assert!(
                            !p.terminating && !p.finished,
                            "mint for a leaving pod: {ctx}"
                        );
                        // No new mint for a conflicted pod, with or without a record.
                        assert!(
                            !conflicts.contains_key(&p.name),
                            "mint despite conflict: {ctx}"
                        );
                        match &i.replaces {
                            None => {
                                assert!(
                                    !wraps
                                        .iter()
                                        .any(|w| w.pod_uid == p.uid || w.secret == i.secret),
                                    "second record for a pod: {ctx}"
                                );
                                None
                            }
                            Some(old) => {
                                // A delivered, outstanding wrap is never replaced.
                                assert_ne!(old.phase, Phase::Issued, "replaced a live wrap: {ctx}");
                                Some(old.secret.clone())
                            }
                        }
                    }
                    Action::Lookup { wrap, .. }
                    | Action::ProbeExpiry { wrap }
                    | Action::Settle { wrap, .. } => Some(wrap.secret.clone()),
                    Action::Renew { wrap } => {
                        // Only a token the pod's agent took, and only while its pod lives.
                        assert_eq!(wrap.phase, Phase::Unwrapped, "renewed: {ctx}");
                        assert!(wrap.accessor.is_some(), "{ctx}");
                        let pod = pods.iter().find(|p| p.uid == wrap.pod_uid);
                        assert!(
                            !wrap.deleting && pod.is_some_and(|p| !p.finished),
                            "renewed the token of a pod that is gone: {ctx}"
                        );
                        Some(wrap.secret.clone())
                    }
                    Action::Cleanup { wrap, revoke } => {
                        let pod = pods.iter().find(|p| p.uid == wrap.pod_uid);
                        assert!(
                            wrap.deleting || pod.is_none_or(|p| p.finished),
                            "cleanup of a record whose pod is alive: {ctx}"
                        );
                        // Nothing minted is left alive that nobody holds.
                        if wrap.phase == Phase::Issued {
                            assert!(revoke.wrap() || wrap.wrap_accessor.is_none(), "{ctx}");
                            assert!(revoke.token() || wrap.accessor.is_none(), "{ctx}");
                        }
                        Some(wrap.secret.clone())
                    }
                };
                if let Some(secret) = record {
                    assert!(
                        touched_records.insert(secret),
                        "two steps for one record: {ctx}"
                    );
                }
            }
            // Liveness, exactly: every pod owed a mint this round is planned one (of the pods
            // asking for one free name, exactly one), and no other pod is.
            let mut minted: BTreeMap<&str, &Issue> = BTreeMap::new();
            for action in &plan.actions {
                if let Action::Issue(i) = action {
                    minted.insert(&i.pod_uid, i);
                }
            }
            let mut asking: BTreeMap<String, Vec<&str>> = BTreeMap::new();
            for p in &pods {
                let mint = minted.get(p.uid.as_str());
                match owed(&settings(), p, &wraps, &conflicts, &untrusted, t(now)) {
                    Owed::Nothing => assert!(mint.is_none(), "{} owed nothing: {ctx}", p.name),
                    Owed::Mint => {
                        let own = wraps.iter().find(|w| w.pod_uid == p.uid);
                        let kind = own.map_or(String::new(), |w| {
                            let refused = if w.refused_by_agent() { " refused" } else { "" };
                            format!("{:?}{refused}", w.phase)
                        });
                        *owed_kinds.entry(kind).or_default() += 1;
                        assert!(
                            mint.is_some_and(|i| i.replaces.as_ref() == own),
                            "{} owed a mint for its record, planned none: {ctx}",
                            p.name
                        );
                    }
                    Owed::Record(name) => asking.entry(name).or_default().push(&p.uid),
                }
            }
            for (name, uids) in &asking {
                let kind = if uids.len() > 1 { "shared" } else { "first" };
                *owed_kinds.entry(kind.into()).or_default() += 1;
                let got: Vec<&&Issue> = minted.values().filter(|i| &i.secret == name).collect();
                assert!(
                    matches!(&got[..], [i] if uids.contains(&i.pod_uid.as_str()) && i.replaces.is_none()),
                    "pods {uids:?} owed a first record {name}, planned {got:?}: {ctx}"
                );
                for uid in uids {
                    assert!(minted.get(uid).is_none_or(|i| &i.secret == name), "{ctx}");
                }
            }
            // A held token of a live pod is never left to die: renewed, or due at the wake.
            for w in &wraps {
                let alive = pods
                    .iter()
                    .any(|p| p.uid == w.pod_uid && !p.finished && !w.deleting);
                if alive && w.phase == Phase::Unwrapped && w.accessor.is_some() {
                    assert!(
                        touched_records.contains(&w.secret)
                            || plan.renew_at.is_some_and(|at| at <= t(now + 300)),
                        "held token neither renewed nor due: {ctx}"
                    );
                }
            }
        }
        let kinds = [
            "Claimed",
            "Failed",
            "Failed refused",
            "Expired",
            "Unwrapped",
            "Tampered",
            "Revoked",
            "first",
            "shared",
        ];
        for kind in kinds {
            assert!(
                owed_kinds.get(kind).is_some_and(|n| *n >= 10),
                "{kind}: {owed_kinds:?}"
            );
        }
    }

    #[test]
    fn renewals_never_reach_past_the_token_ttl() {
        let w = Duration::from_secs(600);
        // No tokenTTL: the window.
        assert_eq!(renewal_increment(w, None, Some(t(0)), t(100)), Some(w));
        // A 1 h tokenTTL: the window until the last 10 minutes, then what is left.
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(renewal_increment(w, hour, Some(t(0)), t(100)), Some(w));
        assert_eq!(
            renewal_increment(w, hour, Some(t(0)), t(3400)),
            Some(Duration::from_secs(200))
        );
        assert_eq!(renewal_increment(w, hour, Some(t(0)), t(3600)), None);
        assert_eq!(renewal_increment(w, hour, Some(t(0)), t(4000)), None);
    }

    #[test]
    fn held_tokens_are_renewed_every_half_window_while_their_pod_lives() {
        let s = settings();
        let mut w = issued("a", 0);
        w.phase = Phase::Unwrapped;
        let at = |pods: &[PodView], renewed: Option<i64>, now: i64| {
            let last: HashMap<String, Timestamp> = renewed
                .map(|r| (w.secret.clone(), t(r)))
                .into_iter()
                .collect();
            plan(&Input {
                settings: &s,
                pods,
                conflicts: &BTreeMap::new(),
                wraps: std::slice::from_ref(&w),
                untrusted: &BTreeSet::new(),
                last_lookup: &HashMap::new(),
                last_renewal: &last,
                now: t(now),
            })
        };
        let renew = vec![Action::Renew { wrap: w.clone() }];
        // Never renewed since the operator started: at once.
        assert_eq!(at(&[pod("a")], None, 70).actions, renew);
        // Renewed at 100: next at 100 + 300 (half of the 600 s window).
        let p = at(&[pod("a")], Some(100), 399);
        assert!(p.actions.is_empty(), "{p:?}");
        assert_eq!((p.wake_at, p.renew_at), (None, Some(t(400))));
        assert_eq!(at(&[pod("a")], Some(100), 400).actions, renew);
        // A terminating pod still runs its agent: still renewed.
        let leaving = PodView {
            terminating: true,
            ..pod("a")
        };
        assert_eq!(at(&[leaving], Some(100), 400).actions, renew);
        // Pod gone or finished: cleaned up, never renewed.
        let finished = PodView {
            finished: true,
            ..pod("a")
        };
        for pods in [vec![], vec![finished]] {
            let p = at(&pods, None, 400);
            assert!(matches!(p.actions[..], [Action::Cleanup { .. }]), "{p:?}");
        }
        // Nothing taken, nothing renewed: an outstanding, expired or tampered wrap's token is
        // left to die by its own TTL.
        for phase in [
            Phase::Issued,
            Phase::Expired,
            Phase::Tampered,
            Phase::Failed,
        ] {
            let mut other = w.clone();
            other.phase = phase;
            let p = upkeep(&s, &[pod("a")], &[other], &HashMap::new(), t(400));
            assert!(p.actions.is_empty(), "{phase:?}: {p:?}");
        }
        // A binding that may not mint (invalid spec) still renews what its pods hold.
        let p = upkeep(
            &s,
            &[pod("a")],
            std::slice::from_ref(&w),
            &HashMap::new(),
            t(1),
        );
        assert_eq!(p.actions, renew);
    }
}
