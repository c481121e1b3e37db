//! Kubernetes-style JWT login without Kubernetes: an RSA issuer key signing service account
//! tokens with the `openssl` CLI, and OpenBao's JWT method mounted at `auth/kubernetes`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cubbyhole::vault::{VaultAuth, VaultClient, VaultEndpoint};

use crate::openbao::Bao;
use crate::process::run_ok;

/// An RSA key pair (files in a scratch directory) that signs RS256 JWTs with the `openssl`
/// CLI: a stand-in for the Kubernetes service account token issuer.
pub struct JwtKey {
    private: PathBuf,
    public: PathBuf,
}

impl JwtKey {
    /// Generates a 2048-bit key pair as `<dir>/<name>.key` and `<dir>/<name>.pub` (PEM).
    pub fn generate(dir: &Path, name: &str) -> JwtKey {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        run_ok(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA"])
                .args(["-pkeyopt", "rsa_keygen_bits:2048", "-out"])
                .arg(&private),
        );
        run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public),
        );
        JwtKey { private, public }
    }

    /// The PEM file with the public key (what Vault is told to trust).
    pub fn public_pem(&self) -> &Path {
        &self.public
    }

    /// A compact RS256 JWT carrying `claims`, signed with this key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload = base64url(&serde_json::to_vec(claims).expect("claims to JSON"));
        let input = format!("{header}.{payload}");
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.private)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl dgst");
        // Dropping stdin after the write closes it, so openssl sees the end of the input.
        std::io::Write::write_all(
            &mut child.stdin.take().expect("openssl stdin"),
            input.as_bytes(),
        )
        .expect("write signing input");
        let out = child.wait_with_output().expect("wait for openssl dgst");
        assert!(
            out.status.success() && out.stdout.len() == 256,
            "openssl dgst failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{input}.{}", base64url(&out.stdout))
    }
}

/// Claims of a projected service account token for `sub` and audience `aud`, valid from a
/// minute ago for ten minutes.
pub fn service_account_claims(sub: &str, aud: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    serde_json::json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": sub,
        "aud": [aud],
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 600,
    })
}

/// Base64url without padding (RFC 7515 §2), as JWTs use.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The audience the JWT role of [`Bao::enable_jwt_login`] is bound to.
pub const JWT_AUDIENCE: &str = "cubbyhole-test";

impl Bao {
    /// Mounts OpenBao's JWT auth method at `auth/kubernetes` (it takes the same
    /// `{"role", "jwt"}` login as the Kubernetes method, without a TokenReview API), trusting
    /// `key`, with role `role` bound to [`JWT_AUDIENCE`] and giving tokens the `policy` policy
    /// and `token_ttl` (also the max TTL, so the token cannot be renewed past it).
    pub fn enable_jwt_login(&self, key: &JwtKey, role: &str, policy: &str, token_ttl: &str) {
        let pubkey = format!("jwt_validation_pubkeys=@{}", key.public_pem().display());
        let steps: [Vec<String>; 3] = [
            vec![
                "auth".into(),
                "enable".into(),
                "-path=kubernetes".into(),
                "jwt".into(),
            ],
            vec!["write".into(), "auth/kubernetes/config".into(), pubkey],
            vec![
                "write".into(),
                format!("auth/kubernetes/role/{role}"),
                "role_type=jwt".into(),
                format!("bound_audiences={JWT_AUDIENCE}"),
                "user_claim=sub".into(),
                format!("token_policies={policy}"),
                format!("token_ttl={token_ttl}"),
                format!("token_max_ttl={token_ttl}"),
            ],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            let out = self.cli(&self.root_token, &args);
            assert!(
                out.status.success(),
                "bao {}: {}",
                args[..2].join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// A client that logs in at `auth/kubernetes` as `role` with the JWT in `jwt_path`.
    pub fn kubernetes_client(
        &self,
        endpoint: VaultEndpoint,
        role: &str,
        jwt_path: &Path,
    ) -> VaultClient {
        let auth = VaultAuth::Kubernetes {
            mount: "kubernetes".to_string(),
            role: role.to_string(),
            jwt_path: jwt_path.to_path_buf(),
        };
        VaultClient::new(endpoint, Some(auth)).expect("client")
    }
}
