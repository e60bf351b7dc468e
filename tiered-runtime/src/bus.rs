//! The invalidation bus over Redis Pub/Sub (DESIGN §5) and the group generations.
//!
//! * **Channel** `{namespace}:tiered:invalidate:db{N}:v{WIRE}`: Pub/Sub is not scoped by
//!   database, and a new message layout gets a new channel.
//! * **Messages** carry the origin instance id, a per-origin sequence number and the action
//!   (keys of one site, a new generation of one site, a new generation of the namespace); never
//!   a value. MessagePack with field names.
//! * **Subscriber**: one task per runtime with Redis. It ignores its own messages and hands the
//!   others to a handler task through a bounded queue; when the queue is full it flushes L1
//!   instead of dropping the message. A number missing from an origin's sequence for longer
//!   than [`REORDER_GRACE`] (concurrent invalidations may arrive slightly out of order) is lost. A PING every [`HEARTBEAT`] detects a half-open link. On
//!   every loss of the subscription (stream end, missed heartbeats) and on a sequence gap from a
//!   known origin, L1 starts a new epoch (nothing written before is served again), and the task
//!   resubscribes with a capped backoff for as long as the runtime lives; a new subscription
//!   starts a new epoch again (entries written while unsubscribed are dropped) and forgets the
//!   cached generations so they are read from Redis again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{PubSub, PubSubStream};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::l2::{describe, is_auth};
use crate::runtime::{Inner, Runtime};
use crate::stats::Counters;

/// Interval of the PING on the subscriber connection.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);
/// Consecutive unanswered heartbeats after which the subscription is considered lost.
const HEARTBEAT_MISSES: u32 = 2;
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Version of the message layout (part of the channel name).
const BUS_VERSION: u8 = 1;

/// What an invalidation message asks receivers to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Action {
    /// Evict these keys (L1 keys, without generation) of the site named `site`.
    Keys {
        /// The site's name (function path).
        site: String,
        /// Rendered keys.
        keys: Vec<String>,
    },
    /// The site named `site` moved to generation `generation`: drop its whole L1.
    Site {
        /// The site's name.
        site: String,
        /// Its new generation.
        generation: u64,
    },
    /// The namespace moved to generation `generation`: drop every L1.
    All {
        /// The namespace's new generation.
        generation: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Message {
    origin: u64,
    seq: u64,
    action: Action,
}

/// Why L1 starts a new epoch as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushReason {
    /// [`Runtime::flush_l1`] or [`Runtime::invalidate_all`].
    Manual,
    /// The subscription was lost.
    Disconnect,
    /// A (re)subscription came up: entries written while unsubscribed go.
    Subscribed,
    /// A message from a known origin is missing.
    SequenceGap,
    /// The handler queue was full.
    Overflow,
}

impl FlushReason {
    fn counter(self, c: &Counters) -> Option<&AtomicU64> {
        match self {
            FlushReason::Manual => None,
            FlushReason::Disconnect => Some(&c.l1_flushes_disconnect),
            FlushReason::Subscribed => Some(&c.l1_flushes_subscribed),
            FlushReason::SequenceGap => Some(&c.l1_flushes_sequence_gap),
            FlushReason::Overflow => Some(&c.l1_flushes_overflow),
        }
    }

    pub(crate) fn count(self, c: &Counters) {
        Counters::bump(&c.l1_flushes);
        if let Some(c) = self.counter(c) {
            Counters::bump(c);
        }
    }
}

/// The publishing side and the subscription state of one runtime.
pub(crate) struct Bus {
    instance: u64,
    seq: AtomicU64,
    channel: String,
    up: AtomicBool,
    queue_len: AtomicUsize,
    queue_peak: AtomicUsize,
    queue_capacity: usize,
    last_overflow_warn: Mutex<Option<Instant>>,
}

