//! Fill leases: cross-process "no stale fill" and stampede protection on the key itself
//! (memcache leases, Nishtala et al., NSDI 2013).
//!
//! A flight's leader reads the key with `SET key LEASE NX GET PX lease_ttl`: atomically, the
//! value if there is one, else the lease is ours. The fill is a script that writes only while
//! our lease is still there, so an invalidation's `DEL` in between refuses the fill.
//!
//! **A lease never outlives its purpose.** A [`Lease`] guard exists *before* the read is sent.
//! Whatever happens to the request (answered, timed out, cancelled, connection reset), the
//! guard ends in one of three ways: the reply showed a value (nothing of ours was written: it
//! is disarmed), the lease was turned into the fill, or it is released with a token-checked
//! delete. A guard dropped while it may still hold a lease in Redis hands it to the runtime's
//! [`Janitor`], which retries the release until Redis answers (every few ms to 200 ms) or the
//! lease has expired anyway (`lease_ttl`). The janitor's queue is bounded; what does not fit
//! expires by its TTL and is counted.
//!
//! **Foreign leases.** Bytes with the form of a lease but no TTL, or a TTL longer than our
//! `lease_ttl`, cannot be a lease of ours (every instance sets the same `lease_ttl`; keep it
//! equal across instances): they are judged like any foreign bytes (a miss, deleted if still
//! the same bytes), never waited on.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::l2::{L2, L2Error};
use crate::stats::{Counters, SiteTable};

/// Leases waiting for release at once; more are left to expire (counted as abandoned).
const JANITOR_QUEUE: usize = 10_000;
/// Releases sent in one pipeline.
const BATCH: usize = 100;
const MIN_RETRY: Duration = Duration::from_millis(5);
const MAX_RETRY: Duration = Duration::from_millis(200);

struct Orphan {
    key: String,
    bytes: Vec<u8>,
    /// After this the lease has expired in Redis by itself.
    until: Instant,
}

/// Releases leases that their holders could not release themselves.
pub(crate) struct Janitor {
    tx: mpsc::Sender<Orphan>,
    table: Arc<SiteTable>,
    stop: Arc<tokio::sync::Notify>,
    done: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Janitor {
    /// Starts the janitor task of a runtime (it ends with the runtime's L2, or at
    /// [`stop`](Self::stop)).
    pub(crate) fn start(l2: Weak<L2>, table: Arc<SiteTable>) -> Janitor {
        let (tx, rx) = mpsc::channel(JANITOR_QUEUE);
        let stop = Arc::new(tokio::sync::Notify::new());
        let done = tokio::spawn(sweep(l2, table.clone(), rx, stop.clone()));
        Janitor {
            tx,
            table,
            stop,
            done: std::sync::Mutex::new(Some(done)),
        }
    }

    /// Shutdown: one last attempt at the releases pending, then the task ends; waits for it at
    /// most `timeout` (leases left expire in Redis by their TTL, counted as abandoned).
    pub(crate) async fn stop(&self, timeout: Duration) {
        self.stop.notify_one();
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut done) = done
            && tokio::time::timeout(timeout, &mut done).await.is_err()
        {
            done.abort();
        }
    }
}

async fn sweep(
    l2: Weak<L2>,
    table: Arc<SiteTable>,
    mut rx: mpsc::Receiver<Orphan>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut pending: Vec<Orphan> = Vec::new();
    let mut retry = MIN_RETRY;
    let mut stopping = false;
    loop {
        if stopping {
            // Last round done.
            let c = table.runtime();
            for _ in &pending {
                Counters::bump(&c.leases_abandoned);
            }
            return;
        }
        if pending.is_empty() {
            tokio::select! {
                o = rx.recv() => match o {
                    Some(o) => pending.push(o),
                    None => return,
                },
                () = stop.notified() => stopping = true,
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = stop.notified() => stopping = true,
            }
        }
        while let Ok(o) = rx.try_recv() {
            pending.push(o);
        }
        let Some(l2) = l2.upgrade() else { return };
        let c = table.runtime();
        let now = Instant::now();
        pending.retain(|o| {
            let live = o.until > now;
            if !live {
                Counters::bump(&c.leases_abandoned);
            }
            live
        });
        let mut left = Vec::new();
        for batch in pending.chunks(BATCH) {
            let items: Vec<(&str, &[u8])> = batch
                .iter()
                .map(|o| (o.key.as_str(), o.bytes.as_slice()))
                .collect();
            match l2.release_many(&items).await {
                Ok(()) => {
                    for _ in batch {
                        Counters::bump(&c.leases_released);
                    }
                }
                Err(_) => left.extend(batch.iter().map(|o| Orphan {
                    key: o.key.clone(),
                    bytes: o.bytes.clone(),
                    until: o.until,
                })),
            }
        }
        retry = if left.is_empty() {
            MIN_RETRY
        } else {
            (retry * 2).min(MAX_RETRY)
        };
        pending = left;
    }
}

/// A lease this flight may hold in Redis (see the module docs). Created armed before the read
/// is sent.
pub(crate) struct Lease {
    key: String,
    bytes: Vec<u8>,
    until: Instant,
    janitor: Option<mpsc::Sender<Orphan>>,
    table: Arc<SiteTable>,
}

impl Lease {
    pub(crate) fn new(janitor: &Janitor, key: String, bytes: Vec<u8>, ttl: Duration) -> Lease {
        Lease {
            key,
            bytes,
            until: Instant::now() + ttl,
            janitor: Some(janitor.tx.clone()),
            table: janitor.table.clone(),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Nothing of ours is in Redis (the read found a value: `SET NX` wrote nothing).
    pub(crate) fn disarm(mut self) {
        self.janitor = None;
    }

    /// Replaces the lease with `value`: `Ok(true)` filled, `Ok(false)` refused (the lease was
    /// gone). On an error the lease goes to the janitor.
    pub(crate) async fn fill(
        mut self,
        l2: &L2,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, L2Error> {
        let r = l2.fill(&self.key, &self.bytes, value, ttl).await;
        if r.is_ok() {
            self.janitor = None;
        }
        r
    }

    /// Deletes the lease if it is still ours; on an error the janitor retries.
    pub(crate) async fn release(mut self, l2: &L2) -> Result<(), L2Error> {
        let items = [(self.key.as_str(), self.bytes.as_slice())];
        let r = l2.release_many(&items).await;
        if r.is_ok() {
            self.janitor = None;
            Counters::bump(&self.table.runtime().leases_released);
        }
        r
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(tx) = self.janitor.take() {
            let c = self.table.runtime();
            let orphan = Orphan {
                key: std::mem::take(&mut self.key),
                bytes: std::mem::take(&mut self.bytes),
                until: self.until,
            };
            match tx.try_send(orphan) {
                Ok(()) => Counters::bump(&c.leases_orphaned),
                Err(_) => Counters::bump(&c.leases_abandoned),
            }
        }
    }
}
