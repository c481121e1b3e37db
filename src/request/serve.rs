//! The request endpoint, on every replica beside the admission webhook (same TLS listener):
//! `POST /v1/wrap` mints a wrap for the pod the caller's token is bound to and returns it;
//! `POST /v1/receipt` records what the agent did with it. Each ask is one pod start: one mint
//! and one record write (the record carries accessors and phases, never the token), the
//! previous start's wrap and token revoked first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde_json::json;
use tracing::{info, warn};

use crate::agent::receipt::Receipt;
use crate::config::RoleRule;
use crate::controller::context::{Context, key};
use crate::controller::execute::{Minted, mint_and_record, publish};
use crate::controller::vouch::{Claim, revoke_named, wrap_pending};
use crate::core::plan::{AskKind, ask_kind, asked, revocations, serve_same_run};
use crate::core::pod::{PodView, is_valid_secret_name, secret_name};
use crate::core::spec::token_request;
use crate::crd::AgentSecretBinding;
use crate::listener::{Source, read_body, refusal_response};
use crate::metrics::Metrics;
use crate::record::seal::Authenticity;
use crate::record::seal::RecordKeys;
use crate::record::writes::{self, Records, Sealer, WriteError};
use crate::record::{BINDING_LABEL, Phase, WrapState};
use crate::request::gate::{Chosen, choose};
use crate::request::identity::PodIdentity;
use crate::request::limits::Limits;
use crate::request::own_writes::OwnWrites;
use crate::request::protocol::{
    RECEIPT_PATH, Refusal, WRAP_PATH, WRAPPING_TOKEN_FIELD, WrapFacts, reason,
};
use crate::request::reviews::{Denied, Reviews};
use crate::vault::{SecretString, VaultError};

/// How long an ask from a run already served waits for the kubelet to report a restart.
const RESTART_REPORT_WAIT: Duration = Duration::from_secs(3);
/// How often the pod is read again meanwhile.
const RESTART_REPORT_POLL: Duration = Duration::from_millis(500);

/// Longest bearer token or receipt body read.
const MAX_INPUT: usize = 16 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    endpoint: &'static str,
    result: String,
}

/// The endpoint's metrics: answers by endpoint and result, and how long asks took.
#[derive(Clone)]
pub struct RequestMetrics {
    answers: Family<ResultLabels, Counter>,
    duration: Histogram,
}

impl RequestMetrics {
    /// Registers `cubbyhole_wrap_requests_total{endpoint,result}` and
    /// `cubbyhole_wrap_request_duration_seconds`.
    pub fn new(metrics: &Metrics) -> Self {
        let answers = Family::<ResultLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        metrics.register(
            "wrap_requests",
            "Asks (endpoint wrap) and receipts (endpoint receipt) answered by the request endpoint, by result (served, accepted, or the refusal's reason)",
            answers.clone(),
        );
        metrics.register(
            "wrap_request_duration_seconds",
            "Time from an agent's ask to its answer",
            duration.clone(),
        );
        Self { answers, duration }
    }

    /// One answer of `endpoint` (`wrap` or `receipt`) with `result`.
    pub fn observe(&self, endpoint: &'static str, result: &str) {
        self.answers
            .get_or_create(&ResultLabels {
                endpoint,
                result: result.to_string(),
            })
            .inc();
    }
}

/// What the endpoint needs.
pub struct Endpoint {
    /// The operator's shared state (Vault, API client, record keys, metrics, Events).
    pub ctx: Arc<Context>,
    /// Every binding (the webhook's reflector, on every replica).
    pub bindings: Store<AgentSecretBinding>,
    /// Allowed roles.
    pub rules: Vec<RoleRule>,
    /// Per-pod and per-namespace rate limits of asks.
    pub limits: Limits,
    /// The same limits, apart, for receipts.
    pub receipt_limits: Limits,
    /// Identity tokens reviewed at most once, within budgets per peer address.
    pub reviews: Reviews,
    /// Metrics.
    pub metrics: RequestMetrics,
    /// What this replica last wrote to each record (read your own writes).
    pub own_writes: OwnWrites,
    /// When each pod (by uid) last got a refusal Event from this replica.
    pub refusal_events: Mutex<HashMap<String, Instant>>,
}

