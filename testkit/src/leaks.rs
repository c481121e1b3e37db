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

/// Every form in which `secret` could appear in printed text: as is, percent-encoded, and
/// inside standard or URL-safe base64 of any data containing it (for each of the three byte
/// alignments, the characters that depend on the secret's bytes alone).
pub fn encoded_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_string()];
    let percent: String = secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    forms.push(percent);
    let n = secret.len();
    for k in 0..3 {
        let mut bytes = vec![0u8; k];
        bytes.extend_from_slice(secret.as_bytes());
        let url_safe = crate::jwt::base64url(&bytes);
        // Groups wholly inside the secret's bits: from ceil(8k/6) to floor(8(k+n)/6).
        let first = (8 * k).div_ceil(6);
        let last = 8 * (k + n) / 6;
        if last > first {
            let part = &url_safe[first..last];
            forms.push(part.to_string());
            forms.push(part.replace('-', "+").replace('_', "/"));
        }
    }
    forms.sort();
    forms.dedup();
    forms
}
