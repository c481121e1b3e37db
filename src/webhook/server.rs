//! The webhook's routes on the listener: `POST /mutate-pods` (AdmissionReview v1 in and out:
//! a cheap first look, the typed parse only for opted-in pods of a sane size), `GET /healthz`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tracing::{debug, info};

use crate::config::RequestEndpoint;
use crate::listener::read_body;
use crate::vault::SecretString;
use crate::webhook::Webhook;
use crate::webhook::admit::{Decision, decide};
use crate::webhook::glance::{MAX_POD_VALUES, glance, not_a_review};

/// Largest AdmissionReview read: a pod etcd can store (1.5 MiB) and the review around it.
pub const MAX_REVIEW_BYTES: usize = 1536 * 1024 + 64 * 1024;

/// The webhook's routes (`POST /mutate-pods`, `GET /healthz`), to serve with the request
/// endpoint's on the listener.
pub fn routes(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate-pods", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(webhook)
}

async fn mutate(State(webhook): State<Arc<Webhook>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    if let Some(expected) = &webhook.caller_token
        && !carries(&headers, expected)
    {
        webhook
            .metrics
            .observe("unauthenticated", started.elapsed());
        return (
            StatusCode::UNAUTHORIZED,
            "admission reviews must carry the API server's bearer token\n",
        )
            .into_response();
    }
    let body = match read_body(body, MAX_REVIEW_BYTES).await {
        Ok(b) => b,
        Err((status, message)) => {
            webhook.metrics.observe("error", started.elapsed());
            return (status, message).into_response();
        }
    };
    let (response, result) = match glance(&body) {
        Err(e) => (AdmissionResponse::invalid(e), "error"),
        Ok(g) if !g.opted_in_create => (allowed(g.uid), "skipped"),
        Ok(g) if g.pod_values > MAX_POD_VALUES => (
            allowed(g.uid).deny(format!(
                "the pod holds {} JSON values; cubbyhole injects pods of at most {MAX_POD_VALUES}",
                g.pod_values
            )),
            "refused",
        ),
        Ok(_) => match typed(&body) {
            Ok(req) => answer(&webhook, &req).await,
            Err(e) => (AdmissionResponse::invalid(e), "error"),
        },
    };
    webhook.metrics.observe(result, started.elapsed());
    Json(response.into_review()).into_response()
}

/// Whether `headers` carry `Authorization: Bearer <expected>`, compared in constant time.
fn carries(headers: &HeaderMap, expected: &SecretString) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let expected = expected.expose().as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// An answer allowing request `uid` unchanged.
fn allowed(uid: String) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid("");
    response.uid = uid;
    response.allowed = true;
    response.result = Default::default();
    response
}

/// The typed request, for a pod worth reading.
fn typed(body: &Bytes) -> Result<AdmissionRequest<Pod>, String> {
    serde_json::from_slice::<AdmissionReview<Pod>>(body)
        .map_err(|e| not_a_review(&e))?
        .try_into()
        .map_err(|_| "AdmissionReview without a request".into())
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
        &webhook.watched,
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_the_exact_bearer_token_is_the_api_servers() {
        let expected = SecretString::new("s3cret-caller");
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(carries(&with("Bearer s3cret-caller"), &expected));
        for wrong in [
            "Bearer s3cret-calleR",
            "Bearer s3cret-caller2",
            "Bearer s3cret",
            "Bearer ",
            "bearer s3cret-caller",
            "Basic s3cret-caller",
            "s3cret-caller",
        ] {
            assert!(!carries(&with(wrong), &expected), "{wrong}");
        }
        assert!(!carries(&HeaderMap::new(), &expected));
    }
}
