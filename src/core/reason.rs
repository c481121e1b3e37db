//! The words a binding's conditions (and the webhook's refusals) give as their reason: one
//! CamelCase word each, what a person searches the README's troubleshooting table for.

use std::fmt;

/// A condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `Ready=True`: every selected pod is being served.
    Delivering,
    /// `Ready=False`: the spec cannot be served (selector, durations, secretKey).
    InvalidSpec,
    /// `Ready=False`: the token role is not in the operator's `allowedRoles` for the namespace.
    RoleNotAllowed,
    /// `Ready=False`: the operator watches only its `watchNamespaces`, and not this one.
    NamespaceNotWatched,
    /// `Ready=False`: Vault is down or refused the operator's login; retried with backoff.
    VaultUnavailable,
    /// `Ready=False`: Vault refused to mint for a pod.
    VaultRefused,
    /// `Ready=False`: a pod's agent refused its wrap (e.g. an unexpected creation path).
    AgentRefused,
    /// `Ready=False`: pods are selected by another binding too; neither mints for them.
    Conflict,
    /// `Ready=False`: a pod asks for a Secret name that is not valid.
    InvalidSecretName,
    /// `Ready=False`: a pod's Secret name is held by a Secret that is not this binding's record.
    SecretNameTaken,
    /// `Degraded=True`: wraps were consumed by someone other than the pods' agents.
    Tampered,
    /// `Degraded=True`: wraps expired unconsumed.
    WrapsExpired,
    /// `Degraded=False`.
    AsExpected,
}

impl Reason {
    /// The word written in the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Delivering => "Delivering",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::RoleNotAllowed => "RoleNotAllowed",
            Reason::NamespaceNotWatched => "NamespaceNotWatched",
            Reason::VaultUnavailable => "VaultUnavailable",
            Reason::VaultRefused => "VaultRefused",
            Reason::AgentRefused => "AgentRefused",
            Reason::Conflict => "Conflict",
            Reason::InvalidSecretName => "InvalidSecretName",
            Reason::SecretNameTaken => "SecretNameTaken",
            Reason::Tampered => "Tampered",
            Reason::WrapsExpired => "WrapsExpired",
            Reason::AsExpected => "AsExpected",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
