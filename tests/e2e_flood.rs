//! End-to-end: a tenant flooding the operator's one TLS listener (admission webhook and request
//! endpoint) cannot take the operator down, nor slow or starve another namespace. First, before
//! the flood, 32 asks arrive at once with one fresh valid token of a second pod of the tenant's
//! (8 from each of 127.0.0.3 to 127.0.0.6, so that all 32 are handled at once): they cost
//! exactly one TokenReview. Then from source address 127.0.0.2, all at once: hundreds of idle
//! TLS connections (half of them stalled in a request's headers), AdmissionReviews over the
//! 2 MiB body limit, a thousand asks with garbage bearer tokens, a hundred asks with one valid
//! token of the tenant's own pod, and, until the quiet pods below are created, 40 connections
//! at a time POSTing AdmissionReviews of 100 000 bytes one byte every 500 ms. Meanwhile a quiet
//! namespace creates opted-in pods through the real webhook and each asks for its wrap.
//!
//! Proven: the operator stays small (peak RSS < 128 MiB) and keeps its Lease; the quiet pods are
//! admitted (p99 < 1 s) and served (p99 < 2 s) promptly, each exactly once, while the flooding
//! source is held to its share of the requests handled at once (refusals counted as
//! `source_in_flight`); every slow body is answered 408 or 503, none admitted; garbage costs no
//! TokenReview and the tenant's token one at most (at most two beyond the quiet pods' asks);
//! every oversized body is answered 413; no source holds more connections than its share, and
//! none is kept idle past the header-read timeout. `CUBBYHOLE_FLOOD=full` floods at five to ten
//! times the suite's size.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cubbyhole::agent::ask::Asker;
use cubbyhole::config::{ListenerLimits, OperatorConfig};
use cubbyhole::crd::AgentSecretBinding;
use cubbyhole::request::protocol::{AUDIENCE, Refusal, WRAP_PATH, WRAPPING_TOKEN_FIELD, reason};
use cubbyhole_testkit::cluster::webhook::{
    agent_pod, injected_ca, is_injected, percentile, pod_creation_review, webhook_port,
};
use cubbyhole_testkit::cluster::{
    Env, LEADER_ARGS, OPERATOR_NS, Options, create_namespace, eventually,
};
use cubbyhole_testkit::jwt::base64url;
use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const T: Duration = Duration::from_secs(30);
/// The quiet namespace's binding and its pods' `app` label.
const QUIET: &str = "quiet";
/// The flooding tenant's binding and its pod's `app` label.
const NOISY: &str = "noisy";
/// Where every flood connection comes from (all of 127/8 is loopback).
const FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The webhook's body limit.
const BODY_LIMIT: usize = 2 << 20;
/// The operator's leader-election Lease (`--lease-name` default, src/controller/wiring.rs).
const LEASE: &str = "cubbyhole-operator";
/// Flood requests in flight at once per kind of request.
const WORKERS: usize = 64;
/// How long a flood request may take to be answered, whatever it is told, before the test
/// gives up on it.
const FLOOD_DEADLINE: Duration = Duration::from_secs(150);
/// Pause of a flooder before it retries a dropped or 503 request (it does not honour
/// Retry-After).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait for one answer or one connection.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// An idle connection still open after this long is given up on (and fails the test).
const IDLE_GIVE_UP: Duration = Duration::from_secs(40);

/// How hard the flood is: the suite's size, or `CUBBYHOLE_FLOOD=full`.
#[derive(Clone, Copy, Debug)]
struct Scale {
    idle_connections: usize,
    oversized_reviews: usize,
    garbage_asks: usize,
    noisy_asks: usize,
    /// Slow-body POSTs to /mutate-pods trickling at once.
    slow_bodies: usize,
    quiet_pods: usize,
    /// A quiet pod is created this often once the flood starts.
    quiet_every: Duration,
}

