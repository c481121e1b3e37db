//! End-to-end: one tenant's namespace at its worst cannot starve, slow or blind another's.
//! On the real API server and OpenBao, a noisy namespace holds hundreds of bindings, labelled
//! Secrets of ~0.9 MiB, pods with ~0.8 MiB of labels selected by a binding, a binding Vault
//! refuses over many pods and an agent crash-looping before it unwraps. Beside it, for bounded
//! totals, five tenant namespaces each hold Secrets labelled as records of their bindings:
//! many of 60 KiB (kept by the operator as stubs) and some just under its 16 KiB record limit
//! (kept whole: the worst a tenant can make it cache), and bindings with the largest pod
//! selector the CRD allows (16 labels of the longest keys and values, 16 expressions of 64
//! values) selecting no pod. Meanwhile a quiet namespace's new pods get their wraps, promptly,
//! and the operator stays under 128 MiB. `CUBBYHOLE_NOISY=full` (`just bench-noisy`) runs it
//! at the scale of issue 22's goal: 2,000 bindings, 300 Secrets, 150 big-label pods, and per
//! tenant namespace 600 + 100 Secrets and 200 largest-selector bindings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cubbyhole::crd::AgentSecretBinding;
use cubbyhole::record::cached::MAX_RECORD_BYTES;
use cubbyhole_testkit::cluster::webhook::percentile;
use cubbyhole_testkit::cluster::{Env, Options, create_namespace, eventually};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const REFUSED_PODS: usize = 50;
const QUIET_PODS: usize = 20;
/// How often the crash-looping agent restarts (the kubelet's back-off starts at 10 s: this is
/// harsher than any real crash loop).
const CRASH_EVERY: Duration = Duration::from_secs(2);

/// How much noise: the suite's size, or the goal's (`CUBBYHOLE_NOISY=full`).
struct Scale {
    bindings: usize,
    big_secrets: usize,
    big_pods: usize,
    /// Pods the noisy namespace starts at once, one per binding, as the quiet pods start.
    burst: usize,
    /// Tenant namespaces beside the noisy one, each holding the Secrets and bindings below.
    tenant_namespaces: usize,
    /// Secrets of 60 KiB labelled as records of one of their namespace's bindings.
    record_secrets_per_ns: usize,
    /// Secrets labelled likewise, just under the operator's record limit (cached whole).
    near_limit_secrets_per_ns: usize,
    /// Bindings with the largest pod selector allowed, selecting no pod.
    selector_bindings_per_ns: usize,
}

impl Scale {
    fn from_env() -> Self {
        if std::env::var("CUBBYHOLE_NOISY").as_deref() == Ok("full") {
            Self {
                bindings: 2000,
                big_secrets: 300,
                big_pods: 150,
                burst: 1000,
                tenant_namespaces: 5,
                record_secrets_per_ns: 600,
                near_limit_secrets_per_ns: 100,
                selector_bindings_per_ns: 200,
            }
        } else {
            Self {
                bindings: 500,
                big_secrets: 60,
                big_pods: 40,
                burst: 300,
                tenant_namespaces: 5,
                record_secrets_per_ns: 60,
                near_limit_secrets_per_ns: 20,
                selector_bindings_per_ns: 4,
            }
        }
    }
}

/// About `bytes` of labels: many keys, each value the longest a label value may be.
fn big_labels(bytes: usize) -> BTreeMap<String, String> {
    let value = "v".repeat(63);
    (0..bytes / 80)
        .map(|i| (format!("noise.example/k{i:06}"), value.clone()))
        .collect()
}

/// The largest pod selector the CRD allows, selecting no pod: 16 labels with the longest keys
/// (317 characters) and values (63), and 16 `In` expressions (keys as long) of 64 values.
fn largest_selector() -> serde_json::Value {
    let key = |c: char, i: usize| {
        let name = format!("{c}{i:02}").repeat(21);
        format!("{}.example/{name}", "p".repeat(245))
    };
    let labels: serde_json::Map<String, serde_json::Value> = (0..16)
        .map(|i| (key('k', i), json!(format!("v{i:02}").repeat(21))))
        .collect();
    let values: Vec<String> = (0..64).map(|v| format!("v{v:03}")).collect();
    let expressions: Vec<serde_json::Value> = (0..16)
        .map(|i| json!({"key": key('e', i), "operator": "In", "values": values}))
        .collect();
    json!({"matchLabels": labels, "matchExpressions": expressions})
}

