//! The leak scan: every text the test's programs printed and the cluster showed (the corpus),
//! searched for every token the test saw or OpenBao issued.
//!
//! A scan proves nothing about a source it does not really read (a wrong path, a wrong
//! namespace, a list that returns nothing), so before it runs, every source this Env should
//! have must be in the corpus and show the Env's canary: a random string planted through what
//! really produces that source, found by the same [`TokenScan`] in the same text. Where no
//! canary can reach a source cheaply, the source must at least be there and not be empty.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Resource};
use serde_json::json;

use super::transcript::WATCHES;
use super::{Env, http_get};
use crate::leaks::TokenScan;

/// How long the canaries may take to reach every source (the watches, the operator's log).
const CANARY_WAIT: Duration = Duration::from_secs(30);

/// What some sources of the corpus must show for the scan of them to prove anything.
struct Expected {
    /// The sources: one name, or (ending in `*`) every name with that prefix.
    sources: String,
    /// What they must show.
    check: Check,
}

/// What [`Expected`] sources must show; every check needs at least one such source.
enum Check {
    /// The Env's canary, planted as said, in at least one of them (of several operators only
    /// the leader handles the canary binding).
    Canary(&'static str),
    /// Some text, in every one.
    NonEmpty,
    /// Some text, in at least one of them.
    SomeNonEmpty,
    /// This text, in every one.
    Contains(&'static str),
    /// Nothing more than being there.
    Present,
}

impl Expected {
    fn new(sources: impl Into<String>, check: Check) -> Self {
        Self {
            sources: sources.into(),
            check,
        }
    }

    /// What is wrong with `corpus` for these sources, if anything (naming a source, never a
    /// token); `canary` scans for the Env's canary.
    fn unmet(&self, corpus: &[(String, String)], canary: &TokenScan) -> Option<String> {
        let matched: Vec<&(String, String)> = corpus
            .iter()
            .filter(|(name, _)| match self.sources.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => *name == self.sources,
            })
            .collect();
        let what = &self.sources;
        if matched.is_empty() {
            return Some(format!("{what}: missing"));
        }
        match self.check {
            Check::Canary(planted) => (!matched.iter().any(|(_, t)| canary.first_in(t).is_some()))
                .then(|| format!("{what}: the canary ({planted}) is not in it")),
            Check::NonEmpty => matched
                .iter()
                .find(|(_, t)| t.trim().is_empty())
                .map(|(name, _)| format!("{name}: empty")),
            Check::SomeNonEmpty => (matched.iter().all(|(_, t)| t.trim().is_empty()))
                .then(|| format!("{what}: all empty")),
            Check::Contains(text) => matched
                .iter()
                .find(|(_, t)| !t.contains(text))
                .map(|(name, _)| format!("{name}: no {text:?} in it")),
            Check::Present => None,
        }
    }
}

impl Env {
    /// Scans everything the operator (every level, JSON lines), OpenBao, the agents printed,
    /// the statuses, Events (both APIs) and Secret metadata seen over the whole test, the
    /// final objects and `/metrics`, for every token the test saw and, on a private OpenBao,
    /// every token and wrapping token its audit log says it issued. First proves that it reads
    /// every source this Env has: each shows the Env's canary or at least some text.
    pub async fn assert_no_leaks(&self) {
        let started = Instant::now();
        let corpus = self.proven_corpus().await;
        let proven = started.elapsed();
        // Taken after the corpus: every token the corpus can show is in the audit log by now.
        let mut tokens = self.seen_tokens.lock().unwrap().clone();
        let issued = self.bao.issued_tokens();
        if !self.external {
            assert!(!issued.is_empty(), "the audit log names no issued token");
        }
        tokens.extend(issued.iter().cloned());
        tokens.sort();
        tokens.dedup();
        assert!(!tokens.is_empty(), "the test saw no token to scan for");
        // The other secrets no output may show: the operator's own credential, the record
        // keys, the webhook's private keys.
        let others = if self.external {
            vec![]
        } else {
            self.bao.assert_every_token_captured();
            self.transcript.assert_alive();
            self.other_secrets().await
        };
        let first_other = tokens.len();
        tokens.extend(others.iter().map(|(_, s)| s.clone()));
        let scan = TokenScan::new(&tokens);
        for (source, text) in &corpus {
            if let Some(i) = scan.first_in(text) {
                let kind = if i >= first_other {
                    others[i - first_other].0.as_str()
                } else if issued.contains(&tokens[i]) {
                    "issued by OpenBao"
                } else {
                    "seen by the test"
                };
                panic!("token #{i} ({kind}) leaked into {source}");
            }
        }
        println!(
            "LEAKSCAN {} tokens ({} issued by OpenBao per its audit log) in {} bytes of output \
             from {} sources, each proven read in {proven:?} ({} watch restarts)",
            tokens.len(),
            issued.len(),
            corpus.iter().map(|(_, t)| t.len()).sum::<usize>(),
            corpus.len(),
            self.transcript.restarts()
        );
    }

