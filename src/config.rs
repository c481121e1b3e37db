//! The operator's configuration file: where Vault is, how to log in, which roles each
//! namespace may use, the tracking cadence, and what the webhook injects (its `injector`
//! section; the webhook checks it against its mounts, `webhook::settings`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::{Deserialize, Serialize};

use crate::vault::{VaultAuth, VaultEndpoint};

/// The whole configuration file (YAML).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorConfig {
    /// Vault connection.
    pub vault: VaultConfig,
    /// Which token roles each namespace may use. Empty: no binding may mint anything.
    #[serde(default)]
    pub allowed_roles: Vec<RoleRule>,
    /// The namespaces whose pods and Secrets the operator watches and acts in (exact names),
    /// for an install granted pod and Secret access only there. A binding elsewhere gets
    /// `Ready=False` (`NamespaceNotWatched`) and mints nothing. Empty (the default): every
    /// namespace.
    #[serde(default)]
    pub watch_namespaces: Vec<String>,
    /// How often each outstanding wrap is looked up (`sys/wrapping/lookup`). Default `10s`,
    /// at least [`MIN_PERIOD`].
    #[serde(default = "default_lookup_period", with = "humantime_serde_compat")]
    pub lookup_period: Duration,
    /// How often to sweep for per-pod Secrets whose binding is gone. Default `5m`, at least
    /// [`MIN_PERIOD`].
    #[serde(default = "default_sweep_period", with = "humantime_serde_compat")]
    pub sweep_period: Duration,
    /// What the admission webhook injects into opted-in pods.
    #[serde(default)]
    pub injector: InjectorConfig,
    /// How many records of one binding are worked on at once (claims, mints, deliveries in
    /// flight together). Default 16, at least 1.
    #[serde(default = "default_step_concurrency")]
    pub step_concurrency: usize,
    /// How many bindings are reconciled at once (each with up to `step_concurrency` records in
    /// flight). Bounds the requests in flight and the memory of rounds under way at a restart.
    /// Default 8, at least 1.
    #[serde(default = "default_reconcile_concurrency")]
    pub reconcile_concurrency: u16,
    /// Most `sys/wrapping/lookup` calls per second, over all bindings (0: unlimited). A lookup
    /// over the budget is deferred (its wrap stays due, oldest first); deadline revocations
    /// and mints are never held back. Default 100.
    #[serde(default = "default_max_lookups_per_second")]
    pub max_lookups_per_second: u32,
    /// How long past its wrap's expiry a token nobody took stays alive: every token is minted
    /// with `ttl` = the binding's wrapTTL + this, so Vault ends it unless the operator renews
    /// it for the pod's agent. Long enough to notice the agent's unwrap and renew. Default
    /// `60s`, at least [`MIN_TOKEN_GRACE`].
    #[serde(default = "default_token_grace", with = "humantime_serde_compat")]
    pub token_grace: Duration,
    /// How long a held token lives without the operator: while its pod lives, the operator
    /// renews it (`auth/token/renew-accessor`) to this from now, about every half of it. A
    /// token whose pod is gone dies within it even while the operator is down. Default `75m`:
    /// a held token always has more than half of it left, so every replica may be down for 30
    /// minutes and no agent loses its token. At least [`MIN_RENEWAL_WINDOW`].
    #[serde(default = "default_renewal_window", with = "humantime_serde_compat")]
    pub renewal_window: Duration,
    /// Publish a Normal Event on the pod for every routine step (wrap issued, unwrapped, pod
    /// gone). Default false: warnings only (the binding's status counts everything). Each one
    /// is an API write per pod start.
    #[serde(default)]
    pub routine_events: bool,
    /// How often agents may ask for their wraps (request delivery), per operator replica.
    #[serde(default)]
    pub request_limits: RequestLimits,
    /// Bounds of the one TLS listener (webhook and request endpoint), per replica.
    #[serde(default)]
    pub listener: ListenerLimits,
}

