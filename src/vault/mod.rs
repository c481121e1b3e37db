//! A small Vault/OpenBao HTTP client with exactly the calls cubbyhole makes.
//!
//! Not vaultrs: its wrap helper hard-codes the wrap TTL and drops `wrapped_accessor`, and we
//! need to tell "Vault never got the request" from "the answer may be lost" (see
//! [`VaultError::may_have_been_processed`]). Tokens only ever live in [`SecretString`], whose
//! `Debug` is redacted and which has no `Display`; error texts never include response bodies of
//! successful calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::metrics::Metrics;

/// A token or wrapping token, kept as the `secrecy` crate keeps secrets: its memory is zeroed
/// when dropped, `Debug` prints `<redacted>`; read it with [`SecretString::expose`].
#[derive(Clone)]
pub struct SecretString(secrecy::SecretString);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into())
    }
    /// The secret itself; only for the request or file that needs it.
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretString {}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the operator proves itself to Vault. No static token in flags or env.
#[derive(Clone, Debug)]
pub enum VaultAuth {
    /// Read a token from this file (development); re-read when Vault refuses it.
    TokenFile(PathBuf),
    /// Log in with the Kubernetes auth method using the service account JWT at `jwt_path`.
    Kubernetes {
        /// Auth mount path, usually `kubernetes`.
        mount: String,
        /// Vault role of the Kubernetes auth method.
        role: String,
        /// Service account token file.
        jwt_path: PathBuf,
    },
}

/// Where Vault is and how to trust it.
#[derive(Clone, Debug, Default)]
pub struct VaultEndpoint {
    /// Base address, e.g. `https://vault.example:8200`.
    pub address: String,
    /// PEM CA bundle. When set, its certificates are the only roots trusted: the built-in
    /// public roots are not.
    pub ca_cert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
}

/// Why a call failed. The category is a fixed label for metrics and conditions.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The request could not even be built (bad address, a header value no HTTP request may
    /// carry): it never left the process. A configuration problem, not an outage.
    #[error("could not send {op} to Vault: {detail}")]
    NotSent {
        /// Operation name.
        op: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// Vault never received the request (connection refused, DNS, TLS handshake).
    #[error("Vault unreachable during {op}: {detail}")]
    Unreachable {
        /// Operation name.
        op: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The request may have reached Vault but no answer arrived (timeout, reset, 5xx gateway).
    #[error("no answer from Vault during {op}: {detail}")]
    NoAnswer {
        /// Operation name.
        op: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// Vault answered with an error; `message` is Vault's own text.
    #[error("Vault refused {op} ({status}): {message}")]
    Refused {
        /// Operation name.
        op: &'static str,
        /// HTTP status.
        status: u16,
        /// Vault's `errors`, joined.
        message: String,
    },
    /// We could not authenticate to Vault.
    #[error("Vault login failed: {0}")]
    Auth(String),
    /// Vault answered something we do not understand.
    #[error("unexpected answer from Vault during {op}: {detail}")]
    Protocol {
        /// Operation name.
        op: &'static str,
        /// What was unexpected (never the body).
        detail: String,
    },
}

impl VaultError {
    /// Static label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            VaultError::NotSent { .. } => "not_sent",
            VaultError::Unreachable { .. } => "unreachable",
            VaultError::NoAnswer { .. } => "no_answer",
            VaultError::Refused { status, .. } if *status >= 500 => "server_error",
            VaultError::Refused { .. } => "refused",
            VaultError::Auth(_) => "auth",
            VaultError::Protocol { .. } => "protocol",
        }
    }

    /// True when Vault may have carried out the request even though we got no usable answer.
    /// A mint that fails this way may have produced a live wrap we never saw.
    pub fn may_have_been_processed(&self) -> bool {
        matches!(
            self,
            VaultError::NoAnswer { .. } | VaultError::Protocol { .. }
        )
    }

    /// True when Vault itself is unavailable (as opposed to refusing the request).
    pub fn is_unavailable(&self) -> bool {
        match self {
            VaultError::Unreachable { .. } | VaultError::NoAnswer { .. } | VaultError::Auth(_) => {
                true
            }
            VaultError::Refused { status, .. } => *status >= 500,
            VaultError::NotSent { .. } | VaultError::Protocol { .. } => false,
        }
    }
}

