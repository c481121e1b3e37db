//! Every write to a per-pod Secret. A pod start is one write: the record created with its wrap
//! (or a failed mint), or an older record taken over by a JSON merge patch guarded by
//! `resourceVersion`, as is every later change, so two writers can never both win. Every write
//! carries a fresh signature over the annotations it leaves (see [`crate::record::seal`]): the patch
//! builders are pure and compute the resulting annotations from the ones read plus the change.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::agent::receipt::Receipt;
use crate::core::plan::Issue;
use crate::record::seal::{Fields, RecordKeys};
use crate::record::{
    BINDING_LABEL, MANAGED_BY, MANAGED_BY_LABEL, Phase, SECRET_FINALIZER, WrapState, ann,
};
use crate::vault::SecretString;

/// Why a record write did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// A Secret of that name exists and is not this binding's record.
    Taken,
    /// Someone else changed the record first; the next reconcile sees their change.
    Lost,
    /// The API server failed.
    Kube(kube::Error),
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Signs one binding's records in one namespace.
#[derive(Clone, Copy, Debug)]
pub struct Sealer<'a> {
    /// The records' namespace.
    pub namespace: &'a str,
    /// The binding (value of the binding label).
    pub binding: &'a str,
    /// Record-signing keys.
    pub keys: &'a RecordKeys,
}

/// A change to one annotation: a new value, or `None` to remove it.
pub type Change = (&'static str, Option<String>);

impl Sealer<'_> {
    /// The signature of record `secret` carrying `annotations`.
    pub fn sign(&self, secret: &str, annotations: &BTreeMap<String, String>) -> String {
        self.keys.sign(&Fields {
            namespace: self.namespace,
            name: secret,
            binding: self.binding,
            annotations,
        })
    }

    /// Applies `changes` to the signed annotations `prior` and signs the result. Returns the
    /// annotation part of a merge patch (the changes plus the new signature) and the signed
    /// annotations the record carries once it is applied.
    pub fn patch(
        &self,
        secret: &str,
        prior: &BTreeMap<String, String>,
        changes: &[Change],
    ) -> (serde_json::Map<String, Value>, BTreeMap<String, String>) {
        let mut after = prior.clone();
        let mut patch = serde_json::Map::new();
        for (k, v) in changes {
            match v {
                Some(v) => after.insert(k.to_string(), v.clone()),
                None => after.remove(*k),
            };
            patch.insert(k.to_string(), v.clone().map_or(Value::Null, Value::String));
        }
        after.retain(|k, _| ann::is_signed(k));
        // The message is pinned to what is signed (an unvouched one from an older record is
        // removed), so the record reads back exactly as signed.
        patch.insert(
            ann::MESSAGE.into(),
            after
                .get(ann::MESSAGE)
                .map_or(Value::Null, |m| Value::String(m.clone())),
        );
        patch.insert(
            ann::SIGNATURE.into(),
            Value::String(self.sign(secret, &after)),
        );
        (patch, after)
    }
}

/// One binding's records: where they are written and how they are signed.
#[derive(Clone, Copy)]
pub struct Records<'a> {
    /// Secrets in the binding's namespace.
    pub api: &'a Api<Secret>,
    /// Signs every write.
    pub sealer: Sealer<'a>,
}

/// The annotations every pod start's record carries, whatever its mint gave.
pub fn start_changes(issue: &Issue) -> Vec<Change> {
    let mut changes = vec![
        (ann::POD, Some(issue.pod.clone())),
        (ann::POD_UID, Some(issue.pod_uid.clone())),
        (ann::START, Some(issue.start.to_string())),
        (
            ann::REPLACED,
            (issue.replaced > 0).then(|| issue.replaced.to_string()),
        ),
    ];
    if let Some(t) = issue.receipts_after {
        changes.push((ann::RECEIPTS_AFTER, Some(t.to_string())));
    }
    changes
}