/// What one replica's TLS listener lets any client hold: connections (in total and per peer
/// address), time to send a request's headers (also the idle limit of a kept-alive
/// connection), requests handled at once, and TokenReviews per peer address for identity
/// tokens not reviewed before. Beyond them a client is closed or answered 429/503 before any
/// expensive work.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerLimits {
    /// Open connections at once. Default 512.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Open connections at once from one peer address. Default 128.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: u32,
    /// Time a client has to send a request's headers, and to send the next one on a kept-alive
    /// connection. Default `10s`.
    #[serde(
        default = "default_header_read_timeout",
        with = "humantime_serde_compat"
    )]
    pub header_read_timeout: Duration,
    /// Requests handled at once; a request waits up to 2 s for a slot, then gets 503. Default 32.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Requests handled at once from one peer address (the API server's admission calls
    /// included), waiting as `maxInFlight` does. Default 8.
    #[serde(default = "default_max_in_flight_per_source")]
    pub max_in_flight_per_source: u32,
    /// TokenReviews one peer address may cause back to back (tokens not reviewed before).
    /// Default 50.
    #[serde(default = "default_review_burst_per_source")]
    pub review_burst_per_source: u32,
    /// TokenReviews per second one peer address may cause once its burst is spent. Default 10.
    #[serde(default = "default_reviews_per_second_per_source")]
    pub reviews_per_second_per_source: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            header_read_timeout: default_header_read_timeout(),
            max_in_flight: default_max_in_flight(),
            max_in_flight_per_source: default_max_in_flight_per_source(),
            review_burst_per_source: default_review_burst_per_source(),
            reviews_per_second_per_source: default_reviews_per_second_per_source(),
        }
    }
}

fn default_max_connections() -> u32 {
    512
}
fn default_max_connections_per_source() -> u32 {
    128
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_in_flight() -> u32 {
    32
}
fn default_max_in_flight_per_source() -> u32 {
    8
}
fn default_review_burst_per_source() -> u32 {
    50
}
fn default_reviews_per_second_per_source() -> u32 {
    10
}

/// Rate limits of the request endpoint: a token bucket per pod and one per namespace. An ask
/// over either is answered 429 with `Retry-After`, before anything is minted.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestLimits {
    /// Asks one pod may make back to back. Default 3.
    #[serde(default = "default_pod_burst")]
    pub pod_burst: u32,
    /// One more ask per pod after this long. Default `10s`.
    #[serde(default = "default_pod_refill", with = "humantime_serde_compat")]
    pub pod_refill: Duration,
    /// Asks the pods of one namespace may make back to back. Default 600.
    #[serde(default = "default_namespace_burst")]
    pub namespace_burst: u32,
    /// Asks per second one namespace's pods may make once the burst is spent. Default 100.
    #[serde(default = "default_namespace_per_second")]
    pub namespace_per_second: u32,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            pod_burst: default_pod_burst(),
            pod_refill: default_pod_refill(),
            namespace_burst: default_namespace_burst(),
            namespace_per_second: default_namespace_per_second(),
        }
    }
}

fn default_pod_burst() -> u32 {
    3
}
fn default_pod_refill() -> Duration {
    Duration::from_secs(10)
}
fn default_namespace_burst() -> u32 {
    600
}
fn default_namespace_per_second() -> u32 {
    100
}

fn default_token_grace() -> Duration {
    Duration::from_secs(60)
}

fn default_renewal_window() -> Duration {
    Duration::from_secs(75 * 60)
}

fn default_max_lookups_per_second() -> u32 {
    100
}

fn default_step_concurrency() -> usize {
    16
}

fn default_reconcile_concurrency() -> u16 {
    8
}

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

/// Vault address, trust and authentication.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault:8200`.
    pub address: String,
    /// PEM CA bundle for Vault's certificate; when set, the only roots trusted.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// How the operator logs in.
    pub auth: AuthConfig,
    /// Accept a plain `http://` address that is not loopback (the login and every wrapping
    /// token would cross the network unencrypted). Default false: such an address stops the
    /// operator at start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_http: bool,
}

/// Exactly one of the two methods.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// Kubernetes auth method (production).
    #[serde(default)]
    pub kubernetes: Option<KubernetesAuth>,
    /// A file holding a Vault token (development).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Vault's Kubernetes auth method settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesAuth {
    /// Vault role of the auth method.
    pub role: String,
    /// Mount path. Default `kubernetes`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Service account token file: by default the projected token for audience `vault` the
    /// chart mounts (never the API server token, which Vault would then hold).
    #[serde(default = "default_jwt_path")]
    pub jwt_path: PathBuf,
}

