//! L1: one Moka cache per memoized function (per runtime), holding that function's own value
//! type, with a deadline per entry.
//!
//! A hit is a hash lookup, a deadline check and a `clone` of the value, the same work as a
//! bare `moka::sync::Cache<u64, T>::get`: nothing is decoded, nothing is type-erased and
//! nothing is allocated. The choices that keep it there:
//! * **Keyed by a 128-bit digest of the key** ([`Digest`]), streamed from the arguments'
//!   `Display` output through the key's escaping, not by the key string: a hit renders no key
//!   and allocates nothing; the digest is already uniformly distributed, so Moka hashes it by
//!   folding its bits instead of hashing it again.
//! * **Typed caches per site** instead of one cache of `Arc<dyn Any>`: the erased design cost an
//!   atomic increment and decrement plus a downcast per hit (+21 ns). Consequence:
//!   `l1_max_entries` bounds each memoized function's L1, like the per-function limits of the
//!   `cached` crate or JetCache's `localLimit`.
//! * **Deadlines on a coarse clock.** Moka's per-entry expiry policy reads the precise clock and
//!   maintains a timer wheel on every read (+35 ns). Each entry carries its deadline instead,
//!   checked against `CLOCK_MONOTONIC_COARSE` (a vDSO read, about 6 ns; resolution of a few
//!   milliseconds, so an entry may live up to one tick, ~4 ms, past its TTL). An expired entry is
//!   removed when it is next read; until then it occupies one of the `l1_max_entries` slots, so
//!   memory stays bounded by that limit.
//!
//! **Epochs.** Every entry carries the epoch of its L1 at the moment its computation or L2 read
//! *started*; a hit requires that the L1 is still in that epoch (one relaxed-cost atomic load).
//! Bumping the epoch ([`ErasedL1::new_epoch`]) makes every older entry invisible at once, and
//! also every entry still being computed from data read before the bump: this is how a gap in
//! the invalidation stream, a group invalidation or a queue overflow drop the whole L1 without
//! racing with fills in progress (see `docs/coherence.md`).

use std::any::Any;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use coarsetime::Instant as CoarseInstant;

use crate::key::Digest;

#[derive(Clone)]
struct Entry<T> {
    value: T,
    /// Fresh until then.
    deadline: CoarseInstant,
    /// Kept until then as a stale fallback (fail-safe); equal to `deadline` without it.
    keep: CoarseInstant,
    /// A hit from then on asks for a refresh (refresh-ahead); equal to `deadline` without it.
    refresh: CoarseInstant,
    epoch: u64,
    /// Moka weight: the value's size when `l1_max_bytes` is set, else 1.
    weight: u32,
}

/// How long an L1 entry lives, relative to its insertion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifetimes {
    /// Fresh for this long (the TTL).
    pub(crate) fresh: Duration,
    /// Kept this long as a stale fallback (at least `fresh`).
    pub(crate) keep: Duration,
    /// Hits from this age on ask for a refresh (`None`: never).
    pub(crate) refresh: Option<Duration>,
    /// The value's size in bytes (weighed only under `l1_max_bytes`).
    pub(crate) size: usize,
}

impl Lifetimes {
    /// Fresh for `ttl`, no stale keeping, no refresh.
    #[cfg(test)]
    pub(crate) fn ttl(ttl: Duration) -> Self {
        Lifetimes {
            fresh: ttl,
            keep: ttl,
            refresh: None,
            size: 0,
        }
    }
}

/// A stale entry (past its TTL, kept by fail-safe).
pub(crate) struct Stale<T> {
    pub(crate) value: T,
    /// How long it is still kept.
    pub(crate) kept_for: Duration,
}

/// Moka's hasher for [`Digest`] keys: their bits are already a keyed PRF's output, so they
/// are folded, not hashed again.
#[derive(Default)]
pub(crate) struct Fold(u64);

impl Hasher for Fold {
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.0 ^= (i as u64) ^ ((i >> 64) as u64);
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `Digest` (it hashes as one `u128`); kept correct for any input.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
        }
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The L1 of one site in one runtime.
pub(crate) struct TypedL1<T> {
    cache: moka::sync::Cache<Digest, Entry<T>, BuildHasherDefault<Fold>>,
    max_ttl: Option<Duration>,
    /// Under `l1_max_bytes`: the least weight of an entry (`max_bytes / max_entries`), so that
    /// the byte bound also bounds the entry count. `None`: entries weigh 1.
    min_weight: Option<u32>,
    epoch: AtomicU64,
}

