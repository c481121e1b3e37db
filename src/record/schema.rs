//! The per-pod record's vocabulary: its labels, annotation keys and finalizers. Everything that
//! reads or writes a record names its keys from here.

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
    /// When the current start's mint was attempted, for a mint that failed (RFC 3339; the retry
    /// pause counts from it). Earlier versions wrote it at every claim.
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
    /// Written by earlier versions (when Vault answered again after a claim's mint answer was
    /// lost); still signed, and cleared by the next start.
    pub const VAULT_SEEN_AT: &str = "cubbyhole.dev/vault-seen-at";
    /// Receipts that finished at or before this time (kubelet clock) belong to earlier starts.
    pub const RECEIPTS_AFTER: &str = "cubbyhole.dev/receipts-after";
    /// How many times this start's wrap was replaced because it expired before the pod took
    /// it (a slow start).
    pub const REPLACED: &str = "cubbyhole.dev/replaced";
    /// The receipt the pod's agent reported to the request endpoint (request delivery), as
    /// the receipt's JSON line; cleared by the next start.
    pub const RECEIPT: &str = "cubbyhole.dev/receipt";
    /// How many mints of this record failed in a row (the retry pause doubles with each).
    pub const FAILURES: &str = "cubbyhole.dev/failures";
    /// HMAC over the record (`v2:<key-id>:<hex>`, see [`crate::record::seal`]).
    pub const SIGNATURE: &str = "cubbyhole.dev/signature";

    /// The annotations every signature covers: every one the operator writes and reads, except
    /// the free-text [`MESSAGE`] (covered by the current format only, see
    /// [`crate::record::seal`]) and the signature itself.
    pub const SIGNED: [&str; 16] = [
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
        REPLACED,
        RECEIPT,
        FAILURES,
    ];

    /// True for the annotations a current signature covers: [`SIGNED`] and [`MESSAGE`].
    pub fn is_signed(key: &str) -> bool {
        SIGNED.contains(&key) || key == MESSAGE
    }
}
