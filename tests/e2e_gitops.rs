//! End-to-end: what GitOps tools make of a binding's status, on real objects from the API
//! server (the operator binary against a real control plane and OpenBao).
//!
//! - kstatus, the real library (`sigs.k8s.io/cli-utils/pkg/kstatus/status`, what Flux's
//!   health checks use), through the small Go program in `e2e/gitops/kstatus/`, built here
//!   into `target/gitops/kstatus`;
//! - the Argo CD health check `config/gitops/argocd-health.lua`, run in Lua 5.1 as Argo CD runs
//!   it (`e2e/gitops/argocd_health.py`, lupa);
//! - `kubectl wait --for=condition=Ready`.
//!
//! One environment walks a binding through every state: serving, wraps expired, refused for
//! a person to fix, waiting for Vault, not reconciled yet (created or changed while the
//! operator is down). The `argocd-cm` patch shipped beside the script is checked to embed it
//! verbatim, and applied to a real ConfigMap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cubbyhole::crd::AgentSecretBinding;
use cubbyhole_testkit::cluster::{Env, Options, create_namespace, eventually, issued};
use cubbyhole_testkit::paths::{repo, target_dir};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
/// The health script, and the `argocd-cm` key it is installed under.
const SCRIPT: &str = "config/gitops/argocd-health.lua";
const PATCH: &str = "config/gitops/argocd-cm-patch.yaml";
const KEY: &str = "resource.customizations.health.cubbyhole.dev_AgentSecretBinding";

/// Builds `e2e/gitops/kstatus` (its own module, pinned by its go.mod/go.sum) into
/// `target/gitops/kstatus`, as `e2e/controlplane/build.sh` builds Go code: `go` from PATH,
/// newer toolchains through the proxy (GOTOOLCHAIN=auto), the module read-only. Its output is
/// shown only if it fails. A cold module and build cache take about a minute; warm, a second.
fn build_kstatus() -> PathBuf {
    let out = target_dir().join("gitops/kstatus");
    let started = Instant::now();
    let result = Command::new("go")
        .args(["build", "-trimpath", "-buildvcs=false", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(repo().join("e2e/gitops/kstatus"))
        .env(
            "GOTOOLCHAIN",
            std::env::var("GOTOOLCHAIN").unwrap_or_else(|_| "auto".into()),
        )
        .env("GOFLAGS", "-mod=readonly")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go (Go is needed to build the kstatus checker, as for the control plane)");
    assert!(
        result.status.success(),
        "go build of e2e/gitops/kstatus failed:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    println!(
        "GITOPS kstatus checker built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    out
}

/// What a tool said about an object.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    status: String,
    message: String,
}

/// Runs `cmd` with `obj` as JSON on stdin and reads its one line of JSON.
fn ask(mut cmd: Command, obj: &Value) -> Verdict {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(obj.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one line of JSON");
    Verdict {
        status: v["status"].as_str().unwrap_or_default().to_string(),
        message: v["message"].as_str().unwrap_or_default().to_string(),
    }
}

/// The binding exactly as the API server serves it (not through the typed struct, which
/// would add defaults).
async fn object(env: &Env, name: &str) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<AgentSecretBinding>(&()),
    );
    serde_json::to_value(api.get(name).await.expect("get binding")).unwrap()
}

/// Waits until the binding's status describes its current generation and `pred` holds.
async fn settled(env: &Env, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("{name}: {what}"), T, || async {
        let obj = object(env, name).await;
        let observed = obj["status"]["observedGeneration"] == obj["metadata"]["generation"];
        (observed && pred(&obj)).then_some(obj)
    })
    .await
}

/// (kstatus, Argo CD) on `obj`, printed for the log.
fn verdicts(kstatus: &Path, case: &str, obj: &Value) -> (Verdict, Verdict) {
    let kstatus = ask(Command::new(kstatus), obj);
    let mut argo = Command::new("python3");
    argo.arg(repo().join("e2e/gitops/argocd_health.py"))
        .arg(repo().join(SCRIPT));
    let argo = ask(argo, obj);
    println!("GITOPS {case}: kstatus {kstatus:?}; Argo CD {argo:?}");
    (kstatus, argo)
}

