//! In-process coalescing: one computation per key among concurrent callers.
//!
//! The first caller of a missing key becomes the flight's **leader** and holds a
//! [`FlightGuard`]; later callers of the same key are **followers** waiting on a `watch`
//! channel. The guard removes the in-flight entry when it is dropped, whatever the reason
//! (completion, cancellation of the leader's future, a panic in the body), so no key is ever
//! stranded. When a leader goes away without an outcome, its sender is dropped, every follower
//! wakes up and they form a new flight: exactly one of them becomes the new leader (the body
//! runs again once per takeover, never concurrently for one key in one process).
//!
//! **Invalidation detaches flights.** An invalidation of a key (local or received), of a site or
//! of everything marks the matching flights *poisoned* and removes them from the map, under the
//! same lock as the leader's L1 insert ([`FlightGuard::complete`]). A poisoned leader still
//! hands its value to its own caller and to followers that joined before the invalidation, but
//! stores nothing; a caller arriving after the invalidation starts a new flight. This is the
//! local half of "no stale fill" (DESIGN §5); leases are the Redis half.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

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

struct Flight {
    id: u64,
    site: &'static str,
    rx: Outcome,
    poisoned: Arc<AtomicBool>,
}

pub(crate) struct Flights {
    map: Mutex<HashMap<String, Flight>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        // Never held across user code, so poisoning cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the flight for `key`, or starts one (for the site named `site`) and leads it.
    pub(crate) fn enter(&self, key: &str, site: &'static str) -> Role<'_> {
        let mut map = self.lock();
        if let Some(f) = map.get(key) {
            return Role::Follower(f.rx.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let poisoned = Arc::new(AtomicBool::new(false));
        map.insert(
            key.to_owned(),
            Flight {
                id,
                site,
                rx,
                poisoned: poisoned.clone(),
            },
        );
        Role::Leader(FlightGuard {
            flights: self,
            key: key.to_owned(),
            id,
            tx: Some(tx),
            poisoned,
        })
    }

    /// Poisons and detaches the flight of `key`, then runs `evict` under the same lock.
    pub(crate) fn invalidate_key(&self, key: &str, evict: impl FnOnce()) {
        let mut map = self.lock();
        if let Some(f) = map.remove(key) {
            f.poisoned.store(true, Ordering::Release);
        }
        evict();
    }

    /// Poisons and detaches every flight of the site named `site` (every flight when `None`),
    /// then runs `evict` under the same lock.
    pub(crate) fn invalidate_site(&self, site: Option<&str>, evict: impl FnOnce()) {
        let mut map = self.lock();
        map.retain(|_, f| {
            let hit = site.is_none_or(|s| s == f.site);
            if hit {
                f.poisoned.store(true, Ordering::Release);
            }
            !hit
        });
        evict();
    }

    /// Flights in progress.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn remove(&self, key: &str, id: u64) {
        detach(&mut self.lock(), key, id);
    }
}

/// Removes flight `id` of `key`, unless an invalidation already detached it (and a newer
/// flight may be there).
fn detach(map: &mut HashMap<String, Flight>, key: &str, id: u64) {
    if map.get(key).is_some_and(|f| f.id == id) {
        map.remove(key);
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
    poisoned: Arc<AtomicBool>,
}

impl FlightGuard<'_> {
    /// Whether an invalidation has hit this flight since it started.
    pub(crate) fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Ends the flight and hands `outcome` to every follower. Under the map's lock, `store`
    /// runs first unless the flight was poisoned (returns whether it ran), then the entry is
    /// removed, so a caller arriving afterwards finds the stored value or starts afresh.
    pub(crate) fn complete(mut self, outcome: Shared, store: impl FnOnce()) -> bool {
        let stored = {
            let mut map = self.flights.lock();
            let stored = !self.poisoned();
            if stored {
                store();
            }
            detach(&mut map, &self.key, self.id);
            stored
        };
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(outcome));
        }
        stored
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flights.remove(&self.key, self.id);
        // `tx` drops here: followers see the channel closed and retry.
    }
}
