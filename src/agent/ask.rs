//! Request delivery, the agent's half: ask the operator's endpoint for this pod's wrap with the
//! pod's projected service-account token, and report the receipt back. Transient refusals
//! (rate limited, busy, Vault or the API server down) and network errors are retried with
//! backoff; the rest end the run with the endpoint's reason. Tokens never reach a log line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};

use crate::agent::receipt::Receipt;
use crate::request::protocol::{
    RECEIPT_PATH, Refusal, WRAP_PATH, WRAPPING_TOKEN_FIELD, WrapFacts, reason,
};
use crate::vault::SecretString;

/// Longest wait between two asks, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long one ask may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why an ask did not give a wrap.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// Bad flags or CA.
    #[error("configuration error: {0}")]
    Usage(String),
    /// The identity token file is unreadable or empty.
    #[error("cannot read the identity token: {0}")]
    Identity(String),
    /// The endpoint refused (after retrying the transient refusals).
    #[error("the operator refused: {} ({})", .0.message, .0.reason)]
    Refused(Refusal),
    /// The endpoint could not be reached or answered nonsense, after the retries.
    #[error("the operator's endpoint is unreachable: {0}")]
    Unreachable(String),
}

/// A client of one endpoint.
pub struct Asker {
    http: reqwest::Client,
    base: String,
    identity: PathBuf,
}

/// The answer to one ask.
pub enum Answer {
    /// The wrap.
    Wrap(SecretString, WrapFacts),
    /// Refused; `retry_after` is the endpoint's `Retry-After`.
    Refused {
        /// Why.
        refusal: Refusal,
        /// When to ask again, if the endpoint said.
        retry_after: Option<Duration>,
    },
    /// No cubbyhole answer (network error, or an HTTP error without a refusal); `retry`:
    /// worth asking again.
    Failed {
        /// What happened.
        what: String,
        /// Worth asking again.
        retry: bool,
        /// When to ask again, if the endpoint said.
        retry_after: Option<Duration>,
    },
}

