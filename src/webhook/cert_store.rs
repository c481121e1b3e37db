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

use crate::metrics::{Metrics, WebhookCertificate};
use crate::tls::Reloadable;
use crate::webhook::certs::{CertSettings, CertState, due, rotate};

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
    metrics: Metrics,
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
                    &metrics,
                )
                .await
            }
            Source::Files(dir) => files_round(dir, &resolver, &metrics),
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

fn files_round(
    dir: &std::path::Path,
    resolver: &Reloadable,
    metrics: &Metrics,
) -> Result<(), String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("reading {}: {e}", dir.join(name).display()))
    };
    // cert-manager's Secrets carry the issuing CA as `ca.crt`.
    let ca = read("ca.crt").ok();
    resolver.set_ca_bundle(ca.clone());
    let cert = read("tls.crt")?;
    if resolver.install(&cert, &read("tls.key")?)? {
        info!(dir = %dir.display(), "webhook serving certificate loaded from files");
    }
    // The metric: the served certificate (the chain's first) and the first of `ca.crt`.
    if let Some(t) = pem_not_after(&cert) {
        metrics.webhook_certificate_expires(WebhookCertificate::Serving, t);
    }
    if let Some(t) = ca.as_deref().and_then(pem_not_after) {
        metrics.webhook_certificate_expires(WebhookCertificate::Ca, t);
    }
    Ok(())
}

/// The notAfter (unix seconds) of the first certificate in `pem`, for the expiry metric only:
/// Certificate -> tbsCertificate -> [version], serialNumber, signature, issuer, validity.
fn pem_not_after(pem: &str) -> Option<u64> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    /// One DER element: (tag, content, what follows it).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (0x30, certificate, _) = tlv(&der)? else {
        return None;
    };
    let (0x30, mut tbs, _) = tlv(certificate)? else {
        return None;
    };
    // An explicit version ([0]) is optional.
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        tbs = tlv(tbs)?.2;
    }
    let (0x30, validity, _) = tlv(tbs)? else {
        return None;
    };
    let (_, _, rest) = tlv(validity)?;
    let (tag, time, _) = tlv(rest)?;
    let digits = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        // UTCTime: YYMMDDHHMMSS, 19YY from 50 on (RFC 5280).
        0x17 if digits.len() == 12 => {
            let yy: i32 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        // GeneralizedTime: YYYYMMDDHHMMSS.
        0x18 if digits.len() == 14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(field(0)?).ok()?, field(2)?)
            .ok()?;
    let clock = time::Time::from_hms(field(4)?, field(6)?, field(8)?).ok()?;
    u64::try_from(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .unix_timestamp(),
    )
    .ok()
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
    metrics: &Metrics,
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
    metrics.webhook_certificate_expires(WebhookCertificate::Serving, state.serving_not_after);
    metrics.webhook_certificate_expires(WebhookCertificate::Ca, state.ca.not_after);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::certs::Rotation;

    #[test]
    fn the_expiry_metric_reads_not_after_from_the_pem() {
        let settings = CertSettings {
            sans: vec!["127.0.0.1".into()],
            serving_validity: Duration::from_secs(30 * 86_400),
            ca_validity: Duration::from_secs(100 * 365 * 86_400),
        };
        let now = 1_800_000_000;
        let s = rotate(Rotation::Create, None, &settings, now)
            .unwrap()
            .unwrap();
        assert_eq!(pem_not_after(&s.serving_cert), Some(s.serving_not_after));
        // The CA's expiry lies past 2049: a GeneralizedTime.
        assert!(s.ca.not_after > 2_524_608_000);
        assert_eq!(pem_not_after(&s.ca.cert), Some(s.ca.not_after));
        // A bundle: its first certificate.
        assert_eq!(
            pem_not_after(&format!("{}{}", s.serving_cert, s.ca.cert)),
            Some(s.serving_not_after)
        );
        assert_eq!(pem_not_after("no certificate"), None);
        assert_eq!(
            pem_not_after("-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n"),
            None
        );
    }
}