/// At most one refusal Event per pod this often: a pod asking in a loop costs the API server
/// one Event a minute, not one per ask.
const REFUSAL_EVENT_EVERY: Duration = Duration::from_secs(60);
/// Most pods remembered before the ones past [`REFUSAL_EVENT_EVERY`] are forgotten.
const PRUNE_REFUSAL_EVENTS_ABOVE: usize = 4096;

/// A refusal, and how long to wait before asking again (for `Retry-After`).
struct Refused(Refusal, Option<Duration>);

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        let wait = match r.reason.as_str() {
            reason::RETRY | reason::INTERNAL => Some(Duration::from_secs(1)),
            reason::VAULT_UNAVAILABLE => Some(Duration::from_secs(2)),
            _ => None,
        };
        Refused(r, wait)
    }
}

/// A failed Kubernetes API call, answered without the API server's words (they may name the
/// operator's identity and what it may do): logged in full, answered with the status only.
fn internal(e: kube::Error) -> Refused {
    warn!(error = %e, "a Kubernetes API call of the request endpoint failed");
    Refusal::new(reason::INTERNAL, internal_message(&e)).into()
}

/// What an agent is told about a failed Kubernetes API call: its HTTP status, if any.
fn internal_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!(
            "the operator's Kubernetes API call failed (status {}); its log says more",
            s.code
        ),
        _ => "the operator could not reach the Kubernetes API; its log says more".into(),
    }
}

fn vault_refusal(e: &VaultError) -> Refused {
    if e.is_unavailable() || e.may_have_been_processed() {
        Refusal::new(
            reason::VAULT_UNAVAILABLE,
            format!("Vault is unavailable: {e}"),
        )
        .into()
    } else {
        Refusal::new(reason::VAULT_REFUSED, format!("Vault refused: {e}")).into()
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refusal_response(&self.0, self.1)
    }
}

/// A 429: `what` came too often; ask again after `wait`.
fn rate_limited(what: String, wait: Duration) -> Refused {
    let message = format!("{what}; ask again in {:.1}s", wait.as_secs_f64());
    Refused(Refusal::new(reason::RATE_LIMITED, message), Some(wait))
}

/// The endpoint's routes, to merge into the webhook's server.
pub fn routes(endpoint: Arc<Endpoint>) -> Router {
    Router::new()
        .route(WRAP_PATH, post(ask))
        .route(RECEIPT_PATH, post(receipt))
        .with_state(endpoint)
}

