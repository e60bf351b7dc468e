//! Pause points inside the runtime for deterministic tests (feature `test-hooks`, never part of
//! a default build).
//!
//! A [`Gate`] is open by default. A test closes it, lets the runtime reach it (waiting with
//! [`Gate::wait_reached`], never sleeping), acts (an invalidation, a message), then opens it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// One pause point.
#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    reached: AtomicUsize,
    arrived: Notify,
    opened: Notify,
}

impl Gate {
    /// Makes tasks that reach the gate wait until [`open`](Self::open).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Releases every waiting task and lets later ones through.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        self.opened.notify_waiters();
    }

    /// Tasks that have arrived at the gate while it was closed, since it was created.
    pub fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` tasks have arrived at the closed gate in total.
    pub async fn wait_reached(&self, n: usize) {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.reached() >= n {
                return;
            }
            arrived.await;
        }
    }

    /// Waits here while the gate is closed (used by the runtime; tests may use it in bodies).
    pub async fn pass(&self) {
        if !self.closed.load(Ordering::SeqCst) {
            return;
        }
        let opened = self.opened.notified();
        tokio::pin!(opened);
        opened.as_mut().enable();
        self.reached.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_waiters();
        loop {
            if !self.closed.load(Ordering::SeqCst) {
                return;
            }
            opened.as_mut().await;
            opened.set(self.opened.notified());
            opened.as_mut().enable();
        }
    }
}

/// The pause points and fault switches of one runtime
/// ([`Runtime::hooks`](crate::Runtime::hooks)).
#[derive(Debug, Default)]
pub struct Hooks {
    /// After an L2 hit was decoded, before it is promoted to L1 and handed to followers.
    pub promotion: Gate,
    /// In the invalidation handler, before a received message is applied.
    pub handler: Gate,
    /// In the subscriber's reader, before a push from Redis is looked at.
    pub reader: Gate,
    /// Before bytes judged not to be a current value are deleted from Redis.
    pub judged: Gate,
    /// In a key invalidation, after the first local eviction and before the `DEL`.
    pub invalidation: Gate,
    /// In a key invalidation on the sharded cluster bus, after the `DEL`s were answered and
    /// before the `SPUBLISH`.
    pub publication: Gate,
    /// In the background writer, before a queued fill is written.
    pub background_write: Gate,
    /// In the client-tracking reader, before a push from Redis is looked at.
    pub tracking: Gate,
    lost_publishes: AtomicUsize,
    panic_handler: AtomicBool,
}

impl Hooks {
    /// Loses the next `n` key invalidation messages "in transit": the `DEL` is sent, the
    /// message is published where nobody listens, and the invalidation reports success (a
    /// message lost between Redis and its subscribers).
    pub fn lose_publishes(&self, n: usize) {
        self.lost_publishes.store(n, Ordering::SeqCst);
    }

    pub(crate) fn take_lost_publish(&self) -> bool {
        self.lost_publishes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Makes the invalidation handler task panic on the next message it applies.
    pub fn panic_handler(&self) {
        self.panic_handler.store(true, Ordering::SeqCst);
    }

    pub(crate) fn take_handler_panic(&self) -> bool {
        self.panic_handler.swap(false, Ordering::SeqCst)
    }
}
