//! Which invalidations from other instances this instance may have missed.
//!
//! Every instance (an *origin*) numbers its invalidation messages 1, 2, 3, … and publishes a
//! beacon every [`BEACON`] carrying the last number it has assigned, also numbers whose publish
//! failed. A receiver tracks, per origin, the next number it expects:
//!
//! * a number that stays missing for [`GRACE`] after a later number or a beacon revealed it is
//!   **lost** ([`Loss::Gap`]); concurrent invalidations of one origin may reach Redis a few
//!   microseconds out of order, which the grace absorbs;
//! * an origin not heard (no message, no beacon) for [`SILENCE`] may be failing to publish
//!   ([`Loss::Silence`]); an origin that ends cleanly says goodbye and is forgotten silently;
//! * an origin first heard with numbers already in use cannot be verified: what it sent before
//!   may have been lost ([`Loss::Unverified`]). Right after a (re)subscription, every live origin
//!   is first heard within one beacon, so such first contacts are settled by one loss at
//!   [`SETTLE`] after the subscription instead of one each.
//!
//! Every loss makes the receiver start a new L1 epoch. Together: a lost invalidation is noticed
//! within `BEACON + GRACE` (+ the check interval) when its origin still reaches Redis, and
//! within `SILENCE` (+ the check interval) when it does not. State is bounded: at most
//! [`MAX_ORIGINS`] origins (the least recently heard is evicted; hearing it again is a first
//! contact) and [`MAX_AHEAD`] out-of-order numbers per origin; numbers above [`MAX_SEQ`] are
//! not sequence numbers and are ignored.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Interval of an origin's beacons.
pub(crate) const BEACON: Duration = Duration::from_millis(150);
/// How long a missing number may stay missing before it counts as lost.
pub(crate) const GRACE: Duration = Duration::from_millis(200);
/// How long an origin may go unheard before its silence counts as a loss.
pub(crate) const SILENCE: Duration = Duration::from_millis(750);
/// After a subscription: by then every live origin has been heard.
pub(crate) const SETTLE: Duration = Duration::from_millis(2 * 150 + 200);
/// Out-of-order numbers kept per origin; more is a loss at once.
pub(crate) const MAX_AHEAD: usize = 1024;
/// Origins tracked at once.
pub(crate) const MAX_ORIGINS: usize = 1024;
/// Larger numbers are not plausible sequence numbers (a counter never gets there).
pub(crate) const MAX_SEQ: u64 = 1 << 62;

/// Why the receiver must distrust its L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loss {
    /// A number stayed missing for [`GRACE`].
    Gap,
    /// An origin went unheard for [`SILENCE`].
    Silence,
    /// An origin was first heard with numbers already in use.
    Unverified,
}

struct Origin {
    /// Every number below it was received or given up.
    next: u64,
    /// Numbers received beyond `next`.
    ahead: BTreeSet<u64>,
    /// The largest number known to be assigned (received, or announced by a beacon).
    promised: u64,
    /// When the oldest open hole appeared.
    hole_since: Option<Instant>,
    heard: Instant,
    /// Said goodbye: forgotten, not mourned, once nothing is missing.
    leaving: bool,
}

impl Origin {
    fn has_hole(&self) -> bool {
        self.next <= self.promised
    }

    /// Closes what can be closed and keeps `hole_since` in step.
    fn settle(&mut self, now: Instant) {
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
        if self.has_hole() {
            self.hole_since.get_or_insert(now);
        } else {
            self.hole_since = None;
        }
    }

    /// Gives up every open hole.
    fn resync(&mut self) {
        self.next = self.promised + 1;
        self.ahead.clear();
        self.hole_since = None;
    }
}

/// Sequence tracking of every origin heard on one subscription.
pub(crate) struct Origins {
    map: HashMap<u64, Origin>,
    settle_at: Option<Instant>,
    /// A first contact during the settle window could not be verified.
    unverified: bool,
    evicted: u64,
}

impl Origins {
    /// Tracking for a subscription confirmed at `now`.
    pub(crate) fn new(now: Instant) -> Origins {
        Origins {
            map: HashMap::new(),
            settle_at: Some(now + SETTLE),
            unverified: false,
            evicted: 0,
        }
    }

