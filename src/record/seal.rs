//! Authenticated records: an HMAC-SHA256 over what a per-pod Secret says (namespace, name,
//! binding label and every annotation the operator reads, the free-text message included), so
//! a Secret the operator did not write, or one altered since, is never acted on. Pure; no I/O.
//!
//! The signature is stored in [`ann::SIGNATURE`] as `v2:<key-id>:<hex>`. Keys are numbered:
//! the highest signs, every present one verifies (rotation). Signatures of earlier versions
//! (`v1:`, which did not cover the message) still verify, but their message is not trusted
//! ([`covers_message`]); the operator's next write of such a record signs it as `v2`.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::record::ann;

/// Version tag of the signature format written now.
const VERSION: &str = "v2";
/// The earlier format, still verified: the same, without the message.
const VERSION_1: &str = "v1";
/// Domain separation: these bytes start every signed message and nothing else.
const DOMAIN: &[u8] = b"cubbyhole.dev/record-signature/v2\n";
/// The same for [`VERSION_1`].
const DOMAIN_1: &[u8] = b"cubbyhole.dev/record-signature/v1\n";
/// Shortest key accepted (bytes).
pub const MIN_KEY_LEN: usize = 32;

/// Whether a record was written by this operator (as far as its keys can tell).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Authenticity {
    /// The signature verifies with one of the keys.
    Authentic,
    /// No signature at all: written by a version that did not sign, or by someone else.
    Unsigned,
    /// A signature that does not verify (altered record, unknown key id, bad format).
    Forged,
}

/// What a signature covers: where the record is and what it says.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    /// Secret namespace.
    pub namespace: &'a str,
    /// Secret name.
    pub name: &'a str,
    /// Value of the `cubbyhole.dev/binding` label.
    pub binding: &'a str,
    /// The Secret's annotations; only the keys in [`ann::SIGNED`] are covered.
    pub annotations: &'a BTreeMap<String, String>,
}

/// The record-signing keys by id. Cheap to clone; `Debug` shows only the ids.
#[derive(Clone)]
pub struct RecordKeys {
    keys: BTreeMap<u32, Vec<u8>>,
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKeys")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RecordKeys {
    /// Keys by id; at least one, each at least [`MIN_KEY_LEN`] bytes.
    pub fn new(keys: BTreeMap<u32, Vec<u8>>) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no record key".into());
        }
        if let Some((id, _)) = keys.iter().find(|(_, k)| k.len() < MIN_KEY_LEN) {
            return Err(format!(
                "record key {id} is shorter than {MIN_KEY_LEN} bytes"
            ));
        }
        Ok(Self { keys })
    }

    /// The id that signs (the highest).
    pub fn signing_id(&self) -> u32 {
        *self.keys.keys().next_back().expect("at least one key")
    }

    /// Every id that verifies.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// The signature annotation's value for `fields`, made with the highest key.
    pub fn sign(&self, fields: &Fields) -> String {
        self.sign_as(VERSION, fields)
    }

    /// A signature in the earlier `v1` format (tests of records written before the message
    /// was covered).
    #[cfg(test)]
    pub(crate) fn sign_v1(&self, fields: &Fields) -> String {
        self.sign_as(VERSION_1, fields)
    }

    fn sign_as(&self, version: &str, fields: &Fields) -> String {
        let id = self.signing_id();
        let mac = self.mac(id, version, fields).expect("signing key exists");
        format!(
            "{version}:{id}:{}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// Checks `signature` (the annotation's value, if any) against `fields`, in constant time.
    pub fn verify(&self, fields: &Fields, signature: Option<&str>) -> Authenticity {
        let Some(signature) = signature else {
            return Authenticity::Unsigned;
        };
        let mut parts = signature.splitn(3, ':');
        let (Some(version @ (VERSION | VERSION_1)), Some(id), Some(code)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Authenticity::Forged;
        };
        let (Ok(id), Ok(code)) = (id.parse::<u32>(), hex::decode(code)) else {
            return Authenticity::Forged;
        };
        let made_with = |key: u32| {
            self.mac(key, version, fields)
                .is_some_and(|mac| mac.verify_slice(&code).is_ok())
        };
        // The named key first, then every other: a key keeps verifying when its id changed
        // (two replicas' key Secrets merged, see `signing_keys`). Any key here is trusted.
        if made_with(id) || self.keys.keys().any(|&k| k != id && made_with(k)) {
            Authenticity::Authentic
        } else {
            Authenticity::Forged
        }
    }

    /// The keys by id (for the key Secret).
    pub fn entries(&self) -> &BTreeMap<u32, Vec<u8>> {
        &self.keys
    }

    fn mac(&self, id: u32, version: &str, fields: &Fields) -> Option<Hmac<Sha256>> {
        let key = self.keys.get(&id)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&canonical(fields, version == VERSION));
        Some(mac)
    }
}

