//! Finds per-pod records whose binding no longer exists.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::controller::context::Context;
use crate::crd::AgentSecretBinding;
use crate::record::{BINDING_LABEL, MANAGED_BY, MANAGED_BY_LABEL};

/// `(namespace, binding)` pairs that own records but are gone (checked against the API server,
/// not only the cache, so a binding created a moment ago is never swept).
pub async fn orphaned_bindings(ctx: &Context) -> Result<Vec<(String, String)>, kube::Error> {
    let secrets: Api<Secret> = Api::all(ctx.client.clone());
    let list = secrets
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await?;
    let owners: BTreeSet<(String, String)> = list
        .items
        .iter()
        .filter_map(|s| Some((s.namespace()?, s.labels().get(BINDING_LABEL)?.clone())))
        .collect();
    let mut orphans = vec![];
    for (ns, binding) in owners {
        let api: Api<AgentSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
        if api.get_opt(&binding).await?.is_none() {
            orphans.push((ns, binding));
        }
    }
    Ok(orphans)
}