/// Namespaces matching any of `namespaces` may use roles matching any of `roles` (globs: `*`).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleRule {
    /// Namespace globs.
    pub namespaces: Vec<String>,
    /// Token role globs.
    pub roles: Vec<String>,
}

/// The shortest `lookupPeriod` and `sweepPeriod`: anything shorter would make the operator
/// spin against Vault or the API server.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// The shortest `tokenGrace`: below it an agent's unwrap near the wrap's expiry could not be
/// noticed and renewed before Vault ends the token.
pub const MIN_TOKEN_GRACE: Duration = Duration::from_secs(5);
/// The shortest `renewalWindow` (renewals come every half of it).
pub const MIN_RENEWAL_WINDOW: Duration = Duration::from_secs(10);
/// The shortest leader-election lease: it is renewed every third of it, and a renewal needs
/// an API round trip.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);

fn default_lookup_period() -> Duration {
    Duration::from_secs(10)
}
fn default_sweep_period() -> Duration {
    Duration::from_secs(300)
}
fn default_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_path() -> PathBuf {
    "/var/run/secrets/cubbyhole/vault/token".into()
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl OperatorConfig {
    /// A configuration for `vault` with every other setting at its default (as a file with
    /// only the `vault` section).
    pub fn with_vault(vault: VaultConfig) -> Self {
        Self {
            vault,
            allowed_roles: vec![],
            watch_namespaces: vec![],
            lookup_period: default_lookup_period(),
            sweep_period: default_sweep_period(),
            injector: Default::default(),
            step_concurrency: default_step_concurrency(),
            reconcile_concurrency: default_reconcile_concurrency(),
            max_lookups_per_second: default_max_lookups_per_second(),
            token_grace: default_token_grace(),
            renewal_window: default_renewal_window(),
            routine_events: false,
            request_limits: RequestLimits::default(),
            listener: ListenerLimits::default(),
        }
    }

    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and checks YAML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        config.vault_auth()?;
        validate_address(&config.vault.address)?;
        validate_period("lookupPeriod", config.lookup_period, "10s")?;
        validate_period("sweepPeriod", config.sweep_period, "5m")?;
        validate_at_least("tokenGrace", config.token_grace, MIN_TOKEN_GRACE, "60s")?;
        validate_at_least(
            "renewalWindow",
            config.renewal_window,
            MIN_RENEWAL_WINDOW,
            "10m",
        )?;
        if let Some(warning) = plain_http_warning(&config.vault.address)
            && !config.vault.allow_plain_http
        {
            return Err(format!(
                "{warning}; or set vault.allowPlainHttp: true to accept it"
            ));
        }
        let limits = &config.request_limits;
        if limits.pod_burst == 0 || limits.namespace_burst == 0 || limits.namespace_per_second == 0
        {
            return Err(
                "requestLimits: podBurst, namespaceBurst and namespacePerSecond must be at least 1"
                    .into(),
            );
        }
        validate_at_least(
            "requestLimits.podRefill",
            limits.pod_refill,
            Duration::from_secs(1),
            "10s",
        )?;
        let listener = &config.listener;
        if [
            listener.max_connections,
            listener.max_connections_per_source,
            listener.max_in_flight,
            listener.max_in_flight_per_source,
            listener.review_burst_per_source,
            listener.reviews_per_second_per_source,
        ]
        .contains(&0)
        {
            return Err("listener: maxConnections, maxConnectionsPerSource, maxInFlight, maxInFlightPerSource, reviewBurstPerSource and reviewsPerSecondPerSource must be at least 1".into());
        }
        validate_at_least(
            "listener.headerReadTimeout",
            listener.header_read_timeout,
            Duration::from_secs(1),
            "10s",
        )?;
        validate_namespaces(&config.watch_namespaces)?;
        if config.step_concurrency == 0 {
            return Err("stepConcurrency must be at least 1".into());
        }
        if config.reconcile_concurrency == 0 {
            return Err("reconcileConcurrency must be at least 1".into());
        }
        Ok(config)
    }

    /// Whether the operator watches and acts in `namespace` (`watchNamespaces`).
    pub fn watches(&self, namespace: &str) -> bool {
        watched(&self.watch_namespaces, namespace)
    }

    /// Things worth a warning at start that do not stop the operator.
    pub fn warnings(&self) -> Vec<String> {
        plain_http_warning(&self.vault.address)
            .into_iter()
            .collect()
    }

    /// The Vault endpoint.
    pub fn vault_endpoint(&self) -> VaultEndpoint {
        VaultEndpoint {
            address: self.vault.address.clone(),
            ca_cert: self.vault.ca_cert.clone(),
            namespace: self.vault.namespace.clone(),
        }
    }

    /// The Vault login method; exactly one must be configured.
    pub fn vault_auth(&self) -> Result<VaultAuth, String> {
        match (&self.vault.auth.kubernetes, &self.vault.auth.token_file) {
            (Some(k), None) => Ok(VaultAuth::Kubernetes {
                mount: k.mount.clone(),
                role: k.role.clone(),
                jwt_path: k.jwt_path.clone(),
            }),
            (None, Some(f)) => Ok(VaultAuth::TokenFile(f.clone())),
            _ => Err("vault.auth needs exactly one of `kubernetes` or `tokenFile`".into()),
        }
    }
}

