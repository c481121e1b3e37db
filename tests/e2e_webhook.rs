//! End-to-end: the admission webhook called by the real kube-apiserver through its own
//! admission chain (TLS with the caBundle the operator maintains, objectSelector,
//! namespaceSelector, failurePolicy, reinvocation), pods created by the real
//! kube-controller-manager, wraps minted by the operator and unwrapped by the injected init
//! container's exact command.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cubbyhole_testkit::cluster::webhook::{
    agent_pod, is_injected, percentile, pod_creation_review, webhook_port,
};
use cubbyhole_testkit::cluster::{Env, OPERATOR_NS, Options, ann, eventually};
use cubbyhole_testkit::openbao::{ROLE, ROLE_PATH};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// Waits until every pod in `pods` has an Issued record of `binding`; returns, per pod, the
/// Secret, its wrapping token and when (since `t0`) it was first seen Issued.
async fn issued_all(
    env: &Env,
    binding: &str,
    pods: &[String],
    t0: Instant,
) -> BTreeMap<String, (Secret, String, Duration)> {
    let mut found = BTreeMap::new();
    let deadline = Instant::now() + T;
    while found.len() < pods.len() {
        assert!(
            Instant::now() < deadline,
            "wraps for {pods:?}: only {:?}",
            found.keys()
        );
        for s in env.records(binding).await {
            let a = ann(&s);
            let Some(pod) = a.get("pod").filter(|p| pods.contains(p)) else {
                continue;
            };
            if found.contains_key(pod) || a.get("phase").map(String::as_str) != Some("Issued") {
                continue;
            }
            if let Some(token) = env.token_of(&s) {
                found.insert(pod.clone(), (s, token, t0.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    found
}

async fn verified(env: &Env, binding: &str, pod: &str) {
    eventually(&format!("{pod} verified"), T, || async {
        let s = env
            .records(binding)
            .await
            .into_iter()
            .find(|s| ann(s).get("pod").map(String::as_str) == Some(pod))?;
        (ann(&s).get("verified").map(String::as_str) == Some("true")
            && ann(&s).get("phase").map(String::as_str) == Some("Unwrapped"))
        .then_some(())
    })
    .await;
}

/// Runs the injected init container of each pod with its wrap, reports the receipt as the
/// kubelet would, and waits for the operator to verify it.
async fn unwrap_and_verify(
    env: &Env,
    binding: &str,
    wraps: &BTreeMap<String, (Secret, String, Duration)>,
) {
    for (pod, (secret, token, _)) in wraps {
        let stored = env.pods().get(pod).await.unwrap();
        assert_eq!(
            stored.annotations().get("cubbyhole.dev/secret-name"),
            Some(&secret.name_any()),
            "the operator minted into the Secret name chosen at admission"
        );
        let run = env.run_injected(pod, "unwrap", token).await;
        assert_eq!(
            run.code, 0,
            "{pod}: injected unwrap failed: {:?}",
            run.receipt
        );
        assert!(run.args.contains(&format!("--expect-path={}", ROLE_PATH)));
        assert!(
            run.args.contains(&"--wait-for-fresh=120s".to_string()),
            "{:?}",
            run.args
        );
        let receipt = run.receipt.expect("receipt");
        assert_eq!(
            receipt.accessor.as_deref(),
            ann(secret).get("accessor").map(String::as_str)
        );
        env.report_receipt_of(pod, "unwrap", &receipt).await;
    }
    for pod in wraps.keys() {
        verified(env, binding, pod).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test]
async fn deployment_and_job_pods_arrive_injected_unwrap_and_verify() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    // Two replicas with leader election; the API server calls the standby's webhook.
    let (port_a, port_b) = (webhook_port(), webhook_port());
    if let Some(op) = env.operator.take() {
        op.kill();
    }
    let a = env.operator_with("a", &Env::replica_args(port_a));
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    eventually("replica a leads", T, || async {
        let l = leases.get_opt("cubbyhole-operator").await.ok()??;
        (l.spec?.holder_identity? == "a").then_some(())
    })
    .await;
    let b = env.operator_with("b", &Env::replica_args(port_b));
    env.operator = Some(a);
    env.install_webhook_configuration(port_b).await;
    env.wait_webhook_serving().await;
    env.apply_binding("fleet", Env::spec("fleet", "60s")).await;
    eventually("the webhook knows the binding", T, || async {
        env.dry_run_pod("probe", "fleet")
            .await
            .ok()
            .filter(|p| is_injected(p, "fleet"))
    })
    .await;

    // A real Deployment: the ReplicaSet controller creates the pods (generateName, owner
    // references), the API server sends them through the webhook.
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let template = serde_json::to_value(agent_pod("unused", "fleet", true)).unwrap();
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "fleet"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "fleet"}},
            "template": {"metadata": {"labels": template["metadata"]["labels"]}, "spec": template["spec"]},
        }
    }))
    .unwrap();
    let t0 = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create Deployment");
    let pods: Vec<Pod> = eventually("3 Deployment pods", T, || async {
        let pods: Vec<Pod> = env
            .pods_labelled("app", "fleet")
            .await
            .into_iter()
            .filter(|p| p.labels().contains_key("pod-template-hash"))
            .collect();
        (pods.len() == 3).then_some(pods)
    })
    .await;
    let pods_seen = t0.elapsed();
    let mut secret_names = BTreeSet::new();
    for p in &pods {
        assert!(p.metadata.generate_name.is_some(), "{}", p.name_any());
        assert_eq!(p.owner_references()[0].kind, "ReplicaSet");
        assert!(
            is_injected(p, "fleet"),
            "{} not injected: {:?}",
            p.name_any(),
            p.spec
        );
        secret_names.insert(p.annotations()["cubbyhole.dev/secret-name"].clone());
    }
    assert_eq!(secret_names.len(), 3, "one Secret name per pod");
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let wraps = issued_all(&env, "fleet", &names, t0).await;
    let delivered: Vec<Duration> = wraps.values().map(|(_, _, d)| *d).collect();
    unwrap_and_verify(&env, "fleet", &wraps).await;

    // A Job's pod too.
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &env.ns);
    let mut job_spec = template["spec"].clone();
    job_spec["restartPolicy"] = json!("Never");
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "fleet-job"},
        "spec": {"template": {"metadata": {"labels": template["metadata"]["labels"]}, "spec": job_spec}},
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create Job");
    let job_pod = eventually("the Job's pod", T, || async {
        env.pods_labelled("job-name", "fleet-job")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(job_pod.owner_references()[0].kind, "Job");
    assert!(is_injected(&job_pod, "fleet"));
    let job_wraps = issued_all(&env, "fleet", &[job_pod.name_any()], Instant::now()).await;
    unwrap_and_verify(&env, "fleet", &job_wraps).await;

    // Figures: what admission through the webhook adds per pod (dry-run creates, opted in or
    // not, alternating), and the server's own view.
    let (mut with, mut without) = (vec![], vec![]);
    for i in 0..40 {
        for opt_in in [true, false] {
            let pod = agent_pod(&format!("lat{i}"), "fleet", opt_in);
            let started = Instant::now();
            let stored = env.dry_run(&pod).await.expect("dry-run create");
            let took = started.elapsed();
            assert_eq!(is_injected(&stored, "fleet"), opt_in);
            if opt_in {
                with.push(took)
            } else {
                without.push(took)
            }
        }
    }
    let (_, metrics) = b.get("/metrics").expect("metrics of replica b");
    let metric = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_default()
    };
    let server_mean = metric("cubbyhole_admission_duration_seconds_sum")
        / metric("cubbyhole_admission_duration_seconds_count").max(1.0);
    println!(
        "FIGURES admission latency per pod create (40 dry-run creates each): opted in p50 {} p99 {}; not opted in p50 {} p99 {}; added p50 {}; webhook handler mean {}",
        ms(percentile(&with, 50.0)),
        ms(percentile(&with, 99.0)),
        ms(percentile(&without, 50.0)),
        ms(percentile(&without, 99.0)),
        ms(percentile(&with, 50.0).saturating_sub(percentile(&without, 50.0))),
        ms(Duration::from_secs_f64(server_mean)),
    );
    println!(
        "FIGURES 3-replica Deployment: all pods created and injected {} after the Deployment create; wraps delivered at {:?} (p50 {}, last {})",
        ms(pods_seen),
        delivered.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        ms(percentile(&delivered, 50.0)),
        ms(percentile(&delivered, 100.0)),
    );
    assert!(
        Env::admission_requests(&b) >= 44,
        "the standby replica served the webhook"
    );
    env.assert_no_leaks().await;
    drop(b);
}

