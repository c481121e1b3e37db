//! End-to-end on a node that really runs pods: kubelet, containerd and runc beside the real
//! control plane and OpenBao (`e2e/controlplane/node-up.sh`). Nothing here plays the kubelet:
//! the injected init container runs from the image built from this checkout, reads the wrap
//! from the Secret volume the kubelet mounted, and its receipt reaches the operator as the
//! kubelet's own termination message; the app container uses the token against OpenBao.

use std::time::Duration;

use cubbyhole::agent::ask::{Answer, Asker};
use cubbyhole::core::pod::UNWRAP_CONTAINER;
use cubbyhole::request::protocol::reason;
use cubbyhole::webhook::inject::{
    IDENTITY_VOLUME, SELF_BOOTSTRAP_ANNOTATION, TOKEN_VOLUME, WRAP_VOLUME,
};
use cubbyhole_testkit::cluster::node::{CUBBYHOLE_IMAGE, NODE, PYTHON_IMAGE};
use cubbyhole_testkit::cluster::webhook::INJECT;
use cubbyhole_testkit::cluster::webhook::injected_ca;
use cubbyhole_testkit::cluster::{Env, Options, ann, eventually, free_port};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

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

/// The pid of the process named `comm` in pod `uid`'s cgroup on the node.
fn pid_in_pod(uid: &str, comm: &str) -> Option<u32> {
    let marker = format!("pod{uid}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (cgroup.contains(&marker) && name.trim() == comm).then_some(pid)
    })
}

fn kill(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {pid}");
}

fn all_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| cs.iter().all(|c| c.ready))
}

fn restarts(pod: &Pod, container: &str, init: bool) -> i32 {
    let status = pod.status.as_ref().unwrap();
    let list = if init {
        &status.init_container_statuses
    } else {
        &status.container_statuses
    };
    list.iter()
        .flatten()
        .find(|c| c.name == container)
        .map_or(0, |c| c.restart_count)
}

