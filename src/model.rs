//! Plain views of the Kubernetes objects the planner reads: what a pod looks like to us, and
//! the per-pod Secret's metadata as the durable record of a wrap. Never a token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::receipt::Receipt;
use crate::seal::{Authenticity, Fields, RecordKeys};

/// Label every per-pod Secret carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "cubbyhole";
/// Label naming the binding that minted a Secret's wrap.
pub const BINDING_LABEL: &str = "cubbyhole.dev/binding";
/// Pod annotation choosing the Secret name (so a pod can mount a name it knows in advance).
pub const SECRET_NAME_ANNOTATION: &str = "cubbyhole.dev/secret-name";
/// Finalizer on per-pod Secrets: a garbage-collected Secret is revoked before it goes.
pub const SECRET_FINALIZER: &str = "cubbyhole.dev/revoke";
/// Finalizer on bindings: everything a binding minted is revoked before it goes.
pub const BINDING_FINALIZER: &str = "cubbyhole.dev/cleanup";

/// Annotation keys of the per-pod Secret.
pub mod ann {
    /// Pod name.
    pub const POD: &str = "cubbyhole.dev/pod";
    /// Pod uid the wrap was minted for.
    pub const POD_UID: &str = "cubbyhole.dev/pod-uid";
    /// Start number (agent container restart count at issue).
    pub const START: &str = "cubbyhole.dev/start";
    /// Phase of the wrap.
    pub const PHASE: &str = "cubbyhole.dev/phase";
    /// When the current mint attempt was claimed (RFC 3339).
    pub const CLAIMED_AT: &str = "cubbyhole.dev/claimed-at";
    /// Accessor of the wrapping token.
    pub const WRAP_ACCESSOR: &str = "cubbyhole.dev/wrap-accessor";
    /// Accessor of the token inside the wrap.
    pub const ACCESSOR: &str = "cubbyhole.dev/accessor";
    /// Accessor of the previous start's token.
    pub const PREVIOUS_ACCESSOR: &str = "cubbyhole.dev/previous-accessor";
    /// Issue time (RFC 3339).
    pub const ISSUED_AT: &str = "cubbyhole.dev/issued-at";
    /// Wrap expiry (RFC 3339).
    pub const EXPIRES_AT: &str = "cubbyhole.dev/expires-at";
    /// "true" when the agent's receipt named the expected accessor.
    pub const VERIFIED: &str = "cubbyhole.dev/verified";
    /// Human-readable detail.
    pub const MESSAGE: &str = "cubbyhole.dev/message";
    /// When Vault was seen answering after a claim whose mint answer was lost.
    pub const VAULT_SEEN_AT: &str = "cubbyhole.dev/vault-seen-at";
    /// Receipts that finished at or before this time (kubelet clock) belong to earlier starts.
    pub const RECEIPTS_AFTER: &str = "cubbyhole.dev/receipts-after";
    /// HMAC over the record (`v1:<key-id>:<hex>`, see [`crate::seal`]).
    pub const SIGNATURE: &str = "cubbyhole.dev/signature";

    /// The annotations the signature covers: every one the operator writes and reads, except
    /// the free-text [`MESSAGE`] and the signature itself.
    pub const SIGNED: [&str; 13] = [
        POD,
        POD_UID,
        START,
        PHASE,
        CLAIMED_AT,
        WRAP_ACCESSOR,
        ACCESSOR,
        PREVIOUS_ACCESSOR,
        ISSUED_AT,
        EXPIRES_AT,
        VERIFIED,
        VAULT_SEEN_AT,
        RECEIPTS_AFTER,
    ];
}

/// Where a pod start's wrap stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// A mint was claimed; its answer has not been recorded (in flight or lost).
    Claimed,
    /// Delivered in the Secret, not yet consumed.
    Issued,
    /// Consumed (verified when the agent's receipt matched).
    Unwrapped,
    /// Expired unconsumed; the inner token was revoked.
    Expired,
    /// Revoked by the operator (pod gone, agent could not keep it, delivery failed).
    Revoked,
    /// Consumed by someone other than the pod's agent; the token was revoked.
    Tampered,
    /// Vault refused or could not mint; retried.
    Failed,
}

