//! Counters, per runtime and per site, and their snapshot ([`Stats`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::key::Digester;
use crate::l1::ErasedL1;
use crate::site::Site;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters: relaxed atomics, bumped on the hot path.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A snapshot of counters (per site, or summed over the runtime).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Counts {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Counts {
                Counts { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Counts {
            fn add(&mut self, other: &Counts) {
                $(self.$name += other.$name;)*
            }

            /// `(name, value)` for every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Calls answered from L1.
    l1_hits,
    /// Calls answered from L2 (by a flight's leader).
    l2_hits,
    /// Lookups that found nothing usable in any tier and ran the body.
    misses,
    /// Body runs.
    computations,
    /// Callers that joined another caller's in-flight computation instead of running the body.
    coalesced_waits,
    /// L2 hits copied into L1.
    promotions,
    /// Values written to L2.
    l2_writes,
    /// L2 operations that failed (connection or server error).
    l2_errors,
    /// L2 operations that exceeded `l2_timeout`.
    l2_timeouts,
    /// L2 operations skipped because Redis was not connected or the breaker was open.
    l2_skips,
    /// L2 reads made with a plain `GET`, without taking the fill lease, because Redis refused
    /// writes (`OOM` under `noeviction`, `READONLY`): hits are served, misses not filled.
    l2_reads_without_lease,
    /// Bytes in L2 that were not a value of ours (corrupt, foreign, wrong schema, oversized).
    decode_failures,
    /// L2 entries written before a group invalidation (an older generation), read as misses.
    stale_generation_misses,
    /// Values not written to L2 because they exceed `max_value_bytes` (or failed to encode).
    oversize_skips,
    /// Keys invalidated by this runtime.
    invalidations_sent,
    /// Invalidations received from other instances (messages applied).
    invalidations_received,
    /// Invalidations whose Redis part (delete, generation increment or publish) failed; the
    /// caller got an `Err`.
    invalidations_failed,
    /// Times L1 was flushed as a whole, for any reason (the reasons follow).
    l1_flushes,
    /// … because the invalidation subscription was lost.
    l1_flushes_disconnect,
    /// … because a (re)subscription came up (entries written without one are dropped).
    l1_flushes_subscribed,
    /// … because a message from a known origin was missing.
    l1_flushes_sequence_gap,
    /// … because the invalidation handler's queue was full.
    l1_flushes_overflow,
    /// … because another instance went unheard for longer than its beacons allow.
    l1_flushes_silence,
    /// … because another instance was first heard with invalidations already sent, or sent
    /// one this build cannot read.
    l1_flushes_unverified,
    /// … because an invalidation bus task ended unexpectedly and was restarted.
    l1_flushes_bus_restart,
    /// … because another instance reported an invalidation it could not publish.
    l1_flushes_lost_publish,
    /// … because of client tracking (`client_tracking`): its connection was lost or
    /// (re)established, its pushes overflowed their queue, or Redis reported a flush.
    l1_flushes_tracking,
    /// Computed or promoted values not stored because an invalidation hit their key while they
    /// were in flight (or their Redis lease was gone at fill time).
    fills_refused,
    /// Flights that found another process's lease and waited for its fill.
    lease_waits,
    /// Lease waits that ran out (`lease_wait`): the caller computed without filling.
    lease_timeouts,
    /// Leases of ours deleted because their flight had nothing to fill (an `Err`, a `None`, a
    /// failed read, a cancelled or panicking leader), by the flight or by the lease janitor.
    leases_released,
    /// Leases handed to the janitor because their flight could not release them (the read
    /// timed out or was cancelled, the connection dropped).
    leases_orphaned,
    /// Leases the janitor gave up on (they expired in Redis by their TTL first).
    leases_abandoned,
    /// Invalidations dropped because the handler's queue was full (each flushes L1, counted in
    /// `l1_flushes_overflow`).
    bus_messages_dropped,
    /// Messages dropped because the subscriber's push queue was full (each burst of drops
    /// flushes L1, counted in `l1_flushes_overflow`).
    bus_pushes_dropped,
    /// Bus tasks (reader, handler) restarted after ending unexpectedly.
    bus_restarts,
    /// Origins forgotten because too many were tracked at once.
    bus_origins_evicted,
    /// Invalidation subscriptions established (the first one and every resubscription).
    bus_subscribes,
    /// Messages on the invalidation channel that were not ours (ignored).
    bus_bad_messages,
    /// This runtime's own messages received back from the channel (ignored).
    bus_own_messages,
    /// Sites that share their key template's shape with another site, so that the two read
    /// and write the same keys (reported once per site).
    template_conflicts,
    /// Circuit breaker transitions (closed→open, open→half-open→closed …).
    breaker_transitions,
    /// Successful (re)connections to Redis.
    l2_connects,
    /// Calls answered with a stale value by fail-safe (the body failed or timed out).
    stale_served,
    /// Bodies that passed their soft timeout (callers got the stale value; the body went on in
    /// the background, or was cancelled when it borrows its arguments).
    soft_timeouts,
    /// Bodies that passed their hard timeout.
    hard_timeouts,
    /// Bodies that panicked.
    body_panics,
    /// Background recomputations started by refresh-ahead.
    refreshes,
    /// Refreshes not run because another process held the key's refresh lock.
    refresh_skips,
    /// Writes to Redis queued off the caller's path (`background_writes`).
    background_writes,
    /// Queued writes dropped because the queue was full, or left unwritten at shutdown.
    background_writes_dropped,
    /// Calls answered with a value read from a cluster replica (`replica_reads`): served to
    /// that call only, never kept in L1 (also counted in `l2_hits`).
    replica_hits,
    /// Replica reads that found nothing usable (no value, an expired or older value, a
    /// lease, a failure): the call read the master as usual.
    replica_fallbacks,
    /// Negative answers (a `None` with `cache_none`, an `Err` with `cache_err`) cached, for
    /// their own TTL.
    negative_stored,
    /// Calls answered with a cached negative answer (from L1 or L2; also counted in
    /// `l1_hits` / `l2_hits`).
    negative_hits,
    /// Keys of this namespace whose write Redis reported through client tracking
    /// (`client_tracking`): each evicted from L1 (every site), its flights kept out of L1.
    tracking_evictions,
    /// Client-tracking connections established (the first one and every reconnection).
    tracking_connects,
    /// Pushes dropped because the tracking connection's push queue was full (each burst
    /// flushes L1, counted in `l1_flushes_tracking`).
    tracking_pushes_dropped,
}

impl Counters {
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One site's counters in a [`Stats`] snapshot.
#[derive(Debug, Clone)]
pub struct SiteStats {
    /// The function's path.
    pub name: &'static str,
    /// Its counters.
    pub counts: Counts,
}

/// A snapshot of a runtime's counters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Every counter summed over the runtime.
    pub total: Counts,
    /// Counters of each site this runtime has served.
    pub sites: Vec<SiteStats>,
    /// Computations (flights) in progress right now.
    pub inflight: usize,
    /// Entries currently in L1 (approximate, as Moka reports it).
    pub l1_entries: u64,
    /// Bytes of values in L1, summed over the functions (weighed only under `l1_max_bytes`,
    /// else 0).
    pub l1_bytes: u64,
    /// Whether Redis is configured.
    pub l2_configured: bool,
    /// Whether a Redis connection is up right now.
    pub l2_connected: bool,
    /// Whether the invalidation subscription is up right now (always `false` without Redis).
    pub subscribed: bool,
    /// Whether client tracking (`client_tracking`) is on and its connection up right now.
    pub tracking: bool,
    /// Circuit breakers open right now (one server: 0 or 1; a cluster: one per master, and
    /// the replica reads' own).
    pub l2_breakers_open: usize,
    /// Largest number of received invalidations that waited in the handler queue.
    pub bus_queue_peak: usize,
    /// Other instances this one hears on the invalidation bus right now (their messages or
    /// beacons; one gone silent is no longer counted).
    pub bus_origins: usize,
}

impl Stats {
    /// The counters of the site named `name`, if it has been used.
    pub fn site(&self, name: &str) -> Option<&Counts> {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.counts)
    }
}

const CHUNK: usize = 64;
const CHUNKS: usize = 64;

/// The state of one site in one runtime: its counters and its typed L1.
#[derive(Default)]
pub(crate) struct Slot {
    site: OnceLock<&'static Site>,
    pub(crate) counters: Counters,
    /// L1 hits of the lookup fast path (added to `counters.l1_hits` in snapshots).
    pub(crate) hits: Striped,
    pub(crate) l1: OnceLock<Box<dyn ErasedL1>>,
}

impl Slot {
    fn snapshot(&self) -> Counts {
        let mut counts = self.counters.snapshot();
        counts.l1_hits += self.hits.sum();
        counts
    }
}

/// Number of stripes of a [`Striped`] counter.
const STRIPES: usize = 8;

/// A counter written by every L1 hit, striped so that threads do not share a cache line:
/// each thread bumps its own stripe (threads are spread round-robin over the stripes), and a
/// read sums them.
#[derive(Default)]
pub(crate) struct Striped([Padded; STRIPES]);

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Striped {
    #[inline]
    pub(crate) fn bump(&self) {
        self.0[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |n, p| n.wrapping_add(p.0.load(Ordering::Relaxed)))
    }
}

/// This thread's stripe.
#[inline]
fn stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let i = s.get();
        if i < STRIPES {
            return i;
        }
        let i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        s.set(i);
        i
    })
}

