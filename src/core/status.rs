//! Computes a binding's status from plain data: counters, records and conditions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use crate::core::pod::PodView;
use crate::core::reason::Reason;
use crate::core::spec::Invalid;
use crate::crd::{AgentSecretBindingStatus, Condition, WrapRecord};
use crate::record::{Phase, WrapState};

/// The condition saying whether the binding serves its pods.
pub const READY: &str = "Ready";
/// The condition saying whether wraps were tampered with or expired.
pub const DEGRADED: &str = "Degraded";
/// kstatus's "still working on it" condition (Flux, `kstatus`): True while the binding cannot
/// serve for a reason that passes by itself (Vault unavailable, retried with backoff).
pub const RECONCILING: &str = "Reconciling";
/// kstatus's "needs a person" condition: True while the binding cannot serve (all or some of
/// its pods) until someone changes something (an invalid spec, a conflict, a refusal).
pub const STALLED: &str = "Stalled";

/// Most per-pod records kept in the status.
pub const MAX_RECORDS: usize = 50;

/// How often a binding's status is rewritten while only its counts, records and messages
/// change: a burst would otherwise write it every round (each write costs the API server more
/// than a pod's own Secret, and wakes the binding for another round).
pub const COUNTS_INTERVAL: Duration = Duration::from_secs(3);

/// True when `status`'s `Ready` condition is `True` (no `Ready` condition yet: not ready); the
/// binding's `cubbyhole_binding_ready` gauge.
pub fn is_ready(status: &AgentSecretBindingStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

/// When a computed status is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// It says what the binding already says.
    Skip,
    /// At once.
    Now,
    /// Not before this instant (only counts, records or messages changed, and the last write
    /// was less than `COUNTS_INTERVAL` ago).
    At(Instant),
}

/// Decides when `next` replaces `previous`: a change of generation or of any condition's
/// status or reason at once, anything else at most once per `COUNTS_INTERVAL` after the
/// last write (`written`, `None`: none by this process).
pub fn when_to_write(
    previous: Option<&AgentSecretBindingStatus>,
    next: &AgentSecretBindingStatus,
    written: Option<Instant>,
    now: Instant,
) -> Write {
    let Some(previous) = previous else {
        return Write::Now;
    };
    if previous == next {
        return Write::Skip;
    }
    if previous.observed_generation != next.observed_generation
        || verdicts(previous) != verdicts(next)
    {
        return Write::Now;
    }
    match written.map(|at| at + COUNTS_INTERVAL) {
        Some(due) if due > now => Write::At(due),
        _ => Write::Now,
    }
}

/// Each condition's type, status and reason (not its message or times), in type order.
fn verdicts(s: &AgentSecretBindingStatus) -> Vec<(&str, &str, &str)> {
    let mut v: Vec<_> = s
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    v.sort_unstable();
    v
}

/// What went wrong in this reconcile beyond the records themselves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Problems {
    /// The spec cannot be served.
    pub invalid: Option<Invalid>,
    /// Vault is down or could not be logged into (message without secrets).
    pub vault_unavailable: Option<String>,
    /// Pod name -> the Secret name that belongs to something else.
    pub names_taken: BTreeMap<String, String>,
    /// Pod name -> the Secret name it asks for, which is not a valid name.
    pub invalid_names: BTreeMap<String, String>,
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Selected pods.
    pub pods: &'a [PodView],
    /// Records after this reconcile's actions.
    pub wraps: &'a [WrapState],
    /// Pod name -> other bindings selecting it.
    pub conflicts: &'a BTreeMap<String, Vec<String>>,
    /// Problems met.
    pub problems: &'a Problems,
    /// The previous status (keeps transition times).
    pub previous: Option<&'a AgentSecretBindingStatus>,
    /// The clock.
    pub now: Timestamp,
}