#[tokio::test]
async fn refusals_opt_out_and_webhook_down() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let port = webhook_port();
    env.restart_with_webhook(port, &[]);
    env.install_webhook_configuration(port).await;
    env.wait_webhook_serving().await;
    env.apply_binding("good", Env::spec("good", "60s")).await;
    env.apply_binding("one", Env::spec("dup", "60s")).await;
    env.apply_binding(
        "two",
        json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["dup"]}]},
            "vault": {"tokenRole": ROLE},
        }),
    )
    .await;
    env.apply_binding(
        "bad-role",
        json!({"podSelector": {"matchLabels": {"app": "badrole"}}, "vault": {"tokenRole": "not-allowed-here"}}),
    )
    .await;
    eventually("the webhook knows all four bindings", T, || async {
        let dup = env.dry_run_pod("probe", "dup").await.err()?;
        let good = env.dry_run_pod("probe", "good").await.ok()?;
        let bad = env.dry_run_pod("probe", "badrole").await.err()?;
        (dup.contains("Conflict") || dup.contains("(one, two)"))
            .then_some(())
            .filter(|_| is_injected(&good, "good") && bad.contains("not-allowed-here"))
    })
    .await;

    let denied = |r: Result<Pod, String>| {
        let e = r.expect_err("the pod should be refused");
        assert!(
            e.contains("admission webhook \"inject.cubbyhole.dev\" denied the request"),
            "{e}"
        );
        e
    };
    let e = denied(env.create_agent_pod("lonely", "lonely", true).await);
    assert!(
        e.contains("no AgentSecretBinding in namespace \"agents\" selects its labels [app=lonely, cubbyhole.dev/inject=true]"),
        "{e}"
    );
    let e = denied(env.create_agent_pod("dup", "dup", true).await);
    assert!(
        e.contains("selected by 2 AgentSecretBindings in namespace \"agents\" (one, two)"),
        "{e}"
    );
    let e = denied(env.create_agent_pod("badrole", "badrole", true).await);
    assert!(
        e.contains("AgentSecretBinding \"bad-role\", which is not valid (RoleNotAllowed)"),
        "{e}"
    );
    assert!(
        e.contains("\"not-allowed-here\" is not allowed in namespace"),
        "{e}"
    );
    // The refusals were counted, and published nowhere: the webhook has no side effects (a
    // caller it cannot authenticate must not make it write Events on other tenants' bindings).
    assert!(Env::admission_requests_by(env.op(), "refused") >= 3);
    assert!(env.events_with_reason("InjectionRefused").await.is_empty());

    // A pod without the opt-in label never reaches the webhook; the operator still serves it
    // (it is selected by a binding) under its default Secret name.
    let before = Env::admission_requests(env.op());
    let injected = Env::admission_requests_by(env.op(), "injected");
    let plain = env
        .create_agent_pod("plain", "good", false)
        .await
        .expect("plain pod");
    assert!(!plain.annotations().contains_key("cubbyhole.dev/injected"));
    assert_eq!(
        Env::admission_requests(env.op()),
        before,
        "the plain pod reached the webhook"
    );
    let opted = env
        .create_agent_pod("opted", "good", true)
        .await
        .expect("opted-in pod");
    assert!(is_injected(&opted, "good"));
    assert_eq!(
        Env::admission_requests_by(env.op(), "injected"),
        injected + 1
    );
    // The API server re-ran its own plugins after our patch (the ServiceAccount plugin mounts
    // its token into the new init container) and so reinvoked the webhook: a no-op.
    let after = Env::admission_requests(env.op());
    assert!(
        after == before + 1 || after == before + 2,
        "{before} -> {after}"
    );
    let inits = opted
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap();
    assert_eq!(inits.len(), 1, "injected once");
    let wraps = issued_all(
        &env,
        "good",
        &[plain.name_any(), opted.name_any()],
        Instant::now(),
    )
    .await;
    assert_eq!(
        wraps[&plain.name_any()].0.name_any(),
        format!("{}-good-wrap", plain.name_any())
    );
    let opted_wrap = BTreeMap::from([(opted.name_any(), wraps[&opted.name_any()].clone())]);
    unwrap_and_verify(&env, "good", &opted_wrap).await;

    // Webhook down, failurePolicy Fail: opted-in pods are refused, others are not affected.
    env.operator.take().expect("operator").kill();
    let e = env
        .create_agent_pod("down", "good", true)
        .await
        .expect_err("an opted-in pod must not start half-plumbed");
    assert!(
        e.contains("failed calling webhook \"inject.cubbyhole.dev\""),
        "{e}"
    );
    env.create_agent_pod("bystander", "good", false)
        .await
        .expect("pods that did not opt in are unaffected");
    // Back up: admitted again.
    env.restart_with_webhook(port, &[]);
    env.wait_webhook_serving().await;
    let again = env
        .create_agent_pod("again", "good", true)
        .await
        .expect("opted-in pod");
    assert!(is_injected(&again, "good"));
    // config/rbac: exactly get and patch of this one webhook configuration.
    let own = "mutatingwebhookconfigurations/cubbyhole-injector";
    assert!(env.operator_can("get", own) && env.operator_can("patch", own));
    assert!(!env.operator_can("patch", "mutatingwebhookconfigurations/someone-elses"));
    assert!(!env.operator_can("create", "mutatingwebhookconfigurations"));
    assert!(!env.operator_can("delete", own));
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn certificate_rotation_keeps_admission_working() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let port = webhook_port();
    // Serving certificates live 6 s (renewed every 4 s); CAs 18 s (a successor joins the
    // bundle at 12 s and signs 5 s later).
    env.restart_with_webhook(
        port,
        &[
            "--webhook-cert-validity",
            "6s",
            "--webhook-ca-validity",
            "18s",
        ],
    );
    env.install_webhook_configuration(port).await;
    env.wait_webhook_serving().await;
    env.apply_binding("rot", Env::spec("rot", "60s")).await;
    eventually("the webhook knows the binding", T, || async {
        env.dry_run_pod("probe", "rot")
            .await
            .ok()
            .filter(|p| is_injected(p, "rot"))
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    let (mut cas, mut serving) = (BTreeSet::new(), BTreeSet::new());
    let (mut admitted, mut refused) = (0, vec![]);
    let mut pod = None;
    let started = Instant::now();
    let mut last_look = Instant::now() - Duration::from_secs(1);
    while started.elapsed() < Duration::from_secs(45) {
        match env.dry_run_pod("rot", "rot").await {
            Ok(p) if is_injected(&p, "rot") => admitted += 1,
            Ok(p) => refused.push(format!("not injected: {:?}", p.metadata.annotations)),
            Err(e) => refused.push(e),
        }
        if pod.is_none() && started.elapsed() > Duration::from_secs(20) {
            // One real pod in the middle of it, minted and unwrapped.
            pod = Some(
                env.create_agent_pod("rot", "rot", true)
                    .await
                    .expect("real pod"),
            );
        }
        if last_look.elapsed() >= Duration::from_millis(500) {
            last_look = Instant::now();
            if let Some(s) = secrets.get_opt("cubbyhole-webhook-tls").await.unwrap() {
                let state: serde_json::Value =
                    serde_json::from_slice(&s.data.unwrap()["state.json"].0).unwrap();
                cas.insert(state["ca"]["commonName"].as_str().unwrap().to_string());
                serving.insert(state["servingIssuedAt"].as_u64().unwrap());
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!(
        "FIGURES certificate rotation over 45 s: {admitted} admissions, {} refused, {} CAs and {} serving certificates seen",
        refused.len(),
        cas.len(),
        serving.len()
    );
    assert!(refused.is_empty(), "refused during rotation: {refused:?}");
    assert!(cas.len() >= 2, "the CA did not rotate: {cas:?}");
    assert!(
        serving.len() >= 6,
        "the serving certificate did not rotate: {serving:?}"
    );
    assert!(admitted >= 100, "only {admitted} admissions");
    let pod = pod.expect("real pod");
    let wraps = issued_all(&env, "rot", &[pod.name_any()], Instant::now()).await;
    unwrap_and_verify(&env, "rot", &wraps).await;
    env.assert_no_leaks().await;
}

/// A pod that satisfies Pod Security "restricted" on its own (opted in or not), labelled
/// `app=<app>`, without a fixed user id.
fn restricted_pod(app: &str, opt_in: bool) -> Pod {
    let mut labels = json!({"app": app});
    if opt_in {
        labels["cubbyhole.dev/inject"] = json!("true");
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": format!("{app}-"), "labels": labels},
        "spec": {
            "schedulingGates": [{"name": "cubbyhole.dev/e2e-no-kubelet"}],
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "agent", "image": "agent",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn injected_pods_pass_pod_security_restricted_with_either_delivery() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let port = webhook_port();
    let endpoint = format!("--request-endpoint=https://127.0.0.1:{port}");
    env.restart_with_webhook(port, &[&endpoint]);
    env.install_webhook_configuration(port).await;
    env.wait_webhook_serving().await;
    let ns = format!("{}-restricted", env.ns);
    cubbyhole_testkit::cluster::create_namespace(&env.client, &ns).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    let enforce = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    namespaces
        .patch(
            &ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&enforce),
        )
        .await
        .expect("label the namespace restricted");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    // Pod Security is enforced here: a pod without a security context is refused.
    let plain = pods
        .create(&PostParams::default(), &agent_pod("plain", "nobody", false))
        .await
        .expect_err("restricted refuses a pod without a security context");
    assert!(plain.to_string().contains("PodSecurity"), "{plain}");
    let bindings: Api<cubbyhole::crd::AgentSecretBinding> =
        Api::namespaced(env.client.clone(), &ns);
    for (name, delivery) in [("pushed", "Secret"), ("asked", "Request")] {
        let mut spec = Env::spec(name, "60s");
        spec.as_object_mut().unwrap().remove("agentContainer");
        spec["delivery"] = json!(delivery);
        let binding = serde_json::from_value(json!({
            "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .expect("create binding");
        // The injected pod (init container, volumes, fsGroup) is admitted by "restricted".
        let pod = eventually(
            &format!("{delivery}: an injected pod admitted"),
            T,
            || async {
                pods.create(&PostParams::default(), &restricted_pod(name, true))
                    .await
                    .ok()
                    .filter(|p| is_injected(p, name))
            },
        )
        .await;
        let spec = pod.spec.as_ref().unwrap();
        let init = &spec.init_containers.as_ref().unwrap()[0];
        let security = init.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        println!(
            "{delivery}: injected pod {} admitted under restricted (init runs as {:?})",
            pod.name_any(),
            security.run_as_user
        );
    }
    env.assert_no_leaks().await;
}

/// POSTs `review` to the webhook on `port` with `authorization` (if any); the status and body.
async fn post_review(
    port: u16,
    review: &serde_json::Value,
    authorization: Option<String>,
) -> (u16, String) {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut post = client
        .post(format!("https://127.0.0.1:{port}/mutate-pods"))
        .json(review);
    if let Some(a) = authorization {
        post = post.header("Authorization", a);
    }
    let answer = post.send().await.expect("the webhook answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

#[tokio::test]
async fn with_a_caller_token_only_the_api_server_is_answered() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let caller = env
        .webhook_caller_token_file()
        .expect("up.sh gives the API server a webhook caller token");
    let port = webhook_port();
    let flag = format!("--webhook-caller-token-file={}", caller.display());
    env.restart_with_webhook(port, &[&flag]);
    env.install_webhook_configuration(port).await;
    env.wait_webhook_serving().await;
    env.apply_binding("good", Env::spec("good", "60s")).await;
    // The API server's own calls carry the token: pods are injected.
    let injected = eventually("the API server's review answered", T, || async {
        env.dry_run_pod("probe", "good")
            .await
            .ok()
            .filter(|p| is_injected(p, "good"))
    })
    .await;
    assert!(is_injected(&injected, "good"));

    // Anyone else reaching the listener with a review of an opted-in pod learns nothing.
    let pod = serde_json::to_value(agent_pod("probe", "good", true)).unwrap();
    let review = pod_creation_review(&env.ns, pod);
    let token = std::fs::read_to_string(&caller).unwrap().trim().to_string();
    for authorization in [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {token}x")),
        Some(format!("Basic {token}")),
    ] {
        let (status, body) = post_review(port, &review, authorization.clone()).await;
        assert_eq!(status, 401, "{authorization:?}: {body}");
        assert!(
            !body.contains("good") && !body.contains(ROLE) && !body.contains("patch"),
            "{body}"
        );
    }
    let op = env.operator.as_ref().unwrap();
    assert_eq!(Env::admission_requests_by(op, "unauthenticated"), 4);
    // The same review with the API server's token is answered with the patch: the token is
    // what told them apart.
    let (status, body) = post_review(port, &review, Some(format!("Bearer {token}"))).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], json!(true), "{body}");
    assert_eq!(
        answer["response"]["patchType"],
        json!("JSONPatch"),
        "{body}"
    );
    env.assert_no_leaks().await;
}
