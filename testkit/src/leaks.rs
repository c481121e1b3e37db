//! Secrets hygiene checks: no token in any text the program printed.

use cubbyhole::vault::VaultError;

/// Panics when `text` (named `what` in the message) contains any of `secrets`.
pub fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    for (i, secret) in secrets.iter().enumerate() {
        assert!(secret.len() >= 8, "secret #{i} is too short to check for");
        assert!(!text.contains(secret), "{what} leaks secret #{i}");
    }
}

/// Asserts that neither `Debug` nor `Display` of `err` shows any of `secrets`.
pub fn assert_error_clean(err: &VaultError, secrets: &[&str]) {
    assert_no_secrets("error Debug", &format!("{err:?}"), secrets);
    assert_no_secrets("error Display", &err.to_string(), secrets);
}
