//! Group invalidation by generations: no `SCAN`, one key, any topology.
//!
//! The namespace and every function have a generation: a counter in one Redis hash,
//! `{namespace}:%~gen` (field [`NAMESPACE_FIELD`] for the namespace, the function's name for a
//! function; the same hash holds the bus's lost-publish counter, [`LOST_FIELD`]), incremented by `Runtime::invalidate_all` and `invalidate_all_<fn>()`. Keys
//! carry no generation; every value written to L2 is stamped with the generations its writer
//! read under ([`Stamp`]), and a value stamped older than the current generations is a miss. So
//!
//! * `invalidate_<fn>(k)` deletes the one key every instance reads, whatever generations any
//!   instance knows;
//! * an instance whose subscription is down trusts no cached generation: it reads them with
//!   `HMGET` in the same round trip as the value;
//! * a subscribed instance uses the generations it cached (read from Redis, or announced on the
//!   bus), so its L2 hit is one command for the value. Any sign of a lost message forgets them
//!   ([`Generations::forget`]); a value stamped *newer* than what it knows raises them.
//!
//! **Tags** work the same way: a tag's generation is the field `#<tag>` of the same hash,
//! raised by `invalidate_tag`, and a value of a function with tags is stamped with the
//! generations of its tags (read with the others, in the same `HMGET`, when not cached).
//!
//! The cache is bounded ([`MAX_SITES`] functions, as many tags): announcements name functions
//! and tags, and names come from the network.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::codec::{Stamp, TagGens};

/// The hash field of the namespace's generation (never a function name).
pub(crate) const NAMESPACE_FIELD: &str = "*";
/// The hash field counting invalidations that changed Redis but could not be published (see
/// the bus); never a function name either.
pub(crate) const LOST_FIELD: &str = "!lost";
/// Functions whose generation is cached at once; one more forgets them all (tags likewise).
pub(crate) const MAX_SITES: usize = 4096;

/// The hash field of a tag's generation: `#` and the tag (never a function name).
pub(crate) fn tag_field(tag: &str) -> String {
    format!("#{tag}")
}

/// Milliseconds since the UNIX epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The Redis key of the generations hash of `namespace`.
pub(crate) fn key(namespace: &str) -> String {
    crate::key::internal(namespace, "gen")
}

/// The cached generations of one runtime.
#[derive(Default)]
pub(crate) struct Generations {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Bumped by every `forget`, so a read that started before cannot record stale values.
    era: u64,
    namespace: Option<u64>,
    sites: HashMap<String, u64>,
    tags: HashMap<String, u64>,
}

impl Generations {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generations of `site` if both are known, else the era to pass to
    /// [`learn`](Self::learn).
    pub(crate) fn get(&self, site: &str, tags: &[String]) -> Result<Stamp, u64> {
        let s = self.lock();
        let (Some(namespace), Some(g)) = (s.namespace, s.sites.get(site)) else {
            return Err(s.era);
        };
        let mut gens = [0u64; crate::codec::MAX_TAGS];
        for (slot, tag) in gens.iter_mut().zip(tags) {
            match s.tags.get(tag) {
                Some(g) => *slot = *g,
                None => return Err(s.era),
            }
        }
        Ok(Stamp {
            namespace,
            site: *g,
            tags: TagGens::from_slice(&gens[..tags.len().min(crate::codec::MAX_TAGS)]),
        })
    }

    /// The current era (see [`learn`](Self::learn)).
    pub(crate) fn era(&self) -> u64 {
        self.lock().era
    }

    /// Records generations read from Redis (or seen on a value), unless they were forgotten
    /// since `era`. Generations only grow.
    pub(crate) fn learn(&self, era: u64, site: &str, tags: &[String], stamp: Stamp) {
        let mut s = self.lock();
        if s.era == era {
            raise(&mut s.namespace, stamp.namespace);
            s.set_site(site, stamp.site);
            for (tag, g) in tags.iter().zip(stamp.tags.as_slice()) {
                s.set_tag(tag, *g);
            }
        }
    }

    /// An announced generation of `tag`.
    pub(crate) fn set_tag(&self, tag: &str, generation: u64) {
        self.lock().set_tag(tag, generation);
    }

    /// An announced generation of `site`.
    pub(crate) fn set_site(&self, site: &str, generation: u64) {
        self.lock().set_site(site, generation);
    }

    /// An announced generation of the namespace.
    pub(crate) fn set_namespace(&self, generation: u64) {
        raise(&mut self.lock().namespace, generation);
    }

    /// Forgets everything (messages may have been lost): read them from Redis again.
    pub(crate) fn forget(&self) {
        let mut s = self.lock();
        s.era += 1;
        s.namespace = None;
        s.sites.clear();
        s.tags.clear();
    }
}

fn raise(slot: &mut Option<u64>, value: u64) {
    let v = slot.get_or_insert(value);
    *v = (*v).max(value);
}

impl State {
    fn set_site(&mut self, site: &str, generation: u64) {
        if let Some(g) = self.sites.get_mut(site) {
            *g = (*g).max(generation);
            return;
        }
        if self.sites.len() >= MAX_SITES {
            // Names come from the network: never grow without bound. Forgetting is safe.
            self.forget_all();
            return;
        }
        self.sites.insert(site.to_owned(), generation);
    }

    fn set_tag(&mut self, tag: &str, generation: u64) {
        if let Some(g) = self.tags.get_mut(tag) {
            *g = (*g).max(generation);
            return;
        }
        if self.tags.len() >= MAX_SITES {
            self.forget_all();
            return;
        }
        self.tags.insert(tag.to_owned(), generation);
    }

    fn forget_all(&mut self) {
        self.era += 1;
        self.namespace = None;
        self.sites.clear();
        self.tags.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_only_grow_and_forgetting_wins_over_late_reads() {
        let g = Generations::default();
        let era = g.get("f", &[]).err().unwrap_or(u64::MAX);
        g.learn(
            era,
            "f",
            &[],
            Stamp {
                namespace: 2,
                site: 5,
                ..Default::default()
            },
        );
        g.set_site("f", 3);
        assert_eq!(
            g.get("f", &[]),
            Ok(Stamp {
                namespace: 2,
                site: 5,
                ..Default::default()
            })
        );
        let era = g.era();
        g.forget();
        g.learn(
            era,
            "f",
            &[],
            Stamp {
                namespace: 2,
                site: 5,
                ..Default::default()
            },
        );
        assert!(
            g.get("f", &[]).is_err(),
            "a read from before the forget is not recorded"
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let g = Generations::default();
        g.set_namespace(1);
        for i in 0..=MAX_SITES {
            g.set_site(&format!("s{i}"), 1);
        }
        assert!(g.lock().sites.len() <= MAX_SITES);
    }
}
