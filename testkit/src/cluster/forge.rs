//! The attacker's tools: the operator's record keys as someone who leaked them has them,
//! records rewritten and signed with them, and bystanders (tokens and wraps nobody's pod
//! holds) that such a record may name.

use std::time::Duration;

use cubbyhole::record::seal::{Authenticity, Fields, RecordKeys};
use cubbyhole::record::signing_keys::{KEY_SECRET, keys_from_secret};
use cubbyhole::record::{BINDING_LABEL, ann};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Env, OPERATOR_NS, eventually};

impl Env {
    /// The operator's record keys, as someone who leaked them (or can read Secrets in the
    /// operator's namespace) has them.
    pub async fn leaked_record_keys(&self) -> RecordKeys {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), OPERATOR_NS);
        let secret = api.get(KEY_SECRET).await.expect("the record key Secret");
        keys_from_secret(&secret).expect("the record keys")
    }

    /// Rewrites record `name` with `changes` (full annotation keys) and signs it with `keys`
    /// exactly as the operator signs its writes, so the result verifies. Guarded by the
    /// resourceVersion read (retried if the operator wrote in between).
    pub async fn rewrite_signed(&self, keys: &RecordKeys, name: &str, changes: &[(&str, String)]) {
        let what = format!("{name} rewritten and re-signed");
        eventually(&what, Duration::from_secs(30), || async {
            let secret = self.secrets().get(name).await.ok()?;
            let mut annotations = secret.annotations().clone();
            let mut patch = serde_json::Map::new();
            for (k, v) in changes {
                annotations.insert(k.to_string(), v.clone());
                patch.insert(k.to_string(), json!(v));
            }
            let binding = secret.labels().get(BINDING_LABEL)?.clone();
            let fields = Fields {
                namespace: &self.ns,
                name,
                binding: &binding,
                annotations: &annotations,
            };
            patch.insert(ann::SIGNATURE.into(), json!(keys.sign(&fields)));
            let patch = json!({"metadata": {
                "resourceVersion": secret.resource_version(),
                "annotations": patch,
            }});
            let patched = self
                .secrets()
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .ok()?;
            let fields = Fields {
                annotations: patched.annotations(),
                ..fields
            };
            let signature = patched
                .annotations()
                .get(ann::SIGNATURE)
                .map(String::as_str);
            assert_eq!(keys.verify(&fields, signature), Authenticity::Authentic);
            Some(())
        })
        .await;
    }

    /// A live token nobody's pod holds (created with the root token); returns its accessor.
    pub fn bystander_token(&self) -> String {
        let created = self
            .bao
            .cli_json(&["token", "create", "-orphan", "-format=json"]);
        self.remember(created["auth"]["client_token"].as_str().expect("token"));
        created["auth"]["accessor"]
            .as_str()
            .expect("accessor")
            .to_string()
    }

    /// A live wrap nobody's pod holds, made with root at `auth/token/create` (not at any
    /// binding's token role); returns its accessor.
    pub fn bystander_wrap(&self) -> String {
        let wrap =
            self.bao
                .cli_json(&["token", "create", "-orphan", "-wrap-ttl=5m", "-format=json"]);
        self.remember(wrap["wrap_info"]["token"].as_str().expect("wrapping token"));
        wrap["wrap_info"]["accessor"]
            .as_str()
            .expect("wrap accessor")
            .to_string()
    }

    /// Panics unless the token or wrap behind `accessor` is still alive in Vault.
    pub async fn assert_bystander_live(&self, accessor: &str) {
        assert!(
            self.bao
                .root_client()
                .accessor_is_live(accessor)
                .await
                .expect("lookup accessor"),
            "the bystander {accessor} was revoked"
        );
    }
}