impl Scale {
    fn from_env() -> Self {
        if std::env::var("CUBBYHOLE_FLOOD").as_deref() == Ok("full") {
            Self {
                idle_connections: 2000,
                oversized_reviews: 50,
                garbage_asks: 10_000,
                noisy_asks: 1000,
                slow_bodies: 96,
                quiet_pods: 50,
                quiet_every: Duration::from_millis(500),
            }
        } else {
            Self {
                idle_connections: 400,
                oversized_reviews: 10,
                garbage_asks: 1000,
                noisy_asks: 100,
                slow_bodies: 40,
                quiet_pods: 10,
                quiet_every: Duration::from_secs(1),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_flooding_the_listener_cannot_take_the_operator_down() {
    let scale = Scale::from_env();
    let (mut env, port, ca) = env_leading_with_endpoint().await;
    if env.skip_external(
        "the API server calling a webhook on 127.0.0.1, the operator's process and a free Lease",
    ) {
        return;
    }
    let limits = listener_limits(&env);
    let noisy_ns = format!("{}-noisy", env.ns);
    let noisy_token = noisy_tenant(&env, &noisy_ns).await;
    env.remember(&noisy_token);
    let target = FloodTarget::new(port, &ca);

    // Before the flood, on its own: one fresh token asked with 32 times at once.
    let second_token = noisy_pod_token(&env, &noisy_ns).await;
    env.remember(&second_token);
    let stampede_before = Counters::read(env.op().port);
    let stampede = one_token_at_once(&target, &second_token).await;
    let stampede_after = Counters::read(env.op().port);
    for wrap in &stampede.wraps {
        env.remember(wrap);
    }
    let stampede_grew = |name: &str, label: &str| {
        stampede_after.value(name, label) - stampede_before.value(name, label)
    };
    let stampede_reviews =
        |result: &str| stampede_grew("cubbyhole_token_reviews_total", &label("result", result));
    let stampede_refused =
        |why: &str| stampede_grew("cubbyhole_listener_refused_total", &label("reason", why));
    println!(
        "STAMPEDE {STAMPEDE_ASKS} asks at once with one new token: TokenReviews sent {} cached {} \
         source_limited {}; refused source_in_flight {} in_flight {}; answers {:?}",
        stampede_reviews("sent"),
        stampede_reviews("cached"),
        stampede_reviews("source_limited"),
        stampede_refused("source_in_flight"),
        stampede_refused("in_flight"),
        stampede.answers,
    );
    assert_eq!(
        stampede.answers.unanswered, 0,
        "stampede asks never answered: {:?}",
        stampede.answers
    );
    // The pod's burst of wraps, then 429; or 503 when another of its asks won the record.
    assert!(
        stampede
            .answers
            .by_status
            .keys()
            .all(|s| [200, 429, 503].contains(s))
            && stampede.answers.by_status.contains_key(&200),
        "{:?}",
        stampede.answers
    );
    assert_eq!(
        stampede_refused("source_in_flight") + stampede_refused("in_flight"),
        0.0,
        "all {STAMPEDE_ASKS} asks are handled at once"
    );
    assert_eq!(
        stampede_reviews("sent"),
        1.0,
        "{STAMPEDE_ASKS} asks at once with one new token cost one TokenReview"
    );

    let leader_before = lease(&env).await;
    let before = Counters::read(env.op().port);
    let watch = OperatorWatch::start(env.op().pid(), env.op().port);
    let quiet_done = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn(flood(
        target,
        scale,
        noisy_token,
        noisy_ns.clone(),
        quiet_done.clone(),
    ));
    let quiet: Vec<Result<QuietPod, String>> =
        futures::future::join_all((0..scale.quiet_pods).map(|i| {
            let (env, ca) = (&env, ca.as_str());
            async move {
                tokio::time::sleep(Duration::from_millis(500) + scale.quiet_every * i as u32).await;
                quiet_pod_created_and_served(env, port, ca).await
            }
        }))
        .await;
    quiet_done.store(true, Ordering::SeqCst);
    let flood = flooding.await.expect("the flood ran");
    let (peak_rss_kib, peak_connections) = watch.stop();
    let after = Counters::read(env.op().port);
    let leader_after = lease(&env).await;
    for wrap in &flood.noisy_wraps {
        env.remember(wrap);
    }

    let quiet_pods: Vec<&QuietPod> = quiet.iter().filter_map(|q| q.as_ref().ok()).collect();
    let created: Vec<Duration> = quiet_pods.iter().map(|q| q.created).collect();
    let served: Vec<Duration> = quiet_pods.iter().map(|q| q.served).collect();
    let quiet_retries: usize = quiet_pods.iter().map(|q| q.retries).sum();
    let grew = |name: &str, label: &str| after.value(name, label) - before.value(name, label);
    let reviews = |result: &str| grew("cubbyhole_token_reviews_total", &label("result", result));
    let refused = |why: &str| grew("cubbyhole_listener_refused_total", &label("reason", why));
    let peak_rss_mib = peak_rss_kib as f64 / 1024.0;
    let longest_idle = flood.idle.held.iter().max().copied().unwrap_or_default();
    println!(
        "FLOOD {scale:?} for {:?}: operator peak RSS {peak_rss_mib:.1} MiB, peak open \
         connections {peak_connections}; quiet pods created p50 {:?} p99 {:?}, served p50 {:?} \
         p99 {:?} ({quiet_retries} retries); TokenReviews sent {} cached {} malformed {} \
         source_limited {}; refused: connections {} source_connections {} in_flight {} \
         source_in_flight {} body_too_large {}; flooder saw: idle {} held (longest \
         {longest_idle:?}, at most {} at once) {} refused; oversized {:?}; garbage {:?}; noisy \
         {:?}; slow bodies {:?}",
        flood.took,
        percentile(&created, 50.0),
        percentile(&created, 99.0),
        percentile(&served, 50.0),
        percentile(&served, 99.0),
        reviews("sent"),
        reviews("cached"),
        reviews("malformed"),
        reviews("source_limited"),
        refused("connections"),
        refused("source_connections"),
        refused("in_flight"),
        refused("source_in_flight"),
        refused("body_too_large"),
        flood.idle.held.len(),
        flood.idle.peak_open,
        flood.idle.refused,
        flood.oversized,
        flood.garbage,
        flood.noisy,
        flood.slow,
    );

    // The operator is up, still leads, and stayed small.
    assert!(
        env.operator.as_mut().unwrap().exited().is_none(),
        "the operator exited during the flood"
    );
    assert_eq!(env.op().get("/healthz").map(|(c, _)| c), Some(200));
    assert_eq!(
        leader_after, leader_before,
        "the leader's Lease (holder, transitions) changed during the flood"
    );
    assert!(peak_rss_mib < 128.0, "peak RSS {peak_rss_mib:.1} MiB");

    // The quiet namespace was admitted and served promptly, each pod exactly once.
    let failed: Vec<&String> = quiet.iter().filter_map(|q| q.as_ref().err()).collect();
    assert!(failed.is_empty(), "quiet pods not served: {failed:?}");
    assert!(
        percentile(&created, 99.0) < Duration::from_secs(1),
        "quiet pod creation through the webhook: {created:?}"
    );
    assert!(
        percentile(&served, 99.0) < Duration::from_secs(2),
        "quiet wraps: {served:?}"
    );
    let minted = env.minted_wraps_by_pod().await;
    for q in &quiet_pods {
        let mints = minted.iter().filter(|(pod, _, _)| *pod == q.name).count();
        assert_eq!(mints, 1, "{} was minted {mints} wraps", q.name);
    }

    // The flooding source was held to its share of the requests handled at once, and its slow
    // bodies were cut off, none admitted.
    assert!(
        refused("source_in_flight") > 0.0,
        "the flooding source never waited past its share of the requests in flight"
    );
    assert!(
        flood.slow.answers.by_status.values().sum::<usize>() > 0
            && flood
                .slow
                .answers
                .by_status
                .keys()
                .all(|s| [408, 503].contains(s)),
        "slow bodies are answered 408 or 503: {:?}",
        flood.slow
    );

    // Garbage cost no TokenReview; the one valid noisy token one (asks arriving together wait
    // for the first one's review), and one of slack (a review may fail and be retried).
    let quiet_asks = scale.quiet_pods as f64;
    assert!(
        reviews("sent") <= quiet_asks + 2.0,
        "{} TokenReviews sent for {quiet_asks} quiet asks",
        reviews("sent")
    );
    assert!(
        reviews("malformed") >= scale.garbage_asks as f64,
        "{} malformed tokens counted for {} garbage asks",
        reviews("malformed"),
        scale.garbage_asks
    );
    assert_eq!(flood.garbage.unanswered, 0, "garbage asks never answered");
    assert_eq!(
        flood.garbage.by_status.keys().collect::<Vec<_>>(),
        [&401],
        "garbage asks are refused as unauthenticated: {:?}",
        flood.garbage
    );
    assert!(
        flood
            .garbage
            .by_reason
            .keys()
            .all(|r| r == reason::NO_TOKEN || r == reason::NOT_AUTHENTICATED),
        "{:?}",
        flood.garbage.by_reason
    );
    // The tenant's own pod got its burst of wraps, then 429.
    assert_eq!(flood.noisy.unanswered, 0, "noisy asks never answered");
    assert!(
        flood.noisy.by_status.keys().all(|s| [200, 429].contains(s)),
        "{:?}",
        flood.noisy
    );
    let refills = flood.took.as_secs() as usize / 10;
    assert!(
        !flood.noisy_wraps.is_empty() && flood.noisy_wraps.len() <= 3 + refills,
        "the noisy pod was served {} wraps in {:?}",
        flood.noisy_wraps.len(),
        flood.took
    );
    for answers in [&flood.garbage, &flood.noisy] {
        assert_eq!(
            answers.busy_without_retry_after, 0,
            "503 without Retry-After"
        );
    }

    // Every oversized body was answered 413.
    assert_eq!(
        flood.oversized.by_status,
        BTreeMap::from([(413, scale.oversized_reviews)]),
        "{:?}",
        flood.oversized
    );
    assert!(
        refused("body_too_large") >= scale.oversized_reviews as f64,
        "oversized bodies counted"
    );

    // Connections: the flood's source held at most its share and was refused beyond it; none
    // stayed idle past the header-read timeout (stalled headers included).
    let per_source = limits.max_connections_per_source as usize;
    assert!(
        flood.idle.peak_open <= per_source,
        "{} idle connections of one source open at once",
        flood.idle.peak_open
    );
    assert!(
        flood.idle.refused > 0 && refused("source_connections") >= 1.0,
        "connections beyond the source's share were refused"
    );
    assert!(
        longest_idle <= limits.header_read_timeout + Duration::from_secs(5),
        "an idle connection stayed open {longest_idle:?}"
    );
    assert!(
        peak_connections <= f64::from(limits.max_connections),
        "{peak_connections} connections open at once"
    );
    env.assert_no_leaks().await;
}

/// `label="value"`, as /metrics prints it.
fn label(key: &str, value: &str) -> String {
    format!("{key}=\"{value}\"")
}

/// Starts the operator as the leader (6 s Lease in cubbyhole-system) serving the webhook and the
/// request endpoint on 127.0.0.1, the webhook configuration, and a request-delivery binding
/// `quiet` known to the webhook. Returns the listener's port and the CA injected pods trust it
/// by.
async fn env_leading_with_endpoint() -> (Env, u16, String) {
    let mut env = Env::start(Options::default()).await;
    let port = webhook_port();
    let endpoint = format!("--request-endpoint=https://127.0.0.1:{port}");
    let mut extra = vec![endpoint.as_str()];
    extra.extend(LEADER_ARGS);
    env.restart_with_webhook(port, &extra);
    env.install_webhook_configuration(port).await;
    env.wait_webhook_serving().await;
    env.apply_binding(QUIET, Env::request_spec(QUIET, "60s"))
        .await;
    let probe = eventually("the webhook knows the quiet binding", T, || async {
        env.dry_run_pod("probe", QUIET)
            .await
            .ok()
            .filter(|p| is_injected(p, QUIET))
    })
    .await;
    let ca = injected_ca(&probe);
    (env, port, ca)
}

/// The listener limits the operator runs with (its configuration file; defaults unless set).
fn listener_limits(env: &Env) -> ListenerLimits {
    let text = std::fs::read_to_string(&env.config).expect("operator config");
    serde_yaml_ng::from_str::<OperatorConfig>(&text)
        .expect("operator config YAML")
        .listener
}

/// The flooding tenant: namespace `ns` with a request-delivery binding and one pod it selects
/// (known to the endpoint). Returns that pod's identity token, as its kubelet would project it.
async fn noisy_tenant(env: &Env, ns: &str) -> String {
    create_namespace(&env.client, ns).await;
    let binding = json!({
        "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
        "metadata": {"name": NOISY, "namespace": ns}, "spec": Env::request_spec(NOISY, "60s"),
    });
    Api::<AgentSecretBinding>::namespaced(env.client.clone(), ns)
        .patch(
            NOISY,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&binding),
        )
        .await
        .expect("apply the noisy binding");
    let pods = Api::<Pod>::namespaced(env.client.clone(), ns);
    eventually("the webhook knows the noisy binding", T, || async {
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let pod = pods
            .create(&dry_run, &agent_pod("probe", NOISY, true))
            .await
            .ok()?;
        is_injected(&pod, NOISY).then_some(())
    })
    .await;
    let pod = pods
        .create(&PostParams::default(), &agent_pod(NOISY, NOISY, false))
        .await
        .expect("create the noisy pod");
    env.token_for_pod_in(ns, &pod.name_any(), AUDIENCE).await
}

/// A second pod of the noisy tenant (selected by its binding), created now; its identity token.
async fn noisy_pod_token(env: &Env, ns: &str) -> String {
    let pod = Api::<Pod>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &agent_pod(NOISY, NOISY, false))
        .await
        .expect("create a second noisy pod");
    env.token_for_pod_in(ns, &pod.name_any(), AUDIENCE).await
}

/// The holder of the operator's Lease and how often it changed hands.
async fn lease(env: &Env) -> (String, i32) {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    eventually("the operator holds its Lease", T, || async {
        let spec = leases.get_opt(LEASE).await.ok()??.spec?;
        let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
        Some((holder, spec.lease_transitions.unwrap_or(0)))
    })
    .await
}

/// A quiet pod, admitted through the webhook and served its wrap.
struct QuietPod {
    name: String,
    /// How long its creation took (the API server calling the webhook included).
    created: Duration,
    /// From its first ask to its wrap, retries included.
    served: Duration,
    /// Asks retried.
    retries: usize,
}

/// Creates an opted-in quiet pod and asks for its wrap as its agent would, with a token bound
/// to it, retrying as the agent does.
async fn quiet_pod_created_and_served(env: &Env, port: u16, ca: &str) -> Result<QuietPod, String> {
    let began = Instant::now();
    let pod = env
        .create_agent_pod(QUIET, QUIET, true)
        .await
        .map_err(|e| format!("creating a quiet pod: {e}"))?;
    let created = began.elapsed();
    let name = pod.name_any();
    if !is_injected(&pod, QUIET) {
        return Err(format!("{name} not injected"));
    }
    let identity = env.pod_identity_token(&name, AUDIENCE).await;
    env.remember(&identity);
    let file = env.dir.join(format!("identity-{name}"));
    std::fs::write(&file, &identity).unwrap();
    let asker = Asker::new(&format!("https://127.0.0.1:{port}"), Some(ca), &file)
        .map_err(|e| e.to_string())?;
    let retries = AtomicUsize::new(0);
    let began = Instant::now();
    let (wrap, facts) = asker
        .ask(8, |_| {
            retries.fetch_add(1, Ordering::Relaxed);
        })
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let served = began.elapsed();
    env.remember(wrap.expose());
    if facts.binding != QUIET || facts.start != 0 {
        return Err(format!("{name} served {facts:?}"));
    }
    Ok(QuietPod {
        name,
        created,
        served,
        retries: retries.into_inner(),
    })
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

/// Samples the operator's resident memory every 100 ms and its open-connection gauge every
/// 300 ms, on a thread of its own (the test's runtime is busy flooding), until stopped.
struct OperatorWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, f64)>,
}

impl OperatorWatch {
    fn start(pid: u32, metrics_port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut rss, mut connections) = (0, 0.0_f64);
            for tick in 0u64.. {
                rss = rss.max(rss_kib(pid));
                if tick % 3 == 0 {
                    let open =
                        Counters::read(metrics_port).value("cubbyhole_listener_connections", "");
                    connections = connections.max(open);
                }
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (rss, connections)
        });
        Self { stop, thread }
    }

    /// Peak RSS (KiB) and peak `cubbyhole_listener_connections`.
    fn stop(self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the watch thread")
    }
}

