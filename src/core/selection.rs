//! Which bindings select a pod: the one rule the webhook (at admission), the request endpoint
//! (at an ask) and the controller (its binding index, `CachedBinding`) share. A binding selects
//! a pod when it lives in the pod's namespace, is not being deleted, and its `podSelector`,
//! read by `spec::pod_selector`, matches the pod's labels as `LabelQuery` evaluates them.

use std::sync::Arc;

use kube::ResourceExt;

use crate::core::labels::{LabelQuery, Labels};
use crate::core::spec::{Invalid, pod_selector};
use crate::crd::{AgentSecretBinding, AgentSecretBindingSpec};

/// The bindings of one namespace as they stand towards one pod.
#[derive(Debug, Default)]
pub struct Selection<'a> {
    /// Live bindings whose selector matches the pod, by name.
    pub selecting: Vec<&'a Arc<AgentSecretBinding>>,
    /// Live bindings whose selector cannot be read (they select nothing): name and why, by name.
    pub unreadable: Vec<(String, String)>,
}

/// A binding's pod selector as a query, or why it cannot select anything.
pub fn label_query(spec: &AgentSecretBindingSpec) -> Result<LabelQuery, Invalid> {
    pod_selector(spec).map(LabelQuery::from)
}

/// How the live bindings of `namespace` among `bindings` stand towards a pod with `labels`.
pub fn selecting<'a>(
    bindings: &'a [Arc<AgentSecretBinding>],
    namespace: &str,
    labels: &Labels,
) -> Selection<'a> {
    let mut selection = Selection::default();
    let live = bindings.iter().filter(|b| {
        b.namespace().as_deref() == Some(namespace) && b.metadata.deletion_timestamp.is_none()
    });
    for binding in live {
        match label_query(&binding.spec) {
            Ok(query) if query.matches(labels) => selection.selecting.push(binding),
            Ok(_) => {}
            Err(why) => selection.unreadable.push((binding.name_any(), why.message)),
        }
    }
    selection.selecting.sort_by_key(|b| b.name_any());
    selection.unreadable.sort();
    selection
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn binding(
        ns: &str,
        name: &str,
        selector: serde_json::Value,
        deleting: bool,
    ) -> Arc<AgentSecretBinding> {
        let mut metadata = serde_json::json!({"name": name, "namespace": ns});
        if deleting {
            metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
                "metadata": metadata,
                "spec": {"podSelector": selector, "vault": {"tokenRole": "r"}},
            }))
            .unwrap(),
        )
    }

    fn names(selection: &Selection) -> Vec<String> {
        selection.selecting.iter().map(|b| b.name_any()).collect()
    }

    #[test]
    fn only_live_bindings_of_the_pods_namespace_whose_selector_matches_select_it() {
        let web = serde_json::json!({"matchLabels": {"app": "web"}});
        let bindings = [
            binding("team", "zeta", web.clone(), false),
            binding(
                "team",
                "alpha",
                serde_json::json!({"matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["db"]}]}),
                false,
            ),
            binding("team", "going", web.clone(), true),
            binding("other", "elsewhere", web.clone(), false),
            binding(
                "team",
                "api",
                serde_json::json!({"matchLabels": {"app": "api"}}),
                false,
            ),
            binding(
                "team",
                "broken",
                serde_json::json!({"matchExpressions": [
                {"key": "app", "operator": "In", "values": []}]}),
                false,
            ),
        ];
        let labels = Labels::from_map(&BTreeMap::from([("app".into(), "web".into())]));
        let selection = selecting(&bindings, "team", &labels);
        assert_eq!(names(&selection), ["alpha", "zeta"], "sorted by name");
        assert_eq!(selection.unreadable.len(), 1);
        assert_eq!(selection.unreadable[0].0, "broken");
        let db = Labels::from_map(&BTreeMap::from([("tier".into(), "db".into())]));
        assert!(names(&selecting(&bindings, "team", &db)).is_empty());
        assert!(selecting(&bindings, "nobody", &labels).selecting.is_empty());
    }
}
