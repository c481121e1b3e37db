//! The `AgentSecretBinding` custom resource: what users write, and the status we report back.

use crate::record::Phase;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares which pods get a response-wrapped Vault token, from which token role, with what TTLs.
///
/// The operator mints one single-use wrapping token per pod start and writes it into a Secret
/// owned by the pod; the pod unwraps it (`cubbyhole unwrap` or `vault unwrap`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cubbyhole.dev",
    version = "v1alpha1",
    kind = "AgentSecretBinding",
    plural = "agentsecretbindings",
    shortname = "asb",
    category = "cubbyhole",
    namespaced,
    status = "AgentSecretBindingStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.vault.tokenRole"}"#,
    printcolumn = r#"{"name":"Delivery","type":"string","jsonPath":".spec.delivery","priority":1}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pending"}"#,
    printcolumn = r#"{"name":"Unwrapped","type":"integer","jsonPath":".status.unwrapped"}"#,
    printcolumn = r#"{"name":"Expired","type":"integer","jsonPath":".status.expired"}"#,
    printcolumn = r#"{"name":"Tampered","type":"integer","jsonPath":".status.tampered"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.podSelector.matchLabels) && size(self.podSelector.matchLabels) > 0) || (has(self.podSelector.matchExpressions) && size(self.podSelector.matchExpressions) > 0)",
        "message": "podSelector must not be empty: an empty selector would hand tokens to every pod in the namespace"
    },
    {
        "rule": "!has(self.secretKey) || (self.secretKey != '.' && self.secretKey != '..')",
        "message": "secretKey must not be '.' or '..'"
    }
]))]
pub struct AgentSecretBindingSpec {
    /// Pods (in the binding's namespace) that get a wrapped token: a label selector of at most
    /// 16 labels and 16 expressions (64 values each). Must not be empty.
    #[schemars(schema_with = "bounded_selector")]
    pub pod_selector: LabelSelector,

    /// What to ask Vault for.
    pub vault: VaultTokenSpec,

    /// Key of the per-pod Secret that holds the wrapping token. Default `token`.
    #[serde(default = "default_secret_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub secret_key: String,

    /// Name of the container (init or regular) whose restarts count as new starts: when its
    /// restart count grows after the previous wrap was consumed or expired, the pod gets a fresh
    /// wrap. Unset: one wrap per pod (per pod uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_container: Option<String>,

    /// Revoke the pod's Vault token when the pod goes away (deleted, succeeded or failed).
    /// Default true; set false for tokens meant to outlive the pod (they still expire by TTL).
    #[serde(default = "default_true")]
    pub revoke_on_pod_deletion: bool,

    /// How the wrap reaches the pod. `Secret` (default): the operator mints at each pod start
    /// and writes the wrapping token into the per-pod Secret. `Request`: the pod's agent asks
    /// the operator's endpoint for it, proving who it is with its projected service-account
    /// token; the wrap is minted then and travels only in that TLS answer, never in a Secret.
    #[serde(default)]
    pub delivery: Delivery,
}

/// How a binding's wraps reach their pods.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Delivery {
    /// Minted at each pod start and written into the per-pod Secret.
    #[default]
    Secret,
    /// Minted when the pod's agent asks the operator's endpoint, and returned only to it.
    Request,
}

/// The Vault token request made for each pod start.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.wrapTTL) >= duration('5s') && duration(self.wrapTTL) <= duration('1h')",
        "message": "wrapTTL must be between 5s and 1h"
    },
    {
        "rule": "!has(self.tokenTTL) || (duration(self.tokenTTL) >= duration('1s') && duration(self.tokenTTL) <= duration('8760h'))",
        "message": "tokenTTL must be between 1s and 8760h"
    }
]))]
pub struct VaultTokenSpec {
    /// Vault token role: the token is created at `auth/token/create/<tokenRole>`. The operator's
    /// configuration lists which roles each namespace may use.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
        length(min = 1, max = 128)
    )]
    pub token_role: String,

    /// Policies for the token; must be allowed by the role. Empty: the role's defaults. At most
    /// 64, each at most 256 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub policies: Vec<String>,

    /// TTL of the agent's token, as a Go duration (`30m`, `1h`). Unset: the role's default.
    #[serde(default, rename = "tokenTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub token_ttl: Option<String>,

    /// Number of uses of the agent's token. Unset or 0: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i32>", range(min = 0))]
    pub num_uses: Option<u32>,

    /// How long the wrapping token stays valid, as a Go duration. Default `60s`, 5s..1h.
    #[serde(default = "default_wrap_ttl", rename = "wrapTTL")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub wrap_ttl: String,

    /// Extra token metadata. The operator always adds `namespace`, `pod`, `pod_uid` and
    /// `binding`, which cannot be overridden. At most 32 entries, keys up to 128 and values up
    /// to 512 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 512},
        "x-kubernetes-validations" = [{"rule": "self.all(k, size(k) <= 128)", "message": "metadata keys must be at most 128 characters"}]
    ))]
    pub metadata: BTreeMap<String, String>,
}