/// Applies binding `name` (server-side apply, as `e2e`).
async fn apply(bindings: Api<AgentSecretBinding>, name: String, spec: serde_json::Value) {
    let b = json!({
        "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
        "metadata": {"name": name}, "spec": spec,
    });
    bindings
        .patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&b))
        .await
        .expect("apply binding");
}

fn gated_pod(name: &str, labels: BTreeMap<String, String>) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "schedulingGates": [{"name": "cubbyhole.dev/e2e-no-kubelet"}],
            "containers": [{"name": "agent", "image": "agent"}],
        }
    }))
    .unwrap()
}

/// Creates Secret `name` with `labels` holding `blob`.
async fn create_secret(secrets: &Api<Secret>, name: &str, labels: serde_json::Value, blob: &str) {
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "stringData": {"blob": blob},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &s)
        .await
        .expect("create Secret");
}

/// The operator's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_noisy_namespace_cannot_starve_slow_or_blind_its_neighbours() {
    let env = Env::start(Options::default()).await;
    if env.skip_external("OpenBao's audit log and the operator's process") {
        return;
    }
    let scale = Scale::from_env();
    let noisy = format!("{}-noisy", env.ns);
    create_namespace(&env.client, &noisy).await;
    let pid = env.op().pid();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    let bindings: Api<AgentSecretBinding> = Api::namespaced(env.client.clone(), &noisy);
    // Hundreds of bindings selecting nothing, one selecting the big pods, one Vault refuses.
    stream::iter(0..scale.bindings)
        .for_each_concurrent(16, |i| {
            apply(
                bindings.clone(),
                format!("noise-{i}"),
                Env::spec(&format!("none-{i}"), "60s"),
            )
        })
        .await;
    apply(bindings.clone(), "big".into(), Env::spec("big", "60s")).await;
    let mut refused = Env::spec("refused", "60s");
    refused["vault"]["policies"] = json!(["root"]);
    apply(bindings.clone(), "refused".into(), refused).await;
    let mut crashy = Env::spec("crashy", "60s");
    crashy["agentContainer"] = json!("agent");
    apply(bindings.clone(), "crashy".into(), crashy).await;
    // Labelled Secrets of ~0.9 MiB, pods with ~0.9 MiB of labels, pods Vault refuses tokens for.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &noisy);
    let blob = "x".repeat(900 * 1024);
    stream::iter(0..scale.big_secrets)
        .for_each_concurrent(4, |i| {
            let secrets = secrets.clone();
            let blob = blob.clone();
            async move {
                let labels = json!({"app.kubernetes.io/managed-by": "cubbyhole"});
                create_secret(&secrets, &format!("big-{i}"), labels, &blob).await;
            }
        })
        .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &noisy);
    let big_pods = scale.big_pods;
    stream::iter(0..big_pods + REFUSED_PODS)
        .for_each_concurrent(4, |i| {
            let pods = pods.clone();
            async move {
                let pod = if i < big_pods {
                    let mut labels = big_labels(800 * 1024);
                    labels.insert("app".into(), "big".into());
                    gated_pod(&format!("big-{i}"), labels)
                } else {
                    gated_pod(
                        &format!("refused-{i}"),
                        [("app".into(), "refused".into())].into(),
                    )
                };
                pods.create(&PostParams::default(), &pod)
                    .await
                    .expect("create pod");
            }
        })
        .await;
    // Bounded totals: tenant namespaces each with bindings of the largest selector allowed
    // and Secrets labelled as their records, 60 KiB ones (stubs to the operator) and ones just
    // under its record limit (cached whole).
    let tenants: Vec<String> = (0..scale.tenant_namespaces)
        .map(|t| format!("{noisy}-t{t}"))
        .collect();
    for tenant in &tenants {
        create_namespace(&env.client, tenant).await;
    }
    let mut selecting_none = Env::spec("none", "60s");
    selecting_none["podSelector"] = largest_selector();
    let each_tenant = |n: usize| {
        stream::iter(
            tenants
                .iter()
                .flat_map(move |t| (0..n).map(move |i| (t, i))),
        )
    };
    each_tenant(scale.selector_bindings_per_ns)
        .for_each_concurrent(8, |(tenant, i)| {
            let api = Api::namespaced(env.client.clone(), tenant);
            apply(api, format!("sel-{i}"), selecting_none.clone())
        })
        .await;
    let record_blob = "r".repeat(60 * 1024);
    // The operator measures a Secret as JSON, its data in base64: 3 bytes of data take 4, and
    // 1 KiB is left for the metadata.
    let near_blob = "n".repeat((MAX_RECORD_BYTES - 1024) / 4 * 3);
    let records = scale.record_secrets_per_ns;
    each_tenant(records + scale.near_limit_secrets_per_ns)
        .for_each_concurrent(8, |(tenant, i)| {
            let secrets: Api<Secret> = Api::namespaced(env.client.clone(), tenant);
            let (name, blob) = if i < records {
                (format!("record-{i}"), &record_blob)
            } else {
                (format!("near-{i}"), &near_blob)
            };
            let binding = format!("sel-{}", i % scale.selector_bindings_per_ns);
            async move {
                let labels = json!({"app.kubernetes.io/managed-by": "cubbyhole",
                    "cubbyhole.dev/binding": binding});
                create_secret(&secrets, &name, labels, blob).await;
            }
        })
        .await;
    // An agent that crashes before it unwraps and is restarted every few seconds.
    pods.create(
        &PostParams::default(),
        &gated_pod("crashy", [("app".into(), "crashy".into())].into()),
    )
    .await
    .expect("create pod");
    let restarts = Arc::new(AtomicU64::new(0));
    let crash_loop = {
        let (pods, restarts) = (pods.clone(), restarts.clone());
        tokio::spawn(async move {
            loop {
                let n = restarts.fetch_add(1, Ordering::Relaxed) + 1;
                let status = json!({"status": {"phase": "Running", "containerStatuses": [{
                    "name": "agent", "image": "agent", "imageID": "", "ready": false,
                    "restartCount": n,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                }]}});
                let _ = pods
                    .patch_status("crashy", &PatchParams::default(), &Patch::Merge(&status))
                    .await;
                tokio::time::sleep(CRASH_EVERY).await;
            }
        })
    };
    println!(
        "noise in place after {:?}; operator peak RSS so far {:.1} MiB",
        started.elapsed(),
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    // Meanwhile a new binding in the quiet namespace and its new pods get their wraps, while
    // the noisy namespace starts a burst of pods, one for each of its first bindings: hundreds
    // of rounds that each mint, queued at once. The quiet rounds take the next free reconcile
    // slot ahead of them (fair shares).
    let burst = {
        let pods = pods.clone();
        let n = scale.burst;
        tokio::spawn(async move {
            stream::iter(0..n)
                .for_each_concurrent(16, |i| {
                    let pods = pods.clone();
                    async move {
                        let labels = [("app".into(), format!("none-{i}"))].into();
                        let pod = gated_pod(&format!("burst-{i}"), labels);
                        pods.create(&PostParams::default(), &pod)
                            .await
                            .expect("create pod");
                    }
                })
                .await;
        })
    };
    env.apply_binding("quiet", Env::spec("quiet", "60s")).await;
    let mut latencies = vec![];
    for i in 0..QUIET_PODS {
        let name = format!("quiet-{i}");
        let created = Instant::now();
        env.create_pod(&name, "quiet").await;
        eventually(
            &format!("{name} issued"),
            Duration::from_secs(60),
            || async {
                let s = env.records("quiet").await.into_iter().find(|s| {
                    cubbyhole_testkit::cluster::ann(s)
                        .get("pod")
                        .map(String::as_str)
                        == Some(name.as_str())
                })?;
                env.token_of(&s)
            },
        )
        .await;
        latencies.push(created.elapsed());
    }
    println!("quiet latencies: {latencies:?}");
    burst.await.unwrap();
    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    // Give the noisy namespace a minute of retries to show what it costs Vault.
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(started.elapsed())).await;
    sampler.abort();
    crash_loop.abort();
    let crashes = restarts.load(Ordering::Relaxed) as usize;
    let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let logins = env.audit_requests("auth/kubernetes/login");
    let mints = env.audit_requests("auth/token/create/");
    println!(
        "NOISY quiet pods: p50 {p50:?}, p99 {p99:?}; operator peak RSS {peak_mib:.1} MiB; \
         over {minutes:.1} min: {logins} logins, {mints} mint requests \
         ({} bindings, {} big Secrets, {big_pods} big-label pods, {REFUSED_PODS} refused \
         pods, {crashes} agent restarts, a burst of {} pods, {QUIET_PODS} quiet pods; \
         {} tenant namespaces of {} Secrets of 60 KiB, {} near the record limit and {} \
         largest-selector bindings each: {} Secrets, {} bindings)",
        scale.bindings,
        scale.big_secrets,
        scale.burst,
        scale.tenant_namespaces,
        scale.record_secrets_per_ns,
        scale.near_limit_secrets_per_ns,
        scale.selector_bindings_per_ns,
        tenants.len() * (scale.record_secrets_per_ns + scale.near_limit_secrets_per_ns),
        tenants.len() * scale.selector_bindings_per_ns,
    );
    // The noise happened: the operator saw every oversized object and Vault refused the mints.
    let metrics = env.op().get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let counted = |name: &str, ns: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("namespace=\"{ns}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        counted("cubbyhole_oversized_pods_ignored_total", &noisy) >= big_pods as f64,
        "{metrics:.2000}"
    );
    assert!(
        counted("cubbyhole_oversized_secrets_ignored_total", &noisy) >= scale.big_secrets as f64
    );
    // The tenants' noise too: their 60 KiB Secrets were seen as oversized, while the ones near
    // the limit measure as the operator measures them just under it (kept whole).
    for tenant in &tenants {
        let oversized = counted("cubbyhole_oversized_secrets_ignored_total", tenant);
        assert!(
            oversized >= records as f64,
            "{tenant}: {oversized} oversized"
        );
        let secrets: Api<Secret> = Api::namespaced(env.client.clone(), tenant);
        let mut near = secrets.get(&format!("near-{records}")).await.unwrap();
        near.metadata.managed_fields = None;
        let bytes = serde_json::to_vec(&near).unwrap().len();
        assert!(
            (MAX_RECORD_BYTES - 1024..=MAX_RECORD_BYTES).contains(&bytes),
            "{tenant}: a Secret near the limit measures {bytes} bytes"
        );
    }
    let refused = bindings.get("refused").await.unwrap();
    let ready = refused
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .expect("a Ready condition");
    assert_eq!(ready.reason, "VaultRefused", "{ready:?}");
    // The operator never restarted, stayed small, and the quiet pods were served promptly.
    assert!(env.op().get("/healthz").is_some(), "the operator is up");
    assert!(peak_mib < 128.0, "peak RSS {peak_mib:.1} MiB");
    // Not starved, not even slowed much: the quiet namespace's rounds take the next free
    // reconcile slot ahead of the noisy backlog (fair shares). Measured here: p99 0.5-1 s with
    // fair shares, 4.7 s without (the first quiet pod waited for the burst). The goal, p99 <
    // 2 s, is `just bench-noisy`'s figure; the suite allows 3 s on a shared CI machine.
    assert!(p99 < Duration::from_secs(3), "quiet p99 {p99:?}");
    assert!(p50 < Duration::from_secs(1), "quiet p50 {p50:?}");
    // Pods with huge labels are selected by nothing: no record, no mint for them.
    let big_records = secrets
        .list(&kube::api::ListParams::default().labels("cubbyhole.dev/binding=big"))
        .await
        .unwrap();
    assert!(big_records.items.is_empty());
    // Vault saw one login and, for the refused pods, a bounded number of attempts (failed
    // mints back off, doubling from 5 s).
    assert!(logins <= 2, "{logins} logins");
    assert!(
        mints <= QUIET_PODS + REFUSED_PODS * 6 + 2 + scale.burst,
        "{mints} mint requests in {minutes:.1} min"
    );
    // The crash loop happened, and cost one wrap: an agent that never got to unwrap keeps its
    // start whatever its restarts (a new start needs the previous wrap taken).
    assert!(crashes >= 5, "{crashes} restarts");
    let crashy = secrets
        .list(&kube::api::ListParams::default().labels("cubbyhole.dev/binding=crashy"))
        .await
        .unwrap();
    let start: u64 = crashy
        .items
        .first()
        .and_then(|s| {
            cubbyhole_testkit::cluster::ann(s)
                .get("start")?
                .parse()
                .ok()
        })
        .expect("the crash-looping pod has a record");
    assert_eq!(crashy.items.len(), 1);
    assert!(start <= 2, "start {start} after {crashes} restarts");
    env.assert_no_leaks().await;
}