/// The annotation changes of a new start taking `old` over: every trace of the previous wrap
/// cleared, and the previous start's token remembered.
pub fn takeover_changes(issue: &Issue, old: &WrapState) -> Vec<Change> {
    let mut changes = start_changes(issue);
    for k in [
        ann::WRAP_ACCESSOR,
        ann::ACCESSOR,
        ann::ISSUED_AT,
        ann::EXPIRES_AT,
        ann::VERIFIED,
        ann::MESSAGE,
        ann::VAULT_SEEN_AT,
        ann::CLAIMED_AT,
        ann::RECEIPT,
    ] {
        changes.push((k, None));
    }
    if issue.start != old.start {
        changes.push((ann::PREVIOUS_ACCESSOR, old.accessor.clone()));
    }
    changes
}

/// The annotation changes of a delivery: Issued, with the wrap's and token's accessors.
pub fn deliver_changes(
    wrap_accessor: &str,
    token_accessor: &str,
    issued_at: Timestamp,
    expires_at: Timestamp,
) -> Vec<Change> {
    vec![
        (ann::PHASE, Some(Phase::Issued.as_str().to_string())),
        (ann::CLAIMED_AT, None),
        (ann::WRAP_ACCESSOR, Some(wrap_accessor.to_string())),
        (ann::ACCESSOR, Some(token_accessor.to_string())),
        (ann::ISSUED_AT, Some(issued_at.to_string())),
        (ann::EXPIRES_AT, Some(expires_at.to_string())),
        (ann::MESSAGE, None),
        (ann::FAILURES, None),
    ]
}

/// The annotation changes of a failed mint, the `failures`th in a row (retried after a pause
/// that doubles with each, [`crate::core::plan::failed_mint_pause`]).
pub fn failure_changes(message: &str, now: Timestamp, failures: u32) -> Vec<Change> {
    vec![
        (ann::PHASE, Some(Phase::Failed.as_str().to_string())),
        (ann::CLAIMED_AT, Some(now.to_string())),
        (ann::MESSAGE, Some(truncate(message, 512))),
        (ann::FAILURES, Some(failures.to_string())),
    ]
}

/// Which failure in a row a failed mint for `issue` is: one more than the record it replaces
/// had, if that one had failed too.
pub fn failures_after(issue: &Issue) -> u32 {
    issue
        .replaces
        .as_ref()
        .filter(|w| w.phase == Phase::Failed)
        .map_or(1, |w| w.failures.saturating_add(1))
}

/// The annotation changes of settling a wrap in `phase`, for start `start`.
pub fn settle_changes(phase: Phase, verified: bool, message: &str, start: u32) -> Vec<Change> {
    vec![
        (ann::PHASE, Some(phase.as_str().to_string())),
        (ann::VERIFIED, verified.then(|| "true".to_string())),
        (ann::MESSAGE, Some(truncate(message, 512))),
        (ann::START, Some(start.to_string())),
    ]
}

/// The annotation changes of issuing `issue`, whose mint ended as `ending` (a delivery or a
/// failure): the start's, then the ending's.
pub fn issue_changes(issue: &Issue, ending: Vec<Change>) -> Vec<Change> {
    let mut changes = match &issue.replaces {
        None => start_changes(issue),
        Some(old) => takeover_changes(issue, old),
    };
    changes.extend(ending);
    changes
}

/// What an issue write puts in the Secret's data: the wrapping token under its key, or
/// nothing (a failed mint).
pub type WrapData<'a> = Option<(&'a str, &'a SecretString)>;

fn data_of(data: WrapData) -> Value {
    match data {
        Some((key, token)) => json!({ key: ByteString(token.expose().as_bytes().to_vec()) }),
        None => Value::Null,
    }
}

/// The Secret that records a new pod start (owned by the pod, with the finalizer) carrying
/// `changes` and `data`.
pub fn issue_secret(sealer: &Sealer, issue: &Issue, changes: &[Change], data: WrapData) -> Secret {
    let (patch, _) = sealer.patch(&issue.secret, &BTreeMap::new(), changes);
    let annotations = patch
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
        .collect();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(issue.secret.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (BINDING_LABEL.to_string(), sealer.binding.to_string()),
            ])),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: issue.pod.clone(),
                uid: issue.pod_uid.clone(),
                ..Default::default()
            }]),
            finalizers: Some(vec![SECRET_FINALIZER.to_string()]),
            ..Default::default()
        },
        data: data.map(|(key, token)| {
            BTreeMap::from([(
                key.to_string(),
                ByteString(token.expose().as_bytes().to_vec()),
            )])
        }),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The patch that turns record `old` into the record of a new start, guarded by the
