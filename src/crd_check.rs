//! Whether the installed `AgentSecretBinding` CRD is one this binary can work with. Helm installs
//! a chart's CRD only on first install and never upgrades it, so an upgraded operator can meet
//! an older CRD: the API server would then silently prune every field the older schema lacks
//! (status counters, conditions, spec fields). The operator refuses to start against such a CRD,
//! naming what is missing and how to apply the new one; `doctor` reports the same. A newer CRD
//! (more fields than this binary knows) is fine.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResourceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backoff::Backoff;
use crate::crd::AgentSecretBinding;

/// What to run to install this version's CRD.
pub const APPLY_CRD: &str = "kubectl apply --server-side -f charts/cubbyhole/crds/ (or: cubbyhole crd | kubectl apply --server-side -f -)";

/// Field paths (`spec.vault.tokenTTL`, `status.records[].phase`) that `ours` (an
/// `openAPIV3Schema`) defines and `installed` lacks, sorted.
pub fn missing_fields(installed: &Value, ours: &Value) -> Vec<String> {
    let mut missing = vec![];
    walk(installed, ours, "", &mut missing);
    missing.sort();
    missing
}

fn walk(installed: &Value, ours: &Value, path: &str, missing: &mut Vec<String>) {
    if let Some(properties) = ours["properties"].as_object() {
        for (name, schema) in properties {
            let at = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            match installed["properties"].get(name) {
                Some(theirs) => walk(theirs, schema, &at, missing),
                None => missing.push(at),
            }
        }
    }
    if ours["items"].is_object() {
        walk(
            &installed["items"],
            &ours["items"],
            &format!("{path}[]"),
            missing,
        );
    }
}

/// `Ok` when the CRD installed in the cluster serves this binary's version with every field it
/// writes; otherwise what is wrong and how to fix it.
pub fn compatible(installed: &CustomResourceDefinition) -> Result<(), String> {
    let ours = AgentSecretBinding::crd();
    let version = &ours.spec.versions[0].name;
    let schema = |crd: &CustomResourceDefinition| -> Option<Value> {
        let v = crd.spec.versions.iter().find(|v| &v.name == version)?;
        if !v.served {
            return None;
        }
        serde_json::to_value(v.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()
    };
    let Some(theirs) = schema(installed) else {
        return Err(format!(
            "the installed AgentSecretBinding CRD does not serve {version}: apply this version's CRD: {APPLY_CRD}"
        ));
    };
    let missing = missing_fields(&theirs, &schema(&ours).expect("our CRD has a schema"));
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the installed AgentSecretBinding CRD is older than this operator: it lacks {} (the API server would drop them); apply this version's CRD first: {APPLY_CRD}",
        missing.join(", ")
    ))
}

/// What reading the installed CRD found.
#[derive(Debug)]
pub enum Found {
    /// It can be worked with.
    Compatible,
    /// It cannot: why, and the fix.
    Incompatible(String),
    /// This identity may not read it (RBAC of an older install): not checked.
    Unreadable,
}

/// Reads the installed CRD and checks it ([`compatible`]); an error only when the API server
/// could not answer.
pub async fn check(client: &Client) -> Result<Found, kube::Error> {
    let name = AgentSecretBinding::crd_name();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    Ok(match api.get_opt(name).await {
        Ok(Some(installed)) => match compatible(&installed) {
            Ok(()) => Found::Compatible,
            Err(why) => Found::Incompatible(why),
        },
        Ok(None) => Found::Incompatible(format!(
            "the AgentSecretBinding CRD ({name}) is not installed: {APPLY_CRD}"
        )),
        Err(kube::Error::Api(e)) if e.code == 403 => Found::Unreadable,
        Err(e) => return Err(e),
    })
}

/// At the operator's start: [`check`], retried with backoff while the API server does not
/// answer; an error (the operator exits, naming the fix) when the CRD is incompatible or on
/// shutdown.
pub async fn at_start(client: &Client, shutdown: &CancellationToken) -> Result<(), String> {
    let mut backoff = Backoff::at_start();
    loop {
        match check(client).await {
            Ok(Found::Compatible) => return Ok(()),
            Ok(Found::Incompatible(why)) => return Err(why),
            Ok(Found::Unreadable) => {
                warn!(
                    "may not read the AgentSecretBinding CRD (an older ClusterRole): its fields are not checked"
                );
                return Ok(());
            }
            Err(e) => warn!(error = %e, "reading the AgentSecretBinding CRD failed; retrying"),
        }
        if !backoff.wait(shutdown).await {
            return Err("shut down before the CRD was checked".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ours() -> CustomResourceDefinition {
        AgentSecretBinding::crd()
    }

    fn remove(crd: &mut CustomResourceDefinition, pointer: &str) {
        let mut v = serde_json::to_value(&*crd).unwrap();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key)
            .expect("present");
        *crd = serde_json::from_value(v).unwrap();
    }

    const STATUS: &str = "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties";

    #[test]
    fn our_own_crd_and_the_checked_in_one_are_compatible() {
        assert_eq!(compatible(&ours()), Ok(()));
        let shipped: CustomResourceDefinition =
            serde_yaml_ng::from_str(&crate::crd::crd_yaml()).unwrap();
        assert_eq!(compatible(&shipped), Ok(()));
    }

    #[test]
    fn an_older_crd_is_refused_naming_each_missing_field_and_the_fix() {
        let mut old = ours();
        remove(&mut old, &format!("{STATUS}/tampered"));
        remove(
            &mut old,
            &format!("{STATUS}/records/items/properties/verified"),
        );
        let e = compatible(&old).unwrap_err();
        assert!(
            e.contains("it lacks status.records[].verified, status.tampered"),
            "{e}"
        );
        assert!(e.contains(APPLY_CRD), "{e}");
    }

    #[test]
    fn a_newer_crd_with_more_fields_is_fine_and_an_unserved_version_is_not() {
        let mut newer = serde_json::to_value(ours()).unwrap();
        newer["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["future"] = json!({"type": "string"});
        let newer: CustomResourceDefinition = serde_json::from_value(newer).unwrap();
        assert_eq!(compatible(&newer), Ok(()));
        let mut unserved = ours();
        unserved.spec.versions[0].served = false;
        assert!(
            compatible(&unserved)
                .unwrap_err()
                .contains("does not serve v1alpha1")
        );
        let mut renamed = ours();
        renamed.spec.versions[0].name = "v1beta1".into();
        assert!(compatible(&renamed).is_err());
    }

    #[test]
    fn missing_fields_walk_objects_and_arrays() {
        let ours = json!({"properties": {
            "a": {"properties": {"b": {}, "c": {"items": {"properties": {"d": {}}}}}},
            "e": {},
        }});
        let theirs =
            json!({"properties": {"a": {"properties": {"c": {"items": {"properties": {}}}}}}});
        assert_eq!(missing_fields(&theirs, &ours), ["a.b", "a.c[].d", "e"]);
        assert!(missing_fields(&ours, &ours).is_empty());
    }
}
