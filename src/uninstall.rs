//! `cubbyhole uninstall`: what must happen before the operator is removed, so that no object
//! is left waiting on its finalizers and no token it minted stays alive with nobody to revoke
//! or renew it. The chart runs it as a `pre-delete` hook; with kustomize it runs as a Job
//! before `kubectl delete -k` (config/uninstall).
//!
//! In order: the operator's Deployment is scaled to 0 and its pods waited out (so nothing is
//! minted meanwhile); every binding's records are retired as its deletion would (each token and
//! wrap revoked when Vault vouches for it, the record deleted) and the binding's finalizer
//! released; records whose binding is gone are retired the same way; and the finalizer of any
//! record left (one that does not verify: never acted on) is released without a Vault call.
//! Bindings themselves stay: they are the user's, and a later install serves them again. Every
//! step is idempotent: a failed run is retried as a whole until `--timeout`, and when it gives
//! up the operator is scaled back to where it was, so nothing is lost.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::backoff::Backoff;
use crate::config::OperatorConfig;
use crate::controller::context::Context;
use crate::controller::lists::{paged, scoped_apis};
use crate::controller::sweep::retire_records;
use crate::crd::AgentSecretBinding;
use crate::metrics::Metrics;
use crate::record::signing_keys::{KEY_SECRET, KeyRing, keys_from_secret};
use crate::record::{
    BINDING_FINALIZER, BINDING_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SECRET_FINALIZER,
};

/// `cubbyhole uninstall` flags.
#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    /// The operator's configuration file (its Vault address and login).
    #[arg(long, default_value = "/etc/cubbyhole/config.yaml")]
    pub config: PathBuf,
    /// The operator's namespace (its Deployment and record-key Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "cubbyhole-system")]
    pub namespace: String,
    /// The operator's Deployment, scaled to 0 first. Without it the operator must already be
    /// stopped.
    #[arg(long)]
    pub deployment: Option<String>,
    /// How long to keep retrying before giving up (and scaling the operator back).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What an uninstall did, printed at the end.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// Bindings whose records were retired and whose finalizer is released.
    pub bindings: usize,
    /// Records retired: what they named revoked (when Vault vouched for it), then deleted.
    pub records: usize,
    /// Records that do not verify, left in place with their finalizer released.
    pub released: usize,
}