impl Bus {
    pub(crate) fn new(namespace: &str, db: i64, queue_capacity: usize, up: bool) -> Bus {
        Bus {
            instance: instance_id(),
            seq: AtomicU64::new(0),
            channel: channel(namespace, db),
            up: AtomicBool::new(up),
            queue_len: AtomicUsize::new(0),
            queue_peak: AtomicUsize::new(0),
            queue_capacity,
            last_overflow_warn: Mutex::new(None),
        }
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// Whether the subscription is established (L1 entries written meanwhile are trusted).
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Largest number of messages that waited in the handler queue.
    pub(crate) fn queue_peak(&self) -> usize {
        self.queue_peak.load(Ordering::Relaxed)
    }

    /// Uses up a sequence number without a message, for an invalidation that failed before
    /// anything could be published: the hole makes every subscribed receiver flush its L1 when
    /// this instance's next message arrives.
    pub(crate) fn skip(&self) {
        self.seq.fetch_add(1, Ordering::Relaxed);
    }

    /// The encoded message for `action`, with the next sequence number. A message that is
    /// then not delivered leaves a gap in the sequence, which makes receivers flush: a lost
    /// publish never goes unnoticed by an instance that is subscribed.
    pub(crate) fn message(&self, action: Action) -> Vec<u8> {
        let msg = Message {
            origin: self.instance,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            action,
        };
        rmp_serde::to_vec_named(&msg).unwrap_or_default()
    }
}

/// The channel of a namespace on a database.
pub(crate) fn channel(namespace: &str, db: i64) -> String {
    format!("{namespace}:tiered:invalidate:db{db}:v{BUS_VERSION}")
}

/// A random id per runtime instance (process id, time and a random hasher seed).
fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Connects a Pub/Sub connection and subscribes, bounded by `timeout`. Returns once Redis has
/// confirmed the subscription.
pub(crate) async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeout: Duration,
) -> Result<PubSub, redis::RedisError> {
    let attempt = async {
        let mut ps = client.get_async_pubsub().await?;
        ps.subscribe(channel).await?;
        Ok(ps)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribe timed out",
        ))),
    }
}

/// Starts the subscriber and handler tasks of the runtime behind `weak`; `initial` is the
/// subscription made by `build()`, if it succeeded.
pub(crate) fn spawn(weak: Weak<Inner>, initial: Option<PubSub>, capacity: usize) {
    let (tx, rx) = mpsc::channel(capacity);
    tokio::spawn(handle(weak.clone(), rx));
    tokio::spawn(subscriber(weak, initial, tx));
}