impl Phase {
    /// The word stored in annotations and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Claimed => "Claimed",
            Phase::Issued => "Issued",
            Phase::Unwrapped => "Unwrapped",
            Phase::Expired => "Expired",
            Phase::Revoked => "Revoked",
            Phase::Tampered => "Tampered",
            Phase::Failed => "Failed",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Phase::Claimed,
            Phase::Issued,
            Phase::Unwrapped,
            Phase::Expired,
            Phase::Revoked,
            Phase::Tampered,
            Phase::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    /// True once the wrap can no longer be unwrapped by anyone.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Phase::Unwrapped | Phase::Expired | Phase::Revoked | Phase::Tampered
        )
    }
}

/// A receipt found in a container's termination message.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedReceipt {
    /// Container that wrote it.
    pub container: String,
    /// The receipt.
    pub receipt: Receipt,
    /// When that container instance finished (kubelet clock).
    pub finished_at: Option<Timestamp>,
}

/// What the planner needs to know about a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The `cubbyhole.dev/secret-name` annotation.
    pub secret_name: Option<String>,
    /// Being deleted.
    pub terminating: bool,
    /// Phase Succeeded or Failed: no process left to hold a token.
    pub finished: bool,
    /// Restart count per container name (init and regular).
    pub restart_counts: BTreeMap<String, u32>,
    /// Receipts in termination messages, newest instance first per container.
    pub receipts: Vec<ObservedReceipt>,
}

impl PodView {
    /// Reads a Pod.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let uid = pod.metadata.uid.clone()?;
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let mut restart_counts = BTreeMap::new();
        let mut receipts = vec![];
        let statuses = status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .collect::<Vec<&ContainerStatus>>();
        for cs in statuses {
            restart_counts.insert(cs.name.clone(), cs.restart_count.max(0) as u32);
            let terminated = [
                cs.state.as_ref().and_then(|s| s.terminated.as_ref()),
                cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
            ];
            for t in terminated.into_iter().flatten() {
                if let Some(receipt) = t.message.as_deref().and_then(Receipt::parse) {
                    receipts.push(ObservedReceipt {
                        container: cs.name.clone(),
                        receipt,
                        finished_at: t.finished_at.as_ref().map(|f| f.0),
                    });
                }
            }
        }
        Some(Self {
            name: pod.name_any(),
            uid,
            labels: pod.labels().clone(),
            secret_name: pod.annotations().get(SECRET_NAME_ANNOTATION).cloned(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            finished: matches!(phase, "Succeeded" | "Failed"),
            restart_counts,
            receipts,
        })
    }

    /// Newest finish time among this pod's receipts (to mark them as belonging to past starts).
    pub fn newest_receipt_time(&self) -> Option<Timestamp> {
        self.receipts.iter().filter_map(|r| r.finished_at).max()
    }
}

/// The durable record of one pod's wrap, read from its Secret's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct WrapState {
    /// Secret name.
    pub secret: String,
    /// Secret resourceVersion (guards every update).
    pub resource_version: Option<String>,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Start number.
    pub start: u32,
    /// Phase.
    pub phase: Phase,
    /// When the current mint was claimed.
    pub claimed_at: Option<Timestamp>,
    /// When Vault answered again after this claim's mint answer was lost.
    pub vault_seen_at: Option<Timestamp>,
    /// Wrapping token accessor.
    pub wrap_accessor: Option<String>,
    /// Inner token accessor.
    pub accessor: Option<String>,
    /// Previous start's inner token accessor.
    pub previous_accessor: Option<String>,
    /// Issue time.
    pub issued_at: Option<Timestamp>,
    /// Wrap expiry.
    pub expires_at: Option<Timestamp>,
    /// Receipt matched.
    pub verified: bool,
    /// Detail.
    pub message: Option<String>,
    /// Receipts finished at or before this belong to earlier starts.
    pub receipts_after: Option<Timestamp>,
    /// The Secret still holds a wrapping token.
    pub has_token: bool,
    /// The Secret is being deleted (garbage collection of a gone pod).
    pub deleting: bool,
    /// Whether the operator wrote this record; only authentic records are acted on.
    pub authenticity: Authenticity,
    /// The signed annotations as read: what the next write's signature builds on.
    pub annotations: BTreeMap<String, String>,
}

