//! Vault's word before the operator acts on an accessor a record names. A signed record may
//! still lie (its record key leaked), so before revoking or renewing by accessor the operator
//! asks Vault what the accessor is (`auth/token/lookup-accessor`: the answer never holds the
//! token) and acts only when the answer matches the record:
//!
//! - a **token** (revoked at a pod's end, renewed while its agent holds it) must carry the
//!   metadata every mint sets: the record's namespace, pod uid and binding;
//! - a **wrap** must be a response-wrapping token minted through the binding's token role
//!   (`auth/token/create/<role>`). Vault keeps no metadata on a wrap, so this is as narrow as
//!   Vault can vouch: never an agent's token, an admin's, or a wrap of another role.
//!
//! Anything else is refused: counted, logged with its accessor, never acted on.

use k8s_openapi::jiff::Timestamp;
use tracing::warn;

use crate::controller::effects::VaultOps;
use crate::core::plan::Revoke;
use crate::crd::AgentSecretBinding;
use crate::metrics::{Metrics, RenewalResult, TokenKind};
use crate::record::WrapState;
use crate::vault::{Revoked, TokenFacts, VaultError};

/// The only policy a response-wrapping token carries.
const WRAP_POLICY: &str = "response-wrapping";

/// Where every token the operator mints is created (followed by the role's name).
const CREATE_PATH: &str = "auth/token/create/";

// The shape of Vault's answer lives with the client (`vault::TokenFacts`); what it vouches for
// is judged here.
impl TokenFacts {
    /// True when the token's metadata names this namespace, pod uid and binding: Vault vouches
    /// that it was minted for that record.
    pub fn minted_for(&self, namespace: &str, pod_uid: &str, binding: &str) -> bool {
        let meta = self.meta.clone().unwrap_or_default();
        let is = |k: &str, v: &str| meta.get(k).map(String::as_str) == Some(v);
        is("namespace", namespace) && is("pod_uid", pod_uid) && is("binding", binding)
    }

    /// True when this is a response-wrapping token created through `role`'s create path
    /// (`None`, the binding is gone and its role unknown: through any token role).
    pub fn is_wrap_through(&self, role: Option<&str>) -> bool {
        let wrap = self.policies.len() == 1 && self.policies[0] == WRAP_POLICY;
        let through = match (role, self.path.strip_prefix(CREATE_PATH)) {
            (Some(role), Some(created)) => created == role,
            (None, Some(created)) => !created.is_empty(),
            (_, None) => false,
        };
        wrap && through
    }

    /// When the token must end: by its own explicit max TTL (Vault does not hold a renewal by
    /// accessor to it) or its role's (`role_max`, seconds; Vault does), whichever comes first.
    /// `None`: neither is set.
    pub fn hard_end(&self, role_max: Option<u64>) -> Option<Timestamp> {
        let own = Some(self.explicit_max_ttl).filter(|&max| max > 0);
        let max = match (own, role_max) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let end = self
            .creation_time
            .saturating_add(i64::try_from(max).unwrap_or(i64::MAX));
        Timestamp::from_second(end).ok()
    }
}

/// Whose record names the accessors: what Vault's answer must match.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    /// The record's namespace.
    pub namespace: &'a str,
    /// The record's binding.
    pub binding: &'a str,
    /// The binding's token role (`None`: the binding is gone).
    pub role: Option<&'a str>,
}

impl<'a> Claim<'a> {
    /// The claim of a record of `binding` (live: its role is known).
    pub fn of(binding: &'a AgentSecretBinding) -> Self {
        Claim {
            namespace: binding.metadata.namespace.as_deref().unwrap_or_default(),
            binding: binding.metadata.name.as_deref().unwrap_or_default(),
            role: Some(&binding.spec.vault.token_role),
        }
    }
}

/// What the operator is about to do with a token, for the refusal's metric and log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Revoke it.
    Revoke,
    /// Renew it.
    Renew,
}

