//! Wires the operator together: configuration, clients, the controller and its watches, the
//! sweep, the HTTP endpoints, and shutdown on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::config::OperatorConfig;
use crate::controller::cache::{CachedBinding, Indexed, IndexedCache};
use crate::controller::context::Context;
use crate::controller::lists::{paged, scoped_apis};
use crate::controller::{reconcile, sweep};
use crate::core::pod::{CachedPod, WatchedPod};
use crate::crd::AgentSecretBinding;
use crate::metrics::Metrics;
use crate::record::signing_keys::KeyRing;
use crate::record::{CachedRecord, MANAGED_BY, MANAGED_BY_LABEL};
use crate::vault::VaultClient;

/// `cubbyhole operator` flags.
#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    /// Configuration file (YAML): Vault connection, allowed roles, cadences.
    #[arg(
        long,
        env = "CUBBYHOLE_CONFIG",
        default_value = "/etc/cubbyhole/config.yaml"
    )]
    pub config: PathBuf,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub json_logs: bool,
    /// Run as one of several replicas: only the holder of a Lease reconciles.
    #[arg(long)]
    pub leader_election: bool,
    /// The operator's namespace: of the leader-election Lease and of the record-signing key
    /// Secret `cubbyhole-record-key`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "cubbyhole-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "cubbyhole-operator")]
    pub lease_name: String,
    /// How long a leader's lease lasts without renewal (renewed every third of it).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// The admission webhook (served on every replica, leader or not).
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(args: OperatorArgs) -> ExitCode {
    crate::telemetry::init(args.json_logs);
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

/// The operator's Vault client (logging in as `config` says, counted in `metrics`) and its
/// Kubernetes client (in-cluster or the kubeconfig).
pub async fn connect(
    config: &OperatorConfig,
    metrics: &Metrics,
) -> Result<(VaultClient, Client), String> {
    let vault = VaultClient::new(config.vault_endpoint(), Some(config.vault_auth()?))?
        .with_metrics(metrics.clone());
    let client = Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes client: {e}"))?;
    Ok((vault, client))
}

async fn run_inner(args: OperatorArgs) -> Result<(), String> {
    crate::config::validate_lease_duration(args.lease_duration)?;
    let config = OperatorConfig::load(&args.config)?;
    config.warnings().iter().for_each(|w| warn!("{w}"));
    let metrics = Metrics::new();
    let (vault, client) = connect(&config, &metrics).await?;
    let bindings: Api<AgentSecretBinding> = Api::all(client.clone());
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    // An older CRD would have the API server drop the fields this version writes.
    crate::crd_check::at_start(&client, &shutdown).await?;
    let (record_keys, key_uid) =
        crate::record::signing_keys::load(client.clone(), &args.lease_namespace, &shutdown).await?;
    let record_keys = Arc::new(KeyRing::new(record_keys));
    tokio::spawn(crate::record::signing_keys::keep(
        Api::namespaced(client.clone(), &args.lease_namespace),
        record_keys.clone(),
        key_uid,
        shutdown.clone(),
    ));

    let probed = config.watch_namespaces.first().map(String::as_str);
    let Some(lists) = crate::controller::lists::probe(&client, probed, &shutdown).await else {
        return Ok(());
    };
    let watch_config = || lists.watcher_config();
    let ctx = Arc::new(Context::new(
        client.clone(),
        vault,
        config.clone(),
        metrics,
        record_keys,
    ));
    let (pods, secrets, binding_index) =
        (ctx.pods.clone(), ctx.secrets.clone(), ctx.bindings.clone());
    // The controller runs every due round at once; each waits for one of the
    // `reconcileConcurrency` slots, shared fairly between namespaces (`fair`). No debounce: a
    // trailing one keeps postponing a binding's round while its pods keep coming (a burst
    // would wait for its last pod); the triggers that arrive while a round runs already
    // collapse into the one next round.
    // The binding watch as `Controller::new` makes it, but its store keeps no managed fields
    // (they can be larger than the spec, and every replica holds every binding).
    let (binding_store, binding_writer) = kube::runtime::reflector::store();
    let binding_stream = kube::runtime::reflector(
        binding_writer,
        watcher(bindings.clone(), watch_config()).modify(crate::crd::slim_for_cache),
    )
    .applied_objects();
    let controller = Controller::for_stream(binding_stream, binding_store)
        .with_config(ControllerConfig::default().concurrency(0));
    // One pod watch feeds both the reconciler's pod cache and the controller's triggers; the
    // cache keeps each pod read into what the planner needs (`CachedPod`).
    let watched = &ctx.config.watch_namespaces;
    let pod_events = watch_into(
        &client,
        watched,
        watch_config(),
        pods.clone(),
        {
            let metrics = ctx.metrics.clone();
            move |pod| {
                let pod = CachedPod::from_watched(pod);
                if pod.oversized {
                    warn!(namespace = %pod.namespace, pod = %pod.view.name,
                        "a pod's labels exceed 16 KiB; read without them, no binding selects it");
                    metrics.oversized_pod(&pod.namespace);
                }
                pod
            }
        },
        |w: WatchStream<WatchedPod>| w,
    )
    .touched_objects();
    // One watch of cubbyhole's Secrets feeds the records cache and the controller's triggers:
    // no LIST per reconcile. Every write to a record is guarded by the resourceVersion read,
    // so a cache lagging behind another writer only loses a guard; a binding's next round
    // waits until the cache shows its own writes (`effects::until_cached`).
    let secret_events = watch_into(
        &client,
        watched,
        watch_config().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        secrets.clone(),
        {
            let metrics = ctx.metrics.clone();
            move |secret| {
                let record = CachedRecord::pack(secret);
                if record.oversized {
                    warn!(namespace = %record.namespace, secret = %record.name,
                        "a Secret labelled as a record is too large to be one; ignored");
                    metrics.oversized_ignored(&record.namespace);
                }
                record
            }
        },
        |w: WatchStream<Secret>| crate::controller::failpoint::lagged("record-watch", w),
    )
    .touched_objects();
    // A second watch of bindings keeps them by namespace with their selectors parsed: pod
    // events and conflict checks read only their namespace's, and a changed binding has only
    // the siblings it may conflict with rechecked.
    let binding_events = watcher(bindings.clone(), watch_config())
        .default_backoff()
        .map_ok(cache_into(binding_index.clone(), None, CachedBinding::read))
        .touched_objects();

    let server = tokio::spawn(crate::server::serve(
        args.listen,
        ctx.clone(),
        shutdown.clone(),
    ));
    // Every replica serves the webhook, before and regardless of leader election.
    let _webhook = crate::webhook::start(
        &args.webhook,
        ctx.clone(),
        &args.lease_namespace,
        shutdown.clone(),
    )
    .await?;
    // Stops the controller on shutdown, or when leadership is lost.
    let stop = shutdown.child_token();
    let mut leadership = None;
    if args.leader_election {
        // A standby is healthy and ready: it must not stall rollouts.
        ctx.readiness.expect([]);
        let lease = crate::controller::leader::LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity(),
            duration: args.lease_duration,
            renew_every: args.lease_duration / 3,
        };
        match crate::controller::leader::acquire(
            client.clone(),
            lease,
            shutdown.clone(),
            stop.clone(),
        )
        .await
        {
            Some(renewal) => leadership = Some(renewal),
            None => return finish(server).await,
        }
    }
    let initial = list_initial(&bindings, &shutdown).await?;
    ctx.readiness.expect(initial);
    tokio::spawn(forget_vanished(ctx.clone(), stop.clone()));
    // `cubbyhole_leader` is 1 from here (the Lease held, with leader election) until the
    // controller is told to stop: leadership lost, or shutdown.
    ctx.metrics.set_leader(true);
    tokio::spawn({
        let (metrics, stop) = (ctx.metrics.clone(), stop.clone());
        async move {
            stop.cancelled().await;
            metrics.set_leader(false);
        }
    });
    info!(lookup_period = ?config.lookup_period, "operator starting");
    let sweeper = tokio::spawn(sweep::sweep_loop(ctx.clone(), stop.clone()));

    let running = controller
        .reconcile_on(triggers(pod_events, {
            let index = binding_index.clone();
            move |pod| bindings_selecting(&index, &pod)
        }))
        .reconcile_on(triggers(binding_events, {
            let index = binding_index.clone();
            move |changed| siblings_to_recheck(&index, &pods, &changed)
        }))
        .reconcile_on(triggers(secret_events, |record| {
            let binding = record.binding.as_deref()?;
            Some(ObjectRef::<AgentSecretBinding>::new(binding).within(&record.namespace))
        }))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let wind_down = async {
        running.await;
        sweeper.await.ok();
    };
    tokio::select! {
        () = wind_down => {}
        () = lost_and_stuck(&stop, &shutdown, args.lease_duration / 6) => {
            // Reconciles waiting on an API server that does not answer must not outlive the
            // lease: exit now, before a standby can take over.
            return Err("lost leadership; the controller did not stop in time".into());
        }
    }
    let lost_leadership = !shutdown.is_cancelled();
    shutdown.cancel();
    if let Some(renewal) = leadership {
        // Releases the lease so a standby takes over at once.
        renewal.await.ok();
    }
    finish(server).await?;
    if lost_leadership {
        // Exit so Kubernetes restarts this replica as a standby.
        return Err("lost leadership".into());
    }
    info!("operator stopped cleanly");
    Ok(())
}