#[tokio::test]
async fn an_app_container_restart_keeps_the_token_it_holds() {
    let env = env_on_node("keep", "60s").await;
    env.create_deployment("keep", "keep", 1).await;
    let pod = env.running_pods("keep", 1, RUN).await.remove(0);
    let name = pod.name_any();
    let record = verified_record(&env, &name).await;
    // The kubelet restarts the app container after its process is killed; the init container
    // does not run again: it is the same start, the token in the memory volume is the same.
    let sleeper = eventually("the app container's process", T, || async {
        pid_in_pod(&pod.uid().unwrap(), "sleep")
    })
    .await;
    kill(sleeper);
    let pod = eventually("the app container restarted and runs", T, || async {
        let p = env.pods().get(&name).await.ok()?;
        (restarts(&p, "agent", false) == 1 && all_ready(&p)).then_some(p)
    })
    .await;
    assert_eq!(restarts(&pod, "unwrap", true), 0);
    let used = eventually("the restarted container looked its token up", T, || async {
        let used = accessor_used(&env, &name);
        (used.len() == 2).then_some(used)
    })
    .await;
    assert_eq!(
        used,
        vec![record["accessor"].clone(), record["accessor"].clone()]
    );
    let root = env.bao.root_client();
    cubbyhole_testkit::cluster::holds_for(
        "the token in use stays live",
        Duration::from_secs(5),
        || async {
            root.accessor_is_live(&record["accessor"])
                .await
                .unwrap_or(false)
        },
    )
    .await;
    assert_eq!(env.minted_wraps().await.len(), 1);
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_new_pod_sandbox_is_a_new_start_with_a_fresh_wrap() {
    // wrapTTL 150 s: the kubelet refreshes the Secret volume only at its next sync of the pod
    // (1 to 1.5 min after the last); with 60 s the new start's wrap could expire first and its
    // replacement wait another sync, past any sane timeout on a loaded machine. The replacement
    // path is the late-image test's subject, not this one's.
    let env = env_on_node("fresh", "150s").await;
    env.create_deployment("fresh", "fresh", 1).await;
    let pod = env.running_pods("fresh", 1, RUN).await.remove(0);
    let name = pod.name_any();
    let first = verified_record(&env, &name).await;
    assert_eq!(first["start"], "0");
    // The sandbox dies (as on a runtime restart): the kubelet makes a new one and runs the init
    // container again, whose restart is the binding's new start.
    let pause = eventually("the pod's sandbox process", T, || async {
        pid_in_pod(&pod.uid().unwrap(), "pause")
    })
    .await;
    kill(pause);
    let killed = std::time::Instant::now();
    let second = eventually(
        "start 1 unwrapped and verified",
        Duration::from_secs(240),
        || async {
            let s = env.records("b").await.pop()?;
            let a = ann(&s);
            (a.get("start")? == "1"
                && a.get("phase")? == "Unwrapped"
                && a.get("verified")? == "true")
                .then_some(a)
        },
    )
    .await;
    println!(
        "new start unwrapped {:?} after the sandbox died",
        killed.elapsed()
    );
    assert_ne!(second["accessor"], first["accessor"]);
    // The restarted init container waited for the fresh wrap in its volume and unwrapped it;
    // the app container uses the new token, and the old one is dead.
    let used = eventually("the new app container used the new token", RUN, || async {
        let used = accessor_used(&env, &name);
        (used.len() == 2).then_some(used)
    })
    .await;
    assert_eq!(
        used,
        vec![first["accessor"].clone(), second["accessor"].clone()]
    );
    let root = env.bao.root_client();
    eventually("the first start's token is revoked", T, || async {
        (!root.accessor_is_live(&first["accessor"]).await.ok()?).then_some(())
    })
    .await;
    assert!(root.accessor_is_live(&second["accessor"]).await.unwrap());
    let pod = env.pods().get(&name).await.unwrap();
    assert_eq!(restarts(&pod, "unwrap", true), 1);
    // The kubelet puts the new start's wrap into the volume at its next sync of the pod
    // (seconds, or up to its sync period, 1 min): a wrap that expired first was replaced.
    let replaced: usize = second.get("replaced").map_or(0, |r| r.parse().unwrap());
    let wraps = env.minted_wraps().await;
    assert_eq!(wraps.len(), 2 + replaced, "{wraps:?}");
    assert!(wraps.iter().all(|(_, live)| !live), "{wraps:?}");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_pod_whose_image_appears_late_still_gets_a_usable_wrap() {
    let mut env = Env::start(Options::default()).await;
    // The init container's image is not on the node yet (a slow pull).
    let late = "127.0.0.1:5000/cubbyhole:late";
    env.start_node_and_webhook_with_image(late).await;
    // wrapTTL 60 s: the kubelet's pull back-off (10 s, doubling) then finds a valid
    // replacement whichever attempt succeeds first, even on a loaded machine.
    env.apply_binding("b", Env::spec("late", "60s")).await;
    eventually("the webhook knows the binding", T, || async {
        env.dry_run_pod("probe", "late").await.ok()
    })
    .await;
    env.create_deployment("late", "late", 1).await;
    let first = eventually("a wrap is issued", T, || async {
        let s = env.records("b").await.pop()?;
        ann(&s).get("wrap-accessor").cloned()
    })
    .await;
    let waiting = eventually("the kubelet cannot pull the image", T, || async {
        let pods = env
            .pods()
            .list(&ListParams::default().labels("app=late"))
            .await
            .ok()?;
        let pod = pods.items.into_iter().next()?;
        let waiting = pod.status.as_ref()?.init_container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .reason
            .clone()?;
        waiting.contains("Image").then_some(waiting)
    })
    .await;
    println!("init container waiting: {waiting}");
    // The first wrap expires unconsumed and is replaced for the same start.
    eventually("the wrap is replaced", RUN, || async {
        let s = env.records("b").await.pop()?;
        let a = ann(&s);
        (a.get("wrap-accessor")? != &first && a.contains_key("replaced")).then_some(())
    })
    .await;
    env.cluster.load_cubbyhole_image(late);
    let pod = env
        .running_pods("late", 1, Duration::from_secs(240))
        .await
        .remove(0);
    let name = pod.name_any();
    let record = verified_record(&env, &name).await;
    let used = eventually("the app container used its token", T, || async {
        let used = accessor_used(&env, &name);
        (!used.is_empty()).then_some(used)
    })
    .await;
    assert_eq!(used, vec![record["accessor"].clone()]);
    let root = env.bao.root_client();
    assert!(!root.accessor_is_live(&first).await.unwrap());
    assert!(root.accessor_is_live(&record["accessor"]).await.unwrap());
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn deleting_a_running_pod_revokes_its_token_and_its_replacement_gets_its_own() {
    let env = env_on_node("gone", "60s").await;
    env.create_deployment("gone", "gone", 1).await;
    let pod = env.running_pods("gone", 1, RUN).await.remove(0);
    let first = verified_record(&env, &pod.name_any()).await;
    env.pods()
        .delete(&pod.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    let root = env.bao.root_client();
    eventually("the deleted pod's token is revoked", T, || async {
        (!root.accessor_is_live(&first["accessor"]).await.ok()?).then_some(())
    })
    .await;
    let next = eventually("the replacement runs", RUN, || async {
        let pods = env
            .pods()
            .list(&ListParams::default().labels("app=gone"))
            .await
            .ok()?;
        pods.items
            .into_iter()
            .find(|p| p.name_any() != pod.name_any() && all_ready(p))
            .map(|p| p.name_any())
    })
    .await;
    let second = verified_record(&env, &next).await;
    assert_ne!(second["accessor"], first["accessor"]);
    assert_eq!(accessor_used(&env, &next), vec![second["accessor"].clone()]);
    env.assert_no_leaks().await;
}

/// Asks the endpoint with a fresh identity token of `pod` (what anyone who may read its
/// projected token, or create one for its service account, holds); the refusal's reason.
async fn replay_identity(env: &Env, pod: &Pod) -> String {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == UNWRAP_CONTAINER))
        .expect("the injected init container");
    let endpoint = init
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix("--request="))
        .expect("the endpoint's address")
        .to_string();
    let identity = env.pod_identity_token(&pod.name_any(), "cubbyhole").await;
    let file = env.dir.join("replayed-identity");
    std::fs::write(&file, identity).unwrap();
    let asker = Asker::new(&endpoint, Some(&injected_ca(pod)), &file).expect("asker");
    match asker.ask_once().await.expect("an answer") {
        Answer::Refused { refusal, .. } => refusal.reason,
        Answer::Wrap(wrap, _) => {
            env.remember(wrap.expose());
            panic!("a replayed identity token was served a wrap")
        }
        Answer::Failed { what, .. } => panic!("no answer: {what}"),
    }
}

#[tokio::test]
async fn on_request_the_init_container_asks_with_the_kubelets_token_at_every_start() {
    let mut env = Env::start(Options::default()).await;
    env.start_node_and_webhook_with(CUBBYHOLE_IMAGE, true).await;
    let spec = Env::request_spec("ask", "60s");
    env.apply_binding("b", spec).await;
    eventually("the webhook knows the binding", T, || async {
        env.dry_run_pod("probe", "ask").await.ok()
    })
    .await;
    // Every version of every record, as the watch saw it: none may ever carry data.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Secret>::new()));
    let sink = seen.clone();
    let records: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let config = watcher::Config::default().labels("cubbyhole.dev/binding=b");
    let watch = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(records, config));
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = event {
                sink.lock().unwrap().push(s);
            }
        }
    });
    env.create_deployment("ask", "ask", 1).await;
    let pod = env.running_pods("ask", 1, RUN).await.remove(0);
    let name = pod.name_any();
    // The kubelet projected the pod's own token (audience cubbyhole); the init container asked
    // the endpoint with it, unwrapped and reported.
    let init = &pod
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    let done = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!(done.exit_code, 0, "{done:?}");
    let first = verified_record(&env, &name).await;
    let used = eventually("the app container used its token", T, || async {
        let used = accessor_used(&env, &name);
        (!used.is_empty()).then_some(used)
    })
    .await;
    assert_eq!(used, vec![first["accessor"].clone()]);
    // The pod's identity token replayed from outside (no new run of the pod): refused, and
    // the agent keeps its token.
    let replayed = replay_identity(&env, &pod).await;
    assert_eq!(replayed, reason::ALREADY_SERVED);
    let root = env.bao.root_client();
    assert!(root.accessor_is_live(&first["accessor"]).await.unwrap());
    assert_eq!(env.minted_wraps().await.len(), 1);
    // A new sandbox: the init container runs again and asks afresh; the old token dies.
    let pause = eventually("the pod's sandbox process", T, || async {
        pid_in_pod(&pod.uid().unwrap(), "pause")
    })
    .await;
    kill(pause);
    let second = eventually("the next start asked and unwrapped", RUN, || async {
        let s = env.records("b").await.pop()?;
        let a = ann(&s);
        (a.get("accessor")? != &first["accessor"]
            && a.get("phase")? == "Unwrapped"
            && a.get("verified")? == "true")
            .then_some(a)
    })
    .await;
    let used = eventually("the new app container used the new token", RUN, || async {
        let used = accessor_used(&env, &name);
        (used.len() == 2).then_some(used)
    })
    .await;
    assert_eq!(used[1], second["accessor"]);
    eventually("the first start's token is revoked", T, || async {
        (!root.accessor_is_live(&first["accessor"]).await.ok()?).then_some(())
    })
    .await;
    assert!(root.accessor_is_live(&second["accessor"]).await.unwrap());
    assert_eq!(env.minted_wraps().await.len(), 2);
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the watch saw the records");
    for s in &seen {
        assert!(
            s.data.as_ref().is_none_or(|d| d.is_empty()),
            "a record carried data: {:?}",
            s.metadata.name
        );
    }
    env.assert_no_leaks().await;
}

