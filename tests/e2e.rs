//! End-to-end scenarios: the operator binary against a real API server and a real OpenBao.

use std::time::Duration;

use cubbyhole::agent::receipt::{Receipt, result};
use cubbyhole_testkit::cluster::{self, Env, Options, ann, condition, eventually, issued};
use cubbyhole_testkit::openbao::{ROLE, audit_requests_at, renewed_accessors, revoked_accessors};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// Waits until the binding's status satisfies `pred` (the status is written after the records).
async fn status_where(
    env: &Env,
    binding: &str,
    pred: impl Fn(&cubbyhole::crd::AgentSecretBindingStatus) -> bool,
) -> cubbyhole::crd::AgentSecretBindingStatus {
    eventually(&format!("status of {binding}"), T, || async {
        let s = env.status(binding).await;
        pred(&s).then_some(s)
    })
    .await
}

async fn record_phase(env: &Env, binding: &str, pod: &str) -> Option<String> {
    env.records(binding)
        .await
        .into_iter()
        .find(|s| ann(s).get("pod").map(String::as_str) == Some(pod))
        .and_then(|s| ann(&s).get("phase").cloned())
}

#[tokio::test]
async fn binding_ready_one_wrap_per_pod_unwrapped_and_verified() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("agents", Env::spec("research", "60s"))
        .await;
    for i in 0..3 {
        env.create_pod(&format!("agent-{i}"), "research").await;
    }
    env.create_pod("bystander", "other").await;

    let mut tokens = vec![];
    for i in 0..3 {
        tokens.push(issued(&env, "agents", &format!("agent-{i}")).await);
    }
    eventually("Ready", T, || async {
        let (s, r, _) = env.ready("agents").await;
        (s == "True" && r == "Delivering").then_some(())
    })
    .await;
    status_where(&env, "agents", |s| (s.pods, s.pending) == (3, 3)).await;
    assert_eq!(
        env.records("agents").await.len(),
        3,
        "exactly one Secret per selected pod"
    );

    // The wrap is single use, from the expected role, with the pod's metadata.
    let (secret0, token0) = &tokens[0];
    let (receipt, code) = env.run_agent(token0, "agent-0");
    assert_eq!(code, 0, "agent unwrap failed: {receipt:?}");
    let receipt = receipt.unwrap();
    assert_eq!(
        receipt.accessor.as_deref(),
        ann(secret0).get("accessor").map(String::as_str)
    );
    let (again, code) = env.run_agent(token0, "agent-0-again");
    assert_eq!(
        (again.unwrap().result.as_str(), code),
        (result::INVALID_WRAPPING_TOKEN, 3)
    );
    let lookup = env.bao.cli_json(&[
        "token",
        "lookup",
        "-accessor",
        receipt.accessor.as_deref().unwrap(),
    ]);
    assert_eq!(lookup["data"]["meta"]["pod"], "agent-0");
    assert_eq!(lookup["data"]["meta"]["namespace"], env.ns.as_str());
    assert_eq!(lookup["data"]["meta"]["binding"], "agents");

    // Verified with the receipt, no Vault call needed; token removed from the Secret.
    env.report_receipt("agent-0", Some(&receipt), 0).await;
    // Pod 1 unwrapped by plain `bao unwrap` (no receipt): seen by lookup within 2 periods.
    let started = std::time::Instant::now();
    let out = env.bao.cli(&tokens[1].1, &["unwrap", "-format=json"]);
    assert!(out.status.success());
    let inner: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    env.remember(inner["auth"]["client_token"].as_str().unwrap());
    eventually("agent-1 Unwrapped", T, || async {
        (record_phase(&env, "agents", "agent-1").await? == "Unwrapped").then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2) + Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    let s0 = eventually("agent-0 verified", T, || async {
        let s = env
            .records("agents")
            .await
            .into_iter()
            .find(|s| ann(s).get("pod").map(String::as_str) == Some("agent-0"))?;
        (ann(&s).get("verified").map(String::as_str) == Some("true")).then_some(s)
    })
    .await;
    assert_eq!(ann(&s0)["phase"], "Unwrapped");
    assert!(
        env.token_of(&s0).is_none(),
        "wrapping token removed after consumption"
    );
    let status = status_where(&env, "agents", |s| {
        (s.pods, s.pending, s.unwrapped) == (3, 1, 2)
    })
    .await;
    assert!(
        status
            .records
            .iter()
            .any(|r| r.pod == "agent-0" && r.verified)
    );
    assert!(!env.events_with_reason("WrapIssued").await.is_empty());
    // kubectl works against the local control plane.
    let out = std::process::Command::new("kubectl")
        .args(["get", "pods,secrets,ns,leases,asb", "-A"])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("agents"));
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn agent_restart_gets_a_new_wrap_and_the_old_token_is_revoked() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("web", "60s")).await;
    env.create_pod("web-0", "web").await;
    let (_, token) = issued(&env, "b", "web-0").await;
    let (receipt, code) = env.run_agent(&token, "first");
    assert_eq!(code, 0);
    let receipt = receipt.unwrap();
    env.report_receipt("web-0", Some(&receipt), 0).await;
    eventually("verified", T, || async {
        (record_phase(&env, "b", "web-0").await? == "Unwrapped").then_some(())
    })
    .await;
    // The init container restarts: a new start.
    env.report_receipt("web-0", Some(&receipt), 1).await;
    let (secret, token2) = issued(&env, "b", "web-0").await;
    assert_ne!(token, token2);
    assert_eq!(ann(&secret)["start"], "1");
    let old = receipt.accessor.unwrap();
    let root = env.bao.root_client();
    eventually("old token revoked", T, || async {
        (!root.accessor_is_live(&old).await.ok()?).then_some(())
    })
    .await;
    assert_eq!(env.records("b").await.len(), 1);
    let (r2, code) = env.run_agent(&token2, "second");
    assert_eq!(code, 0, "{r2:?}");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn conflicting_bindings_both_report_and_mint_nothing() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("one", Env::spec("shared", "60s")).await;
    env.apply_binding("two", json!({
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["shared"]}]},
        "vault": {"tokenRole": ROLE},
    }))
    .await;
    env.create_pod("p", "shared").await;
    for b in ["one", "two"] {
        let (_, _, msg) = eventually("Conflict", T, || async {
            let r = env.ready(b).await;
            (r.1 == "Conflict").then_some(r)
        })
        .await;
        assert!(
            msg.contains(if b == "one" { "two" } else { "one" }),
            "{msg}"
        );
    }
    cluster::holds_for(
        "no record and no mint for the conflicted pod",
        Duration::from_secs(3),
        || async {
            env.records("one").await.is_empty()
                && env.records("two").await.is_empty()
                && (env.external || env.audit_requests("auth/token/create/") == 0)
        },
    )
    .await;
    // Deleting one binding resolves it: the other mints.
    env.bindings()
        .delete("two", &DeleteParams::default())
        .await
        .unwrap();
    let (_, _token) = issued(&env, "one", "p").await;
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn disallowed_role_is_refused_without_a_vault_call_and_neighbours_keep_working() {
    let env = Env::start(Options::default()).await;
    let mut spec = Env::spec("x", "60s");
    spec["vault"]["tokenRole"] = json!("admin-role");
    env.apply_binding("bad", spec).await;
    env.apply_binding("good", Env::spec("y", "60s")).await;
    env.create_pod("x-0", "x").await;
    env.create_pod("y-0", "y").await;
    let (_, msg) = eventually("RoleNotAllowed", T, || async {
        let (s, r, m) = env.ready("bad").await;
        (s == "False" && r == "RoleNotAllowed").then_some((r, m))
    })
    .await;
    assert!(msg.contains("admin-role"), "{msg}");
    issued(&env, "good", "y-0").await;
    assert!(env.records("bad").await.is_empty());
    if !env.external {
        assert_eq!(env.audit_requests("auth/token/create/admin-role"), 0);
        assert_eq!(env.audit_requests("auth/token/create/"), 1);
    }
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn vault_refusal_is_surfaced_with_vaults_message() {
    let env = Env::start(Options::default()).await;
    let mut spec = Env::spec("z", "60s");
    spec["vault"]["policies"] = json!(["root"]);
    env.apply_binding("greedy", spec).await;
    env.apply_binding("fine", Env::spec("ok", "60s")).await;
    env.create_pod("z-0", "z").await;
    env.create_pod("ok-0", "ok").await;
    let msg = eventually("VaultRefused", T, || async {
        let (s, r, m) = env.ready("greedy").await;
        (s == "False" && r == "VaultRefused").then_some(m)
    })
    .await;
    assert!(msg.contains("subset"), "{msg}");
    issued(&env, "fine", "ok-0").await;
    // Retried with a pause doubling per failure (5, 5, 10, 20 s...), not every 5 s: within 30 s
    // at most 5 attempts (a fixed 5 s would make 7), and the record counts them.
    let started = std::time::Instant::now();
    let refused_before = env.audit_requests("auth/token/create/");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let attempts = env.audit_requests("auth/token/create/") - refused_before;
    assert!(
        (2..=5).contains(&attempts),
        "{attempts} mints in {:?}",
        started.elapsed()
    );
    let record = env
        .records("greedy")
        .await
        .pop()
        .expect("the failed record");
    let failures: u32 = ann(&record)["failures"].parse().unwrap();
    assert!(failures >= 3, "{failures} failures recorded");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn unconsumed_wrap_expires_and_its_token_is_revoked() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("short", Env::spec("s", "5s")).await;
    env.create_pod("s-0", "s").await;
    let (secret, _token) = issued(&env, "short", "s-0").await;
    let accessor = ann(&secret)["accessor"].clone();
    let s = eventually("Expired", T, || async {
        let s = env.records("short").await.pop()?;
        (ann(&s)["phase"] == "Expired").then_some(s)
    })
    .await;
    assert!(env.token_of(&s).is_none());
    assert!(
        !env.bao
            .root_client()
            .accessor_is_live(&accessor)
            .await
            .unwrap()
    );
    let status = eventually("status counts the expiry", T, || async {
        let status = env.status("short").await;
        (status.expired == 1).then_some(status)
    })
    .await;
    let (d, reason, _) = condition(&status, "Degraded");
    assert_eq!((d.as_str(), reason.as_str()), ("True", "WrapsExpired"));
    assert!(!env.events_with_reason("WrapExpired").await.is_empty());
    let metrics = env.op().get("/metrics").unwrap().1;
    assert!(
        metrics.contains("cubbyhole_wrap_transitions_total{phase=\"Expired\"} 1"),
        "{metrics}"
    );
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn pod_deletion_revokes_and_binding_deletion_revokes_everything() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("a", "60s")).await;
    for p in ["a-0", "a-1", "a-2"] {
        env.create_pod(p, "a").await;
    }
    let (_, t0) = issued(&env, "b", "a-0").await;
    let (s1, _) = issued(&env, "b", "a-1").await;
    let (s2, _) = issued(&env, "b", "a-2").await;
    // a-0 unwrapped, then deleted: its token is revoked and the Secret removed.
    let (r, _) = env.run_agent(&t0, "a-0");
    let acc0 = r.unwrap().accessor.unwrap();
    env.delete_pod("a-0").await;
    let root = env.bao.root_client();
    eventually("a-0 token revoked + Secret gone", T, || async {
        let gone = !env
            .records("b")
            .await
            .iter()
            .any(|s| ann(s)["pod"] == "a-0");
        (gone && !root.accessor_is_live(&acc0).await.ok()?).then_some(())
    })
    .await;
    // a-1 succeeded (a finished Job): same.
    env.set_pod_phase("a-1", "Succeeded").await;
    let acc1 = ann(&s1)["wrap-accessor"].clone();
    eventually("a-1 cleaned", T, || async {
        let gone = !env
            .records("b")
            .await
            .iter()
            .any(|s| ann(s)["pod"] == "a-1");
        (gone && !root.accessor_is_live(&acc1).await.ok()?).then_some(())
    })
    .await;
    // Binding deleted: the finalizer revokes the rest and lets go.
    let acc2 = ann(&s2)["accessor"].clone();
    env.bindings()
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    eventually("binding gone", T, || async {
        env.bindings()
            .get_opt("b")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(env.records("b").await.is_empty());
    assert!(!root.accessor_is_live(&acc2).await.unwrap());
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn stolen_wrap_is_detected_as_tampered_and_the_stolen_token_revoked() {
    let env = Env::start(Options {
        lookup_period: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    env.apply_binding("b", Env::spec("t", "60s")).await;
    env.create_pod("t-0", "t").await;
    let (secret, token) = issued(&env, "b", "t-0").await;
    // A third party unwraps first.
    let stolen = env
        .bao
        .agent_client()
        .unwrap(&cubbyhole::vault::SecretString::new(token.clone()))
        .await
        .unwrap();
    env.remember(stolen.token.expose());
    assert_eq!(Some(&stolen.accessor), ann(&secret).get("accessor"));
    // The pod's agent then fails and says so in its receipt.
    let (receipt, code) = env.run_agent(&token, "victim");
    assert_eq!(code, 3);
    let receipt = receipt.unwrap();
    assert_eq!(receipt, Receipt::failed(result::INVALID_WRAPPING_TOKEN));
    env.report_receipt("t-0", Some(&receipt), 0).await;
    eventually("Tampered", T, || async {
        (record_phase(&env, "b", "t-0").await? == "Tampered").then_some(())
    })
    .await;
    let status = status_where(&env, "b", |s| s.tampered == 1).await;
    assert_eq!(condition(&status, "Degraded").1, "Tampered");
    assert!(!env.events_with_reason("WrapTampered").await.is_empty());
    assert!(
        !env.bao
            .root_client()
            .accessor_is_live(&stolen.accessor)
            .await
            .unwrap()
    );
    let metrics = env.op().get("/metrics").unwrap().1;
    assert!(metrics.contains("phase=\"Tampered\""));
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn secret_name_taken_is_reported_and_left_untouched() {
    let env = Env::start(Options::default()).await;
    let squatter: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "n-0-b-wrap", "namespace": env.ns},
        "stringData": {"token": "not-yours-keep-out"},
    }))
    .unwrap();
    env.secrets()
        .create(&Default::default(), &squatter)
        .await
        .unwrap();
    env.apply_binding("b", Env::spec("n", "60s")).await;
    env.create_pod("n-0", "n").await;
    env.create_pod("n-1", "n").await;
    let msg = eventually("SecretNameTaken", T, || async {
        let (_, r, m) = env.ready("b").await;
        (r == "SecretNameTaken").then_some(m)
    })
    .await;
    assert!(msg.contains("n-0-b-wrap"), "{msg}");
    issued(&env, "b", "n-1").await;
    let s = env.secrets().get("n-0-b-wrap").await.unwrap();
    assert_eq!(s.data.unwrap()["token"].0, b"not-yours-keep-out");
    assert!(s.metadata.annotations.is_none_or(|a| a.is_empty()));
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn schema_refuses_what_it_can() {
    let env = Env::start(Options::default()).await;
    let api = env.bindings();
    for (what, spec) in [
        (
            "empty selector",
            json!({"podSelector": {}, "vault": {"tokenRole": "r"}}),
        ),
        (
            "wrapTTL too short",
            json!({"podSelector": {"matchLabels": {"a": "b"}}, "vault": {"tokenRole": "r", "wrapTTL": "1s"}}),
        ),
        (
            "wrapTTL not a duration",
            json!({"podSelector": {"matchLabels": {"a": "b"}}, "vault": {"tokenRole": "r", "wrapTTL": "soon"}}),
        ),
        (
            "bad role",
            json!({"podSelector": {"matchLabels": {"a": "b"}}, "vault": {"tokenRole": "../sys"}}),
        ),
        (
            "17 labels",
            json!({"podSelector": {"matchLabels": labels(17)}, "vault": {"tokenRole": "r"}}),
        ),
        (
            "17 expressions",
            json!({"podSelector": {"matchExpressions": expressions(17, 1)}, "vault": {"tokenRole": "r"}}),
        ),
        (
            "65 values",
            json!({"podSelector": {"matchExpressions": expressions(1, 65)}, "vault": {"tokenRole": "r"}}),
        ),
        (
            "a label value of 64 characters",
            json!({"podSelector": {"matchLabels": {"a": "v".repeat(64)}}, "vault": {"tokenRole": "r"}}),
        ),
        (
            "a label key of 318 characters",
            json!({"podSelector": {"matchLabels": {"k".repeat(318): "v"}}, "vault": {"tokenRole": "r"}}),
        ),
        (
            "an unknown operator",
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like", "values": ["b"]}]}, "vault": {"tokenRole": "r"}}),
        ),
    ] {
        let b = json!({"apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
            "metadata": {"name": "x", "namespace": env.ns}, "spec": spec});
        let err = api
            .patch("x", &PatchParams::apply("e2e"), &Patch::Apply(&b))
            .await
            .expect_err(what);
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{what}: {err}"
        );
    }
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The largest selector allowed is accepted (its rules fit the API server's CEL budget).
    let largest = json!({"apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
        "metadata": {"name": "largest", "namespace": env.ns},
        "spec": {"podSelector": {"matchLabels": labels(16), "matchExpressions": expressions(16, 64)},
                 "vault": {"tokenRole": "r"}}});
    api.patch(
        "largest",
        &PatchParams::apply("e2e"),
        &Patch::Apply(&largest),
    )
    .await
    .expect("the largest selector allowed");
}

/// `n` labels with the longest key (317) and value (63) allowed.
fn labels(n: usize) -> serde_json::Value {
    (0..n)
        .map(|i| {
            let key = format!(
                "{}.example/{}",
                "p".repeat(240),
                format!("k{i:02}").repeat(21)
            );
            (key, json!(format!("v{i:02}").repeat(21)))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `n` In expressions of `values` values each.
fn expressions(n: usize, values: usize) -> serde_json::Value {
    (0..n)
        .map(|i| {
            let values: Vec<String> = (0..values).map(|v| format!("v{v:03}")).collect();
            json!({"key": format!("key-{i}"), "operator": "In", "values": values})
        })
        .collect::<Vec<_>>()
        .into()
}

#[tokio::test]
async fn operator_killed_mid_burst_delivers_one_wrap_per_pod_and_vault_ends_the_rest() {
    // Grace 5 s: a token whose mint answer was lost dies at wrapTTL (10 s) + 5 s.
    let mut env = Env::start(Options {
        token_life: Some((Duration::from_secs(5), Duration::from_secs(60))),
        ..Options::default()
    })
    .await;
    if env.skip_external("the audit log") {
        return;
    }
    // The operator dies at the worst moment of the burst: right after a mint, before the
    // record carrying it is written; then a healthy one takes over.
    let crash = env.start_operator_with_failpoint("after-mint");
    env.apply_binding("burst", Env::spec("burst", "10s")).await;
    for i in 0..20 {
        env.create_pod(&format!("burst-{i}"), "burst").await;
    }
    crash.wait_abort_at("after-mint", T);
    // The moment: a mint was answered and its record never written.
    let written: std::collections::BTreeSet<String> = env
        .records("burst")
        .await
        .iter()
        .filter_map(|s| ann(s).get("wrap-accessor").cloned())
        .collect();
    let minted = env.minted_wraps().await;
    assert!(
        minted.iter().any(|(a, _)| !written.contains(a)),
        "a mint in flight at the crash: {minted:?} vs {written:?}"
    );
    // Pods the crashed operator wrote a record for: served, never minted for again.
    let recorded: std::collections::BTreeSet<String> = env
        .records("burst")
        .await
        .iter()
        .filter_map(|s| ann(s).get("pod").cloned())
        .collect();
    let minted_before_restart: std::collections::BTreeSet<String> =
        minted.iter().map(|(a, _)| a.clone()).collect();
    env.restart_operator();
    let delivered = eventually("every pod served once", Duration::from_secs(60), || async {
        let records = env.records("burst").await;
        let delivered: Vec<(String, String)> = records
            .iter()
            .filter_map(|s| {
                Some((
                    ann(s).get("pod")?.clone(),
                    ann(s).get("wrap-accessor")?.clone(),
                ))
            })
            .collect();
        (delivered.len() == 20).then_some(delivered)
    })
    .await;
    let pods_served: std::collections::BTreeSet<_> = delivered.iter().map(|(p, _)| p).collect();
    assert_eq!(pods_served.len(), 20, "one delivered wrap per pod");
    // The crash lost at least one mint (mints run concurrently: maybe several). Nobody holds
    // what they made; Vault ends their wraps at wrapTTL and their tokens at wrapTTL + grace.
    let minted = env.bao.minted_accessors();
    let lost: Vec<&(String, String)> = minted
        .iter()
        .filter(|(w, _)| !delivered.iter().any(|(_, d)| d == w))
        .collect();
    assert!(!lost.is_empty(), "the crash interrupted no mint");
    // Counted exactly: every mint that reached nobody was the crashed operator's, in flight
    // at the crash for a pod it had not written a record for, at most one per pod; the new
    // operator minted once for each pod without a record and never for one with a record.
    let by_pod = env.minted_wraps_by_pod().await;
    let mut lost_pods = std::collections::BTreeSet::new();
    for (pod, wrap, _) in by_pod
        .iter()
        .filter(|(_, w, _)| lost.iter().any(|(l, _)| l == w))
    {
        assert!(
            minted_before_restart.contains(wrap),
            "{pod}: a mint after the restart reached nobody (re-minted for a served pod?)"
        );
        assert!(
            !recorded.contains(pod),
            "{pod} had its record and was minted again"
        );
        assert!(lost_pods.insert(pod.clone()), "{pod}: two mints lost");
    }
    // (Vault's audit log shows more create requests than that: mints in flight when the
    // process died were cancelled with their connection and made nothing.)
    assert_eq!(
        minted.len(),
        20 + lost_pods.len(),
        "minted = pods + mints in flight at the crash"
    );
    let root = env.bao.root_client();
    eventually(
        "the lost mints ended by Vault",
        Duration::from_secs(30),
        || async {
            for (wrap, token) in &lost {
                if root.accessor_is_live(wrap).await.ok()?
                    || root.accessor_is_live(token).await.ok()?
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn vault_outage_leaves_no_pod_without_and_none_with_two_wraps() {
    let env = Env::start(Options::default()).await;
    if env.skip_external("to pause OpenBao") {
        return;
    }
    // The operator logs in at its first Vault call: serve one pod first, so that during the
    // outage it is a mint (not a login) whose answer gets lost.
    env.apply_binding("warm", Env::spec("w", "60s")).await;
    env.create_pod("w-0", "w").await;
    issued(&env, "warm", "w-0").await;
    env.apply_binding("b", Env::spec("o", "10s")).await;
    env.bao.pause();
    for i in 0..5 {
        env.create_pod(&format!("o-{i}"), "o").await;
    }
    let msg = eventually("VaultUnavailable", T, || async {
        let (s, r, m) = env.ready("b").await;
        (s == "False" && r == "VaultUnavailable").then_some(m)
    })
    .await;
    assert!(!msg.is_empty());
    // Keep Vault frozen until a mint's answer is lost (the request went out, no answer came
    // back): that is the case this test is about.
    eventually(
        "a mint answer lost during the outage",
        Duration::from_secs(60),
        || async {
            env.op()
                .log_text()
                .contains("mint answer lost")
                .then_some(())
        },
    )
    .await;
    env.bao.resume();
    // Every pod gets exactly one delivered wrap (one record each, one wrap each).
    let delivered = eventually(
        "every pod served after the outage",
        Duration::from_secs(90),
        || async {
            let records = env.records("b").await;
            let delivered: Vec<String> = records
                .iter()
                .filter_map(|s| ann(s).get("wrap-accessor").cloned())
                .collect();
            for s in &records {
                env.token_of(s);
            }
            (delivered.len() == 5).then_some(delivered)
        },
    )
    .await;
    let unique: std::collections::BTreeSet<_> = delivered.iter().collect();
    assert_eq!(unique.len(), 5);
    // What the lost answers made reached nobody, and Vault ends it: wraps at wrapTTL (10 s).
    let undelivered = || async {
        env.minted_wraps_by_pod()
            .await
            .into_iter()
            .filter(|(pod, a, _)| pod.starts_with("o-") && !delivered.contains(a))
            .collect::<Vec<_>>()
    };
    // The fault itself is proven above (the operator logged a mint answer lost). Whether Vault
    // then carried that request out depends on whether it read it before the client gave up:
    // either way no pod got a second wrap, and whatever it made expires.
    let carried_out = undelivered().await.len();
    let answers_lost = env.op().log_text().matches("mint answer lost").count();
    println!("FIGURES lost mint answers carried out by Vault: {carried_out} of {answers_lost}");
    // Counted: every create beyond one per pod is a request whose answer the operator lost
    // (it never mints again for a pod whose wrap it delivered); Vault logs such a request
    // whether it carried it out or found its client gone.
    assert!(
        carried_out <= answers_lost,
        "{carried_out} undelivered mints"
    );
    let creates = env.audit_requests("auth/token/create/") - 1;
    assert!(
        (5 + carried_out..=5 + answers_lost).contains(&creates),
        "{creates} creates for 5 pods, {carried_out} carried out of {answers_lost} lost"
    );
    eventually(
        "the lost mints' wraps expired",
        Duration::from_secs(20),
        || async {
            undelivered()
                .await
                .iter()
                .all(|(_, _, live)| !live)
                .then_some(())
        },
    )
    .await;
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn sweep_cleans_records_of_a_force_deleted_binding() {
    let mut env = Env::start(Options::default()).await;
    env.apply_binding("doomed", Env::spec("d", "60s")).await;
    env.create_pod("d-0", "d").await;
    let (s, _) = issued(&env, "doomed", "d-0").await;
    let accessor = ann(&s)["wrap-accessor"].clone();
    // Strip the finalizer and delete while the operator is stopped.
    env.operator.take().unwrap().kill();
    env.force_delete_binding("doomed").await;
    env.restart_operator();
    let root = env.bao.root_client();
    eventually("swept", T, || async {
        (env.records("doomed").await.is_empty() && !root.accessor_is_live(&accessor).await.ok()?)
            .then_some(())
    })
    .await;
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn probes_metrics_and_clean_sigterm() {
    let mut env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("m", "60s")).await;
    env.create_pod("m-0", "m").await;
    issued(&env, "b", "m-0").await;
    assert_eq!(env.op().get("/healthz").unwrap().0, 200);
    assert_eq!(env.op().get("/readyz").unwrap().0, 200);
    let names = [
        "cubbyhole_wraps_issued_total 1",
        "cubbyhole_outstanding_wraps{",
        "cubbyhole_vault_request_duration_seconds_bucket{",
        "cubbyhole_reconcile_duration_seconds_count",
    ];
    // The gauge is set with the status, a round after the issue (an earlier round may have
    // set it to 0): wait for its value, not only its name.
    let gauge = "outstanding_wraps{namespace=\"agents\",binding=\"b\"} 1";
    eventually("metrics of the issue", T, || async {
        let m = env.op().get("/metrics")?.1;
        (names.iter().all(|n| m.contains(n)) && (env.external || m.contains(gauge))).then_some(m)
    })
    .await;
    // This API server streams initial lists (WatchList, on by default since 1.34): the operator
    // must use them, so a restart never holds a whole list of pods in memory.
    assert!(
        env.op().log_text().contains("initial lists are streamed") || env.external,
        "the operator did not choose streaming lists"
    );
    env.assert_no_leaks().await;
    let status = env.operator.take().unwrap().terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn without_streaming_lists_the_operator_pages_its_lists_and_serves() {
    // Kubernetes 1.33 ships with WatchList off; a server without it refuses streaming lists.
    let mut env = Env::start(Options {
        apiserver_feature_gates: Some("WatchList=false"),
        ..Options::default()
    })
    .await;
    if env.skip_external("a private API server with WatchList off") {
        return;
    }
    env.apply_binding("b", Env::spec("p", "60s")).await;
    env.create_pod("p-0", "p").await;
    issued(&env, "b", "p-0").await;
    assert!(
        env.op()
            .log_text()
            .contains("does not stream initial lists"),
        "the operator did not fall back to paged lists"
    );
    // A restarted operator lists what exists (paged), keeps p-0's wrap and serves a new pod.
    env.restart_operator();
    env.create_pod("p-1", "p").await;
    issued(&env, "b", "p-1").await;
    let minted = env.minted_wraps().await;
    assert_eq!(minted.len(), 2, "one mint per pod: {minted:?}");
    assert!(minted.iter().all(|(_, live)| *live), "{minted:?}");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn vault_calls_per_pod_life_are_bounded() {
    let env = Env::start(Options {
        lookup_period: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    if env.skip_external("the audit log") {
        return;
    }
    env.apply_binding("b", Env::spec("life", "10s")).await;
    for i in 0..6 {
        env.create_pod(&format!("life-{i}"), "life").await;
    }
    // Pods 0-2 unwrap at once and report a receipt; pods 3-5 never unwrap.
    for i in 0..3 {
        let pod = format!("life-{i}");
        let (_, token) = issued(&env, "b", &pod).await;
        let (receipt, code) = env.run_agent(&token, &pod);
        assert_eq!(code, 0);
        env.report_receipt(&pod, receipt.as_ref(), 0).await;
    }
    eventually("all settled", T, || async {
        let status = env.status("b").await;
        (status.unwrapped == 3 && status.expired == 3).then_some(())
    })
    .await;
    for i in 0..6 {
        env.delete_pod(&format!("life-{i}")).await;
    }
    eventually("all cleaned", T, || async {
        env.records("b").await.is_empty().then_some(())
    })
    .await;
    let creates = env.audit_requests("auth/token/create/");
    // The agents made one lookup each; the rest are the operator's.
    let lookups = env.audit_requests("sys/wrapping/lookup") - 3;
    let revocations = env.audit_requests("auth/token/revoke-accessor");
    println!(
        "FIGURES vault calls for 6 pod lives (3 unwrapped with receipt, 3 expired; wrapTTL 10s, lookupPeriod 2s): creates={creates} operator_lookups={lookups} revocations={revocations}"
    );
    assert_eq!(creates, 6);
    // Bound: at most ceil(10/2) = 5 lookups per wrap, none once a receipt settled it.
    assert!(lookups <= 3 * 5, "{lookups} lookups");
    // Expired: wrap + token; unwrapped: token at deletion.
    assert!(revocations <= 3 * 2 + 3, "{revocations} revocations");
    env.assert_no_leaks().await;
}

/// Waits (at most `within`) until `binding` has `n` records with a wrap outstanding.
async fn all_issued(env: &Env, binding: &str, n: usize, within: Duration) {
    eventually(&format!("{n} wraps"), within, || async {
        let issued = env
            .records(binding)
            .await
            .iter()
            .filter(|s| ann(s).get("phase").map(String::as_str) == Some("Issued"))
            .count();
        (issued == n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn burst_of_100_pods_is_served_once_each() {
    use futures::StreamExt;
    let env = Env::start(Options::default()).await;
    env.apply_binding("many", Env::spec("many", "60s")).await;
    let started = std::time::Instant::now();
    // Eight at a time, as fast as the API server takes them: the binding's rounds run back to
    // back while pods keep coming, each planning from the record cache its previous round
    // wrote to (a round planning before the cache shows its writes mints twice).
    futures::stream::iter(0..100)
        .for_each_concurrent(8, |i| {
            let env = &env;
            async move {
                env.create_pod(&format!("many-{i}"), "many").await;
            }
        })
        .await;
    let created = started.elapsed();
    all_issued(&env, "many", 100, Duration::from_secs(120)).await;
    let served = started.elapsed();
    println!(
        "FIGURES burst: 100 pods created in {created:?}, all wraps delivered after {served:?}"
    );
    if !env.external {
        assert_eq!(env.audit_requests("auth/token/create/"), 100);
    }
    for s in env.records("many").await.iter().take(3) {
        env.token_of(s);
    }
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_round_never_plans_from_a_record_cache_behind_its_own_writes() {
    // The operator's record watch delivers every event 500 ms late; pods keep coming, so the
    // binding's rounds run back to back. A round that planned before the cache showed the
    // previous round's creates would mint for those pods again (and revoke the second mint
    // when its create found the name taken).
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the audit log") {
        return;
    }
    let lagging = env.start_operator_with_failpoint("record-watch:lag");
    env.operator = Some(lagging);
    env.apply_binding("lag", Env::spec("lag", "60s")).await;
    for i in 0..20 {
        env.create_pod(&format!("lag-{i}"), "lag").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all_issued(&env, "lag", 20, T).await;
    assert!(
        env.operator
            .as_ref()
            .unwrap()
            .log_text()
            .contains("failpoint record-watch: every item"),
        "the failpoint was not armed"
    );
    // Every late event has arrived and been planned from: a pod created now is served by a
    // round planning from a cache that shows all 20 records, and one created after that one's
    // record by a later round, so the first one's round (which would have re-minted for any
    // pod its cache lacked) has ended and every mint it made is in the audit log.
    for sentinel in ["lag-20", "lag-21"] {
        env.create_pod(sentinel, "lag").await;
        issued(&env, "lag", sentinel).await;
    }
    assert_eq!(env.audit_requests("auth/token/create/"), 22);
    assert_eq!(env.audit_requests("auth/token/revoke-accessor"), 0);
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn operator_killed_between_mint_and_write_leaves_nothing_reachable_or_long_lived() {
    let mut env = Env::start(Options {
        token_life: Some((Duration::from_secs(5), Duration::from_secs(60))),
        ..Options::default()
    })
    .await;
    if env.skip_external("the audit log") {
        return;
    }
    env.apply_binding("b", Env::spec("k", "5s")).await;
    // This operator dies right after Vault answers the first mint, before the Secret is written.
    let doomed = env.start_operator_with_failpoint("after-mint");
    env.create_pod("k-0", "k").await;
    doomed.wait_abort_at("after-mint", T);
    assert!(env.records("b").await.is_empty(), "nothing written");
    assert_eq!(env.minted_wraps().await.len(), 1);
    env.restart_operator();
    // The restarted operator mints once more, at once; the first mint is reachable by nobody.
    let (secret, _) = issued(&env, "b", "k-0").await;
    let minted = env.bao.minted_accessors();
    assert_eq!(minted.len(), 2, "{minted:?}");
    assert_eq!(&minted[1].0, &ann(&secret)["wrap-accessor"]);
    // Vault ends the lost one: its wrap at 5 s, its token at 5 s + 5 s, nobody revoking it.
    let (lost_wrap, lost_token) = &minted[0];
    let root = env.bao.root_client();
    eventually(
        "the lost mint ended by Vault",
        Duration::from_secs(20),
        || async {
            let live = root.accessor_is_live(lost_wrap).await.ok()?
                || root.accessor_is_live(lost_token).await.ok()?;
            (!live).then_some(())
        },
    )
    .await;
    let revoked = revoked_accessors(&env.bao.audit_entries());
    assert!(!revoked.contains(lost_token), "{revoked:?}");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_wrap_whose_record_write_fails_is_revoked_with_its_token() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the audit log and a failpoint") {
        return;
    }
    env.apply_binding("b", Env::spec("d", "60s")).await;
    // Every mint's answer is held for a few seconds before its record is written.
    let paused = env.start_operator_with_failpoint("after-mint:pause");
    env.operator = Some(paused);
    env.create_pod("d-0", "d").await;
    eventually("the first mint", T, || async {
        (env.minted_wraps().await.len() == 1).then_some(())
    })
    .await;
    // Someone else takes the pod's Secret name while the mint's answer is held: the create
    // must fail, and what was minted be revoked at once. (That the squatter's create succeeds
    // proves the moment: had the record been written first, the name would be taken.)
    let squatter: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "d-0-b-wrap", "namespace": env.ns},
    }))
    .unwrap();
    let created = env
        .secrets()
        .create(&PostParams::default(), &squatter)
        .await
        .unwrap();
    let root = env.bao.root_client();
    let (lost_wrap, lost_token) = env.bao.minted_accessors()[0].clone();
    eventually("the unwritten mint revoked", T, || async {
        let live = root.accessor_is_live(&lost_wrap).await.ok()?
            || root.accessor_is_live(&lost_token).await.ok()?;
        (!live).then_some(())
    })
    .await;
    assert!(
        env.op()
            .log_text()
            .contains("failpoint after-mint: pausing"),
        "the failpoint never held a mint"
    );
    let revoked = revoked_accessors(&env.bao.audit_entries());
    assert!(
        revoked.contains(&lost_wrap) && revoked.contains(&lost_token),
        "{revoked:?}"
    );
    // The delivery failed, not merely ended: the squatter still holds the name, untouched.
    let held = env.secrets().get("d-0-b-wrap").await.unwrap();
    assert_eq!(held.metadata.uid, created.metadata.uid);
    assert!(held.metadata.labels.is_none() && held.data.is_none());
    eventually("SecretNameTaken", T, || async {
        let (s, r, _) = env.ready("b").await;
        (s == "False" && r == "SecretNameTaken").then_some(())
    })
    .await;
    // The name is freed: the pod is served (after the taken-name pause), one mint more.
    env.secrets()
        .delete("d-0-b-wrap", &DeleteParams::default())
        .await
        .unwrap();
    let secret = eventually(
        "served once the name is free",
        Duration::from_secs(60),
        || async {
            let s = env.records("b").await.pop()?;
            (ann(&s).get("phase").map(String::as_str) == Some("Issued")).then_some(s)
        },
    )
    .await;
    let minted = env.bao.minted_accessors();
    assert_eq!(minted.len(), 2, "one lost write, one delivered: {minted:?}");
    let (wrap, token) = &minted[1];
    assert_eq!(&ann(&secret)["wrap-accessor"], wrap);
    assert!(root.accessor_is_live(wrap).await.unwrap());
    assert!(root.accessor_is_live(token).await.unwrap());
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn invalid_secret_name_annotation_is_reported_and_others_are_served() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("v", "60s")).await;
    let mut pod = env.create_pod("v-0", "v").await;
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert("cubbyhole.dev/secret-name".into(), "Not_A_Name".into());
    env.pods()
        .patch(
            "v-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": pod.metadata.annotations}})),
        )
        .await
        .unwrap();
    env.create_pod("v-1", "v").await;
    let msg = eventually("InvalidSecretName", T, || async {
        let (s, r, m) = env.ready("b").await;
        (s == "False" && r == "InvalidSecretName").then_some(m)
    })
    .await;
    assert!(msg.contains("Not_A_Name"), "{msg}");
    issued(&env, "b", "v-1").await;
    assert_eq!(env.records("b").await.len(), 1);
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn leader_election_fails_over_without_duplicate_wraps() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("the audit log and a free Lease in cubbyhole-system") {
        return;
    }
    // Replace the plain operator with two replicas electing a leader. The first, which leads,
    // holds every mint's answer 5 s before writing its record, so it can be killed with a
    // mint in flight.
    env.operator.take().unwrap().kill();
    let first = env.start_replica_with_failpoint(1, "after-mint:pause");
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.client.clone(), cluster::OPERATOR_NS);
    eventually("the first replica leads", T, || async {
        let holder = leases
            .get_opt("cubbyhole-operator")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        holder.ends_with(&format!("-{}", first.pid())).then_some(())
    })
    .await;
    let standby = env.start_replica(2);
    env.apply_binding("b", Env::spec("ha", "60s")).await;
    for i in 0..3 {
        env.create_pod(&format!("ha-{i}"), "ha").await;
    }
    for i in 0..3 {
        issued(&env, "b", &format!("ha-{i}")).await;
    }
    // The leader dies without a goodbye while a mint's answer is held, before its record is
    // written; the standby takes over once the 6 s lease runs out.
    for i in 3..6 {
        env.create_pod(&format!("ha-{i}"), "ha").await;
    }
    let in_flight = eventually("a mint in flight for the new pods", T, || async {
        let minted = env.minted_wraps_by_pod().await;
        let pod = minted
            .iter()
            .find(|(p, _, _)| p.as_str() >= "ha-3")?
            .0
            .clone();
        let records = env.records("b").await;
        let written = records
            .iter()
            .any(|s| ann(s).get("pod").map(String::as_str) == Some(pod.as_str()));
        (!written).then_some(pod)
    })
    .await;
    let killed = std::time::Instant::now();
    first.kill();
    for i in 3..6 {
        issued(&env, "b", &format!("ha-{i}")).await;
    }
    let failover = killed.elapsed();
    println!(
        "FIGURES leader failover after SIGKILL (6 s lease), {in_flight}'s mint in flight: {failover:?}"
    );
    assert!(failover < Duration::from_secs(20), "{failover:?}");
    let records = env.records("b").await;
    assert_eq!(records.len(), 6);
    // One delivered wrap per pod across both replicas; what the dead leader minted and never
    // wrote reached nobody (Vault ends it at its TTL).
    let delivered: std::collections::BTreeSet<String> = records
        .iter()
        .filter_map(|s| ann(s).get("wrap-accessor").cloned())
        .collect();
    assert_eq!(delivered.len(), 6);
    let minted = env.minted_wraps_by_pod().await;
    let lost: Vec<_> = minted
        .iter()
        .filter(|(_, a, _)| !delivered.contains(a))
        .collect();
    assert!(
        lost.iter().any(|(p, _, _)| *p == in_flight),
        "the in-flight mint was not lost: {minted:?}"
    );
    // Counted exactly: the only mints that reached nobody are the dead leader's for the pods
    // it had not written yet, at most one each; the new leader never re-minted for ha-0..2.
    let lost_pods: std::collections::BTreeSet<&str> =
        lost.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        lost_pods.len(),
        lost.len(),
        "a pod lost two mints: {lost:?}"
    );
    assert!(
        lost_pods.iter().all(|p| *p >= "ha-3"),
        "the new leader re-minted for a served pod: {lost:?}"
    );
    assert_eq!(env.audit_requests("auth/token/create/"), 6 + lost.len());
    // A clean stop releases the lease.
    assert!(standby.terminate().success());
    let spec = leases
        .get("cubbyhole-operator")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert!(spec.holder_identity.is_none_or(|h| h.is_empty()));
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn api_server_outage_mid_burst_serves_every_pod_once() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("to pause the API server") {
        return;
    }
    // Every mint's answer is held 5 s before its record is written, so the freeze below
    // catches mints in flight.
    let paused = env.start_operator_with_failpoint("after-mint:pause");
    env.operator = Some(paused);
    env.apply_binding("b", Env::spec("api", "60s")).await;
    for i in 0..20 {
        env.create_pod(&format!("api-{i}"), "api").await;
    }
    // Freeze the API server once mints are answered and their records not yet written.
    let minted = eventually("mints under way", T, || async {
        let n = env.minted_wraps().await.len();
        (n >= 2).then_some(n)
    })
    .await;
    let recorded: std::collections::BTreeSet<String> = env
        .records("b")
        .await
        .iter()
        .filter_map(|s| ann(s).get("pod").cloned())
        .collect();
    let written = recorded.len();
    env.cluster.pause();
    println!(
        "FIGURES API server frozen with {minted} mints answered, {written} of 20 records written"
    );
    assert!(
        written < minted,
        "no mint in flight at the freeze: {written} records"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    env.cluster.resume();
    for i in 0..20 {
        issued(&env, "b", &format!("api-{i}")).await;
    }
    assert_eq!(env.records("b").await.len(), 20);
    // Every delivered wrap is live; any other wrap (a write lost to the freeze) was revoked by
    // the operator, not left to expire: nothing delivered twice, nothing minted left behind.
    let minted = env.minted_wraps().await;
    let live = minted.iter().filter(|(_, l)| *l).count();
    assert_eq!(live, 20, "{minted:?}");
    let revoked = revoked_accessors(&env.bao.audit_entries());
    for (wrap, _) in minted.iter().filter(|(_, l)| !*l) {
        assert!(
            revoked.contains(wrap),
            "wrap {wrap} neither delivered nor revoked"
        );
    }
    println!(
        "FIGURES {} creates for 20 pods ({} revoked after a lost write)",
        env.audit_requests("auth/token/create/"),
        minted.len() - live
    );
    assert_eq!(env.audit_requests("auth/token/create/"), minted.len());
    // Counted exactly: creates = 20 + the wraps discarded after a lost write, each for a pod
    // whose record was not written at the freeze, at most one per pod.
    let mut discarded_pods = std::collections::BTreeSet::new();
    for (pod, _, live) in env.minted_wraps_by_pod().await {
        if !live {
            assert!(
                !recorded.contains(&pod),
                "{pod} had its record and was minted again"
            );
            assert!(discarded_pods.insert(pod.clone()), "{pod}: two writes lost");
        }
    }
    assert_eq!(minted.len(), 20 + discarded_pods.len());
    assert_eq!(env.op().get("/healthz").map(|(c, _)| c), Some(200));
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_binding_that_may_no_longer_mint_still_revokes_for_gone_pods() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("r", "60s")).await;
    env.create_pod("r-0", "r").await;
    let (_, token) = issued(&env, "b", "r-0").await;
    let (receipt, code) = env.run_agent(&token, "r-0");
    assert_eq!(code, 0);
    let accessor = receipt.unwrap().accessor.unwrap();
    // The binding now names a role its namespace may not use: no more minting...
    let mut spec = Env::spec("r", "60s");
    spec["vault"]["tokenRole"] = json!("admin-role");
    env.apply_binding("b", spec).await;
    eventually("RoleNotAllowed", T, || async {
        (env.ready("b").await.1 == "RoleNotAllowed").then_some(())
    })
    .await;
    // ...but when its pod goes, the pod's token is still revoked and the Secret removed.
    env.delete_pod("r-0").await;
    let root = env.bao.root_client();
    eventually("revoked and removed", T, || async {
        let gone = env.records("b").await.is_empty();
        (gone && !root.accessor_is_live(&accessor).await.ok()?).then_some(())
    })
    .await;
    env.assert_no_leaks().await;
}

// --- What only a real cluster can show: RBAC, garbage collection, namespace deletion, and
// --- OpenBao's Kubernetes login through a real TokenReview.

#[tokio::test]
async fn operator_identity_is_held_to_the_shipped_rbac() {
    let env = Env::start(Options::default()).await;
    let kc = kube::config::Kubeconfig::read_from(&env.identity.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let operator = kube::Client::try_from(config).unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(operator.clone(), &env.ns);
    env.create_pod("rbac-0", "rbac").await;
    // What config/rbac grants works...
    pods.list(&ListParams::default()).await.expect("list pods");
    pods.get("rbac-0").await.expect("get pod");
    // ...and a verb it does not grant is refused, for the operator's own user.
    let forbidden = |r: Result<_, kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message,
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    };
    let msg = forbidden(
        pods.delete("rbac-0", &DeleteParams::default())
            .await
            .map(|_| ()),
    );
    assert!(
        msg.contains("system:serviceaccount:cubbyhole-system:cubbyhole"),
        "{msg}"
    );
    let config_maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(operator.clone(), &env.ns);
    forbidden(config_maps.list(&ListParams::default()).await.map(|_| ()));
    // Leases only in its own namespace.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(operator, "default");
    forbidden(leases.list(&ListParams::default()).await.map(|_| ()));
    // The operator itself works under exactly these rights.
    env.apply_binding("b", Env::spec("rbac", "60s")).await;
    issued(&env, "b", "rbac-0").await;
    let log = env.op().log_text();
    assert!(
        !log.contains("\"http.status_code\":403") && !log.contains("Forbidden"),
        "the operator was refused something:\n{log}"
    );
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_deleted_pods_secret_is_garbage_collected_only_after_its_token_is_revoked() {
    let mut env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("gc", "60s")).await;
    env.create_pod("gc-0", "gc").await;
    let (secret, token) = issued(&env, "b", "gc-0").await;
    let (receipt, code) = env.run_agent(&token, "gc-0");
    assert_eq!(code, 0);
    let accessor = receipt.unwrap().accessor.unwrap();
    // With the operator down, only Kubernetes' garbage collector acts on the pod's deletion.
    env.operator.take().unwrap().kill();
    env.delete_pod("gc-0").await;
    let root = env.bao.root_client();
    eventually("the garbage collector deletes the Secret", T, || async {
        let s = env.secrets().get_opt(&secret.name_any()).await.ok()??;
        s.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    assert!(
        root.accessor_is_live(&accessor).await.unwrap(),
        "nothing revoked yet: the Secret's finalizer holds it"
    );
    env.restart_operator();
    eventually("token revoked, then the Secret goes", T, || async {
        let gone = env
            .secrets()
            .get_opt(&secret.name_any())
            .await
            .ok()?
            .is_none();
        (gone && !root.accessor_is_live(&accessor).await.ok()?).then_some(())
    })
    .await;
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn deleting_a_namespace_with_a_binding_leaves_no_live_token() {
    let mut env = Env::start(Options::default()).await;
    let home = env.ns.clone();
    let doomed = format!("{home}-doomed");
    cluster::create_namespace(&env.client, &doomed).await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(env.client.clone());
    // The harness works in `env.ns`: point it at the doomed namespace for the setup.
    env.ns = doomed.clone();
    env.apply_binding("b", Env::spec("ns", "60s")).await;
    for p in ["ns-0", "ns-1"] {
        env.create_pod(p, "ns").await;
    }
    let (s0, t0) = issued(&env, "b", "ns-0").await;
    let (s1, _) = issued(&env, "b", "ns-1").await;
    let (receipt, code) = env.run_agent(&t0, "ns-0");
    assert_eq!(code, 0);
    let mut accessors = vec![receipt.unwrap().accessor.unwrap()];
    accessors.push(ann(&s0)["wrap-accessor"].clone());
    accessors.push(ann(&s1)["wrap-accessor"].clone());
    accessors.push(ann(&s1)["accessor"].clone());
    namespaces
        .delete(&doomed, &DeleteParams::default())
        .await
        .unwrap();
    eventually("namespace gone", Duration::from_secs(90), || async {
        namespaces
            .get_opt(&doomed)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    env.ns = home;
    let root = env.bao.root_client();
    for a in &accessors {
        assert!(!root.accessor_is_live(a).await.unwrap(), "{a} still live");
    }
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn the_operator_logs_in_to_openbao_through_a_real_token_review() {
    let env = Env::start(Options::default()).await;
    if env.skip_external("OpenBao's audit log and Kubernetes auth against the test cluster") {
        return;
    }
    env.apply_binding("b", Env::spec("login", "60s")).await;
    env.create_pod("login-0", "login").await;
    issued(&env, "b", "login-0").await;
    let logins = env.bao.audit_responses("auth/kubernetes/login");
    let ok = logins
        .iter()
        .find(|l| l["error"].is_null() && !l["response"]["auth"]["accessor"].is_null())
        .unwrap_or_else(|| panic!("no successful Kubernetes login: {logins:?}"));
    let metadata = &ok["response"]["auth"]["metadata"];
    assert_eq!(metadata["service_account_name"], cluster::OPERATOR_SA);
    assert_eq!(metadata["service_account_namespace"], cluster::OPERATOR_NS);
    // Another service account's real token is refused: OpenBao asked the API server who it is.
    let out = std::process::Command::new("kubectl")
        .args(["create", "token", "default", "-n", &env.ns])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .output()
        .unwrap();
    let other = String::from_utf8(out.stdout).unwrap();
    env.remember(other.trim());
    let login = env.bao.cli(
        "",
        &[
            "write",
            "auth/kubernetes/login",
            "role=cubbyhole-operator",
            &format!("jwt={}", other.trim()),
        ],
    );
    assert!(
        !login.status.success(),
        "a foreign service account logged in"
    );
    // What the operator hands Vault is for audience `vault` only: the API server does not
    // take it (a TokenReview for the API server's own audiences fails) ...
    let vault_jwt = std::fs::read_to_string(&env.identity.jwt).unwrap();
    let review = |token: String| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            audiences: None,
        },
        ..Default::default()
    };
    let reviews: Api<TokenReview> = Api::all(env.client.clone());
    let answer = reviews
        .create(
            &PostParams::default(),
            &review(vault_jwt.trim().to_string()),
        )
        .await
        .unwrap();
    let authenticated = answer.status.and_then(|s| s.authenticated);
    assert_ne!(
        authenticated,
        Some(true),
        "the Vault login token works on the API server"
    );
    // ... and the operator's API server token does not log in to Vault (wrong audience).
    let api_jwt = std::fs::read_to_string(&env.identity.api_jwt).unwrap();
    let login = env.bao.cli(
        "",
        &[
            "write",
            "auth/kubernetes/login",
            "role=cubbyhole-operator",
            &format!("jwt={}", api_jwt.trim()),
        ],
    );
    assert!(
        !login.status.success(),
        "an API server token logged in to Vault"
    );
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_leader_that_cannot_renew_its_lease_exits() {
    let mut env = Env::start(Options::default()).await;
    if env.skip_external("to pause the API server and a free Lease in cubbyhole-system") {
        return;
    }
    // Replace the plain operator with one replica electing itself leader (6 s lease).
    env.operator.take().unwrap().kill();
    let mut leader = env.start_replica(1);
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.client.clone(), cluster::OPERATOR_NS);
    eventually("the replica leads", T, || async {
        let holder = leases
            .get_opt("cubbyhole-operator")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        holder
            .ends_with(&format!("-{}", leader.pid()))
            .then_some(())
    })
    .await;
    // It is at work as the leader: a pod is served.
    env.apply_binding("b", Env::spec("lead", "60s")).await;
    env.create_pod("lead-0", "lead").await;
    issued(&env, "b", "lead-0").await;
    assert!(leader.exited().is_none(), "{}", leader.log_text());

    // No renewal can succeed while the API server is frozen: the leader must stop on its own
    // before its lease (at most 6 s after the freeze) can run out under it.
    env.cluster.pause();
    let paused = std::time::Instant::now();
    let status = loop {
        if let Some(status) = leader.exited() {
            break Some(status);
        }
        if paused.elapsed() > Duration::from_secs(15) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited_after = paused.elapsed();
    env.cluster.resume();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the leader still ran {exited_after:?} into the API server freeze:\n{}",
            leader.log_text()
        )
    });
    println!("FIGURES leader exited {exited_after:?} after the API server froze (6 s lease)");
    assert!(!status.success(), "exited with {status:?}");
    assert!(
        exited_after < Duration::from_secs(6),
        "exited only {exited_after:?} after the freeze, past its lease"
    );
    let log = leader.log_text();
    assert!(log.contains("could not renew in time"), "{log}");
    assert!(log.contains("lost leadership"), "{log}");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_receipt_settles_the_wrap_without_a_vault_call() {
    // Lookups are due only 30 s after the mint: none can happen during the test by schedule.
    let env = Env::start(Options {
        lookup_period: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    if env.skip_external("OpenBao's audit log") {
        return;
    }
    env.apply_binding("b", Env::spec("rcpt", "60s")).await;
    env.create_pod("rcpt-0", "rcpt").await;
    let (secret, token) = issued(&env, "b", "rcpt-0").await;
    let wrap_accessor = ann(&secret)["wrap-accessor"].clone();
    let token_accessor = ann(&secret)["accessor"].clone();
    let (receipt, code) = env.run_agent(&token, "rcpt-0");
    assert_eq!(code, 0, "agent unwrap failed: {receipt:?}");
    let before = env.bao.audit_entries();
    // The agent's own lookup is there: the audit log shows lookups when they happen.
    assert!(
        audit_requests_at(&before, "sys/wrapping/lookup").count() >= 1,
        "no lookup in the audit log at all"
    );
    env.report_receipt("rcpt-0", receipt.as_ref(), 0).await;
    let settled = eventually("rcpt-0 Unwrapped and verified", T, || async {
        let s = env.records("b").await.pop()?;
        let a = ann(&s);
        (a.get("phase").map(String::as_str) == Some("Unwrapped")
            && a.get("verified").map(String::as_str) == Some("true"))
        .then_some(s)
    })
    .await;
    assert!(env.token_of(&settled).is_none(), "wrapping token removed");
    status_where(&env, "b", |s| {
        s.unwrapped == 1 && s.records.iter().any(|r| r.pod == "rcpt-0" && r.verified)
    })
    .await;
    // While the follow-up reconciles run, nothing looks the settled wrap up.
    cluster::holds_for(
        "no lookup after the receipt",
        Duration::from_secs(3),
        || async {
            let entries = env.bao.audit_entries();
            audit_requests_at(&entries[before.len()..], "sys/wrapping/lookup").count() == 0
        },
    )
    .await;
    let entries = env.bao.audit_entries();
    let after = &entries[before.len()..];
    let lookups = audit_requests_at(after, "sys/wrapping/lookup").count();
    assert_eq!(lookups, 0, "lookups after the receipt: {after:#?}");
    let revoked = revoked_accessors(after);
    assert!(
        !revoked.contains(&wrap_accessor) && !revoked.contains(&token_accessor),
        "revocations after the receipt: {revoked:?}"
    );
    assert!(
        env.bao
            .root_client()
            .accessor_is_live(&token_accessor)
            .await
            .unwrap(),
        "the pod's token stays live"
    );
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn the_expiry_probe_tells_an_unconsumed_wrap_from_a_consumed_one() {
    // No lookup is due before the probe (30 s period, 12 s wraps probed 2 s before expiry):
    // only the probe's revocation can tell what became of each wrap.
    let env = Env::start(Options {
        lookup_period: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    if env.skip_external("OpenBao's audit log") {
        return;
    }
    env.apply_binding("b", Env::spec("probe", "12s")).await;
    env.create_pod("probe-kept", "probe").await;
    env.create_pod("probe-taken", "probe").await;
    let (kept, _) = issued(&env, "b", "probe-kept").await;
    let (taken, taken_token) = issued(&env, "b", "probe-taken").await;
    // Consumed by plain `bao unwrap`: no agent, no receipt.
    let out = env.bao.cli(&taken_token, &["unwrap", "-format=json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inner: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    env.remember(inner["auth"]["client_token"].as_str().unwrap());
    let mark = env.bao.audit_entries().len();

    let settled = |pod: &'static str, phase: &'static str| {
        let env = &env;
        async move {
            eventually(&format!("{pod} {phase}"), T, || async {
                let s = env
                    .records("b")
                    .await
                    .into_iter()
                    .find(|s| ann(s).get("pod").map(String::as_str) == Some(pod))?;
                (ann(&s).get("phase").map(String::as_str) == Some(phase)).then_some(s)
            })
            .await
        }
    };
    let kept_now = settled("probe-kept", "Expired").await;
    let taken_now = settled("probe-taken", "Unwrapped").await;
    let (taken_ann, kept_ann) = (ann(&taken_now), ann(&kept_now));
    assert_eq!(
        taken_ann["message"], "consumed (seen at the expiry check)",
        "{taken_ann:?}"
    );
    assert_ne!(taken_ann.get("verified").map(String::as_str), Some("true"));
    assert!(
        kept_ann["message"].contains("did not unwrap"),
        "{kept_ann:?}"
    );

    let entries = env.bao.audit_entries();
    let after = &entries[mark..];
    assert_eq!(
        audit_requests_at(after, "sys/wrapping/lookup").count(),
        0,
        "a lookup ran before the probe"
    );
    // Each wrap was probed by asking Vault about its accessor (the answer vouches that it is
    // a wrap of the binding's role); only the one still live had to be revoked.
    let looked_up: Vec<String> = audit_requests_at(after, "auth/token/lookup-accessor")
        .filter_map(|e| {
            e["request"]["data"]["accessor"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let revoked = revoked_accessors(after);
    for wrap in [&kept, &taken] {
        let acc = &ann(wrap)["wrap-accessor"];
        assert!(looked_up.contains(acc), "{acc} not probed: {looked_up:?}");
    }
    assert!(
        revoked.contains(&ann(&kept)["wrap-accessor"]),
        "{revoked:?}"
    );
    assert!(
        !revoked.contains(&ann(&taken)["wrap-accessor"]),
        "{revoked:?}"
    );
    // 204: the unconsumed wrap's token is revoked too. "No token": the consumed one's is not.
    let root = env.bao.root_client();
    assert!(
        !root
            .accessor_is_live(&ann(&kept)["accessor"])
            .await
            .unwrap()
    );
    assert!(revoked.contains(&ann(&kept)["accessor"]));
    assert!(
        root.accessor_is_live(&ann(&taken)["accessor"])
            .await
            .unwrap(),
        "the consumed wrap's token was revoked"
    );
    assert!(!revoked.contains(&ann(&taken)["accessor"]));
    env.assert_no_leaks().await;
}

/// The token's remaining TTL, as Vault reports it by accessor (`None`: gone).
async fn ttl_of(env: &Env, accessor: &str) -> Option<u64> {
    let facts: Option<serde_json::Value> = env
        .bao
        .root_client()
        .lookup_accessor(accessor)
        .await
        .expect("lookup accessor");
    facts.map(|f| f["ttl"].as_u64().expect("ttl"))
}

/// Creates `pod` (selected by binding `b`), runs its agent (`run` names the run) on the wrap
/// issued to it and reports the receipt, then waits until Vault shows the held token renewed
/// past `renewed_past` seconds. Returns the receipt; its accessor is the held token's.
async fn pod_holding_a_renewed_token(
    env: &Env,
    pod: &str,
    app: &str,
    run: &str,
    renewed_past: u64,
) -> Receipt {
    env.create_pod(pod, app).await;
    let (_, wrap) = issued(env, "b", pod).await;
    let (receipt, code) = env.run_agent(&wrap, run);
    assert_eq!(code, 0, "{receipt:?}");
    let receipt = receipt.unwrap();
    let held = receipt.accessor.clone().unwrap();
    env.report_receipt(pod, Some(&receipt), 0).await;
    eventually("the held token renewed", T, || async {
        (ttl_of(env, &held).await? > renewed_past).then_some(())
    })
    .await;
    receipt
}

#[tokio::test]
async fn vault_ends_every_token_by_itself_while_the_operator_is_down() {
    // Grace 5 s and a 30 s renewal window: a token nobody took lives wrapTTL (10 s) + 5 s; a
    // held one is renewed to 30 s every 15 s.
    let mut env = Env::start(Options {
        token_life: Some((Duration::from_secs(5), Duration::from_secs(30))),
        ..Options::default()
    })
    .await;
    env.apply_binding("b", Env::spec("agent", "10s")).await;
    // Minted for wrapTTL + grace; once verified, renewed to the window.
    let receipt = pod_holding_a_renewed_token(&env, "taken", "agent", "taken", 15).await;
    let held = receipt.accessor.unwrap();
    assert!(env.audit_requests("auth/token/renew-accessor") >= 1);

    env.create_pod("untaken", "agent").await;
    let (untaken, _) = issued(&env, "b", "untaken").await;
    let unheld = ann(&untaken)["accessor"].clone();
    let minted = ttl_of(&env, &unheld).await.expect("alive");
    assert!((10..=15).contains(&minted), "minted for {minted} s");

    // The operator goes before anything expires; the held token's pod goes too.
    env.operator.take().unwrap().kill();
    env.delete_pod("taken").await;
    let stopped = std::time::Instant::now();
    let root = env.bao.root_client();
    eventually(
        "Vault ended both tokens",
        Duration::from_secs(45),
        || async {
            let live = root.accessor_is_live(&held).await.ok()?
                || root.accessor_is_live(&unheld).await.ok()?;
            (!live).then_some(())
        },
    )
    .await;
    let took = stopped.elapsed();
    assert!(
        took <= Duration::from_secs(31),
        "ended {took:?} after the operator stopped"
    );
    // Nobody revoked them: Vault ended them by their TTL.
    let revoked = revoked_accessors(&env.bao.audit_entries());
    assert!(
        !revoked.contains(&held) && !revoked.contains(&unheld),
        "revoked by someone: {revoked:?}"
    );
    env.restart_operator();
    eventually("records of the gone pods removed", T, || async {
        let left = env.records("b").await;
        left.iter()
            .all(|s| ann(s).get("pod").map(String::as_str) == Some("untaken"))
            .then_some(())
    })
    .await;
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn every_replica_down_for_thirty_minutes_costs_no_agent_its_token() {
    // The default window (75 m) and a 30 minute outage, both scaled down 90 times: a 50 s
    // window and 20 s away. The operator goes at the worst moment, just before a held token's
    // renewal was due (half a window after the last): the token has about 25 s left and must
    // outlive the outage, and the pod created meanwhile is served within 10 s of the return.
    let mut env = Env::start(Options {
        token_life: Some((Duration::from_secs(5), Duration::from_secs(50))),
        ..Options::default()
    })
    .await;
    env.apply_binding("b", Env::spec("agent", "30s")).await;
    let receipt = pod_holding_a_renewed_token(&env, "held", "agent", "held", 40).await;
    let held = receipt.accessor.unwrap();
    eventually(
        "the renewal almost due again",
        Duration::from_secs(40),
        || async { (ttl_of(&env, &held).await? <= 27).then_some(()) },
    )
    .await;
    env.operator.take().unwrap().kill();
    env.create_pod("late", "agent").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let left = ttl_of(&env, &held)
        .await
        .expect("the held token outlived the outage");
    assert!(left > 0, "{left} s left");
    env.restart_operator();
    let back = std::time::Instant::now();
    issued(&env, "b", "late").await;
    let served = back.elapsed();
    assert!(
        served <= Duration::from_secs(10),
        "served {served:?} after the return"
    );
    eventually("the held token renewed after the return", T, || async {
        (ttl_of(&env, &held).await? > 40).then_some(())
    })
    .await;
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn an_agent_restarted_before_it_unwrapped_keeps_its_token() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("web", "60s")).await;
    env.create_pod("web-0", "web").await;
    let (_, token) = issued(&env, "b", "web-0").await;
    // The first run failed before unwrapping (no receipt); the kubelet restarted it.
    env.report_receipt("web-0", None, 1).await;
    // The second run takes the still-valid wrap.
    let (receipt, code) = env.run_agent(&token, "second-run");
    assert_eq!(code, 0, "{receipt:?}");
    let receipt = receipt.unwrap();
    let held = receipt.accessor.clone().unwrap();
    env.report_receipt("web-0", Some(&receipt), 1).await;
    eventually("verified as start 1", T, || async {
        let s = env.records("b").await.pop()?;
        let a = ann(&s);
        (a.get("verified").map(String::as_str) == Some("true") && a["start"] == "1").then_some(())
    })
    .await;
    // The token in use is never revoked as "the previous start's", and nothing is re-minted.
    let root = env.bao.root_client();
    cluster::holds_for(
        "the held token stays live",
        Duration::from_secs(5),
        || async { root.accessor_is_live(&held).await.unwrap_or(false) },
    )
    .await;
    assert_eq!(env.minted_wraps().await.len(), 1);
    assert!(!revoked_accessors(&env.bao.audit_entries()).contains(&held));
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn an_agent_restarted_just_after_a_renewal_gets_its_new_token_renewed() {
    // Grace 5 s and a 60 s window: a new start's token lives wrapTTL (5 s) + 5 s unless it is
    // renewed, while the previous start's token was renewed seconds before and is not due
    // again for 30 s.
    let env = Env::start(Options {
        token_life: Some((Duration::from_secs(5), Duration::from_secs(60))),
        ..Options::default()
    })
    .await;
    env.apply_binding("b", Env::spec("web", "5s")).await;
    let first = pod_holding_a_renewed_token(&env, "web-0", "web", "first-run", 10).await;
    // The agent restarts (the kubelet counts it) and takes its new start's wrap.
    env.report_receipt("web-0", Some(&first), 1).await;
    let (secret, wrap) = issued(&env, "b", "web-0").await;
    assert_eq!(ann(&secret)["start"], "1");
    let (receipt, code) = env.run_agent(&wrap, "second-run");
    assert_eq!(code, 0, "{receipt:?}");
    let second = receipt.unwrap();
    let held = second.accessor.clone().unwrap();
    env.report_receipt("web-0", Some(&second), 1).await;
    // Renewed although its Secret's previous token was renewed moments ago, and alive past
    // the 10 s it was minted for.
    eventually("the new start's token renewed", T, || async {
        (ttl_of(&env, &held).await? > 10).then_some(())
    })
    .await;
    let root = env.bao.root_client();
    cluster::holds_for(
        "the new start's token stays live",
        Duration::from_secs(12),
        || async { root.accessor_is_live(&held).await.unwrap_or(false) },
    )
    .await;
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_held_token_revoked_behind_the_operators_back_is_reported_once() {
    // Grace 5 s and a 20 s window: the held token is renewed every 10 s.
    let env = Env::start(Options {
        token_life: Some((Duration::from_secs(5), Duration::from_secs(20))),
        ..Options::default()
    })
    .await;
    env.apply_binding("b", Env::spec("web", "10s")).await;
    let receipt = pod_holding_a_renewed_token(&env, "web-0", "web", "web-0", 15).await;
    let held = receipt.accessor.clone().unwrap();
    // A second pod's token, renewed all along: proof the renewals kept running below.
    let other = pod_holding_a_renewed_token(&env, "web-1", "web", "web-1", 15).await;
    let other = other.accessor.unwrap();
    // Someone revokes it behind the operator's back: its next renewal finds it gone.
    let root = env.bao.root_client();
    root.revoke_accessor(&held).await.unwrap();
    let gone = eventually("TokenGone on the pod", T, || async {
        let events = env.events_with_reason("TokenGone").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    let event = &gone[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let regarding = event.regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.name.as_deref(), Some("web-0"));
    assert!(event.note.as_deref().unwrap().contains(&held), "{event:?}");
    // Said once: a token Vault no longer knows is never renewed again, while the other pod's
    // is renewed at least twice more (every 10 s): the renewals ran all along.
    let renewals_of = |accessor: &str| {
        renewed_accessors(&env.bao.audit_entries())
            .iter()
            .filter(|a| *a == accessor)
            .count()
    };
    let (gone_renewals, other_renewals) = (renewals_of(&held), renewals_of(&other));
    eventually("the other token renewed twice more", T, || async {
        (renewals_of(&other) >= other_renewals + 2).then_some(())
    })
    .await;
    assert_eq!(renewals_of(&held), gone_renewals, "a gone token renewed");
    let gone = env.events_with_reason("TokenGone").await;
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(gone[0].series.is_none(), "repeated: {gone:?}");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn a_pod_slower_than_its_wrap_ttl_gets_a_fresh_wrap() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("slow", "5s")).await;
    // The pod's agent does not run before the first wrap expires (a slow image pull).
    env.create_pod("slow-0", "slow").await;
    let (first, _) = issued(&env, "b", "slow-0").await;
    let first_wrap = ann(&first)["wrap-accessor"].clone();
    assert!(
        !ann(&first).contains_key("replaced"),
        "the first wrap was missed"
    );
    let (fresh, token) = eventually(
        "a fresh wrap for the same start",
        Duration::from_secs(60),
        || async {
            let s = env.records("b").await.pop()?;
            let a = ann(&s);
            let fresh = a.get("phase")? == "Issued" && a.get("wrap-accessor")? != &first_wrap;
            fresh
                .then(|| (s.clone(), env.token_of(&s)))?
                .1
                .map(|t| (s, t))
        },
    )
    .await;
    assert_eq!(ann(&fresh)["start"], "0");
    assert_eq!(ann(&fresh)["replaced"], "1");
    // The first one expired unconsumed and was revoked with its token; nothing was tampered.
    let root = env.bao.root_client();
    assert!(!root.accessor_is_live(&first_wrap).await.unwrap());
    assert!(
        !root
            .accessor_is_live(&ann(&first)["accessor"])
            .await
            .unwrap()
    );
    // The agent finally runs and takes the fresh one.
    let (receipt, code) = env.run_agent(&token, "slow-0");
    assert_eq!(code, 0, "{receipt:?}");
    env.report_receipt("slow-0", receipt.as_ref(), 0).await;
    // A lookup may see the consumption before the receipt arrives: wait for the receipt's verdict.
    let status = status_where(&env, "b", |s| {
        s.unwrapped == 1 && s.records.iter().any(|r| r.verified)
    })
    .await;
    assert_eq!(status.tampered, 0);
    assert_eq!(status.records[0].replaced, 1);
    env.assert_no_leaks().await;
}
