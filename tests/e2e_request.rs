//! End-to-end: request delivery on the real kube-apiserver and OpenBao. Pods of an injected
//! Deployment ask the operator's endpoint for their wraps with identity tokens made exactly as
//! the kubelet makes them (TokenRequest bound to the pod, audience `cubbyhole`); the injected
//! init container's stored command asks, unwraps and reports; no Secret ever holds a wrap.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cubbyhole::agent::ask::{Answer, Asker};
use cubbyhole::record::ann as record_ann;
use cubbyhole::request::protocol::{WrapFacts, reason};
use cubbyhole_testkit::cluster::webhook::{
    agent_pod, injected_ca, is_injected, report_restarts, webhook_port,
};
use cubbyhole_testkit::cluster::{Env, Options, ann, create_namespace, eventually};
use cubbyhole_testkit::openbao::{ROLE_PATH, revoked_accessors};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const BINDING: &str = "askers";
const INIT: &str = "cubbyhole-unwrap";

/// Every Secret value written anywhere in the cluster while the test runs, and the names of
/// this binding's records that ever carried data.
#[derive(Default)]
struct SecretScan {
    values: BTreeSet<String>,
    records_with_data: BTreeSet<String>,
    /// The newest Secret resourceVersion the watch delivered.
    newest: u64,
}

/// Waits until the scan's watch has delivered every Secret as the API server holds it now, so
/// an assertion on the scan covers every write made so far (not whatever a lagging watch saw).
async fn scan_caught_up(env: &Env, scan: &Mutex<SecretScan>) {
    let secrets = Api::<Secret>::all(env.client.clone())
        .list(&Default::default())
        .await
        .expect("list Secrets");
    let newest = secrets
        .items
        .iter()
        .filter_map(|s| s.resource_version()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    eventually("the Secret watch caught up", T, || async {
        (scan.lock().unwrap().newest >= newest).then_some(())
    })
    .await;
}

fn scan_secrets(env: &Env) -> (Arc<Mutex<SecretScan>>, tokio::task::JoinHandle<()>) {
    let scan = Arc::new(Mutex::new(SecretScan::default()));
    let seen = scan.clone();
    let stream = watcher(Api::<Secret>::all(env.client.clone()), Default::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let secrets = match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => vec![s],
                _ => continue,
            };
            let mut scan = seen.lock().unwrap();
            for s in secrets {
                if let Some(rv) = s.resource_version().and_then(|v| v.parse().ok()) {
                    scan.newest = scan.newest.max(rv);
                }
                let data = s.data.clone().unwrap_or_default();
                if s.labels().get("cubbyhole.dev/binding").map(String::as_str) == Some(BINDING)
                    && !data.is_empty()
                {
                    scan.records_with_data.insert(s.name_any());
                }
                for v in data.values() {
                    scan.values
                        .insert(String::from_utf8_lossy(&v.0).trim().to_string());
                }
            }
        }
    });
    (scan, task)
}

/// Starts the operator serving the webhook and the request endpoint on 127.0.0.1, the
/// webhook configuration, and a request-delivery binding selecting `app=askers`.
async fn env_on_request() -> (Env, u16) {
    let mut env = Env::start(Options::default()).await;
    let port = webhook_port();
    let endpoint = format!("--request-endpoint=https://127.0.0.1:{port}");
    env.restart_with_webhook(port, &[&endpoint]);
    env.install_webhook_configuration(port).await;
    env.wait_webhook_serving().await;
    let spec = Env::request_spec(BINDING, "60s");
    env.apply_binding(BINDING, spec).await;
    env.until_webhook_knows(BINDING).await;
    (env, port)
}

/// A client of the endpoint presenting `identity`, as an agent of `pod` would.
fn asker(env: &Env, pod: &Pod, port: u16, identity: &str, name: &str) -> Asker {
    let file = env.dir.join(format!("identity-{name}"));
    std::fs::write(&file, identity).unwrap();
    Asker::new(
        &format!("https://127.0.0.1:{port}"),
        Some(&injected_ca(pod)),
        &file,
    )
    .expect("asker")
}