fn default_secret_key() -> String {
    "token".into()
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}
fn default_true() -> bool {
    true
}
fn default_wrap_ttl() -> String {
    "60s".into()
}

/// What the operator observed. Never holds a token, only accessors.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSecretBindingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the binding is valid and being served) and `Degraded` (wraps expired unconsumed
    /// or were tampered with).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pods selected by this binding right now.
    #[serde(default)]
    #[schemars(with = "i32")]
    pub pods: u32,
    /// Wraps issued and not yet consumed, expired or revoked.
    #[serde(default)]
    #[schemars(with = "i32")]
    pub pending: u32,
    /// Current pod starts whose wrap was consumed.
    #[serde(default)]
    #[schemars(with = "i32")]
    pub unwrapped: u32,
    /// Current pod starts whose wrap expired unconsumed.
    #[serde(default)]
    #[schemars(with = "i32")]
    pub expired: u32,
    /// Current pod starts whose wrap was consumed by someone other than the pod's agent.
    #[serde(default)]
    #[schemars(with = "i32")]
    pub tampered: u32,
    /// Per-pod records, problems first, at most 50.
    #[serde(default)]
    pub records: Vec<WrapRecord>,
}

/// A condition in the usual Kubernetes shape.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason a person can search for.
    pub reason: String,
    /// What happened and what to do about it.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The fate of the wrap issued for one pod start.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WrapRecord {
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub uid: String,
    /// Start number: restart count of the agent container when the wrap was issued.
    #[schemars(with = "i32")]
    pub start: u32,
    /// How many times this start's wrap was replaced because it expired before the pod took
    /// it (a slow start; at most 3).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(with = "i32")]
    pub replaced: u32,
    /// Per-pod Secret that holds (or held) the wrapping token.
    pub secret: String,
    /// Claimed, Issued, Unwrapped, Expired, Revoked, Tampered or Failed.
    #[schemars(with = "String")]
    pub phase: Phase,
    /// True when the pod's `cubbyhole unwrap` receipt named the expected token accessor.
    #[serde(default)]
    pub verified: bool,
    /// Accessor of the wrapping token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap_accessor: Option<String>,
    /// Accessor of the agent's token inside the wrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessor: Option<String>,
    /// When the wrap was issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// When the wrap expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What `kubectl explain agentsecretbinding` says a binding is.
const ROOT_DESCRIPTION: &str = "An AgentSecretBinding declares which pods of its namespace \
(podSelector) get a Vault token, from which token role and policies, with what TTLs. For every \
pod start the operator mints a response-wrapped, single-use token (auth/token/create/<role> with \
a wrap TTL) and hands only the wrapping token to the pod: in a per-pod Secret the pod owns \
(delivery: Secret), or in the answer to the pod's own ask (delivery: Request). The status counts \
each wrap's fate (pending, unwrapped, expired, tampered); tokens are renewed while their pods \
live and revoked when they go.";

/// The CRD as YAML, exactly what `cubbyhole crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    let mut crd = serde_json::to_value(AgentSecretBinding::crd()).expect("CRD serializes");
    // The derive describes the root as "Auto-generated derived type ...": `kubectl explain asb`
    // shows what a binding is instead.
    for version in crd["spec"]["versions"].as_array_mut().into_iter().flatten() {
        version["schema"]["openAPIV3Schema"]["description"] = ROOT_DESCRIPTION.into();
    }
    unwrap_descriptions(&mut crd);
    format!(
        "# Generated by `cubbyhole crd`; do not edit.\n---\n{}",
        serde_yaml_ng::to_string(&crd).expect("CRD serializes")
    )
}

