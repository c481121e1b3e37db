//! The controller's watched caches of pods, records and bindings, indexed by namespace and, for
//! records, by binding: what one round or one watch event reads costs what its namespace (or
//! binding) holds, never what the cluster holds, so a tenant's thousands of objects slow no
//! other tenant's rounds. Bindings are kept with their selector parsed once per change.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::runtime::watcher;
use tokio::sync::{Notify, watch};

use kube::{Resource, ResourceExt};

use crate::core::labels::{LabelQuery, Labels};
use crate::core::pod::CachedPod;
use crate::core::reason::Reason;
use crate::core::selection::label_query;
use crate::core::status::READY;
use crate::crd::AgentSecretBinding;
use crate::record::CachedRecord;

/// What the cache needs to know of an object to index it.
pub trait Indexed {
    /// Its namespace.
    fn namespace(&self) -> &str;
    /// Its name within the namespace.
    fn name(&self) -> &str;
    /// The group within the namespace it is also found by (a record's binding), if any.
    fn group(&self) -> Option<&str> {
        None
    }
}

/// A cache fed by one watch of every namespace, or by one watch per namespace
/// (`watchNamespaces`): complete after the first full list of each, and again after each
/// relist (a relist replaces what its watch covers at once, as kube's reflector does: the
/// whole content, or its one namespace).
pub struct IndexedCache<K> {
    state: RwLock<State<K>>,
    ready: watch::Sender<bool>,
    /// Woken after every applied event (see `wait_until`).
    changed: Notify,
}

struct State<K> {
    namespaces: HashMap<Box<str>, Namespace<K>>,
    /// The objects of each relist in progress, by the namespace its watch covers (`None`:
    /// every namespace); applied at its end.
    relists: HashMap<Option<Box<str>>, Vec<Arc<K>>>,
    /// The watches whose first full list is in.
    listed: BTreeSet<Option<Box<str>>>,
    /// How many watches feed the cache (ready once each has listed). 1 unless told.
    watches: usize,
}

struct Namespace<K> {
    objects: HashMap<Box<str>, Arc<K>>,
    groups: HashMap<Box<str>, BTreeSet<Box<str>>>,
}

impl<K> Default for Namespace<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            groups: HashMap::new(),
        }
    }
}

impl<K: Indexed> Namespace<K> {
    fn insert(&mut self, object: Arc<K>) {
        let name: Box<str> = object.name().into();
        if let Some(group) = object.group() {
            self.groups
                .entry(group.into())
                .or_default()
                .insert(name.clone());
        }
        if let Some(old) = self.objects.insert(name, object.clone())
            && old.group() != object.group()
        {
            self.leave_group(&old);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.objects.remove(name) {
            self.leave_group(&old);
        }
    }

    fn leave_group(&mut self, old: &K) {
        let Some(group) = old.group() else { return };
        if let Some(members) = self.groups.get_mut(group) {
            members.remove(old.name());
            if members.is_empty() {
                self.groups.remove(group);
            }
        }
    }
}

impl<K: Indexed> Default for IndexedCache<K> {
    fn default() -> Self {
        Self {
            state: RwLock::new(State {
                namespaces: HashMap::new(),
                relists: HashMap::new(),
                listed: BTreeSet::new(),
                watches: 1,
            }),
            ready: watch::Sender::new(false),
            changed: Notify::new(),
        }
    }
}

impl<K: Indexed> IndexedCache<K> {
    /// Applies one event of the watch of every namespace.
    pub fn apply(&self, event: &watcher::Event<Arc<K>>) {
        self.apply_in(None, event);
    }

    /// Applies one event of the watch of `scope` (`None`: of every namespace).
    pub fn apply_in(&self, scope: Option<&str>, event: &watcher::Event<Arc<K>>) {
        self.apply_quietly(scope, event);
        self.changed.notify_waiters();
    }

    /// Fed by one watch per namespace of `namespaces` (none: one watch of every namespace):
    /// ready once each has listed. Called before the watches start.
    pub fn watched_by(&self, namespaces: usize) {
        self.state.write().expect("cache lock").watches = namespaces.max(1);
    }

