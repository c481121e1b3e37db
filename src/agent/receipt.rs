//! The receipt `cubbyhole unwrap` leaves in its termination message, and how it is read back.
//!
//! Only an outcome word and the accessor of the unwrapped token: never a token.

use serde::{Deserialize, Serialize};

/// Outcome words written by the agent. The operator treats any other word as a failure.
pub mod result {
    /// The wrap was unwrapped and the token written.
    pub const UNWRAPPED: &str = "unwrapped";
    /// Vault says the wrapping token is not valid (consumed, expired or revoked).
    pub const INVALID_WRAPPING_TOKEN: &str = "invalid-wrapping-token";
    /// The wrap was created at another path than expected: refused without consuming it.
    pub const UNEXPECTED_CREATION_PATH: &str = "unexpected-creation-path";
    /// Vault could not be reached after the bounded retries.
    pub const VAULT_UNREACHABLE: &str = "vault-unreachable";
    /// Vault answered with another error.
    pub const VAULT_ERROR: &str = "vault-error";
    /// The wrapping token file could not be read or was empty.
    pub const TOKEN_FILE_UNREADABLE: &str = "token-file-unreadable";
    /// The token could not be written to the output file (found before or after unwrapping).
    pub const WRITE_FAILED: &str = "write-failed";
    /// On request: the operator's endpoint refused the ask.
    pub const REQUEST_REFUSED: &str = "request-refused";
    /// On request: the operator's endpoint could not be reached.
    pub const OPERATOR_UNREACHABLE: &str = "operator-unreachable";

    /// Every outcome word, in the order the API document lists them.
    pub const ALL: [&str; 9] = [
        UNWRAPPED,
        INVALID_WRAPPING_TOKEN,
        UNEXPECTED_CREATION_PATH,
        VAULT_UNREACHABLE,
        VAULT_ERROR,
        TOKEN_FILE_UNREADABLE,
        WRITE_FAILED,
        REQUEST_REFUSED,
        OPERATOR_UNREACHABLE,
    ];
}

/// Longest result word a receipt may carry (the words are far shorter).
const MAX_RESULT_LEN: usize = 64;
/// Longest accessor a receipt may carry (Vault's and OpenBao's are 24 to 30 characters).
const MAX_ACCESSOR_LEN: usize = 128;

/// What the agent reports about one unwrap attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// One of the [`result`] words.
    pub result: String,
    /// Accessor of the token the agent received (only after a successful unwrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessor: Option<String>,
}

impl Receipt {
    /// A successful unwrap of the token with `accessor`.
    pub fn unwrapped(accessor: impl Into<String>) -> Self {
        Self {
            result: result::UNWRAPPED.into(),
            accessor: Some(accessor.into()),
        }
    }

    /// A failed attempt.
    pub fn failed(result: &str) -> Self {
        Self {
            result: result.into(),
            accessor: None,
        }
    }

    /// The single JSON line written to the termination message file.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("receipt serializes")
    }

    /// Reads a termination message; `None` when it is not a cubbyhole receipt.
    pub fn parse(message: &str) -> Option<Self> {
        let receipt: Receipt = serde_json::from_str(message.trim()).ok()?;
        let sane = !receipt.result.is_empty()
            && receipt.result.len() <= MAX_RESULT_LEN
            && receipt
                .accessor
                .as_ref()
                .is_none_or(|a| a.len() <= MAX_ACCESSOR_LEN);
        sane.then_some(receipt)
    }

    /// True for a successful unwrap.
    pub fn is_unwrapped(&self) -> bool {
        self.result == result::UNWRAPPED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_other_messages() {
        let r = Receipt::unwrapped("acc123");
        assert_eq!(r.to_line(), r#"{"result":"unwrapped","accessor":"acc123"}"#);
        assert_eq!(Receipt::parse(&r.to_line()), Some(r));
        assert_eq!(
            Receipt::parse(r#"{"result":"invalid-wrapping-token"}"#),
            Some(Receipt::failed(result::INVALID_WRAPPING_TOKEN))
        );
        assert_eq!(Receipt::parse("panic: something"), None);
        // Bounded: a receipt never grows a record past a few hundred bytes.
        let long = format!(
            r#"{{"result":"unwrapped","accessor":"{}"}}"#,
            "a".repeat(129)
        );
        assert_eq!(Receipt::parse(&long), None);
        let long = format!(r#"{{"result":"{}"}}"#, "r".repeat(65));
        assert_eq!(Receipt::parse(&long), None);
        let fits = format!(
            r#"{{"result":"unwrapped","accessor":"{}"}}"#,
            "a".repeat(128)
        );
        assert!(Receipt::parse(&fits).is_some());
        assert_eq!(Receipt::parse(r#"{"other":1}"#), None);
    }
}