/// A Deployment of one pod labelled `app=py` that bootstraps itself: annotated for
/// self-bootstrap, its only container runs the Python example agent from [`PYTHON_IMAGE`]
/// (its entrypoint; no command), on the node's network so OpenBao's and the endpoint's
/// 127.0.0.1 addresses work.
fn python_agent_deployment() -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "py"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "py"}},
            "template": {
                "metadata": {
                    "labels": {"app": "py", INJECT: "true"},
                    "annotations": {SELF_BOOTSTRAP_ANNOTATION: "true"},
                },
                "spec": {
                    "hostNetwork": true,
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
                    "containers": [{
                        "name": "agent",
                        "image": PYTHON_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        // Each log line reaches the kubelet as it is written.
                        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                    }],
                },
            },
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_python_agent_bootstraps_itself_on_the_node_with_no_init_container() {
    let started = std::time::Instant::now();
    let mut env = Env::start(Options::default()).await;
    env.start_node_and_webhook_with(CUBBYHOLE_IMAGE, true).await;
    let loading = std::time::Instant::now();
    env.cluster.load_python_image(PYTHON_IMAGE);
    println!(
        "node up after {:?}, the Python image built and imported in {:?}",
        loading - started,
        loading.elapsed()
    );
    let spec = Env::request_spec("py", "60s");
    env.apply_binding("b", spec).await;
    eventually("the webhook knows the binding", T, || async {
        env.dry_run_pod("probe", "py").await.ok()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .create(&PostParams::default(), &python_agent_deployment())
        .await
        .expect("create Deployment");
    let created = std::time::Instant::now();
    let pod = env.running_pods("py", 1, RUN).await.remove(0);
    println!(
        "the Python agent runs {:?} after its Deployment was created",
        created.elapsed()
    );
    let name = pod.name_any();
    // The webhook injected no init container: only the identity token's volume.
    let spec = pod.spec.as_ref().unwrap();
    assert!(
        spec.init_containers.as_ref().is_none_or(|c| c.is_empty()),
        "{:?}",
        spec.init_containers
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(volumes.contains(&IDENTITY_VOLUME), "{volumes:?}");
    assert!(!volumes.contains(&TOKEN_VOLUME), "{volumes:?}");
    assert!(!volumes.contains(&WRAP_VOLUME), "{volumes:?}");
    // The Python client asked the endpoint with the kubelet's projected token, unwrapped, and
    // reported its receipt: the record is verified.
    let record = verified_record(&env, &name).await;
    println!(
        "verified {:?} after its Deployment was created",
        created.elapsed()
    );
    // The agent looked itself up in OpenBao with that very token.
    let alive = format!("token {} alive", record["accessor"]);
    eventually("the Python agent used its token", T, || async {
        env.cluster
            .container_log(&name, "agent")
            .contains(&alive)
            .then_some(())
    })
    .await;
    let log = env.cluster.container_log(&name, "agent");
    assert!(
        log.contains(&format!("got Token(accessor='{}'", record["accessor"])),
        "{log}"
    );
    let pod = env.pods().get(&name).await.unwrap();
    assert_eq!(restarts(&pod, "agent", false), 0, "{log}");
    let root = env.bao.root_client();
    assert!(root.accessor_is_live(&record["accessor"]).await.unwrap());
    assert_eq!(env.minted_wraps().await.len(), 1);
    env.assert_no_leaks().await;
    println!("passed after {:?}", started.elapsed());
}

/// `kubectl kustomize config/` as objects.
fn shipped_config() -> Vec<serde_json::Value> {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(cubbyhole_testkit::paths::repo().join("config"))
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str(doc).expect("a YAML object"))
        .collect()
}

/// An environment with a node and without the harness's operator process (the operator will
/// be the pod the kubelet runs), and the API server's port for that pod to reach it on.
async fn env_for_an_operator_pod() -> (Env, String) {
    let mut env = Env::start(Options::default()).await;
    env.cluster.start_node();
    if let Some(op) = env.operator.take() {
        op.kill();
    }
    let api_port = env
        .cluster
        .api_url()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    (env, api_port)
}

#[tokio::test]
async fn the_operator_runs_in_the_cluster_from_its_image_with_config_as_shipped() {
    let (env, api_port) = env_for_an_operator_pod().await;
    let (http, webhook) = (free_port(), free_port());
    let mut objects = shipped_config();
    // Only what this machine needs: the local image; the node's network (hostNetwork) with the
    // API server, probes and webhook on 127.0.0.1 (no kube-proxy, and nothing may be reached
    // outside 127.0.0.0/8, so no Service routing); OpenBao's address. One replica: two would
    // share the node's ports.
    for o in objects.iter_mut() {
        match o["kind"].as_str().unwrap() {
            "Deployment" => {
                o["spec"]["replicas"] = json!(1);
                let spec = &mut o["spec"]["template"]["spec"];
                spec["hostNetwork"] = json!(true);
                let c = &mut spec["containers"][0];
                c["image"] = json!(CUBBYHOLE_IMAGE);
                c["imagePullPolicy"] = json!("IfNotPresent");
                let mut args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
                let at = args.iter().position(|a| a == "--webhook-listen").unwrap();
                args[at + 1] = format!("127.0.0.1:{webhook}");
                args.extend(["--listen".into(), format!("127.0.0.1:{http}")]);
                c["args"] = json!(args);
                c["ports"] = json!([
                    {"name": "http", "containerPort": http},
                    {"name": "webhook", "containerPort": webhook},
                ]);
                for probe in ["readinessProbe", "livenessProbe"] {
                    c[probe]["httpGet"]["host"] = json!("127.0.0.1");
                }
                let env_list = c["env"].as_array_mut().unwrap();
                env_list.push(json!({"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}));
                env_list.push(json!({"name": "KUBERNETES_SERVICE_PORT", "value": api_port}));
            }
            "ConfigMap" => {
                let mut config: serde_yaml_ng::Value =
                    serde_yaml_ng::from_str(o["data"]["config.yaml"].as_str().unwrap()).unwrap();
                config["vault"]["address"] = env.bao.addr.clone().into();
                config["injector"]["image"] = CUBBYHOLE_IMAGE.into();
                config["injector"]["imagePullPolicy"] = "IfNotPresent".into();
                config["lookupPeriod"] = "1s".into();
                o["data"]["config.yaml"] = json!(serde_yaml_ng::to_string(&config).unwrap());
            }
            "MutatingWebhookConfiguration" => {
                for hook in o["webhooks"].as_array_mut().unwrap() {
                    hook["clientConfig"] =
                        json!({"url": format!("https://127.0.0.1:{webhook}/mutate-pods")});
                }
            }
            _ => {}
        }
    }
    let file = env.dir.join("in-cluster.json");
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": objects}))
            .unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    operator_pod_serves_the_seed_flow(&env).await;
}

/// Waits for the operator pod the kubelet runs (its service-account token, mounted by the
/// kubelet, is what it logs in to OpenBao with; its probes pass), then runs the seed flow
/// through it: its webhook injects a 2-replica Deployment whose pods run and use their tokens.
/// Returns the accessors of the tokens the agents hold.
async fn operator_pod_serves_the_seed_flow(env: &Env) -> Vec<String> {
    let operators: Api<Pod> = Api::namespaced(env.client.clone(), "cubbyhole-system");
    let operator = eventually("the operator pod is Ready", RUN, || async {
        let pods = operators
            .list(&ListParams::default().labels("app.kubernetes.io/name=cubbyhole"))
            .await
            .ok()?;
        pods.items.into_iter().find(all_ready)
    })
    .await;
    assert_eq!(
        operator.spec.as_ref().unwrap().node_name.as_deref(),
        Some(NODE)
    );
    env.apply_binding("b", Env::spec("web", "60s")).await;
    eventually("the operator's webhook knows the binding", T, || async {
        env.dry_run_pod("probe", "web").await.ok()
    })
    .await;
    env.create_deployment("web", "web", 2).await;
    let pods = env.running_pods("web", 2, RUN).await;
    let mut held = vec![];
    for pod in &pods {
        let record = verified_record(env, &pod.name_any()).await;
        let used = eventually("the app container used its token", T, || async {
            let used = accessor_used(env, &pod.name_any());
            (!used.is_empty()).then_some(used)
        })
        .await;
        assert_eq!(used, vec![record["accessor"].clone()]);
        held.push(record["accessor"].clone());
    }
    let log = env.cluster.container_log(&operator.name_any(), "operator");
    assert!(
        log.contains("\"level\""),
        "JSON logs from the pod: {log:.300}"
    );
    env.assert_no_leaks().await;
    held
}

#[tokio::test]
async fn the_helm_chart_installs_the_operator_on_the_node_and_it_serves_the_seed_flow() {
    let (env, api_port) = env_for_an_operator_pod().await;
    helm_install(&env, &api_port, json!({}));
    let held = operator_pod_serves_the_seed_flow(&env).await;
    helm_test(&env);
    helm_uninstall_leaves_nothing_stuck_and_nothing_alive(&env, &held).await;
}

/// `helm install` of the chart with its defaults, except what this machine needs (as in the
/// test above) and `config` merged into the operator's configuration; waits for it.
fn helm_install(env: &Env, api_port: &str, config: serde_json::Value) {
    let chart = cubbyhole_testkit::paths::repo().join("charts/cubbyhole");
    helm(env, "install", &chart, "dev", api_port, config);
}

/// `helm <verb>` (install or upgrade) of release `cubbyhole` from `chart` with image tag `tag`,
/// as [`helm_install`] says; new listen ports each time (a rolling update starts the new pod
/// beside the old one on the node's network).
fn helm(
    env: &Env,
    verb: &str,
    chart: &std::path::Path,
    tag: &str,
    api_port: &str,
    config: serde_json::Value,
) {
    let (http, webhook) = (free_port(), free_port());
    let mut operator_config = json!({
        "vault": {"address": env.bao.addr},
        "lookupPeriod": "1s",
        "injector": {"imagePullPolicy": "IfNotPresent"},
    });
    for (k, v) in config.as_object().unwrap() {
        operator_config[k] = v.clone();
    }
    let values = json!({
        "image": {"repository": "127.0.0.1:5000/cubbyhole", "tag": tag, "pullPolicy": "IfNotPresent"},
        "replicas": 1,
        "hostNetwork": true,
        "listen": format!("127.0.0.1:{http}"),
        "probes": {"host": "127.0.0.1"},
        "webhook": {
            "listen": format!("127.0.0.1:{webhook}"),
            "url": format!("https://127.0.0.1:{webhook}/mutate-pods"),
        },
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": api_port},
        ],
        "config": operator_config,
    });
    let file = env.dir.join(format!("values-{verb}-{tag}.json"));
    std::fs::write(&file, values.to_string()).unwrap();
    // The harness applied config/rbac (as a kustomize install would have): the release takes
    // those objects over, as when moving from `kubectl apply -k config/` to the chart.
    let out = std::process::Command::new(cubbyhole_testkit::paths::helm_bin())
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .args([verb, "cubbyhole"])
        .arg(chart)
        .args([
            "--namespace",
            "cubbyhole-system",
            "--take-ownership",
            "--wait",
            "--timeout",
            "3m",
        ])
        .arg("--values")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {verb}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

/// `helm upgrade` from the previous release (the chart and binary of an earlier commit:
/// `e2e/previous-release.sh`) with agents running, in the documented order (this version's
/// CRD first): the new operator takes over every record (they verify with the same record
/// key), re-mints nothing, revokes nothing, and serves the next pod with exactly one mint.
#[tokio::test]
async fn an_upgrade_from_the_previous_release_keeps_every_record_and_token() {
    let previous = cubbyhole_testkit::paths::previous_release();
    let (env, api_port) = env_for_an_operator_pod().await;
    env.cluster.load_cubbyhole_image_of(
        "127.0.0.1:5000/cubbyhole:previous",
        &previous.join("bin/cubbyhole"),
    );
    helm(
        &env,
        "install",
        &previous.join("chart"),
        "previous",
        &api_port,
        json!({}),
    );
    let held = operator_pod_serves_the_seed_flow(&env).await;
    let accessors = |records: Vec<Secret>| -> std::collections::BTreeMap<String, String> {
        records
            .iter()
            .map(|s| (ann(s)["pod"].clone(), ann(s)["accessor"].clone()))
            .collect()
    };
    let before = accessors(env.records("b").await);
    let minted = env.bao.minted_accessors().len();
    assert_eq!(minted, 2);

    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_yaml_ng::from_str(&cubbyhole::crd::crd_yaml()).unwrap();
    crds.patch(
        "agentsecretbindings.cubbyhole.dev",
        &kube::api::PatchParams::apply("upgrade").force(),
        &kube::api::Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let chart = cubbyhole_testkit::paths::repo().join("charts/cubbyhole");
    helm(&env, "upgrade", &chart, "dev", &api_port, json!({}));
    // Only the new operator is left.
    let operators: Api<Pod> = Api::namespaced(env.client.clone(), "cubbyhole-system");
    eventually("only the upgraded operator runs", RUN, || async {
        let pods = operators
            .list(&ListParams::default().labels("app.kubernetes.io/name=cubbyhole"))
            .await
            .ok()?;
        let images: Vec<String> = pods
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
            .collect();
        (images == [CUBBYHOLE_IMAGE] && pods.items.iter().all(all_ready)).then_some(())
    })
    .await;
    // It serves the next pod: one mint, and the running agents' records are as they were.
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let pods = env.running_pods("web", 3, RUN).await;
    for pod in &pods {
        verified_record(&env, &pod.name_any()).await;
    }
    let after = accessors(env.records("b").await);
    assert_eq!(after.len(), 3);
    for (pod, accessor) in &before {
        assert_eq!(after.get(pod), Some(accessor), "{pod}'s record kept");
    }
    assert_eq!(
        env.bao.minted_accessors().len(),
        minted + 1,
        "nothing re-minted"
    );
    let revoked = cubbyhole_testkit::openbao::revoked_accessors(&env.bao.audit_entries());
    for accessor in &held {
        assert!(!revoked.contains(accessor), "{accessor} revoked");
        assert!(alive(&env, accessor).await, "{accessor} alive");
    }
    env.assert_no_leaks().await;
}

/// `helm test`: `cubbyhole doctor` in the cluster as the operator, as users would run it; what
/// the doctor said, after checking it passed. Its log is read from the node (the API server
/// here cannot resolve the node's name for `--logs`).
fn helm_test(env: &Env) -> String {
    let tested = std::process::Command::new(cubbyhole_testkit::paths::helm_bin())
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .args(["test", "cubbyhole", "--namespace", "cubbyhole-system"])
        .args(["--timeout", "2m"])
        .output()
        .unwrap();
    let doctor = env.cluster.container_log("cubbyhole-doctor", "doctor");
    if !tested.status.success() {
        // Why the pod failed when the doctor said nothing (a container that never started).
        let status = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &env.cluster.kubeconfig)
            .args(["-n", "cubbyhole-system", "get", "pod", "cubbyhole-doctor"])
            .args(["-o", "jsonpath={.status}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let containerd =
            std::fs::read_to_string(env.cluster.dir.join("containerd.log")).unwrap_or_default();
        let errors: Vec<&str> = containerd
            .lines()
            .filter(|l| l.contains("level=error"))
            .collect();
        panic!(
            "helm test: {}{}\nthe doctor said:\n{doctor}\nits pod's status: {status}\n\
             containerd's last errors:\n{}",
            String::from_utf8_lossy(&tested.stdout),
            String::from_utf8_lossy(&tested.stderr),
            errors[errors.len().saturating_sub(15)..].join("\n")
        );
    }
    assert!(
        doctor.contains("vault login: the operator's login works") && doctor.contains(", 0 failed"),
        "the doctor said: {doctor}"
    );
    println!("the doctor said:\n{doctor}");
    doctor
}

#[tokio::test]
async fn a_namespace_scoped_helm_install_acts_only_in_its_namespaces() {
    let (env, api_port) = env_for_an_operator_pod().await;
    helm_install(&env, &api_port, json!({"watchNamespaces": [env.ns]}));
    // The operator's service account may touch pods and Secrets in its namespaces only.
    let can_i = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &env.cluster.kubeconfig)
            .args([
                "auth",
                "can-i",
                "--as",
                "system:serviceaccount:cubbyhole-system:cubbyhole",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ns = env.ns.as_str();
    assert_eq!(can_i(&["get", "secrets", "-n", ns]), "yes");
    assert_eq!(can_i(&["watch", "pods", "-n", ns]), "yes");
    assert_eq!(can_i(&["get", "secrets", "-n", "default"]), "no");
    assert_eq!(can_i(&["list", "secrets", "--all-namespaces"]), "no");
    assert_eq!(can_i(&["list", "pods", "--all-namespaces"]), "no");
    // Bindings in its namespace work end to end.
    let held = operator_pod_serves_the_seed_flow(&env).await;
    assert_eq!(held.len(), 2);
    // A binding elsewhere is refused with a reason, mints nothing and deletes at once.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "elsewhere"}})).unwrap(),
        )
        .await
        .unwrap();
    let elsewhere: Api<cubbyhole::crd::AgentSecretBinding> =
        Api::namespaced(env.client.clone(), "elsewhere");
    let binding: cubbyhole::crd::AgentSecretBinding = serde_json::from_value(json!({
        "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
        "metadata": {"name": "b", "namespace": "elsewhere"},
        "spec": Env::spec("web", "60s"),
    }))
    .unwrap();
    elsewhere
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let message = eventually("Ready=False NamespaceNotWatched", T, || async {
        let b = elsewhere.get("b").await.ok()?;
        let ready = b
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.reason == "NamespaceNotWatched").then_some(ready.message)
    })
    .await;
    assert!(message.contains(ns), "{message}");
    elsewhere
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the binding elsewhere is deleted",
        Duration::from_secs(10),
        || async { elsewhere.get_opt("b").await.ok()?.is_none().then_some(()) },
    )
    .await;
    // The doctor, in the cluster as the operator, agrees.
    let doctor = helm_test(&env);
    assert!(
        doctor.contains(&format!(
            "OK    namespace scope: pods and Secrets only in [\"{ns}\"]"
        )),
        "{doctor}"
    );
    helm_uninstall_leaves_nothing_stuck_and_nothing_alive(&env, &held).await;
}

/// `helm uninstall` with agents running: its pre-delete hook (`cubbyhole uninstall`) stops the
/// operator, revokes every token the agents hold, removes every record and releases every
/// finalizer, so the binding deletes at once; a record that does not verify is released, not
/// deleted (it is not the operator's).
async fn helm_uninstall_leaves_nothing_stuck_and_nothing_alive(env: &Env, held: &[String]) {
    let ns = env.ns.as_str();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    let mut forged: Secret = serde_json::from_value(json!({
        "metadata": {"name": "not-ours", "finalizers": ["cubbyhole.dev/revoke"],
            "labels": {"app.kubernetes.io/managed-by": "cubbyhole", "cubbyhole.dev/binding": "b"}},
    }))
    .unwrap();
    forged = secrets
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    assert_eq!(held.len(), 2);
    for accessor in held {
        assert!(
            alive(env, accessor).await,
            "held token {accessor} alive before"
        );
    }
    let out = std::process::Command::new(cubbyhole_testkit::paths::helm_bin())
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .args(["uninstall", "cubbyhole", "--namespace", "cubbyhole-system"])
        .args(["--wait", "--timeout", "4m"])
        .output()
        .unwrap();
    let hook = uninstall_log(env);
    assert!(
        out.status.success(),
        "helm uninstall: {}{}\nthe hook said:\n{hook}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("the uninstall hook said:\n{hook}");
    let operators: Api<Pod> = Api::namespaced(env.client.clone(), "cubbyhole-system");
    let left = operators
        .list(&ListParams::default().labels("app.kubernetes.io/name=cubbyhole"))
        .await
        .unwrap();
    assert!(left.items.is_empty(), "the operator is gone");
    for accessor in held {
        assert!(!alive(env, accessor).await, "held token {accessor} revoked");
    }
    let records: Vec<Secret> = Api::<Secret>::all(env.client.clone())
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=cubbyhole"))
        .await
        .unwrap()
        .items;
    let names: Vec<String> = records.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["not-ours"], "every record of the operator removed");
    assert!(
        records[0].finalizers().is_empty(),
        "the unverified record released"
    );
    assert_eq!(records[0].uid(), forged.uid(), "and left in place");
    // Every pod still runs; the binding deletes at once.
    assert_eq!(env.running_pods("web", 2, T).await.len(), 2);
    env.delete_binding_at_once("b").await;
    env.assert_no_leaks().await;
}

/// Whether Vault still knows the token behind `accessor`.
async fn alive(env: &Env, accessor: &str) -> bool {
    env.bao
        .root_client()
        .lookup_accessor::<serde_json::Value>(accessor)
        .await
        .expect("lookup accessor")
        .is_some()
}

/// What the uninstall hook's pod printed, from the node's log files (empty once the kubelet
/// removed them with the succeeded hook).
fn uninstall_log(env: &Env) -> String {
    let mut text = String::new();
    for dir in std::fs::read_dir(env.cluster.pod_logs_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = dir.file_name().to_string_lossy().to_string();
        if let Some(pod) = name
            .split('_')
            .nth(1)
            .filter(|p| p.starts_with("cubbyhole-uninstall-"))
        {
            text += &env.cluster.container_log(pod, "uninstall");
        }
    }
    text
}
