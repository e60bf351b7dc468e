//! L1: a Moka cache of typed values with a TTL per entry.
//!
//! Values are stored as `Arc<dyn Any + Send + Sync>` holding the function's own type, so a hit
//! is a hash lookup, a downcast and a `clone` of the value: nothing is decoded.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

/// A value of any site, type-erased.
pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) value: AnyValue,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, e: &Entry, _: Instant) -> Option<Duration> {
        Some(e.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        e: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.ttl)
    }
}

pub(crate) struct L1 {
    cache: moka::sync::Cache<String, Entry>,
    max_ttl: Option<Duration>,
}

impl L1 {
    pub(crate) fn new(max_entries: u64, max_ttl: Option<Duration>) -> Self {
        L1 {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            max_ttl,
        }
    }

    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Entry> {
        self.cache.get(key)
    }

    /// Inserts with `ttl` capped by `l1_max_ttl`; a zero TTL inserts nothing.
    pub(crate) fn insert(&self, key: String, value: AnyValue, ttl: Duration) {
        let ttl = self.max_ttl.map_or(ttl, |cap| ttl.min(cap));
        if !ttl.is_zero() {
            self.cache.insert(key, Entry { value, ttl });
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    pub(crate) fn flush(&self) {
        self.cache.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
