//! The invalidation bus over Redis Pub/Sub: publishing side, subscriber, handler, beacons.
//!
//! * **Publishing.** Every invalidation gets the next number of this runtime's sequence, also
//!   when it then fails; a beacon every [`BEACON`] says which number was last assigned, so
//!   receivers notice a lost message (see [`sequence`](super::sequence)).
//! * **Subscriber.** A RESP3 connection (on a cluster with the sharded bus, a cluster client
//!   of its own whose `SSUBSCRIBE` went to the channel slot's master; the server ending that
//!   subscription is a gap like a lost link) whose pushes go straight into a bounded queue
//!   ([`PushQueue`]): nothing between Redis and this runtime can grow without bound. The reader
//!   task checks each message's number, ignores its own messages and hands invalidations to the
//!   handler task through a second bounded queue; when either queue is full it flushes L1
//!   instead of dropping a message silently. A PING every [`HEARTBEAT`] (sent beside the
//!   reading, never in its way) detects a half-open link.
//! * **Supervision.** A supervisor task owns the reader and the handler: if either ends while
//!   the runtime lives (a panic, for example in a user `Drop` run by an eviction), both are
//!   restarted with a fresh subscription, and L1 starts a new epoch.
//! * **Gaps.** Every loss of the subscription, and every loss the sequence tracking reports,
//!   starts a new L1 epoch and forgets the cached generations. The task resubscribes with a
//!   capped backoff for as long as the runtime lives; a new subscription starts a new epoch
//!   again (entries written while unsubscribed are dropped).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;

use super::generations::LOST_FIELD;
use super::local::{FlushReason, Local};
use super::message::{self, Action, BUS_VERSION, Message, Received};
use super::sequence::{BEACON, Loss, Origins};
use crate::l2::{L2, describe, is_auth};
use crate::stats::{Counters, SiteTable};

/// Interval of the PING on the subscriber connection.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);
/// Consecutive unanswered heartbeats after which the subscription is considered lost: the
/// first, so that a half-open subscriber link is noticed within one heartbeat plus the ping's
/// time box (its L1 flushed: invalidations may be passing it by). A false alarm costs a flush
/// and a resubscription, never a stale read.
const HEARTBEAT_MISSES: u32 = 1;
/// How often the reader checks holes, silences and the queues.
const CHECK: Duration = Duration::from_millis(50);
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The publishing side and the subscription state of one runtime.
pub(crate) struct Bus {
    instance: u64,
    seq: AtomicU64,
    channel: String,
    /// The generations hash, whose field [`LOST_FIELD`](super::generations::LOST_FIELD) an
    /// origin bumps when its invalidation may have changed Redis without being published;
    /// polled by every instance.
    gen_key: String,
    /// An invalidation of ours failed: bump `lost_key` as soon as Redis takes it.
    lost_pending: AtomicBool,
    up: AtomicBool,
    queue_peak: AtomicUsize,
    queue_capacity: usize,
    /// Other instances heard on the current subscription.
    origins: AtomicUsize,
    /// The runtime was shut down: the bus tasks end (and the subscription with them).
    stopped: AtomicBool,
    logs: crate::logs::Limiter,
}

impl Bus {
    pub(crate) fn new(namespace: &str, db: i64, queue_capacity: usize, up: bool) -> Bus {
        Bus {
            instance: instance_id(),
            seq: AtomicU64::new(0),
            channel: message::channel(namespace, db),
            gen_key: super::generations::key(namespace),
            lost_pending: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            logs: crate::logs::Limiter::default(),
            up: AtomicBool::new(up),
            queue_peak: AtomicUsize::new(0),
            queue_capacity,
            origins: AtomicUsize::new(0),
        }
    }

    /// Ends the bus tasks (within one check interval) and so the subscription.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.up.store(false, Ordering::Release);
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

