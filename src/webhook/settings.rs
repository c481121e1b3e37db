//! What the webhook is told: the `injector` section of the operator's configuration file (what
//! gets injected; its types live in [`crate::config`], which reads the file, and are re-exported
//! here), checked against what the webhook mounts, and the `--webhook-*` flags (where it
//! listens, its certificate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::OperatorConfig;
pub use crate::config::{ConfigMapKey, InjectorConfig, RequestEndpoint};

// The webhook checks the section against its own mounts (`inject::check_dir`): here, not in
// `config`, which must not depend on the webhook.
impl InjectorConfig {
    /// This section with the Vault address and namespace filled in from `vault`, checked.
    pub fn resolved(config: &OperatorConfig) -> Result<Self, String> {
        let mut c = config.injector.clone();
        c.vault_address
            .get_or_insert_with(|| config.vault.address.clone());
        if c.vault_namespace.is_none() {
            c.vault_namespace = config.vault.namespace.clone();
        }
        crate::webhook::inject::check_dir(&c.token_path)
            .map_err(|e| format!("injector.tokenPath: {e}"))?;
        if c.image.trim().is_empty() {
            return Err("injector.image must not be empty".into());
        }
        Ok(c)
    }
}

/// `--webhook-*` flags of `cubbyhole operator`.
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Serve the admission webhook (`/mutate-pods`, TLS) here, on every replica. Off when not
    /// given.
    #[arg(long)]
    pub webhook_listen: Option<SocketAddr>,
    /// MutatingWebhookConfiguration whose `caBundle` the operator keeps current.
    #[arg(long, default_value = "cubbyhole-injector")]
    pub webhook_configuration: String,
    /// Service in front of the webhook (its DNS names go into the serving certificate).
    #[arg(long, default_value = "cubbyhole-webhook")]
    pub webhook_service: String,
    /// Extra names (DNS names or IP addresses) for the serving certificate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub webhook_extra_san: Vec<String>,
    /// Secret (in the operator's namespace) holding the webhook CA and serving certificate,
    /// shared by all replicas.
    #[arg(long, default_value = "cubbyhole-webhook-tls")]
    pub webhook_cert_secret: String,
    /// Lifetime of the serving certificate; renewed after two thirds of it.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub webhook_cert_validity: Duration,
    /// Lifetime of the webhook CA; a successor joins the `caBundle` after two thirds of it.
    #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
    pub webhook_ca_validity: Duration,
    /// Do not manage certificates: read `tls.crt` and `tls.key` from this directory (e.g. a
    /// cert-manager Secret, mounted), reload them when they change, and leave `caBundle` to
    /// cert-manager's CA injector.
    #[arg(long)]
    pub webhook_cert_dir: Option<PathBuf>,
    /// Answer admission reviews only when they carry this bearer token (a file holding it):
    /// the token the API server's admission kubeconfig sends to webhooks
    /// (`--admission-control-config-file`). Without it, anyone who reaches the listener may
    /// send a review and read the patch (binding, role and TTLs; never a token).
    #[arg(long)]
    pub webhook_caller_token_file: Option<PathBuf>,
    /// Base URL injected agents of request-delivery bindings ask at (`/v1/wrap` is added).
    /// Default: `https://<webhook-service>.<namespace>.svc`. Its host must be in the serving
    /// certificate.
    #[arg(long)]
    pub request_endpoint: Option<String>,
}

/// The shortest serving-certificate lifetime accepted (a renewal every few seconds at most).
pub const MIN_CERT_VALIDITY: Duration = Duration::from_secs(6);

impl WebhookArgs {
    /// Refuses lifetimes that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.webhook_cert_validity < MIN_CERT_VALIDITY {
            return Err(format!(
                "--webhook-cert-validity must be at least {}s",
                MIN_CERT_VALIDITY.as_secs()
            ));
        }
        if self.webhook_ca_validity < self.webhook_cert_validity * 2 {
            return Err(
                "--webhook-ca-validity must be at least twice --webhook-cert-validity".into(),
            );
        }
        Ok(())
    }

    /// The base URL agents ask at (see `--request-endpoint`).
    pub fn request_url(&self, namespace: &str) -> String {
        self.request_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.{namespace}.svc", self.webhook_service))
            .trim_end_matches('/')
            .to_string()
    }

    /// The names in the serving certificate: the Service's DNS names in `namespace`, then the
    /// extra names.
    pub fn sans(&self, namespace: &str) -> Vec<String> {
        let svc = &self.webhook_service;
        let mut names = vec![
            svc.clone(),
            format!("{svc}.{namespace}"),
            format!("{svc}.{namespace}.svc"),
            format!("{svc}.{namespace}.svc.cluster.local"),
        ];
        for extra in &self.webhook_extra_san {
            let extra = extra.trim();
            if !extra.is_empty() && !names.iter().any(|n| n == extra) {
                names.push(extra.to_string());
            }
        }
        names
    }
}