/// Per-site state of one runtime, indexed by [`Site::index`], lock-free on the hot path:
/// 64 lazily allocated chunks of 64 slots. Sites beyond 4096 in one process share one overflow
/// slot (reported under the name `"(other sites)"`; its L1 serves the first of them only).
pub(crate) struct SiteTable {
    chunks: [OnceLock<Box<[Slot]>>; CHUNKS],
    overflow: Slot,
    runtime: Counters,
    /// Turns keys into L1 keys.
    pub(crate) digester: Digester,
    /// The first site seen with each template shape (cold path: first use of a site).
    shapes: Mutex<HashMap<String, &'static str>>,
    /// The runtime's namespace (a label of its metrics, feature `metrics`).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    namespace: String,
}

impl SiteTable {
    pub(crate) fn new(namespace: &str) -> Self {
        SiteTable {
            digester: Digester::new(namespace),
            chunks: std::array::from_fn(|_| OnceLock::new()),
            overflow: Slot::default(),
            runtime: Counters::default(),
            shapes: Mutex::new(HashMap::new()),
            namespace: namespace.to_owned(),
        }
    }

    /// The runtime's namespace.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Counters not tied to one site (breaker, connection, flushes).
    pub(crate) fn runtime(&self) -> &Counters {
        &self.runtime
    }