    /// Other instances heard on the current subscription (and not gone silent since).
    pub(crate) fn origins(&self) -> usize {
        self.origins.load(Ordering::Relaxed)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Uses up a number without a message, for an invalidation that failed before anything
    /// could be published: the next beacon reveals the hole, and receivers flush.
    pub(crate) fn skip(&self) {
        self.next_seq();
    }

    /// An invalidation of ours may have changed Redis without reaching the channel: besides
    /// the hole in our numbers (which our beacons reveal while we can publish), bump the
    /// namespace's lost-publish counter (which every instance polls), for the case where we can
    /// write keys but not publish.
    pub(crate) fn publish_failed(&self) {
        self.lost_pending.store(true, Ordering::Release);
    }

    /// The encoded message for an invalidation, with the next number. A message that is then
    /// not delivered leaves a hole that the next beacon reveals.
    pub(crate) fn message(&self, action: Action) -> Vec<u8> {
        self.encode(self.next_seq(), action)
    }

    fn encode(&self, seq: u64, action: Action) -> Vec<u8> {
        Message {
            v: BUS_VERSION,
            origin: self.instance,
            seq,
            action,
        }
        .encode()
    }

    fn last(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// The beacon: the last number assigned so far.
    pub(crate) fn beacon(&self) -> Vec<u8> {
        self.encode(0, Action::Beacon { last: self.last() })
    }

    /// The goodbye: this runtime ends after its last number.
    pub(crate) fn bye(&self) -> Vec<u8> {
        self.encode(0, Action::Bye { last: self.last() })
    }
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

/// Pushes from a connection (the subscriber's, the client tracking's) into a bounded queue;
/// when it is full the push is dropped and counted (`bus_pushes_dropped`,
/// `tracking_pushes_dropped`), and the reader flushes L1.
pub(crate) struct PushQueue {
    pub(crate) tx: mpsc::Sender<PushInfo>,
    pub(crate) table: Arc<SiteTable>,
    /// The counter of dropped pushes.
    pub(crate) dropped: fn(&Counters) -> &AtomicU64,
}

impl AsyncPushSender for PushQueue {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::bump((self.dropped)(self.table.runtime()));
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError),
        }
    }
}

/// A confirmed subscription: its connection and its bounded push queue.
pub(crate) struct Subscription {
    conn: Conn,
    pushes: mpsc::Receiver<PushInfo>,
}

/// The connection a subscription lives on.
#[derive(Clone)]
pub(crate) enum Conn {
    /// `SUBSCRIBE` on one node.
    Node(MultiplexedConnection),
    /// `SSUBSCRIBE` through a cluster client of its own, which sent it to the master of the
    /// channel's slot (the `u16`), where the heartbeat goes too.
    Sharded(ClusterConnection, u16),
}

/// Where the subscription is made.
#[derive(Clone)]
pub(crate) enum Nodes {
    /// Classic Pub/Sub: RESP3 clients of the nodes the subscription may use (one for a single
    /// server; the seed nodes of a cluster, where a `PUBLISH` reaches every node: after a
    /// failed attempt the next one is tried).
    Classic(Vec<redis::Client>),
    /// Sharded Pub/Sub on a cluster: each subscription builds a cluster client from these seed
    /// nodes (a fresh topology), which sends the `SSUBSCRIBE` to the master of the channel's
    /// slot.
    Sharded(Vec<redis::ConnectionInfo>, crate::config::TlsSettings),
}

impl Nodes {
    /// The command that subscribes, for messages.
    pub(crate) fn command(&self) -> &'static str {
        match self {
            Nodes::Classic(_) => "SUBSCRIBE",
            Nodes::Sharded(..) => "SSUBSCRIBE",
        }
    }
}

/// A RESP3 client for `client`'s server (pushes on a multiplexed connection need RESP3).
pub(crate) fn resp3(client: &redis::Client) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// Connects and subscribes (on node number `attempt`, modulo their number, for classic
/// Pub/Sub), bounded by `timeout`. Returns once Redis has confirmed.
pub(crate) async fn subscribe(
    nodes: &Nodes,
    attempt: usize,
    channel: &str,
    timeout: Duration,
    capacity: usize,
    table: Arc<SiteTable>,
) -> Result<Subscription, redis::RedisError> {
    let (tx, pushes) = mpsc::channel(capacity);
    let queue = PushQueue {
        tx,
        table,
        dropped: |c| &c.bus_pushes_dropped,
    };
    let attempt = async {
        match nodes {
            Nodes::Classic(clients) => {
                let Some(client) = clients.get(attempt % clients.len().max(1)) else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "no node to subscribe on",
                    )));
                };
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_push_sender(queue);
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                conn.subscribe(channel).await?;
                Ok(Conn::Node(conn))
            }
            Nodes::Sharded(seeds, tls) => {
                let client = tls
                    .apply(ClusterClientBuilder::new(seeds.clone()))
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(queue)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.ssubscribe(channel).await?;
                Ok(Conn::Sharded(conn, crate::l2::key_slot(channel.as_bytes())))
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(conn)) => Ok(Subscription { conn, pushes }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribe timed out",
        ))),
    }
}

/// What the bus tasks hold of their runtime: weak handles, so they end with it.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) local: Weak<Local>,
    pub(crate) bus: Weak<Bus>,
    pub(crate) l2: Weak<L2>,
    /// Where the subscription is made.
    pub(crate) nodes: Nodes,
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_timeout: Duration,
}

