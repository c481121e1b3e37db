//! What the webhook is told: the `injector` section of the operator's configuration file (what
//! gets injected) and the `--webhook-*` flags (where it listens, its certificate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::{Deserialize, Serialize};

use crate::config::OperatorConfig;

/// The `injector` section of the operator's configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectorConfig {
    /// Image of the injected `cubbyhole unwrap` init container.
    #[serde(default = "default_image")]
    pub image: String,
    /// Its `imagePullPolicy`. Unset: the Kubernetes default.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// Vault address the pods use (`VAULT_ADDR`). Unset: `vault.address`.
    #[serde(default)]
    pub vault_address: Option<String>,
    /// Vault namespace the pods use (`VAULT_NAMESPACE`). Unset: `vault.namespace`.
    #[serde(default)]
    pub vault_namespace: Option<String>,
    /// A ConfigMap (in each pod's namespace) holding the PEM CA of Vault for the pods:
    /// mounted read-only and named by `VAULT_CACERT`.
    #[serde(default)]
    pub vault_ca_config_map: Option<ConfigMapKey>,
    /// Resources of the init container.
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
    /// Directory of the in-memory token volume in the agent containers (the token is the
    /// file `token` in it). A pod may choose another with `cubbyhole.dev/token-path`.
    #[serde(default = "default_token_path")]
    pub token_path: String,
    /// User id of the init container when neither the first agent container nor the pod
    /// names one (also the pod's fsGroup when it has none). The token file is 0400 and owned
    /// by it: run agents as the same user. `null`: none is set, the platform assigns the
    /// user (OpenShift's restricted SCC gives every container of a pod the same one).
    #[serde(default = "default_run_as_user")]
    pub run_as_user: Option<i64>,
    /// Where agents of request-delivery bindings ask, filled in by the webhook at each
    /// admission (not part of the file).
    #[serde(skip)]
    pub request: Option<RequestEndpoint>,
}

/// The request endpoint as injected agents reach it.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestEndpoint {
    /// Base URL (`/v1/wrap` is added by the agent).
    pub url: String,
    /// PEM CA bundle the agent trusts the endpoint's certificate by.
    pub ca_pem: String,
}

/// A key of a ConfigMap.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapKey {
    /// ConfigMap name.
    pub name: String,
    /// Key holding the PEM bundle. Default `ca.crt`.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_image() -> String {
    "ghcr.io/cubbyhole-dev/cubbyhole:0.1.0".into()
}
fn default_token_path() -> String {
    "/var/run/cubbyhole/token".into()
}
fn default_run_as_user() -> Option<i64> {
    Some(65532)
}
fn default_ca_key() -> String {
    "ca.crt".into()
}
fn default_resources() -> ResourceRequirements {
    serde_json::from_value(serde_json::json!({
        "requests": {"cpu": "10m", "memory": "16Mi"},
        "limits": {"memory": "32Mi"},
    }))
    .expect("default resources")
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            image: default_image(),
            image_pull_policy: None,
            vault_address: None,
            vault_namespace: None,
            vault_ca_config_map: None,
            resources: default_resources(),
            token_path: default_token_path(),
            run_as_user: default_run_as_user(),
            request: None,
        }
    }
}

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
