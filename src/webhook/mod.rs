//! The mutating admission webhook: opted-in pods (label `cubbyhole.dev/inject=true`) get their
//! wrap plumbed in at creation (Secret volume, in-memory token volume, the `cubbyhole unwrap`
//! init container, read-only token mounts), so Deployment, Job and StatefulSet pods work.
//!
//! `settings` (configuration and flags), `admit` and `inject` (the pure decision and patch),
//! `certs` (pure certificate rotation), `cert_store` (the shared Secret and `caBundle`, kept in
//! the listener's reloadable certificate, [`crate::tls`]), `glance` (the cheap first look at a
//! request), `server` (the AdmissionReview route, served by [`crate::listener`]). Every replica
//! serves it.

pub mod admit;
pub mod cert_store;
pub mod certs;
pub mod glance;
pub mod inject;
pub mod server;
pub mod settings;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use crate::vault::SecretString;
use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::RoleRule;
use crate::controller::context::Context;
use crate::crd::AgentSecretBinding;
use crate::listener::ListenerMetrics;
use crate::metrics::Metrics;
use crate::request::limits::Limits;
use crate::request::reviews::Reviews;
use crate::request::serve::{Endpoint, RequestMetrics};
use crate::tls::Reloadable;
use crate::webhook::cert_store::Source;
use crate::webhook::certs::CertSettings;
pub use crate::webhook::settings::{InjectorConfig, WebhookArgs};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The webhook's metrics: requests by result and their latency.
#[derive(Clone)]
pub struct AdmissionMetrics {
    requests: Family<ResultLabels, Counter>,
    duration: Histogram,
}

impl AdmissionMetrics {
    /// Registers `cubbyhole_admission_requests_total{result}` and
    /// `cubbyhole_admission_duration_seconds` with `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let requests = Family::<ResultLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        metrics.register(
            "admission_requests",
            "Admission requests answered by the webhook, by result (injected, skipped, refused, error)",
            requests.clone(),
        );
        metrics.register(
            "admission_duration_seconds",
            "Time the webhook took to answer an admission request",
            duration.clone(),
        );
        Self { requests, duration }
    }

    /// One request answered with `result` in `took`.
    pub fn observe(&self, result: &str, took: Duration) {
        self.requests
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }
}

/// What the request handler needs.
pub struct Webhook {
    /// Every binding (reflector, on every replica).
    pub bindings: Store<AgentSecretBinding>,
    /// Allowed roles from the operator config.
    pub rules: Vec<RoleRule>,
    /// `watchNamespaces` from the operator config (empty: every namespace).
    pub watched: Vec<String>,
    /// What to inject.
    pub injector: InjectorConfig,
    /// Where injected agents of request-delivery bindings ask for their wraps.
    pub request_url: String,
    /// The serving certificate, and the CA bundle agents trust it by.
    pub resolver: Arc<Reloadable>,
    /// Metrics.
    pub metrics: AdmissionMetrics,
    /// The bearer token every admission review must carry (`--webhook-caller-token-file`).
    pub caller_token: Option<SecretString>,
}

/// Reads the caller token file: one token, surrounding whitespace trimmed, not empty.
fn read_caller_token(path: &std::path::Path) -> Result<SecretString, String> {
    let read = std::fs::read_to_string(path)
        .map_err(|e| format!("--webhook-caller-token-file {}: {e}", path.display()))?;
    let token = read.trim();
    if token.is_empty() {
        return Err(format!(
            "--webhook-caller-token-file {} is empty",
            path.display()
        ));
    }
    Ok(SecretString::new(token))
}

/// Starts the webhook when `--webhook-listen` is given: the binding reflector, the
/// certificate keeper and the HTTPS server, which also serves the request endpoint
/// ([`crate::request`]). Returns the server task.
pub async fn start(
    args: &WebhookArgs,
    ctx: Arc<Context>,
    namespace: &str,
    shutdown: CancellationToken,
) -> Result<Option<JoinHandle<Result<(), String>>>, String> {
    let client = ctx.client.clone();
    let config = &ctx.config;
    let metrics = &ctx.metrics;
    let Some(addr) = args.webhook_listen else {
        return Ok(None);
    };
    args.validate()?;
    let injector = InjectorConfig::resolved(config)?;
    let caller_token = args
        .webhook_caller_token_file
        .as_deref()
        .map(read_caller_token)
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("webhook listen {addr}: {e}"))?;

    let (bindings, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<AgentSecretBinding>::all(client.clone()),
            watcher::Config::default(),
        )
        .modify(crate::crd::slim_for_cache),
    )
    .default_backoff()
    .applied_objects();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let drain = stream.for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "webhook binding watch");
            }
        });
        tokio::select! {
            _ = drain => {}
            _ = stop.cancelled() => {}
        }
    });

    let source = match &args.webhook_cert_dir {
        Some(dir) => Source::Files(dir.clone()),
        None => Source::Managed {
            namespace: namespace.to_string(),
            secret: args.webhook_cert_secret.clone(),
            configuration: args.webhook_configuration.clone(),
            settings: CertSettings {
                sans: args.sans(namespace),
                serving_validity: args.webhook_cert_validity,
                ca_validity: args.webhook_ca_validity,
            },
        },
    };
    let resolver = Arc::new(Reloadable::default());
    tokio::spawn(cert_store::run(
        client.clone(),
        source,
        resolver.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let endpoint = Arc::new(Endpoint {
        ctx: ctx.clone(),
        bindings: bindings.clone(),
        rules: config.allowed_roles.clone(),
        limits: Limits::new(&config.request_limits),
        receipt_limits: Limits::new(&config.request_limits),
        reviews: Reviews::new(&config.listener, metrics),
        metrics: RequestMetrics::new(metrics),
        own_writes: Default::default(),
        refusal_events: Default::default(),
    });
    let webhook = Arc::new(Webhook {
        bindings,
        rules: config.allowed_roles.clone(),
        watched: config.watch_namespaces.clone(),
        injector,
        request_url: args.request_url(namespace),
        resolver: resolver.clone(),
        metrics: AdmissionMetrics::new(metrics),
        caller_token,
    });
    let app = server::routes(webhook).merge(crate::request::serve::routes(endpoint));
    Ok(Some(tokio::spawn(crate::listener::serve(
        listener,
        resolver,
        app,
        config.listener.clone(),
        ListenerMetrics::new(metrics),
        shutdown,
    ))))
}
