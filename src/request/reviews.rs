//! Identity tokens reviewed at most once each: a cheap look at the token's claims first (a
//! projected service-account JWT for audience `cubbyhole`, bound to a pod, not expired), then
//! the answers of earlier TokenReviews by the token's SHA-256, then a budget of TokenReviews per
//! peer address. Garbage costs the API server nothing, and no caller can spend the operator's
//! API priority-and-fairness share, which its Lease renewals also use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube::Client;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::ListenerLimits;
use crate::metrics::Metrics;
use crate::request::identity::{PodIdentity, review};
use crate::request::limits::{Bucket, Rate};
use crate::request::protocol::{AUDIENCE, Refusal, reason};
use crate::vault::SecretString;

/// Most review answers kept.
const MAX_CACHED: usize = 10_000;
/// Longest an answer is trusted without asking again (a service account deleted meanwhile).
const MAX_CACHE_AGE: Duration = Duration::from_secs(300);
/// Most per-source buckets kept before the full ones are dropped.
const PRUNE_SOURCES_ABOVE: usize = 4096;
/// Largest decoded JWT payload looked at.
const MAX_PAYLOAD: usize = 8 * 1024;

/// What a token's claims say before anyone has checked its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Seconds since the epoch when the token expires.
    pub expires: u64,
}

#[derive(Deserialize)]
struct Payload {
    aud: Audience,
    exp: u64,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: KubernetesClaims,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Default, Deserialize)]
struct KubernetesClaims {
    #[serde(default)]
    pod: PodClaim,
}

#[derive(Default, Deserialize)]
struct PodClaim {
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
}

