//! End-to-end: the Python client (`clients/python/`) against the real request endpoint, API
//! server and OpenBao. This harness sets the stage (a request-delivery binding, its pods made
//! through the admission webhook as pods whose own code asks, one pod of every kind the
//! endpoint refuses, identity tokens made as the kubelet makes them) and runs the client's
//! pytest suite against it with the environment the webhook gave the pods; the suite also checks every answer it saw
//! against `api/request-endpoint.openapi.yaml`. Everything pytest printed is scanned for every
//! token the suite handled, beside the operator's logs and OpenBao's.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cubbyhole_testkit::cluster::webhook::{INJECT, webhook_port};
use cubbyhole_testkit::cluster::{Env, Options, eventually, wait_for_default_service_account};
use cubbyhole_testkit::openbao::ROLE_PATH;
use cubbyhole_testkit::paths;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::PostParams;
use serde_json::json;

const T: Duration = Duration::from_secs(30);
/// The request-delivery binding; it selects `app=py-agents`.
const BINDING: &str = "py-agents";
/// Pods the suite asks for, one per test that needs a fresh run.
const AGENTS: usize = 8;

/// A pod named `name` labelled `app=<app>`; with `asks`, opted in to injection as a pod whose
/// own code asks for its wrap (`cubbyhole.dev/self-bootstrap`).
async fn create_agent_pod(env: &Env, name: &str, app: &str, asks: bool) -> Pod {
    let mut metadata = json!({"name": name, "labels": {"app": app}});
    if asks {
        metadata["labels"][INJECT] = json!("true");
        metadata["annotations"] = json!({"cubbyhole.dev/self-bootstrap": "true"});
    }
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "schedulingGates": [{"name": "cubbyhole.dev/e2e-no-kubelet"}],
            "containers": [{"name": "agent", "image": "python"}],
        }
    }))
    .unwrap();
    env.pods()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