    /// Waits until `holds` is true of the cache, at most `within`; says whether it is.
    pub async fn wait_until(&self, holds: impl Fn(&Self) -> bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so an event applied in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if holds(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return holds(self);
            }
        }
    }

    fn apply_quietly(&self, scope: Option<&str>, event: &watcher::Event<Arc<K>>) {
        let mut state = self.state.write().expect("cache lock");
        let key = scope.map(Box::from);
        match event {
            watcher::Event::Init => {
                state.relists.insert(key, vec![]);
            }
            watcher::Event::InitApply(o) => {
                state.relists.entry(key).or_default().push(o.clone());
            }
            watcher::Event::InitDone => {
                let mut namespaces: HashMap<Box<str>, Namespace<K>> = HashMap::new();
                for o in state.relists.remove(&key).unwrap_or_default() {
                    namespaces
                        .entry(o.namespace().into())
                        .or_default()
                        .insert(o);
                }
                match scope {
                    None => state.namespaces = namespaces,
                    Some(ns) => {
                        state.namespaces.remove(ns);
                        // Only its own namespace: anything else in a scoped list is ignored.
                        if let Some(listed) = namespaces.remove(ns) {
                            state.namespaces.insert(ns.into(), listed);
                        }
                    }
                }
                state.listed.insert(key);
                let complete = state.listed.len() >= state.watches;
                drop(state);
                if complete {
                    self.ready.send_replace(true);
                }
            }
            watcher::Event::Apply(o) => state
                .namespaces
                .entry(o.namespace().into())
                .or_default()
                .insert(o.clone()),
            watcher::Event::Delete(o) => {
                if let Some(ns) = state.namespaces.get_mut(o.namespace()) {
                    ns.remove(o.name());
                    if ns.objects.is_empty() {
                        state.namespaces.remove(o.namespace());
                    }
                }
            }
        }
    }

    /// Waits for the first full list: an empty cache is never taken for "nothing there".
    pub async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as the cache, so this wait ends only when it is ready.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// True once the first full list is in.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The objects of `namespace` for which `keep` holds.
    pub fn in_namespace(&self, namespace: &str, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        let state = self.state.read().expect("cache lock");
        state
            .namespaces
            .get(namespace)
            .map(|ns| ns.objects.values().filter(|o| keep(o)).cloned().collect())
            .unwrap_or_default()
    }

    /// The objects of `group` in `namespace`.
    pub fn in_group(&self, namespace: &str, group: &str) -> Vec<Arc<K>> {
        let state = self.state.read().expect("cache lock");
        let Some(ns) = state.namespaces.get(namespace) else {
            return vec![];
        };
        ns.groups
            .get(group)
            .into_iter()
            .flatten()
            .filter_map(|name| ns.objects.get(name).cloned())
            .collect()
    }

    /// One object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let state = self.state.read().expect("cache lock");
        state.namespaces.get(namespace)?.objects.get(name).cloned()
    }

    /// Every `(namespace, group)` with at least one object.
    pub fn groups(&self) -> Vec<(String, String)> {
        let state = self.state.read().expect("cache lock");
        state
            .namespaces
            .iter()
            .flat_map(|(ns, n)| n.groups.keys().map(|g| (ns.to_string(), g.to_string())))
            .collect()
    }
}

/// A binding as the index keeps it: what pod events and conflict checks read.
#[derive(Debug)]
pub struct CachedBinding {
    /// Namespace.
    pub namespace: Box<str>,
    /// Name.
    pub name: Box<str>,
    /// The pod selector, parsed; `None` for an invalid one (it selects nothing).
    pub selector: Option<LabelQuery>,
    /// Being deleted.
    pub deleting: bool,
    /// Its spec changed since its status was last written (new bindings included).
    pub spec_changed: bool,
    /// Its status says it conflicts with a sibling over some pod.
    pub in_conflict: bool,
}

