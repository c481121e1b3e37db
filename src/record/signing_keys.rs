//! The record-signing keys: the Secret `cubbyhole-record-key` in the operator's namespace,
//! with data entries `key-<n>` (32 random bytes each). Loaded at start; created with one key
//! when absent (replicas racing to create it all end up with the one that won). Never logged.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::record::seal::RecordKeys;

/// Name of the Secret holding the keys.
pub const KEY_SECRET: &str = "cubbyhole-record-key";
/// Label on the key Secret (not `managed-by`, so the per-pod record watch never sees it).
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// Prefix of each key's data entry: `key-<n>`; the highest `n` signs.
pub const KEY_PREFIX: &str = "key-";
/// Bytes of a generated key.
const KEY_LEN: usize = 32;

/// Reads the keys from the key Secret: every `key-<n>` entry (other entries are ignored).
pub fn keys_from_secret(secret: &Secret) -> Result<RecordKeys, String> {
    let keys: BTreeMap<u32, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(name, value)| {
            let n = name.strip_prefix(KEY_PREFIX)?.parse().ok()?;
            Some((n, value.0.clone()))
        })
        .collect();
    RecordKeys::new(keys).map_err(|e| format!("Secret {KEY_SECRET}: {e}"))
}

/// A new key Secret holding `key-1`.
pub fn new_key_secret(namespace: &str, key: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(KEY_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                PART_OF_LABEL.to_string(),
                crate::record::MANAGED_BY.to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            format!("{KEY_PREFIX}1"),
            ByteString(key),
        )])),
        ..Default::default()
    }
}

/// 32 bytes from the kernel's random source.
fn random_key() -> Result<Vec<u8>, String> {
    let mut key = vec![0; KEY_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(key)
}

/// Loads the keys from `namespace`, creating the Secret when absent. Retries with backoff
/// while the API server fails; errors only when the Secret is unusable or on shutdown.
pub async fn load(
    client: Client,
    namespace: &str,
    shutdown: &CancellationToken,
) -> Result<RecordKeys, String> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let mut delay = Duration::from_millis(500);
    loop {
        match load_once(&api, namespace).await {
            Ok(Some(keys)) => {
                info!(namespace, secret = KEY_SECRET, key_ids = ?keys.ids(), signing = keys.signing_id(),
                    "record keys loaded");
                return Ok(keys);
            }
            // Lost a creation race: read the winner's key next.
            Ok(None) => continue,
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                warn!(namespace, secret = KEY_SECRET, error = %e, "loading record keys failed; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Err("shut down before the record keys were loaded".into()),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

enum Attempt {
    Fatal(String),
    Retry(kube::Error),
}

/// One get-or-create; `Ok(None)` when someone else created the Secret first.
async fn load_once(api: &Api<Secret>, namespace: &str) -> Result<Option<RecordKeys>, Attempt> {
    if let Some(secret) = api.get_opt(KEY_SECRET).await.map_err(Attempt::Retry)? {
        return keys_from_secret(&secret).map(Some).map_err(Attempt::Fatal);
    }
    let secret = new_key_secret(namespace, random_key().map_err(Attempt::Fatal)?);
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            info!(namespace, secret = KEY_SECRET, "created the record key");
            keys_from_secret(&created).map(Some).map_err(Attempt::Fatal)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(Attempt::Retry(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_secret_is_labelled_part_of_and_loads() {
        let key = random_key().unwrap();
        assert_eq!(key.len(), 32);
        assert_ne!(key, random_key().unwrap());
        let s = new_key_secret("cubbyhole-system", key);
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(
            labels.get(PART_OF_LABEL).map(String::as_str),
            Some("cubbyhole")
        );
        assert!(!labels.contains_key(crate::record::MANAGED_BY_LABEL));
        let keys = keys_from_secret(&s).unwrap();
        assert_eq!((keys.ids(), keys.signing_id()), (vec![1], 1));
    }

    #[test]
    fn the_highest_key_signs_and_junk_entries_are_ignored() {
        let mut s = new_key_secret("ns", vec![1; 32]);
        let data = s.data.as_mut().unwrap();
        data.insert("key-2".into(), ByteString(vec![2; 32]));
        data.insert("key-x".into(), ByteString(vec![3; 32]));
        data.insert(
            "README".into(),
            ByteString(b"rotate by adding key-3".to_vec()),
        );
        let keys = keys_from_secret(&s).unwrap();
        assert_eq!((keys.ids(), keys.signing_id()), (vec![1, 2], 2));
    }

    #[test]
    fn an_unusable_key_secret_is_an_error() {
        let mut s = new_key_secret("ns", vec![1; 32]);
        s.data = Some(BTreeMap::new());
        assert!(keys_from_secret(&s).is_err());
        s.data = Some(BTreeMap::from([(
            "key-1".to_string(),
            ByteString(vec![1; 8]),
        )]));
        let err = keys_from_secret(&s).unwrap_err();
        assert!(err.contains("shorter"), "{err}");
    }
}
