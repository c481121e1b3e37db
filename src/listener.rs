//! The operator's one TLS listener (admission webhook and request endpoint, on every replica),
//! bounded so that no client can exhaust it: open connections in total and per peer address,
//! the TLS handshake, the time to send a request's headers (also the idle limit of a kept-alive
//! connection) and the requests handled at once. A client beyond a bound is closed at once or
//! answered 503 with `Retry-After`, before any expensive work, and counted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::config::ListenerLimits;
use crate::metrics::Metrics;
use crate::request::protocol::{Refusal, reason};
use crate::tls::{Reloadable, server_config};

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a slot among the ones handled at once.
const SLOT_WAIT: Duration = Duration::from_secs(2);
/// How long a client may take to send a request body (the API server sends a review at once).
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most peer addresses whose request slots are kept before the idle ones are dropped.
const PRUNE_SOURCES_ABOVE: usize = 4096;
/// Largest buffer a connection keeps for reading (headers included).
const READ_BUFFER: usize = 64 * 1024;

/// The peer address a request came from, in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source(pub IpAddr);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// The listener's metrics: open connections and what was refused, by bound.
#[derive(Clone)]
pub struct ListenerMetrics {
    open: Gauge,
    refused: Family<RefusedLabels, Counter>,
}

impl ListenerMetrics {
    /// Registers `cubbyhole_listener_connections` and
    /// `cubbyhole_listener_refused_total{reason}`.
    pub fn new(metrics: &Metrics) -> Self {
        let open = Gauge::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        metrics.register(
            "listener_connections",
            "Connections open on the TLS listener (webhook and request endpoint)",
            open.clone(),
        );
        metrics.register(
            "listener_refused",
            "Connections or requests the TLS listener refused, by the bound they hit (connections, source_connections, in_flight, source_in_flight, body_too_large)",
            refused.clone(),
        );
        Self { open, refused }
    }

    fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}

/// Open connections per peer address, each held by a [`SourceSlot`].
#[derive(Default)]
struct SourceCounts(Mutex<HashMap<IpAddr, u32>>);

/// One open connection of a peer address; released when dropped.
struct SourceSlot(Arc<SourceCounts>, IpAddr);

impl SourceCounts {
    /// A slot for `ip` when it holds fewer than `max` connections.
    fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<SourceSlot> {
        let mut counts = self.0.lock().expect("source counts lock");
        let n = counts.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), ip))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.0.0.lock().expect("source counts lock");
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// Requests handled at once, in total and per peer address: a peer holding its share (slow
/// bodies, slow asks) waits for its own slots and takes none from the others.
struct Slots {
    all: Arc<Semaphore>,
    per_source: usize,
    sources: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// The two slots one request holds.
type Held2 = (OwnedSemaphorePermit, OwnedSemaphorePermit);

impl Slots {
    fn new(limits: &ListenerLimits) -> Self {
        Self {
            all: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
            per_source: limits.max_in_flight_per_source as usize,
            sources: Mutex::default(),
        }
    }

    /// A slot of `ip`'s and one of all, waiting up to [`SLOT_WAIT`]; else the bound that was
    /// full (`source_in_flight` or `in_flight`).
    async fn take(&self, ip: IpAddr) -> Result<Held2, &'static str> {
        let mine = {
            let mut sources = self.sources.lock().expect("slots lock");
            if sources.len() > PRUNE_SOURCES_ABOVE {
                sources.retain(|_, s| s.available_permits() < self.per_source);
            }
            sources
                .entry(ip)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_source)))
                .clone()
        };
        let deadline = tokio::time::Instant::now() + SLOT_WAIT;
        let Ok(Ok(own)) = tokio::time::timeout_at(deadline, mine.acquire_owned()).await else {
            return Err("source_in_flight");
        };
        let Ok(Ok(shared)) =
            tokio::time::timeout_at(deadline, self.all.clone().acquire_owned()).await
        else {
            return Err("in_flight");
        };
        Ok((own, shared))
    }
}

