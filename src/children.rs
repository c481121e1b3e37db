//! Every write to a per-pod Secret. Creates claim a pod start; every later change is a JSON
//! merge patch guarded by `resourceVersion`, so two writers can never both win.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::model::{
    BINDING_LABEL, MANAGED_BY, MANAGED_BY_LABEL, Phase, SECRET_FINALIZER, WrapState, ann,
};
use crate::plan::Issue;
use crate::vault::WrapInfo;

/// Why a claim did not happen.
#[derive(Debug)]
pub enum ClaimError {
    /// A Secret of that name exists and is not this binding's record.
    Taken,
    /// Someone else changed the record first; the next reconcile sees their change.
    Lost,
    /// The API server failed.
    Kube(kube::Error),
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Claims a pod start: creates the record (no token yet) or takes over `issue.replaces`.
/// Returns the resourceVersion to guard the delivery with.
pub async fn claim(
    api: &Api<Secret>,
    binding: &str,
    issue: &Issue,
    now: Timestamp,
) -> Result<String, ClaimError> {
    let mut annotations = BTreeMap::from([
        (ann::POD.to_string(), issue.pod.clone()),
        (ann::POD_UID.to_string(), issue.pod_uid.clone()),
        (ann::START.to_string(), issue.start.to_string()),
        (ann::PHASE.to_string(), Phase::Claimed.as_str().to_string()),
        (ann::CLAIMED_AT.to_string(), now.to_string()),
    ]);
    if let Some(t) = issue.receipts_after {
        annotations.insert(ann::RECEIPTS_AFTER.into(), t.to_string());
    }
    let Some(old) = &issue.replaces else {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(issue.secret.clone()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    (BINDING_LABEL.to_string(), binding.to_string()),
                ])),
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: issue.pod.clone(),
                    uid: issue.pod_uid.clone(),
                    ..Default::default()
                }]),
                finalizers: Some(vec![SECRET_FINALIZER.to_string()]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        return match api.create(&PostParams::default(), &secret).await {
            Ok(s) => Ok(s.resource_version().unwrap_or_default()),
            Err(e) if is_conflict(&e) => match api.get_opt(&issue.secret).await {
                Ok(Some(s))
                    if s.labels().get(BINDING_LABEL).map(String::as_str) == Some(binding) =>
                {
                    Err(ClaimError::Lost)
                }
                Ok(Some(_)) => Err(ClaimError::Taken),
                Ok(None) => Err(ClaimError::Lost),
                Err(e) => Err(ClaimError::Kube(e)),
            },
            Err(e) => Err(ClaimError::Kube(e)),
        };
    };
    let mut ann_patch: serde_json::Map<String, Value> = annotations
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    for k in [
        ann::WRAP_ACCESSOR,
        ann::ACCESSOR,
        ann::ISSUED_AT,
        ann::EXPIRES_AT,
        ann::VERIFIED,
        ann::MESSAGE,
        ann::VAULT_SEEN_AT,
    ] {
        ann_patch.insert(k.into(), Value::Null);
    }
    if issue.start != old.start {
        ann_patch.insert(
            ann::PREVIOUS_ACCESSOR.into(),
            old.accessor.clone().map_or(Value::Null, Value::String),
        );
    }
    let patch = json!({
        "metadata": { "resourceVersion": old.resource_version, "annotations": ann_patch },
        "data": null,
    });
    guarded_patch(api, &old.secret, &patch).await
}

/// Puts the wrapping token into a claimed record.
pub async fn deliver(
    api: &Api<Secret>,
    secret: &str,
    resource_version: &str,
    key: &str,
    wrap: &WrapInfo,
    issued_at: Timestamp,
    expires_at: Timestamp,
) -> Result<String, ClaimError> {
    let patch = json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {
                ann::PHASE: Phase::Issued.as_str(),
                ann::CLAIMED_AT: null,
                ann::WRAP_ACCESSOR: wrap.accessor,
                ann::ACCESSOR: wrap.wrapped_accessor,
                ann::ISSUED_AT: issued_at.to_string(),
                ann::EXPIRES_AT: expires_at.to_string(),
                ann::MESSAGE: null,
            }
        },
        "data": { key: ByteString(wrap.token.expose().as_bytes().to_vec()) },
    });
    guarded_patch(api, secret, &patch).await
}

/// Records a failed mint (no token) so it is retried after a pause and shown in the status.
pub async fn record_failure(
    api: &Api<Secret>,
    secret: &str,
    resource_version: &str,
    message: &str,
    now: Timestamp,
) -> Result<String, ClaimError> {
    let patch = json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {
                ann::PHASE: Phase::Failed.as_str(),
                ann::CLAIMED_AT: now.to_string(),
                ann::MESSAGE: truncate(message, 512),
            }
        },
        "data": null,
    });
    guarded_patch(api, secret, &patch).await
}

/// Records that Vault answered again after a claim whose mint answer was lost.
pub async fn mark_vault_seen(
    api: &Api<Secret>,
    wrap: &WrapState,
    now: Timestamp,
) -> Result<String, ClaimError> {
    let patch = json!({
        "metadata": {
            "resourceVersion": wrap.resource_version,
            "annotations": { ann::VAULT_SEEN_AT: now.to_string() }
        }
    });
    guarded_patch(api, &wrap.secret, &patch).await
}

/// Records a final phase and removes the wrapping token from the Secret.
pub async fn settle(
    api: &Api<Secret>,
    wrap: &WrapState,
    phase: Phase,
    verified: bool,
    message: &str,
) -> Result<String, ClaimError> {
    let patch = json!({
        "metadata": {
            "resourceVersion": wrap.resource_version,
            "annotations": {
                ann::PHASE: phase.as_str(),
                ann::VERIFIED: if verified { Value::from("true") } else { Value::Null },
                ann::MESSAGE: truncate(message, 512),
            }
        },
        "data": null,
    });
    guarded_patch(api, &wrap.secret, &patch).await
}

/// Releases the finalizer and deletes the record. Idempotent.
pub async fn remove(api: &Api<Secret>, wrap: &WrapState) -> Result<(), kube::Error> {
    let patch = json!({ "metadata": { "finalizers": null } });
    match api
        .patch(&wrap.secret, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(s) => {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: s.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&wrap.secret, &dp).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn guarded_patch(api: &Api<Secret>, name: &str, patch: &Value) -> Result<String, ClaimError> {
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(s) => Ok(s.resource_version().unwrap_or_default()),
        Err(e) if is_conflict(&e) || is_not_found(&e) => Err(ClaimError::Lost),
        Err(e) => Err(ClaimError::Kube(e)),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Reads the wrapping token out of a Secret (for lookups); never logged.
pub fn wrapping_token(secret: &Secret, key: &str) -> Option<crate::vault::SecretString> {
    let bytes = secret.data.as_ref()?.get(key)?;
    let text = String::from_utf8(bytes.0.clone()).ok()?;
    (!text.is_empty()).then(|| crate::vault::SecretString::new(text))
}
