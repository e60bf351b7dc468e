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
    deadline: CoarseInstant,
    epoch: u64,
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
    epoch: AtomicU64,
}

impl<T: Clone + Send + Sync + 'static> TypedL1<T> {
    pub(crate) fn new(max_entries: u64, max_ttl: Option<Duration>) -> Self {
        TypedL1 {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .build_with_hasher(BuildHasherDefault::default()),
            max_ttl,
            epoch: AtomicU64::new(0),
        }
    }

    /// The current epoch: capture it before reading the data a later insert will carry.
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The live value under `key`, if any.
    #[inline]
    pub(crate) fn get(&self, key: Digest) -> Option<T> {
        let entry = self.cache.get(&key)?;
        if entry.deadline > CoarseInstant::now_without_cache_update() && entry.epoch == self.epoch()
        {
            Some(entry.value)
        } else {
            self.cache.invalidate(&key);
            None
        }
    }

    /// Inserts with `ttl` capped by `l1_max_ttl`, tagged with `epoch` (see [`epoch`](Self::epoch));
    /// a zero TTL or an epoch that has already ended inserts nothing.
    pub(crate) fn insert(&self, key: Digest, value: T, ttl: Duration, epoch: u64) {
        // A site's TTL is not validated like the runtime's options: cap it so that the clock
        // arithmetic below cannot overflow (ten years is forever for a cache).
        let ttl = self
            .max_ttl
            .map_or(ttl, |cap| ttl.min(cap))
            .min(crate::config::MAX_DURATION * 10);
        if !ttl.is_zero() && epoch == self.epoch() {
            let deadline =
                CoarseInstant::now_without_cache_update() + coarsetime::Duration::from(ttl);
            self.cache.insert(
                key,
                Entry {
                    value,
                    deadline,
                    epoch,
                },
            );
        }
    }
}

/// What the runtime needs of every site's L1 without knowing its type.
pub(crate) trait ErasedL1: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn remove(&self, key: Digest);
    /// Ends the current epoch: every entry, and every fill that started before, is dropped.
    fn new_epoch(&self);
    fn entry_count(&self) -> u64;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_at_their_own_deadline() {
        let l1 = TypedL1::<u8>::new(100, None);
        l1.insert(Digest(1), 1, Duration::from_millis(30), 0);
        l1.insert(Digest(2), 2, Duration::from_secs(60), 0);
        assert_eq!(l1.get(Digest(1)), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            l1.get(Digest(1)),
            None,
            "expired (coarse clock tick is a few ms)"
        );
        assert_eq!(l1.get(Digest(2)), Some(2));
    }

    #[test]
    fn max_ttl_caps_and_zero_ttl_inserts_nothing() {
        let l1 = TypedL1::<u8>::new(100, Some(Duration::from_millis(20)));
        l1.insert(Digest(1), 1, Duration::from_secs(3600), 0);
        l1.insert(Digest(2), 1, Duration::ZERO, 0);
        assert_eq!(l1.get(Digest(2)), None);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(l1.get(Digest(1)), None);
    }

    #[test]
    fn a_new_epoch_hides_old_entries_and_refuses_late_fills() {
        let l1 = TypedL1::<u8>::new(100, None);
        let before = l1.epoch();
        l1.insert(Digest(1), 1, Duration::from_secs(60), before);
        l1.new_epoch();
        assert_eq!(l1.get(Digest(1)), None);
        l1.insert(Digest(2), 2, Duration::from_secs(60), before);
        assert_eq!(
            l1.get(Digest(2)),
            None,
            "a fill that started before the bump"
        );
        l1.insert(Digest(3), 3, Duration::from_secs(60), l1.epoch());
        assert_eq!(l1.get(Digest(3)), Some(3));
    }
}
