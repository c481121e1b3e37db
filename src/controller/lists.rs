//! How the operator's watches fetch their initial state (at start and after a watch expires).
//!
//! Preferred: a *streaming list* (`sendInitialEvents=true`, Kubernetes' WatchList), served from
//! the API server's watch cache one object at a time, so the operator never holds a whole list
//! of 10,000 pods in memory at once. Servers without it (before 1.32, or 1.33 where it is off by
//! default) get paged lists, also from the watch cache. One probe at start-up decides.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, ObjectList, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;

/// Annotation of the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// A selector no object can match (a label both set and absent): the probe streams nothing.
const MATCHES_NOTHING: &str = "cubbyhole.dev/probe=none,!cubbyhole.dev/probe";

/// Objects per page of every list the operator makes.
pub const PAGE: u32 = 500;

/// Every item of a list made page by page ([`PAGE`] items each, never one unbounded answer):
/// `list` fetches the page its `ListParams` name.
pub async fn paged<T, F, Fut>(params: &ListParams, mut list: F) -> Result<Vec<T>, kube::Error>
where
    T: Clone,
    F: FnMut(ListParams) -> Fut,
    Fut: Future<Output = Result<ObjectList<T>, kube::Error>>,
{
    let mut items = vec![];
    let mut page = params.clone().limit(PAGE);
    loop {
        let answer = list(page.clone()).await?;
        items.extend(answer.items);
        match answer.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(next) => page = page.continue_token(&next),
            None => return Ok(items),
        }
    }
}

/// The APIs through which an operator limited to `namespaces` (`watchNamespaces`; empty: every
/// namespace) reads `K`, each with the namespace it covers (`None`: every namespace).
pub fn scoped_apis<K>(client: &Client, namespaces: &[String]) -> Vec<(Option<String>, Api<K>)>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        return vec![(None, Api::all(client.clone()))];
    }
    namespaces
        .iter()
        .map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns)))
        .collect()
}

/// How initial lists are fetched; decided once by [`probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialLists {
    /// Streamed as watch events (WatchList).
    Streaming,
    /// Paged LIST calls (500 objects a page).
    Paged,
}

impl InitialLists {
    /// The watcher configuration every watch of the operator starts from.
    pub fn watcher_config(self) -> watcher::Config {
        match self {
            InitialLists::Streaming => watcher::Config::default().streaming_lists(),
            // Real pages: a list at `resourceVersion=0` comes from the watch cache, which
            // servers without WatchList answer whole, ignoring the page size.
            InitialLists::Paged => watcher::Config::default().page_size(PAGE),
        }
    }
}

/// Asks the API server once whether it streams initial lists: a watch with
/// `sendInitialEvents=true` on a selector matching nothing must end its (empty) initial events
/// with the marked bookmark. A refusal (422 where the feature is off) or a stream without the
/// bookmark (servers that ignore the parameter) means paged lists. Retries while the API server
/// cannot be reached; `None` on shutdown. Asked of the Secrets of `namespace` when given (an
/// install allowed to watch Secrets only there), else of every namespace.
pub async fn probe(
    client: &Client,
    namespace: Option<&str>,
    shutdown: &CancellationToken,
) -> Option<InitialLists> {
    let mut backoff = Backoff::at_start();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            streams_initial_events(client, namespace),
        );
        let answer = tokio::select! {
            answer = attempt => answer.unwrap_or(Err("no answer within 10 s".into())),
            () = shutdown.cancelled() => return None,
        };
        match answer {
            Ok(true) => {
                info!("initial lists are streamed from the API server's watch cache");
                return Some(InitialLists::Streaming);
            }
            Ok(false) => {
                info!("the API server does not stream initial lists; using paged lists");
                return Some(InitialLists::Paged);
            }
            Err(e) => warn!(error = %e, "probing the API server for streaming lists; retrying"),
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// `Ok(true)`: the marked bookmark came; `Ok(false)`: the server answered without it;
/// `Err`: it could not be asked.
async fn streams_initial_events(client: &Client, namespace: Option<&str>) -> Result<bool, String> {
    let secrets: Api<Secret> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let params = WatchParams {
        label_selector: Some(MATCHES_NOTHING.into()),
        timeout: Some(5),
        bookmarks: true,
        send_initial_events: true,
        ..WatchParams::default()
    };
    let events = match secrets.watch(&params, "0").await {
        Ok(events) => events,
        Err(kube::Error::Api(refused)) => {
            info!(code = refused.code, reason = %refused.reason, "streaming list refused");
            return Ok(false);
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut events = events.boxed();
    loop {
        match events.try_next().await {
            Ok(Some(WatchEvent::Bookmark(mark)))
                if mark.metadata.annotations.contains_key(INITIAL_EVENTS_END) =>
            {
                return Ok(true);
            }
            Ok(Some(WatchEvent::Error(refused))) => {
                info!(code = refused.code, reason = %refused.reason, "streaming list refused");
                return Ok(false);
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::ListMeta;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_paged_list_asks_500_at_a_time_and_follows_every_continue_token() {
        let asked = Mutex::new(vec![]);
        let params = ListParams::default().labels("a=b");
        let items = paged(&params, |page: ListParams| {
            let asked = &asked;
            async move {
                asked.lock().unwrap().push(page.clone());
                let n = asked.lock().unwrap().len();
                let next = match n {
                    1 => Some("p2".to_string()),
                    2 => Some("p3".to_string()),
                    _ => Some(String::new()),
                };
                Ok(ObjectList {
                    types: Default::default(),
                    metadata: ListMeta {
                        continue_: next,
                        ..Default::default()
                    },
                    items: vec![n; 2],
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(items, [1, 1, 2, 2, 3, 3]);
        let asked = asked.into_inner().unwrap();
        assert!(
            asked
                .iter()
                .all(|p| p.limit == Some(PAGE) && p.label_selector.as_deref() == Some("a=b"))
        );
        let tokens: Vec<_> = asked.iter().map(|p| p.continue_token.clone()).collect();
        assert_eq!(tokens, [None, Some("p2".into()), Some("p3".into())]);
    }
}