    /// The corpus, once it has every source [`Env::expected_sources`] names, each showing what
    /// it must (the canaries planted first); panics naming every source that does not, after
    /// [`CANARY_WAIT`].
    async fn proven_corpus(&self) -> Vec<(String, String)> {
        self.plant_canaries().await;
        let canary = TokenScan::new(std::slice::from_ref(&self.canary));
        let expected = self.expected_sources();
        let deadline = Instant::now() + CANARY_WAIT;
        loop {
            let corpus = self.corpus().await;
            let unmet: Vec<String> = expected
                .iter()
                .filter_map(|e| e.unmet(&corpus, &canary))
                .collect();
            if unmet.is_empty() {
                return corpus;
            }
            assert!(
                Instant::now() < deadline,
                "the leak scan cannot prove it reads these sources:\n{}",
                unmet.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// What the corpus must hold for this Env.
    fn expected_sources(&self) -> Vec<Expected> {
        use Check::{Canary, Contains, NonEmpty, Present, SomeNonEmpty};
        let mut expected = vec![
            Expected::new("pods (termination messages included)", Canary("a pod")),
            Expected::new("bindings", Canary("a binding")),
            Expected::new("Secret metadata", Canary("a Secret")),
            Expected::new("events.k8s.io Events", Canary("an Event")),
            Expected::new("core Events", Canary("an Event")),
            // Every operator log the test wrote (Env::start's operator always writes one): no
            // canary reaches a stopped operator's log.
            Expected::new("operator*", NonEmpty),
        ];
        for kind in WATCHES {
            let planted = Canary("a binding, an Event and a Secret");
            expected.push(Expected::new(format!("transcript-{kind}.log"), planted));
        }
        if self.operator.is_some() {
            // The running operator (or, with leader election, the leader) handles the canary
            // binding: it logs its name and sets its readiness gauge.
            expected.push(Expected::new("operator*", Canary("a binding")));
            expected.push(Expected::new("/metrics*", Canary("a binding's gauge")));
            expected.push(Expected::new("/metrics", Contains("cubbyhole_")));
        }
        for (port, pid) in self.replicas.lock().unwrap().iter() {
            // A standby handles no binding: that it serves its metrics is all it can show.
            if self.running_replica(*port, *pid) {
                let source = format!("/metrics of the replica on port {port}");
                expected.push(Expected::new(source, Contains("cubbyhole_")));
            }
        }
        if !self.external {
            expected.push(Expected::new("OpenBao's log", Canary("a mount")));
        }
        // An agent prints its outcome, always; what it prints is not the test's to choose.
        for log in self.agent_logs.lock().unwrap().iter() {
            expected.push(Expected::new(log.clone(), NonEmpty));
        }
        if self.cluster.has_node() {
            // No canary reaches these cheaply: the kubelet and the scheduler name a pod only
            // when they run it (a canary pod on the node would cost a pod start per test), and
            // the container logs are what the test's pods print. The kubelet and the scheduler
            // print at start; a container that has not printed yet is empty, not all of them.
            expected.push(Expected::new("kubelet.log", NonEmpty));
            expected.push(Expected::new("scheduler.log", NonEmpty));
            expected.push(Expected::new("container log *", SomeNonEmpty));
            // containerd prints warnings only: it may have none, but its log must be read.
            expected.push(Expected::new("containerd.log", Present));
        }
        expected
    }

    /// True when `pid` (the replica serving on `port`) still runs: not gone, not a zombie.
    fn running_replica(&self, port: u16, pid: u32) -> bool {
        let state = crate::process::process_state(pid);
        !self.is_main_operator(port) && state.is_some_and(|s| s != 'Z')
    }

    /// True when `port` is the main operator's (`Env::operator`, scanned as `/metrics`).
    fn is_main_operator(&self, port: u16) -> bool {
        self.operator.as_ref().is_some_and(|op| op.port == port)
    }

    /// Plants the canary where each source's collection must pick it up, through what really
    /// produces that source; each is created once (a test may scan twice).
    /// - A binding of that name selecting no pod: in the bindings list and watch. The running
    ///   operator handles it: its log names it, its `/metrics` has its readiness gauge.
    /// - A pod of that name that no scheduler sees (a scheduling gate): in the pods list.
    /// - A Secret of that name, without data: in the Secret metadata list and watch.
    /// - An events.k8s.io Event of that name, in `default` on a private cluster (the Event
    ///   lists and watches cover every namespace), else in the test's: both Event APIs and
    ///   watches show it.
    /// - On a private OpenBao, a secrets engine mounted at it: OpenBao logs the mount.
    async fn plant_canaries(&self) {
        let name = self.canary.as_str();
        // It selects `app=<name>`, which the canary pod does not have.
        self.apply_binding(name, Env::spec(name, "60s")).await;
        create_once::<Pod>(
            &self.pods(),
            json!({
                "metadata": {"name": name, "labels": {"e2e-canary": name}},
                "spec": {
                    "schedulingGates": [{"name": "cubbyhole.dev/e2e-no-kubelet"}],
                    "containers": [{"name": "canary", "image": "canary"}],
                },
            }),
        )
        .await;
        create_once::<Secret>(&self.secrets(), json!({"metadata": {"name": name}})).await;
        let events_ns = if self.external { &self.ns } else { "default" };
        create_once::<Event>(
            &Api::namespaced(self.client.clone(), events_ns),
            json!({
                "metadata": {"name": name},
                "eventTime": k8s_openapi::jiff::Timestamp::now().to_string(),
                "reportingController": "cubbyhole.dev/e2e",
                "reportingInstance": "e2e",
                "action": "Scan",
                "reason": "Canary",
                "type": "Normal",
                "note": "the leak scan's canary",
            }),
        )
        .await;
        if !self.external {
            let path = format!("-path={name}");
            let out = self
                .bao
                .cli(&self.bao.root_token, &["secrets", "enable", &path, "kv"]);
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || said.contains("already in use"),
                "mounting the canary in OpenBao: {said}"
            );
        }
    }

    /// Everything the leak scan reads: (where it came from, what it said).
    async fn corpus(&self) -> Vec<(String, String)> {
        let mut corpus: Vec<(String, String)> = vec![];
        if let Some(op) = &self.operator {
            let metrics = op.get("/metrics").map(|(_, b)| b).unwrap_or_default();
            corpus.push(("/metrics".into(), metrics));
        }
        for (port, _) in self.replicas.lock().unwrap().iter() {
            // Other operators still running (one a test stopped has nothing more to say).
            if self.is_main_operator(*port) {
                continue;
            }
            if let Some((_, metrics)) = http_get(*port, "/metrics") {
                corpus.push((format!("/metrics of the replica on port {port}"), metrics));
            }
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let pods = pods.list(&ListParams::default()).await.unwrap();
        corpus.push((
            "pods (termination messages included)".into(),
            serde_json::to_string(&pods.items).unwrap(),
        ));
        if !self.external {
            corpus.push(("OpenBao's log".into(), self.bao.log()));
        }
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if (name.starts_with("agent-")
                || name.starts_with("operator")
                || name.starts_with("transcript-"))
                && name.ends_with(".log")
            {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                corpus.push((name, text));
            }
        }
        // A node's logs, and every container log its kubelet wrote.
        for name in ["kubelet.log", "containerd.log", "scheduler.log"] {
            if let Ok(text) = std::fs::read_to_string(self.cluster.dir.join(name)) {
                corpus.push((name.into(), text));
            }
        }
        let mut dirs = vec![self.cluster.pod_logs_dir()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    dirs.push(entry.path());
                } else if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    corpus.push((format!("container log {}", entry.path().display()), text));
                }
            }
        }
        let bindings = self.bindings().list(&ListParams::default()).await.unwrap();
        corpus.push((
            "bindings".into(),
            serde_json::to_string(&bindings.items).unwrap(),
        ));
        let secrets = self.secrets().list(&ListParams::default()).await.unwrap();
        let metadata: Vec<_> = secrets.items.iter().map(|s| &s.metadata).collect();
        corpus.push((
            "Secret metadata".into(),
            serde_json::to_string(&metadata).unwrap(),
        ));
        let events: Api<Event> = Api::all(self.client.clone());
        let events = events.list(&ListParams::default()).await.unwrap();
        corpus.push((
            "events.k8s.io Events".into(),
            serde_json::to_string(&events.items).unwrap(),
        ));
        let core_events: Api<CoreEvent> = Api::all(self.client.clone());
        let core_events = core_events.list(&ListParams::default()).await.unwrap();
        corpus.push((
            "core Events".into(),
            serde_json::to_string(&core_events.items).unwrap(),
        ));
        corpus
    }