/// The operator's `/metrics` at one moment.
struct Counters(String);

impl Counters {
    /// GETs `/metrics` from the operator's metrics port (empty when it does not answer).
    fn read(port: u16) -> Self {
        let get = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        };
        Self(get().unwrap_or_default())
    }

    /// Sum of the samples of metric `name` whose labels include `label` (any when empty).
    fn value(&self, name: &str, label: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The operator's listener as the flooder reaches it: from [`FLOOD_SOURCE`], trusting the
/// endpoint's CA.
#[derive(Clone)]
struct FloodTarget {
    addr: SocketAddr,
    tls: TlsConnector,
    ca_pem: String,
}

impl FloodTarget {
    fn new(port: u16, ca_pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("a CA certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            tls: TlsConnector::from(Arc::new(config)),
            ca_pem: ca_pem.to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A fresh TLS connection from the flood's address.
    async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        self.connect_from(FLOOD_SOURCE).await
    }

    /// A fresh TLS connection from `source`.
    async fn connect_from(&self, source: IpAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let connecting = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let tcp = socket.connect(self.addr).await?;
            self.tls
                .connect(ServerName::from(self.addr.ip()), tcp)
                .await
        };
        tokio::time::timeout(ANSWER_TIMEOUT, connecting)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// A keep-alive HTTP client from the flood's address.
    fn http_client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .local_address(FLOOD_SOURCE)
            .https_only(true)
            .tls_built_in_root_certs(false)
            .timeout(ANSWER_TIMEOUT)
            .pool_max_idle_per_host(WORKERS);
        for cert in reqwest::Certificate::from_pem_bundle(self.ca_pem.as_bytes()).expect("CA") {
            builder = builder.add_root_certificate(cert);
        }
        builder.build().expect("HTTP client")
    }
}

/// What the flooder got back for one kind of request.
#[derive(Debug, Default)]
struct Answers {
    /// Final answers by HTTP status.
    by_status: BTreeMap<u16, usize>,
    /// Refusal reasons of the final answers.
    by_reason: BTreeMap<String, usize>,
    /// Attempts without an HTTP answer (connection refused, closed or reset), retried.
    dropped: usize,
    /// 503 answers, retried.
    busy: usize,
    /// Of those, without Retry-After.
    busy_without_retry_after: usize,
    /// Requests still unanswered at the deadline.
    unanswered: usize,
}

impl Answers {
    fn answered(&mut self, status: u16, body: &[u8]) {
        *self.by_status.entry(status).or_default() += 1;
        if let Ok(refusal) = serde_json::from_slice::<Refusal>(body) {
            *self.by_reason.entry(refusal.reason).or_default() += 1;
        }
    }
}

/// What the idle connections saw.
#[derive(Debug, Default)]
struct Idle {
    /// How long each connection that completed its handshake stayed open.
    held: Vec<Duration>,
    /// Connections closed before their handshake completed.
    refused: usize,
    /// Most handshaken connections open at once.
    peak_open: usize,
}

/// Everything the flooder saw.
struct Flood {
    idle: Idle,
    oversized: Answers,
    garbage: Answers,
    noisy: Answers,
    /// Wrapping tokens the noisy pod was served (for the leak scan).
    noisy_wraps: Vec<String>,
    slow: Slow,
    took: Duration,
}

/// The whole flood from [`FLOOD_SOURCE`], every kind at once; the slow bodies until
/// `quiet_done`, and they first (so that they hold connections of the source's share before the
/// idle ones take them all).
async fn flood(
    target: FloodTarget,
    scale: Scale,
    noisy_token: String,
    noisy_ns: String,
    quiet_done: Arc<AtomicBool>,
) -> Flood {
    let began = Instant::now();
    let deadline = began + FLOOD_DEADLINE;
    let slow = tokio::spawn(trickle_slow_bodies(
        target.clone(),
        scale.slow_bodies,
        quiet_done,
        deadline,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = tokio::spawn(hold_idle_connections(
        target.clone(),
        scale.idle_connections,
    ));
    let oversized = tokio::spawn(post_oversized_reviews(
        target.clone(),
        oversized_review(&noisy_ns),
        scale.oversized_reviews,
        deadline,
    ));
    let garbage = tokio::spawn(ask_with_each(
        target.clone(),
        garbage_bearers(scale.garbage_asks, &noisy_ns),
        deadline,
    ));
    let noisy = tokio::spawn(ask_with_each(
        target,
        vec![noisy_token; scale.noisy_asks],
        deadline,
    ));
    let (noisy, noisy_wraps) = noisy.await.expect("noisy asks");
    Flood {
        idle: idle.await.expect("idle connections"),
        oversized: oversized.await.expect("oversized reviews"),
        garbage: garbage.await.expect("garbage asks").0,
        noisy,
        noisy_wraps,
        slow: slow.await.expect("slow bodies"),
        took: began.elapsed(),
    }
}

/// Opens `n` TLS connections at once and sends nothing more on them (half send the start of a
/// request's headers first), holding each until the server closes it.
async fn hold_idle_connections(target: FloodTarget, n: usize) -> Idle {
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let holders: Vec<_> = (0..n)
        .map(|i| {
            let (target, open, peak) = (target.clone(), open.clone(), peak.clone());
            tokio::spawn(async move { hold_idle(&target, i % 2 == 1, &open, &peak).await })
        })
        .collect();
    let mut idle = Idle::default();
    for holder in holders {
        match holder.await.expect("idle holder") {
            Some(held) => idle.held.push(held),
            None => idle.refused += 1,
        }
    }
    idle.peak_open = peak.load(Ordering::SeqCst);
    idle
}

/// One idle connection: how long it stayed open after its handshake (`None`: refused).
async fn hold_idle(
    target: &FloodTarget,
    stalled_in_headers: bool,
    open: &AtomicUsize,
    peak: &AtomicUsize,
) -> Option<Duration> {
    let mut tls = target.connect().await.ok()?;
    if stalled_in_headers {
        tls.write_all(b"POST /v1/wrap HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .ok()?;
        tls.flush().await.ok()?;
    }
    let since = Instant::now();
    peak.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
    let mut buf = [0u8; 1024];
    // Whatever the server says (a 408, say), the connection counts until it is closed.
    while let Ok(Ok(1..)) = tokio::time::timeout(
        IDLE_GIVE_UP.saturating_sub(since.elapsed()),
        tls.read(&mut buf),
    )
    .await
    {}
    open.fetch_sub(1, Ordering::SeqCst);
    Some(since.elapsed())
}

/// What the slow bodies saw.
#[derive(Debug, Default)]
struct Slow {
    /// Answers by status (`dropped`: connections refused or closed without an answer).
    answers: Answers,
    /// Most slow bodies trickling at once.
    peak_trickling: usize,
    /// Longest wait for an answer once the headers were sent.
    longest: Duration,
}

/// `n` connections at a time, each POSTing to /mutate-pods headers announcing a 100 000-byte
/// body and then one byte of it every 500 ms until answered, again and again until `stop`.
async fn trickle_slow_bodies(
    target: FloodTarget,
    n: usize,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> Slow {
    let slow = Arc::new(Mutex::new(Slow::default()));
    let trickling = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let (target, stop, slow, trickling) = (
                target.clone(),
                stop.clone(),
                slow.clone(),
                trickling.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let answer = trickle_one(&target, &trickling, &slow).await;
                    let dropped = {
                        let mut slow = slow.lock().unwrap();
                        match answer {
                            Ok((status, took)) => {
                                slow.answers.answered(status, b"");
                                slow.longest = slow.longest.max(took);
                                false
                            }
                            Err(_) => {
                                slow.answers.dropped += 1;
                                true
                            }
                        }
                    };
                    if dropped {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("slow body");
    }
    Arc::into_inner(slow).unwrap().into_inner().unwrap()
}

/// One slow body on a fresh connection: the answer's status and how long it took after the
/// headers.
async fn trickle_one(
    target: &FloodTarget,
    trickling: &AtomicUsize,
    slow: &Mutex<Slow>,
) -> std::io::Result<(u16, Duration)> {
    let mut tls = target.connect().await?;
    let head = "POST /mutate-pods HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
    tls.write_all(head.as_bytes()).await?;
    tls.flush().await?;
    let began = Instant::now();
    let now_trickling = trickling.fetch_add(1, Ordering::SeqCst) + 1;
    {
        let mut slow = slow.lock().unwrap();
        slow.peak_trickling = slow.peak_trickling.max(now_trickling);
    }
    let (mut rd, mut wr) = tokio::io::split(tls);
    let trickle = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if wr.write_all(b" ").await.is_err() || wr.flush().await.is_err() {
                // The server stopped reading: its answer follows or is there already.
                return std::future::pending::<()>().await;
            }
        }
    };
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
        tokio::select! {
            s = read_status(&mut rd) => s,
            _ = trickle => unreachable!("the trickle never ends"),
        }
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    trickling.fetch_sub(1, Ordering::SeqCst);
    Ok((answer?, began.elapsed()))
}

/// Asks made at once by [`one_token_at_once`]: 8 from each of four source addresses (each
/// source's share of the requests in flight, 32 in all: every one handled at once).
const STAMPEDE_ASKS: usize = 32;

/// What the stampede saw.
struct Stampede {
    answers: Answers,
    wraps: Vec<String>,
}

/// [`STAMPEDE_ASKS`] asks with `bearer`, each on a connection of its own opened beforehand,
/// sent at once.
async fn one_token_at_once(target: &FloodTarget, bearer: &str) -> Stampede {
    let mut connections = vec![];
    for i in 0..STAMPEDE_ASKS {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3 + (i / 8) as u8));
        connections.push(target.connect_from(source).await.expect("connect"));
    }
    let ask = format!(
        "POST {WRAP_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bearer}\r\nContent-Length: 0\r\n\r\n"
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(STAMPEDE_ASKS));
    let asks: Vec<_> = connections
        .into_iter()
        .map(|mut tls| {
            let (ask, barrier) = (ask.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                tls.write_all(ask.as_bytes()).await?;
                tls.flush().await?;
                tokio::time::timeout(ANSWER_TIMEOUT, read_answer(&mut tls))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            })
        })
        .collect();
    let mut stampede = Stampede {
        answers: Answers::default(),
        wraps: vec![],
    };
    for ask in asks {
        match ask.await.expect("stampede ask") {
            Ok((status, body)) => {
                stampede.answers.answered(status, &body);
                let served: Option<Value> = serde_json::from_slice(&body).ok();
                if let Some(wrap) = served
                    .as_ref()
                    .and_then(|v| v.get(WRAPPING_TOKEN_FIELD)?.as_str())
                {
                    stampede.wraps.push(wrap.to_string());
                }
            }
            Err(_) => stampede.answers.unanswered += 1,
        }
    }
    stampede
}

/// The status and body of the HTTP answer `rd` starts with (its body by Content-Length).
async fn read_answer(rd: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u16, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| std::io::Error::other("an answer without Content-Length"))?;
    let mut body = data.split_off(end);
    while body.len() < length {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok((status, body))
}

/// An AdmissionReview creating an opted-in pod of `namespace` with an annotation that takes
/// it past the webhook's body limit.
fn oversized_review(namespace: &str) -> Arc<Vec<u8>> {
    let mut pod = serde_json::to_value(agent_pod("huge", NOISY, true)).unwrap();
    pod["metadata"]["annotations"] = json!({"noise.example/blob": "x".repeat(BODY_LIMIT)});
    let review = pod_creation_review(namespace, pod);
    let body = serde_json::to_vec(&review).unwrap();
    assert!(body.len() > BODY_LIMIT);
    Arc::new(body)
}

/// POSTs `body` to /mutate-pods `n` times at once, each until it is answered (503 and dropped
/// connections retried); half of them chunked, without Content-Length.
async fn post_oversized_reviews(
    target: FloodTarget,
    body: Arc<Vec<u8>>,
    n: usize,
    deadline: Instant,
) -> Answers {
    let answers = Arc::new(Mutex::new(Answers::default()));
    let posts: Vec<_> = (0..n)
        .map(|i| {
            let (target, body, answers) = (target.clone(), body.clone(), answers.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match post_raw(&target, &body, i % 2 == 1).await {
                        Ok(503) => answers.lock().unwrap().busy += 1,
                        Ok(status) => return answers.lock().unwrap().answered(status, b""),
                        Err(_) => answers.lock().unwrap().dropped += 1,
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                answers.lock().unwrap().unanswered += 1;
            })
        })
        .collect();
    for post in posts {
        post.await.expect("oversized post");
    }
    Arc::into_inner(answers).unwrap().into_inner().unwrap()
}

/// One POST of `body` to /mutate-pods on a fresh connection, the answer read while the body is
/// still being sent (a server may answer before reading it all). The answer's status.
async fn post_raw(target: &FloodTarget, body: &[u8], chunked: bool) -> std::io::Result<u16> {
    let (mut rd, mut wr) = tokio::io::split(target.connect().await?);
    let length = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "POST /mutate-pods HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{length}\r\n\r\n"
    );
    let send = async move {
        wr.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 << 10) {
            if chunked {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
            }
            wr.write_all(chunk).await?;
            if chunked {
                wr.write_all(b"\r\n").await?;
            }
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        wr.flush().await
    };
    let status = read_status(&mut rd);
    tokio::pin!(send, status);
    let answer = async {
        tokio::select! {
            s = &mut status => s,
            // Sent (or the server stopped reading): the answer follows or is there already.
            _ = &mut send => status.await,
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The status code of the HTTP answer `rd` starts with.
async fn read_status(rd: &mut (impl AsyncRead + Unpin)) -> std::io::Result<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.contains(&b'\n') {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// Asks for a wrap once with each of `bearers`, [`WORKERS`] at a time on kept-alive
/// connections, each until answered (503 and dropped connections retried at once, whatever
/// Retry-After says). The answers, and the wrapping tokens served.
async fn ask_with_each(
    target: FloodTarget,
    bearers: Vec<String>,
    deadline: Instant,
) -> (Answers, Vec<String>) {
    let http = target.http_client();
    let url = target.url(WRAP_PATH);
    let answers = Mutex::new(Answers::default());
    let wraps = Mutex::new(vec![]);
    stream::iter(&bearers)
        .for_each_concurrent(WORKERS, |bearer| async {
            if let Some(wrap) = ask_until_answered(&http, &url, bearer, deadline, &answers).await {
                wraps.lock().unwrap().push(wrap);
            }
        })
        .await;
    (answers.into_inner().unwrap(), wraps.into_inner().unwrap())
}

/// One ask, repeated until answered; the wrapping token when one is served.
async fn ask_until_answered(
    http: &reqwest::Client,
    url: &str,
    bearer: &str,
    deadline: Instant,
    answers: &Mutex<Answers>,
) -> Option<String> {
    while Instant::now() < deadline {
        let answer = match http.post(url).bearer_auth(bearer).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .contains_key(reqwest::header::RETRY_AFTER);
                response
                    .bytes()
                    .await
                    .ok()
                    .map(|b| (status, retry_after, b))
            }
            Err(_) => None,
        };
        match answer {
            None => answers.lock().unwrap().dropped += 1,
            Some((503, retry_after, _)) => {
                let mut answers = answers.lock().unwrap();
                answers.busy += 1;
                answers.busy_without_retry_after += usize::from(!retry_after);
            }
            Some((status, _, body)) => {
                answers.lock().unwrap().answered(status, &body);
                let served: Option<Value> = serde_json::from_slice(&body).ok();
                return served
                    .and_then(|v| Some(v.get(WRAPPING_TOKEN_FIELD)?.as_str()?.to_string()));
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    answers.lock().unwrap().unanswered += 1;
    None
}

/// `n` bearer tokens no API server would accept and none of which may cost a TokenReview:
/// random text, three random base64url parts, and service-account-JWT-shaped tokens whose
/// claims give them away (another audience; expired).
fn garbage_bearers(n: usize, namespace: &str) -> Vec<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (0..n)
        .map(|i| match i % 4 {
            0 => random_text(rand::random_range(8..256)),
            1 => (0..3)
                .map(|_| base64url(&random_bytes(rand::random_range(4..200))))
                .collect::<Vec<_>>()
                .join("."),
            2 => jwt_shaped(&pod_claims(namespace, "vault", now + 600)),
            _ => jwt_shaped(&pod_claims(namespace, AUDIENCE, now - 600)),
        })
        .collect()
}

fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    bytes
}

/// A JWT with `claims` and a random signature.
fn jwt_shaped(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": "flood"});
    format!(
        "{}.{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes()),
        base64url(&random_bytes(256))
    )
}

/// The claims of a projected service-account token bound to a pod of `namespace`.
fn pod_claims(namespace: &str, audience: &str, exp: u64) -> Value {
    json!({
        "aud": [audience],
        "exp": exp,
        "iat": exp - 3600,
        "nbf": exp - 3600,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": "forged", "uid": "00000000-0000-0000-0000-00000000f0f0"},
            "serviceaccount": {"name": "default", "uid": "00000000-0000-0000-0000-00000000f0f1"},
        },
        "sub": format!("system:serviceaccount:{namespace}:default"),
    })
}
