//! In-process coalescing: one computation per (function, key) among concurrent callers.
//!
//! The first caller of a missing key becomes the flight's **leader** and holds a
//! [`FlightGuard`]; later callers of the same key *of the same function* are **followers**
//! waiting on a `watch` channel. Flights are per function: two functions whose templates
//! render the same key never hand each other values. The guard removes the in-flight entry
//! when it is dropped, whatever the reason (completion, cancellation of the leader's future, a
//! panic in the body), so no key is ever stranded. When a leader goes away without an outcome,
//! its sender is dropped, every follower wakes up and they form a new flight: exactly one of
//! them becomes the new leader (the body runs again once per takeover, never concurrently for
//! one key in one process).
//!
//! **Invalidation detaches flights.** An invalidation of a key (local or received), of a site or
//! of everything marks the matching flights *poisoned* and removes them from the map. A
//! poisoned leader still hands its value to its own caller and to followers that joined before
//! the invalidation, but stores nothing; a caller arriving after the invalidation starts a new
//! flight. This is the local half of "no stale fill"; leases are the Redis half.
//!
//! **Locks.** The map's lock is held only to insert or remove entries. Poisoning and the
//! leader's store ([`FlightGuard::complete`]) take the flight's own lock instead, so the user's
//! `Clone`, the L1 insert and the drop of a replaced value never run under a runtime-wide lock:
//! a slow `Clone` of one key holds up invalidations of that key only.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// What has hit a flight since it started; its lock orders poisoning against the leader's
/// store.
#[derive(Debug, Default)]
pub(crate) struct FlightState {
    /// An invalidation of ours (or of another instance, by the bus) hit the key: the flight
    /// stores nothing, in Redis or in L1.
    pub(crate) poisoned: bool,
    /// Redis reported a write of the key (client tracking), which may be the flight's own
    /// lease or fill or another program's write: the value stays out of L1 (its Redis fill,
    /// guarded by the lease, proceeds).
    pub(crate) doubted: bool,
}

type Poison = Arc<Mutex<FlightState>>;

struct Flight {
    id: u64,
    rx: Outcome,
    poisoned: Poison,
}

type SiteFlights = HashMap<String, Flight>;

pub(crate) struct Flights {
    map: Mutex<HashMap<&'static str, SiteFlights>>,
    next_id: AtomicU64,
}

pub(crate) enum Role {
    Leader(FlightGuard),
    Follower(Outcome),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Never held across user code, so poisoning cannot leave the state inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn poison(f: &Flight) {
    lock(&f.poisoned).poisoned = true;
}

impl Flights {
    pub(crate) fn new() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Joins the flight of `site` for `key`, or starts one and leads it.
    pub(crate) fn enter(self: &Arc<Self>, site: &'static str, key: &str) -> Role {
        let mut map = lock(&self.map);
        let flights = map.entry(site).or_default();
        if let Some(f) = flights.get(key) {
            return Role::Follower(f.rx.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let poisoned = Poison::default();
        flights.insert(
            key.to_owned(),
            Flight {
                id,
                rx,
                poisoned: poisoned.clone(),
            },
        );
        Role::Leader(FlightGuard {
            flights: self.clone(),
            site,
            key: key.to_owned(),
            id,
            tx: Some(Arc::new(tx)),
            poisoned,
            published: false,
        })
    }

    /// Poisons and detaches the flight of `key` of the site named `site`, then runs `evict`
    /// (outside every lock: the poisoning already keeps the flight from storing).
    pub(crate) fn invalidate_key(&self, site: &str, key: &str, evict: impl FnOnce()) {
        let removed = lock(&self.map).get_mut(site).and_then(|f| f.remove(key));
        if let Some(f) = removed {
            poison(&f);
        }
        evict();
    }

    /// Client tracking reported a write of `key`: detaches its flight in every site (callers
    /// arriving afterwards read Redis again) and keeps their values out of L1, then runs
    /// `evict`.
    pub(crate) fn doubt_key(&self, key: &str, evict: impl FnOnce()) {
        let removed: Vec<Flight> = lock(&self.map)
            .values_mut()
            .filter_map(|f| f.remove(key))
            .collect();
        for f in &removed {
            lock(&f.poisoned).doubted = true;
        }
        evict();
    }

    /// Poisons and detaches every flight of the site named `site` (every flight when `None`),
    /// then runs `evict`.
    pub(crate) fn invalidate_site(&self, site: Option<&str>, evict: impl FnOnce()) {
        let removed: Vec<Flight> = {
            let mut map = lock(&self.map);
            match site {
                Some(s) => map
                    .get_mut(s)
                    .map(|f| f.drain().map(|(_, f)| f).collect())
                    .unwrap_or_default(),
                None => map
                    .values_mut()
                    .flat_map(|f| f.drain().map(|(_, f)| f))
                    .collect(),
            }
        };
        for f in &removed {
            poison(f);
        }
        evict();
    }

    /// Flights in progress.
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).values().map(HashMap::len).sum()
    }