impl CachedBinding {
    /// Reads a watched binding.
    pub fn read(b: AgentSecretBinding) -> Self {
        Self {
            namespace: b.namespace().unwrap_or_default().into(),
            name: b.name_any().into(),
            selector: label_query(&b.spec).ok(),
            deleting: b.meta().deletion_timestamp.is_some(),
            spec_changed: b.meta().deletion_timestamp.is_some()
                || b.status.as_ref().and_then(|s| s.observed_generation) != b.metadata.generation,
            in_conflict: b.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == READY && c.reason == Reason::Conflict.as_str())
            }),
        }
    }

    /// True when its selector picks a pod with these labels.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.selector.as_ref().is_some_and(|q| q.matches(labels))
    }
}

impl Indexed for CachedBinding {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Indexed for CachedPod {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.view.name
    }
}

impl Indexed for CachedRecord {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn group(&self) -> Option<&str> {
        self.binding.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Obj(&'static str, &'static str, Option<&'static str>);

    impl Indexed for Obj {
        fn namespace(&self) -> &str {
            self.0
        }
        fn name(&self) -> &str {
            self.1
        }
        fn group(&self) -> Option<&str> {
            self.2
        }
    }

    fn names(objects: Vec<Arc<Obj>>) -> Vec<&'static str> {
        let mut names: Vec<_> = objects.iter().map(|o| o.1).collect();
        names.sort();
        names
    }

    fn apply(cache: &IndexedCache<Obj>, o: Obj) {
        cache.apply(&watcher::Event::Apply(Arc::new(o)));
    }

    #[tokio::test]
    async fn reads_by_namespace_and_group_follow_every_change() {
        let cache = IndexedCache::default();
        assert!(!cache.is_ready());
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(Arc::new(Obj(
            "a",
            "r1",
            Some("b1"),
        ))));
        assert!(!cache.is_ready(), "not before the list is complete");
        assert!(
            cache.get("a", "r1").is_none(),
            "a relist applies at its end"
        );
        cache.apply(&watcher::Event::InitDone);
        cache.ready().await;
        apply(&cache, Obj("a", "r2", Some("b1")));
        apply(&cache, Obj("a", "r3", Some("b2")));
        apply(&cache, Obj("b", "r1", Some("b1")));
        apply(&cache, Obj("a", "p", None));
        assert_eq!(names(cache.in_group("a", "b1")), ["r1", "r2"]);
        assert_eq!(names(cache.in_group("b", "b1")), ["r1"]);
        assert_eq!(
            names(cache.in_namespace("a", |_| true)),
            ["p", "r1", "r2", "r3"]
        );
        assert_eq!(names(cache.in_namespace("a", |o| o.2.is_none())), ["p"]);
        // A relabelled object moves to its new group.
        apply(&cache, Obj("a", "r2", Some("b2")));
        assert_eq!(names(cache.in_group("a", "b1")), ["r1"]);
        assert_eq!(names(cache.in_group("a", "b2")), ["r2", "r3"]);
        apply(&cache, Obj("a", "r3", None));
        assert_eq!(names(cache.in_group("a", "b2")), ["r2"]);
        cache.apply(&watcher::Event::Delete(Arc::new(Obj(
            "a",
            "r1",
            Some("b1"),
        ))));
        assert!(cache.in_group("a", "b1").is_empty());
        assert!(cache.get("a", "r1").is_none());
        let mut groups = cache.groups();
        groups.sort();
        assert_eq!(
            groups,
            [("a".into(), "b2".into()), ("b".into(), "b1".into())]
        );
        assert!(cache.in_namespace("nowhere", |_| true).is_empty());
    }

