//! The record-signing keys: the Secret `cubbyhole-record-key` in the operator's namespace,
//! with data entries `key-<n>` (32 random bytes each). Loaded at start; created with one key
//! when absent (replicas racing to create it all end up with the one that won). Never logged.
//!
//! Kept up while the operator runs ([`keep`], every [`KEY_RECHECK`]): an edit of the Secret
//! (a key added to rotate, an old one removed) is adopted; a deleted Secret is restored from
//! the keys in memory; a Secret created anew by someone else (a replica restarted while it was
//! gone made a new key) gets the keys in memory added under new ids. So replicas converge on
//! one set and never treat each other's records as forged. A key whose id changed still
//! verifies (`RecordKeys::verify` tries every key).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::record::seal::RecordKeys;

/// Name of the Secret holding the keys.
pub const KEY_SECRET: &str = "cubbyhole-record-key";
/// Label on the key Secret (not `managed-by`, so the per-pod record watch never sees it).
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// Prefix of each key's data entry: `key-<n>`; the highest `n` signs.
pub const KEY_PREFIX: &str = "key-";
/// Bytes of a generated key.
const KEY_LEN: usize = 32;
/// How often a running operator reads the key Secret again.
pub const KEY_RECHECK: Duration = Duration::from_secs(10);

/// The record keys in use, replaced whole when the key Secret changes.
pub struct KeyRing {
    keys: RwLock<Arc<RecordKeys>>,
}

impl KeyRing {
    /// A ring holding `keys`.
    pub fn new(keys: RecordKeys) -> Self {
        Self {
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    /// The keys in use now.
    pub fn current(&self) -> Arc<RecordKeys> {
        self.keys.read().expect("key ring lock").clone()
    }

    fn replace(&self, keys: RecordKeys) {
        *self.keys.write().expect("key ring lock") = Arc::new(keys);
    }
}

/// What to do about the key Secret as found, given the keys in use and the uid of the Secret
/// they were read from.
#[derive(Debug)]
pub enum Upkeep {
    /// It holds what is in use.
    Nothing,
    /// Use what it holds (edited: a key added or removed; or created by someone else, holding
    /// every key in use already). The uid is the Secret's.
    Adopt(RecordKeys, String),
    /// It is gone: create it again with the keys in use.
    Restore(Secret),
    /// Someone else created it anew: write it back with the keys in use added (under new
    /// ids), guarded by the resourceVersion it was read at.
    Merge(Secret),
}

/// Decides the [`Upkeep`] for `found` (`None`: absent). An unusable Secret is an error (the
/// keys in use stay).
pub fn upkeep(
    namespace: &str,
    in_use: &RecordKeys,
    from_uid: &str,
    found: Option<&Secret>,
) -> Result<Upkeep, String> {
    let Some(found) = found else {
        return Ok(Upkeep::Restore(key_secret(namespace, in_use.entries())));
    };
    let keys = keys_from_secret(found)?;
    let uid = found.uid().unwrap_or_default();
    if uid == from_uid {
        if keys.entries() == in_use.entries() {
            return Ok(Upkeep::Nothing);
        }
        return Ok(Upkeep::Adopt(keys, uid));
    }
    let mut merged = keys.entries().clone();
    for key in in_use.entries().values() {
        if !merged.values().any(|k| k == key) {
            let id = merged.keys().next_back().map_or(1, |n| n + 1);
            merged.insert(id, key.clone());
        }
    }
    if &merged == keys.entries() {
        return Ok(Upkeep::Adopt(keys, uid));
    }
    let mut secret = key_secret(namespace, &merged);
    secret.metadata.resource_version = found.resource_version();
    Ok(Upkeep::Merge(secret))
}

/// Keeps `ring` in step with the key Secret in `api` (read from the Secret with `uid`) until
/// `shutdown`. See the module's doc.
pub async fn keep(
    api: Api<Secret>,
    ring: Arc<KeyRing>,
    mut uid: String,
    shutdown: CancellationToken,
) {
    let namespace = api_namespace(&api);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEY_RECHECK) => {}
            _ = shutdown.cancelled() => return,
        }
        let found = match api.get_opt(KEY_SECRET).await {
            Ok(found) => found,
            Err(e) => {
                warn!(secret = KEY_SECRET, error = %e, "reading the record keys failed; retrying");
                continue;
            }
        };
        let step = match upkeep(&namespace, &ring.current(), &uid, found.as_ref()) {
            Ok(step) => step,
            Err(e) => {
                warn!(secret = KEY_SECRET, error = %e, "the record key Secret is unusable; signing with the keys in use");
                continue;
            }
        };
        match step {
            Upkeep::Nothing => {}
            Upkeep::Adopt(keys, found_uid) => {
                info!(secret = KEY_SECRET, key_ids = ?keys.ids(), signing = keys.signing_id(), "record keys reloaded");
                ring.replace(keys);
                uid = found_uid;
            }
            Upkeep::Restore(secret) => match api.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    warn!(
                        secret = KEY_SECRET,
                        "the record key Secret was deleted; restored it from the keys in use"
                    );
                    uid = created.uid().unwrap_or_default();
                }
                Err(e) => {
                    warn!(secret = KEY_SECRET, error = %e, "restoring the record keys failed; retrying")
                }
            },
            // A merge patch (the operator may patch Secrets, not update them): the merged set
            // holds every key found, and the resourceVersion read guards it.
            Upkeep::Merge(secret) => match api
                .patch(KEY_SECRET, &PatchParams::default(), &Patch::Merge(&secret))
                .await
            {
                Ok(written) => match keys_from_secret(&written) {
                    Ok(keys) => {
                        warn!(secret = KEY_SECRET, key_ids = ?keys.ids(), "the record key Secret was made anew; added the keys in use to it");
                        ring.replace(keys);
                        uid = written.uid().unwrap_or_default();
                    }
                    Err(e) => warn!(secret = KEY_SECRET, error = %e, "merged record keys unusable"),
                },
                Err(e) => {
                    warn!(secret = KEY_SECRET, error = %e, "merging the record keys failed; retrying")
                }
            },
        }
    }
}