    /// What else no output may show, each with what it is: the operator's service-account
    /// token, every record-signing key (as Secret data shows it), and every line of a private
    /// key the webhook keeps in the operator's namespace.
    async fn other_secrets(&self) -> Vec<(String, String)> {
        let mut others = vec![];
        for (what, path) in [
            ("the operator's API token", &self.identity.api_jwt),
            ("the operator's Vault login token", &self.identity.jwt),
        ] {
            let jwt = std::fs::read_to_string(path).expect("the operator's token");
            others.push((what.to_string(), jwt.trim().to_string()));
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), "cubbyhole-system");
        let listed = secrets.list(&ListParams::default()).await.unwrap();
        for secret in &listed.items {
            for (entry, value) in secret.data.iter().flatten() {
                if entry.starts_with(cubbyhole::record::signing_keys::KEY_PREFIX) {
                    let shown = crate::leaks::base64(&value.0);
                    others.push(("a record key".to_string(), shown));
                }
                let text = String::from_utf8_lossy(&value.0).replace("\\n", "\n");
                for line in crate::leaks::private_key_lines(&text) {
                    others.push(("a webhook private key".to_string(), line));
                }
            }
        }
        assert!(
            others.iter().any(|(what, _)| what == "a record key"),
            "no record key found to scan for"
        );
        others
    }
}