impl Ctx {
    fn upgrade(&self) -> Option<(Arc<Local>, Arc<Bus>)> {
        let bus = self
            .bus
            .upgrade()
            .filter(|b| !b.stopped.load(Ordering::Acquire))?;
        Some((self.local.upgrade()?, bus))
    }
}

/// Starts the bus tasks of a runtime; `initial` is the subscription made by `build()`.
pub(crate) fn spawn(ctx: Ctx, initial: Option<Subscription>) {
    tokio::spawn(supervise(ctx.clone(), initial));
    tokio::spawn(beacons(ctx));
}

/// Every [`BEACON`]: publishes this instance's beacon; bumps the lost-publish counter when an
/// invalidation of ours failed; and every third beacon, reads that counter and starts a new L1
/// epoch when another instance bumped it. All through L2 (time-boxed, behind the breaker): an
/// instance that cannot publish its beacons cannot publish its invalidations either, and its
/// silence tells the others.
async fn beacons(ctx: Ctx) {
    let mut tick = tokio::time::interval(BEACON);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The counter's value at our last read, and our own increments since.
    let mut last: Option<u64> = None;
    let mut ours = 0u64;
    for round in 0u64.. {
        tick.tick().await;
        let (Some(bus), Some(l2)) = (ctx.bus.upgrade(), ctx.l2.upgrade()) else {
            return;
        };
        if bus.stopped.load(Ordering::Acquire) {
            return;
        }
        let _ = l2.publish(bus.channel(), &bus.beacon()).await;
        if bus.lost_pending.swap(false, Ordering::AcqRel) {
            match l2.hincr(&bus.gen_key, LOST_FIELD).await {
                // Our own report is no news to us.
                Ok(_) => ours += 1,
                Err(_) => bus.lost_pending.store(true, Ordering::Release),
            }
        }
        if round % 3 == 0
            && let Ok(read) = l2.hget_counter(&bus.gen_key, LOST_FIELD).await
        {
            // More than our own reports: another instance lost a publish. Less, or gone: the
            // hash was lost (Redis restarted or flushed, or it was evicted), and with it the
            // generations; a flush (which forgets them) is the safe answer to both.
            let changed = match (last, read) {
                (Some(l), Some(n)) => n != l.saturating_add(ours),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if changed && let Some(local) = ctx.local.upgrade() {
                tracing::info!(
                    "tiered: another instance failed to publish an invalidation, or the generations were reset; flushing L1"
                );
                local.flush(FlushReason::LostPublish);
            }
            last = read;
            if read.is_none() {
                // Create the counter, so that its disappearance can be noticed, from a value
                // new each time: an instance that saw the old counter and then the new one
                // notices the change. The next read is the baseline (another instance may
                // have created it first).
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                let fresh = ((bus.instance ^ nanos) >> 2) | 1;
                let _ = l2.hinit(&bus.gen_key, LOST_FIELD, fresh).await;
            }
            ours = 0;
        }
    }
}

/// Runs the reader and the handler; restarts both if either ends while the runtime lives.
async fn supervise(ctx: Ctx, mut initial: Option<Subscription>) {
    loop {
        let Some((_, bus)) = ctx.upgrade() else {
            return;
        };
        let (tx, rx) = mpsc::channel(bus.queue_capacity);
        drop(bus);
        let mut handler = tokio::spawn(handle(ctx.clone(), rx));
        let mut reader = tokio::spawn(subscriber(ctx.clone(), initial.take(), tx));
        let outcome = tokio::select! {
            r = &mut handler => ("handler", r),
            r = &mut reader => ("reader", r),
        };
        handler.abort();
        reader.abort();
        let Some((local, bus)) = ctx.upgrade() else {
            return;
        };
        let (task, result) = outcome;
        bus.up.store(false, Ordering::Release);
        local.flush(FlushReason::BusRestart);
        Counters::bump(&local.table.runtime().bus_restarts);
        if bus.logs.allow("bus restart") {
            tracing::warn!(
                task,
                panicked = result.as_ref().is_err_and(|e| e.is_panic()),
                "tiered: an invalidation bus task ended unexpectedly; L1 flushed, restarting it (logged at most once a minute)"
            );
        }
        drop((local, bus));
        tokio::time::sleep(MIN_BACKOFF).await;
    }
}

/// Subscribes (again and again, for as long as the runtime lives) and reads.
async fn subscriber(ctx: Ctx, mut initial: Option<Subscription>, tx: mpsc::Sender<Action>) {
    let mut backoff = MIN_BACKOFF;
    let mut node = 0usize;
    loop {
        let sub = match initial.take() {
            Some(sub) => sub,
            None => {
                let Some((local, bus)) = ctx.upgrade() else {
                    return;
                };
                let channel = bus.channel().to_owned();
                let capacity = bus.queue_capacity;
                let table = local.table.clone();
                drop((local, bus));
                match subscribe(
                    &ctx.nodes,
                    node,
                    &channel,
                    ctx.connect_timeout,
                    capacity,
                    table,
                )
                .await
                {
                    Ok(sub) => {
                        let Some((local, bus)) = ctx.upgrade() else {
                            return;
                        };
                        local.flush(FlushReason::Subscribed);
                        bus.up.store(true, Ordering::Release);
                        Counters::bump(&local.table.runtime().bus_subscribes);
                        tracing::info!(
                            channel = bus.channel(),
                            "tiered: invalidation subscription is up; L1 entries written without it were dropped"
                        );
                        sub
                    }
                    Err(e) => {
                        if is_auth(&e) {
                            if ctx
                                .bus
                                .upgrade()
                                .is_some_and(|b| b.logs.allow("subscribe refused"))
                            {
                                tracing::error!(error = %describe(&e), "tiered: Redis refuses the invalidation subscription; retrying (logged at most once a minute)");
                            }
                        } else {
                            tracing::debug!(error = %describe(&e), "tiered: resubscribe attempt failed");
                        }
                        node = node.wrapping_add(1);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        backoff = MIN_BACKOFF;
        let Some(reason) = read(&ctx, sub, &tx).await else {
            return;
        };
        let Some((local, bus)) = ctx.upgrade() else {
            return;
        };
        bus.up.store(false, Ordering::Release);
        bus.origins.store(0, Ordering::Relaxed);
        local.flush(FlushReason::Disconnect);
        tracing::info!(
            reason,
            "tiered: lost the invalidation subscription; L1 flushed, resubscribing"
        );
    }
}

pub(crate) type Ping = std::pin::Pin<Box<dyn Future<Output = PingResult> + Send>>;

pub(crate) enum PingResult {
    Ok,
    Broken,
    Missed,
}

pub(crate) fn ping(conn: Conn, timeout: Duration) -> Ping {
    Box::pin(async move {
        let reply = async {
            match conn {
                Conn::Node(mut conn) => {
                    redis::cmd("PING")
                        .query_async::<redis::Value>(&mut conn)
                        .await
                }
                // To the node that holds the subscription: the master of the channel's slot.
                Conn::Sharded(mut conn, slot) => {
                    let to =
                        SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                    conn.route_command(redis::cmd("PING"), RoutingInfo::SingleNode(to))
                        .await
                }
            }
        };
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(_)) => PingResult::Ok,
            Ok(Err(e))
                if e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_io_error() =>
            {
                PingResult::Broken
            }
            Ok(Err(_)) | Err(_) => PingResult::Missed,
        }
    })
}

/// Reads until the subscription is lost (`Some(reason)`) or the runtime is gone (`None`).
async fn read(ctx: &Ctx, sub: Subscription, tx: &mpsc::Sender<Action>) -> Option<&'static str> {
    let Subscription { conn, mut pushes } = sub;
    let mut dropped = ctx
        .local
        .upgrade()?
        .table
        .runtime()
        .bus_pushes_dropped
        .load(Ordering::Acquire);
    let mut origins = Origins::new(Instant::now());
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ping = Instant::now() + HEARTBEAT;
    let mut pinging: Option<Ping> = None;
    let mut misses = 0u32;
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else {
                    return Some("the subscriber connection closed");
                };
                let (local, bus) = ctx.upgrade()?;
                #[cfg(feature = "test-hooks")]
                local.hooks.reader.pass().await;
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                            receive(&local, &bus, payload, &mut origins, tx);
                        }
                    }
                    PushKind::Disconnection => return Some("the subscriber connection closed"),
                    // Unsolicited: the server dropped the sharded subscription because the
                    // channel's slot left the node (a slot move or a failover); subscribe
                    // again where it is now.
                    PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                        return Some("the server ended the subscription (the channel's slot moved)");
                    }
                    _ => {}
                }
            }
            result = async { match pinging.as_mut() { Some(p) => p.await, None => std::future::pending().await } } => {
                pinging = None;
                match result {
                    PingResult::Ok => misses = 0,
                    PingResult::Broken => return Some("the subscriber connection failed"),
                    PingResult::Missed => {
                        misses += 1;
                        if misses >= HEARTBEAT_MISSES {
                            return Some("the subscriber connection stopped answering heartbeats");
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let (local, bus) = ctx.upgrade()?;
                let now = Instant::now();
                if let Some(loss) = origins.tick(now) {
                    lost(&local, loss);
                }
                let now_dropped = local.table.runtime().bus_pushes_dropped.load(Ordering::Acquire);
                if now_dropped != dropped {
                    dropped = now_dropped;
                    overflow(&local, &bus);
                }
                bus.origins.store(origins.len(), Ordering::Relaxed);
                let evicted = origins.evicted();
                let c = local.table.runtime();
                let known = c.bus_origins_evicted.load(Ordering::Relaxed);
                if evicted > known {
                    c.bus_origins_evicted.fetch_add(evicted - known, Ordering::Relaxed);
                }
                if pinging.is_none() && now >= next_ping {
                    next_ping = now + HEARTBEAT;
                    pinging = Some(ping(conn.clone(), ctx.ping_timeout));
                }
            }
        }
    }
}