/// Refuses a period shorter than [`MIN_PERIOD`], saying what to write instead.
fn validate_period(key: &str, period: Duration, default: &str) -> Result<(), String> {
    validate_at_least(key, period, MIN_PERIOD, default)
}

/// Refuses a duration shorter than `min`, saying what to write instead.
fn validate_at_least(
    key: &str,
    value: Duration,
    min: Duration,
    default: &str,
) -> Result<(), String> {
    if value >= min {
        return Ok(());
    }
    Err(format!(
        "{key} is {}: it must be at least {} (the default is {default})",
        show(value),
        show(min)
    ))
}

/// Whether `namespace` is one of `watch_namespaces` (empty: every namespace is).
pub fn watched(watch_namespaces: &[String], namespace: &str) -> bool {
    watch_namespaces.is_empty() || watch_namespaces.iter().any(|n| n == namespace)
}

/// `watchNamespaces`: namespace names (DNS labels), each once.
fn validate_namespaces(names: &[String]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        let label = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label {
            return Err(format!(
                "watchNamespaces: {name:?} is not a namespace name (lowercase letters, digits and '-'; no patterns)"
            ));
        }
        if !seen.insert(name) {
            return Err(format!("watchNamespaces: {name:?} is listed twice"));
        }
    }
    Ok(())
}

/// Refuses a `--lease-duration` shorter than [`MIN_LEASE_DURATION`].
pub fn validate_lease_duration(duration: Duration) -> Result<(), String> {
    if duration >= MIN_LEASE_DURATION {
        return Ok(());
    }
    Err(format!(
        "--lease-duration is {}: it must be at least {} (the leader renews every third of it; the default is 15s)",
        show(duration),
        show(MIN_LEASE_DURATION)
    ))
}

/// A duration as `500ms`, `0s`, `1m 30s`.
fn show(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Refuses a `vault.address` that is not an `http://` or `https://` URL with a host. The
/// address itself is not repeated (it might carry credentials).
fn validate_address(address: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(address.trim()).map_err(|e| {
        format!("vault.address is not a URL ({e}); write e.g. https://vault.vault.svc:8200")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "vault.address must start with https:// (or http://) and name a host; found scheme {:?}",
            url.scheme()
        ));
    }
    Ok(())
}

/// A warning when `address` is plain `http://` to a host that is not loopback (127.0.0.0/8,
/// `::1`, `localhost`): the operator's login and every wrapping token would cross the network
/// unencrypted.
pub fn plain_http_warning(address: &str) -> Option<String> {
    let url = reqwest::Url::parse(address.trim()).ok()?;
    let host = url.host_str()?;
    if url.scheme() != "http" || is_loopback_host(host) {
        return None;
    }
    Some(format!(
        "vault.address is plain http:// to {host}, which is not loopback: the operator's Vault login and every wrapping token cross the network unencrypted; use https:// (and vault.caCert)"
    ))
}