/// Resolves `grace` after leadership was lost (`stop` cancelled without a shutdown); never on a
/// shutdown.
async fn lost_and_stuck(stop: &CancellationToken, shutdown: &CancellationToken, grace: Duration) {
    stop.cancelled().await;
    if shutdown.is_cancelled() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

async fn finish(server: tokio::task::JoinHandle<std::io::Result<()>>) -> Result<(), String> {
    match server.await {
        Ok(Err(e)) => Err(format!("HTTP server: {e}")),
        Err(e) => Err(format!("HTTP server task: {e}")),
        Ok(Ok(())) => Ok(()),
    }
}

/// This replica's name in the Lease: the pod name, else host name and process id.
fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Lists bindings once at start (retrying) so readiness can wait for each to be reconciled.
async fn list_initial(
    bindings: &Api<AgentSecretBinding>,
    shutdown: &CancellationToken,
) -> Result<Vec<String>, String> {
    let mut backoff = Backoff::at_start();
    loop {
        let names = paged(&ListParams::default(), |page| async move {
            bindings.list_metadata(&page).await
        })
        .await;
        match names {
            Ok(items) => {
                return Ok(items
                    .iter()
                    .map(|b| format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()))
                    .collect());
            }
            Err(e) => warn!(error = %e, "listing bindings failed; retrying"),
        }
        if !backoff.wait(shutdown).await {
            return Err("shut down before the first sync".into());
        }
    }
}

