//! In-process coalescing: one computation per key among concurrent callers.
//!
//! The first caller of a missing key becomes the flight's **leader** and holds a
//! [`FlightGuard`]; later callers of the same key are **followers** waiting on a `watch`
//! channel. The guard removes the in-flight entry when it is dropped, whatever the reason
//! (completion, cancellation of the leader's future, a panic in the body), so no key is ever
//! stranded. When a leader goes away without an outcome, its sender is dropped, every follower
//! wakes up and they form a new flight: exactly one of them becomes the new leader (the body
//! runs again once per takeover, never concurrently for one key in one process).

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::watch;

/// What a leader hands to its followers.
#[derive(Clone)]
pub(crate) enum Shared {
    /// A cacheable value (the site's value type, erased).
    Value(Arc<dyn Any + Send + Sync>),
    /// A non-cacheable outcome that may be shared (an `Err` whose type is `Clone`, a `None`).
    Output(Arc<dyn Any + Send + Sync>),
    /// Nothing shareable: followers form a new flight.
    Retry,
}

type Outcome = watch::Receiver<Option<Shared>>;

pub(crate) struct Flights {
    map: Mutex<HashMap<String, (u64, Outcome)>>,
    next_id: std::sync::atomic::AtomicU64,
}

pub(crate) enum Role<'a> {
    Leader(FlightGuard<'a>),
    Follower(Outcome),
}

impl Flights {
    pub(crate) fn new() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Outcome)>> {
        // Never held across user code, so poisoning cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the flight for `key`, or starts one and leads it.
    pub(crate) fn enter(&self, key: &str) -> Role<'_> {
        let mut map = self.lock();
        if let Some((_, rx)) = map.get(key) {
            return Role::Follower(rx.clone());
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), (id, rx));
        Role::Leader(FlightGuard {
            flights: self,
            key: key.to_owned(),
            id,
            tx: Some(tx),
        })
    }

    /// Flights in progress.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn remove(&self, key: &str, id: u64) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|(current, _)| *current == id) {
            map.remove(key);
        }
    }
}

/// Waits for the leader's outcome; `None` when the leader went away without one.
pub(crate) async fn follow(mut rx: Outcome) -> Option<Shared> {
    loop {
        if let Some(s) = rx.borrow_and_update().clone() {
            return Some(s);
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone();
        }
    }
}

/// The leader's claim on a key. Dropping it without [`complete`](Self::complete) releases the
/// followers so that one of them takes over.
pub(crate) struct FlightGuard<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
    tx: Option<watch::Sender<Option<Shared>>>,
}

impl FlightGuard<'_> {
    /// Ends the flight and hands `outcome` to every follower. The entry is removed first, so
    /// a caller arriving afterwards finds the value in L1 (written before) or starts afresh.
    pub(crate) fn complete(mut self, outcome: Shared) {
        self.flights.remove(&self.key, self.id);
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(outcome));
        }
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flights.remove(&self.key, self.id);
        // `tx` drops here: followers see the channel closed and retry.
    }
}
