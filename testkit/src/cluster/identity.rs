//! The operator's identity in the e2e suite: its service account under exactly the RBAC that
//! `config/rbac/` ships, with a token from the real TokenRequest API. Test code keeps admin.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo};

use super::{Cluster, OPERATOR_NS};

/// The operator's service account name (`config/rbac/service_account.yaml`).
pub const OPERATOR_SA: &str = "cubbyhole";

/// Files that let a process act as the operator's service account.
pub struct OperatorIdentity {
    /// Kubeconfig authenticating with the service account's API server token.
    pub kubeconfig: PathBuf,
    /// That API server token alone (what Vault reviews logins with, as a Vault outside the
    /// cluster needs: `TOKEN_REVIEWER_JWT_FILE`).
    pub api_jwt: PathBuf,
    /// A token for audience `vault` only, as the chart's projected volume holds: what the
    /// operator logs in to Vault with.
    pub jwt: PathBuf,
}

/// A token of the operator's service account from the TokenRequest API, for `audience` (the
/// API server's own when `None`).
fn token_request(cluster: &Cluster, audience: Option<&str>) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.args(["create", "token", OPERATOR_SA, "-n", OPERATOR_NS])
        .args(["--duration", "24h"])
        .env("KUBECONFIG", &cluster.kubeconfig);
    if let Some(audience) = audience {
        cmd.args(["--audience", audience]);
    }
    let out = cmd.output().expect("run kubectl create token");
    assert!(
        out.status.success(),
        "TokenRequest for the operator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("token is text")
        .trim()
        .to_string()
}

impl OperatorIdentity {
    /// Applies `config/rbac/` and `config/vault/auth-delegator.yaml` as admin, asks the API
    /// server for the service account's two tokens (its own audience, and `vault`) and writes
    /// a kubeconfig that uses the first.
    pub fn provision(cluster: &Cluster, dir: &Path) -> OperatorIdentity {
        let root = crate::paths::repo();
        kubectl(cluster, &["apply", "-k"], &root.join("config/rbac"));
        kubectl(
            cluster,
            &["apply", "-f"],
            &root.join("config/vault/auth-delegator.yaml"),
        );
        let api_jwt = dir.join("operator-sa-token");
        crate::process::write_private(&api_jwt, &token_request(cluster, None));
        let jwt = dir.join("operator-vault-token");
        crate::process::write_private(&jwt, &token_request(cluster, Some("vault")));

        let mut kc = Kubeconfig::read_from(&cluster.kubeconfig).expect("read kubeconfig");
        let user = format!("system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}");
        kc.auth_infos = vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(AuthInfo {
                token_file: Some(api_jwt.display().to_string()),
                ..Default::default()
            }),
            other: Default::default(),
        }];
        for ctx in kc.contexts.iter_mut().filter_map(|c| c.context.as_mut()) {
            ctx.user = Some(user.clone());
        }
        let kubeconfig = dir.join("operator.kubeconfig");
        crate::process::write_private(
            &kubeconfig,
            &serde_json::to_string(&kc).expect("kubeconfig as JSON"),
        );
        OperatorIdentity {
            kubeconfig,
            api_jwt,
            jwt,
        }
    }
}

fn kubectl(cluster: &Cluster, args: &[&str], path: &Path) {
    let out = Command::new("kubectl")
        .args(args)
        .arg(path)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