/// A binding of the initial list that vanished before its first reconcile (its finalizer was
/// stripped) is never reconciled: stop waiting for it, so `/readyz` cannot stay 503 forever.
async fn forget_vanished(ctx: Arc<Context>, stop: CancellationToken) {
    while !ctx.readiness.is_ready() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
        for key in ctx.readiness.waiting() {
            let Some((ns, name)) = key.split_once('/') else {
                continue;
            };
            let api: Api<AgentSecretBinding> = Api::namespaced(ctx.client.clone(), ns);
            if let Ok(None) = api.get_opt(name).await {
                ctx.readiness.reconciled(&key);
            }
        }
    }
}

/// Reads each watch event into what a cache keeps (`pack`), applies it to the cache and
/// passes it on.
/// One watch's events, boxed.
type WatchStream<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// The events of `K` (matching `config`) in every namespace, or, with `namespaces`, of one watch
/// per namespace merged (what an install granted access only there can list); `around` wraps
/// each watch. Each watch feeds `cache` as `pack` reads its objects, its relists replacing only
/// what it covers.
fn watch_into<K, B>(
    client: &Client,
    namespaces: &[String],
    config: watcher::Config,
    cache: Arc<IndexedCache<B>>,
    pack: impl Fn(K) -> B + Clone + Send + 'static,
    around: impl Fn(WatchStream<K>) -> WatchStream<K>,
) -> impl Stream<Item = Result<watcher::Event<Arc<B>>, watcher::Error>> + Send + 'static
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    K::DynamicType: Default,
    B: Indexed + Send + Sync + 'static,
{
    cache.watched_by(namespaces.len());
    futures::stream::select_all(scoped_apis::<K>(client, namespaces).into_iter().map(
        |(scope, api)| {
            around(watcher(api, config.clone()).default_backoff().boxed())
                .map_ok(cache_into(cache.clone(), scope, pack.clone()))
                .boxed()
        },
    ))
}

fn cache_into<A, B: Indexed>(
    cache: Arc<IndexedCache<B>>,
    scope: Option<String>,
    pack: impl Fn(A) -> B,
) -> impl FnMut(watcher::Event<A>) -> watcher::Event<Arc<B>> {
    move |event| {
        let event = match event {
            watcher::Event::Apply(o) => watcher::Event::Apply(Arc::new(pack(o))),
            watcher::Event::Delete(o) => watcher::Event::Delete(Arc::new(pack(o))),
            watcher::Event::InitApply(o) => watcher::Event::InitApply(Arc::new(pack(o))),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
        };
        cache.apply_in(scope.as_deref(), &event);
        event
    }
}