    /// Origins evicted because [`MAX_ORIGINS`] were tracked.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Origins tracked now.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The state of `origin`, created on first contact with `next` as its baseline; a first
    /// contact that shows numbers already in use is unverified.
    fn contact(&mut self, origin: u64, next: u64, now: Instant) -> (&mut Origin, Option<Loss>) {
        let mut loss = None;
        if !self.map.contains_key(&origin) {
            if self.map.len() >= MAX_ORIGINS
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, o)| o.heard)
                    .map(|(k, _)| *k)
            {
                self.map.remove(&oldest);
                self.evicted += 1;
            }
            if next > 1 {
                if self.settle_at.is_some() {
                    self.unverified = true;
                } else {
                    loss = Some(Loss::Unverified);
                }
            }
        }
        let o = self.map.entry(origin).or_insert_with(|| Origin {
            next,
            ahead: BTreeSet::new(),
            promised: next - 1,
            hole_since: None,
            heard: now,
            leaving: false,
        });
        o.heard = now;
        (o, loss)
    }

    /// A numbered message (an invalidation) `seq` from `origin`.
    pub(crate) fn message(&mut self, origin: u64, seq: u64, now: Instant) -> Option<Loss> {
        if seq == 0 || seq > MAX_SEQ {
            return None;
        }
        let (o, loss) = self.contact(origin, seq, now);
        o.promised = o.promised.max(seq);
        if seq >= o.next {
            o.ahead.insert(seq);
        }
        // `seq < next`: late (after its hole was given up) or duplicate.
        o.settle(now);
        if o.ahead.len() > MAX_AHEAD {
            o.resync();
            return Some(Loss::Gap);
        }
        loss
    }

    /// A beacon: `origin` has assigned every number up to `last`.
    pub(crate) fn beacon(&mut self, origin: u64, last: u64, now: Instant) -> Option<Loss> {
        if last > MAX_SEQ {
            return None;
        }
        let (o, loss) = self.contact(origin, last + 1, now);
        o.promised = o.promised.max(last);
        o.settle(now);
        loss
    }

    /// `origin` ends after assigning every number up to `last`.
    pub(crate) fn bye(&mut self, origin: u64, last: u64, now: Instant) -> Option<Loss> {
        let loss = self.beacon(origin, last, now);
        if let Some(o) = self.map.get_mut(&origin) {
            o.leaving = true;
        }
        loss
    }

    /// Time-based checks: holes past their grace, silent origins, the end of the settle window.
    /// Returns the first loss found (one flush covers them all).
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Loss> {
        let mut loss = None;
        for o in self.map.values_mut() {
            if o.hole_since
                .is_some_and(|t| now.saturating_duration_since(t) >= GRACE)
            {
                o.resync();
                loss = loss.or(Some(Loss::Gap));
            }
        }
        let mut silent = false;
        self.map.retain(|_, o| {
            if o.leaving && !o.has_hole() {
                return false;
            }
            let gone = now.saturating_duration_since(o.heard) >= SILENCE;
            silent |= gone && !o.leaving;
            !gone
        });
        if silent {
            loss = loss.or(Some(Loss::Silence));
        }
        if self.settle_at.is_some_and(|t| now >= t) {
            self.settle_at = None;
            if std::mem::take(&mut self.unverified) {
                loss = loss.or(Some(Loss::Unverified));
            }
        }
        loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(t0: Instant) -> Origins {
        let mut o = Origins::new(t0);
        assert_eq!(o.tick(t0 + SETTLE), None);
        o
    }

    #[test]
    fn reordered_numbers_are_not_a_gap_and_missing_ones_are_after_the_grace() {
        let t0 = Instant::now();
        let mut o = Origins::new(t0);
        o.message(1, 10, t0);
        o.message(1, 12, t0);
        o.message(1, 11, t0);
        assert_eq!(
            o.tick(t0 + SETTLE),
            Some(Loss::Unverified),
            "10 was a first contact"
        );
        let t = t0 + SETTLE;
        o.message(1, 14, t);
        assert_eq!(o.tick(t + GRACE / 2), None, "13 may still come");
        assert_eq!(o.tick(t + GRACE), Some(Loss::Gap), "13 is lost");
        assert_eq!(o.tick(t + GRACE * 2), None, "reported once");
    }

    #[test]
    fn a_beacon_reveals_a_lost_last_message() {
        let t0 = Instant::now();
        let mut o = settled(t0);
        let t = t0 + SETTLE;
        assert_eq!(o.beacon(7, 0, t), None, "a new origin says hello");
        assert_eq!(o.message(7, 1, t), None);
        assert_eq!(o.beacon(7, 2, t), None, "2 was assigned, not received");
        assert_eq!(o.tick(t + GRACE / 2), None);
        assert_eq!(o.message(7, 2, t + GRACE / 2), None, "late, not lost");
        assert_eq!(o.tick(t + GRACE * 2), None);
        assert_eq!(o.beacon(7, 3, t + GRACE * 2), None);
        assert_eq!(o.tick(t + GRACE * 3), Some(Loss::Gap), "3 never came");
    }

    #[test]
    fn first_contacts_in_use_are_unverified() {
        let t0 = Instant::now();
        let mut o = Origins::new(t0);
        assert_eq!(
            o.beacon(1, 5, t0),
            None,
            "within the settle window: deferred"
        );
        assert_eq!(o.beacon(2, 0, t0), None);
        assert_eq!(o.tick(t0 + SETTLE), Some(Loss::Unverified));
        assert_eq!(
            o.beacon(3, 4, t0 + SETTLE),
            Some(Loss::Unverified),
            "after it: at once"
        );
        assert_eq!(
            o.message(4, 1, t0 + SETTLE),
            None,
            "a new origin's first number"
        );
    }

    #[test]
    fn silence_is_a_loss_and_goodbye_is_not() {
        let t0 = Instant::now();
        let mut o = settled(t0);
        o.beacon(1, 0, t0);
        o.beacon(2, 0, t0);
        o.bye(2, 0, t0);
        assert_eq!(o.tick(t0 + SILENCE / 2), None);
        assert_eq!(o.len(), 1, "the leaving origin is forgotten");
        assert_eq!(o.tick(t0 + SILENCE), Some(Loss::Silence));
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn state_is_bounded() {
        let t0 = Instant::now();
        let mut o = settled(t0);
        for origin in 0..(MAX_ORIGINS as u64 + 10) {
            o.beacon(origin, 0, t0);
        }
        assert_eq!(o.len(), MAX_ORIGINS);
        assert_eq!(o.evicted(), 10);
        o.beacon(u64::MAX, 0, t0);
        o.message(u64::MAX, 1, t0);
        let mut loss = None;
        for seq in 3..(MAX_AHEAD as u64 + 10) {
            loss = loss.or(o.message(u64::MAX, seq, t0));
        }
        assert_eq!(loss, Some(Loss::Gap));
    }

    #[test]
    fn extreme_numbers_never_overflow() {
        let t0 = Instant::now();
        let mut o = settled(t0);
        for v in [u64::MAX, u64::MAX - 1, MAX_SEQ, MAX_SEQ + 1, 0] {
            o.message(1, v, t0);
            o.beacon(1, v, t0);
            o.bye(2, v, t0);
        }
        o.tick(t0 + SILENCE * 2);
    }

    proptest::proptest! {
        /// Any sequence of messages, beacons, goodbyes and ticks with any numbers: no panic,
        /// no overflow, state within its bounds.
        #[test]
        fn arbitrary_traffic_never_panics(
            ops in proptest::collection::vec(
                (0u8..4, 0u64..6, proptest::prelude::any::<u64>(), 0u64..2_000),
                0..300,
            )
        ) {
            let t0 = Instant::now();
            let mut o = Origins::new(t0);
            for (op, origin, n, ms) in ops {
                let now = t0 + Duration::from_millis(ms);
                let n = if n % 3 == 0 { n % 16 } else { n };
                match op {
                    0 => { o.message(origin, n, now); }
                    1 => { o.beacon(origin, n, now); }
                    2 => { o.bye(origin, n, now); }
                    _ => { o.tick(now); }
                }
                proptest::prop_assert!(o.len() <= MAX_ORIGINS);
                proptest::prop_assert!(o.map.values().all(|x| x.ahead.len() <= MAX_AHEAD));
            }
        }
    }
}