/// One message from the channel, in the reader task.
fn receive(
    local: &Local,
    bus: &Bus,
    payload: &[u8],
    origins: &mut Origins,
    tx: &mpsc::Sender<Action>,
) {
    let c = local.table.runtime();
    let now = Instant::now();
    let msg = match message::decode(payload) {
        Received::Message(m) => m,
        Received::UnknownAction { origin, .. } if origin == bus.instance => {
            Counters::bump(&c.bus_own_messages);
            return;
        }
        Received::UnknownAction { origin, seq } => {
            origins.message(origin, seq, now);
            tracing::info!(
                "tiered: an invalidation of a newer tiered version could not be read; flushing L1"
            );
            local.flush(FlushReason::Unverified);
            return;
        }
        Received::Foreign => {
            Counters::bump(&c.bus_bad_messages);
            tracing::debug!(
                "tiered: ignoring a message on the invalidation channel that is not ours"
            );
            return;
        }
    };
    if msg.origin == bus.instance {
        Counters::bump(&c.bus_own_messages);
        return;
    }
    let loss = match &msg.action {
        Action::Beacon { last } => origins.beacon(msg.origin, *last, now),
        Action::Bye { last } => origins.bye(msg.origin, *last, now),
        _ => origins.message(msg.origin, msg.seq, now),
    };
    if let Some(loss) = loss {
        lost(local, loss);
    }
    if !msg.action.is_numbered() {
        return;
    }
    match tx.try_send(msg.action) {
        Ok(()) => {
            let len = tx.max_capacity() - tx.capacity();
            bus.queue_peak.fetch_max(len, Ordering::Relaxed);
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            Counters::bump(&c.bus_messages_dropped);
            overflow(local, bus);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

fn lost(local: &Local, loss: Loss) {
    let reason = match loss {
        Loss::Gap => FlushReason::SequenceGap,
        Loss::Silence => FlushReason::Silence,
        Loss::Unverified => FlushReason::Unverified,
    };
    tracing::info!(
        ?reason,
        "tiered: invalidations from another instance may have been lost; flushing L1"
    );
    local.flush(reason);
}

fn overflow(local: &Local, bus: &Bus) {
    local.flush(FlushReason::Overflow);
    if bus.logs.allow("queue full") {
        tracing::warn!(
            capacity = bus.queue_capacity,
            "tiered: invalidation queue full; flushing L1 instead of dropping messages (rate-limited: once a minute; see l1_flushes_overflow)"
        );
    }
}

/// Applies queued actions in order.
async fn handle(ctx: Ctx, mut rx: mpsc::Receiver<Action>) {
    while let Some(action) = rx.recv().await {
        let Some(local) = ctx.local.upgrade() else {
            return;
        };
        #[cfg(feature = "test-hooks")]
        {
            local.hooks.handler.pass().await;
            if local.hooks.take_handler_panic() {
                panic!("test hook: the invalidation handler panics");
            }
        }
        match &action {
            Action::Keys { site, keys } => {
                for key in keys {
                    local.evict(site, key);
                }
            }
            Action::Site { site, generation } => {
                local.generations.set_site(site, *generation);
                local.drop_site(Some(site));
            }
            Action::Tag { tag, generation } => {
                local.generations.set_tag(tag, *generation);
                local.drop_tagged(tag);
            }
            Action::All { generation } => {
                local.generations.set_namespace(*generation);
                local.flush(FlushReason::Manual);
            }
            Action::Beacon { .. } | Action::Bye { .. } => continue,
        }
        Counters::bump(&local.table.runtime().invalidations_received);
    }
}