/// resourceVersion it was read at.
pub fn issue_patch(sealer: &Sealer, old: &WrapState, changes: &[Change], data: WrapData) -> Value {
    let (annotations, _) = sealer.patch(&old.secret, &old.annotations, changes);
    json!({
        "metadata": { "resourceVersion": old.resource_version, "annotations": annotations },
        "data": data_of(data),
    })
}

/// True for a Secret that is a record of the sealer's binding that the operator signed.
pub fn is_own_record(sealer: &Sealer, secret: &Secret) -> bool {
    let labels = secret.labels();
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(BINDING_LABEL).map(String::as_str) == Some(sealer.binding)
        && WrapState::from_secret(secret, None, sealer.keys)
            .is_some_and(|w| w.authenticity == crate::record::seal::Authenticity::Authentic)
}

/// Writes a pod start's record in one write: creates it, or takes `issue.replaces` over
/// (guarded). Returns the new resourceVersion. `Lost`: another writer got there first (the
/// caller revokes what it minted); `Taken`: a Secret of that name is not this binding's.
pub async fn write_issue(
    records: &Records<'_>,
    issue: &Issue,
    changes: &[Change],
    data: WrapData<'_>,
) -> Result<String, WriteError> {
    let api = records.api;
    let Some(old) = &issue.replaces else {
        let secret = issue_secret(&records.sealer, issue, changes, data);
        return match api.create(&PostParams::default(), &secret).await {
            Ok(s) => Ok(s.resource_version().unwrap_or_default()),
            Err(e) if is_conflict(&e) => match api.get_opt(&issue.secret).await {
                // Another writer's record of this binding (it won the race); anything else
                // holding the name (unlabelled, another binding's, a forgery) is not ours to
                // wait for.
                Ok(Some(s)) if is_own_record(&records.sealer, &s) => Err(WriteError::Lost),
                Ok(Some(_)) => Err(WriteError::Taken),
                Ok(None) => Err(WriteError::Lost),
                Err(e) => Err(WriteError::Kube(e)),
            },
            Err(e) => Err(WriteError::Kube(e)),
        };
    };
    let patch = issue_patch(&records.sealer, old, changes, data);
    guarded_patch(api, &old.secret, &patch).await
}

/// The patch that records what the pod's agent reported to the request endpoint (the
/// planner reads it like a termination message), guarded by the resourceVersion read.
pub fn report_patch(sealer: &Sealer, wrap: &WrapState, receipt: &Receipt) -> Value {
    let changes = [(ann::RECEIPT, Some(receipt.to_line()))];
    let (annotations, _) = sealer.patch(&wrap.secret, &wrap.annotations, &changes);
    json!({
        "metadata": { "resourceVersion": wrap.resource_version, "annotations": annotations },
    })
}

/// Records the agent's report in `wrap` (see [`report_patch`]).
pub async fn report(
    records: &Records<'_>,
    wrap: &WrapState,
    receipt: &Receipt,
) -> Result<String, WriteError> {
    let patch = report_patch(&records.sealer, wrap, receipt);
    guarded_patch(records.api, &wrap.secret, &patch).await
}

/// The patch that records a final phase and removes the wrapping token.
pub fn settle_patch(
    sealer: &Sealer,
    wrap: &WrapState,
    phase: Phase,
    verified: bool,
    message: &str,
    start: u32,
) -> Value {
    let changes = settle_changes(phase, verified, message, start);
    let (annotations, _) = sealer.patch(&wrap.secret, &wrap.annotations, &changes);
    json!({
        "metadata": { "resourceVersion": wrap.resource_version, "annotations": annotations },
        "data": null,
    })
}

