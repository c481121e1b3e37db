//! Keeps the serving certificate current on every replica: the shared Secret in the
//! operator's namespace (created by whichever replica comes first, rotated by whichever sees
//! it due, guarded by `resourceVersion`), the `caBundle` of the webhook configuration, and the
//! certificate rustls serves. Or, with cert-manager, files reloaded when they change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::webhook::certs::{CertSettings, CertState, due, rotate};
use crate::webhook::tls::Reloadable;

/// Key of the shared Secret holding the whole [`CertState`].
pub const STATE_KEY: &str = "state.json";

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Managed by the operator in a Secret.
    Managed {
        /// Operator namespace.
        namespace: String,
        /// Secret name.
        secret: String,
        /// MutatingWebhookConfiguration to keep the `caBundle` of.
        configuration: String,
        /// Names and lifetimes.
        settings: CertSettings,
    },
    /// `tls.crt` and `tls.key` in a directory (cert-manager).
    Files(PathBuf),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Runs until `shutdown`, keeping `resolver` loaded.
pub async fn run(
    client: Client,
    source: Source,
    resolver: Arc<Reloadable>,
    shutdown: CancellationToken,
) {
    let every = match &source {
        Source::Managed { settings, .. } => settings.check_every(),
        Source::Files(_) => Duration::from_secs(10),
    };
    let mut failures = 0u32;
    loop {
        let result = match &source {
            Source::Managed {
                namespace,
                secret,
                configuration,
                settings,
            } => {
                managed_round(
                    &client,
                    namespace,
                    secret,
                    configuration,
                    settings,
                    &resolver,
                )
                .await
            }
            Source::Files(dir) => files_round(dir, &resolver),
        };
        let wait = match result {
            Ok(()) => {
                failures = 0;
                every
            }
            Err(e) => {
                failures += 1;
                warn!(error = %e, "webhook certificate: retrying");
                Duration::from_millis(500 * 2u64.pow(failures.min(6)))
                    .min(every.max(Duration::from_secs(1)))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn files_round(dir: &std::path::Path, resolver: &Reloadable) -> Result<(), String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("reading {}: {e}", dir.join(name).display()))
    };
    // cert-manager's Secrets carry the issuing CA as `ca.crt`.
    resolver.set_ca_bundle(read("ca.crt").ok());
    if resolver.install(&read("tls.crt")?, &read("tls.key")?)? {
        info!(dir = %dir.display(), "webhook serving certificate loaded from files");
    }
    Ok(())
}

/// One look: read (or create) the Secret, rotate what is due, serve the result, push the
/// `caBundle`.
async fn managed_round(
    client: &Client,
    namespace: &str,
    name: &str,
    configuration: &str,
    settings: &CertSettings,
    resolver: &Reloadable,
) -> Result<(), String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let state = loop {
        let found = secrets
            .get_opt(name)
            .await
            .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?;
        let current = found.as_ref().and_then(read_state);
        let t = now();
        let rotation = due(current.as_ref(), settings, t);
        let Some(next) = rotate(rotation, current.as_ref(), settings, t)? else {
            break current.ok_or("no certificate state")?;
        };
        let written = match &found {
            None => secrets
                .create(&PostParams::default(), &to_secret(name, namespace, &next))
                .await
                .map(|_| ()),
            Some(existing) => {
                let mut body = serde_json::to_value(to_secret(name, namespace, &next))
                    .map_err(|e| e.to_string())?;
                body["metadata"]["resourceVersion"] = json!(existing.metadata.resource_version);
                secrets
                    .patch(name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map(|_| ())
            }
        };
        match written {
            Ok(()) => {
                info!(rotation = ?rotation, ca = %next.ca.common_name, "webhook certificates updated");
                break next;
            }
            // Another replica wrote first: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                debug!("webhook certificate Secret changed under us; reading it again");
            }
            Err(e) => return Err(format!("writing Secret {namespace}/{name}: {e}")),
        }
    };
    resolver.set_ca_bundle(Some(state.ca_bundle()));
    if resolver.install(&state.serving_cert, &state.serving_key)? {
        info!(
            not_after = state.serving_not_after,
            "webhook serving certificate loaded"
        );
    }
    push_ca_bundle(client, configuration, state.ca_bundle().as_bytes()).await
}

fn read_state(secret: &Secret) -> Option<CertState> {
    let bytes = secret.data.as_ref()?.get(STATE_KEY)?;
    match serde_json::from_slice(&bytes.0) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "webhook certificate Secret unreadable; replacing it");
            None
        }
    }
}

fn to_secret(name: &str, namespace: &str, state: &CertState) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let data = BTreeMap::from([
        (
            STATE_KEY.to_string(),
            ByteString(serde_json::to_vec(state).expect("certificate state serializes")),
        ),
        ("tls.crt".to_string(), bytes(&state.serving_cert)),
        ("tls.key".to_string(), bytes(&state.serving_key)),
        ("ca.crt".to_string(), bytes(&state.ca_bundle())),
    ]);
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "cubbyhole".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Sets `caBundle` on every webhook of `configuration` that lacks it; an absent configuration
/// is fine (not installed yet, or cert-manager manages it).
async fn push_ca_bundle(client: &Client, configuration: &str, bundle: &[u8]) -> Result<(), String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(found) = api
        .get_opt(configuration)
        .await
        .map_err(|e| format!("reading MutatingWebhookConfiguration {configuration}: {e}"))?
    else {
        debug!(%configuration, "no MutatingWebhookConfiguration to put the caBundle in");
        return Ok(());
    };
    let stale: Vec<String> = found
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle))
        .map(|w| w.name.clone())
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let patch = json!({"webhooks": stale.iter().map(|name| json!({
        "name": name,
        "clientConfig": {"caBundle": ByteString(bundle.to_vec())},
    })).collect::<Vec<_>>()});
    api.patch(
        configuration,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .map_err(|e| format!("patching caBundle of {configuration}: {e}"))?;
    info!(%configuration, webhooks = stale.len(), "caBundle updated");
    Ok(())
}