/// The answer to one ask, asked again while the pod's rate limit refuses it.
///
/// The wait is about the listener's 10 s idle limit, so the kept-alive connection may be closed
/// just as the next ask goes out on it: that transport failure is asked again too (twice at
/// most), as the agent does.
async fn answer_past_the_limit(asker: &Asker) -> Answer {
    let mut transport_failures = 0;
    loop {
        match asker.ask_once().await.expect("an answer") {
            Answer::Refused {
                refusal,
                retry_after,
            } if refusal.reason == reason::RATE_LIMITED => {
                tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1))).await;
            }
            Answer::Failed { retry: true, .. } if transport_failures < 2 => {
                transport_failures += 1;
            }
            answer => return answer,
        }
    }
}

/// The served wrap of an ask (asked again past the rate limit); panics on anything else.
async fn served(asker: &Asker, what: &str) -> (cubbyhole::vault::SecretString, WrapFacts) {
    match answer_past_the_limit(asker).await {
        Answer::Wrap(wrap, facts) => (wrap, facts),
        Answer::Refused { refusal, .. } => panic!("{what}: refused {refusal:?}"),
        Answer::Failed { what: w, .. } => panic!("{what}: no answer: {w}"),
    }
}

async fn refusal_of(asker: &Asker) -> (String, Option<Duration>) {
    match asker.ask_once().await.expect("an answer") {
        Answer::Refused {
            refusal,
            retry_after,
        } => (refusal.reason, retry_after),
        Answer::Wrap(..) => panic!("served"),
        Answer::Failed { what, .. } => panic!("no answer: {what}"),
    }
}

async fn record_of(env: &Env, pod: &str) -> Option<Secret> {
    env.records(BINDING)
        .await
        .into_iter()
        .find(|s| ann(s).get("pod").map(String::as_str) == Some(pod))
}

async fn verified(env: &Env, pod: &str) -> Secret {
    eventually(&format!("{pod} verified"), T, || async {
        let s = record_of(env, pod).await?;
        (ann(&s).get("verified").map(String::as_str) == Some("true")
            && ann(&s).get("phase").map(String::as_str) == Some("Unwrapped"))
        .then_some(s)
    })
    .await
}