impl Asker {
    /// A client for the endpoint at `base` (`https://...`), trusting only `ca_pem` when given,
    /// presenting the token read from `identity` at each attempt.
    pub fn new(base: &str, ca_pem: Option<&str>, identity: &Path) -> Result<Self, AskError> {
        let base = base.trim().trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            return Err(AskError::Usage(format!(
                "--request {base:?} must be an https:// URL"
            )));
        }
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT).https_only(true);
        if let Some(pem) = ca_pem {
            if pem.trim().is_empty() {
                // Set but empty: a mistake, not a request to trust the public roots.
                return Err(AskError::Usage(
                    "the endpoint CA is set but empty (CUBBYHOLE_REQUEST_CA)".into(),
                ));
            }
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| AskError::Usage(format!("the endpoint CA is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(AskError::Usage(
                    "the endpoint CA holds no certificate".into(),
                ));
            }
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| AskError::Usage(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            identity: identity.to_path_buf(),
        })
    }

    fn identity_token(&self) -> Result<SecretString, AskError> {
        let text = std::fs::read_to_string(&self.identity)
            .map_err(|e| AskError::Identity(format!("{}: {e}", self.identity.display())))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(AskError::Identity(format!(
                "{} is empty",
                self.identity.display()
            )));
        }
        Ok(SecretString::new(token))
    }

    /// Asks for the wrap, retrying transient failures `retries` times.
    pub async fn ask(
        &self,
        retries: u32,
        log: impl Fn(&str),
    ) -> Result<(SecretString, WrapFacts), AskError> {
        retrying(retries, log, || self.ask_once()).await
    }

    /// One ask, no retry.
    pub async fn ask_once(&self) -> Result<Answer, AskError> {
        let identity = self.identity_token()?;
        let sent = self
            .http
            .post(format!("{}{WRAP_PATH}", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", identity.expose()))
            .send()
            .await;
        let failed = |what: String, retry: bool, retry_after: Option<Duration>| {
            Ok(Answer::Failed {
                what,
                retry,
                retry_after,
            })
        };
        let response = match sent {
            Ok(r) => r,
            // reqwest's errors name the URL, never the headers.
            Err(e) => return failed(e.to_string(), true, None),
        };
        let status = response.status();
        let wait = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return failed(format!("reading the answer: {e}"), true, wait),
        };
        if status == StatusCode::OK {
            return Ok(read_wrap(&body));
        }
        match serde_json::from_slice::<Refusal>(&body) {
            Ok(refusal) => Ok(Answer::Refused {
                refusal,
                retry_after: wait,
            }),
            Err(_) => {
                let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                failed(
                    format!(
                        "HTTP {status} without a cubbyhole answer: is --request the operator's endpoint?"
                    ),
                    retry,
                    wait,
                )
            }
        }
    }

    /// Reports `receipt` to the endpoint (best effort; the termination message carries it
    /// too). Returns what went wrong, if anything.
    pub async fn report(&self, receipt: &Receipt) -> Result<(), String> {
        let identity = self.identity_token().map_err(|e| e.to_string())?;
        let response = self
            .http
            .post(format!("{}{RECEIPT_PATH}", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", identity.expose()))
            .body(receipt.to_line())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<Refusal>(&body) {
            Ok(r) => format!("{} ({})", r.message, r.reason),
            Err(_) => format!("HTTP {status}"),
        })
    }
}

/// The retry loop of [`Asker::ask`] around `once` (one ask): a wrap ends it, a transient
/// refusal or failure is asked again after the backoff (at least `Retry-After`) up to
/// `retries` times, anything else ends it with its reason.
async fn retrying<F, Fut>(
    retries: u32,
    log: impl Fn(&str),
    mut once: F,
) -> Result<(SecretString, WrapFacts), AskError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, AskError>>,
{
    let mut retry = 0;
    let mut delays = crate::agent::unwrap::backoff();
    loop {
        let (why, wait) = match once().await? {
            Answer::Wrap(token, facts) => return Ok((token, facts)),
            Answer::Refused {
                refusal,
                retry_after,
            } if reason::retriable(&refusal.reason) => (
                format!("{} ({})", refusal.message, refusal.reason),
                retry_after,
            ),
            Answer::Refused { refusal, .. } => return Err(AskError::Refused(refusal)),
            Answer::Failed {
                what,
                retry: true,
                retry_after,
            } => (what, retry_after),
            Answer::Failed { what, .. } => return Err(AskError::Unreachable(what)),
        };
        match (why, wait) {
            (why, wait) if retry < retries => {
                let backoff = delays.next_delay();
                let wait = wait
                    .map_or(backoff, |after| {
                        crate::backoff::after_retry_after(after, backoff)
                    })
                    .min(MAX_WAIT);
                log(&format!(
                    "{why}; asking again in {:.1}s (retry {} of {retries})",
                    wait.as_secs_f64(),
                    retry + 1
                ));
                tokio::time::sleep(wait).await;
                retry += 1;
            }
            (why, _) => return Err(AskError::Unreachable(why)),
        }
    }
}

/// Reads a successful answer: the wrapping token and what the endpoint says about it.
fn read_wrap(body: &[u8]) -> Answer {
    let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
    let token = parsed
        .as_ref()
        .and_then(|v| v.get(WRAPPING_TOKEN_FIELD)?.as_str())
        .filter(|t| !t.is_empty())
        .map(SecretString::new);
    let facts = parsed.and_then(|v| serde_json::from_value::<WrapFacts>(v).ok());
    match (token, facts) {
        (Some(token), Some(facts)) => Answer::Wrap(token, facts),
        _ => Answer::Failed {
            what: "the endpoint's answer carries no wrap".into(),
            retry: false,
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    use super::*;

    fn refused(why: &str, retry_after: Option<u64>) -> Answer {
        Answer::Refused {
            refusal: Refusal::new(why, "no"),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn failed(retry: bool) -> Answer {
        Answer::Failed {
            what: "down".into(),
            retry,
            retry_after: None,
        }
    }

    fn wrap() -> Answer {
        let facts = WrapFacts {
            wrap_accessor: "a".into(),
            binding: "b".into(),
            start: 0,
            wrap_ttl_seconds: 60,
        };
        Answer::Wrap(SecretString::new("s.w"), facts)
    }

    /// Runs the retry loop against `answers` (then transient failures forever): the result,
    /// the asks made and the retries logged.
    async fn script(
        retries: u32,
        answers: Vec<Answer>,
    ) -> (Result<(SecretString, WrapFacts), AskError>, u32, u32) {
        let answers = RefCell::new(VecDeque::from(answers));
        let (asks, logged) = (Cell::new(0), Cell::new(0));
        let result = retrying(
            retries,
            |_| logged.set(logged.get() + 1),
            || {
                asks.set(asks.get() + 1);
                let next = answers.borrow_mut().pop_front().unwrap_or(failed(true));
                async move { Ok(next) }
            },
        )
        .await;
        (result, asks.get(), logged.get())
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_asked_again_exactly_retries_times() {
        let (result, asks, logged) = script(2, vec![]).await;
        assert!(matches!(result, Err(AskError::Unreachable(_))));
        assert_eq!((asks, logged), (3, 2), "the first ask and two retries");
        let (result, asks, _) = script(0, vec![]).await;
        assert!(matches!(result, Err(AskError::Unreachable(_))));
        assert_eq!(asks, 1, "no retry");
        // A transient refusal is retried like a failure, and a later wrap ends the loop.
        let answers = vec![
            refused(reason::VAULT_UNAVAILABLE, None),
            failed(true),
            wrap(),
        ];
        let (result, asks, logged) = script(5, answers).await;
        assert_eq!(result.expect("served").1.wrap_accessor, "a");
        assert_eq!((asks, logged), (3, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn final_refusals_and_failures_end_the_run_at_once() {
        let answers = vec![refused(reason::ALREADY_SERVED, Some(1)), wrap()];
        let (result, asks, logged) = script(5, answers).await;
        assert!(
            matches!(&result, Err(AskError::Refused(r)) if r.reason == reason::ALREADY_SERVED),
            "{result:?}"
        );
        assert_eq!((asks, logged), (1, 0));
        let (result, asks, _) = script(5, vec![failed(false), wrap()]).await;
        assert!(matches!(result, Err(AskError::Unreachable(_))));
        assert_eq!(asks, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_at_least_and_at_most_half_again() {
        let began = tokio::time::Instant::now();
        let answers = vec![refused(reason::RATE_LIMITED, Some(4)), wrap()];
        let (result, asks, _) = script(5, answers).await;
        assert!(result.is_ok());
        assert_eq!(asks, 2);
        let waited = began.elapsed();
        assert!(
            waited >= Duration::from_secs(4) && waited <= Duration::from_secs(6),
            "{waited:?}"
        );
    }

    #[test]
    fn only_https_and_real_pem_are_accepted() {
        let id = Path::new("/nonexistent");
        assert!(matches!(
            Asker::new("http://op", None, id),
            Err(AskError::Usage(_))
        ));
        assert!(matches!(
            Asker::new("https://op", Some("not pem"), id),
            Err(AskError::Usage(_))
        ));
        assert!(
            matches!(
                Asker::new("https://op", Some(" \n"), id),
                Err(AskError::Usage(_))
            ),
            "an empty CA is a mistake, not the public roots"
        );
        assert!(Asker::new("https://op/", None, id).is_ok());
    }

    #[test]
    fn an_answer_without_a_token_is_not_a_wrap() {
        assert!(matches!(
            read_wrap(br#"{"wrapAccessor":"a","binding":"b","start":0,"wrapTtlSeconds":60}"#),
            Answer::Failed { retry: false, .. }
        ));
        match read_wrap(
            br#"{"wrappingToken":"s.x","wrapAccessor":"a","binding":"b","start":2,"wrapTtlSeconds":60}"#,
        ) {
            Answer::Wrap(t, f) => {
                assert_eq!(t.expose(), "s.x");
                assert_eq!(f.start, 2);
            }
            _ => panic!("a wrap"),
        }
    }
}