    /// The counters of `site`.
    #[inline]
    pub(crate) fn site(&self, site: &'static Site) -> &Counters {
        &self.slot(site).counters
    }

    /// The whole state of `site`.
    #[inline]
    pub(crate) fn slot(&self, site: &'static Site) -> &Slot {
        let i = site.index();
        let Some(chunk) = self.chunks.get(i / CHUNK) else {
            return &self.overflow;
        };
        let chunk = chunk.get_or_init(|| (0..CHUNK).map(|_| Slot::default()).collect());
        let slot = &chunk[i % CHUNK];
        if slot.site.get().is_none() {
            self.first_use(slot, site);
        }
        slot
    }

    /// Reports (ERROR, once per site, counted in `template_conflicts`) a site whose template
    /// has the shape of another site's: the two read and write the same keys in Redis (their
    /// flights and L1s stay apart).
    #[cold]
    fn first_use(&self, slot: &Slot, site: &'static Site) {
        if slot.site.set(site).is_err() {
            return;
        }
        let Ok(template) = site.compiled() else {
            return;
        };
        let other = {
            let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
            *shapes.entry(template.shape()).or_insert(site.name())
        };
        if other != site.name() {
            Counters::bump(&slot.counters.template_conflicts);
            if Site::first_time(&site.warned_shared_template) {
                tracing::error!(
                    site = site.name(),
                    other_site = other,
                    template = site.template(),
                    "tiered: two functions share this key template, so they read and write the same keys in Redis; give one of them another template"
                );
            }
        }
    }

    /// Every site used in this runtime with its state.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (&'static Site, &Slot)> {
        self.chunks
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|c| c.iter())
            .chain(std::iter::once(&self.overflow))
            .filter_map(|slot| slot.site.get().map(|site| (*site, slot)))
    }

    /// Every L1 that exists.
    pub(crate) fn l1s(&self) -> impl Iterator<Item = &dyn ErasedL1> {
        self.chunks
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|c| c.iter())
            .chain(std::iter::once(&self.overflow))
            .filter_map(|slot| slot.l1.get().map(|b| &**b))
    }

    pub(crate) fn snapshot(&self) -> (Counts, Vec<SiteStats>) {
        let mut total = self.runtime.snapshot();
        let mut sites = Vec::new();
        for chunk in self.chunks.iter().filter_map(OnceLock::get) {
            for slot in chunk.iter() {
                if let Some(site) = slot.site.get() {
                    let counts = slot.snapshot();
                    total.add(&counts);
                    sites.push(SiteStats {
                        name: site.name(),
                        counts,
                    });
                }
            }
        }
        let overflow = self.overflow.snapshot();
        if overflow != Counts::default() {
            total.add(&overflow);
            sites.push(SiteStats {
                name: "(other sites)",
                counts: overflow,
            });
        }
        (total, sites)
    }
}