/// Whether `kubectl wait --for=condition=Ready` succeeds within `timeout`.
fn kubectl_wait(env: &Env, name: &str, timeout: &str) -> bool {
    let out = Command::new("kubectl")
        .args(["wait", "--for=condition=Ready", "-n", &env.ns])
        .arg(format!("agentsecretbinding/{name}"))
        .arg(format!("--timeout={timeout}"))
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .output()
        .expect("run kubectl");
    println!(
        "GITOPS kubectl wait {name} ({timeout}): {} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out.status.success()
}

/// (status, reason, message) of condition `type_` in a raw object.
fn condition(obj: &Value, type_: &str) -> (String, String, String) {
    let s = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(|c| (s(c, "status"), s(c, "reason"), s(c, "message")))
        .unwrap_or_default()
}

fn is(obj: &Value, type_: &str, status: &str) -> bool {
    condition(obj, type_).0 == status
}

fn verdict(status: &str, message: &str) -> Verdict {
    Verdict {
        status: status.into(),
        message: message.into(),
    }
}

#[tokio::test]
async fn kstatus_argo_cd_and_kubectl_wait_read_every_state_of_a_binding() {
    let build = std::thread::spawn(build_kstatus);
    let mut env = Env::start(Options::default()).await;
    let ks = build.join().expect("kstatus checker built");
    let ks = ks.as_path();

    // Serving, and serving with wraps left to expire (5 s wrapTTL, nobody unwraps).
    env.apply_binding("serving", Env::spec("web", "60s")).await;
    env.apply_binding("expiring", Env::spec("exp", "5s")).await;
    env.create_pod("web-0", "web").await;
    env.create_pod("exp-0", "exp").await;
    issued(&env, "serving", "web-0").await;
    issued(&env, "expiring", "exp-0").await;

    // b. Ready=True: kstatus Current, Argo CD Healthy, kubectl wait returns at once.
    let obj = settled(&env, "serving", "Ready=True", |o| is(o, "Ready", "True")).await;
    let (k, a) = verdicts(ks, "serving", &obj);
    assert_eq!(k.status, "Current", "{k:?}");
    assert_eq!(a, verdict("Healthy", "serving 1 pod(s)"));
    assert!(
        kubectl_wait(&env, "serving", "30s"),
        "kubectl wait on Ready"
    );

    // f. Degraded=True (wraps expired unconsumed) while Ready stays True: Argo CD says
    // Degraded (a security event). kstatus knows no Degraded condition: Current.
    let obj = settled(&env, "expiring", "Degraded=True", |o| {
        is(o, "Degraded", "True")
    })
    .await;
    assert_eq!(condition(&obj, "Ready").0, "True");
    let (k, a) = verdicts(ks, "expiring", &obj);
    assert_eq!(k.status, "Current", "{k:?}");
    assert_eq!(a.status, "Degraded", "{a:?}");
    assert!(
        a.message.starts_with("WrapsExpired: ") && a.message.contains("expired unconsumed"),
        "{a:?}"
    );

    // c. A role the namespace may not use: Ready=False RoleNotAllowed, Stalled=True. kstatus
    // Failed with the Stalled message, Argo CD Degraded with the reason, kubectl wait fails.
    let mut refused = Env::spec("x", "60s");
    refused["vault"]["tokenRole"] = json!("admin-role");
    env.apply_binding("refused", refused).await;
    let obj = settled(&env, "refused", "Stalled=True", |o| {
        is(o, "Stalled", "True")
    })
    .await;
    let (ready, reason, ready_message) = condition(&obj, "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "RoleNotAllowed")
    );
    assert!(ready_message.contains("admin-role"), "{ready_message}");
    assert_eq!(condition(&obj, "Reconciling").0, "False");
    let (k, a) = verdicts(ks, "refused", &obj);
    assert_eq!(k, verdict("Failed", &condition(&obj, "Stalled").2));
    assert_eq!(
        a,
        verdict("Degraded", &format!("RoleNotAllowed: {ready_message}"))
    );
    assert!(!kubectl_wait(&env, "refused", "5s"), "Ready never comes");

    // d. Vault unavailable while a pod needs a wrap: Ready=False VaultUnavailable,
    // Reconciling=True (the operator retries by itself). kstatus InProgress, Argo CD
    // Progressing, both with the operator's message; both back to Current / Healthy after.
    if !env.skip_external("to pause OpenBao") {
        env.apply_binding("outage", Env::spec("o", "60s")).await;
        settled(&env, "outage", "Ready=True", |o| is(o, "Ready", "True")).await;
        env.bao.pause();
        env.create_pod("o-0", "o").await;
        let seen = eventually("outage: Reconciling=True", T, || async {
            let obj = object(&env, "outage").await;
            is(&obj, "Reconciling", "True").then_some(obj)
        })
        .await;
        let during = verdicts(ks, "outage", &seen);
        env.bao.resume();
        let (ready, reason, _) = condition(&seen, "Ready");
        assert_eq!(
            (ready.as_str(), reason.as_str()),
            ("False", "VaultUnavailable")
        );
        assert_eq!(condition(&seen, "Stalled").0, "False");
        let retrying = condition(&seen, "Reconciling").2;
        assert!(retrying.contains("retrying"), "{retrying}");
        assert_eq!(
            during,
            (
                verdict("InProgress", &retrying),
                verdict("Progressing", &retrying)
            )
        );
        issued(&env, "outage", "o-0").await;
        let obj = settled(&env, "outage", "Ready=True again", |o| {
            is(o, "Ready", "True") && is(o, "Reconciling", "False")
        })
        .await;
        let (k, a) = verdicts(ks, "outage, Vault back", &obj);
        assert_eq!(
            (k.status.as_str(), a.status.as_str()),
            ("Current", "Healthy")
        );
        // The serving binding's lookups failed too meanwhile: wait until it serves again.
        settled(&env, "serving", "Ready=True again", |o| {
            is(o, "Ready", "True")
        })
        .await;
    }

    // a. Created while the operator is down: no status at all. Argo CD Progressing and
    // kubectl wait times out; kstatus says Current: it takes a custom resource without
    // status, observedGeneration or conditions for one that needs none (its documented rule).
    env.operator.take().unwrap().kill();
    env.apply_binding("fresh", Env::spec("fresh", "60s")).await;
    let obj = object(&env, "fresh").await;
    assert!(
        obj["status"].is_null(),
        "no status before the operator: {obj}"
    );
    let (k, a) = verdicts(ks, "fresh, no status yet", &obj);
    assert_eq!(
        k.status, "Current",
        "kstatus's rule for a resource without status: {k:?}"
    );
    assert_eq!(
        a,
        verdict("Progressing", "waiting for the operator: no status yet")
    );
    assert!(!kubectl_wait(&env, "fresh", "3s"), "no Ready condition yet");

    // e. A spec change not observed yet: the old Ready=True is still there but describes
    // generation 1. kstatus InProgress, Argo CD Progressing, kubectl wait does not trust it.
    env.apply_binding("serving", Env::spec("web", "90s")).await;
    let obj = object(&env, "serving").await;
    assert_eq!(
        (
            &obj["metadata"]["generation"],
            &obj["status"]["observedGeneration"]
        ),
        (&json!(2), &json!(1))
    );
    assert_eq!(
        condition(&obj, "Ready").0,
        "True",
        "the stale verdict is still there"
    );
    let (k, a) = verdicts(ks, "serving, spec changed", &obj);
    assert_eq!(
        k,
        verdict(
            "InProgress",
            "AgentSecretBinding generation is 2, but latest observed generation is 1"
        )
    );
    assert_eq!(
        a,
        verdict(
            "Progressing",
            "waiting for the operator: generation 2 not observed yet (status describes 1)"
        )
    );
    assert!(
        !kubectl_wait(&env, "serving", "3s"),
        "Ready describes generation 1"
    );

    // The operator back: both reconciled, Current / Healthy, kubectl wait returns.
    env.restart_operator();
    for name in ["fresh", "serving"] {
        let obj = settled(&env, name, "Ready=True", |o| is(o, "Ready", "True")).await;
        let (k, a) = verdicts(ks, &format!("{name}, reconciled"), &obj);
        assert_eq!(
            (k.status.as_str(), a.status.as_str()),
            ("Current", "Healthy")
        );
        assert!(kubectl_wait(&env, name, "30s"));
    }

    // The argocd-cm patch, as the README installs it, onto a real ConfigMap.
    if !env.external {
        create_namespace(&env.client, "argocd").await;
        let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "argocd");
        let cm = serde_json::from_value(json!({
            "metadata": {"name": "argocd-cm"},
            "data": {"url": "https://argocd.example"},
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        let out = Command::new("kubectl")
            .args([
                "-n",
                "argocd",
                "patch",
                "configmap",
                "argocd-cm",
                "--type",
                "merge",
            ])
            .arg("--patch-file")
            .arg(repo().join(PATCH))
            .env("KUBECONFIG", &env.cluster.kubeconfig)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = cms.get("argocd-cm").await.unwrap().data.unwrap();
        let script = std::fs::read_to_string(repo().join(SCRIPT)).unwrap();
        assert_eq!(data.get(KEY), Some(&script));
        assert_eq!(
            data["url"], "https://argocd.example",
            "a patch, not a replacement"
        );
    }
    env.assert_no_leaks().await;
}

/// The snippet the README installs embeds exactly `argocd-health.lua`, under the key Argo CD
/// reads for this group and kind, and nothing else.
#[test]
fn argocd_cm_patch_embeds_exactly_the_health_script() {
    let text = std::fs::read_to_string(repo().join(PATCH)).unwrap();
    let patch: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(patch["apiVersion"].as_str(), Some("v1"));
    assert_eq!(patch["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(patch["metadata"]["name"].as_str(), Some("argocd-cm"));
    let data = patch["data"].as_mapping().expect("data");
    assert_eq!(data.len(), 1, "only the health check: {data:?}");
    let script = std::fs::read_to_string(repo().join(SCRIPT)).unwrap();
    let embedded = patch["data"][KEY].as_str().expect("the health check's key");
    let differs = embedded
        .lines()
        .zip(script.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(embedded.lines().count().min(script.lines().count()));
    assert!(
        embedded == script,
        "{PATCH} does not embed {SCRIPT} verbatim (first difference at script line {}): \
         regenerate it (README.md beside them says how)",
        differs + 1
    );
}