enum Exit {
    /// The runtime is gone.
    Dropped,
    /// The subscription is lost, for this reason.
    Lost(&'static str),
}

async fn subscriber(weak: Weak<Inner>, mut initial: Option<PubSub>, tx: mpsc::Sender<Action>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let ps = match initial.take() {
            Some(ps) => ps,
            None => {
                let Some(rt) = upgrade(&weak) else { return };
                let Some(target) = rt.inner.config.redis.as_ref() else {
                    return;
                };
                let client = target.client.clone();
                let Some(bus) = rt.inner.bus.as_ref() else {
                    return;
                };
                let channel = bus.channel().to_owned();
                let timeout = rt.inner.config.connect_timeout;
                drop(rt);
                match subscribe(&client, &channel, timeout).await {
                    Ok(ps) => {
                        let Some(rt) = upgrade(&weak) else { return };
                        rt.on_subscribed();
                        ps
                    }
                    Err(e) => {
                        if is_auth(&e) {
                            tracing::error!(error = %describe(&e), "tiered: Redis refuses the invalidation subscription; retrying");
                        } else {
                            tracing::debug!(error = %describe(&e), "tiered: resubscribe attempt failed");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        backoff = MIN_BACKOFF;
        match read(&weak, ps, &tx).await {
            Exit::Dropped => return,
            Exit::Lost(reason) => {
                let Some(rt) = upgrade(&weak) else { return };
                rt.on_gap(reason);
            }
        }
    }
}

fn upgrade(weak: &Weak<Inner>) -> Option<Runtime> {
    weak.upgrade().map(|inner| Runtime { inner })
}

async fn next(stream: &mut PubSubStream) -> Option<redis::Msg> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Reads messages until the subscription is lost.
async fn read(weak: &Weak<Inner>, ps: PubSub, tx: &mpsc::Sender<Action>) -> Exit {
    let (mut sink, mut stream) = ps.split();
    let mut origins = Origins::default();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut misses = 0u32;
    loop {
        tokio::select! {
            msg = next(&mut stream) => {
                let Some(msg) = msg else { return Exit::Lost("the subscriber connection closed") };
                let Some(rt) = upgrade(weak) else { return Exit::Dropped };
                rt.receive(msg.get_payload_bytes(), &mut origins, tx);
            }
            _ = tick.tick() => {
                let Some(rt) = upgrade(weak) else { return Exit::Dropped };
                if origins.overdue(Instant::now()) {
                    rt.sequence_gap();
                }
                let timeout = rt.inner.config.l2_timeout.max(Duration::from_millis(250));
                drop(rt);
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => misses = 0,
                    Ok(Err(e)) if e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_io_error() => {
                        return Exit::Lost("the subscriber connection failed");
                    }
                    Ok(Err(_)) | Err(_) => {
                        misses += 1;
                        if misses >= HEARTBEAT_MISSES {
                            return Exit::Lost("the subscriber connection stopped answering heartbeats");
                        }
                    }
                }
            }
        }
    }
}

/// Applies queued actions in order.
async fn handle(weak: Weak<Inner>, mut rx: mpsc::Receiver<Action>) {
    while let Some(action) = rx.recv().await {
        let Some(rt) = upgrade(&weak) else { return };
        if let Some(bus) = rt.inner.bus.as_ref() {
            bus.queue_len.fetch_sub(1, Ordering::Relaxed);
        }
        #[cfg(feature = "test-hooks")]
        rt.inner.hooks.handler.pass().await;
        rt.apply(&action);
        Counters::bump(&rt.inner.stats.runtime().invalidations_received);
    }
}

impl Runtime {
    /// One message from the channel, in the reader task.
    fn receive(&self, payload: &[u8], origins: &mut Origins, tx: &mpsc::Sender<Action>) {
        let Some(bus) = self.inner.bus.as_ref() else {
            return;
        };
        let c = self.inner.stats.runtime();
        let msg: Message = match rmp_serde::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                Counters::bump(&c.bus_bad_messages);
                tracing::debug!(error = %e, "tiered: ignoring a message on the invalidation channel that is not ours");
                return;
            }
        };
        if msg.origin == bus.instance {
            Counters::bump(&c.bus_own_messages);
            return;
        }
        let now = Instant::now();
        origins.record(msg.origin, msg.seq, now);
        if origins.overdue(now) {
            self.sequence_gap();
        }
        match tx.try_send(msg.action) {
            Ok(()) => {
                let len = bus.queue_len.fetch_add(1, Ordering::Relaxed) + 1;
                bus.queue_peak.fetch_max(len, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.flush(FlushReason::Overflow);
                let mut last = bus
                    .last_overflow_warn
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
                    *last = Some(now);
                    tracing::warn!(
                        capacity = bus.queue_capacity,
                        "tiered: invalidation queue full; flushing L1 instead of dropping messages (rate-limited: once a minute; see l1_flushes_overflow)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn sequence_gap(&self) {
        tracing::info!(
            "tiered: invalidation messages from another instance were lost; flushing L1"
        );
        self.flush(FlushReason::SequenceGap);
    }

    /// A received action.
    fn apply(&self, action: &Action) {
        match action {
            Action::Keys { site, keys } => {
                for key in keys {
                    self.evict_local(site, key);
                }
            }
            Action::Site { site, generation } => {
                self.inner.generations.set_site(site, *generation);
                self.drop_site(Some(site));
            }
            Action::All { generation } => {
                self.inner.generations.set_namespace(*generation);
                self.flush(FlushReason::Manual);
            }
        }
    }

    fn on_subscribed(&self) {
        if let Some(bus) = self.inner.bus.as_ref() {
            self.flush(FlushReason::Subscribed);
            bus.up.store(true, Ordering::Release);
            Counters::bump(&self.inner.stats.runtime().bus_subscribes);
            tracing::info!(
                channel = bus.channel(),
                "tiered: invalidation subscription is up; L1 entries written without it were dropped"
            );
        }
    }

    fn on_gap(&self, reason: &'static str) {
        if let Some(bus) = self.inner.bus.as_ref() {
            bus.up.store(false, Ordering::Release);
            self.flush(FlushReason::Disconnect);
            tracing::info!(
                reason,
                "tiered: lost the invalidation subscription; L1 flushed, resubscribing"
            );
        }
    }
}

/// How long a hole in an origin's sequence may stay open before it counts as lost. Concurrent
/// invalidations of one instance may reach Redis in another order than their numbers (a few
/// microseconds apart); a message that is really lost never arrives.
const REORDER_GRACE: Duration = Duration::from_millis(200);

/// Sequence tracking per origin: which numbers are missing, and since when.
#[derive(Default)]
struct Origins {
    map: HashMap<u64, Origin>,
}

struct Origin {
    /// The next number expected.
    next: u64,
    /// Numbers received beyond a hole.
    ahead: std::collections::BTreeSet<u64>,
    /// When the oldest open hole appeared.
    hole_since: Option<Instant>,
}

impl Origins {
    fn record(&mut self, origin: u64, seq: u64, now: Instant) {
        let o = self.map.entry(origin).or_insert(Origin {
            // The first message seen from an origin: nothing before it can be judged.
            next: seq,
            ahead: std::collections::BTreeSet::new(),
            hole_since: None,
        });
        if seq == o.next {
            o.next += 1;
            while o.ahead.remove(&o.next) {
                o.next += 1;
            }
            if o.ahead.is_empty() {
                o.hole_since = None;
            }
        } else if seq > o.next {
            o.ahead.insert(seq);
            o.hole_since.get_or_insert(now);
        }
        // `seq < next`: late (after its hole was given up) or duplicate; applied anyway.
    }

    /// Whether a hole has stayed open longer than [`REORDER_GRACE`]; such holes are given up
    /// (the caller flushes L1, which covers whatever they held).
    fn overdue(&mut self, now: Instant) -> bool {
        let mut lost = false;
        for o in self.map.values_mut() {
            if o.hole_since
                .is_some_and(|t| now.duration_since(t) >= REORDER_GRACE)
            {
                lost = true;
                o.next = o.ahead.last().map_or(o.next, |last| last + 1);
                o.ahead.clear();
                o.hole_since = None;
            }
        }
        lost
    }
}

/// The generations of the namespace and of each site, as last read from Redis or announced on
/// the bus. A generation is part of every L2 key (DESIGN §5, group invalidation): `INCR` of a
/// generation makes every older key of its scope unreachable without touching them (they
/// expire with their TTL). Forgotten on every (re)subscription, since announcements may have
/// been missed; read again when next needed.
#[derive(Default)]
pub(crate) struct Generations {
    state: Mutex<GenState>,
}

#[derive(Default)]
struct GenState {
    era: u64,
    namespace: Option<u64>,
    sites: HashMap<String, u64>,
}

impl Generations {
    fn lock(&self) -> std::sync::MutexGuard<'_, GenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(namespace, site)` generations if both are known, else the era to pass to `learn`.
    pub(crate) fn get(&self, site: &str) -> Result<(u64, u64), u64> {
        let s = self.lock();
        match (s.namespace, s.sites.get(site)) {
            (Some(n), Some(g)) => Ok((n, *g)),
            _ => Err(s.era),
        }
    }

    /// Records values read from Redis, unless they were forgotten since (`era` changed).
    pub(crate) fn learn(&self, era: u64, site: &str, namespace: u64, generation: u64) {
        let mut s = self.lock();
        if s.era == era {
            let n = s.namespace.get_or_insert(namespace);
            *n = (*n).max(namespace);
            let g = s.sites.entry(site.to_owned()).or_insert(generation);
            *g = (*g).max(generation);
        }
    }

    pub(crate) fn set_site(&self, site: &str, generation: u64) {
        let mut s = self.lock();
        let g = s.sites.entry(site.to_owned()).or_insert(generation);
        *g = (*g).max(generation);
    }

    pub(crate) fn set_namespace(&self, generation: u64) {
        let mut s = self.lock();
        let n = s.namespace.get_or_insert(generation);
        *n = (*n).max(generation);
    }

    pub(crate) fn forget(&self) {
        let mut s = self.lock();
        s.era += 1;
        s.namespace = None;
        s.sites.clear();
    }
}

/// The Redis key holding the namespace's generation.
pub(crate) fn namespace_generation_key(namespace: &str) -> String {
    format!("{namespace}:__tiered_gen__")
}

/// The Redis key holding a site's generation.
pub(crate) fn site_generation_key(namespace: &str, site: &str) -> String {
    format!("{namespace}:__tiered_gen__:{site}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reordered_numbers_are_not_a_gap_and_missing_ones_are_after_the_grace() {
        let t0 = Instant::now();
        let mut o = Origins::default();
        o.record(1, 10, t0);
        o.record(1, 12, t0);
        o.record(1, 11, t0);
        assert!(
            !o.overdue(t0 + REORDER_GRACE * 2),
            "11 came late, nothing is missing"
        );
        o.record(1, 14, t0);
        assert!(!o.overdue(t0 + REORDER_GRACE / 2), "13 may still come");
        assert!(o.overdue(t0 + REORDER_GRACE), "13 is lost");
        assert!(!o.overdue(t0 + REORDER_GRACE * 3), "reported once");
        o.record(1, 15, t0);
        assert!(!o.overdue(t0 + REORDER_GRACE * 4));
        o.record(2, 7, t0);
        assert!(
            !o.overdue(t0 + REORDER_GRACE * 4),
            "a new origin starts where it is seen"
        );
    }
}