/// Creates `object` (JSON) through `api` unless it exists already.
async fn create_once<K>(api: &Api<K>, object: serde_json::Value)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).expect("a canary object");
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating the canary {}: {e}", K::kind(&())),
    }
}

#[cfg(test)]
mod tests {
    use super::{Check, Expected, TokenScan};

    fn corpus(sources: &[(&str, &str)]) -> Vec<(String, String)> {
        sources
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn each_check_names_the_source_that_fails_it() {
        let canary = TokenScan::new(&["canary-0123456789abcdef".to_string()]);
        let corpus = corpus(&[
            ("bindings", r#"[{"name":"canary-0123456789abcdef"}]"#),
            ("operator.log", "starting"),
            ("operator-2.log", " \n"),
            ("container log a", ""),
            ("container log b", "hello"),
        ]);
        let unmet = |sources: &str, check| Expected::new(sources, check).unmet(&corpus, &canary);
        assert_eq!(unmet("bindings", Check::Canary("a binding")), None);
        assert_eq!(
            unmet("operator*", Check::Canary("a binding")).unwrap(),
            "operator*: the canary (a binding) is not in it"
        );
        assert_eq!(
            unmet("operator*", Check::NonEmpty).unwrap(),
            "operator-2.log: empty"
        );
        assert_eq!(unmet("container log *", Check::SomeNonEmpty), None);
        assert_eq!(
            unmet("operator-2*", Check::SomeNonEmpty).unwrap(),
            "operator-2*: all empty"
        );
        assert_eq!(unmet("operator.log", Check::Contains("start")), None);
        assert_eq!(
            unmet("kubelet.log", Check::Present).unwrap(),
            "kubelet.log: missing"
        );
    }
}
