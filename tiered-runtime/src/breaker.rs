//! Circuit breaker in front of every L2 operation.
//!
//! Closed: operations pass; `threshold` consecutive connectivity failures open it. Open:
//! operations are skipped (the caller computes or serves L1) until `cooldown` has passed; then
//! exactly one operation is let through as a probe (half-open). The probe's success closes the
//! breaker, its failure re-opens it for another cooldown, and a probe that is dropped before it
//! reports (its caller was cancelled) lets the next caller probe at once. Every transition is
//! logged once (WARN when opening, INFO when closing).
//!
//! Only connectivity failures count (timeouts, I/O errors, refused credentials): a server reply
//! such as `OOM` for one large `SET` says nothing about the link and must not stop `DEL`s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::stats::{Counters, SiteTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What the breaker lets a caller do.
pub(crate) enum Admission<'a> {
    /// Go ahead; report with [`Breaker::success`] / [`Breaker::failure`].
    Pass,
    /// Go ahead as the single half-open probe; report through the permit.
    Probe(ProbePermit<'a>),
    /// Skip L2.
    Reject,
}

pub(crate) struct Breaker {
    state: Mutex<State>,
    /// `state` is `Closed { failures: 0 }`: the hot path's answer without taking the lock.
    healthy: AtomicBool,
    threshold: u32,
    cooldown: Duration,
    addr: String,
    stats: Arc<SiteTable>,
}

/// Whether an update changed the breaker's state (each change bumps `breaker_transitions`).
pub(crate) type Transitioned = bool;

impl Breaker {
    pub(crate) fn new(
        threshold: u32,
        cooldown: Duration,
        addr: String,
        stats: Arc<SiteTable>,
    ) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
            threshold,
            cooldown,
            addr,
            stats,
        }
    }

    fn moved(&self) -> Transitioned {
        Counters::bump(&self.stats.runtime().breaker_transitions);
        true
    }

    fn set(&self, s: &mut State, new: State) {
        *s = new;
        self.healthy
            .store(new == State::Closed { failures: 0 }, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn admit(&self) -> (Admission<'_>, Transitioned) {
        if self.healthy.load(Ordering::Acquire) {
            return (Admission::Pass, false);
        }
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => (Admission::Pass, false),
            State::HalfOpen => (Admission::Reject, false),
            State::Open { until } if Instant::now() < until => (Admission::Reject, false),
            State::Open { .. } => {
                self.set(&mut s, State::HalfOpen);
                (
                    Admission::Probe(ProbePermit {
                        breaker: self,
                        done: false,
                    }),
                    self.moved(),
                )
            }
        }
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// Whether the breaker is open now (L2 skipped), for the `tiered_l2_breakers_open` gauge.
    pub(crate) fn open_now(&self) -> bool {
        if self.healthy.load(Ordering::Acquire) {
            return false;
        }
        let state = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        matches!(state, State::Open { until } if Instant::now() < until)
    }

    /// A passing operation succeeded.
    pub(crate) fn success(&self) -> Transitioned {
        if self.healthy.load(Ordering::Acquire) {
            return false;
        }
        let mut s = self.lock();
        match *s {
            State::Closed { failures: 0 } => false,
            State::Closed { .. } => {
                self.set(&mut s, State::Closed { failures: 0 });
                false
            }
            State::Open { .. } | State::HalfOpen => {
                self.set(&mut s, State::Closed { failures: 0 });
                tracing::info!(redis = %self.addr, "tiered: L2 circuit breaker closed, Redis is answering again");
                self.moved()
            }
        }
    }

    /// A passing operation failed on connectivity.
    pub(crate) fn failure(&self) -> Transitioned {
        let mut s = self.lock();
        match *s {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                self.set(
                    &mut s,
                    State::Open {
                        until: Instant::now() + self.cooldown,
                    },
                );
                tracing::warn!(
                    redis = %self.addr,
                    failures = failures + 1,
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "tiered: L2 circuit breaker opened; serving from L1 and computing until Redis answers"
                );
                self.moved()
            }
            State::Closed { failures } => {
                self.set(
                    &mut s,
                    State::Closed {
                        failures: failures + 1,
                    },
                );
                false
            }
            // Failures reported by operations admitted before the breaker opened.
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// The connection was re-established. A new connection proves the server accepts
    /// connections, not that it answers commands (a paused or sleeping server does both): an
    /// open breaker lets the next operation probe at once (its success closes the breaker, its
    /// failure re-opens it without a new WARN), and a closed one forgets its failures. So one
    /// stall logs one opening and one closing, however often the connection is replaced.
    pub(crate) fn reset(&self) {
        let mut s = self.lock();
        match *s {
            State::Open { .. } => self.set(
                &mut s,
                State::Open {
                    until: Instant::now(),
                },
            ),
            State::Closed { failures } if failures > 0 => {
                self.set(&mut s, State::Closed { failures: 0 });
            }
            _ => {}
        }
    }

    fn probe_done(&self, ok: bool) -> Transitioned {
        let mut s = self.lock();
        if *s != State::HalfOpen {
            return false;
        }
        if ok {
            self.set(&mut s, State::Closed { failures: 0 });
            tracing::info!(redis = %self.addr, "tiered: L2 circuit breaker closed after a successful probe");
        } else {
            self.set(
                &mut s,
                State::Open {
                    until: Instant::now() + self.cooldown,
                },
            );
            tracing::debug!(redis = %self.addr, "tiered: L2 probe failed; breaker stays open");
        }
        self.moved()
    }
}

/// The right to be the single half-open probe. Dropped unreported (cancelled caller), it
/// re-opens the breaker with an expired cooldown so the next caller probes.
pub(crate) struct ProbePermit<'a> {
    breaker: &'a Breaker,
    done: bool,
}

impl ProbePermit<'_> {
    pub(crate) fn report(mut self, ok: bool) -> Transitioned {
        self.done = true;
        self.breaker.probe_done(ok)
    }
}

