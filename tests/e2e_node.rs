//! End-to-end on a node that really runs pods: kubelet, containerd and runc beside the real
//! control plane and OpenBao (`e2e/controlplane/node-up.sh`). Nothing here plays the kubelet:
//! the injected init container runs from the image built from this checkout, reads the wrap
//! from the Secret volume the kubelet mounted, and its receipt reaches the operator as the
//! kubelet's own termination message; the app container uses the token against OpenBao.

use std::time::Duration;

use cubbyhole_testkit::cluster::node::{CUBBYHOLE_IMAGE, NODE};
use cubbyhole_testkit::cluster::{Env, Options, ann, eventually};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::Api;

/// Pods on the node take image unpacking, volume setup and a sandbox: more than a fake's time.
const RUN: Duration = Duration::from_secs(120);
const T: Duration = Duration::from_secs(60);

/// Starts everything and a binding `b` (wrapTTL `ttl`) selecting `app=<app>`; the injected init
/// container is named `unwrap`, the binding's agent container, so its restarts are new starts.
async fn env_on_node(app: &str, ttl: &str) -> Env {
    let mut env = Env::start(Options::default()).await;
    env.start_node_and_webhook().await;
    let nodes: Api<Node> = Api::all(env.client.clone());
    let node = nodes.get(NODE).await.expect("the node is registered");
    assert!(
        node.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "the node is Ready"
    );
    env.apply_binding("b", Env::spec(app, ttl)).await;
    eventually("the webhook knows the binding", T, || async {
        env.dry_run_pod("probe", app).await.ok()
    })
    .await;
    env
}

/// The accessor the app container printed after its lookup-self (`None` until it has).
fn accessor_used(env: &Env, pod: &str) -> Vec<String> {
    env.cluster
        .container_log(pod, "agent")
        .lines()
        .filter_map(|l| l.split("token accessor: ").nth(1))
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect()
}

/// The single record of binding `b` once it is Unwrapped and verified by a receipt.
async fn verified_record(env: &Env, pod: &str) -> std::collections::BTreeMap<String, String> {
    eventually("the record is Unwrapped and verified", T, || async {
        let s = env
            .records("b")
            .await
            .into_iter()
            .find(|s| ann(s).get("pod").map(String::as_str) == Some(pod))?;
        let a = ann(&s);
        (a.get("phase")? == "Unwrapped" && a.get("verified")? == "true").then_some(a)
    })
    .await
}

#[tokio::test]
async fn an_injected_deployment_runs_on_the_node_and_its_agent_uses_the_token() {
    let env = env_on_node("web", "60s").await;
    env.create_deployment("web", "web", 1).await;
    let pods = env.running_pods("web", 1, RUN).await;
    let pod = pods[0].name_any();
    // The kubelet ran the injected init container from the cubbyhole image and it exited 0.
    let init = pods[0]
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.clone())
        .unwrap_or_default();
    assert_eq!(init.len(), 1, "{init:?}");
    assert_eq!(init[0].name, "unwrap");
    assert_eq!(init[0].image, CUBBYHOLE_IMAGE);
    let done = init[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!(done.exit_code, 0, "{done:?}");
    // Its receipt is the kubelet's termination message: it names the token's accessor.
    let message = done.message.clone().unwrap_or_default();
    // The app container used that very token against OpenBao.
    let used = eventually("the app container looked its token up", T, || async {
        let used = accessor_used(&env, &pod);
        (!used.is_empty()).then_some(used)
    })
    .await;
    let log = env.cluster.container_log(&pod, "agent");
    assert!(log.contains("HTTP/1.0 200"), "{log}");
    let record = verified_record(&env, &pod).await;
    assert_eq!(used, vec![record["accessor"].clone()]);
    assert!(message.contains(&record["accessor"]), "receipt {message:?}");
    let root = env.bao.root_client();
    assert!(root.accessor_is_live(&record["accessor"]).await.unwrap());
    assert_eq!(env.minted_wraps().await.len(), 1);
    env.assert_no_leaks().await;
}