/// The status to write.
pub fn compute(input: &StatusInput) -> AgentSecretBindingStatus {
    let live: Vec<&WrapState> = input
        .wraps
        .iter()
        .filter(|w| input.pods.iter().any(|p| p.uid == w.pod_uid && !p.finished))
        .collect();
    let count = |f: &dyn Fn(&WrapState) -> bool| live.iter().filter(|w| f(w)).count() as u32;
    let pending = count(&|w| matches!(w.phase, Phase::Issued | Phase::Claimed));
    let unwrapped = count(&|w| w.phase == Phase::Unwrapped);
    let expired = count(&|w| w.phase == Phase::Expired);
    let tampered = count(&|w| w.phase == Phase::Tampered);
    let failed: Vec<&&WrapState> = live.iter().filter(|w| w.phase == Phase::Failed).collect();

    let ready = ready_condition(input, &failed);
    let degraded = if tampered > 0 {
        (
            true,
            Reason::Tampered,
            format!(
                "{tampered} wrap(s) were consumed by someone other than the pod's agent; their tokens were revoked"
            ),
        )
    } else if expired > 0 {
        (
            true,
            Reason::WrapsExpired,
            format!(
                "{expired} wrap(s) expired unconsumed: the pods' agents did not unwrap in time; check the agents' init containers"
            ),
        )
    } else {
        (
            false,
            Reason::AsExpected,
            "every wrap is pending or consumed".to_string(),
        )
    };
    let retrying = !ready.0 && ready.1 == Reason::VaultUnavailable;
    let stalled = !ready.0 && !retrying;
    let as_ready = |on: bool, nothing: &str| {
        if on {
            (true, ready.1, ready.2.clone())
        } else {
            (false, Reason::AsExpected, nothing.to_string())
        }
    };
    let reconciling = as_ready(retrying, "nothing is being retried");
    let stalled = as_ready(stalled, "nothing waits for a person");
    let conditions = vec![
        condition(input, READY, ready.0, ready.1, ready.2.clone()),
        condition(input, DEGRADED, degraded.0, degraded.1, degraded.2),
        condition(
            input,
            RECONCILING,
            reconciling.0,
            reconciling.1,
            reconciling.2,
        ),
        condition(input, STALLED, stalled.0, stalled.1, stalled.2),
    ];

    let mut records: Vec<WrapRecord> = live.iter().map(|w| record(w)).collect();
    records.sort_by_key(|r| (severity(r.phase), r.pod.clone()));
    records.truncate(MAX_RECORDS);

    AgentSecretBindingStatus {
        observed_generation: input.generation,
        conditions,
        pods: input.pods.iter().filter(|p| !p.finished).count() as u32,
        pending,
        unwrapped,
        expired,
        tampered,
        records,
    }
}

fn ready_condition(input: &StatusInput, failed: &[&&WrapState]) -> (bool, Reason, String) {
    let p = input.problems;
    if let Some(invalid) = &p.invalid {
        return (false, invalid.reason, invalid.message.clone());
    }
    if let Some(msg) = &p.vault_unavailable {
        return (
            false,
            Reason::VaultUnavailable,
            format!("{msg}; retrying with backoff"),
        );
    }
    if let Some(w) = failed.iter().find(|w| w.refused_by_agent()) {
        return (
            false,
            Reason::AgentRefused,
            format!(
                "the agent of pod {} refused its wrap ({}); a fresh wrap is tried up to {} times per start: check the init container's --expect-path and who writes its Secret",
                w.pod,
                w.message.as_deref().unwrap_or("no detail"),
                crate::core::plan::MAX_REPLACEMENTS
            ),
        );
    }
    if let Some(w) = failed.first() {
        return (
            false,
            Reason::VaultRefused,
            format!(
                "Vault refused the token for pod {}: {}",
                w.pod,
                w.message.as_deref().unwrap_or("no detail")
            ),
        );
    }
    if let Some((pod, others)) = input.conflicts.iter().next() {
        return (
            false,
            Reason::Conflict,
            format!(
                "{} pod(s) are selected by other bindings too (pod {pod} also by {}); they get no token from either until the selectors no longer overlap",
                input.conflicts.len(),
                others.join(", ")
            ),
        );
    }
    if let Some((pod, secret)) = p.invalid_names.iter().next() {
        return (
            false,
            Reason::InvalidSecretName,
            format!(
                "pod {pod} asks for Secret name {secret:?} (annotation cubbyhole.dev/secret-name), which is not a valid Secret name: use lowercase letters, digits, '-' and '.'"
            ),
        );
    }
    if let Some((pod, secret)) = p.names_taken.iter().next() {
        return (
            false,
            Reason::SecretNameTaken,
            format!(
                "Secret {secret} for pod {pod} exists and is not managed by this binding; it was left untouched: rename it or set the pod annotation cubbyhole.dev/secret-name"
            ),
        );
    }
    (
        true,
        Reason::Delivering,
        format!(
            "serving {} pod(s)",
            input.pods.iter().filter(|p| !p.finished).count()
        ),
    )
}

