//! A record as the operator caches it: the Secret packed into one JSON buffer, with the fields
//! every round filters on (namespace, name, binding) kept beside it. A round unpacks only its
//! binding's records; the cache holds one allocation per record instead of a Secret's maps and
//! strings (at 10,000 records those were the operator's largest cache).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;

use crate::record::schema::{BINDING_LABEL, MANAGED_BY_LABEL};

/// Largest Secret kept whole: a record is at most about 2 KiB (names, accessors, times, a
/// bounded receipt, the signature and a wrapping token), and 16 KiB leaves room for what other
/// tools annotate. A bigger one (a tenant's Secret labelled as a record) is kept as a stub
/// naming it, never read as a record: a Secret labelled as a record costs the operator at most
/// 16 KiB, and a larger one only its name and labels.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// A cached record (see the module doc).
#[derive(Clone, Default, PartialEq)]
pub struct CachedRecord {
    /// Namespace.
    pub namespace: Box<str>,
    /// Secret name.
    pub name: Box<str>,
    /// The binding label, if any.
    pub binding: Option<Box<str>>,
    /// The resourceVersion it was watched at (a round waits for its own writes by it).
    pub resource_version: Box<str>,
    /// The Secret, managed fields dropped, as JSON (the wrapping token included: never shown).
    packed: Box<[u8]>,
    /// Larger than [`MAX_RECORD_BYTES`]: only its name and labels were kept.
    pub oversized: bool,
}

impl CachedRecord {
    /// Packs a watched Secret.
    pub fn pack(mut secret: Secret) -> Self {
        secret.metadata.managed_fields = None;
        Self {
            namespace: secret
                .metadata
                .namespace
                .as_deref()
                .unwrap_or_default()
                .into(),
            name: secret.metadata.name.as_deref().unwrap_or_default().into(),
            binding: secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(BINDING_LABEL))
                .map(|b| b.as_str().into()),
            resource_version: secret
                .metadata
                .resource_version
                .as_deref()
                .unwrap_or_default()
                .into(),
            packed: Box::default(),
            oversized: false,
        }
        .with(secret)
    }

    fn with(mut self, secret: Secret) -> Self {
        let packed = serde_json::to_vec(&secret).unwrap_or_default();
        if packed.len() <= MAX_RECORD_BYTES {
            self.packed = packed.into_boxed_slice();
            return self;
        }
        let labels = secret.metadata.labels.map(|l| {
            l.into_iter()
                .filter(|(k, _)| k == MANAGED_BY_LABEL || k == BINDING_LABEL)
                .collect::<BTreeMap<_, _>>()
        });
        let stub = Secret {
            metadata: ObjectMeta {
                name: secret.metadata.name,
                namespace: secret.metadata.namespace,
                labels,
                ..Default::default()
            },
            ..Default::default()
        };
        self.packed = serde_json::to_vec(&stub)
            .unwrap_or_default()
            .into_boxed_slice();
        self.oversized = true;
        self
    }

    /// The Secret as it was watched (managed fields aside). `None` only if it could not be
    /// packed, which a Secret read from the API server never is.
    pub fn unpack(&self) -> Option<Secret> {
        serde_json::from_slice(&self.packed).ok()
    }
}

/// Shows where the record is, never what it holds.
impl std::fmt::Debug for CachedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRecord")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("binding", &self.binding)
            .field("packed_bytes", &self.packed.len())
            .finish()
    }
}

/// True when a cached `cached` resourceVersion is `written` or later. Versions are opaque to
/// clients; the API server's are etcd revisions, compared as numbers when both are (anything
/// else counts only when equal).
pub fn version_reached(cached: &str, written: &str) -> bool {
    match (cached.parse::<u64>(), written.parse::<u64>()) {
        (Ok(c), Ok(w)) => c >= w,
        _ => cached == written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_reached_by_itself_and_by_later_revisions_only() {
        assert!(version_reached("42", "42"));
        assert!(version_reached("43", "42"));
        assert!(
            version_reached("100", "99"),
            "compared as numbers, not as text"
        );
        assert!(!version_reached("41", "42"));
        assert!(!version_reached("99", "100"));
        assert!(version_reached("opaque", "opaque"));
        assert!(!version_reached("opaque-2", "opaque-1"));
        assert!(!version_reached("43", "opaque"));
    }

    #[test]
    fn a_secret_too_large_to_be_a_record_is_kept_as_a_stub() {
        let big = "A".repeat(MAX_RECORD_BYTES);
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "huge", "namespace": "team",
                "labels": {"app.kubernetes.io/managed-by": "cubbyhole", "cubbyhole.dev/binding": "agents", "other": "x"},
                "annotations": {"cubbyhole.dev/pod": "p", "cubbyhole.dev/pod-uid": "u"},
            },
            "data": {"token": k8s_openapi::ByteString(big.into_bytes())},
        }))
        .unwrap();
        let record = CachedRecord::pack(secret);
        assert!(record.oversized);
        assert!(
            record.packed.len() < 1024,
            "{} bytes kept",
            record.packed.len()
        );
        assert_eq!(
            (&*record.namespace, record.binding.as_deref()),
            ("team", Some("agents"))
        );
        let stub = record.unpack().unwrap();
        assert_eq!(stub.metadata.name.as_deref(), Some("huge"));
        assert!(stub.data.is_none() && stub.metadata.annotations.is_none());
        assert_eq!(stub.metadata.labels.unwrap().len(), 2);
        // A real record is kept whole.
        let small: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r", "namespace": "team"},
            "data": {"token": "aHZzLnNlY3JldA=="},
        }))
        .unwrap();
        let kept = CachedRecord::pack(small.clone());
        assert!(!kept.oversized);
        assert_eq!(kept.unpack(), Some(small));
    }

    #[test]
    fn a_packed_record_unpacks_to_the_watched_secret_without_managed_fields() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": "agent-0-wrap", "namespace": "team", "uid": "u-1", "resourceVersion": "42",
                "labels": {"app.kubernetes.io/managed-by": "cubbyhole", "cubbyhole.dev/binding": "agents"},
                "annotations": {"cubbyhole.dev/phase": "Issued", "cubbyhole.dev/signature": "v1:k:00"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "agent-0", "uid": "p-1"}],
                "finalizers": ["cubbyhole.dev/revoke"],
                "managedFields": [{"manager": "cubbyhole", "operation": "Apply", "apiVersion": "v1"}],
            },
            "data": {"token": "aHZzLnNlY3JldA=="},
            "type": "Opaque",
        }))
        .unwrap();
        let record = CachedRecord::pack(secret.clone());
        assert_eq!(
            (&*record.namespace, &*record.name, record.binding.as_deref()),
            ("team", "agent-0-wrap", Some("agents"))
        );
        let mut expected = secret;
        expected.metadata.managed_fields = None;
        assert_eq!(record.unpack(), Some(expected));
        assert_eq!(record.binding.as_deref(), Some("agents"));
        assert_eq!(
            (&*record.namespace, &*record.name),
            ("team", "agent-0-wrap")
        );
        let shown = format!("{record:?}");
        assert!(
            shown.contains("agent-0-wrap") && !shown.contains("aHZz"),
            "{shown}"
        );
        let unlabelled = CachedRecord::pack(Secret::default());
        assert_eq!(unlabelled.binding, None);
        assert_eq!(unlabelled.unpack(), Some(Secret::default()));
    }
}
