//! The operator's configuration file: where Vault is, how to log in, which roles each
//! namespace may use, and the tracking cadence.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::vault::{VaultAuth, VaultEndpoint};

/// The whole configuration file (YAML).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorConfig {
    /// Vault connection.
    pub vault: VaultConfig,
    /// Which token roles each namespace may use. Empty: no binding may mint anything.
    #[serde(default)]
    pub allowed_roles: Vec<RoleRule>,
    /// How often each outstanding wrap is looked up (`sys/wrapping/lookup`). Default `10s`.
    #[serde(default = "default_lookup_period", with = "humantime_serde_compat")]
    pub lookup_period: Duration,
    /// How often to sweep for per-pod Secrets whose binding is gone. Default `5m`.
    #[serde(default = "default_sweep_period", with = "humantime_serde_compat")]
    pub sweep_period: Duration,
}

/// Vault address, trust and authentication.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault:8200`.
    pub address: String,
    /// PEM CA bundle for Vault's certificate.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// How the operator logs in.
    pub auth: AuthConfig,
}

/// Exactly one of the two methods.
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesAuth {
    /// Vault role of the auth method.
    pub role: String,
    /// Mount path. Default `kubernetes`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Service account token file.
    #[serde(default = "default_jwt_path")]
    pub jwt_path: PathBuf,
}

/// Namespaces matching any of `namespaces` may use roles matching any of `roles` (globs: `*`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleRule {
    /// Namespace globs.
    pub namespaces: Vec<String>,
    /// Token role globs.
    pub roles: Vec<String>,
}

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
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl OperatorConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and checks YAML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        config.vault_auth()?;
        if config.lookup_period < Duration::from_secs(1) {
            return Err("lookupPeriod must be at least 1s".into());
        }
        Ok(config)
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
}