fn condition(
    input: &StatusInput,
    type_: &str,
    status: bool,
    reason: Reason,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let previous = input
        .previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => input.now.to_string(),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        last_transition_time,
        observed_generation: input.generation,
    }
}

/// Order of records in the status: what needs a person first.
fn severity(phase: Phase) -> u8 {
    match phase {
        Phase::Tampered => 0,
        Phase::Failed => 1,
        Phase::Expired => 2,
        Phase::Claimed => 3,
        Phase::Issued => 4,
        Phase::Revoked => 5,
        Phase::Unwrapped => 6,
    }
}

fn record(w: &WrapState) -> WrapRecord {
    WrapRecord {
        pod: w.pod.clone(),
        uid: w.pod_uid.clone(),
        start: w.start,
        replaced: w.replaced,
        secret: w.secret.clone(),
        phase: w.phase,
        verified: w.verified,
        wrap_accessor: w.wrap_accessor.clone(),
        accessor: w.accessor.clone(),
        issued_at: w.issued_at.map(|t| t.to_string()),
        expires_at: w.expires_at.map(|t| t.to_string()),
        message: w.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(n: &str) -> PodView {
        PodView {
            name: n.into(),
            uid: format!("u-{n}"),
            ..Default::default()
        }
    }

    fn wrap(n: &str, phase: Phase) -> WrapState {
        WrapState {
            secret: format!("{n}-s"),
            resource_version: None,
            pod: n.into(),
            pod_uid: format!("u-{n}"),
            start: 0,
            phase,
            claimed_at: None,
            wrap_accessor: Some("wa".into()),
            accessor: Some("a".into()),
            previous_accessor: None,
            issued_at: None,
            expires_at: None,
            verified: false,
            message: Some("permission denied".into()),
            receipts_after: None,
            replaced: 0,
            reported: None,
            failures: 0,
            has_token: false,
            deleting: false,
            authenticity: crate::record::seal::Authenticity::Authentic,
            annotations: Default::default(),
        }
    }

    fn compute_with(
        pods: &[PodView],
        wraps: &[WrapState],
        problems: &Problems,
        conflicts: &BTreeMap<String, Vec<String>>,
    ) -> AgentSecretBindingStatus {
        compute(&StatusInput {
            generation: Some(3),
            pods,
            wraps,
            conflicts,
            problems,
            previous: None,
            now: Timestamp::from_second(1_800_000_000).unwrap(),
        })
    }

    fn ready(s: &AgentSecretBindingStatus) -> (&str, &str) {
        let c = &s.conditions[0];
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn counts_and_orders_records_problems_first() {
        let pods = [pod("a"), pod("b"), pod("c"), pod("d")];
        let wraps = [
            wrap("a", Phase::Unwrapped),
            wrap("b", Phase::Issued),
            wrap("c", Phase::Expired),
            wrap("gone", Phase::Issued),
        ];
        let s = compute_with(&pods, &wraps, &Problems::default(), &BTreeMap::new());
        assert_eq!(
            (s.pods, s.pending, s.unwrapped, s.expired, s.tampered),
            (4, 1, 1, 1, 0)
        );
        assert_eq!(s.records[0].phase.as_str(), "Expired");
        assert_eq!(s.records.len(), 3);
        assert_eq!(ready(&s), ("True", "Delivering"));
        assert_eq!(s.conditions[1].reason, "WrapsExpired");
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn degraded_names_tampering_before_expiry_and_is_false_otherwise() {
        let pods = [pod("a"), pod("b")];
        let degraded = |wraps: &[WrapState]| {
            let s = compute_with(&pods, wraps, &Problems::default(), &BTreeMap::new());
            let c = &s.conditions[1];
            (c.type_.clone(), c.status.clone(), c.reason.clone())
        };
        let d = |status: &str, reason: &str| {
            (DEGRADED.to_string(), status.to_string(), reason.to_string())
        };
        assert_eq!(
            degraded(&[wrap("a", Phase::Tampered), wrap("b", Phase::Expired)]),
            d("True", "Tampered")
        );
        assert_eq!(
            degraded(&[wrap("a", Phase::Expired), wrap("b", Phase::Unwrapped)]),
            d("True", "WrapsExpired")
        );
        assert_eq!(
            degraded(&[wrap("a", Phase::Unwrapped), wrap("b", Phase::Issued)]),
            d("False", "AsExpected")
        );
        assert_eq!(degraded(&[]), d("False", "AsExpected"));
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let pods = [pod("a")];
        let before = Timestamp::from_second(1_700_000_000).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |previous: &AgentSecretBindingStatus, wraps: &[WrapState]| {
            let s = compute(&StatusInput {
                generation: Some(3),
                pods: &pods,
                wraps,
                conflicts: &BTreeMap::new(),
                problems: &Problems::default(),
                previous: Some(previous),
                now,
            });
            (
                s.conditions[0].last_transition_time.clone(),
                s.conditions[1].last_transition_time.clone(),
            )
        };
        let mut previous = compute_with(&pods, &[], &Problems::default(), &BTreeMap::new());
        for c in &mut previous.conditions {
            c.last_transition_time = before.to_string();
        }
        // Ready stays True and Degraded stays False: both keep the earlier time.
        assert_eq!(
            at(&previous, &[wrap("a", Phase::Issued)]),
            (before.to_string(), before.to_string())
        );
        // Degraded turns True: only its time moves.
        assert_eq!(
            at(&previous, &[wrap("a", Phase::Tampered)]),
            (before.to_string(), now.to_string())
        );
    }

    #[test]
    fn ready_reasons_in_priority_order() {
        let pods = [pod("a")];
        let mut problems = Problems {
            invalid: Some(Invalid {
                reason: Reason::RoleNotAllowed,
                message: "no".into(),
            }),
            vault_unavailable: Some("down".into()),
            ..Default::default()
        };
        let none = BTreeMap::new();
        assert_eq!(
            ready(&compute_with(&pods, &[], &problems, &none)),
            ("False", "RoleNotAllowed")
        );
        problems.invalid = None;
        assert_eq!(
            ready(&compute_with(&pods, &[], &problems, &none)),
            ("False", "VaultUnavailable")
        );
        problems.vault_unavailable = None;
        let s = compute_with(&pods, &[wrap("a", Phase::Failed)], &problems, &none);
        assert_eq!(ready(&s), ("False", "VaultRefused"));
        let mut refused = wrap("a", Phase::Failed);
        refused.issued_at = Some(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let s = compute_with(&pods, &[refused], &problems, &none);
        assert_eq!(ready(&s).0, "False");
        assert_eq!(ready(&s).1, "AgentRefused");
        assert!(s.conditions[0].message.contains("permission denied"));
        let mut conflicts = BTreeMap::new();
        conflicts.insert("a".to_string(), vec!["other".to_string()]);
        let s = compute_with(&pods, &[], &problems, &conflicts);
        assert_eq!(ready(&s), ("False", "Conflict"));
        assert!(s.conditions[0].message.contains("other"));
        problems.invalid_names.insert("a".into(), "Bad".into());
        assert_eq!(
            ready(&compute_with(&pods, &[], &problems, &none)),
            ("False", "InvalidSecretName")
        );
        problems.invalid_names.clear();
        problems.names_taken.insert("a".into(), "taken".into());
        assert_eq!(
            ready(&compute_with(&pods, &[], &problems, &none)),
            ("False", "SecretNameTaken")
        );
    }

    #[test]
    fn kstatus_reads_a_wait_as_reconciling_and_a_problem_for_a_person_as_stalled() {
        let pods = [pod("a")];
        let none = BTreeMap::new();
        let of = |s: &AgentSecretBindingStatus, type_: &str| {
            let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
            (c.status.clone(), c.reason.clone())
        };
        let serving = compute_with(&pods, &[], &Problems::default(), &none);
        assert_eq!(
            of(&serving, RECONCILING),
            ("False".into(), "AsExpected".into())
        );
        assert_eq!(of(&serving, STALLED), ("False".into(), "AsExpected".into()));
        let down = Problems {
            vault_unavailable: Some("down".into()),
            ..Default::default()
        };
        let s = compute_with(&pods, &[], &down, &none);
        assert_eq!(
            of(&s, RECONCILING),
            ("True".into(), "VaultUnavailable".into())
        );
        assert_eq!(of(&s, STALLED).0, "False");
        let invalid = Problems {
            invalid: Some(Invalid {
                reason: Reason::RoleNotAllowed,
                message: "no".into(),
            }),
            ..Default::default()
        };
        let s = compute_with(&pods, &[], &invalid, &none);
        assert_eq!(of(&s, STALLED), ("True".into(), "RoleNotAllowed".into()));
        assert_eq!(of(&s, RECONCILING).0, "False");
        let mut conflicts = BTreeMap::new();
        conflicts.insert("a".to_string(), vec!["other".to_string()]);
        let s = compute_with(&pods, &[], &Problems::default(), &conflicts);
        assert_eq!(of(&s, STALLED), ("True".into(), "Conflict".into()));
    }

    #[test]
    fn records_are_bounded() {
        let pods: Vec<PodView> = (0..80).map(|i| pod(&format!("p{i}"))).collect();
        let wraps: Vec<WrapState> = (0..80)
            .map(|i| wrap(&format!("p{i}"), Phase::Issued))
            .collect();
        let s = compute_with(&pods, &wraps, &Problems::default(), &BTreeMap::new());
        assert_eq!(s.records.len(), MAX_RECORDS);
        assert_eq!(s.pending, 80);
    }

    fn status(ready: &str, reason: &str, message: &str, pending: u32) -> AgentSecretBindingStatus {
        AgentSecretBindingStatus {
            observed_generation: Some(1),
            conditions: vec![Condition {
                type_: READY.into(),
                status: ready.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: "2026-01-01T00:00:00Z".into(),
                observed_generation: Some(1),
            }],
            pending,
            ..Default::default()
        }
    }

    #[test]
    fn counts_are_written_at_most_once_per_interval_verdicts_at_once() {
        let now = Instant::now();
        let just = Some(now - Duration::from_millis(300));
        let long_ago = Some(now - COUNTS_INTERVAL);
        let before = status("True", "Delivering", "serving 3 pod(s)", 1);
        let counts = status("True", "Delivering", "serving 9 pod(s)", 7);
        let verdict = status("False", "VaultUnavailable", "serving 3 pod(s)", 1);
        let reason = status("True", "Other", "serving 3 pod(s)", 1);
        let mut generation = counts.clone();
        generation.observed_generation = Some(2);
        assert_eq!(when_to_write(None, &before, just, now), Write::Now);
        assert_eq!(
            when_to_write(Some(&before), &before, None, now),
            Write::Skip
        );
        let due = now - Duration::from_millis(300) + COUNTS_INTERVAL;
        assert_eq!(
            when_to_write(Some(&before), &counts, just, now),
            Write::At(due)
        );
        assert_eq!(
            when_to_write(Some(&before), &counts, long_ago, now),
            Write::Now
        );
        assert_eq!(when_to_write(Some(&before), &counts, None, now), Write::Now);
        for changed in [&verdict, &reason, &generation] {
            assert_eq!(when_to_write(Some(&before), changed, just, now), Write::Now);
        }
        let mut degraded = before.clone();
        degraded
            .conditions
            .push(status("True", "Expired", "", 0).conditions[0].clone());
        degraded.conditions[1].type_ = DEGRADED.into();
        assert_eq!(
            when_to_write(Some(&before), &degraded, just, now),
            Write::Now
        );
    }
}