impl Drop for ProbePermit<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut s = self.breaker.lock();
            if *s == State::HalfOpen {
                self.breaker.set(
                    &mut s,
                    State::Open {
                        until: Instant::now(),
                    },
                );
                self.breaker.moved();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker::new(
            threshold,
            cooldown,
            "x:1".into(),
            Arc::new(SiteTable::new("test")),
        )
    }

    fn transitions(b: &Breaker) -> u64 {
        b.stats.snapshot().0.breaker_transitions
    }

    fn admitted(b: &Breaker) -> &'static str {
        match b.admit().0 {
            Admission::Pass => "pass",
            Admission::Probe(p) => {
                drop(p);
                "probe"
            }
            Admission::Reject => "reject",
        }
    }

    #[test]
    fn a_new_connection_lets_an_open_breaker_probe_but_does_not_close_it() {
        let b = breaker(1, Duration::from_secs(60));
        assert!(b.failure());
        assert_eq!(admitted(&b), "reject");
        b.reset();
        assert!(b.is_open(), "a new connection is not a successful command");
        match b.admit().0 {
            Admission::Probe(p) => {
                p.report(false);
            }
            _ => panic!("expected a probe"),
        }
        assert!(b.is_open());
        assert_eq!(
            admitted(&b),
            "reject",
            "a failed probe re-opens for the cooldown"
        );
        b.reset();
        match b.admit().0 {
            Admission::Probe(p) => {
                p.report(true);
            }
            _ => panic!("expected a probe"),
        }
        assert!(!b.is_open(), "a successful probe closes it");
    }

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = breaker(3, Duration::from_millis(20));
        assert!(!b.failure());
        assert!(!b.failure());
        assert_eq!(admitted(&b), "pass");
        assert!(b.failure());
        assert_eq!(admitted(&b), "reject");
        std::thread::sleep(Duration::from_millis(30));
        let (adm, _) = b.admit();
        let Admission::Probe(permit) = adm else {
            panic!("expected a probe");
        };
        assert_eq!(admitted(&b), "reject", "only one probe at a time");
        assert!(permit.report(true));
        assert_eq!(admitted(&b), "pass");
        assert_eq!(transitions(&b), 3, "closed -> open -> half-open -> closed");
    }

    #[test]
    fn a_dropped_probe_lets_the_next_caller_probe() {
        let b = breaker(1, Duration::from_millis(1));
        b.failure();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(admitted(&b), "probe"); // dropped without report
        assert_eq!(admitted(&b), "probe");
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = breaker(2, Duration::from_secs(60));
        b.failure();
        b.success();
        b.failure();
        assert!(!b.is_open());
    }
}