impl WrapState {
    /// Reads a per-pod Secret and checks its signature; `None` when it is not a cubbyhole
    /// record.
    pub fn from_secret(secret: &Secret, secret_key: &str, keys: &RecordKeys) -> Option<Self> {
        let a = secret.annotations();
        let namespace = secret.namespace().unwrap_or_default();
        let name = secret.name_any();
        let binding = secret
            .labels()
            .get(BINDING_LABEL)
            .cloned()
            .unwrap_or_default();
        let authenticity = keys.verify(
            &Fields {
                namespace: &namespace,
                name: &name,
                binding: &binding,
                annotations: a,
            },
            a.get(ann::SIGNATURE).map(String::as_str),
        );
        let has_token = secret
            .data
            .as_ref()
            .is_some_and(|d| d.get(secret_key).is_some_and(|v| !v.0.is_empty()));
        let mut record = Self::from_annotations(name, a, has_token, authenticity)?;
        record.resource_version = secret.resource_version();
        record.deleting = secret.metadata.deletion_timestamp.is_some();
        Some(record)
    }

    /// The record the annotations `a` of Secret `name` describe, with its authenticity already
    /// decided; `None` when they name no pod. Resource version and deletion are left unset.
    pub fn from_annotations(
        name: String,
        a: &BTreeMap<String, String>,
        has_token: bool,
        authenticity: Authenticity,
    ) -> Option<Self> {
        let get = |k: &str| a.get(k).filter(|v| !v.is_empty()).cloned();
        let time = |k: &str| get(k).and_then(|v| v.parse::<Timestamp>().ok());
        Some(Self {
            secret: name,
            resource_version: None,
            pod: get(ann::POD)?,
            pod_uid: get(ann::POD_UID)?,
            start: get(ann::START).and_then(|s| s.parse().ok()).unwrap_or(0),
            phase: get(ann::PHASE)
                .and_then(|p| Phase::parse(&p))
                .unwrap_or(Phase::Claimed),
            claimed_at: time(ann::CLAIMED_AT),
            vault_seen_at: time(ann::VAULT_SEEN_AT),
            wrap_accessor: get(ann::WRAP_ACCESSOR),
            accessor: get(ann::ACCESSOR),
            previous_accessor: get(ann::PREVIOUS_ACCESSOR),
            issued_at: time(ann::ISSUED_AT),
            expires_at: time(ann::EXPIRES_AT),
            verified: get(ann::VERIFIED).as_deref() == Some("true"),
            message: get(ann::MESSAGE),
            receipts_after: time(ann::RECEIPTS_AFTER),
            has_token,
            deleting: false,
            authenticity,
            annotations: a
                .iter()
                .filter(|(k, _)| ann::SIGNED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// The Secret name for a pod: its annotation if set, else `<pod>-<binding>-wrap`, shortened
/// with a hash suffix when that would exceed 253 characters.
pub fn secret_name(pod: &PodView, binding: &str) -> String {
    if let Some(name) = &pod.secret_name {
        return name.clone();
    }
    let full = format!("{}-{}-wrap", pod.name, binding);
    if full.len() <= 253 {
        return full;
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(full.as_bytes()));
    format!(
        "{}-{}",
        full[..240].trim_end_matches(['-', '.']),
        &digest[..10]
    )
}

/// True when `name` is a valid Secret name (DNS-1123 subdomain).
pub fn is_valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_valid_and_bounded() {
        let pod = PodView {
            name: "agent-0".into(),
            ..Default::default()
        };
        assert_eq!(secret_name(&pod, "b"), "agent-0-b-wrap");
        let long = PodView {
            name: "p".repeat(250),
            ..Default::default()
        };
        let n = secret_name(&long, "binding");
        assert!(n.len() <= 253 && is_valid_secret_name(&n), "{n}");
        assert_eq!(n, secret_name(&long, "binding"));
        assert_ne!(n, secret_name(&long, "other"));
        let annotated = PodView {
            secret_name: Some("mine".into()),
            ..pod
        };
        assert_eq!(secret_name(&annotated, "b"), "mine");
        assert!(!is_valid_secret_name("Bad_Name"));
        assert!(!is_valid_secret_name("-x"));
    }

    #[test]
    fn phases_round_trip() {
        for p in [
            "Claimed",
            "Issued",
            "Unwrapped",
            "Expired",
            "Revoked",
            "Tampered",
            "Failed",
        ] {
            assert_eq!(Phase::parse(p).unwrap().as_str(), p);
        }
        assert!(Phase::Expired.is_settled() && !Phase::Issued.is_settled());
    }
}
