//! The serving certificate as rustls sees it: swapped in place when it is renewed, so the TLS
//! listener (webhook and request endpoint, [`crate::listener`]) never restarts for a new
//! certificate. The webhook keeps it current (`webhook::cert_store`).

use std::sync::{Arc, RwLock};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// A certificate resolver whose certificate can be replaced at any time.
#[derive(Debug)]
pub struct Reloadable {
    current: RwLock<Option<(String, Arc<CertifiedKey>)>>,
    ca_bundle: RwLock<Option<String>>,
    loaded: watch::Sender<bool>,
}

impl Default for Reloadable {
    fn default() -> Self {
        Self {
            current: RwLock::new(None),
            ca_bundle: RwLock::new(None),
            loaded: watch::channel(false).0,
        }
    }
}

impl Reloadable {
    /// Installs a PEM certificate chain and key unless it is the one already served. Returns
    /// true when it changed.
    pub fn install(&self, cert_pem: &str, key_pem: &str) -> Result<bool, String> {
        let mut current = self.current.write().expect("certificate lock");
        if current.as_ref().is_some_and(|(pem, _)| pem == cert_pem) {
            return Ok(false);
        }
        let key = certified_key(cert_pem, key_pem)?;
        *current = Some((cert_pem.to_string(), Arc::new(key)));
        self.loaded.send_replace(true);
        Ok(true)
    }

    /// Keeps the PEM CA bundle clients trust the certificate by (handed to injected agents).
    pub fn set_ca_bundle(&self, pem: Option<String>) {
        *self.ca_bundle.write().expect("CA bundle lock") = pem;
    }

    /// The PEM CA bundle, when known.
    pub fn ca_bundle(&self) -> Option<String> {
        self.ca_bundle.read().expect("CA bundle lock").clone()
    }

    /// Waits until a certificate has been installed.
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|loaded| *loaded).await;
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .expect("certificate lock")
            .as_ref()
            .map(|(_, k)| k.clone())
    }
}

/// Parses a PEM chain and key into what rustls serves. Errors never quote the PEM.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("private key PEM: {e}"))?;
    let signer = any_supported_type(&key).map_err(|e| format!("private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The rustls server configuration around `resolver` (HTTP/1.1, TLS 1.2 and 1.3).
pub fn server_config(resolver: Arc<Reloadable>) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::certs::{CertSettings, Rotation, rotate};

    #[test]
    fn installs_reloads_and_refuses_garbage_without_quoting_it() {
        let settings = CertSettings {
            sans: vec!["127.0.0.1".into()],
            serving_validity: std::time::Duration::from_secs(60),
            ca_validity: std::time::Duration::from_secs(600),
        };
        let s = rotate(Rotation::Create, None, &settings, 1_000)
            .unwrap()
            .unwrap();
        let r = Reloadable::default();
        assert!(r.install(&s.serving_cert, &s.serving_key).unwrap());
        assert!(!r.install(&s.serving_cert, &s.serving_key).unwrap());
        let renewed = rotate(Rotation::RenewServing, Some(&s), &settings, 1_050)
            .unwrap()
            .unwrap();
        assert!(
            r.install(&renewed.serving_cert, &renewed.serving_key)
                .unwrap()
        );
        let err = r
            .install("not a pem SECRETSTUFF", &s.serving_key)
            .unwrap_err();
        assert!(!err.contains("SECRETSTUFF"), "{err}");
        let err = r.install(&s.serving_cert, "junk KEYSTUFF").unwrap_err();
        assert!(!err.contains("KEYSTUFF"), "{err}");
        assert!(server_config(Arc::new(r)).is_ok());
    }
}
