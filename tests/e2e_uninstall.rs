//! End-to-end: `cubbyhole uninstall` against the real API server and OpenBao. With Vault down
//! it gives up within its timeout, scales the operator's Deployment back and removes nothing;
//! once Vault is back it revokes the held token and the pending wrap, removes every record and
//! releases every finalizer. (The chart's pre-delete hook running it on a real node:
//! `tests/e2e_node.rs`, the Helm test.)

use std::process::Command;

use cubbyhole_testkit::cluster::{Env, OPERATOR_NS, Options, ann, issued};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;

/// Runs `cubbyhole uninstall` with the operator's configuration, for the operator whose
/// namespace (record keys, Deployment `cubbyhole-operator`) is `namespace`; its exit code, stdout and stderr (also kept
/// in the test's directory for the leak scan).
fn uninstall(env: &Env, namespace: &str, timeout: &str, run: &str) -> (i32, String, String) {
    let out = Command::new(cubbyhole_testkit::paths::cubbyhole_bin())
        .args(["uninstall", "--config"])
        .arg(&env.config)
        .args([
            "--namespace",
            namespace,
            "--deployment",
            "cubbyhole-operator",
        ])
        .args(["--timeout", timeout])
        // Admin: this cluster's operator is a process, not the Deployment; the hook's own
        // RBAC is proven by the Helm test on the node.
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .env_remove("VAULT_ADDR")
        .output()
        .expect("run cubbyhole uninstall");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    std::fs::write(
        env.dir.join(format!("uninstall-{run}.log")),
        format!("{stdout}{stderr}"),
    )
    .unwrap();
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[tokio::test]
async fn uninstall_gives_up_whole_while_vault_is_down_then_leaves_nothing_alive_or_stuck() {
    let mut env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("web", "5m")).await;
    env.create_pod("held", "web").await;
    env.create_pod("pending", "web").await;
    let (_, token) = issued(&env, "b", "held").await;
    let (receipt, code) = env.run_agent(&token, "held");
    assert_eq!(code, 0, "{receipt:?}");
    let held = receipt.unwrap().accessor.unwrap();
    let (pending, _) = issued(&env, "b", "pending").await;
    let wrap = ann(&pending)["wrap-accessor"].clone();
    // What stands for the operator's Deployment (its pods never run: no node here).
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "cubbyhole-operator"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "stand-in"}},
            "template": {"metadata": {"labels": {"app": "stand-in"}},
                "spec": {"containers": [{"name": "c", "image": "stand-in"}]}}},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    env.operator.take().unwrap().kill();
    let live = |accessor: String| {
        let root = env.bao.root_client();
        async move { root.accessor_is_live(&accessor).await.unwrap() }
    };
    let replicas = || async {
        deployments
            .get("cubbyhole-operator")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas
    };

    // Not the operator's namespace: no record keys there, so it stops before changing anything
    // (a new key would make every record look forged, and nothing would be revoked).
    let (code, stdout, stderr) = uninstall(&env, &env.ns, "10s", "wrong-namespace");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("no Secret cubbyhole-record-key in namespace"),
        "{stderr}"
    );
    let here: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    assert!(
        here.get_opt("cubbyhole-record-key")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(replicas().await, Some(2));

    // Vault down: it gives up at its timeout, the operator scaled back, nothing removed.
    env.bao.pause();
    let (code, stdout, stderr) = uninstall(&env, OPERATOR_NS, "10s", "vault-down");
    env.bao.resume();
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("uninstall gave up"), "{stderr}");
    assert!(stderr.contains("scaled from 2 to 0"), "{stderr}");
    assert_eq!(replicas().await, Some(2), "the operator is given back");
    let records = env.records("b").await;
    assert_eq!(records.len(), 2, "nothing removed");
    assert!(records.iter().all(|s| !s.finalizers().is_empty()));
    assert!(live(held.clone()).await && live(wrap.clone()).await);

    // Vault back: everything retired, every finalizer released, the binding kept.
    let (code, stdout, stderr) = uninstall(&env, OPERATOR_NS, "60s", "done");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout
            .contains("bindings released: 1; records retired (their tokens and wraps revoked): 2;"),
        "{stdout}"
    );
    assert_eq!(replicas().await, Some(0));
    assert!(!live(held).await, "the held token is revoked");
    assert!(!live(wrap).await, "the pending wrap is revoked");
    assert!(env.records("b").await.is_empty(), "no record left");
    // Again: nothing left to do, and it says so.
    let (code, stdout, _) = uninstall(&env, OPERATOR_NS, "60s", "again");
    assert_eq!(code, 0);
    assert!(
        stdout.contains("records retired (their tokens and wraps revoked): 0;"),
        "{stdout}"
    );
    env.delete_binding_at_once("b").await;
    env.assert_no_leaks().await;
}
