//! What a pod looks like to the planner: its identity, restarts and the receipts its agent
//! left, and the name of the Secret it is served in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::agent::receipt::Receipt;
use crate::core::labels::Labels;
use crate::record::schema::SECRET_NAME_ANNOTATION;

/// A receipt found in a container's termination message.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedReceipt {
    /// Container that wrote it.
    pub container: String,
    /// The receipt.
    pub receipt: Receipt,
    /// When that container instance finished (kubelet clock).
    pub finished_at: Option<Timestamp>,
}

/// Name of the injected `cubbyhole unwrap` init container when the binding names no
/// `agentContainer`. Receipts count only from it and from the binding's `agentContainer`.
pub const UNWRAP_CONTAINER: &str = "cubbyhole-unwrap";

/// Most bytes of labels (keys and values) a pod may carry and still be read with them. A pod
/// over it is read without labels, so no binding selects it: one tenant's huge labels cannot
/// fill the operator's memory (the API server allows about 1 MiB per object).
pub const MAX_POD_LABEL_BYTES: usize = 16 * 1024;

/// Bytes of a label map's keys and values.
pub fn label_bytes(labels: &BTreeMap<String, String>) -> usize {
    labels.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// What the planner needs to know about a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
    /// Labels.
    pub labels: Labels,
    /// The `cubbyhole.dev/secret-name` annotation.
    pub secret_name: Option<String>,
    /// Being deleted.
    pub terminating: bool,
    /// Phase Succeeded or Failed: no process left to hold a token.
    pub finished: bool,
    /// Restart count per container name (init and regular).
    pub restart_counts: BTreeMap<String, u32>,
    /// Receipts in termination messages, newest instance first per container.
    pub receipts: Vec<ObservedReceipt>,
}

/// A pod as its watch reads it: metadata and status, never the spec. The spec (most of a real
/// pod, and never read by the planner) is skipped rather than parsed and dropped.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WatchedPod {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

impl k8s_openapi::Resource for WatchedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for WatchedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A pod as the operator caches it: read into a [`PodView`] once, when its watch delivers it,
/// so the cache keeps only what the planner reads (no metadata or status objects: at 10,000
/// pods those were most of the operator's memory).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedPod {
    /// Namespace.
    pub namespace: Box<str>,
    /// What the planner reads; `uid` is empty for a pod without one (never read).
    pub view: PodView,
    /// Its labels exceed [`MAX_POD_LABEL_BYTES`]: read without them.
    pub oversized: bool,
}

impl CachedPod {
    /// Reads a watched pod.
    pub fn from_watched(pod: WatchedPod) -> Self {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default().into();
        let oversized = pod
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| label_bytes(l) > MAX_POD_LABEL_BYTES);
        let view =
            PodView::from_parts(&pod.metadata, pod.status.as_ref()).unwrap_or_else(|| PodView {
                name: pod.metadata.name.clone().unwrap_or_default(),
                ..Default::default()
            });
        Self {
            namespace,
            view,
            oversized,
        }
    }
}

impl PodView {
    /// Reads a Pod.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        Self::from_parts(&pod.metadata, pod.status.as_ref())
    }

    /// Reads a cached pod (`None` for a pod without uid).
    pub fn from_cached(pod: &CachedPod) -> Option<Self> {
        (!pod.view.uid.is_empty()).then(|| pod.view.clone())
    }

    fn from_parts(meta: &ObjectMeta, status: Option<&PodStatus>) -> Option<Self> {
        let uid = meta.uid.clone()?;
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let mut restart_counts = BTreeMap::new();
        let mut receipts = vec![];
        let statuses = status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .collect::<Vec<&ContainerStatus>>();
        for cs in statuses {
            restart_counts.insert(cs.name.clone(), cs.restart_count.max(0) as u32);
            let terminated = [
                cs.state.as_ref().and_then(|s| s.terminated.as_ref()),
                cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
            ];
            for t in terminated.into_iter().flatten() {
                if let Some(receipt) = t.message.as_deref().and_then(Receipt::parse) {
                    receipts.push(ObservedReceipt {
                        container: cs.name.clone(),
                        receipt,
                        finished_at: t.finished_at.as_ref().map(|f| f.0),
                    });
                }
            }
        }
        Some(Self {
            name: meta.name.clone().unwrap_or_default(),
            uid,
            labels: meta
                .labels
                .as_ref()
                .filter(|l| label_bytes(l) <= MAX_POD_LABEL_BYTES)
                .map(Labels::from_map)
                .unwrap_or_default(),
            // Longer than any valid name: kept invalid, but bounded.
            secret_name: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(SECRET_NAME_ANNOTATION))
                .map(|n| n.chars().take(254).collect()),
            terminating: meta.deletion_timestamp.is_some(),
            finished: matches!(phase, "Succeeded" | "Failed"),
            restart_counts,
            receipts,
        })
    }

    /// The pod's run number: how many times any of its containers (init or regular) was
    /// restarted. A process of the pod that starts anew raises it (once the kubelet reports it).
    pub fn runs(&self) -> u32 {
        self.restart_counts
            .values()
            .fold(0u32, |sum, n| sum.saturating_add(*n))
    }

    /// Newest finish time among this pod's receipts (to mark them as belonging to past starts).
    pub fn newest_receipt_time(&self) -> Option<Timestamp> {
        self.receipts.iter().filter_map(|r| r.finished_at).max()
    }
}