    #[test]
    fn a_watch_per_namespace_relists_only_its_namespace_and_ready_waits_for_each() {
        let cache = IndexedCache::default();
        cache.watched_by(2);
        let obj = |ns, name| Arc::new(Obj(ns, name, None));
        let list = |scope: &str, objects: Vec<Arc<Obj>>| {
            cache.apply_in(Some(scope), &watcher::Event::Init);
            for o in objects {
                cache.apply_in(Some(scope), &watcher::Event::InitApply(o));
            }
            cache.apply_in(Some(scope), &watcher::Event::InitDone);
        };
        // Interleaved: a's relist begins, b lists completely, a's ends.
        cache.apply_in(Some("a"), &watcher::Event::Init);
        cache.apply_in(Some("a"), &watcher::Event::InitApply(obj("a", "1")));
        assert!(!cache.is_ready());
        list("b", vec![obj("b", "1"), obj("b", "2")]);
        assert!(!cache.is_ready(), "ready before a listed");
        cache.apply_in(Some("a"), &watcher::Event::InitDone);
        assert!(cache.is_ready());
        let names = |ns| {
            let mut n: Vec<String> = cache
                .in_namespace(ns, |_| true)
                .iter()
                .map(|o| o.1.to_string())
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            (names("a"), names("b")),
            (vec!["1".into()], vec!["1".into(), "2".into()])
        );
        // A relist of b replaces b only; a stays.
        list("b", vec![obj("b", "3")]);
        assert_eq!(
            (names("a"), names("b")),
            (vec!["1".into()], vec!["3".into()])
        );
        list("a", vec![]);
        assert!(names("a").is_empty() && names("b") == ["3"]);
    }

    /// An object in no group (the default of [`Indexed::group`]).
    struct Plain(&'static str);

    impl Indexed for Plain {
        fn namespace(&self) -> &str {
            "ns"
        }
        fn name(&self) -> &str {
            self.0
        }
    }

    #[tokio::test]
    async fn objects_in_no_group_form_none_and_ready_waits_for_the_list() {
        let cache = Arc::new(IndexedCache::default());
        let waiting = tokio::spawn({
            let cache = cache.clone();
            async move { cache.ready().await }
        });
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(Arc::new(Plain("a"))));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "ready before the list is complete");
        cache.apply(&watcher::Event::InitDone);
        waiting.await.unwrap();
        cache.apply(&watcher::Event::Apply(Arc::new(Plain("b"))));
        assert!(cache.groups().is_empty());
        assert_eq!(cache.in_namespace("ns", |_| true).len(), 2);
    }

    #[test]
    fn records_pods_and_bindings_are_indexed_by_their_own_keys() {
        let records = IndexedCache::default();
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-b-wrap", "namespace": "team",
                "labels": {"app.kubernetes.io/managed-by": "cubbyhole", "cubbyhole.dev/binding": "b"}},
        }))
        .unwrap();
        records.apply(&watcher::Event::Apply(Arc::new(CachedRecord::pack(secret))));
        assert_eq!(records.in_group("team", "b").len(), 1);
        assert!(records.get("team", "p-b-wrap").is_some());
        assert_eq!(records.groups(), [("team".to_string(), "b".to_string())]);
        let pods = IndexedCache::default();
        let pod = CachedPod::from_watched(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "team", "uid": "u"},
            }))
            .unwrap(),
        );
        pods.apply(&watcher::Event::Apply(Arc::new(pod)));
        assert!(pods.get("team", "p").is_some() && pods.groups().is_empty());
        let bindings = IndexedCache::default();
        let binding = CachedBinding::read(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
                "metadata": {"name": "b", "namespace": "team"},
                "spec": {"podSelector": {}, "vault": {"tokenRole": "r"}},
            }))
            .unwrap(),
        );
        bindings.apply(&watcher::Event::Apply(Arc::new(binding)));
        assert!(bindings.get("team", "b").is_some() && bindings.groups().is_empty());
    }

    #[test]
    fn a_relist_replaces_everything_at_its_end() {
        let cache = IndexedCache::default();
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitDone);
        apply(&cache, Obj("a", "gone", Some("b")));
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(Arc::new(Obj(
            "a",
            "kept",
            Some("b"),
        ))));
        assert!(cache.get("a", "gone").is_some(), "still there mid-relist");
        cache.apply(&watcher::Event::InitDone);
        assert!(cache.is_ready());
        assert_eq!(names(cache.in_group("a", "b")), ["kept"]);
        assert!(cache.get("a", "gone").is_none());
    }
}
