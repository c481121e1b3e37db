//! Fair shares of the reconcile slots (`reconcileConcurrency`) between namespaces. A freed slot
//! goes to the waiting namespace holding the fewest slots (the longest-waiting of those on a
//! tie), so a namespace with a thousand bindings to reconcile delays another namespace's round
//! by at most one round, never by its whole backlog. Within a namespace rounds keep their order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// `slots` reconcile slots shared fairly between namespaces.
pub struct FairSlots {
    state: Arc<Mutex<State>>,
}

struct State {
    free: usize,
    in_use: HashMap<String, usize>,
    /// Namespaces with waiters, in the order they started waiting.
    queue: VecDeque<String>,
    waiters: HashMap<String, VecDeque<oneshot::Sender<()>>>,
}

/// A held slot; dropping it hands the slot on.
pub struct Slot {
    state: Arc<Mutex<State>>,
    namespace: String,
}

impl FairSlots {
    /// `slots` slots (at least one).
    pub fn new(slots: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                free: slots.max(1),
                in_use: HashMap::new(),
                queue: VecDeque::new(),
                waiters: HashMap::new(),
            })),
        }
    }

    /// Waits for a slot for a round in `namespace`.
    pub async fn acquire(&self, namespace: &str) -> Slot {
        let receiver = {
            let mut state = self.state.lock().expect("slots lock");
            if state.free > 0 && state.queue.is_empty() {
                state.free -= 1;
                *state.in_use.entry(namespace.to_string()).or_default() += 1;
                return self.slot(namespace);
            }
            let (sender, receiver) = oneshot::channel();
            let waiters = state.waiters.entry(namespace.to_string()).or_default();
            waiters.push_back(sender);
            if waiters.len() == 1 {
                state.queue.push_back(namespace.to_string());
            }
            receiver
        };
        let mut waiting = Waiting {
            state: self.state.clone(),
            namespace,
            receiver,
            granted: false,
        };
        // The sender is only dropped after sending: it lives in the state until granted.
        let _ = (&mut waiting.receiver).await;
        waiting.granted = true;
        self.slot(namespace)
    }

    fn slot(&self, namespace: &str) -> Slot {
        Slot {
            state: self.state.clone(),
            namespace: namespace.to_string(),
        }
    }

    /// Slots held by `namespace` now.
    #[cfg(test)]
    fn held_by(&self, namespace: &str) -> usize {
        let state = self.state.lock().expect("slots lock");
        state.in_use.get(namespace).copied().unwrap_or(0)
    }
}

impl State {
    /// Gives a free slot to the next waiter, if any: from the waiting namespace holding the
    /// fewest slots, the one queued first on a tie.
    fn hand_on(&mut self) {
        while self.free > 0 {
            let Some(at) = (0..self.queue.len())
                .min_by_key(|&i| (self.in_use.get(&self.queue[i]).copied().unwrap_or(0), i))
            else {
                return;
            };
            let namespace = self.queue[at].clone();
            let waiters = self.waiters.get_mut(&namespace).expect("queued namespace");
            let sender = waiters.pop_front().expect("queued namespace has waiters");
            let drained = waiters.is_empty();
            if drained {
                self.waiters.remove(&namespace);
                self.queue.remove(at);
            } else {
                // Served: to the back of the line among its equals.
                let ns = self.queue.remove(at).expect("index in range");
                self.queue.push_back(ns);
            }
            if sender.send(()).is_ok() {
                self.free -= 1;
                *self.in_use.entry(namespace).or_default() += 1;
            }
        }
    }

    fn release(&mut self, namespace: &str) {
        if let Some(n) = self.in_use.get_mut(namespace) {
            *n -= 1;
            if *n == 0 {
                self.in_use.remove(namespace);
            }
        }
        self.free += 1;
        self.hand_on();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state
            .lock()
            .expect("slots lock")
            .release(&self.namespace);
    }
}