/// The Secret name for a pod: its annotation if set, else `<pod>-<binding>-wrap`, shortened
/// with a hash suffix when that would exceed 253 characters.
pub fn secret_name(pod: &PodView, binding: &str) -> String {
    if let Some(name) = &pod.secret_name {
        return name.clone();
    }
    let full = format!("{}-{}-wrap", pod.name, binding);
    if full.len() <= 253 {
        return full;
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(full.as_bytes()));
    format!(
        "{}-{}",
        full[..240].trim_end_matches(['-', '.']),
        &digest[..10]
    )
}

/// True when `name` is a valid Secret name (DNS-1123 subdomain).
pub fn is_valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn label_bytes_count_keys_and_values_and_the_bound_is_16_kib() {
        let labels = BTreeMap::from([("ab".to_string(), "cde".to_string())]);
        assert_eq!(label_bytes(&labels), 5);
        assert_eq!(MAX_POD_LABEL_BYTES, 16_384);
        // Exactly at the bound: still read with its labels.
        let at_bound = BTreeMap::from([("k".to_string(), "v".repeat(MAX_POD_LABEL_BYTES - 1))]);
        let mut pod = WatchedPod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.uid = Some("u".into());
        pod.metadata.labels = Some(at_bound);
        let cached = CachedPod::from_watched(pod);
        assert!(!cached.oversized);
        assert_eq!(cached.view.labels.len(), 1);
        // A pod without a uid is kept by its name only (never planned for).
        let mut no_uid = WatchedPod::default();
        no_uid.metadata.name = Some("q".into());
        let cached = CachedPod::from_watched(no_uid);
        assert_eq!(
            (cached.view.name.as_str(), cached.view.uid.as_str()),
            ("q", "")
        );
    }

    #[test]
    fn a_pod_with_oversized_labels_is_read_without_them() {
        let big: BTreeMap<String, String> = (0..400)
            .map(|i| (format!("key-{i:04}-{}", "k".repeat(20)), "v".repeat(63)))
            .collect();
        assert!(label_bytes(&big) > MAX_POD_LABEL_BYTES);
        let mut pod = WatchedPod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.uid = Some("u".into());
        pod.metadata.labels = Some(big);
        pod.metadata.annotations = Some(
            [(SECRET_NAME_ANNOTATION.to_string(), "s".repeat(100_000))]
                .into_iter()
                .collect(),
        );
        let cached = CachedPod::from_watched(pod.clone());
        assert!(cached.oversized);
        assert!(
            cached
                .view
                .labels
                .get("key-0000-kkkkkkkkkkkkkkkkkkkk")
                .is_none()
        );
        assert_eq!(cached.view.secret_name.as_ref().map(String::len), Some(254));
        // Within the bound: read as is.
        pod.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let cached = CachedPod::from_watched(pod);
        assert!(!cached.oversized);
        assert_eq!(cached.view.labels.get("app"), Some("web"));
    }

    #[test]
    fn a_pod_is_read_with_its_restarts_receipts_and_secret_name() {
        let unwrapped = Receipt::unwrapped("acc-1").to_line();
        let refused = Receipt::failed(crate::agent::receipt::result::WRITE_FAILED).to_line();
        let view = PodView::from_pod(&pod(serde_json::json!({
            "metadata": {
                "name": "agent-0", "uid": "uid-0",
                "labels": {"app": "agent"},
                "annotations": {"cubbyhole.dev/secret-name": "mine"},
            },
            "status": {
                "phase": "Running",
                "initContainerStatuses": [{
                    "name": "cubbyhole-unwrap", "restartCount": 1, "ready": true, "image": "i", "imageID": "",
                    "state": {"terminated": {"exitCode": 0, "message": unwrapped, "finishedAt": "2026-11-30T04:00:05Z"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": refused, "finishedAt": "2026-11-30T04:00:01Z"}},
                }],
                "containerStatuses": [{
                    "name": "agent", "restartCount": 3, "ready": true, "image": "i", "imageID": "",
                    "state": {"terminated": {"exitCode": 1, "message": "panic: not a receipt"}},
                }],
            },
        })))
        .unwrap();
        assert_eq!(
            (view.name.as_str(), view.uid.as_str()),
            ("agent-0", "uid-0")
        );
        assert_eq!(view.labels.get("app"), Some("agent"));
        assert_eq!(view.secret_name.as_deref(), Some("mine"));
        assert!(!view.terminating && !view.finished);
        assert_eq!(view.restart_counts["cubbyhole-unwrap"], 1);
        assert_eq!(view.restart_counts["agent"], 3);
        // Both instances' receipts, newest first; other messages are not receipts.
        assert_eq!(view.receipts.len(), 2, "{:?}", view.receipts);
        assert_eq!(view.receipts[0].receipt, Receipt::unwrapped("acc-1"));
        assert_eq!(view.receipts[0].container, "cubbyhole-unwrap");
        assert_eq!(
            view.newest_receipt_time(),
            Some("2026-11-30T04:00:05Z".parse().unwrap())
        );
        assert!(!view.receipts[1].receipt.is_unwrapped());
    }

    #[test]
    fn a_cached_pod_reads_as_the_full_pod_and_keeps_neither_spec_nor_metadata() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "agent-1", "namespace": "ns", "uid": "uid-1", "labels": {"app": "agent"},
                         "annotations": {"cubbyhole.dev/secret-name": "s"}},
            "spec": {"containers": [{"name": "agent", "image": "busybox",
                                     "env": [{"name": "A", "value": "1"}]}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "agent", "restartCount": 2, "ready": true, "image": "i", "imageID": "",
            }]},
        });
        let watched: WatchedPod = serde_json::from_value(json.clone()).unwrap();
        let kept = serde_json::to_value(&watched).unwrap();
        assert!(kept.get("spec").is_none(), "{kept}");
        let cached = CachedPod::from_watched(watched);
        assert_eq!(
            PodView::from_cached(&cached),
            PodView::from_pod(&pod(json.clone()))
        );
        assert_eq!(
            PodView::from_cached(&cached).unwrap().restart_counts["agent"],
            2
        );
        assert_eq!((&*cached.namespace, &*cached.view.name), ("ns", "agent-1"));
        // A pod without uid is cached (so its deletion is seen) but never read.
        let nameless = CachedPod::from_watched(
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}}),
            )
            .unwrap(),
        );
        assert_eq!(PodView::from_cached(&nameless), None);
    }

    #[test]
    fn a_finished_or_deleted_pod_is_marked_and_a_pod_without_uid_is_not_read() {
        for (phase, finished) in [("Succeeded", true), ("Failed", true), ("Pending", false)] {
            let view = PodView::from_pod(&pod(serde_json::json!({
                "metadata": {"name": "p", "uid": "u", "deletionTimestamp": "2026-11-30T04:00:00Z"},
                "status": {"phase": phase},
            })))
            .unwrap();
            assert_eq!(view.finished, finished, "{phase}");
            assert!(view.terminating);
            assert_eq!(view.secret_name, None);
        }
        let no_status = PodView::from_pod(&pod(
            serde_json::json!({"metadata": {"name": "p", "uid": "u"}}),
        ));
        assert!(no_status.is_some_and(|v| !v.finished && v.receipts.is_empty()));
        assert_eq!(
            PodView::from_pod(&pod(serde_json::json!({"metadata": {"name": "p"}}))),
            None
        );
    }

    #[test]
    fn names_are_deterministic_valid_and_bounded() {
        let pod = PodView {
            name: "agent-0".into(),
            ..Default::default()
        };
        assert_eq!(secret_name(&pod, "b"), "agent-0-b-wrap");
        let long = PodView {
            name: "p".repeat(250),
            ..Default::default()
        };
        let n = secret_name(&long, "binding");
        assert!(n.len() <= 253 && is_valid_secret_name(&n), "{n}");
        assert_eq!(n, secret_name(&long, "binding"));
        assert_ne!(n, secret_name(&long, "other"));
        let annotated = PodView {
            secret_name: Some("mine".into()),
            ..pod
        };
        assert_eq!(secret_name(&annotated, "b"), "mine");
        assert!(!is_valid_secret_name("Bad_Name"));
        assert!(!is_valid_secret_name("-x"));
    }
}