async fn ask(
    State(e): State<Arc<Endpoint>>,
    source: Option<Extension<Source>>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    // Its own task: a caller hanging up mid-ask cannot cut it between the mint and the record
    // write (the wrap is then recorded, and ended by the controller as any unread one).
    let asked = e.clone();
    let source = source.map(|Extension(Source(ip))| ip);
    let answer = match tokio::spawn(async move { asked.ask(&headers, source).await }).await {
        Ok(answer) => answer,
        Err(_) => Err(Refusal::new(reason::INTERNAL, "the ask failed; ask again").into()),
    };
    e.metrics.duration.observe(started.elapsed().as_secs_f64());
    match answer {
        Ok((facts, token)) => {
            e.metrics.observe("wrap", "served");
            let mut body = serde_json::to_value(&facts).unwrap_or_default();
            body[WRAPPING_TOKEN_FIELD] = json!(token.expose());
            let mut response = (StatusCode::OK, axum::Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(refused) => {
            e.metrics.observe("wrap", &refused.0.reason);
            refused.into_response()
        }
    }
}

async fn receipt(
    State(e): State<Arc<Endpoint>>,
    source: Option<Extension<Source>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let source = source.map(|Extension(Source(ip))| ip);
    match e.report(&headers, source, body).await {
        Ok(()) => {
            e.metrics.observe("receipt", "accepted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(refused) => {
            e.metrics.observe("receipt", &refused.0.reason);
            refused.into_response()
        }
    }
}

/// Reads `name` from the API server's watch cache (`resourceVersion=0`): no etcd read, perhaps
/// a moment behind.
async fn cached_get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_with(name, &kube::api::GetParams::any()).await {
        Ok(k) => Ok(Some(k)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Result<SecretString, Refused> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme name is case-insensitive (RFC 9110, 11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_INPUT)
        .map(SecretString::new)
        .ok_or_else(|| {
            Refusal::new(
                reason::NO_TOKEN,
                "send the pod's projected service-account token (audience \"cubbyhole\") as Authorization: Bearer",
            )
            .into()
        })
}

/// Whether pod `uid` may get a refusal Event at `now` given when each pod last got one
/// (`sent`, updated when it may).
fn event_due(sent: &mut HashMap<String, Instant>, uid: &str, now: Instant) -> bool {
    if sent
        .get(uid)
        .is_some_and(|at| now.saturating_duration_since(*at) < REFUSAL_EVENT_EVERY)
    {
        return false;
    }
    if sent.len() >= PRUNE_REFUSAL_EVENTS_ABOVE {
        sent.retain(|_, at| now.saturating_duration_since(*at) < REFUSAL_EVENT_EVERY);
    }
    sent.insert(uid.to_string(), now);
    true
}

/// The pod an ask is for, the binding serving it, and where its record is.
struct Served {
    who: PodIdentity,
    pod: PodView,
    chosen: Chosen,
    secret: String,
}

impl Served {
    fn binding(&self) -> String {
        self.chosen.binding.name_any()
    }
}

impl Endpoint {
    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.ctx.client.clone(), namespace)
    }

    /// `binding`'s records in `namespace`, written through `api` and signed.
    fn records<'a>(
        api: &'a Api<Secret>,
        namespace: &'a str,
        binding: &'a str,
        keys: &'a RecordKeys,
    ) -> Records<'a> {
        Records {
            api,
            sealer: Sealer {
                namespace,
                binding,
                keys,
            },
        }
    }

    /// Who asks, whether they may, and which binding serves them (`limits`: the pod's and its
    /// namespace's budget, taken before anything is read for it).
    async fn admit(
        &self,
        headers: &HeaderMap,
        source: Option<IpAddr>,
        limits: &Limits,
    ) -> Result<Served, Refused> {
        let token = bearer(headers)?;
        let who = match self
            .reviews
            .identify(&self.ctx.client, &token, source)
            .await
        {
            Ok(who) => who,
            Err(Denied::Refused(refusal)) => return Err(refusal.into()),
            Err(Denied::Limited(wait)) => {
                let what = "too many new identity tokens from this address".to_string();
                return Err(rate_limited(what, wait));
            }
            Err(Denied::Api(e)) => return Err(internal(e)),
        };
        if let Err(wait) = limits.take(&who.namespace, &who.pod_uid, Instant::now()) {
            let what = format!(
                "too many requests from pod {}/{} or its namespace",
                who.namespace, who.pod
            );
            return Err(rate_limited(what, wait));
        }
        if !self.ctx.config.watches(&who.namespace) {
            // Nothing is read for it: the operator may not even be allowed to.
            return Err(Refusal::new(
                reason::NOT_SELECTED,
                format!(
                    "namespace {:?} is not one this operator watches (watchNamespaces): no binding there is served",
                    who.namespace
                ),
            )
            .into());
        }
        let pod = self.read_pod(&who).await?;
        if tokio::time::timeout(Duration::from_secs(2), self.bindings.wait_until_ready())
            .await
            .is_err()
        {
            return Err(Refusal::new(
                reason::RETRY,
                "the operator has not loaded the AgentSecretBindings yet",
            )
            .into());
        }
        let chosen = match choose(
            &who,
            pod.as_ref(),
            &self.bindings.state(),
            &self.rules,
            &self.ctx.config.watch_namespaces,
        ) {
            Ok(c) => c,
            Err(refusal) => {
                self.refused_event(&who, &refusal).await;
                return Err(refusal.into());
            }
        };
        let pod = pod.expect("chosen for a pod that exists");
        let secret = secret_name(&pod, &chosen.binding.name_any());
        if !is_valid_secret_name(&secret) {
            return Err(Refusal::new(
                reason::INVALID_BINDING,
                format!("the pod's record name {secret:?} is not a valid Secret name: fix annotation cubbyhole.dev/secret-name"),
            )
            .into());
        }
        Ok(Served {
            who,
            pod,
            chosen,
            secret,
        })
    }

    /// The pod `who` is bound to, read where it is cheapest and still knows that pod: the
    /// controller's pod cache (the leader's), the API server's watch cache, else etcd (a pod too
    /// new for either).
    async fn read_pod(&self, who: &PodIdentity) -> Result<Option<PodView>, Refused> {
        if let Some(view) = self
            .ctx
            .pods
            .get(&who.namespace, &who.pod)
            .and_then(|p| PodView::from_cached(&p))
            && view.uid == who.pod_uid
        {
            return Ok(Some(view));
        }
        let pods = Api::<Pod>::namespaced(self.ctx.client.clone(), &who.namespace);
        let cached = cached_get(&pods, &who.pod).await.map_err(internal)?;
        let view = cached.as_ref().and_then(PodView::from_pod);
        if view.as_ref().is_some_and(|v| v.uid == who.pod_uid) {
            return Ok(view);
        }
        let fresh = pods.get_opt(&who.pod).await.map_err(internal)?;
        Ok(fresh.as_ref().and_then(PodView::from_pod))
    }

    /// The pod's current record: `None` when there is none; refused when the name holds
    /// something else or a record of an earlier pod of the same name.
    async fn current_record(&self, s: &Served) -> Result<Option<WrapState>, Refused> {
        // A cached read is enough: the write that follows is guarded by its resourceVersion
        // (a stale read loses that race and the agent asks again). The controller's records
        // cache once it is synced (the leader's), else the API server's watch cache.
        let key = key(&s.who.namespace, &s.secret);
        let cached = self.ctx.secrets.is_ready().then(|| {
            self.ctx
                .secrets
                .get(&s.who.namespace, &s.secret)
                .and_then(|r| r.unpack())
        });
        let cached_rv = cached
            .as_ref()
            .and_then(|c| c.as_ref()?.metadata.resource_version.clone());
        let lagging = self.own_writes.cache_may_lag(&key, cached_rv.as_deref());
        let found = match cached {
            Some(c) if !lagging => c,
            // Our own last write is not in the cache yet: read it where it is.
            _ if lagging => self
                .secrets(&s.who.namespace)
                .get_opt(&s.secret)
                .await
                .map_err(internal)?,
            _ => cached_get(&self.secrets(&s.who.namespace), &s.secret)
                .await
                .map_err(internal)?,
        };
        let Some(found) = found else {
            return Ok(None);
        };
        let binding = s.binding();
        let taken = || -> Refused {
            Refusal::new(
                reason::NAME_TAKEN,
                format!(
                    "Secret {}/{} exists and is not a record of AgentSecretBinding {binding:?}: remove it or choose another name with annotation cubbyhole.dev/secret-name",
                    s.who.namespace, s.secret
                ),
            )
            .into()
        };
        if found.labels().get(BINDING_LABEL) != Some(&binding) {
            return Err(taken());
        }
        let record = WrapState::from_secret(&found, None, &self.ctx.record_keys.current())
            .filter(|r| r.authenticity == Authenticity::Authentic)
            .ok_or_else(taken)?;
        if record.deleting || record.pod_uid != s.pod.uid {
            return Err(Refusal::new(
                reason::RETRY,
                "an earlier pod's record under this name is still being removed",
            )
            .into());
        }
        Ok(Some(record))
    }

    /// Checks that an ask comes from a run of the pod that `record` was not served for. The
    /// run already served is served again only while its wrap is still pending (the agent's
    /// answer was lost on the way); otherwise the ask waits briefly for the kubelet to report a
    /// restart it has not reported yet (it does so just after the container starts), `s.pod`
    /// left as last read, and is refused when none comes.
    async fn a_new_run(&self, s: &mut Served, record: &WrapState) -> Result<(), Refused> {
        if ask_kind(&s.pod, Some(record)) == AskKind::NewRun {
            return Ok(());
        }
        let pending = match &record.wrap_accessor {
            Some(accessor) if record.phase == Phase::Issued => {
                wrap_pending(&self.ctx.vault, Claim::of(&s.chosen.binding), accessor)
                    .await
                    .map_err(|e| vault_refusal(&e))?
            }
            _ => false,
        };
        if serve_same_run(record, pending) {
            return Ok(());
        }
        let pods = Api::<Pod>::namespaced(self.ctx.client.clone(), &s.who.namespace);
        let deadline = Instant::now() + RESTART_REPORT_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(RESTART_REPORT_POLL).await;
            // The API server's watch cache: cheap, and the kubelet's report reaches it at once.
            let read = cached_get(&pods, &s.who.pod).await.map_err(internal)?;
            match read.as_ref().and_then(PodView::from_pod) {
                Some(pod) if pod.uid == s.pod.uid => s.pod = pod,
                _ => return Err(Refusal::new(reason::POD_GONE, "the pod is gone").into()),
            }
            if ask_kind(&s.pod, Some(record)) == AskKind::NewRun {
                return Ok(());
            }
        }
        let refusal = Refusal::new(
            reason::ALREADY_SERVED,
            format!(
                "pod {}/{} was already served a wrap in this run (start {}); a new wrap needs a new run of the pod (a container restart)",
                s.who.namespace, s.who.pod, record.start
            ),
        );
        warn!(namespace = %s.who.namespace, pod = %s.who.pod, start = record.start,
            "refused an ask from a run already served (a replayed identity token, or an agent asking twice)");
        self.refused_event(&s.who, &refusal).await;
        Err(refusal.into())
    }

    /// One ask: a fresh wrap for a new start of the pod.
    async fn ask(
        &self,
        headers: &HeaderMap,
        source: Option<IpAddr>,
    ) -> Result<(WrapFacts, SecretString), Refused> {
        let mut s = self.admit(headers, source, &self.limits).await?;
        let old = self.current_record(&s).await?;
        if let Some(record) = &old {
            self.a_new_run(&mut s, record).await?;
        }
        let namespace = s.who.namespace.as_str();
        let binding = s.binding();
        // The previous start's wrap and token go first: whatever that agent instance held, the
        // new one is asking afresh.
        if let Some(old) = &old {
            let revoke = revocations(old, s.chosen.binding.spec.revoke_on_pod_deletion);
            let claim = Claim::of(&s.chosen.binding);
            revoke_named(&self.ctx.vault, &self.ctx.metrics, claim, old, revoke)
                .await
                .map_err(|e| vault_refusal(&e))?;
        }
        let issue = asked(&s.pod, s.secret.clone(), old);
        let wrap_ttl = s.chosen.valid.wrap_ttl;
        let request = token_request(
            &s.chosen.binding,
            &issue.pod,
            &issue.pod_uid,
            wrap_ttl,
            self.ctx.config.token_grace,
        );
        let api = self.secrets(namespace);
        let keys = self.ctx.record_keys.current();
        let records = self
            .ctx
            .live_records(Self::records(&api, namespace, &binding, &keys));
        // No Secret key: the wrap goes back to the agent that asked, never into the record.
        let minted = mint_and_record(
            &self.ctx.vault,
            &records,
            &self.ctx.metrics,
            &issue,
            &request,
            None,
        )
        .await;
        for (secret, version) in records.written.into_inner().expect("written lock") {
            if let Some(version) = version {
                self.own_writes.wrote(key(namespace, &secret), version);
            }
        }
        let (wrap, expires_at) = match minted {
            Minted::Delivered { wrap, expires_at } => (wrap, expires_at),
            Minted::VaultFailed(e) => {
                warn!(%namespace, %binding, pod = %issue.pod, error = %e, "mint on request failed");
                return Err(vault_refusal(&e));
            }
            Minted::NotRecorded(WriteError::Taken) => {
                let message = format!(
                    "Secret {namespace}/{} is not this binding's record",
                    issue.secret
                );
                return Err(Refusal::new(reason::NAME_TAKEN, message).into());
            }
            Minted::NotRecorded(WriteError::Lost) => {
                let message = "another ask for this pod won; ask again";
                return Err(Refusal::new(reason::RETRY, message).into());
            }
            Minted::NotRecorded(WriteError::Kube(e)) => return Err(internal(e)),
        };
        info!(%namespace, %binding, pod = %issue.pod, start = issue.start,
            wrap_accessor = %wrap.accessor, accessor = %wrap.wrapped_accessor, "wrap issued on request");
        if self.ctx.config.routine_events {
            let note = format!(
                "issued wrap (accessor {}) on request for pod {} start {}, expires {expires_at}",
                wrap.accessor, issue.pod, issue.start
            );
            self.pod_event(&s.who, EventType::Normal, "WrapIssued", &note)
                .await;
        }
        let facts = WrapFacts {
            wrap_accessor: wrap.accessor.clone(),
            binding,
            start: issue.start,
            wrap_ttl_seconds: wrap_ttl.as_secs(),
        };
        Ok((facts, wrap.token))
    }

    /// One receipt: recorded in the pod's current record for the planner to settle.
    async fn report(
        &self,
        headers: &HeaderMap,
        source: Option<IpAddr>,
        body: Body,
    ) -> Result<(), Refused> {
        let s = self.admit(headers, source, &self.receipt_limits).await?;
        let body = read_body(body, MAX_INPUT)
            .await
            .map_err(|(_, message)| Refused::from(Refusal::new(reason::BAD_RECEIPT, message)))?;
        let receipt = std::str::from_utf8(&body)
            .ok()
            .and_then(Receipt::parse)
            .ok_or_else(|| {
                Refused::from(Refusal::new(
                    reason::BAD_RECEIPT,
                    "the body is not a cubbyhole receipt",
                ))
            })?;
        let stale = || -> Refused {
            Refusal::new(
                reason::STALE_RECEIPT,
                "this receipt is not about the pod's current wrap (a newer ask replaced it)",
            )
            .into()
        };
        let record = self.current_record(&s).await?.ok_or_else(stale)?;
        if receipt.accessor.is_some() && receipt.accessor == record.previous_accessor {
            return Err(stale());
        }
        if record.reported.as_ref() == Some(&receipt) {
            return Ok(());
        }
        let namespace = s.who.namespace.as_str();
        let binding = s.binding();
        let api = self.secrets(namespace);
        let keys = self.ctx.record_keys.current();
        let records = Self::records(&api, namespace, &binding, &keys);
        match writes::report(&records, &record, &receipt).await {
            Ok(rv) => {
                self.own_writes.wrote(key(namespace, &record.secret), rv);
                Ok(())
            }
            Err(WriteError::Kube(e)) => Err(internal(e)),
            Err(_) => Err(Refusal::new(reason::RETRY, "the record changed; report again").into()),
        }
    }

    /// A Warning Event on the pod that asked and was refused.
    async fn refused_event(&self, who: &PodIdentity, refusal: &Refusal) {
        if refusal.reason == reason::POD_GONE || !self.refusal_event_due(&who.pod_uid) {
            return;
        }
        let note = format!("{}: {}", refusal.reason, refusal.message);
        self.pod_event(who, EventType::Warning, "WrapRequestRefused", &note)
            .await;
    }

    /// Whether pod `uid` may get a refusal Event now (and it is then counted as sent).
    fn refusal_event_due(&self, uid: &str) -> bool {
        let mut sent = self.refusal_events.lock().expect("refusal events lock");
        event_due(&mut sent, uid, Instant::now())
    }

    /// An Event on the pod `who` is bound to.
    async fn pod_event(&self, who: &PodIdentity, type_: EventType, reason: &str, note: &str) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(who.pod.clone()),
            namespace: Some(who.namespace.clone()),
            uid: Some(who.pod_uid.clone()),
            ..Default::default()
        };
        publish(
            &self.ctx.recorder,
            &reference,
            type_,
            reason,
            "Request",
            note,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_nothing_else_is_a_bearer() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            bearer(&headers).map(|t| t.expose().to_string()).ok()
        };
        for scheme in ["Bearer", "bearer", "BEARER"] {
            assert_eq!(
                with(&format!("{scheme} abc.def")).as_deref(),
                Some("abc.def")
            );
        }
        for refused in ["Basic abc", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(with(refused), None, "{refused}");
        }
        assert!(bearer(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_pod_gets_one_refusal_event_a_minute_and_others_are_not_held_back() {
        let mut sent = HashMap::new();
        let t0 = Instant::now();
        assert!(event_due(&mut sent, "a", t0));
        assert!(!event_due(&mut sent, "a", t0 + Duration::from_secs(59)));
        assert!(event_due(&mut sent, "b", t0));
        assert!(event_due(&mut sent, "a", t0 + REFUSAL_EVENT_EVERY));
    }

    #[test]
    fn an_agent_is_told_the_api_status_never_the_api_servers_words() {
        let forbidden = kube::Error::Api(
            kube::core::Status::failure(
                "secrets is forbidden: User \"system:serviceaccount:cubbyhole-system:cubbyhole\" cannot get",
                "Forbidden",
            )
            .with_code(403)
            .boxed(),
        );
        let told = internal_message(&forbidden);
        assert!(told.contains("403"), "{told}");
        assert!(
            !told.contains("serviceaccount") && !told.contains("forbidden"),
            "{told}"
        );
    }

    #[test]
    fn pods_past_the_minute_are_forgotten_once_there_are_many() {
        let mut sent = HashMap::new();
        let t0 = Instant::now();
        for i in 0..PRUNE_REFUSAL_EVENTS_ABOVE {
            event_due(&mut sent, &i.to_string(), t0);
        }
        assert!(event_due(&mut sent, "new", t0 + REFUSAL_EVENT_EVERY));
        assert_eq!(sent.len(), 1);
    }
}