/// What to mint for one pod start.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequest {
    /// Token role (`auth/token/create/<role>`).
    pub role: String,
    /// Requested policies (empty: the role's).
    pub policies: Vec<String>,
    /// Token TTL, Go duration: how long the token lives unless renewed.
    pub ttl: Option<String>,
    /// Longest life the token may ever reach by renewal, Go duration (unset: the role's).
    pub explicit_max_ttl: Option<String>,
    /// Number of uses (0: unlimited).
    pub num_uses: Option<u32>,
    /// Token metadata.
    pub meta: BTreeMap<String, String>,
    /// Wrap TTL in seconds.
    pub wrap_ttl_secs: u64,
}

/// The answer to a wrapped create: a wrapping token plus facts about it.
#[derive(Clone, Debug)]
pub struct WrapInfo {
    /// The single-use wrapping token.
    pub token: SecretString,
    /// Accessor of the wrapping token.
    pub accessor: String,
    /// Accessor of the token inside the wrap.
    pub wrapped_accessor: String,
    /// Granted wrap TTL in seconds.
    pub ttl: u64,
    /// Path the wrap was created at.
    pub creation_path: String,
}

/// What `auth/token/lookup-accessor` tells about a token or wrap (never the token itself). What
/// it vouches for is judged in `controller::vouch`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TokenFacts {
    /// Token metadata (the operator sets namespace, pod, pod uid and binding at every mint).
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    /// Its policies (`["response-wrapping"]` for a wrap).
    #[serde(default)]
    pub policies: Vec<String>,
    /// The path it was created at.
    #[serde(default)]
    pub path: String,
    /// When it was created, Unix seconds.
    #[serde(default)]
    pub creation_time: i64,
    /// Its longest life from creation, seconds (0: none of its own).
    #[serde(default)]
    pub explicit_max_ttl: u64,
}

/// What `sys/wrapping/lookup` says about a still-valid wrapping token.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct WrapLookup {
    /// Path the wrap was created at.
    pub creation_path: String,
    /// Creation time, RFC 3339.
    pub creation_time: String,
    /// TTL in seconds at creation.
    pub creation_ttl: u64,
}

/// The token a wrap held.
#[derive(Clone, Debug)]
pub struct UnwrappedToken {
    /// The agent's token.
    pub token: SecretString,
    /// Its accessor.
    pub accessor: String,
    /// Its policies.
    pub policies: Vec<String>,
}

/// Outcome of renewing a token by accessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewed {
    /// The token lives on for this many more seconds (Vault may grant less than asked: its
    /// explicit max TTL, the role's, or a periodic role's period).
    For(u64),
    /// No token with this accessor (expired or revoked).
    NotFound,
}

/// Outcome of revoking by accessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The token existed and is now revoked.
    Existed,
    /// No token with this accessor (already used, expired or revoked).
    NotFound,
}

/// Vault client. Cheap to clone.
#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    endpoint: VaultEndpoint,
    auth: Option<VaultAuth>,
    /// The login token; the lock is held across a login so concurrent callers share one.
    token: std::sync::Arc<Mutex<Option<SecretString>>>,
    metrics: Option<Metrics>,
}

const WRAP_INVALID: &str = "wrapping token is not valid or does not exist";

