//! The local side of coherence: what an invalidation does to this instance's L1 and flights.
//!
//! [`Local`] is the small handle the bus tasks hold instead of the runtime: the flights, the
//! per-site table (counters and L1s) and the cached generations.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::coalesce::Flights;
use crate::stats::{Counters, SiteTable};

use super::generations::Generations;

/// Why L1 starts a new epoch as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushReason {
    /// `Runtime::flush_l1` or a group invalidation.
    Manual,
    /// The subscription was lost.
    Disconnect,
    /// A (re)subscription came up: entries written while unsubscribed go.
    Subscribed,
    /// A message from a known origin is missing.
    SequenceGap,
    /// The handler queue was full.
    Overflow,
    /// An origin went unheard for longer than its beacons allow.
    Silence,
    /// An origin was first heard with numbers already in use, or sent an action this build
    /// cannot read.
    Unverified,
    /// A bus task ended unexpectedly (a panic) and was restarted.
    BusRestart,
    /// Another instance reported an invalidation it could not publish.
    LostPublish,
    /// Client tracking: its connection was lost or (re)established, pushes were dropped, or
    /// Redis reported a flush of the database (`FLUSHALL`/`FLUSHDB`).
    Tracking,
}

impl FlushReason {
    fn counter(self, c: &Counters) -> Option<&AtomicU64> {
        match self {
            FlushReason::Manual => None,
            FlushReason::Disconnect => Some(&c.l1_flushes_disconnect),
            FlushReason::Subscribed => Some(&c.l1_flushes_subscribed),
            FlushReason::SequenceGap => Some(&c.l1_flushes_sequence_gap),
            FlushReason::Overflow => Some(&c.l1_flushes_overflow),
            FlushReason::Silence => Some(&c.l1_flushes_silence),
            FlushReason::Unverified => Some(&c.l1_flushes_unverified),
            FlushReason::BusRestart => Some(&c.l1_flushes_bus_restart),
            FlushReason::LostPublish => Some(&c.l1_flushes_lost_publish),
            FlushReason::Tracking => Some(&c.l1_flushes_tracking),
        }
    }

    fn count(self, c: &Counters) {
        Counters::bump(&c.l1_flushes);
        if let Some(c) = self.counter(c) {
            Counters::bump(c);
        }
    }
}

/// This instance's flights, L1s and cached generations.
pub(crate) struct Local {
    pub(crate) flights: Arc<Flights>,
    pub(crate) table: Arc<SiteTable>,
    pub(crate) generations: Generations,
    #[cfg(feature = "test-hooks")]
    pub(crate) hooks: crate::hooks::Hooks,
}

impl Local {
    pub(crate) fn new(table: Arc<SiteTable>) -> Local {
        Local {
            flights: Arc::new(Flights::new()),
            table,
            generations: Generations::default(),
            #[cfg(feature = "test-hooks")]
            hooks: crate::hooks::Hooks::default(),
        }
    }

    /// Evicts `key` from the L1 of the site named `site` and detaches its flight.
    pub(crate) fn evict(&self, site: &str, key: &str) {
        self.flights.invalidate_key(site, key, || {
            let digest = self.table.digester.of(key);
            for (s, slot) in self.table.slots() {
                if s.name() == site
                    && let Some(l1) = slot.l1.get()
                {
                    l1.remove(digest);
                }
            }
        });
    }

    /// Client tracking reported a write of the Redis key `key`: evicts it from the L1 of every
    /// site (several may share a key's shape), detaches its flights and keeps their values out
    /// of L1.
    pub(crate) fn track_evict(&self, key: &str) {
        self.flights.doubt_key(key, || {
            let digest = self.table.digester.of(key);
            for (_, slot) in self.table.slots() {
                if let Some(l1) = slot.l1.get() {
                    l1.remove(digest);
                }
            }
        });
    }

    /// Starts a new L1 epoch for the site named `site` (every site when `None`) and detaches
    /// their flights.
    pub(crate) fn drop_site(&self, site: Option<&str>) {
        self.flights.invalidate_site(site, || {
            for (s, slot) in self.table.slots() {
                if site.is_none_or(|name| name == s.name())
                    && let Some(l1) = slot.l1.get()
                {
                    l1.new_epoch();
                }
            }
        });
    }

    /// Starts a new L1 epoch (and detaches the flights) of every function with a tag template
    /// that can render `tag`: its entries carrying the tag go (its other entries too).
    pub(crate) fn drop_tagged(&self, tag: &str) {
        let tagged: Vec<&'static str> = self
            .table
            .slots()
            .filter(|(site, _)| {
                site.tag_templates()
                    .is_some_and(|ts| ts.iter().any(|t| t.matches(tag)))
            })
            .map(|(site, _)| site.name())
            .collect();
        for name in tagged {
            self.drop_site(Some(name));
        }
    }

    /// Drops every L1 entry and every flight's right to store. For every reason but
    /// [`FlushReason::Manual`] messages may have been lost, generation announcements among
    /// them: the cached generations are forgotten too.
    pub(crate) fn flush(&self, reason: FlushReason) {
        if reason != FlushReason::Manual {
            self.generations.forget();
        }
        self.drop_site(None);
        reason.count(self.table.runtime());
    }
}