/// The environment the webhook gave the pod's agent container.
fn injected_env(pod: &Pod) -> BTreeMap<String, String> {
    let spec = pod.spec.as_ref().unwrap();
    assert!(
        spec.init_containers.is_none(),
        "a self-bootstrapping pod gets no init container"
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .filter(|v| v.starts_with("cubbyhole-"))
        .collect();
    assert_eq!(volumes, ["cubbyhole-identity"], "only the identity token");
    spec.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_bootstraps_agents_is_refused_as_documented_and_prints_no_token() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let python = Command::new("python3")
        .args(["-c", "import pytest, yaml, jsonschema"])
        .status()
        .expect("python3");
    assert!(
        python.success(),
        "the Python suite needs pytest, pyyaml and jsonschema (`python3 -m pip install pytest pyyaml jsonschema`; .ci/run installs them)"
    );
    let port = webhook_port();
    let url = format!("https://127.0.0.1:{port}");
    env.restart_with_webhook(port, &[&format!("--request-endpoint={url}")]);
    env.install_webhook_configuration(port).await;
    env.wait_webhook_serving().await;
    let spec = Env::request_spec(BINDING, "60s");
    env.apply_binding(BINDING, spec).await;
    env.apply_binding("by-secret", Env::spec("by-secret", "60s"))
        .await;
    env.until_webhook_knows(BINDING).await;

    // The pods, created through the real admission chain: the client then runs with the
    // environment the webhook gave them.
    let identities = env.dir.join("identities");
    std::fs::create_dir_all(&identities).unwrap();
    let mut given = BTreeMap::new();
    for i in 0..AGENTS {
        let name = format!("agent-{i}");
        let pod = create_agent_pod(&env, &name, BINDING, true).await;
        given = injected_env(&pod);
        let token = env.pod_identity_token(&name, "cubbyhole").await;
        write(&identities, &name, &token);
    }
    assert_eq!(given["CUBBYHOLE_REQUEST"], url);
    assert_eq!(given["CUBBYHOLE_EXPECT_PATH"], ROLE_PATH);
    assert_eq!(
        given["CUBBYHOLE_IDENTITY_TOKEN"],
        "/var/run/cubbyhole/identity/token"
    );
    let last = format!("agent-{}", AGENTS - 1);
    let token = env.pod_identity_token(&last, "vault").await;
    write(&identities, "wrong-audience", &token);
    create_agent_pod(&env, "lonely", "nobody-selects-this", false).await;
    let token = env.pod_identity_token("lonely", "cubbyhole").await;
    write(&identities, "unselected", &token);
    create_agent_pod(&env, "by-secret", "by-secret", false).await;
    let token = env.pod_identity_token("by-secret", "cubbyhole").await;
    write(&identities, "by-secret", &token);
    wait_for_default_service_account(&env.client, &env.ns).await;
    let token = env.unbound_token("default", "cubbyhole").await;
    write(&identities, "unbound", &token);

    let repo = paths::repo();
    let ca_file = write(&env.dir, "endpoint-ca.pem", &given["CUBBYHOLE_REQUEST_CA"]);
    let secrets_out = env.dir.join("python-secrets");
    let log = env.dir.join("agent-python.log");
    let ran = Command::new("python3")
        .args(["-m", "pytest", "clients/python/tests", "-v", "-rs"])
        .args(["-p", "no:cacheprovider", "--log-level=DEBUG"])
        .current_dir(repo)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("CUBBYHOLE_ENDPOINT", &given["CUBBYHOLE_REQUEST"])
        .env("CUBBYHOLE_ENDPOINT_CA_FILE", &ca_file)
        .env("CUBBYHOLE_IDENTITIES", &identities)
        .env("VAULT_ADDR", &given["VAULT_ADDR"])
        .env("CUBBYHOLE_EXPECT_PATH", &given["CUBBYHOLE_EXPECT_PATH"])
        .env("CUBBYHOLE_TEST_VAULT_TOKEN", &env.bao.root_token)
        .env("CUBBYHOLE_TEST_SECRETS_OUT", &secrets_out)
        .env(
            "CUBBYHOLE_OPENAPI",
            repo.join("api/request-endpoint.openapi.yaml"),
        )
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .env("CUBBYHOLE_TEST_NAMESPACE", &env.ns)
        .env("CUBBYHOLE_TEST_BINDING", BINDING)
        .output()
        .expect("run pytest");
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    std::fs::write(&log, &printed).unwrap();
    assert!(
        ran.status.success(),
        "the Python suite failed (output in {}):\n{}",
        log.display(),
        tail(&printed, 120)
    );
    // Every live test ran: none skipped for want of the stage this harness set.
    let summary = printed
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or_default()
        .to_string();
    assert!(
        !summary.contains("skipped") && !summary.contains("xfail"),
        "tests were skipped: {summary}"
    );
    println!("python suite: {summary}");
    let handled = std::fs::read_to_string(&secrets_out).unwrap_or_default();
    let handled: Vec<&str> = handled
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        handled.len() >= 4,
        "the suite reported only {} secrets it handled",
        handled.len()
    );
    for secret in &handled {
        env.remember(secret);
    }
    // The shipped sample, applied as a user would: its Deployment's pods are injected as
    // self-bootstrapping agents of its binding.
    let applied = Command::new("kubectl")
        .args(["apply", "-n", &env.ns, "-f"])
        .arg(repo.join("config/samples/python-agent.yaml"))
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .output()
        .expect("kubectl apply");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let sample_pods = eventually("the sample's two pods", T, || async {
        let pods = env.pods_labelled("app", "python-agent").await;
        (pods.len() == 2).then_some(pods)
    })
    .await;
    for pod in &sample_pods {
        assert_eq!(
            pod.annotations()
                .get("cubbyhole.dev/injected")
                .map(String::as_str),
            Some("python-agents")
        );
        let given = injected_env(pod);
        assert_eq!(given["CUBBYHOLE_EXPECT_PATH"], ROLE_PATH);
        assert!(given["CUBBYHOLE_REQUEST_CA"].contains("BEGIN CERTIFICATE"));
    }
    // The client's own output (pytest's included) is scanned as `agent-python.log`.
    env.assert_no_leaks().await;
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