/// The bindings to reconcile for each object a watch touched (its errors are retried by the
/// watch's backoff; here they are only logged).
fn triggers<K, I>(
    touched: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    to_bindings: impl Fn(K) -> I + Send + 'static,
) -> impl Stream<Item = ObjectRef<AgentSecretBinding>> + Send + 'static
where
    I: IntoIterator<Item = ObjectRef<AgentSecretBinding>>,
    I::IntoIter: Send + 'static,
{
    touched
        .filter_map(move |object| {
            std::future::ready(match object {
                Ok(object) => Some(futures::stream::iter(to_bindings(object))),
                Err(e) => {
                    tracing::debug!(error = %e, "watch error (retried)");
                    None
                }
            })
        })
        .flatten()
}

/// The bindings of the pod's namespace that select it.
fn bindings_selecting(
    index: &IndexedCache<CachedBinding>,
    pod: &CachedPod,
) -> Vec<ObjectRef<AgentSecretBinding>> {
    index
        .in_namespace(&pod.namespace, |b| b.selects(&pod.view.labels))
        .iter()
        .map(|b| binding_ref(b))
        .collect()
}

/// A binding whose spec changed (or that is going away) may start or end a conflict with its
/// namespace neighbours: recheck those already in conflict, and those selecting any pod it
/// now selects. Bindings that share no pod are never rechecked.
fn siblings_to_recheck(
    index: &IndexedCache<CachedBinding>,
    pods: &IndexedCache<CachedPod>,
    changed: &CachedBinding,
) -> Vec<ObjectRef<AgentSecretBinding>> {
    let shared = if changed.spec_changed && !changed.deleting {
        pods.in_namespace(&changed.namespace, |p| changed.selects(&p.view.labels))
    } else {
        vec![]
    };
    index
        .in_namespace(&changed.namespace, |b| {
            b.name != changed.name
                && (b.in_conflict
                    || (changed.spec_changed && shared.iter().any(|p| b.selects(&p.view.labels))))
        })
        .iter()
        .map(|b| binding_ref(b))
        .collect()
}

fn binding_ref(b: &CachedBinding) -> ObjectRef<AgentSecretBinding> {
    ObjectRef::new(&b.name).within(&b.namespace)
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(name: &str, app: &str, generation: i64, status: serde_json::Value) -> CachedBinding {
        CachedBinding::read(
            serde_json::from_value(json!({
                "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
                "metadata": {"name": name, "namespace": "ns", "generation": generation},
                "spec": {
                    "podSelector": {"matchLabels": {"app": app}},
                    "vault": {"tokenRole": "r"},
                },
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn settled() -> serde_json::Value {
        json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True",
            "reason": "Ready", "message": "", "lastTransitionTime": "2026-12-02T00:00:00Z"}]})
    }

    fn index(bindings: Vec<CachedBinding>) -> IndexedCache<CachedBinding> {
        let index = IndexedCache::default();
        for b in bindings {
            index.apply(&watcher::Event::Apply(Arc::new(b)));
        }
        index
    }

    fn names(refs: Vec<ObjectRef<AgentSecretBinding>>) -> Vec<String> {
        let mut names: Vec<_> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn a_changed_binding_rechecks_only_siblings_sharing_a_pod_or_in_conflict() {
        let pods = IndexedCache::default();
        let pod: CachedPod = CachedPod::from_watched(
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
            }))
            .unwrap(),
        );
        pods.apply(&watcher::Event::Apply(Arc::new(pod)));
        let mut conflicted = settled();
        conflicted["conditions"][0]["reason"] = json!("Conflict");
        let index = index(
            (0..100)
                .map(|i| binding(&format!("idle-{i}"), &format!("none-{i}"), 1, settled()))
                .chain([
                    binding("web", "web", 1, settled()),
                    binding("stuck", "gone", 1, conflicted),
                ])
                .collect(),
        );
        // A new binding selecting the pod: its sibling over that pod, and the one in conflict.
        let new = binding("new", "web", 1, json!({}));
        assert!(new.spec_changed);
        assert_eq!(
            names(siblings_to_recheck(&index, &pods, &new)),
            ["stuck", "web"]
        );
        // A new binding selecting nothing rechecks only the one in conflict.
        let idle = binding("idle-new", "nothing", 1, json!({}));
        assert_eq!(names(siblings_to_recheck(&index, &pods, &idle)), ["stuck"]);
        // A status-only change of a settled binding rechecks only those in conflict.
        let settled_web = binding("web", "web", 1, settled());
        assert!(!settled_web.spec_changed);
        assert_eq!(
            names(siblings_to_recheck(&index, &pods, &settled_web)),
            ["stuck"]
        );
        // A pod event reaches only the bindings selecting it.
        let pod = pods.get("ns", "p").unwrap();
        assert_eq!(names(bindings_selecting(&index, &pod)), ["web"]);
    }
}