/// Vault's answer about a token a record names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vouched {
    /// Minted for the record; it must end by `hard_end` (its own explicit max TTL) if set.
    Minted {
        /// See [`TokenFacts::hard_end`].
        hard_end: Option<Timestamp>,
    },
    /// Vault knows no such token (expired, revoked, or never issued).
    Gone,
    /// Not minted for this record: refused (counted and logged).
    Refused,
}

/// Asks Vault whether the token behind `accessor` was minted for the record of `pod_uid`
/// under `claim`; a refusal is counted for `act` and logged. For a renewal, the token's end
/// also counts its role's explicit max (`role_max`, seconds).
pub async fn vouch_token(
    vault: &impl VaultOps,
    metrics: &Metrics,
    claim: Claim<'_>,
    pod_uid: &str,
    accessor: &str,
    act: Act,
    role_max: Option<u64>,
) -> Result<Vouched, VaultError> {
    let Some(facts) = vault.token_facts(accessor).await? else {
        return Ok(Vouched::Gone);
    };
    if facts.minted_for(claim.namespace, pod_uid, claim.binding) {
        return Ok(Vouched::Minted {
            hard_end: facts.hard_end(role_max),
        });
    }
    let Claim {
        namespace, binding, ..
    } = claim;
    match act {
        Act::Revoke => metrics.revocation_refused(namespace),
        Act::Renew => metrics.renewal(RenewalResult::Refused),
    }
    warn!(namespace, binding, pod_uid, accessor, act = ?act,
        "refused: Vault does not say this token was minted for the record that names it");
    Ok(Vouched::Refused)
}

/// Revokes what `revoke` asks of the accessors `wrap` (a record under `claim`) names, each only
/// when Vault vouches for it; a missing accessor is skipped.
pub async fn revoke_named(
    vault: &impl VaultOps,
    metrics: &Metrics,
    claim: Claim<'_>,
    wrap: &WrapState,
    revoke: Revoke,
) -> Result<(), VaultError> {
    if revoke.wrap()
        && let Some(a) = &wrap.wrap_accessor
    {
        revoke_wrap_vouched(vault, metrics, claim, a).await?;
    }
    if revoke.token()
        && let Some(a) = &wrap.accessor
    {
        revoke_vouched(vault, metrics, claim, &wrap.pod_uid, a).await?;
    }
    Ok(())
}

/// Revokes the token behind `accessor` only if Vault says it was minted for the record of
/// `pod_uid`; anything else counts as nothing to revoke.
pub async fn revoke_vouched(
    vault: &impl VaultOps,
    metrics: &Metrics,
    claim: Claim<'_>,
    pod_uid: &str,
    accessor: &str,
) -> Result<Revoked, VaultError> {
    match vouch_token(vault, metrics, claim, pod_uid, accessor, Act::Revoke, None).await? {
        Vouched::Minted { .. } => revoke_counted(vault, metrics, accessor, TokenKind::Token).await,
        Vouched::Gone | Vouched::Refused => Ok(Revoked::NotFound),
    }
}

/// Revokes the wrap behind `accessor` only if Vault says it is a response-wrapping token
/// minted through the claim's token role; anything else is refused and counts as nothing to
/// revoke (as does a wrap already consumed, expired or revoked).
pub async fn revoke_wrap_vouched(
    vault: &impl VaultOps,
    metrics: &Metrics,
    claim: Claim<'_>,
    accessor: &str,
) -> Result<Revoked, VaultError> {
    let Some(facts) = vault.token_facts(accessor).await? else {
        return Ok(Revoked::NotFound);
    };
    if facts.is_wrap_through(claim.role) {
        return revoke_counted(vault, metrics, accessor, TokenKind::Wrap).await;
    }
    let Claim {
        namespace, binding, ..
    } = claim;
    metrics.revocation_refused(namespace);
    warn!(
        namespace,
        binding,
        accessor,
        "refused to revoke: Vault does not say this accessor is a wrap of the binding's token role"
    );
    Ok(Revoked::NotFound)
}

/// Whether the wrap `accessor` names is still pending: Vault knows it, and as a wrap made
/// through `claim`'s role (a consumed, expired or revoked wrap is unknown to Vault).
pub async fn wrap_pending(
    vault: &impl VaultOps,
    claim: Claim<'_>,
    accessor: &str,
) -> Result<bool, VaultError> {
    Ok(vault
        .token_facts(accessor)
        .await?
        .is_some_and(|facts| facts.is_wrap_through(claim.role)))
}