fn api_namespace(api: &Api<Secret>) -> String {
    api.namespace().unwrap_or_default().to_string()
}

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
    key_secret(namespace, &BTreeMap::from([(1, key)]))
}

/// A key Secret holding `keys` (`key-<id>` each).
fn key_secret(namespace: &str, keys: &BTreeMap<u32, Vec<u8>>) -> Secret {
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
        data: Some(
            keys.iter()
                .map(|(id, key)| (format!("{KEY_PREFIX}{id}"), ByteString(key.clone())))
                .collect(),
        ),
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
) -> Result<(RecordKeys, String), String> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let mut backoff = Backoff::at_start();
    loop {
        match load_once(&api, namespace).await {
            Ok(Some((keys, uid))) => {
                info!(namespace, secret = KEY_SECRET, key_ids = ?keys.ids(), signing = keys.signing_id(),
                    "record keys loaded");
                return Ok((keys, uid));
            }
            // Lost a creation race: read the winner's key next.
            Ok(None) => continue,
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                warn!(namespace, secret = KEY_SECRET, error = %e, "loading record keys failed; retrying")
            }
        }
        if !backoff.wait(shutdown).await {
            return Err("shut down before the record keys were loaded".into());
        }
    }
}

enum Attempt {
    Fatal(String),
    Retry(kube::Error),
}

/// One get-or-create: the keys and the Secret's uid; `Ok(None)` when someone else created the
/// Secret first.
async fn load_once(
    api: &Api<Secret>,
    namespace: &str,
) -> Result<Option<(RecordKeys, String)>, Attempt> {
    let read = |secret: &Secret| {
        let keys = keys_from_secret(secret).map_err(Attempt::Fatal)?;
        Ok(Some((keys, secret.uid().unwrap_or_default())))
    };
    if let Some(secret) = api.get_opt(KEY_SECRET).await.map_err(Attempt::Retry)? {
        return read(&secret);
    }
    let secret = new_key_secret(namespace, random_key().map_err(Attempt::Fatal)?);
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            info!(namespace, secret = KEY_SECRET, "created the record key");
            read(&created)
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

    fn found(keys: &[(u32, u8)], uid: &str) -> Secret {
        let entries = keys.iter().map(|&(id, b)| (id, vec![b; 32])).collect();
        let mut s = key_secret("ns", &entries);
        s.metadata.uid = Some(uid.into());
        s.metadata.resource_version = Some("7".into());
        s
    }

    #[test]
    fn the_key_secret_is_kept_in_step_with_the_keys_in_use() {
        let in_use = keys_from_secret(&found(&[(1, 1)], "u1")).unwrap();
        let ids = |s: &Secret| keys_from_secret(s).unwrap().ids();
        // Unchanged.
        let same = found(&[(1, 1)], "u1");
        assert!(matches!(
            upkeep("ns", &in_use, "u1", Some(&same)),
            Ok(Upkeep::Nothing)
        ));
        // Gone: restored with the keys in use.
        let Ok(Upkeep::Restore(restored)) = upkeep("ns", &in_use, "u1", None) else {
            panic!("not restored");
        };
        assert_eq!(
            keys_from_secret(&restored).unwrap().entries(),
            in_use.entries()
        );
        assert_eq!(restored.resource_version(), None, "created, not replaced");
        // Edited (rotated: key-2 added): adopted, key-2 signs.
        let rotated = found(&[(1, 1), (2, 2)], "u1");
        let Ok(Upkeep::Adopt(keys, uid)) = upkeep("ns", &in_use, "u1", Some(&rotated)) else {
            panic!("not adopted");
        };
        assert_eq!(
            (keys.ids(), keys.signing_id(), uid.as_str()),
            (vec![1, 2], 2, "u1")
        );
        // Made anew by a replica restarted while it was gone (its own new key-1): the key in
        // use is added under a new id, guarded by the resourceVersion read.
        let anew = found(&[(1, 9)], "u2");
        let Ok(Upkeep::Merge(merged)) = upkeep("ns", &in_use, "u1", Some(&anew)) else {
            panic!("not merged");
        };
        assert_eq!(ids(&merged), vec![1, 2]);
        let merged_keys = keys_from_secret(&merged).unwrap();
        assert_eq!(merged_keys.entries()[&1], vec![9; 32]);
        assert_eq!(merged_keys.entries()[&2], vec![1; 32]);
        assert_eq!(merged.resource_version().as_deref(), Some("7"));
        // The other replica then finds it holding its key already: adopted as it is.
        let other = keys_from_secret(&found(&[(1, 9)], "u2")).unwrap();
        let mut written = merged.clone();
        written.metadata.uid = Some("u2".into());
        assert!(matches!(
            upkeep("ns", &other, "u2", Some(&written)),
            Ok(Upkeep::Adopt(_, _))
        ));
        // A Secret emptied by hand is an error: the keys in use stay.
        let mut emptied = same.clone();
        emptied.data = Some(BTreeMap::new());
        assert!(upkeep("ns", &in_use, "u1", Some(&emptied)).is_err());
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
