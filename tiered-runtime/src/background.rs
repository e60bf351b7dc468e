//! Writes to Redis off the caller's path (`background_writes`).
//!
//! The leader answers its caller (and its followers) as soon as the value is computed and
//! queues the fill: the lease it holds, the encoded value and the flight's poison flag. A task
//! writes queued fills, several at once; each is still the lease-checked fill, so an
//! invalidation's `DEL` in between refuses it, and a flight poisoned meanwhile releases its
//! lease instead. The queue is bounded: a fill that does not fit is dropped (counted in
//! `background_writes_dropped`; its lease is released by the janitor), so a slow or stalled
//! Redis costs memory up to the bound, never more. [`Writer::drain`] (at shutdown) waits,
//! bounded, for what is queued.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::coherence::lease::Lease;
use crate::l2::L2;
use crate::runtime::Runtime;
use crate::site::Site;
use crate::stats::{Counters, SiteTable};

/// Fills written at once.
const CONCURRENCY: usize = 32;

struct Job {
    site: &'static Site,
    lease: Lease,
    bytes: Vec<u8>,
    ttl: Duration,
    poisoned: Arc<Mutex<crate::coalesce::FlightState>>,
}

/// The queue of background fills and its task.
pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
    table: Arc<SiteTable>,
}

impl Writer {
    /// Starts the writer task (it ends when the queue is closed, or with the runtime's L2).
    pub(crate) fn start(
        l2: Weak<L2>,
        table: Arc<SiteTable>,
        capacity: usize,
        #[cfg(feature = "test-hooks")] local: Weak<crate::coherence::local::Local>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(capacity);
        let done = tokio::spawn(write_all(
            l2,
            table.clone(),
            rx,
            #[cfg(feature = "test-hooks")]
            local,
        ));
        Writer {
            tx: Mutex::new(Some(tx)),
            done: Mutex::new(Some(done)),
            table,
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Job>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Closes the queue and waits up to `timeout` for the fills queued before; what is left is
    /// dropped and counted. Returns the number dropped.
    pub(crate) async fn drain(&self, timeout: Duration) -> u64 {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut done) = done else { return 0 };
        let before = self.table.snapshot().0.background_writes_dropped;
        if tokio::time::timeout(timeout, &mut done).await.is_err() {
            done.abort();
            let _ = done.await;
        }
        self.table.snapshot().0.background_writes_dropped - before
    }
}

async fn write_all(
    l2: Weak<L2>,
    table: Arc<SiteTable>,
    mut rx: mpsc::Receiver<Job>,
    #[cfg(feature = "test-hooks")] local: Weak<crate::coherence::local::Local>,
) {
    let mut running = JoinSet::new();
    // Fills not yet written when the task is aborted are counted as dropped.
    let pending = Arc::new(std::sync::atomic::AtomicU64::new(0));
    struct Unwritten(Arc<std::sync::atomic::AtomicU64>, Arc<SiteTable>);
    impl Drop for Unwritten {
        fn drop(&mut self) {
            let n = self.0.swap(0, std::sync::atomic::Ordering::Relaxed);
            let c = self.1.runtime();
            for _ in 0..n {
                Counters::bump(&c.background_writes_dropped);
            }
        }
    }
    let _unwritten = Unwritten(pending.clone(), table.clone());
    loop {
        let job = tokio::select! {
            job = rx.recv() => job,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        };
        let Some(job) = job else { break };
        if running.len() >= CONCURRENCY {
            running.join_next().await;
        }
        let Some(l2) = l2.upgrade() else { return };
        let table = table.clone();
        pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pending = pending.clone();
        #[cfg(feature = "test-hooks")]
        let local = local.clone();
        running.spawn(async move {
            #[cfg(feature = "test-hooks")]
            if let Some(local) = local.upgrade() {
                local.hooks.background_write.pass().await;
            }
            write_one(&l2, &table, job).await;
            pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    while running.join_next().await.is_some() {}
}

async fn write_one(l2: &L2, table: &SiteTable, job: Job) {
    let c = table.site(job.site);
    if job
        .poisoned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .poisoned
    {
        // An invalidation hit the key since the value was computed.
        Counters::bump(&c.fills_refused);
        if let Err(e) = job.lease.release(l2).await {
            e.count(c);
        }
        return;
    }
    match job.lease.fill(l2, &job.bytes, job.ttl).await {
        Ok(true) => Counters::bump(&c.l2_writes),
        Ok(false) => Counters::bump(&c.fills_refused),
        Err(e) => e.count(c),
    }
}

impl Runtime {
    /// Queues a fill (see the module docs); a full or closed queue drops it.
    pub(crate) fn queue_write(
        &self,
        site: &'static Site,
        lease: Lease,
        bytes: Vec<u8>,
        ttl: Duration,
        poisoned: Arc<Mutex<crate::coalesce::FlightState>>,
    ) {
        let c = self.table().site(site);
        let job = Job {
            site,
            lease,
            bytes,
            ttl,
            poisoned,
        };
        match self.inner.writer.as_ref().and_then(Writer::sender) {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => Counters::bump(&c.background_writes),
                Err(_) => Counters::bump(&c.background_writes_dropped),
            },
            None => Counters::bump(&c.background_writes_dropped),
        }
    }
}