/// Revokes one accessor without asking (for what this process just minted); a token or wrap
/// that was still alive is counted in the metrics.
pub async fn revoke_counted(
    vault: &impl VaultOps,
    metrics: &Metrics,
    accessor: &str,
    kind: TokenKind,
) -> Result<Revoked, VaultError> {
    let r = vault.revoke_accessor(accessor).await?;
    if r == Revoked::Existed {
        metrics.revoked(kind);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn minted(ns: &str, uid: &str, binding: &str) -> TokenFacts {
        TokenFacts {
            meta: Some(BTreeMap::from([
                ("namespace".to_string(), ns.to_string()),
                ("pod".to_string(), "p".to_string()),
                ("pod_uid".to_string(), uid.to_string()),
                ("binding".to_string(), binding.to_string()),
            ])),
            policies: vec!["agent".into()],
            path: "auth/token/create/agent".into(),
            ..Default::default()
        }
    }

    fn wrap(path: &str, policies: &[&str]) -> TokenFacts {
        TokenFacts {
            policies: policies.iter().map(|p| (*p).to_string()).collect(),
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn vault_vouches_only_for_a_token_minted_for_the_record() {
        assert!(minted("ns", "uid-p", "b").minted_for("ns", "uid-p", "b"));
        // The tenant's case: a token with no metadata at all (someone else's).
        assert!(!TokenFacts::default().minted_for("ns", "uid-p", "b"));
        assert!(!minted("other-ns", "uid-p", "b").minted_for("ns", "uid-p", "b"));
        assert!(!minted("ns", "uid-other", "b").minted_for("ns", "uid-p", "b"));
        assert!(!minted("ns", "uid-p", "ghost").minted_for("ns", "uid-p", "b"));
        let mut partial = minted("ns", "uid-p", "b");
        partial.meta.as_mut().unwrap().remove("binding");
        assert!(!partial.minted_for("ns", "uid-p", "b"));
    }

    #[test]
    fn a_wrap_is_vouched_for_only_as_a_wrap_of_the_role() {
        let ours = wrap("auth/token/create/agent", &["response-wrapping"]);
        assert!(ours.is_wrap_through(Some("agent")));
        assert!(ours.is_wrap_through(None), "binding gone: any token role");
        assert!(!ours.is_wrap_through(Some("other")), "another role's wrap");
        assert!(
            !ours.is_wrap_through(Some("agen")),
            "a prefix is not the role"
        );
        // An agent's token (or an admin's) named as a wrap.
        assert!(!minted("ns", "uid-p", "b").is_wrap_through(Some("agent")));
        assert!(!minted("ns", "uid-p", "b").is_wrap_through(None));
        // A wrap made elsewhere: `auth/token/create` without a role, or any other path.
        assert!(!wrap("auth/token/create", &["response-wrapping"]).is_wrap_through(None));
        assert!(!wrap("auth/token/create/", &["response-wrapping"]).is_wrap_through(None));
        assert!(!wrap("secret/data/x", &["response-wrapping"]).is_wrap_through(None));
        // A token that also carries the wrap's policy is not a wrap.
        let both = wrap("auth/token/create/agent", &["response-wrapping", "admin"]);
        assert!(!both.is_wrap_through(Some("agent")));
    }

    #[test]
    fn a_token_ends_by_the_first_of_its_own_and_its_roles_explicit_max() {
        let at = |s: i64| Timestamp::from_second(s).ok();
        let mut facts = minted("ns", "uid-p", "b");
        facts.creation_time = 1_000;
        assert_eq!(facts.hard_end(None), None);
        assert_eq!(facts.hard_end(Some(600)), at(1_600));
        facts.explicit_max_ttl = 150;
        assert_eq!(facts.hard_end(None), at(1_150));
        assert_eq!(facts.hard_end(Some(600)), at(1_150));
        assert_eq!(facts.hard_end(Some(100)), at(1_100));
    }
}
