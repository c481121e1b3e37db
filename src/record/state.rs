//! A per-pod record as the operator reads it: its phase and what it names, parsed from the
//! Secret's metadata and checked against its signature. Never a token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::agent::receipt::Receipt;
use crate::record::schema::{BINDING_LABEL, ann};
use crate::record::seal::{Authenticity, Fields, RecordKeys};

/// Where a pod start's wrap stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Written only by earlier versions: a mint was claimed and its answer never recorded
    /// (lost). Read so such a record is issued again.
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
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// All phases, in lifecycle order.
    pub const ALL: [Phase; 7] = [
        Phase::Claimed,
        Phase::Issued,
        Phase::Unwrapped,
        Phase::Expired,
        Phase::Revoked,
        Phase::Tampered,
        Phase::Failed,
    ];

    /// True once the wrap can no longer be unwrapped by anyone.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Phase::Unwrapped | Phase::Expired | Phase::Revoked | Phase::Tampered
        )
    }
}

/// Written as its word (the status keeps the same strings as the annotations).
impl serde::Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Phase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = String::deserialize(deserializer)?;
        Phase::parse(&word)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown phase {word:?}")))
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
    /// When the current start's mint was attempted, for a failed mint (earlier versions: when
    /// it was claimed).
    pub claimed_at: Option<Timestamp>,
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
    /// How many times this start's wrap was replaced after expiring untaken.
    pub replaced: u32,
    /// Mints of this record that failed in a row.
    pub failures: u32,
    /// What the pod's agent reported to the request endpoint for this start (request
    /// delivery; the termination message carries the same).
    pub reported: Option<Receipt>,
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
    /// True for a `Failed` record whose wrap was delivered and then refused by the pod's agent
    /// (a failed mint records when it was attempted and has no issue time).
    pub fn refused_by_agent(&self) -> bool {
        self.phase == Phase::Failed && self.claimed_at.is_none() && self.issued_at.is_some()
    }

    /// Reads a per-pod Secret and checks its signature; `None` when it is not a cubbyhole
    /// record. `secret_key` is the data key of the wrapping token when known (a record read
    /// without it reports no token).
    pub fn from_secret(
        secret: &Secret,
        secret_key: Option<&str>,
        keys: &RecordKeys,
    ) -> Option<Self> {
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
            .zip(secret_key)
            .is_some_and(|(d, k)| d.get(k).is_some_and(|v| !v.0.is_empty()));
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
        let message_trusted =
            crate::record::seal::covers_message(a.get(ann::SIGNATURE).map(String::as_str));
        Some(Self {
            secret: name,
            resource_version: None,
            pod: get(ann::POD)?,
            pod_uid: get(ann::POD_UID)?,
            start: get(ann::START).and_then(|s| s.parse().ok()).unwrap_or(0),
            replaced: get(ann::REPLACED).and_then(|s| s.parse().ok()).unwrap_or(0),
            phase: get(ann::PHASE)
                .and_then(|p| Phase::parse(&p))
                .unwrap_or(Phase::Claimed),
            claimed_at: time(ann::CLAIMED_AT),
            wrap_accessor: get(ann::WRAP_ACCESSOR),
            accessor: get(ann::ACCESSOR),
            previous_accessor: get(ann::PREVIOUS_ACCESSOR),
            issued_at: time(ann::ISSUED_AT),
            expires_at: time(ann::EXPIRES_AT),
            verified: get(ann::VERIFIED).as_deref() == Some("true"),
            // Shown in the binding's status only when the signature vouches for it.
            message: get(ann::MESSAGE).filter(|_| message_trusted),
            receipts_after: time(ann::RECEIPTS_AFTER),
            failures: get(ann::FAILURES).and_then(|s| s.parse().ok()).unwrap_or(0),
            reported: get(ann::RECEIPT).and_then(|r| Receipt::parse(&r)),
            has_token,
            deleting: false,
            authenticity,
            annotations: a
                .iter()
                // What the next write signs on: never a message no signature vouched for.
                .filter(|(k, _)| {
                    ann::is_signed(k) && (k.as_str() != ann::MESSAGE || message_trusted)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // The status carries the same words.
        for p in Phase::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), p);
        }
        assert!(serde_json::from_str::<Phase>("\"Gone\"").is_err());
    }
}
