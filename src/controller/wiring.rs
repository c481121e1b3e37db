//! Wires the operator together: configuration, clients, the controller and its watches, the
//! sweep, the HTTP endpoints, and shutdown on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::OperatorConfig;
use crate::controller::budget::LookupBudget;
use crate::controller::context::{Context, Readiness};
use crate::controller::{reconcile, sweep};
use crate::core::labels::LabelQuery;
use crate::core::pod::{CachedPod, WatchedPod};
use crate::core::reason::Reason;
use crate::core::status::READY;
use crate::crd::AgentSecretBinding;
use crate::metrics::Metrics;
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

async fn run_inner(args: OperatorArgs) -> Result<(), String> {
    crate::config::validate_lease_duration(args.lease_duration)?;
    let config = OperatorConfig::load(&args.config)?;
    config.warnings().iter().for_each(|w| warn!("{w}"));
    let metrics = Metrics::new();
    let vault = VaultClient::new(config.vault_endpoint(), Some(config.vault_auth()?))?
        .with_metrics(metrics.clone());
    let client = Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes client: {e}"))?;
    let bindings: Api<AgentSecretBinding> = Api::all(client.clone());
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let record_keys =
        crate::record::signing_keys::load(client.clone(), &args.lease_namespace, &shutdown).await?;

    let Some(lists) = crate::controller::lists::probe(&client, &shutdown).await else {
        return Ok(());
    };
    let watch_config = || lists.watcher_config();
    let controller = Controller::new(bindings.clone(), watch_config()).with_config(
        ControllerConfig::default()
            .debounce(Duration::from_millis(200))
            .concurrency(config.reconcile_concurrency),
    );
    let store = controller.store();
    // One pod watch feeds both the reconciler's pod cache and the controller's triggers; the
    // cache keeps each pod read into what the planner needs (`CachedPod`).
    let (pods, pod_writer) = reflector::store::<CachedPod>();
    let pod_events = watcher(Api::<WatchedPod>::all(client.clone()), watch_config())
        .default_backoff()
        .map_ok(cache_into(pod_writer, {
            let metrics = metrics.clone();
            move |pod| {
                let pod = CachedPod::from_watched(pod);
                if pod.oversized {
                    warn!(namespace = %pod.namespace, pod = %pod.view.name,
                        "a pod's labels exceed 16 KiB; read without them, no binding selects it");
                    metrics.oversized_pod(&pod.namespace);
                }
                pod
            }
        }))
        .touched_objects();
    // One watch of cubbyhole's Secrets feeds the records cache and the controller's triggers:
    // no LIST per reconcile. Every write to a record is guarded by the resourceVersion read,
    // so a round that reads a cache lagging behind its own writes only loses a guard.
    let (secrets, secret_writer) = reflector::store::<CachedRecord>();
    let secret_events = watcher(
        Api::<Secret>::all(client.clone()),
        watch_config().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
    )
    .default_backoff()
    .map_ok(cache_into(secret_writer, {
        let metrics = metrics.clone();
        move |secret| {
            let record = CachedRecord::pack(secret);
            if record.oversized {
                warn!(namespace = %record.namespace, secret = %record.name,
                    "a Secret labelled as a record is too large to be one; ignored");
                metrics.oversized_ignored(&record.namespace);
            }
            record
        }
    }))
    .touched_objects();
    let reporter = Reporter {
        controller: "cubbyhole".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        vault,
        config: config.clone(),
        metrics,
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        bindings: store.clone(),
        pods,
        secrets,
        last_lookup: Default::default(),
        last_renewal: Default::default(),
        names_taken: Default::default(),
        failures: Default::default(),
        readiness: Readiness::default(),
        record_keys,
        forged: Default::default(),
        lookups: LookupBudget::new(config.max_lookups_per_second),
    });

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
    info!(lookup_period = ?config.lookup_period, "operator starting");
    let sweeper = tokio::spawn(sweep::sweep_loop(ctx.clone(), stop.clone()));

    let pod_store = store.clone();
    let sibling_store = store.clone();
    let running = controller
        .reconcile_on(triggers(pod_events, move |pod| {
            bindings_selecting(&pod_store, &pod)
        }))
        .watches(bindings.clone(), watch_config(), move |changed| {
            siblings_to_recheck(&sibling_store, &changed)
        })
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
    let mut delay = Duration::from_millis(500);
    loop {
        match bindings.list(&ListParams::default()).await {
            Ok(list) => {
                return Ok(list
                    .items
                    .iter()
                    .map(|b| format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()))
                    .collect());
            }
            Err(e) => warn!(error = %e, "listing bindings failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Err("shut down before the first sync".into()),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
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
/// passes it on (kube's `reflect`, for cached types that are not API objects themselves).
fn cache_into<A, B: reflector::Lookup<DynamicType = ()> + Clone + 'static>(
    mut writer: Writer<B>,
    pack: impl Fn(A) -> B,
) -> impl FnMut(watcher::Event<A>) -> watcher::Event<B> {
    move |event| {
        let event = match event {
            watcher::Event::Apply(o) => watcher::Event::Apply(pack(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(pack(o)),
            watcher::Event::InitApply(o) => watcher::Event::InitApply(pack(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
        };
        writer.apply_watcher_event(&event);
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

fn bindings_selecting(
    store: &Store<AgentSecretBinding>,
    pod: &CachedPod,
) -> Vec<ObjectRef<AgentSecretBinding>> {
    store
        .state()
        .iter()
        .filter(|b| b.namespace().as_deref() == Some(&*pod.namespace))
        .filter(|b| {
            crate::core::spec::pod_selector(&b.spec)
                .is_ok_and(|s| LabelQuery::from(s).matches(&pod.view.labels))
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// A binding whose spec changed (or that is going away) may start or end a conflict with its
/// namespace neighbours: recheck those that are in conflict, or all of them when it is new.
fn siblings_to_recheck(
    store: &Store<AgentSecretBinding>,
    changed: &AgentSecretBinding,
) -> Vec<ObjectRef<AgentSecretBinding>> {
    let spec_changed = changed.meta().deletion_timestamp.is_some()
        || changed.status.as_ref().and_then(|s| s.observed_generation)
            != changed.metadata.generation;
    store
        .state()
        .iter()
        .filter(|b| b.namespace() == changed.namespace() && b.name_any() != changed.name_any())
        .filter(|b| {
            spec_changed
                || b.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == READY && c.reason == Reason::Conflict.as_str())
                })
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
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
