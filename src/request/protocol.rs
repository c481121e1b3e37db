//! The wire format between `cubbyhole unwrap` and the request endpoint. The agent presents its
//! projected service-account token as a bearer token; answers are JSON.

use serde::{Deserialize, Serialize};

/// Where the agent asks for its wrap (`POST`, no body).
pub const WRAP_PATH: &str = "/v1/wrap";
/// Where the agent reports its receipt (`POST`, the receipt's JSON line).
pub const RECEIPT_PATH: &str = "/v1/receipt";
/// The audience the agent's projected service-account token must be minted for.
pub const AUDIENCE: &str = "cubbyhole";
/// JSON field of a successful answer that carries the wrapping token.
pub const WRAPPING_TOKEN_FIELD: &str = "wrappingToken";

/// Everything of a successful answer except the wrapping token (which is never put in a type
/// that can be printed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrapFacts {
    /// Accessor of the wrapping token.
    pub wrap_accessor: String,
    /// The binding that minted it.
    pub binding: String,
    /// The pod's run this wrap belongs to: the sum of its containers' restart counts at the
    /// ask (init containers included), or the previous record's run when that is higher.
    pub start: u32,
    /// Seconds the wrap stays valid.
    pub wrap_ttl_seconds: u64,
}

/// Why an ask or a receipt was refused: a reason word for scripts and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// One of the [`reason`] words.
    pub reason: String,
    /// What happened and what to do.
    pub message: String,
}

/// Reason words of a [`Refusal`], with the HTTP status each is answered with.
pub mod reason {
    /// 401: no bearer token.
    pub const NO_TOKEN: &str = "NoToken";
    /// 401: the API server does not accept the token for audience `cubbyhole` (expired, for
    /// another audience, its pod deleted, or not a token at all).
    pub const NOT_AUTHENTICATED: &str = "NotAuthenticated";
    /// 403: a valid token not bound to a pod (a legacy or a TokenRequest token without a pod).
    pub const NOT_BOUND_TO_POD: &str = "NotBoundToPod";
    /// 403: the pod the token is bound to is gone, replaced, terminating or finished.
    pub const POD_GONE: &str = "PodGone";
    /// 403: no binding selects the pod.
    pub const NOT_SELECTED: &str = "NotSelected";
    /// 403: more than one binding selects the pod.
    pub const CONFLICT: &str = "Conflict";
    /// 403: the binding delivers by Secret, not on request.
    pub const NOT_ON_REQUEST: &str = "NotOnRequest";
    /// 403: the binding is not valid (its role is not allowed in the namespace, say).
    pub const INVALID_BINDING: &str = "InvalidBinding";
    /// 409: the pod's record name holds a Secret that is not this binding's record.
    pub const NAME_TAKEN: &str = "NameTaken";
    /// 503: the record is busy (another ask won, or an older pod's record is being removed).
    pub const RETRY: &str = "Retry";
    /// 429: too many asks from this pod or namespace.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// 503: Vault could not be reached or did not answer.
    pub const VAULT_UNAVAILABLE: &str = "VaultUnavailable";
    /// 502: Vault refused to mint.
    pub const VAULT_REFUSED: &str = "VaultRefused";
    /// 500: the API server failed.
    pub const INTERNAL: &str = "Internal";
    /// 409: this run of the pod was already served a wrap (a replayed identity token, or an
    /// agent asking twice): a second wrap needs a new run (a container restart).
    pub const ALREADY_SERVED: &str = "AlreadyServed";
    /// 409: a receipt for a wrap that is not the pod's current one.
    pub const STALE_RECEIPT: &str = "StaleReceipt";
    /// 400: a receipt that does not parse.
    pub const BAD_RECEIPT: &str = "BadReceipt";

    /// Every reason word, in the order the API document lists them.
    pub const ALL: [&str; 17] = [
        NO_TOKEN,
        NOT_AUTHENTICATED,
        NOT_BOUND_TO_POD,
        POD_GONE,
        NOT_SELECTED,
        CONFLICT,
        NOT_ON_REQUEST,
        INVALID_BINDING,
        NAME_TAKEN,
        ALREADY_SERVED,
        STALE_RECEIPT,
        BAD_RECEIPT,
        RATE_LIMITED,
        RETRY,
        VAULT_UNAVAILABLE,
        VAULT_REFUSED,
        INTERNAL,
    ];

    /// The HTTP status of a reason word.
    pub fn status(reason: &str) -> u16 {
        match reason {
            NO_TOKEN | NOT_AUTHENTICATED => 401,
            NOT_BOUND_TO_POD | POD_GONE | NOT_SELECTED | CONFLICT | NOT_ON_REQUEST
            | INVALID_BINDING => 403,
            NAME_TAKEN | ALREADY_SERVED | STALE_RECEIPT => 409,
            RATE_LIMITED => 429,
            BAD_RECEIPT => 400,
            VAULT_REFUSED => 502,
            RETRY | VAULT_UNAVAILABLE => 503,
            _ => 500,
        }
    }

    /// True when asking again later may succeed without anyone changing anything.
    pub fn retriable(reason: &str) -> bool {
        matches!(reason, RETRY | RATE_LIMITED | VAULT_UNAVAILABLE | INTERNAL)
    }
}

impl Refusal {
    /// A refusal with `reason` and `message`.
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// Its HTTP status.
    pub fn status(&self) -> u16 {
        reason::status(&self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_status_and_only_transient_ones_are_retried() {
        use reason::*;
        for (word, status, retry) in [
            (NO_TOKEN, 401, false),
            (NOT_AUTHENTICATED, 401, false),
            (NOT_BOUND_TO_POD, 403, false),
            (POD_GONE, 403, false),
            (NOT_SELECTED, 403, false),
            (CONFLICT, 403, false),
            (NOT_ON_REQUEST, 403, false),
            (INVALID_BINDING, 403, false),
            (NAME_TAKEN, 409, false),
            (ALREADY_SERVED, 409, false),
            (STALE_RECEIPT, 409, false),
            (BAD_RECEIPT, 400, false),
            (RATE_LIMITED, 429, true),
            (VAULT_REFUSED, 502, false),
            (RETRY, 503, true),
            (VAULT_UNAVAILABLE, 503, true),
            (INTERNAL, 500, true),
        ] {
            assert_eq!(reason::status(word), status, "{word}");
            assert_eq!(retriable(word), retry, "{word}");
            assert!(ALL.contains(&word), "{word} missing from ALL");
        }
        let distinct: std::collections::BTreeSet<_> = ALL.iter().collect();
        assert_eq!(distinct.len(), ALL.len());
    }
}