/// Everything one connection holds: its places among all and among its source's connections.
struct Held {
    _all: OwnedSemaphorePermit,
    _source: SourceSlot,
    open: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Serves `app` on `listener` with TLS until `shutdown`, once a certificate is loaded, within
/// `limits`.
pub async fn serve(
    listener: TcpListener,
    resolver: Arc<Reloadable>,
    app: Router,
    limits: ListenerLimits,
    metrics: ListenerMetrics,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(resolver.clone())?));
    tokio::select! {
        _ = resolver.wait_loaded() => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    info!(%addr, max_connections = limits.max_connections, "serving the admission webhook and the request endpoint (TLS)");
    let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
    let in_flight = Arc::new(Slots::new(&limits));
    let sources = Arc::new(SourceCounts::default());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Ok(all) = connections.clone().try_acquire_owned() else {
            metrics.refused("connections");
            continue;
        };
        let Some(source) = sources.take(peer.ip(), limits.max_connections_per_source) else {
            metrics.refused("source_connections");
            continue;
        };
        metrics.open.inc();
        let held = Held {
            _all: all,
            _source: source,
            open: metrics.open.clone(),
        };
        let acceptor = acceptor.clone();
        let (app, in_flight, metrics) = (app.clone(), in_flight.clone(), metrics.clone());
        let header_timeout = limits.header_read_timeout;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _held = held;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let ip = peer.ip();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(Source(ip));
                let (app, in_flight, metrics) = (app.clone(), in_flight.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(handle(app, req, ip, &in_flight, &metrics).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(READ_BUFFER)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "listener connection"); },
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

/// One request, once it holds a slot among those handled at once (health checks need none).
async fn handle(
    app: Router,
    req: Request<Incoming>,
    ip: IpAddr,
    slots: &Slots,
    metrics: &ListenerMetrics,
) -> Response {
    if req.uri().path() == "/healthz" {
        return app.oneshot(req).await.into_response();
    }
    let _slots = match slots.take(ip).await {
        Ok(held) => held,
        Err(bound) => {
            metrics.refused(bound);
            return busy();
        }
    };
    let response = app.oneshot(req).await.into_response();
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        metrics.refused("body_too_large");
    }
    response
}

/// 503 with `Retry-After: 1`, in the request endpoint's refusal format.
fn busy() -> Response {
    let refusal = Refusal::new(
        reason::RETRY,
        "the operator is handling as many requests as it may at once; retry in a second",
    );
    refusal_response(&refusal, Some(Duration::from_secs(1)))
}

/// `refusal` as an answer: its status, its JSON, `Retry-After` (whole seconds, at least one)
/// when the caller should wait, and on a 401 the `WWW-Authenticate` challenge HTTP requires.
pub fn refusal_response(refusal: &Refusal, wait: Option<Duration>) -> Response {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = (status, axum::Json(refusal)).into_response();
    if let Some(wait) = wait {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cubbyhole\""),
        );
    }
    response
}

/// Reads a request body of at most `limit` bytes within 5 s; otherwise the status to answer
/// (413 too large, 408 too slow, 400 unreadable).
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, (StatusCode, String)> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_over_limit(&e) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )),
        Ok(Err(_)) => Err((
            StatusCode::BAD_REQUEST,
            "the request body could not be read".into(),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body took longer than {BODY_TIMEOUT:?}"),
        )),
    }
}

fn is_over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_its_share_and_gets_it_back_when_connections_close() {
        let counts = Arc::new(SourceCounts::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = counts.take(a, 2).unwrap();
        let second = counts.take(a, 2).unwrap();
        assert!(counts.take(a, 2).is_none(), "a third connection of a");
        assert!(counts.take(b, 2).is_some(), "b is not held back by a");
        drop(first);
        let third = counts.take(a, 2).expect("a slot back once one closed");
        drop((second, third));
        assert!(
            counts.0.lock().unwrap().is_empty(),
            "closed sources are forgotten"
        );
    }

    #[tokio::test]
    async fn a_source_holding_its_share_waits_and_leaves_the_others_their_slots() {
        let slots = Slots::new(&ListenerLimits {
            max_in_flight: 3,
            max_in_flight_per_source: 2,
            ..Default::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let held = (slots.take(a).await.unwrap(), slots.take(a).await.unwrap());
        tokio::time::pause();
        assert_eq!(slots.take(a).await.unwrap_err(), "source_in_flight");
        let other = slots.take(b).await.expect("b is not held back by a");
        assert_eq!(
            slots.take(b).await.unwrap_err(),
            "in_flight",
            "all three taken"
        );
        drop((held, other));
        let _back = slots.take(a).await.expect("a's slots back");
    }

    #[tokio::test]
    async fn bodies_over_their_limit_are_refused_413_and_within_it_read() {
        let body = Body::from(vec![b'x'; 1000]);
        assert_eq!(read_body(body, 1000).await.unwrap().len(), 1000);
        let body = Body::from(vec![b'x'; 1001]);
        assert_eq!(
            read_body(body, 1000).await.unwrap_err().0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
