//! The leak scan's encodings: a token hidden in base64 (as in Secret data or a logged request
//! body) or percent-encoding is still found.

use cubbyhole_testkit::leaks::{TokenScan, encoded_forms};

/// Standard base64 with padding, as `base64` and Kubernetes Secret data write it.
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn a_token_in_base64_at_any_offset_or_percent_encoded_is_found() {
    let token = "hvs.CAESIJ3xLq9_secret+token/with=odd&chars";
    let forms = encoded_forms(token);
    for prefix in ["", "a", "ab", "abc", "{\"token\":\"", "X-Vault-Token: "] {
        let text = b64(format!("{prefix}{token}\n").as_bytes());
        assert!(
            forms.iter().any(|f| text.contains(f.as_str())),
            "base64 after {prefix:?} not found"
        );
    }
    let url = "token=hvs.CAESIJ3xLq9_secret%2Btoken%2Fwith%3Dodd%26chars";
    assert!(forms.iter().any(|f| url.contains(f.as_str())));
    // Text without the token matches none of its forms.
    let clean = b64(b"hvs.CAESIJ3xLq9_other+token/with=odd&chars");
    assert!(!forms.iter().any(|f| clean.contains(f.as_str())));
    assert!(forms.iter().all(|f| f.len() >= 20), "{forms:?}");
}

#[test]
fn one_scan_names_whichever_token_is_found_in_any_form() {
    let tokens: Vec<String> = (0..300)
        .map(|i| format!("hvs.CAESI{i:04}abcdefghijklmnopqrstuvwxyz"))
        .collect();
    let scan = TokenScan::new(&tokens);
    let noise = "x".repeat(100_000);
    assert_eq!(scan.first_in(&noise), None);
    for i in [0, 137, 299] {
        let t = &tokens[i];
        for text in [
            format!("{noise}{t}"),
            format!("{}{noise}", b64(format!("ab{t}").as_bytes())),
        ] {
            assert_eq!(scan.first_in(&text), Some(i), "token #{i} in {:.40}", text);
        }
    }
}