/// True when a record's signature (if it verifies) also vouches for its free-text message:
/// signatures of the current format do, `v1` ones did not cover it.
pub fn covers_message(signature: Option<&str>) -> bool {
    signature.is_some_and(|s| s.starts_with(&format!("{VERSION}:")))
}

/// The signed message: a domain tag, then namespace, name, binding and each covered
/// annotation (sorted by key) as key and value, every item prefixed with its length (8 bytes,
/// big endian). Length prefixes make it unambiguous: no two different inputs give one message.
/// `with_message`: the current format, which covers [`ann::MESSAGE`] too.
pub fn canonical(fields: &Fields, with_message: bool) -> Vec<u8> {
    let mut out = if with_message { DOMAIN } else { DOMAIN_1 }.to_vec();
    let mut item = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    item(fields.namespace.as_bytes());
    item(fields.name.as_bytes());
    item(fields.binding.as_bytes());
    for (k, v) in fields.annotations.iter().filter(|(k, _)| {
        ann::SIGNED.contains(&k.as_str()) || (with_message && k.as_str() == ann::MESSAGE)
    }) {
        item(k.as_bytes());
        item(v.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[u32]) -> RecordKeys {
        RecordKeys::new(ids.iter().map(|&i| (i, vec![i as u8; 32])).collect()).unwrap()
    }

    fn record() -> BTreeMap<String, String> {
        ann::SIGNED
            .iter()
            .map(|k| (k.to_string(), format!("value of {k}")))
            .chain([(ann::MESSAGE.to_string(), "hello".to_string())])
            .collect()
    }

    fn fields(a: &BTreeMap<String, String>) -> Fields<'_> {
        Fields {
            namespace: "ns",
            name: "pod-b-wrap",
            binding: "b",
            annotations: a,
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_test_case_2() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_signed_record_verifies_and_the_format_is_v2_id_hex() {
        let k = keys(&[1]);
        let a = record();
        let sig = k.sign(&fields(&a));
        let parts: Vec<&str> = sig.split(':').collect();
        assert_eq!((parts[0], parts[1], parts[2].len()), ("v2", "1", 64));
        assert!(covers_message(Some(&sig)));
        assert_eq!(k.verify(&fields(&a), Some(&sig)), Authenticity::Authentic);
        assert_eq!(k.verify(&fields(&a), None), Authenticity::Unsigned);
    }

    #[test]
    fn tampering_with_any_covered_field_is_forged() {
        let k = keys(&[1]);
        let a = record();
        let sig = k.sign(&fields(&a));
        for key in ann::SIGNED {
            let mut changed = a.clone();
            changed.insert(key.to_string(), "attacker".into());
            assert_eq!(
                k.verify(&fields(&changed), Some(&sig)),
                Authenticity::Forged,
                "changed {key}"
            );
            changed.remove(key);
            assert_eq!(
                k.verify(&fields(&changed), Some(&sig)),
                Authenticity::Forged,
                "removed {key}"
            );
        }
        let f = fields(&a);
        for other in [
            Fields {
                namespace: "other",
                ..f
            },
            Fields {
                name: "other-wrap",
                ..f
            },
            Fields {
                binding: "ghost",
                ..f
            },
        ] {
            assert_eq!(k.verify(&other, Some(&sig)), Authenticity::Forged);
        }
        // An annotation that was absent and is added (even empty) is tampering too.
        let mut fewer = a.clone();
        fewer.remove(ann::ACCESSOR);
        let sig = k.sign(&fields(&fewer));
        fewer.insert(ann::ACCESSOR.into(), String::new());
        assert_eq!(k.verify(&fields(&fewer), Some(&sig)), Authenticity::Forged);
    }

    #[test]
    fn the_message_is_covered_and_foreign_annotations_are_not() {
        let k = keys(&[1]);
        let mut a = record();
        let sig = k.sign(&fields(&a));
        a.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        a.insert(ann::SIGNATURE.into(), sig.clone());
        assert_eq!(k.verify(&fields(&a), Some(&sig)), Authenticity::Authentic);
        a.insert(ann::MESSAGE.into(), "changed".into());
        assert_eq!(k.verify(&fields(&a), Some(&sig)), Authenticity::Forged);
    }

    #[test]
    fn a_v1_signature_still_verifies_but_does_not_vouch_for_the_message() {
        let k = keys(&[1]);
        let mut a = record();
        let sig = k.sign_as(VERSION_1, &fields(&a));
        assert!(sig.starts_with("v1:1:"));
        assert_eq!(k.verify(&fields(&a), Some(&sig)), Authenticity::Authentic);
        a.insert(ann::MESSAGE.into(), "changed".into());
        assert_eq!(k.verify(&fields(&a), Some(&sig)), Authenticity::Authentic);
        assert!(!covers_message(Some(&sig)));
        assert!(!covers_message(None));
        // A v1 signature over v2's message form, or the reverse, never verifies.
        let v2 = k.sign(&fields(&a));
        let relabelled = v2.replacen("v2:", "v1:", 1);
        assert_eq!(
            k.verify(&fields(&a), Some(&relabelled)),
            Authenticity::Forged
        );
    }

    #[test]
    fn bad_signatures_are_forged_and_renumbered_keys_still_verify() {
        let k = keys(&[1]);
        let a = record();
        let sig = k.sign(&fields(&a));
        let code = sig.rsplit(':').next().unwrap();
        let mut flipped = code.to_string().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        // A key renumbered since it signed (merged key Secrets) still verifies.
        assert_eq!(
            k.verify(&fields(&a), Some(&format!("v2:2:{code}"))),
            Authenticity::Authentic
        );
        for bad in [
            format!("v1:1:{code}"),
            format!("v3:1:{code}"),
            format!("v2:1:{flipped}"),
            format!("v2:1:{}", &code[..62]),
            "v2:1:zz".to_string(),
            "v2:one:00".to_string(),
            "v2".to_string(),
            String::new(),
        ] {
            assert_eq!(
                k.verify(&fields(&a), Some(&bad)),
                Authenticity::Forged,
                "{bad}"
            );
        }
        // Another operator's key (same id, other bytes) does not verify.
        let other = RecordKeys::new(BTreeMap::from([(1, vec![9; 32])])).unwrap();
        assert_eq!(other.verify(&fields(&a), Some(&sig)), Authenticity::Forged);
    }

    #[test]
    fn rotation_signs_with_the_newest_and_verifies_with_all() {
        let old = keys(&[1]);
        let both = keys(&[1, 2]);
        let a = record();
        let by_old = old.sign(&fields(&a));
        let by_new = both.sign(&fields(&a));
        assert!(by_new.starts_with("v2:2:"));
        assert_eq!(
            both.verify(&fields(&a), Some(&by_old)),
            Authenticity::Authentic
        );
        assert_eq!(
            both.verify(&fields(&a), Some(&by_new)),
            Authenticity::Authentic
        );
        assert_eq!(old.verify(&fields(&a), Some(&by_new)), Authenticity::Forged);
        assert_eq!(both.signing_id(), 2);
        assert_eq!(both.ids(), vec![1, 2]);
    }

    #[test]
    fn the_encoding_is_unambiguous() {
        let k = keys(&[1]);
        let none = BTreeMap::new();
        // Moving a character between adjacent fields changes the MAC.
        let base = Fields {
            namespace: "ab",
            name: "c",
            binding: "d",
            annotations: &none,
        };
        let moved = [
            Fields {
                namespace: "a",
                name: "bc",
                ..base
            },
            Fields {
                name: "",
                binding: "cd",
                ..base
            },
        ];
        let sig = k.sign(&base);
        for m in moved {
            assert_ne!(canonical(&m, true), canonical(&base, true));
            assert_eq!(k.verify(&m, Some(&sig)), Authenticity::Forged);
        }
        // ... also between an annotation's key, its value and the next annotation.
        let one = BTreeMap::from([
            (ann::ACCESSOR.to_string(), "xy".to_string()),
            (ann::EXPIRES_AT.to_string(), "z".to_string()),
        ]);
        let two = BTreeMap::from([
            (ann::ACCESSOR.to_string(), "x".to_string()),
            (ann::EXPIRES_AT.to_string(), "yz".to_string()),
        ]);
        assert_ne!(
            k.sign(&Fields {
                annotations: &one,
                ..base
            }),
            k.sign(&Fields {
                annotations: &two,
                ..base
            })
        );
        // The binding is not confusable with an annotation value.
        let empty_value = BTreeMap::from([(ann::POD.to_string(), String::new())]);
        assert_ne!(
            canonical(
                &Fields {
                    annotations: &empty_value,
                    ..base
                },
                true
            ),
            canonical(&base, true)
        );
    }

    #[test]
    fn keys_must_exist_and_be_long_enough_and_never_show_in_debug() {
        assert!(RecordKeys::new(BTreeMap::new()).is_err());
        assert!(RecordKeys::new(BTreeMap::from([(1, vec![1; 16])])).is_err());
        let k = RecordKeys::new(BTreeMap::from([(3, vec![0xAB; 32])])).unwrap();
        let debug = format!("{k:?}");
        assert!(debug.contains('3') && !debug.contains("171"), "{debug}");
    }
}