impl VaultClient {
    /// Builds a client; `auth` is `None` for the agent, which only uses unauthenticated calls.
    pub fn new(endpoint: VaultEndpoint, auth: Option<VaultAuth>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &endpoint.ca_cert {
            builder = trust_only(builder, ca)?;
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            http,
            endpoint: VaultEndpoint {
                address: endpoint.address.trim_end_matches('/').to_string(),
                ..endpoint
            },
            auth,
            token: Default::default(),
            metrics: None,
        })
    }

    /// Records request latency and errors in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Mints a token at `auth/token/create/<role>`, response-wrapped for `wrap_ttl_secs`.
    pub async fn create_wrapped_token(&self, req: &TokenRequest) -> Result<WrapInfo, VaultError> {
        const OP: &str = "create";
        let mut body = json!({ "meta": req.meta });
        if !req.policies.is_empty() {
            body["policies"] = json!(req.policies);
        }
        if let Some(ttl) = &req.ttl {
            body["ttl"] = json!(ttl);
        }
        if let Some(max) = &req.explicit_max_ttl {
            body["explicit_max_ttl"] = json!(max);
        }
        if let Some(n) = req.num_uses {
            body["num_uses"] = json!(n);
        }
        let path = format!("auth/token/create/{}", req.role);
        let wrap_ttl = format!("{}s", req.wrap_ttl_secs);
        let resp = self
            .authed(OP, |token| {
                self.request(reqwest::Method::POST, &path)
                    .header("X-Vault-Token", token)
                    .header("X-Vault-Wrap-TTL", wrap_ttl.clone())
                    .json(&body)
            })
            .await?;
        #[derive(Deserialize)]
        struct Raw {
            wrap_info: Option<RawWrap>,
        }
        #[derive(Deserialize)]
        struct RawWrap {
            token: String,
            accessor: String,
            ttl: u64,
            creation_path: String,
            #[serde(default)]
            wrapped_accessor: String,
        }
        let raw: Raw = parse(OP, resp).await?;
        let w = raw.wrap_info.ok_or(VaultError::Protocol {
            op: OP,
            detail: "answer is not wrapped (is the operator allowed to receive plain tokens?)"
                .into(),
        })?;
        if w.wrapped_accessor.is_empty() {
            return Err(VaultError::Protocol {
                op: OP,
                detail: "wrap_info has no wrapped_accessor".into(),
            });
        }
        Ok(WrapInfo {
            token: SecretString::new(w.token),
            accessor: w.accessor,
            wrapped_accessor: w.wrapped_accessor,
            ttl: w.ttl,
            creation_path: w.creation_path,
        })
    }

    /// Looks a wrapping token up without consuming it. `Ok(None)`: not valid (consumed, expired
    /// or revoked: Vault gives one answer for all three).
    pub async fn lookup_wrap(
        &self,
        token: &SecretString,
    ) -> Result<Option<WrapLookup>, VaultError> {
        const OP: &str = "lookup";
        let started = Instant::now();
        let sent = self
            .request(reqwest::Method::POST, "sys/wrapping/lookup")
            .json(&json!({ "token": token.expose() }))
            .send()
            .await;
        let resp = self.finish(OP, started, sent).await;
        match resp {
            Err(VaultError::Refused { message, .. }) if message.contains(WRAP_INVALID) => Ok(None),
            Err(e) => Err(e),
            Ok(resp) => {
                #[derive(Deserialize)]
                struct Raw {
                    data: WrapLookup,
                }
                Ok(Some(parse::<Raw>(OP, resp).await?.data))
            }
        }
    }

    /// Consumes a wrapping token (sent only in the header) and returns the token inside.
    pub async fn unwrap(&self, token: &SecretString) -> Result<UnwrappedToken, VaultError> {
        const OP: &str = "unwrap";
        let started = Instant::now();
        let sent = self
            .request(reqwest::Method::POST, "sys/wrapping/unwrap")
            .header("X-Vault-Token", token.expose())
            .send()
            .await;
        let resp = self.finish(OP, started, sent).await?;
        #[derive(Deserialize)]
        struct Raw {
            auth: Option<RawAuth>,
        }
        #[derive(Deserialize)]
        struct RawAuth {
            client_token: String,
            accessor: String,
            #[serde(default)]
            policies: Vec<String>,
        }
        let raw: Raw = parse(OP, resp).await?;
        let auth = raw.auth.ok_or(VaultError::Protocol {
            op: OP,
            detail: "the wrap does not hold a token".into(),
        })?;
        Ok(UnwrappedToken {
            token: SecretString::new(auth.client_token),
            accessor: auth.accessor,
            policies: auth.policies,
        })
    }

    /// Revokes a token (wrapping or not) by accessor. Idempotent: a missing token is `NotFound`.
    pub async fn revoke_accessor(&self, accessor: &str) -> Result<Revoked, VaultError> {
        const OP: &str = "revoke";
        let body = json!({ "accessor": accessor });
        let resp = self.post(OP, "auth/token/revoke-accessor", &body).await;
        match resp {
            Ok(resp) if resp.status() == reqwest::StatusCode::NO_CONTENT => Ok(Revoked::Existed),
            Ok(resp) => {
                let text = resp.text().await.unwrap_or_default();
                if text.contains("No token found") {
                    Ok(Revoked::NotFound)
                } else {
                    Ok(Revoked::Existed)
                }
            }
            // Older Vault versions answer 400 for an unknown accessor.
            Err(VaultError::Refused {
                status: 400,
                message,
                ..
            }) if is_unknown_accessor(&message) => Ok(Revoked::NotFound),
            Err(e) => Err(e),
        }
    }

    /// Extends a token's life by accessor (`auth/token/renew-accessor`, `increment_secs` from
    /// now). The answer never holds the token itself.
    pub async fn renew_accessor(
        &self,
        accessor: &str,
        increment_secs: u64,
    ) -> Result<Renewed, VaultError> {
        const OP: &str = "renew";
        let body = json!({ "accessor": accessor, "increment": increment_secs });
        let resp = self.post(OP, "auth/token/renew-accessor", &body).await;
        match resp {
            Ok(resp) => {
                #[derive(Deserialize)]
                struct Raw {
                    auth: Option<RawAuth>,
                }
                #[derive(Deserialize)]
                struct RawAuth {
                    #[serde(default)]
                    lease_duration: u64,
                }
                let raw: Raw = parse(OP, resp).await?;
                Ok(Renewed::For(raw.auth.map_or(0, |a| a.lease_duration)))
            }
            Err(VaultError::Refused {
                status: 400,
                message,
                ..
            }) if is_unknown_accessor(&message) => Ok(Renewed::NotFound),
            Err(e) => Err(e),
        }
    }

    /// Succeeds when Vault answers `sys/health` as an initialized, unsealed node.
    pub async fn health(&self) -> Result<(), VaultError> {
        const OP: &str = "health";
        let started = Instant::now();
        let sent = self
            .request(
                reqwest::Method::GET,
                "sys/health?standbyok=true&perfstandbyok=true",
            )
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        self.finish(OP, started, sent).await.map(|_| ())
    }

    /// True when a token with this accessor is alive (see [`VaultClient::lookup_accessor`]).
    pub async fn accessor_is_live(&self, accessor: &str) -> Result<bool, VaultError> {
        let found = self
            .lookup_accessor::<serde::de::IgnoredAny>(accessor)
            .await?;
        Ok(found.is_some())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}/v1/{}", self.endpoint.address, path));
        if let Some(ns) = &self.endpoint.namespace {
            rb = rb.header("X-Vault-Namespace", ns);
        }
        rb
    }

    /// POSTs `body` to `path` with the operator's token (see [`VaultClient::authed`]).
    async fn post(
        &self,
        op: &'static str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, VaultError> {
        self.authed(op, |token| {
            self.request(reqwest::Method::POST, path)
                .header("X-Vault-Token", token)
                .json(body)
        })
        .await
    }

    /// Sends an authenticated request, logging in first if needed and once more on a 403 that
    /// came from an invalid token (expired or revoked). A 403 of a valid token (a path its
    /// policy does not allow) is returned as it is: logging in again would only pile up logins.
    async fn authed(
        &self,
        op: &'static str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, VaultError> {
        for attempt in 0..2 {
            let token = self
                .current_token()
                .await
                .inspect_err(|e| self.count_error(op, e))?;
            let started = Instant::now();
            let sent = build(token.expose()).send().await;
            match self.finish(op, started, sent).await {
                Err(e @ VaultError::Refused { status: 403, .. }) if attempt == 0 => {
                    if self.token_still_valid(&token).await {
                        return Err(e);
                    }
                    // Forget the token only if no other caller has replaced it already.
                    let mut cached = self.token.lock().await;
                    if cached.as_ref() == Some(&token) {
                        *cached = None;
                    }
                }
                other => return other,
            }
        }
        unreachable!("the second attempt always returns")
    }

    /// True when Vault still accepts `token`: a metadata lookup of an accessor that does not
    /// exist (a grant the operator has) is refused with 403 only for an invalid token.
    async fn token_still_valid(&self, token: &SecretString) -> bool {
        let answer = self
            .request(reqwest::Method::POST, "auth/token/lookup-accessor")
            .header("X-Vault-Token", token.expose())
            .json(&json!({ "accessor": "cubbyhole-token-check" }))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        answer.is_ok_and(|r| r.status() != reqwest::StatusCode::FORBIDDEN)
    }

    async fn current_token(&self) -> Result<SecretString, VaultError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.clone() {
            return Ok(t);
        }
        let token = self.login().await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    async fn login(&self) -> Result<SecretString, VaultError> {
        match &self.auth {
            None => Err(VaultError::Auth(
                "no Vault authentication configured".into(),
            )),
            Some(VaultAuth::TokenFile(path)) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| VaultError::Auth(format!("reading {}: {e}", path.display())))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(VaultError::Auth(format!("{} is empty", path.display())));
                }
                Ok(SecretString::new(token))
            }
            Some(VaultAuth::Kubernetes {
                mount,
                role,
                jwt_path,
            }) => {
                const OP: &str = "login";
                let jwt = tokio::fs::read_to_string(jwt_path).await.map_err(|e| {
                    VaultError::Auth(format!("reading {}: {e}", jwt_path.display()))
                })?;
                let started = Instant::now();
                let sent = self
                    .request(reqwest::Method::POST, &format!("auth/{mount}/login"))
                    .json(&json!({ "role": role, "jwt": jwt.trim() }))
                    .send()
                    .await;
                let resp = self.finish(OP, started, sent).await.map_err(login_error)?;
                #[derive(Deserialize)]
                struct Raw {
                    auth: RawAuth,
                }
                #[derive(Deserialize)]
                struct RawAuth {
                    client_token: String,
                }
                let raw: Raw = parse(OP, resp).await.map_err(login_error)?;
                Ok(SecretString::new(raw.auth.client_token))
            }
        }
    }

    /// Turns a sent request into a response or a classified error, and records metrics.
    async fn finish(
        &self,
        op: &'static str,
        started: Instant,
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, VaultError> {
        let result = match sent {
            Err(e) => Err(send_error(op, &e)),
            Ok(resp) if resp.status().is_success() => Ok(resp),
            Ok(resp) => {
                let status = resp.status();
                let bytes = resp.bytes().await.unwrap_or_default();
                Err(error_from(op, status, &bytes))
            }
        };
        if let Some(m) = &self.metrics {
            m.vault_latency(op, started.elapsed());
        }
        let resp = result.inspect_err(|e| self.count_error(op, e))?;
        Ok(resp)
    }

    fn count_error(&self, op: &'static str, e: &VaultError) {
        if let Some(m) = &self.metrics {
            m.vault_error(op, e.category());
        }
    }

    /// Looks a token up by accessor (`auth/token/lookup-accessor`, needs `update` on it) and
    /// parses its `data` as `T`; `None` when Vault knows no such accessor. The answer never
    /// holds the token itself.
    pub async fn lookup_accessor<T: serde::de::DeserializeOwned>(
        &self,
        accessor: &str,
    ) -> Result<Option<T>, VaultError> {
        const OP: &str = "lookup_accessor";
        let body = json!({ "accessor": accessor });
        let resp = self.post(OP, "auth/token/lookup-accessor", &body).await;
        match resp {
            Ok(resp) => {
                #[derive(Deserialize)]
                struct Raw<T> {
                    data: T,
                }
                Ok(Some(parse::<Raw<T>>(OP, resp).await?.data))
            }
            Err(VaultError::Refused {
                status: 400,
                message,
                ..
            }) if is_unknown_accessor(&message) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `sys/capabilities-self`: what the operator's token may do on each of `paths`.
    pub async fn capabilities_self(
        &self,
        paths: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>, VaultError> {
        const OP: &str = "capabilities_self";
        let resp = self
            .post(OP, "sys/capabilities-self", &json!({ "paths": paths }))
            .await?;
        let raw: serde_json::Value = parse(OP, resp).await?;
        Ok(paths
            .iter()
            .map(|p| {
                let caps = raw
                    .get(p)
                    .or_else(|| raw.get("data").and_then(|d| d.get(p)))
                    .and_then(|c| serde_json::from_value(c.clone()).ok())
                    .unwrap_or_default();
                (p.clone(), caps)
            })
            .collect())
    }

    /// `auth/token/roles/<role>`: the token role's definition, `None` when it does not exist.
    pub async fn token_role(&self, role: &str) -> Result<Option<TokenRole>, VaultError> {
        const OP: &str = "read_role";
        let path = format!("auth/token/roles/{role}");
        let resp = self
            .authed(OP, |token| {
                self.request(reqwest::Method::GET, &path)
                    .header("X-Vault-Token", token)
            })
            .await;
        match resp {
            Ok(resp) => {
                #[derive(Deserialize)]
                struct Raw {
                    data: TokenRole,
                }
                Ok(Some(parse::<Raw>(OP, resp).await?.data))
            }
            Err(VaultError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What a token role allows, as far as a binding's request is concerned.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TokenRole {
    /// Policies a token of the role may ask for (empty: any the creator holds).
    #[serde(default)]
    pub allowed_policies: Vec<String>,
    /// Policies it may never have.
    #[serde(default)]
    pub disallowed_policies: Vec<String>,
    /// Longest life of its tokens, seconds (0: none set).
    #[serde(default)]
    pub token_explicit_max_ttl: u64,
    /// Periodic tokens' period, seconds (0: not periodic).
    #[serde(default)]
    pub token_period: u64,
}

/// Vault's words for an accessor it knows no token of (expired, revoked or never issued).
fn is_unknown_accessor(message: &str) -> bool {
    message.contains("invalid accessor") || message.contains("No token found")
}

/// A failed login: Vault down stays "unreachable" (the real request was never sent, so it cannot
/// have been processed), a request that could not be built stays "not sent"; anything else is
/// an authentication problem.
fn login_error(e: VaultError) -> VaultError {
    match e {
        e @ VaultError::NotSent { .. } => e,
        VaultError::Unreachable { detail, .. } | VaultError::NoAnswer { detail, .. } => {
            VaultError::Unreachable {
                op: "login",
                detail,
            }
        }
        other => VaultError::Auth(other.to_string()),
    }
}

/// Reads a response: success bodies are parsed (never echoed), errors carry Vault's `errors`.
async fn parse<T: serde::de::DeserializeOwned>(
    op: &'static str,
    resp: reqwest::Response,
) -> Result<T, VaultError> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| VaultError::NoAnswer {
        op,
        detail: describe(&e),
    })?;
    serde_json::from_slice(&bytes).map_err(|_| VaultError::Protocol {
        op,
        detail: format!("HTTP {status} with a body of an unexpected shape"),
    })
}

/// Vault's error answer; its `errors` never contain the token we sent.
fn error_from(op: &'static str, status: reqwest::StatusCode, body: &[u8]) -> VaultError {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let message = serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.join("; "))
        .unwrap_or_default();
    let message = if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no error text")
            .to_string()
    } else {
        message
    };
    if matches!(status.as_u16(), 502 | 504) {
        return VaultError::NoAnswer {
            op,
            detail: format!("HTTP {status}: {message}"),
        };
    }
    VaultError::Refused {
        op,
        status: status.as_u16(),
        message,
    }
}

/// Classifies a request that got no HTTP answer by whether Vault may have acted on it:
/// never built (`NotSent`) or never connected (`Unreachable`) means certainly not; anything
/// after the connection (timeout, reset) may have been processed (`NoAnswer`).
fn send_error(op: &'static str, e: &reqwest::Error) -> VaultError {
    let detail = describe(e);
    if e.is_builder() {
        VaultError::NotSent { op, detail }
    } else if e.is_connect() {
        VaultError::Unreachable { op, detail }
    } else {
        VaultError::NoAnswer { op, detail }
    }
}

/// Trusts exactly the certificates of the PEM bundle at `ca`, not the built-in public roots: a
/// private Vault is vouched for by its own CA only.
fn trust_only(
    builder: reqwest::ClientBuilder,
    ca: &std::path::Path,
) -> Result<reqwest::ClientBuilder, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("reading CA {}: {e}", ca.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("parsing CA {}: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "CA {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca.display()
        ));
    }
    Ok(certs
        .into_iter()
        .fold(builder.tls_built_in_root_certs(false), |b, cert| {
            b.add_root_certificate(cert)
        }))
}

/// What went wrong, with the causes; reqwest's own text (which may name the URL) is left out.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if e.is_builder() {
        "request could not be built".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_redacted_and_is_read_only_through_expose() {
        let token = SecretString::new("s.abc");
        assert_eq!(format!("{token:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(token.clone())), "Some(<redacted>)");
        assert_eq!(token.expose(), "s.abc");
        assert_eq!(token, SecretString::new("s.abc"));
        assert_ne!(token, SecretString::new("s.abd"));
    }

    /// A client without authentication for `address`, with `namespace`.
    fn agent(address: &str, namespace: Option<&str>) -> VaultClient {
        let endpoint = VaultEndpoint {
            address: address.into(),
            namespace: namespace.map(str::to_string),
            ..Default::default()
        };
        VaultClient::new(endpoint, None).unwrap()
    }

    /// An address where nothing listens.
    fn closed_addr() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn assert_never_processed(err: &VaultError) {
        assert!(matches!(err, VaultError::NotSent { .. }), "{err:?}");
        assert!(!err.may_have_been_processed(), "{err:?}");
        assert!(!err.is_unavailable(), "{err:?}");
        assert_eq!(err.category(), "not_sent");
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_was_never_processed() {
        let secret = SecretString::new("s.secret-wrapping-token");
        // A header value with a newline: the request is refused before any connection.
        let err = agent(&closed_addr(), Some("team\nb"))
            .lookup_wrap(&secret)
            .await
            .unwrap_err();
        assert_never_processed(&err);
        assert!(!err.to_string().contains(secret.expose()), "{err}");
        // An address without a scheme is no URL reqwest can send to.
        let err = agent("vault.example:8200", None)
            .unwrap(&secret)
            .await
            .unwrap_err();
        assert_never_processed(&err);
        assert!(err.to_string().contains("could not send unwrap"), "{err}");
    }

    #[tokio::test]
    async fn a_token_no_header_may_carry_is_not_sent() {
        let dir = std::env::temp_dir().join(format!("cubbyhole-vault-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s.first-line\ns.second-line\n").unwrap();
        let endpoint = VaultEndpoint {
            address: closed_addr(),
            ..Default::default()
        };
        let client = VaultClient::new(endpoint, Some(VaultAuth::TokenFile(file))).unwrap();
        let err = client.revoke_accessor("acc").await.unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_never_processed(&err);
        assert!(!err.to_string().contains("s.first-line"), "{err}");
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable_and_never_processed() {
        let err = agent(&closed_addr(), None)
            .lookup_wrap(&SecretString::new("s.x"))
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
        assert!(!err.may_have_been_processed());
        assert!(err.is_unavailable());
    }

    #[tokio::test]
    async fn timeout_after_sending_may_have_been_processed() {
        // Accepts the connection and reads the request, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(conn);
        });
        let sent = reqwest::Client::new()
            .post(format!("http://{addr}/v1/sys/wrapping/unwrap"))
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        server.abort();
        let err = send_error("unwrap", &sent.unwrap_err());
        assert!(matches!(err, VaultError::NoAnswer { .. }), "{err:?}");
        assert!(err.may_have_been_processed());
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("cubbyhole-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let endpoint = VaultEndpoint {
            address: "https://vault.example:8200".into(),
            ca_cert: Some(file),
            namespace: None,
        };
        let err = VaultClient::new(endpoint, None)
            .err()
            .expect("no certificate");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}