impl<T: Clone + Send + Sync + 'static> TypedL1<T> {
    #[cfg(test)]
    pub(crate) fn new(max_entries: u64, max_ttl: Option<Duration>) -> Self {
        Self::bounded(max_entries, None, max_ttl)
    }

    /// An L1 bounded by `max_entries` and, when given, by `max_bytes` of values (Moka's weigher
    /// over each value's size; every entry weighs at least `max_bytes / max_entries`, so the
    /// entry bound still holds).
    pub(crate) fn bounded(
        max_entries: u64,
        max_bytes: Option<u64>,
        max_ttl: Option<Duration>,
    ) -> Self {
        let builder = moka::sync::Cache::builder();
        let (cache, min_weight) = match max_bytes {
            None => (
                builder
                    .max_capacity(max_entries)
                    .build_with_hasher(BuildHasherDefault::default()),
                None,
            ),
            Some(bytes) => (
                builder
                    .max_capacity(bytes)
                    .weigher(|_: &Digest, e: &Entry<T>| e.weight)
                    .build_with_hasher(BuildHasherDefault::default()),
                Some(u32::try_from((bytes / max_entries.max(1)).max(1)).unwrap_or(u32::MAX)),
            ),
        };
        TypedL1 {
            cache,
            max_ttl,
            min_weight,
            epoch: AtomicU64::new(0),
        }
    }

    /// Whether entries are weighed by size (`l1_max_bytes`).
    pub(crate) fn weighs(&self) -> bool {
        self.min_weight.is_some()
    }

    /// The current epoch: capture it before reading the data a later insert will carry.
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The fresh value under `key`, if any, and whether it is due for a refresh.
    #[inline]
    pub(crate) fn get(&self, key: Digest) -> Option<(T, bool)> {
        let entry = self.cache.get(&key)?;
        let now = CoarseInstant::now_without_cache_update();
        if entry.epoch == self.epoch() {
            if entry.deadline > now {
                return Some((entry.value, entry.refresh <= now));
            }
            if entry.keep > now {
                // Expired by its TTL, kept as fail-safe's fallback.
                return None;
            }
        }
        self.cache.invalidate(&key);
        None
    }

    /// The value under `key` whether fresh or stale (kept by fail-safe), if its epoch is
    /// current: an invalidated entry is gone, and an older epoch is never served.
    pub(crate) fn get_stale(&self, key: Digest) -> Option<Stale<T>> {
        let entry = self.cache.get(&key)?;
        let now = CoarseInstant::now_without_cache_update();
        (entry.epoch == self.epoch() && entry.keep > now).then(|| Stale {
            value: entry.value,
            kept_for: (entry.keep - now).into(),
        })
    }

    /// Inserts with lifetimes `life` (the fresh part capped by `l1_max_ttl`), tagged with
    /// `epoch` (see [`epoch`](Self::epoch)); a zero TTL or an epoch that has already ended
    /// inserts nothing.
    pub(crate) fn insert(&self, key: Digest, value: T, life: Lifetimes, epoch: u64) {
        // A site's TTL is not validated like the runtime's options: cap it so that the clock
        // arithmetic below cannot overflow (ten years is forever for a cache).
        let forever = crate::config::MAX_DURATION * 10;
        let fresh = self
            .max_ttl
            .map_or(life.fresh, |cap| life.fresh.min(cap))
            .min(forever);
        let keep = (fresh + life.keep.saturating_sub(life.fresh)).min(forever);
        if !fresh.is_zero() && epoch == self.epoch() {
            let now = CoarseInstant::now_without_cache_update();
            let at = |d: Duration| now + coarsetime::Duration::from(d);
            let deadline = at(fresh);
            let weight = match self.min_weight {
                Some(min) => u32::try_from(life.size).unwrap_or(u32::MAX).max(min),
                None => 1,
            };
            self.cache.insert(
                key,
                Entry {
                    value,
                    deadline,
                    keep: at(keep),
                    refresh: life.refresh.filter(|r| *r < fresh).map_or(deadline, at),
                    epoch,
                    weight,
                },
            );
        }
    }

    /// Puts off the next refresh-ahead of `key` to half-way between now and its TTL's end
    /// (after a refresh that failed or that another process runs).
    pub(crate) fn postpone_refresh(&self, key: Digest) {
        let Some(mut entry) = self.cache.get(&key) else {
            return;
        };
        let now = CoarseInstant::now_without_cache_update();
        if entry.epoch != self.epoch() || entry.deadline <= now {
            return;
        }
        let half = Duration::from(entry.deadline - now) / 2;
        entry.refresh = now + coarsetime::Duration::from(half);
        self.cache.insert(key, entry);
    }

    /// Sum of the weights (bytes under `l1_max_bytes`), after pending evictions.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

/// What the runtime needs of every site's L1 without knowing its type.
pub(crate) trait ErasedL1: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn remove(&self, key: Digest);
    /// Ends the current epoch: every entry, and every fill that started before, is dropped.
    fn new_epoch(&self);
    fn entry_count(&self) -> u64;
    /// Bytes of values held, when weighed (`l1_max_bytes`); 0 otherwise.
    fn bytes(&self) -> u64;
}