/// Records a final phase and removes the wrapping token from the Secret.
pub async fn settle(
    records: &Records<'_>,
    wrap: &WrapState,
    phase: Phase,
    verified: bool,
    message: &str,
    start: u32,
) -> Result<String, WriteError> {
    let patch = settle_patch(&records.sealer, wrap, phase, verified, message, start);
    guarded_patch(records.api, &wrap.secret, &patch).await
}

/// The patch that releases a record's finalizer, guarded by the resourceVersion it was read
/// at (when known): a record that changed since is not released.
pub fn release_patch(wrap: &WrapState) -> Value {
    match &wrap.resource_version {
        Some(rv) => json!({ "metadata": { "resourceVersion": rv, "finalizers": null } }),
        None => json!({ "metadata": { "finalizers": null } }),
    }
}

/// Releases the finalizer (guarded) and deletes that very Secret (uid precondition).
/// `Ok(false)` when the record changed since it was read: nothing is removed and the next
/// round sees the change (a token it names now must be revoked first). Idempotent: a record
/// already gone counts as removed.
pub async fn remove(api: &Api<Secret>, wrap: &WrapState) -> Result<bool, kube::Error> {
    let patch = release_patch(wrap);
    match api
        .patch(&wrap.secret, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(s) => {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: s.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&wrap.secret, &dp).await {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(true),
                Err(e) => Err(e),
            }
        }
        Err(e) if is_not_found(&e) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn guarded_patch(api: &Api<Secret>, name: &str, patch: &Value) -> Result<String, WriteError> {
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(s) => Ok(s.resource_version().unwrap_or_default()),
        Err(e) if is_conflict(&e) || is_not_found(&e) => Err(WriteError::Lost),
        Err(e) => Err(WriteError::Kube(e)),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Reads the wrapping token out of a Secret (for lookups); never logged.
pub fn wrapping_token(secret: &Secret, key: &str) -> Option<crate::vault::SecretString> {
    let bytes = secret.data.as_ref()?.get(key)?;
    let text = String::from_utf8(bytes.0.clone()).ok()?;
    (!text.is_empty()).then(|| crate::vault::SecretString::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::seal::Authenticity;
    use crate::vault::SecretString;

    fn keys() -> RecordKeys {
        RecordKeys::new(BTreeMap::from([(1, vec![7; 32])])).unwrap()
    }

    /// Seals binding `b`'s records in namespace `ns`.
    fn sealer(keys: &RecordKeys) -> Sealer<'_> {
        Sealer {
            namespace: "ns",
            binding: "b",
            keys,
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// JSON merge patch (RFC 7386), as the API server applies it.
    fn merge(target: &mut Value, patch: &Value) {
        let Value::Object(fields) = patch else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = json!({});
        }
        let object = target.as_object_mut().unwrap();
        for (k, v) in fields {
            if v.is_null() {
                object.remove(k);
            } else {
                merge(object.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }

    /// Applies `patch` to `secret` as the API server would, with a new resourceVersion.
    fn apply(secret: &Secret, patch: &Value) -> Secret {
        let mut v = serde_json::to_value(secret).unwrap();
        merge(&mut v, patch);
        let rv: u64 = secret.resource_version().unwrap().parse().unwrap();
        v["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
        serde_json::from_value(v).unwrap()
    }

    fn read(secret: &Secret, keys: &RecordKeys) -> WrapState {
        WrapState::from_secret(secret, Some("token"), keys).unwrap()
    }

    fn issue(start: u32, replaces: Option<WrapState>) -> Issue {
        Issue {
            pod: "p".into(),
            pod_uid: "uid-p".into(),
            secret: "p-b-wrap".into(),
            start,
            replaces,
            revoke_previous: None,
            receipts_after: Some(t(-5)),
            replaced: 0,
        }
    }

    /// The record of a first start as created in namespace `ns`, resourceVersion 1.
    fn created(sealer: &Sealer) -> Secret {
        let i = issue(0, None);
        let changes = issue_changes(&i, deliver_changes("wacc-1", "acc-1", t(0), t(60)));
        let token = SecretString::new("s.wrapping-token-1");
        let mut secret = issue_secret(sealer, &i, &changes, Some(("token", &token)));
        secret.metadata.namespace = Some("ns".into());
        secret.metadata.resource_version = Some("1".into());
        secret
    }

    #[test]
    fn every_write_leaves_a_record_whose_signature_verifies() {
        let keys = keys();
        let sealer = sealer(&keys);
        // Issued in one write, then Unwrapped.
        let secret = created(&sealer);
        let w = read(&secret, &keys);
        assert_eq!(
            (w.authenticity, w.phase),
            (Authenticity::Authentic, Phase::Issued)
        );
        assert!(w.has_token && w.accessor.as_deref() == Some("acc-1"));
        assert!(
            !w.annotations
                .values()
                .any(|v| v.contains("s.wrapping-token")),
            "no token in annotations"
        );
        let settled = apply(
            &secret,
            &settle_patch(&sealer, &w, Phase::Unwrapped, true, "verified", 0),
        );
        let w = read(&settled, &keys);
        assert_eq!(
            (w.authenticity, w.phase),
            (Authenticity::Authentic, Phase::Unwrapped)
        );
        assert!(w.verified && !w.has_token);

        // The agent restarts: its mint fails, then the retry delivers, each in one write; the
        // new start remembers the old token.
        let i = issue(1, Some(w.clone()));
        let failed_changes = issue_changes(&i, failure_changes("refused", t(90), 1));
        let failed = apply(&settled, &issue_patch(&sealer, &w, &failed_changes, None));
        let f = read(&failed, &keys);
        assert_eq!(
            (f.authenticity, f.phase, f.has_token),
            (Authenticity::Authentic, Phase::Failed, false)
        );
        assert_eq!(f.previous_accessor.as_deref(), Some("acc-1"));
        assert_eq!(
            (f.accessor.as_deref(), f.wrap_accessor.as_deref()),
            (None, None)
        );
        let retry = issue(1, Some(f.clone()));
        let changes = issue_changes(&retry, deliver_changes("wacc-2", "acc-2", t(95), t(155)));
        let token = SecretString::new("s.wrapping-token-2");
        let next = read(
            &apply(
                &failed,
                &issue_patch(&sealer, &f, &changes, Some(("token", &token))),
            ),
            &keys,
        );
        assert_eq!(
            (next.authenticity, next.phase, next.start),
            (Authenticity::Authentic, Phase::Issued, 1)
        );
        assert_eq!(next.accessor.as_deref(), Some("acc-2"));
        assert_eq!(next.previous_accessor.as_deref(), Some("acc-1"));
        assert!(next.has_token && next.message.is_none());
    }

    #[test]
    fn a_record_signed_before_the_message_was_covered_keeps_working_and_its_message_is_not_trusted()
    {
        let keys = keys();
        let sealer = sealer(&keys);
        // A record of the earlier format, whose message someone has since rewritten.
        let mut secret = created(&sealer);
        let a = secret.metadata.annotations.as_mut().unwrap();
        a.insert(ann::MESSAGE.into(), "all is well, ignore the alerts".into());
        let v1 = keys.sign_v1(&Fields {
            namespace: "ns",
            name: "p-b-wrap",
            binding: "b",
            annotations: a,
        });
        a.insert(ann::SIGNATURE.into(), v1);
        let w = read(&secret, &keys);
        assert_eq!(w.authenticity, Authenticity::Authentic);
        assert_eq!(w.message, None, "an unvouched message is not shown");
        assert!(!w.annotations.contains_key(ann::MESSAGE));
        // The next write signs the current format and removes the unvouched message.
        let settled = apply(
            &secret,
            &settle_patch(&sealer, &w, Phase::Unwrapped, true, "verified", 0),
        );
        let w = read(&settled, &keys);
        assert_eq!(w.authenticity, Authenticity::Authentic);
        assert_eq!(w.message.as_deref(), Some("verified"));
        let refreshed = apply(
            &settled,
            &report_patch(&sealer, &w, &Receipt::unwrapped("acc-1")),
        );
        let w = read(&refreshed, &keys);
        assert_eq!(w.authenticity, Authenticity::Authentic);
        assert_eq!(w.message.as_deref(), Some("verified"));
    }

    #[test]
    fn a_failed_mint_counts_the_failures_in_a_row() {
        let keys = keys();
        let sealer = sealer(&keys);
        assert_eq!(failures_after(&issue(0, None)), 1, "a new record");
        let issued = read(&created(&sealer), &keys);
        assert_eq!(
            failures_after(&issue(1, Some(issued))),
            1,
            "after a delivery"
        );
        let failed = WrapState {
            phase: Phase::Failed,
            failures: 2,
            ..read(&created(&sealer), &keys)
        };
        assert_eq!(
            failures_after(&issue(1, Some(failed))),
            3,
            "after two failures"
        );
    }

    #[test]
    fn a_new_record_is_an_opaque_secret_owned_by_its_pod_and_held_by_the_finalizer() {
        let keys = keys();
        let sealer = sealer(&keys);
        let secret = created(&sealer);
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(secret.metadata.name.as_deref(), Some("p-b-wrap"));
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Pod", "p", "uid-p")
        );
        assert_eq!(
            secret.metadata.finalizers.as_deref(),
            Some(&[SECRET_FINALIZER.to_string()][..])
        );
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get(BINDING_LABEL).map(String::as_str), Some("b"));
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY)
        );
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data["token"].0, b"s.wrapping-token-1");
        // A failed mint's record carries no data at all.
        let i = issue(0, None);
        let changes = issue_changes(&i, failure_changes("refused", t(0), 1));
        assert_eq!(issue_secret(&sealer, &i, &changes, None).data, None);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 512), "short");
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdef", 4), "abcd…");
        // "é" is two bytes (1..3): a cut at byte 2 backs off to the boundary before it.
        assert_eq!(truncate("aébc", 2), "a…");
        assert_eq!(truncate("aébc", 3), "aé…");
    }

    #[test]
    fn the_wrapping_token_is_read_only_when_present_and_text() {
        let with = |bytes: &[u8]| Secret {
            data: Some(BTreeMap::from([(
                "token".to_string(),
                ByteString(bytes.to_vec()),
            )])),
            ..Default::default()
        };
        let token = wrapping_token(&with(b"s.wrap"), "token").expect("a token");
        assert_eq!(token.expose(), "s.wrap");
        assert!(wrapping_token(&with(b"s.wrap"), "other").is_none());
        assert!(wrapping_token(&with(b""), "token").is_none(), "empty");
        assert!(
            wrapping_token(&with(&[0xff, 0xfe]), "token").is_none(),
            "not UTF-8"
        );
        assert!(
            wrapping_token(&Secret::default(), "token").is_none(),
            "no data"
        );
    }

    #[test]
    fn nothing_may_change_behind_the_operators_back() {
        let keys = keys();
        let sealer = sealer(&keys);
        let secret = created(&sealer);
        let edit = |k: &str, v: &str| {
            let patch = json!({"metadata": {"annotations": {k: v}}});
            read(&apply(&secret, &patch), &keys).authenticity
        };
        // The free-text message too: it is shown in the binding's status.
        assert_eq!(edit(ann::MESSAGE, "hello"), Authenticity::Forged);
        assert_eq!(edit("example.com/unrelated", "x"), Authenticity::Authentic);
        assert_eq!(edit(ann::ACCESSOR, "victim"), Authenticity::Forged);
        assert_eq!(edit(ann::PHASE, "Unwrapped"), Authenticity::Forged);
        let relabelled = apply(
            &secret,
            &json!({"metadata": {"labels": {BINDING_LABEL: "ghost"}}}),
        );
        assert_eq!(read(&relabelled, &keys).authenticity, Authenticity::Forged);
        // Another binding's sealer signs something else.
        let other = Sealer {
            binding: "other",
            ..sealer
        };
        let mut theirs = created(&other);
        theirs.metadata.namespace = Some("ns".into());
        theirs
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(BINDING_LABEL.into(), "b".into());
        assert_eq!(
            WrapState::from_secret(&theirs, Some("token"), &keys)
                .unwrap()
                .authenticity,
            Authenticity::Forged
        );
    }
}