async fn create_deployment(env: &Env, replicas: u32) -> Vec<Pod> {
    let template = serde_json::to_value(agent_pod("unused", BINDING, true)).unwrap();
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": BINDING},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": BINDING}},
            "template": {"metadata": {"labels": template["metadata"]["labels"]}, "spec": template["spec"]},
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create Deployment");
    eventually("the Deployment's pods", T, || async {
        let pods: Vec<Pod> = env
            .pods_labelled("app", BINDING)
            .await
            .into_iter()
            .filter(|p| p.labels().contains_key("pod-template-hash"))
            .collect();
        (pods.len() == replicas as usize).then_some(pods)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_on_request_ask_unwrap_and_verify_and_no_secret_ever_holds_their_wrap() {
    let (env, port) = env_on_request().await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let (scan, watching) = scan_secrets(&env);
    let pods = create_deployment(&env, 3).await;
    let creates_before = env.audit_requests(ROLE_PATH);
    for pod in &pods {
        let name = pod.name_any();
        assert!(is_injected(pod, BINDING), "{name} not injected");
        let spec = pod.spec.as_ref().unwrap();
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert!(
            volumes.contains(&"cubbyhole-identity") && !volumes.contains(&"cubbyhole-wrap"),
            "request delivery mounts an identity token, never a wrap Secret: {volumes:?}"
        );
        let identity = env.pod_identity_token(&name, "cubbyhole").await;
        let run = env.run_injected_asking(&name, INIT, &identity).await;
        assert_eq!(run.code, 0, "{name}: {:?}", run.args);
        assert!(run.args.iter().any(|a| a.starts_with("--request=https://")));
        let receipt = run.receipt.expect("a receipt");
        assert!(receipt.is_unwrapped());
        // Verified from the receipt the agent reported to the endpoint: nobody patched the
        // pod's status here.
        let record = verified(&env, &name).await;
        assert_eq!(ann(&record).get("accessor"), receipt.accessor.as_ref());
        assert!(
            ann(&record).contains_key("receipt"),
            "the endpoint recorded the receipt"
        );
        assert!(record.data.as_ref().is_none_or(|d| d.is_empty()));
    }
    assert_eq!(
        env.audit_requests(ROLE_PATH) - creates_before,
        3,
        "one create per ask"
    );

    // The same run asking again (a replayed identity token: no restart) is refused, and the
    // agent keeps its token.
    let first = pods[0].name_any();
    let before = verified(&env, &first).await;
    let identity = env.pod_identity_token(&first, "cubbyhole").await;
    let replay = env.run_injected_asking(&first, INIT, &identity).await;
    assert_eq!(replay.code, 9, "refused: {:?}", replay.receipt);
    let held = ann(&before)["accessor"].clone();
    let root = env.bao.root_client();
    assert!(root.accessor_is_live(&held).await.unwrap());
    assert_eq!(ann(&verified(&env, &first).await)["accessor"], held);
    assert_eq!(env.audit_requests(ROLE_PATH) - creates_before, 3);
    // A second run of one pod's agent (a restart, reported by the kubelet just after the
    // container started) asks afresh: a new start, the previous start's token revoked, the
    // new one verified.
    let reporter = {
        let (pods, first) = (env.pods(), first.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            report_restarts(&pods, &first, INIT, 1).await;
        })
    };
    let again = env.run_injected_asking(&first, INIT, &identity).await;
    reporter.await.unwrap();
    assert_eq!(again.code, 0);
    let after = eventually("the new start verified", T, || async {
        let s = verified(&env, &first).await;
        (ann(&s).get("start").map(String::as_str) == Some("1")).then_some(s)
    })
    .await;
    let old_accessor = ann(&before)["accessor"].clone();
    assert_eq!(ann(&after).get("previous-accessor"), Some(&old_accessor));
    assert!(
        !root.accessor_is_live(&old_accessor).await.unwrap(),
        "the previous start's token is revoked"
    );
    assert_eq!(env.audit_requests(ROLE_PATH) - creates_before, 4);

    // Asked in-process, so the test holds a wrapping token: it never appears in any Secret.
    // Pod 1 was served in its run and holds its token: a replay is refused with a reason.
    let pod = env.pods().get(&pods[1].name_any()).await.unwrap();
    let identity = env.pod_identity_token(&pod.name_any(), "cubbyhole").await;
    let direct = asker(&env, &pod, port, &identity, "direct");
    let replayed_at = Instant::now();
    assert_eq!(refusal_of(&direct).await.0, reason::ALREADY_SERVED);
    assert!(
        replayed_at.elapsed() >= Duration::from_secs(2),
        "the refusal waited for a restart report first"
    );
    let held = ann(&verified(&env, &pod.name_any()).await)["accessor"].clone();
    assert!(root.accessor_is_live(&held).await.unwrap());
    // Its next run is served; asked again in that run before the wrap is taken (the answer
    // lost on the way), it is served again and the first wrap of the run revoked.
    env.report_restarts_of(&pod.name_any(), INIT, 1).await;
    let (lost, lost_facts) = served(&direct, "a new run").await;
    env.remember(lost.expose());
    let lost_accessor = lost_facts.wrap_accessor;
    let (wrap, facts) = served(&direct, "the same run while its wrap was pending").await;
    assert_eq!(facts.binding, BINDING);
    env.remember(wrap.expose());
    assert!(
        !root.accessor_is_live(&lost_accessor).await.unwrap(),
        "the lost answer's wrap is revoked"
    );
    assert!(
        !root.accessor_is_live(&held).await.unwrap(),
        "the previous run's token is revoked"
    );
    assert_eq!(env.audit_requests(ROLE_PATH) - creates_before, 6);
    // Once that wrap is taken, the run is served: asking again is refused.
    let token = root.unwrap(&wrap).await.expect("unwrap");
    env.remember(token.token.expose());
    let refusal = match answer_past_the_limit(&direct).await {
        Answer::Refused { refusal, .. } => refusal,
        Answer::Wrap(..) => panic!("a run whose wrap was taken was served again"),
        Answer::Failed { what, .. } => panic!("no answer: {what}"),
    };
    assert_eq!(refusal.reason, reason::ALREADY_SERVED);
    assert_eq!(env.audit_requests(ROLE_PATH) - creates_before, 6);
    scan_caught_up(&env, &scan).await;
    {
        let scan = scan.lock().unwrap();
        assert!(
            scan.records_with_data.is_empty(),
            "records that carried data: {:?}",
            scan.records_with_data
        );
        assert!(
            !scan.values.contains(wrap.expose()),
            "a Secret held a wrapping token"
        );
    }
    // The watch ends before the control plane does.
    watching.abort();
    let _ = watching.await;
    env.assert_no_leaks().await;
}

/// Issue 34: the endpoint revokes the previous run's wrap and token only where Vault vouches
/// for them. A record signed with the leaked key (as its tenant could, having the key) names a
/// bystander's token and a root-made wrap as its pod's: the pod's next run is served, neither
/// bystander is revoked, and both refusals are counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_run_revokes_nothing_another_pod_holds_that_a_leaked_key_record_names() {
    let (env, port) = env_on_request().await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let pods = create_deployment(&env, 1).await;
    let pod = env.pods().get(&pods[0].name_any()).await.unwrap();
    let name = pod.name_any();
    let identity = env.pod_identity_token(&name, "cubbyhole").await;
    let direct = asker(&env, &pod, port, &identity, "leaked");
    let (first, _) = served(&direct, "the first run").await;
    env.remember(first.expose());
    let record = eventually("the first run's record", T, || record_of(&env, &name)).await;

    let (token, wrap) = (env.bystander_token(), env.bystander_wrap());
    let keys = env.leaked_record_keys().await;
    let changes = [
        (record_ann::ACCESSOR, token.clone()),
        (record_ann::WRAP_ACCESSOR, wrap.clone()),
    ];
    env.rewrite_signed(&keys, &record.name_any(), &changes)
        .await;
    let refused = format!(
        "cubbyhole_revocations_refused_total{{namespace=\"{}\"}}",
        env.ns
    );
    let refused_before = env.metric(&refused);

    env.report_restarts_of(&name, INIT, 1).await;
    let (next, _) = served(&direct, "the next run").await;
    env.remember(next.expose());
    let revoked = revoked_accessors(&env.bao.audit_entries());
    assert!(
        !revoked.contains(&token) && !revoked.contains(&wrap),
        "the endpoint revoked a bystander: {revoked:?}"
    );
    env.assert_bystander_live(&token).await;
    env.assert_bystander_live(&wrap).await;
    assert_eq!(
        env.metric(&refused) - refused_before,
        2.0,
        "the wrap's and the token's revocations refused"
    );
    env.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn asks_that_cannot_be_trusted_are_refused_and_mint_nothing() {
    let (env, port) = env_on_request().await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let pods = create_deployment(&env, 2).await;
    let (good, doomed) = (
        env.pods().get(&pods[0].name_any()).await.unwrap(),
        env.pods().get(&pods[1].name_any()).await.unwrap(),
    );
    let creates_before = env.audit_requests(ROLE_PATH);
    let refused = |identity: String, name: &'static str| {
        let asker = asker(&env, &good, port, &identity, name);
        async move { refusal_of(&asker).await.0 }
    };

    // A token for another audience, and one bound to no pod.
    let other_audience = env.pod_identity_token(&good.name_any(), "vault").await;
    assert_eq!(
        refused(other_audience, "audience").await,
        reason::NOT_AUTHENTICATED
    );
    let unbound = env.unbound_token("default", "cubbyhole").await;
    assert_eq!(refused(unbound, "unbound").await, reason::NOT_BOUND_TO_POD);

    // A deleted pod's token, still unexpired.
    let doomed_identity = env
        .pod_identity_token(&doomed.name_any(), "cubbyhole")
        .await;
    env.pods()
        .delete(&doomed.name_any(), &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("the pod is gone", T, || async {
        env.pods()
            .get_opt(&doomed.name_any())
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let gone = refused(doomed_identity, "deleted").await;
    assert!(
        gone == reason::NOT_AUTHENTICATED || gone == reason::POD_GONE,
        "a deleted pod's token: {gone}"
    );

    // A pod no binding selects; a pod of another namespace with the same labels; a pod of a
    // binding that delivers by Secret.
    let plain = env
        .pods()
        .create(&PostParams::default(), &agent_pod("plain", "nobody", false))
        .await
        .unwrap();
    let plain_identity = env.pod_identity_token(&plain.name_any(), "cubbyhole").await;
    assert_eq!(refused(plain_identity, "plain").await, reason::NOT_SELECTED);
    let other_ns = format!("{}-other", env.ns);
    create_namespace(&env.client, &other_ns).await;
    cubbyhole_testkit::cluster::wait_for_default_service_account(&env.client, &other_ns).await;
    let foreign = Api::<Pod>::namespaced(env.client.clone(), &other_ns)
        .create(
            &PostParams::default(),
            &agent_pod("foreign", BINDING, false),
        )
        .await
        .unwrap();
    let foreign_identity = env
        .token_for_pod_in(&other_ns, &foreign.name_any(), "cubbyhole")
        .await;
    assert_eq!(
        refused(foreign_identity, "foreign").await,
        reason::NOT_SELECTED
    );
    env.apply_binding("pushed", Env::spec("pushed", "60s"))
        .await;
    let pushed = env
        .pods()
        .create(
            &PostParams::default(),
            &agent_pod("pushed", "pushed", false),
        )
        .await
        .unwrap();
    let pushed_identity = env
        .pod_identity_token(&pushed.name_any(), "cubbyhole")
        .await;
    eventually("the endpoint knows the Secret-delivery binding", T, || {
        let identity = pushed_identity.clone();
        let refused = &refused;
        async move { (refused(identity, "pushed").await == reason::NOT_ON_REQUEST).then_some(()) }
    })
    .await;
    // A missing bearer token.
    let no_token = asker(&env, &good, port, "", "empty");
    assert!(
        no_token.ask_once().await.is_err(),
        "an empty identity file is not sent"
    );
    // The Secret-delivery pod's one mint is the controller's, not an ask's (waited for: read
    // while it lands, the total and the per-pod count disagree); nothing else may have been
    // minted.
    let creates = eventually(
        "the controller's mint for the Secret-delivery pod",
        T,
        || async {
            let creates = env.creates_by_pod();
            (creates.get(&pushed.name_any()) == Some(&1)).then_some(creates)
        },
    )
    .await;
    let pushed_creates = 1;
    assert_eq!(
        env.audit_requests(ROLE_PATH) - creates_before - pushed_creates,
        0,
        "no refused ask minted: {creates:?}"
    );

    // A flood from one pod: its burst is served, then 429 with Retry-After.
    let identity = env.pod_identity_token(&good.name_any(), "cubbyhole").await;
    let flooding = asker(&env, &good, port, &identity, "flood");
    let mut served = 0;
    let mut limited = None;
    let flood_began = Instant::now();
    for _ in 0..10 {
        match flooding.ask_once().await.expect("answer") {
            Answer::Wrap(w, _) => {
                env.remember(w.expose());
                served += 1;
            }
            Answer::Refused {
                refusal,
                retry_after,
            } => {
                assert_eq!(refusal.reason, reason::RATE_LIMITED, "{}", refusal.message);
                limited = retry_after;
            }
            Answer::Failed { what, .. } => panic!("{what}"),
        }
    }
    // The default burst is 3 asks, then one per 10 s refill: a slow machine may see a refill
    // land inside the flood, never more than the time it took allows.
    let refills = (flood_began.elapsed().as_secs() / 10) as usize;
    assert!(
        served >= 3 && served <= 3 + refills,
        "{served} asks served in {:?}: the burst of 3 and at most {refills} refills",
        flood_began.elapsed()
    );
    let wait = limited.expect("429 with Retry-After");
    assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(10));
    let creates = env.creates_by_pod();
    assert_eq!(
        creates.get(&good.name_any()).copied().unwrap_or(0),
        served,
        "one create per served ask: {creates:?}"
    );
    let metrics = env.op().get("/metrics").unwrap().1;
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "cubbyhole_wrap_requests_total{endpoint=\"wrap\",result=\"RateLimited\"}"
        )),
        "{metrics}"
    );
    // Every served wrap but the last was revoked by the next ask: one live wrap per pod.
    let live: Vec<_> = env
        .minted_wraps_by_pod()
        .await
        .into_iter()
        .filter(|(pod, _, live)| *live && *pod == good.name_any())
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    env.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_operator_down_the_agent_fails_clearly_and_its_retry_succeeds() {
    let (mut env, port) = env_on_request().await;
    if env.skip_external("the API server calling a webhook on 127.0.0.1") {
        return;
    }
    let pods = create_deployment(&env, 1).await;
    let name = pods[0].name_any();
    let identity = env.pod_identity_token(&name, "cubbyhole").await;
    env.operator.take().unwrap().kill();
    let down = env.run_injected_asking(&name, INIT, &identity).await;
    assert_eq!(down.code, 10, "operator unreachable");
    let log = std::fs::read_to_string(env.dir.join(format!("agent-{name}.log"))).unwrap();
    assert!(log.contains("endpoint is unreachable"), "{log}");
    let endpoint = format!("--request-endpoint=https://127.0.0.1:{port}");
    env.restart_with_webhook(port, &[&endpoint]);
    env.wait_webhook_serving().await;
    let up = env.run_injected_asking(&name, INIT, &identity).await;
    assert_eq!(up.code, 0, "the kubelet's retry once the operator is back");
    verified(&env, &name).await;
    env.assert_no_leaks().await;
}