/// A wait for a slot; if it is dropped (the round was cancelled) after its slot was granted but
/// before it was taken, the slot is handed on.
struct Waiting<'a> {
    state: Arc<Mutex<State>>,
    namespace: &'a str,
    receiver: oneshot::Receiver<()>,
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        self.receiver.close();
        if self.receiver.try_recv().is_ok() {
            self.state
                .lock()
                .expect("slots lock")
                .release(self.namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Starts a waiter for `namespace` that records its turn in `order` and holds its slot
    /// until `release` fires.
    fn waiter(
        slots: &Arc<FairSlots>,
        namespace: &'static str,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
        let (release, released) = oneshot::channel::<()>();
        let (slots, order) = (slots.clone(), order.clone());
        let task = tokio::spawn(async move {
            let _slot = slots.acquire(namespace).await;
            order.lock().unwrap().push(namespace);
            let _ = released.await;
        });
        (task, release)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_quiet_namespace_gets_the_next_slot_before_a_noisy_backlog() {
        let slots = Arc::new(FairSlots::new(2));
        let order = Arc::new(Mutex::new(vec![]));
        let mut noisy = vec![];
        for _ in 0..10 {
            noisy.push(waiter(&slots, "noisy", &order));
            settle().await;
        }
        assert_eq!(slots.held_by("noisy"), 2);
        let quiet = waiter(&slots, "quiet", &order);
        settle().await;
        assert_eq!(order.lock().unwrap().len(), 2, "both slots are held");
        // The first slot freed goes to the quiet namespace, past eight noisy waiters.
        let (first, release) = noisy.remove(0);
        release.send(()).unwrap();
        first.await.unwrap();
        settle().await;
        assert_eq!(order.lock().unwrap()[2], "quiet");
        assert_eq!(slots.held_by("quiet"), 1);
        quiet.1.send(()).unwrap();
        quiet.0.await.unwrap();
        // Then the noisy backlog drains, in order, two at a time.
        for (task, release) in noisy {
            release.send(()).unwrap();
            task.await.unwrap();
        }
        assert_eq!(order.lock().unwrap().len(), 11);
        assert_eq!(slots.held_by("noisy"), 0);
    }

    #[tokio::test]
    async fn the_namespace_holding_fewer_slots_goes_first() {
        let slots = Arc::new(FairSlots::new(3));
        let order = Arc::new(Mutex::new(vec![]));
        let a1 = waiter(&slots, "a", &order);
        let a2 = waiter(&slots, "a", &order);
        let b1 = waiter(&slots, "b", &order);
        settle().await;
        let a3 = waiter(&slots, "a", &order);
        settle().await;
        let b2 = waiter(&slots, "b", &order);
        let c1 = waiter(&slots, "c", &order);
        settle().await;
        // a holds 2, b 1: a's slot goes to c (holds none), even though a3 and b2 queued first.
        a1.1.send(()).unwrap();
        a1.0.await.unwrap();
        settle().await;
        assert_eq!(order.lock().unwrap()[3], "c");
        // Now a holds 1, b none, c 1: b goes before a3, which queued first.
        b1.1.send(()).unwrap();
        b1.0.await.unwrap();
        settle().await;
        assert_eq!(order.lock().unwrap()[4], "b");
        for (task, release) in [a2, a3, b2, c1] {
            release.send(()).unwrap();
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a", "a", "b", "c", "b", "a"]);
    }

    #[tokio::test]
    async fn on_a_tie_the_namespace_that_waited_longest_goes_first() {
        let slots = Arc::new(FairSlots::new(1));
        let order = Arc::new(Mutex::new(vec![]));
        let x = waiter(&slots, "x", &order);
        settle().await;
        let b = waiter(&slots, "b", &order);
        settle().await;
        let a = waiter(&slots, "a", &order);
        settle().await;
        for (task, release) in [x, b, a] {
            release.send(()).unwrap();
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["x", "b", "a"]);
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_no_slot() {
        let slots = Arc::new(FairSlots::new(1));
        let held = slots.acquire("a").await;
        // A round cancelled while waiting (e.g. on shutdown) gives up its place.
        let cancelled = tokio::time::timeout(Duration::from_millis(10), slots.acquire("b")).await;
        assert!(cancelled.is_err());
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(1), slots.acquire("c")).await;
        assert!(again.is_ok(), "the slot was handed on, not lost");
        // Granted but dropped before it was taken: handed on too.
        let state = slots.state.clone();
        let (sender, receiver) = oneshot::channel();
        state.lock().unwrap().in_use.insert("d".into(), 1);
        state.lock().unwrap().free = 0;
        sender.send(()).unwrap();
        drop(Waiting {
            state: state.clone(),
            namespace: "d",
            receiver,
            granted: false,
        });
        assert_eq!(state.lock().unwrap().free, 1);
        assert_eq!(slots.held_by("d"), 0);
    }
}