    /// Removes flight `id` of `key`, unless an invalidation already detached it (and a newer
    /// flight may be there).
    fn detach(&self, site: &str, key: &str, id: u64) {
        let mut map = lock(&self.map);
        if let Some(flights) = map.get_mut(site)
            && flights.get(key).is_some_and(|f| f.id == id)
        {
            flights.remove(key);
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
/// followers so that one of them takes over. It owns its handle on the flights, so a flight can
/// end in a background task (a body finishing after its caller's timeout).
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    site: &'static str,
    key: String,
    id: u64,
    tx: Option<Arc<watch::Sender<Option<Shared>>>>,
    poisoned: Poison,
    /// The outcome was handed out by [`publish`](Self::publish).
    published: bool,
}

impl FlightGuard {
    /// Whether an invalidation has hit this flight since it started.
    pub(crate) fn poisoned(&self) -> bool {
        lock(&self.poisoned).poisoned
    }

    /// A handle that hands a stale value to the followers while the flight goes on (a soft
    /// timeout: the caller returns, the body runs on in the background).
    pub(crate) fn announcer(&self) -> Option<Announcer> {
        self.tx.clone().map(Announcer)
    }

    /// The flight's poison flag, for work that outlives the guard (a queued write).
    pub(crate) fn poison_flag(&self) -> Arc<Mutex<FlightState>> {
        self.poisoned.clone()
    }

    /// Hands `outcome` to the followers waiting now, before the flight ends (the leader still
    /// has I/O to do: its fill, or its lease release). Callers that join until the flight
    /// ends receive it too. Without followers nothing is made, and [`complete`](Self::complete)
    /// hands its own outcome to whoever joined meanwhile.
    pub(crate) fn publish(&mut self, outcome: impl FnOnce() -> Shared) {
        // One receiver is the flight's own entry in the map.
        if let Some(tx) = &self.tx
            && tx.receiver_count() > 1
        {
            tx.send_replace(Some(outcome()));
            self.published = true;
        }
    }

    /// Ends the flight and hands `outcome` to every follower. Under the flight's own lock,
    /// `store` runs unless the flight was poisoned or doubted (returns whether it ran, and
    /// `true` for a doubted flight: its value is not refused, only kept out of L1); then the
    /// entry is removed, so a caller arriving afterwards finds the stored value or starts
    /// afresh. The outcome is made only when followers are waiting (no copy of the value
    /// otherwise).
    pub(crate) fn complete(
        mut self,
        outcome: impl FnOnce() -> Shared,
        store: impl FnOnce(),
    ) -> bool {
        let stored = {
            let state = lock(&self.poisoned);
            if !state.poisoned && !state.doubted {
                store();
            }
            !state.poisoned
        };
        self.flights.detach(self.site, &self.key, self.id);
        // Detached: no follower can join any more, so no receiver now means nobody to tell.
        if let Some(tx) = self.tx.take()
            && !self.published
            && tx.receiver_count() > 0
        {
            tx.send_replace(Some(outcome()));
        }
        stored
    }
}

/// See [`FlightGuard::announcer`].
pub(crate) struct Announcer(Arc<watch::Sender<Option<Shared>>>);

impl Announcer {
    /// Hands `outcome` to the followers waiting now and to those that join until the flight
    /// ends (the flight's own outcome replaces it when it ends).
    pub(crate) fn announce(&self, outcome: impl FnOnce() -> Shared) {
        if self.0.receiver_count() > 1 {
            self.0.send_replace(Some(outcome()));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.flights.detach(self.site, &self.key, self.id);
        // `tx` drops here: followers see the channel closed and retry.
    }
}