impl<T: Clone + Send + Sync + 'static> ErasedL1 for TypedL1<T> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn remove(&self, key: Digest) {
        self.cache.invalidate(&key);
    }
    fn new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }
    fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
    fn bytes(&self) -> u64 {
        if self.weighs() {
            self.weighted_size()
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_at_their_own_deadline() {
        let l1 = TypedL1::<u8>::new(100, None);
        l1.insert(Digest(1), 1, Lifetimes::ttl(Duration::from_millis(30)), 0);
        l1.insert(Digest(2), 2, Lifetimes::ttl(Duration::from_secs(60)), 0);
        assert_eq!(l1.get(Digest(1)).map(|h| h.0), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            l1.get(Digest(1)).map(|h| h.0),
            None,
            "expired (coarse clock tick is a few ms)"
        );
        assert_eq!(l1.get(Digest(2)).map(|h| h.0), Some(2));
    }

    #[test]
    fn max_ttl_caps_and_zero_ttl_inserts_nothing() {
        let l1 = TypedL1::<u8>::new(100, Some(Duration::from_millis(20)));
        l1.insert(Digest(1), 1, Lifetimes::ttl(Duration::from_secs(3600)), 0);
        l1.insert(Digest(2), 1, Lifetimes::ttl(Duration::ZERO), 0);
        assert_eq!(l1.get(Digest(2)).map(|h| h.0), None);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(l1.get(Digest(1)).map(|h| h.0), None);
    }

    #[test]
    fn a_new_epoch_hides_old_entries_and_refuses_late_fills() {
        let l1 = TypedL1::<u8>::new(100, None);
        let before = l1.epoch();
        l1.insert(
            Digest(1),
            1,
            Lifetimes::ttl(Duration::from_secs(60)),
            before,
        );
        l1.new_epoch();
        assert_eq!(l1.get(Digest(1)).map(|h| h.0), None);
        l1.insert(
            Digest(2),
            2,
            Lifetimes::ttl(Duration::from_secs(60)),
            before,
        );
        assert_eq!(
            l1.get(Digest(2)).map(|h| h.0),
            None,
            "a fill that started before the bump"
        );
        l1.insert(
            Digest(3),
            3,
            Lifetimes::ttl(Duration::from_secs(60)),
            l1.epoch(),
        );
        assert_eq!(l1.get(Digest(3)).map(|h| h.0), Some(3));
    }

    #[test]
    fn a_stale_entry_is_a_miss_but_stays_for_fail_safe_until_its_epoch_ends() {
        let l1 = TypedL1::<u8>::new(100, None);
        let life = Lifetimes {
            fresh: Duration::from_millis(20),
            keep: Duration::from_secs(60),
            refresh: None,
            size: 0,
        };
        l1.insert(Digest(1), 1, life, 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(l1.get(Digest(1)).map(|h| h.0), None, "expired by its TTL");
        assert_eq!(l1.get_stale(Digest(1)).map(|s| s.value), Some(1), "kept");
        l1.new_epoch();
        assert!(l1.get_stale(Digest(1)).is_none(), "never across an epoch");
        l1.insert(Digest(2), 2, life, l1.epoch());
        l1.remove(Digest(2));
        assert!(l1.get_stale(Digest(2)).is_none(), "never after a removal");
    }

    #[test]
    fn hits_past_the_refresh_point_ask_for_a_refresh() {
        let l1 = TypedL1::<u8>::new(100, None);
        let life = Lifetimes {
            fresh: Duration::from_secs(60),
            keep: Duration::from_secs(60),
            refresh: Some(Duration::from_millis(20)),
            size: 0,
        };
        l1.insert(Digest(1), 1, life, 0);
        assert_eq!(l1.get(Digest(1)), Some((1, false)));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(l1.get(Digest(1)), Some((1, true)));
    }

    #[test]
    fn the_byte_bound_holds_beside_the_entry_bound() {
        let l1 = TypedL1::<Vec<u8>>::bounded(1000, Some(10_000), None);
        for i in 0..100u128 {
            let life = Lifetimes {
                size: 1000,
                ..Lifetimes::ttl(Duration::from_secs(60))
            };
            l1.insert(Digest(i), vec![0; 1000], life, 0);
        }
        assert!(l1.weighted_size() <= 10_000, "{}", l1.weighted_size());
        let small = TypedL1::<u8>::bounded(10, Some(1_000_000), None);
        for i in 0..100u128 {
            small.insert(Digest(i), 1, Lifetimes::ttl(Duration::from_secs(60)), 0);
        }
        assert!(small.entry_count() <= 10, "{}", small.entry_count());
    }
}