/// True for `localhost`, 127.0.0.0/8 and `::1` (`host` as a URL spells it, IPv6 in brackets).
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// True when `namespace` may use `role` under `rules`.
pub fn role_allowed(rules: &[RoleRule], namespace: &str, role: &str) -> bool {
    rules.iter().any(|r| {
        r.namespaces.iter().any(|g| glob_match(g, namespace))
            && r.roles.iter().any(|g| glob_match(g, role))
    })
}

/// Matches `*` (any run of characters) and literal characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_namespaces_are_exact_names_each_once_and_empty_means_every_namespace() {
        let base = "vault:\n  address: https://127.0.0.1:8200\n  auth:\n    tokenFile: /dev/null\n";
        let every = OperatorConfig::parse(base).unwrap();
        assert!(every.watch_namespaces.is_empty());
        assert!(every.watches("anything"));
        let scoped =
            OperatorConfig::parse(&format!("{base}watchNamespaces: [team-a, b2]\n")).unwrap();
        assert!(scoped.watches("team-a") && scoped.watches("b2"));
        assert!(!scoped.watches("team-b") && !scoped.watches("team"));
        for bad in ["[\"team-*\"]", "[Team]", "[\"\"]", "[-a]", "[a, a]"] {
            let e = OperatorConfig::parse(&format!("{base}watchNamespaces: {bad}\n")).unwrap_err();
            assert!(e.starts_with("watchNamespaces: "), "{bad}: {e}");
        }
    }

    #[test]
    fn the_vault_endpoint_carries_address_ca_and_namespace() {
        let c = OperatorConfig::parse(
            "vault:\n  address: https://127.0.0.1:8200\n  caCert: /etc/ca.pem\n  namespace: team-a\n  auth:\n    tokenFile: /dev/null\n",
        )
        .unwrap();
        let e = c.vault_endpoint();
        assert_eq!(e.address, "https://127.0.0.1:8200");
        assert_eq!(e.ca_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(e.namespace.as_deref(), Some("team-a"));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = OperatorConfig::parse(
            "vault:\n  address: http://127.0.0.1:8200\n  auth:\n    kubernetes:\n      role: r\n",
        )
        .unwrap();
        assert_eq!(c.lookup_period, Duration::from_secs(10));
        assert_eq!(c.sweep_period, Duration::from_secs(300));
        assert_eq!(c.step_concurrency, 16);
        assert_eq!(c.reconcile_concurrency, 8);
        assert_eq!(c.max_lookups_per_second, 100);
        assert_eq!(c.token_grace, Duration::from_secs(60));
        assert_eq!(c.renewal_window, Duration::from_secs(75 * 60));
        assert!(!c.routine_events);
        assert!(c.allowed_roles.is_empty());
        let l = &c.request_limits;
        assert_eq!(
            (
                l.pod_burst,
                l.pod_refill,
                l.namespace_burst,
                l.namespace_per_second
            ),
            (3, Duration::from_secs(10), 600, 100)
        );
        let k8s = c.vault.auth.kubernetes.expect("kubernetes auth");
        assert_eq!(k8s.mount, "kubernetes");
        assert_eq!(
            k8s.jwt_path,
            PathBuf::from("/var/run/secrets/cubbyhole/vault/token")
        );
    }

    #[test]
    fn a_config_written_from_the_type_reads_back_the_same() {
        let vault = VaultConfig {
            address: "http://127.0.0.1:8200".into(),
            ca_cert: Some("/etc/vault/ca.pem".into()),
            namespace: None,
            allow_plain_http: false,
            auth: AuthConfig {
                kubernetes: Some(KubernetesAuth {
                    role: "cubbyhole-operator".into(),
                    mount: "kubernetes".into(),
                    jwt_path: "/var/run/token".into(),
                }),
                token_file: None,
            },
        };
        // Defaults of the type are the defaults of the file.
        let minimal = "vault:\n  address: http://127.0.0.1:8200\n  caCert: /etc/vault/ca.pem\n  auth:\n    kubernetes:\n      role: cubbyhole-operator\n      jwtPath: /var/run/token\n";
        assert_eq!(
            OperatorConfig::parse(minimal).unwrap(),
            OperatorConfig::with_vault(vault.clone())
        );
        let config = OperatorConfig {
            allowed_roles: vec![RoleRule {
                namespaces: vec!["agents".into(), "agents-*".into()],
                roles: vec!["cubbyhole-agent".into()],
            }],
            lookup_period: Duration::from_millis(2500),
            sweep_period: Duration::from_secs(90),
            step_concurrency: 4,
            max_lookups_per_second: 0,
            token_grace: Duration::from_secs(45),
            renewal_window: Duration::from_secs(1200),
            routine_events: true,
            ..OperatorConfig::with_vault(vault)
        };
        let yaml = serde_yaml_ng::to_string(&config).unwrap();
        assert!(yaml.contains("lookupPeriod: 2s 500ms"), "{yaml}");
        assert_eq!(OperatorConfig::parse(&yaml).unwrap(), config);
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("team-*", "team-a"));
        assert!(!glob_match("team-*", "other"));
        assert!(glob_match("a*b*c", "aXXbYc"));
        assert!(!glob_match("a*b", "aXXbc"));
        assert!(glob_match("exact", "exact"));
    }

    #[test]
    fn role_rules() {
        let rules = vec![RoleRule {
            namespaces: vec!["team-*".into()],
            roles: vec!["agent".into(), "batch-*".into()],
        }];
        assert!(role_allowed(&rules, "team-a", "agent"));
        assert!(role_allowed(&rules, "team-a", "batch-x"));
        assert!(!role_allowed(&rules, "team-a", "admin"));
        assert!(!role_allowed(&rules, "default", "agent"));
        assert!(!role_allowed(&[], "team-a", "agent"));
    }

    #[test]
    fn parses_example_and_rejects_two_auth_methods() {
        let c = OperatorConfig::parse(
            "vault:\n  address: http://127.0.0.1:8200\n  auth:\n    tokenFile: /t\nallowedRoles:\n- namespaces: ['*']\n  roles: [agent]\nlookupPeriod: 2s\n",
        )
        .unwrap();
        assert_eq!(c.lookup_period, Duration::from_secs(2));
        assert!(
            OperatorConfig::parse(
                "vault:\n  address: x\n  auth:\n    tokenFile: /t\n    kubernetes: {role: r}\n"
            )
            .is_err()
        );
    }

    /// A minimal valid file with `extra` lines appended.
    fn parse_with(address: &str, extra: &str) -> Result<OperatorConfig, String> {
        OperatorConfig::parse(&format!(
            "vault:\n  address: {address}\n  auth:\n    tokenFile: /t\n{extra}"
        ))
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse_with("https://vault.vault.svc:8200", "").unwrap();
        assert_eq!(c.lookup_period, Duration::from_secs(10));
        assert_eq!(c.sweep_period, Duration::from_secs(300));
        assert!(c.warnings().is_empty());
        let shipped = include_str!("../config/manager/config.yaml");
        assert!(OperatorConfig::parse(shipped).is_ok());
    }

    #[test]
    fn periods_that_would_spin_are_refused() {
        for (key, value, shown) in [
            ("lookupPeriod", "0s", "0s"),
            ("lookupPeriod", "500ms", "500ms"),
            ("sweepPeriod", "0s", "0s"),
            ("sweepPeriod", "999ms", "999ms"),
        ] {
            let err = parse_with("https://v:8200", &format!("{key}: {value}\n")).unwrap_err();
            assert!(
                err.contains(&format!("{key} is {shown}: it must be at least 1s")),
                "{key}={value}: {err}"
            );
            assert!(err.contains("the default is"), "{err}");
        }
        let c = parse_with("https://v:8200", "lookupPeriod: 1s\nsweepPeriod: 1s\n").unwrap();
        assert_eq!((c.lookup_period, c.sweep_period), (MIN_PERIOD, MIN_PERIOD));
    }

    #[test]
    fn token_lives_too_short_to_renew_are_refused() {
        for (key, value, shown, min) in [
            ("tokenGrace", "4s", "4s", "5s"),
            ("renewalWindow", "9s", "9s", "10s"),
        ] {
            let err = parse_with("https://v:8200", &format!("{key}: {value}\n")).unwrap_err();
            assert!(
                err.contains(&format!("{key} is {shown}: it must be at least {min}")),
                "{key}={value}: {err}"
            );
        }
        let c = parse_with("https://v:8200", "tokenGrace: 5s\nrenewalWindow: 10s\n").unwrap();
        assert_eq!(
            (c.token_grace, c.renewal_window),
            (MIN_TOKEN_GRACE, MIN_RENEWAL_WINDOW)
        );
    }

    #[test]
    fn concurrencies_of_zero_are_refused() {
        for key in ["stepConcurrency", "reconcileConcurrency"] {
            let err = parse_with("https://v:8200", &format!("{key}: 0\n")).unwrap_err();
            assert_eq!(err, format!("{key} must be at least 1"));
        }
        let c = parse_with(
            "https://v:8200",
            "stepConcurrency: 1\nreconcileConcurrency: 1\n",
        );
        let c = c.unwrap();
        assert_eq!((c.step_concurrency, c.reconcile_concurrency), (1, 1));
    }

    #[test]
    fn request_limits_of_zero_are_refused_one_at_a_time() {
        for key in ["podBurst", "namespaceBurst", "namespacePerSecond"] {
            let err =
                parse_with("https://v:8200", &format!("requestLimits:\n  {key}: 0\n")).unwrap_err();
            assert!(err.starts_with("requestLimits: "), "{key}: {err}");
        }
        let c = parse_with(
            "https://v:8200",
            "requestLimits:\n  podBurst: 1\n  namespaceBurst: 1\n  namespacePerSecond: 1\n",
        )
        .unwrap();
        let l = &c.request_limits;
        assert_eq!(
            (l.pod_burst, l.namespace_burst, l.namespace_per_second),
            (1, 1, 1)
        );
    }

    #[test]
    fn lease_durations_under_three_seconds_are_refused() {
        for short in [0, 1000, 2999] {
            let err = validate_lease_duration(Duration::from_millis(short)).unwrap_err();
            assert!(err.starts_with("--lease-duration is "), "{err}");
            assert!(err.contains("it must be at least 3s"), "{err}");
        }
        let err = validate_lease_duration(Duration::from_millis(2500)).unwrap_err();
        assert!(err.contains("is 2s 500ms"), "{err}");
        assert!(validate_lease_duration(MIN_LEASE_DURATION).is_ok());
        assert!(validate_lease_duration(Duration::from_secs(15)).is_ok());
    }

    #[test]
    fn addresses_must_be_http_urls_with_a_host() {
        for bad in [
            "vault.vault.svc:8200",
            "ftp://vault:21",
            "unix:///run/vault.sock",
        ] {
            let err = parse_with(bad, "").unwrap_err();
            assert!(err.contains("must start with https://"), "{bad}: {err}");
        }
        let err = parse_with("'/v1'", "").unwrap_err();
        assert!(err.contains("vault.address is not a URL"), "{err}");
        for good in [
            "https://vault:8200",
            "http://127.0.0.1:8200/",
            "https://[::1]:8200",
        ] {
            assert!(parse_with(good, "").is_ok(), "{good}");
        }
    }

    #[test]
    fn plain_http_warns_unless_loopback() {
        for quiet in [
            "https://vault.vault.svc:8200",
            "http://127.0.0.1:8200",
            "http://127.8.9.10:8200",
            "http://localhost:8200",
            "http://LOCALHOST:8200",
            "http://[::1]:8200",
        ] {
            assert_eq!(plain_http_warning(quiet), None, "{quiet}");
        }
        for loud in [
            ("http://vault.vault.svc:8200", "vault.vault.svc"),
            ("http://10.0.0.7:8200", "10.0.0.7"),
            ("http://[fd00::1]:8200", "[fd00::1]"),
            ("http://localhost.example.com", "localhost.example.com"),
            ("http://128.0.0.1", "128.0.0.1"),
        ] {
            let warning = plain_http_warning(loud.0).expect(loud.0);
            assert!(
                warning.contains(&format!(
                    "plain http:// to {}, which is not loopback",
                    loud.1
                )),
                "{warning}"
            );
            assert!(warning.contains("use https://"), "{warning}");
        }
        let refused = parse_with("http://vault.example:8200", "").unwrap_err();
        assert!(refused.contains("vault.allowPlainHttp"), "{refused}");
        let allowed = OperatorConfig::parse(
            "vault:\n  address: http://vault.example:8200\n  allowPlainHttp: true\n  auth:\n    tokenFile: /t\n",
        )
        .unwrap();
        assert_eq!(allowed.warnings().len(), 1);
    }
}
