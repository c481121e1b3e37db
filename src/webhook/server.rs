//! The webhook's HTTPS endpoint: TLS with the reloadable certificate, `POST /mutate-pods`
//! (AdmissionReview v1 in and out), `GET /healthz`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Json;
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::webhook::Webhook;
use crate::webhook::admit::{Decision, decide};
use crate::webhook::settings::RequestEndpoint;
use crate::webhook::tls::{Reloadable, server_config};

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves on `listener` until `shutdown`, once a certificate is loaded.
pub async fn serve(
    listener: TcpListener,
    resolver: Arc<Reloadable>,
    webhook: Arc<Webhook>,
    requests: Router,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(resolver.clone())?));
    let app = Router::new()
        .route("/mutate-pods", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(webhook)
        .merge(requests);
    tokio::select! {
        _ = resolver.wait_loaded() => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    info!(%addr, "serving the admission webhook (/mutate-pods, TLS)");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return debug!(%peer, "webhook TLS handshake timed out"),
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "webhook connection"); },
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

async fn mutate(
    State(webhook): State<Arc<Webhook>>,
    body: Bytes,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let request = serde_json::from_slice::<AdmissionReview<Pod>>(&body)
        .map_err(|e| {
            format!(
                "not an AdmissionReview ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })
        .and_then(|r| {
            let req: Result<AdmissionRequest<Pod>, _> = r.try_into();
            req.map_err(|_| "AdmissionReview without a request".into())
        });
    let (response, result) = match request {
        Ok(req) => answer(&webhook, &req).await,
        Err(e) => (AdmissionResponse::invalid(e), "error"),
    };
    webhook.metrics.observe(result, started.elapsed());
    Json(response.into_review())
}

/// The answer for one request and its result word for the metric.
async fn answer(
    webhook: &Webhook,
    req: &AdmissionRequest<Pod>,
) -> (AdmissionResponse, &'static str) {
    let allowed = AdmissionResponse::from(req);
    if req.operation != Operation::Create || req.kind.kind != "Pod" || req.sub_resource.is_some() {
        return (allowed, "skipped");
    }
    let Some(pod) = &req.object else {
        return (allowed.deny("the AdmissionReview carries no pod"), "error");
    };
    let Some(namespace) = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
    else {
        return (allowed.deny("the pod has no namespace"), "error");
    };
    if tokio::time::timeout(Duration::from_secs(2), webhook.bindings.wait_until_ready())
        .await
        .is_err()
    {
        return (
            allowed.deny("the cubbyhole webhook has not loaded the AgentSecretBindings yet; retry in a few seconds"),
            "error",
        );
    }
    let who = crate::webhook::inject::describe_pod(pod);
    let bindings = webhook.bindings.state();
    let mut injector = webhook.injector.clone();
    injector.request = webhook.resolver.ca_bundle().map(|ca_pem| RequestEndpoint {
        url: webhook.request_url.clone(),
        ca_pem,
    });
    match decide(
        pod,
        &namespace,
        &bindings,
        &webhook.rules,
        &injector,
        &nonce(),
    ) {
        Decision::Skip(why) => {
            debug!(%namespace, pod = %who, why, "admitted unchanged");
            (allowed, "skipped")
        }
        Decision::Inject { binding, patch } => {
            let patch: json_patch::Patch =
                match serde_json::from_value(serde_json::Value::Array(patch)) {
                    Ok(p) => p,
                    Err(e) => {
                        return (
                            allowed.deny(format!("internal error building the patch: {e}")),
                            "error",
                        );
                    }
                };
            match allowed.clone().with_patch(patch) {
                Ok(r) => {
                    info!(%namespace, pod = %who, %binding, "pod injected");
                    (r, "injected")
                }
                Err(e) => (allowed.deny(format!("internal error: {e}")), "error"),
            }
        }
        Decision::Refuse(refusal) => {
            // No Event: the webhook has no side effects (its callers cannot be authenticated,
            // so nothing it is told may be published). The creator gets the message; a
            // controller's pods show it in the controller's FailedCreate Events.
            info!(%namespace, pod = %who, reason = refusal.reason, bindings = ?refusal.bindings, "pod refused");
            (allowed.deny(&refusal.message), "refused")
        }
    }
}

/// A short random suffix for Secret names of `generateName` pods.
fn nonce() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
