//! Secrets hygiene checks: no token in any text the program printed.

use cubbyhole::vault::VaultError;

/// Panics when `text` (named `what` in the message) contains any of `secrets`.
pub fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    for (i, secret) in secrets.iter().enumerate() {
        assert!(secret.len() >= 8, "secret #{i} is too short to check for");
        assert!(!text.contains(secret), "{what} leaks secret #{i}");
    }
}

/// Standard base64 without padding, as Secret data shows binary values.
pub fn base64(bytes: &[u8]) -> String {
    crate::jwt::base64url(bytes)
        .replace('-', "+")
        .replace('_', "/")
}

/// The body lines (at least 40 characters) of every PEM private key in `text`: no output may
/// show any of them.
pub fn private_key_lines(text: &str) -> Vec<String> {
    let mut lines = vec![];
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        // Inside JSON a marker may follow other text on its line.
        if line.contains("-----BEGIN") && line.contains("PRIVATE KEY") {
            inside = true;
        } else if line.contains("-----END") {
            inside = false;
        } else if inside && line.len() >= 40 {
            lines.push(line.to_string());
        }
    }
    lines
}

/// Every token in every [`encoded_forms`] of it, searched for in one pass over a text.
pub struct TokenScan {
    automaton: aho_corasick::AhoCorasick,
    /// Pattern number -> the token it is a form of.
    token_of: Vec<usize>,
}

impl TokenScan {
    /// A scan for `tokens` (each at least 8 bytes: a shorter one proves nothing).
    pub fn new(tokens: &[String]) -> Self {
        let mut forms = vec![];
        let mut token_of = vec![];
        for (i, t) in tokens.iter().enumerate() {
            assert!(t.len() >= 8, "token #{i} too short to scan for");
            for form in encoded_forms(t) {
                forms.push(form);
                token_of.push(i);
            }
        }
        let automaton =
            aho_corasick::AhoCorasick::new(&forms).expect("an automaton of the token forms");
        Self {
            automaton,
            token_of,
        }
    }

    /// The index of a token found in `text`, in any of its forms.
    pub fn first_in(&self, text: &str) -> Option<usize> {
        let found = self.automaton.find(text)?;
        Some(self.token_of[found.pattern().as_usize()])
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