/// Runs `cubbyhole uninstall`; exit 0 when nothing is left, 1 when it gave up (the operator
/// then runs again as before), 2 on an unusable configuration.
pub async fn run(args: UninstallArgs) -> ExitCode {
    crate::telemetry::init(false);
    let config = match OperatorConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    match uninstall(&args, config).await {
        Ok(s) => {
            println!(
                "bindings released: {}; records retired (their tokens and wraps revoked): {}; records that do not verify, released: {}",
                s.bindings, s.records, s.released
            );
            println!("nothing cubbyhole minted is alive and no object waits on its finalizers");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("uninstall gave up: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn uninstall(args: &UninstallArgs, config: OperatorConfig) -> Result<Summary, String> {
    let deadline = Instant::now() + args.timeout;
    let metrics = Metrics::new();
    let (vault, client) = crate::controller::wiring::connect(&config, &metrics).await?;
    // Read, never made: with a new key every record would look forged and nothing be revoked.
    let keys = record_keys(&client, &args.namespace).await?;
    let stopped = match &args.deployment {
        Some(name) => stop_operator(&client, &args.namespace, name, deadline).await?,
        None => None,
    };
    let ctx = Context::new(client.clone(), vault, config, metrics, Arc::new(keys));
    let outcome = retry_until(deadline, || retire_everything(&ctx)).await;
    if outcome.is_err()
        && let (Some(name), Some(replicas)) = (&args.deployment, stopped)
    {
        // Gave up: the operator serves again, its records and finalizers as they were.
        let api: Api<Deployment> = Api::namespaced(client.clone(), &args.namespace);
        if let Err(e) = scale(&api, name, replicas).await {
            eprintln!("could not scale {name} back to {replicas}: {e}");
        }
    }
    outcome
}

/// The operator's record keys, from its namespace; an error when they are not there.
async fn record_keys(client: &Client, namespace: &str) -> Result<KeyRing, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(KEY_SECRET)
        .await
        .map_err(|e| format!("reading the record keys in {namespace}: {e}"))?
        .ok_or_else(|| {
            format!(
                "no Secret {KEY_SECRET} in namespace {namespace}: without the operator's record keys no record can be verified, so nothing would be revoked; \
                 give --namespace the operator's namespace (nothing was changed; `helm uninstall --no-hooks` skips this step)"
            )
        })?;
    Ok(KeyRing::new(keys_from_secret(&secret)?))
}

/// Scales the operator's Deployment to 0 and waits until none of its pods is left; returns the
/// replicas it had (`None`: no such Deployment, already removed).
async fn stop_operator(
    client: &Client,
    namespace: &str,
    name: &str,
    deadline: Instant,
) -> Result<Option<i32>, String> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let Some(deployment) = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading deployment {namespace}/{name}: {e}"))?
    else {
        eprintln!("deployment {namespace}/{name} is gone: the operator is not running");
        return Ok(None);
    };
    let spec = deployment.spec.unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let selector = spec
        .selector
        .match_labels
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    if selector.is_empty() {
        return Err(format!(
            "deployment {namespace}/{name} selects its pods by expressions only; stop it by hand and run without --deployment"
        ));
    }
    scale(&api, name, 0)
        .await
        .map_err(|e| format!("scaling deployment {namespace}/{name} to 0: {e}"))?;
    eprintln!("deployment {namespace}/{name} scaled from {replicas} to 0");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    loop {
        let left = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) if list.items.is_empty() => return Ok(Some(replicas)),
            Ok(list) => format!("{} operator pods still run", list.items.len()),
            Err(e) => format!("listing the operator's pods: {e}"),
        };
        if Instant::now() >= deadline {
            scale(&api, name, replicas).await.ok();
            return Err(format!("{left}; scaled back to {replicas}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn scale(api: &Api<Deployment>, name: &str, replicas: i32) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// Runs `attempt` until it succeeds, backing off from 1 s to 15 s, until `deadline`.
async fn retry_until<F, Fut>(deadline: Instant, mut attempt: F) -> Result<Summary, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Summary, String>>,
{
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    loop {
        let delay = backoff.next_delay();
        match attempt().await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + delay >= deadline => return Err(e),
            Err(e) => eprintln!("{e}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
    }
}

/// One pass over the cluster (idempotent: a pass after a failed one finishes its work).
async fn retire_everything(ctx: &Context) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let all: Api<AgentSecretBinding> = Api::all(ctx.client.clone());
    let bindings = list_all(&all, &ListParams::default())
        .await
        .map_err(|e| format!("listing bindings: {e}"))?;
    let mut known = BTreeSet::new();
    for b in &bindings {
        let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
        // Outside watchNamespaces nothing was minted, and nothing may be read.
        if ctx.config.watches(&ns) {
            summary.records += retire_records(ctx, &ns, &name, Some(b))
                .await
                .map_err(|e| format!("binding {ns}/{name}: {e}"))?;
        }
        let api: Api<AgentSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
        release(&api, b, BINDING_FINALIZER)
            .await
            .map_err(|e| format!("releasing binding {ns}/{name}: {e}"))?;
        summary.bindings += 1;
        known.insert((ns, name));
    }
    let orphans: BTreeSet<(String, String)> = list_records(ctx)
        .await?
        .iter()
        .filter_map(|s| Some((s.namespace()?, s.labels().get(BINDING_LABEL)?.clone())))
        .filter(|owner| !known.contains(owner))
        .collect();
    for (ns, binding) in orphans {
        summary.records += retire_records(ctx, &ns, &binding, None)
            .await
            .map_err(|e| format!("records of the gone binding {ns}/{binding}: {e}"))?;
    }
    // What is left does not verify: never acted on, and no longer held.
    for secret in list_records(ctx).await? {
        let ns = secret.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        if release(&api, &secret, SECRET_FINALIZER)
            .await
            .map_err(|e| format!("releasing record {ns}/{}: {e}", secret.name_any()))?
        {
            summary.released += 1;
        }
    }
    Ok(summary)
}

/// Every Secret labelled as a record, in every namespace or in each watched one.
async fn list_records(ctx: &Context) -> Result<Vec<Secret>, String> {
    let records = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let mut all = vec![];
    for (_, api) in scoped_apis::<Secret>(&ctx.client, &ctx.config.watch_namespaces) {
        all.extend(
            list_all(&api, &records)
                .await
                .map_err(|e| format!("listing records: {e}"))?,
        );
    }
    Ok(all)
}

async fn list_all<K>(api: &Api<K>, params: &ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    paged(params, |page| async move { api.list(&page).await }).await
}

/// Removes `finalizer` from `object` (guarded: the patch fails if the list changed meanwhile);
/// `false` when it was not there or the object is gone.
async fn release<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(at) = object.finalizers().iter().position(|f| f == finalizer) else {
        return Ok(false);
    };
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{at}"), "value": finalizer},
        {"op": "remove", "path": format!("/metadata/finalizers/{at}")},
    ]))
    .expect("a valid JSON patch");
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}