/// Joins the lines of every `description` (doc comments are wrapped at 100 columns) so that
/// `kubectl explain` wraps them to the terminal; blank lines stay paragraph breaks.
fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, sub) in map.iter_mut() {
                match sub {
                    serde_json::Value::String(text) if k == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(sub),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// Clears what a cached binding never needs: the API server's record of who wrote which field
/// and `kubectl apply`'s copy of the object, each often larger than the spec; every replica
/// holds every binding twice (the controller's store and the webhook's).
pub fn slim_for_cache(binding: &mut AgentSecretBinding) {
    binding.metadata.managed_fields = None;
    // `kubectl apply`'s copy of the whole object: never read, as large as the binding.
    if let Some(a) = binding.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// The annotation `kubectl apply` (client side) keeps a copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Most terms a pod selector may hold: `matchLabels` entries, and `matchExpressions`.
pub const MAX_SELECTOR_TERMS: usize = 16;
/// Most values one `matchExpressions` term may list.
pub const MAX_SELECTOR_VALUES: usize = 64;

/// A `LabelSelector` schema with its sizes bounded (the API server refuses a larger binding
/// with 422), so that a binding cached on every replica stays small: at most
/// [`MAX_SELECTOR_TERMS`] labels and as many expressions of at most [`MAX_SELECTOR_VALUES`]
/// values, keys and values as long as Kubernetes label keys (317) and values (63) may be.
fn bounded_selector(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "properties": {
            "matchLabels": {
                "description": "Labels a pod must carry (ANDed).",
                "type": "object",
                "maxProperties": MAX_SELECTOR_TERMS,
                "additionalProperties": {"type": "string", "maxLength": 63},
                "x-kubernetes-validations": [{
                    "rule": "self.all(k, size(k) <= 317)",
                    "message": "label keys are at most 317 characters (prefix/name)"
                }]
            },
            "matchExpressions": {
                "description": "Label requirements a pod must meet (ANDed).",
                "type": "array",
                "maxItems": MAX_SELECTOR_TERMS,
                "items": {
                    "description": "A key, an operator (In, NotIn, Exists, DoesNotExist) and values (for In and NotIn).",
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"description": "The label key.", "type": "string", "maxLength": 317},
                        "operator": {
                            "description": "In, NotIn, Exists or DoesNotExist.",
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"]
                        },
                        "values": {
                            "description": "Values for In and NotIn.",
                            "type": "array",
                            "maxItems": MAX_SELECTOR_VALUES,
                            "items": {"type": "string", "maxLength": 63}
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_binding_drops_managed_fields_and_kubectls_copy_of_itself() {
        let mut b: AgentSecretBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
            "metadata": {"name": "b", "namespace": "n",
                "annotations": {LAST_APPLIED: "{...}", "team": "x"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"podSelector": {"matchLabels": {"a": "b"}}, "vault": {"tokenRole": "r"}}
        }))
        .unwrap();
        slim_for_cache(&mut b);
        assert!(b.metadata.managed_fields.is_none());
        let annotations = b.metadata.annotations.unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["team"]);
    }

    fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (k, sub) in props {
                let p = format!("{path}.{k}");
                if sub.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(&p, sub, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }

    #[test]
    fn every_field_is_described() {
        let crd = serde_json::to_value(AgentSecretBinding::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = vec![];
        walk("", &schema["properties"]["spec"], &mut missing);
        walk("", &schema["properties"]["status"], &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }

    #[test]
    fn descriptions_have_no_hard_line_breaks() {
        let crd: serde_json::Value = serde_yaml_ng::from_str(&crd_yaml()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let agent = spec["properties"]["agentContainer"]["description"]
            .as_str()
            .unwrap();
        assert!(agent.len() > 150 && !agent.contains('\n'), "{agent}");
        assert!(
            agent.contains("new starts: when its restart count"),
            "{agent}"
        );
    }

    #[test]
    fn kubectl_and_gitops_tools_read_it_as_users_expect() {
        let crd: serde_json::Value = serde_yaml_ng::from_str(&crd_yaml()).unwrap();
        assert_eq!(crd["spec"]["names"]["categories"], json!(["cubbyhole"]));
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let what = root["description"].as_str().unwrap();
        assert!(
            what.starts_with("An AgentSecretBinding declares") && !what.contains("Auto-generated"),
            "{what}"
        );
        // Server-side apply merges conditions by type (as for every built-in kind).
        let conditions = &root["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
        assert!(
            conditions["items"]["required"]
                .as_array()
                .unwrap()
                .contains(&json!("type")),
            "a map key must be required"
        );
    }

    #[test]
    fn checked_in_crds_are_current() {
        for path in [
            "crds/agentsecretbinding.yaml",
            "config/crd/agentsecretbinding.yaml",
            "charts/cubbyhole/crds/agentsecretbinding.yaml",
        ] {
            let on_disk = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path),
            )
            .unwrap_or_default();
            assert_eq!(on_disk, crd_yaml(), "{path} is stale: run `just crds`");
        }
    }

    #[test]
    fn defaults_apply() {
        let spec: AgentSecretBindingSpec = serde_json::from_value(serde_json::json!({
            "podSelector": {"matchLabels": {"app": "a"}},
            "vault": {"tokenRole": "agent"}
        }))
        .unwrap();
        assert_eq!(spec.secret_key, "token");
        assert_eq!(spec.vault.wrap_ttl, "60s");
        assert!(spec.revoke_on_pod_deletion);
    }
}
