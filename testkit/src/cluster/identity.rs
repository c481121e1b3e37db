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
    /// Kubeconfig authenticating with the service account token.
    pub kubeconfig: PathBuf,
    /// The token alone (a projected-token stand-in for the Vault Kubernetes login).
    pub jwt: PathBuf,
}

impl OperatorIdentity {
    /// Applies `config/rbac/` and `config/vault/auth-delegator.yaml` as admin, asks the API
    /// server for a service account token and writes a kubeconfig that uses it.
    pub fn provision(cluster: &Cluster, dir: &Path) -> OperatorIdentity {
        let root = crate::paths::repo();
        kubectl(cluster, &["apply", "-k"], &root.join("config/rbac"));
        kubectl(
            cluster,
            &["apply", "-f"],
            &root.join("config/vault/auth-delegator.yaml"),
        );
        let out = Command::new("kubectl")
            .args(["create", "token", OPERATOR_SA, "-n", OPERATOR_NS])
            .args(["--duration", "24h"])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()
            .expect("run kubectl create token");
        assert!(
            out.status.success(),
            "TokenRequest for the operator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).expect("token is text");
        let jwt = dir.join("operator-sa-token");
        crate::process::write_private(&jwt, token.trim());

        let mut kc = Kubeconfig::read_from(&cluster.kubeconfig).expect("read kubeconfig");
        let user = format!("system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}");
        kc.auth_infos = vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(AuthInfo {
                token_file: Some(jwt.display().to_string()),
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
        OperatorIdentity { kubeconfig, jwt }
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