/// Whether `token` looks like a pod's projected service-account token for [`AUDIENCE`],
/// valid at `now` (seconds since the epoch). Pure; proves nothing (the signature is the API
/// server's to check), it only spares it the obvious garbage.
pub fn claims(token: &str, now: u64) -> Result<Claims, Refusal> {
    let refuse = |why: &str| {
        Refusal::new(
            reason::NOT_AUTHENTICATED,
            format!(
                "{why}: send the pod's projected service-account token (audience {AUDIENCE:?}) as Authorization: Bearer"
            ),
        )
    };
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse("the token is not a JWT"));
    };
    if header.is_empty() || signature.is_empty() || payload.len() > MAX_PAYLOAD * 4 / 3 + 4 {
        return Err(refuse("the token is not a JWT"));
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice::<Payload>(&p).ok())
        .ok_or_else(|| refuse("the token is not a pod-bound service-account JWT"))?;
    let for_us = match &payload.aud {
        Audience::One(a) => a == AUDIENCE,
        Audience::Many(a) => a.iter().any(|a| a == AUDIENCE),
    };
    if !for_us {
        return Err(refuse("the token is not for this audience"));
    }
    if payload.exp <= now {
        return Err(refuse("the token has expired"));
    }
    if payload.kubernetes.pod.name.is_empty() || payload.kubernetes.pod.uid.is_empty() {
        return Err(Refusal::new(
            reason::NOT_BOUND_TO_POD,
            format!(
                "the token is not bound to a pod (a legacy Secret token, or one requested without a pod): mount a projected service-account token volume with audience {AUDIENCE:?}"
            ),
        ));
    }
    Ok(Claims {
        expires: payload.exp,
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Why an identity could not be established.
pub enum Denied {
    /// The caller's fault: answer it.
    Refused(Refusal),
    /// The caller's peer address spent its TokenReviews: ask again after this long.
    Limited(Duration),
    /// The API server failed the review.
    Api(kube::Error),
}

/// Review answers by token hash, TokenReview budgets by peer address, and their metric.
pub struct Reviews {
    answers: Mutex<HashMap<[u8; 32], (PodIdentity, Instant)>>,
    /// One turn per token under review: asks that arrive together with the same new token
    /// wait for the first one's review and reuse its answer.
    turns: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    rate: Rate,
    counted: Family<ResultLabels, Counter>,
}

impl Reviews {
    /// Budgets as configured; registers `cubbyhole_token_reviews_total{result}` (sent, cached,
    /// malformed, source_limited).
    pub fn new(limits: &ListenerLimits, metrics: &Metrics) -> Self {
        let counted = Family::<ResultLabels, Counter>::default();
        metrics.register(
            "token_reviews",
            "Identity tokens of the request endpoint by what they cost: a TokenReview sent, an earlier answer reused (cached), refused before any review (malformed, source_limited)",
            counted.clone(),
        );
        Self {
            answers: Mutex::default(),
            turns: Mutex::default(),
            sources: Mutex::default(),
            rate: Rate {
                per_second: limits.reviews_per_second_per_source.max(1) as f64,
                burst: limits.review_burst_per_source.max(1) as f64,
            },
            counted,
        }
    }

    fn count(&self, result: &'static str) {
        self.counted.get_or_create(&ResultLabels { result }).inc();
    }

    /// The pod `token` is bound to: from an earlier review when there is one, else from a
    /// TokenReview if `source` may still cause one.
    pub async fn identify(
        &self,
        client: &Client,
        token: &SecretString,
        source: Option<IpAddr>,
    ) -> Result<PodIdentity, Denied> {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = claims(token.expose(), epoch).map_err(|r| {
            self.count("malformed");
            Denied::Refused(r)
        })?;
        let hash: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let now = Instant::now();
        if let Some(who) = self.cached(&hash, now) {
            self.count("cached");
            return Ok(who);
        }
        let turn = Turn::wait(self, hash).await;
        if let Some(who) = self.cached(&hash, Instant::now()) {
            self.count("cached");
            return Ok(who);
        }
        if let Some(ip) = source {
            self.take_review(ip, now).map_err(|wait| {
                self.count("source_limited");
                Denied::Limited(wait)
            })?;
        }
        self.count("sent");
        let who = match review(client, token).await {
            Ok(who) => who,
            Err(Ok(refusal)) => return Err(Denied::Refused(refusal)),
            Err(Err(e)) => return Err(Denied::Api(e)),
        };
        let life = Duration::from_secs(claims.expires.saturating_sub(epoch)).min(MAX_CACHE_AGE);
        self.remember(hash, who.clone(), now + life);
        drop(turn);
        Ok(who)
    }

    fn cached(&self, hash: &[u8; 32], now: Instant) -> Option<PodIdentity> {
        let answers = self.answers.lock().expect("reviews lock");
        answers
            .get(hash)
            .filter(|(_, until)| *until > now)
            .map(|(who, _)| who.clone())
    }

    fn remember(&self, hash: [u8; 32], who: PodIdentity, until: Instant) {
        let mut answers = self.answers.lock().expect("reviews lock");
        if answers.len() >= MAX_CACHED {
            let now = Instant::now();
            answers.retain(|_, (_, u)| *u > now);
        }
        if answers.len() < MAX_CACHED {
            answers.insert(hash, (who, until));
        }
    }

    /// Takes one TokenReview from `ip`'s budget, or says how long to wait.
    fn take_review(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut sources = self.sources.lock().expect("review budgets lock");
        let bucket = sources.get(&ip).copied().unwrap_or(self.rate.full(now));
        let wait = self.rate.wait(bucket, now);
        if !wait.is_zero() {
            return Err(wait);
        }
        sources.insert(ip, self.rate.take(bucket, now));
        if sources.len() > PRUNE_SOURCES_ABOVE {
            sources.retain(|_, b| !self.rate.is_full(*b, now));
        }
        Ok(())
    }
}

/// The right to review one token; the next ask with it waits for it, and the last one out
/// forgets the token.
struct Turn<'a> {
    reviews: &'a Reviews,
    hash: [u8; 32],
    gate: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl<'a> Turn<'a> {
    async fn wait(reviews: &'a Reviews, hash: [u8; 32]) -> Turn<'a> {
        let gate = reviews
            .turns
            .lock()
            .expect("turns lock")
            .entry(hash)
            .or_default()
            .clone();
        let held = gate.clone().lock_owned().await;
        Turn {
            reviews,
            hash,
            gate,
            _held: held,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turns = self.reviews.turns.lock().expect("turns lock");
        // The map's, ours and the guard's: nobody else waits for this token.
        if Arc::strong_count(&self.gate) <= 3 {
            turns.remove(&self.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(payload: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.c2ln", enc(&json!({"alg": "RS256"})), enc(&payload))
    }

    fn bound(aud: serde_json::Value, exp: u64) -> serde_json::Value {
        json!({"aud": aud, "exp": exp, "sub": "system:serviceaccount:a:b",
               "kubernetes.io": {"namespace": "a", "pod": {"name": "p", "uid": "u"}}})
    }

    #[test]
    fn a_pod_bound_token_for_us_passes_and_says_when_it_expires() {
        assert_eq!(
            claims(&jwt(bound(json!(["cubbyhole"]), 200)), 100)
                .unwrap()
                .expires,
            200
        );
        assert!(claims(&jwt(bound(json!("cubbyhole"), 200)), 100).is_ok());
    }

    #[test]
    fn garbage_other_audiences_expired_and_unbound_tokens_are_refused_before_any_review() {
        let mut unbound = bound(json!(["cubbyhole"]), 200);
        unbound["kubernetes.io"] = json!({"namespace": "a"});
        assert_eq!(
            claims(&jwt(unbound), 100).unwrap_err().reason,
            reason::NOT_BOUND_TO_POD
        );
        let unbound = json!({"aud": ["cubbyhole"], "exp": 200});
        assert_eq!(
            claims(&jwt(unbound), 100).unwrap_err().reason,
            reason::NOT_BOUND_TO_POD
        );
        for token in [
            "".to_string(),
            "random-garbage".to_string(),
            "a.b.c".to_string(),
            "a.b.c.d".to_string(),
            jwt(bound(json!(["vault"]), 200)),
            jwt(bound(json!(["cubbyhole"]), 100)),
        ] {
            let refused = claims(&token, 100).unwrap_err();
            assert_eq!(refused.reason, reason::NOT_AUTHENTICATED, "{token}");
        }
    }

    #[test]
    fn a_source_gets_its_burst_of_reviews_then_waits() {
        let reviews = Reviews::new(
            &ListenerLimits {
                review_burst_per_source: 2,
                reviews_per_second_per_source: 1,
                ..Default::default()
            },
            &Metrics::new(),
        );
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let t0 = Instant::now();
        reviews.take_review(a, t0).unwrap();
        reviews.take_review(a, t0).unwrap();
        assert!(reviews.take_review(a, t0).unwrap_err() <= Duration::from_secs(1));
        reviews.take_review(b, t0).unwrap();
        reviews.take_review(a, t0 + Duration::from_secs(1)).unwrap();
    }

    #[tokio::test]
    async fn asks_with_one_token_take_turns_and_the_last_one_out_forgets_it() {
        let reviews = Reviews::new(&ListenerLimits::default(), &Metrics::new());
        let first = Turn::wait(&reviews, [7; 32]).await;
        let second = Turn::wait(&reviews, [7; 32]);
        tokio::pin!(second);
        let waiting = tokio::time::timeout(Duration::from_millis(50), second.as_mut()).await;
        assert!(waiting.is_err(), "the second waits for the first");
        let other = Turn::wait(&reviews, [8; 32]).await;
        drop(first);
        let second = second.await;
        assert_eq!(
            reviews.turns.lock().unwrap().len(),
            2,
            "7 and 8 still under review"
        );
        drop((second, other));
        assert!(reviews.turns.lock().unwrap().is_empty());
    }

    #[test]
    fn answers_are_reused_until_they_expire() {
        let reviews = Reviews::new(&ListenerLimits::default(), &Metrics::new());
        let who = PodIdentity {
            namespace: "a".into(),
            service_account: "b".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
        };
        let t0 = Instant::now();
        reviews.remember([1; 32], who.clone(), t0 + Duration::from_secs(5));
        assert_eq!(reviews.cached(&[1; 32], t0), Some(who));
        assert_eq!(reviews.cached(&[2; 32], t0), None);
        assert_eq!(reviews.cached(&[1; 32], t0 + Duration::from_secs(5)), None);
    }
}
