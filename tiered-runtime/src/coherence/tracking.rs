//! Writes made outside tiered: server-assisted invalidation with Redis client tracking
//! (`Builder::client_tracking`, off by default).
//!
//! * **The connection.** A RESP3 connection of its own sends
//!   `CLIENT TRACKING ON BCAST PREFIX {namespace}:`. From then on Redis pushes to it the name of
//!   every key under the prefix that changes: written, deleted, expired or evicted, by any
//!   client, in any database (tracking knows key names, not database numbers). Its pushes go
//!   straight into a bounded queue, like the subscriber's.
//! * **A pushed key** is evicted from the L1 of every function (several may share a key's
//!   shape), and its flights in progress are detached (callers arriving afterwards read Redis
//!   again) and keep their values out of L1. The runtime cannot tell its own writes (the lease
//!   taken on a miss, the fill, an invalidation's `DEL`) from another program's, so they come
//!   back too: a computed value reaches L1 on the next call, from Redis. Their Redis fills are
//!   untouched: the lease guards them. The runtime's own keys (`{namespace}:%~…`) are skipped.
//! * **`NOLOOP` is not used**: it only silences the writes of the tracking connection itself,
//!   which writes nothing, and Redis does not apply it to writes made by scripts anyway.
//! * **Losses.** The connection's end (closed, reset, a `Disconnection` push), an unanswered
//!   PING (one every [`HEARTBEAT`](super::bus::HEARTBEAT)), pushes dropped by a full queue and a
//!   flush of the database reported by Redis (a null invalidation) each start a new L1 epoch.
//!   While the connection is down, L1 entries live at most `degraded_l1_ttl`; a new connection
//!   starts a new epoch again (entries written while untracked go). A supervisor restarts the
//!   task if it ends (a panic in a user `Drop` run by an eviction), with a flush.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::bus::{Conn, HEARTBEAT, Ping, PingResult, PushQueue, ping};
use super::local::{FlushReason, Local};
use crate::l2::{describe, is_auth};
use crate::stats::{Counters, SiteTable};

/// How often the reader checks the queue and schedules the heartbeat.
const CHECK: Duration = Duration::from_millis(50);
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The client-tracking state of one runtime.
pub(crate) struct Tracking {
    /// `{namespace}:`: the tracked prefix.
    prefix: String,
    /// `{namespace}:%~`: the runtime's own keys, skipped.
    internal: String,
    capacity: usize,
    up: AtomicBool,
    /// The runtime was shut down: the task ends (and the connection with it).
    stopped: AtomicBool,
    logs: crate::logs::Limiter,
}

impl Tracking {
    pub(crate) fn new(namespace: &str, capacity: usize) -> Tracking {
        Tracking {
            prefix: format!("{namespace}:"),
            internal: format!("{namespace}:%~"),
            capacity,
            up: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            logs: crate::logs::Limiter::default(),
        }
    }

    /// The tracked prefix, `{namespace}:`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The connection made by `build()` is up.
    pub(crate) fn set_up(&self) {
        self.up.store(true, Ordering::Release);
    }

    /// Whether the tracking connection is up (L1 entries written meanwhile are trusted).
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Ends the task (within one check interval) and so the connection.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.up.store(false, Ordering::Release);
    }

    /// Whether a pushed key is one of this namespace's values.
    fn ours(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && !key.starts_with(&self.internal)
    }
}

/// A tracking connection whose `CLIENT TRACKING` Redis confirmed, and its push queue.
pub(crate) struct Tracked {
    conn: MultiplexedConnection,
    pushes: mpsc::Receiver<PushInfo>,
}

/// Connects (`client` must speak RESP3) and turns tracking on, bounded by `timeout`.
pub(crate) async fn connect(
    client: &redis::Client,
    prefix: &str,
    timeout: Duration,
    capacity: usize,
    table: Arc<SiteTable>,
) -> Result<Tracked, redis::RedisError> {
    let (tx, pushes) = mpsc::channel(capacity);
    let queue = PushQueue {
        tx,
        table,
        dropped: |c| &c.tracking_pushes_dropped,
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(queue);
    let attempt = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(prefix)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(conn)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(conn)) => Ok(Tracked { conn, pushes }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "CLIENT TRACKING timed out",
        ))),
    }
}

/// What the tracking task holds of its runtime: weak handles, so it ends with it.
#[derive(Clone)]
pub(crate) struct TrackCtx {
    pub(crate) local: Weak<Local>,
    pub(crate) tracking: Weak<Tracking>,
    /// A RESP3 client of the server.
    pub(crate) client: redis::Client,
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_timeout: Duration,
}

impl TrackCtx {
    fn upgrade(&self) -> Option<(Arc<Local>, Arc<Tracking>)> {
        let tracking = self
            .tracking
            .upgrade()
            .filter(|t| !t.stopped.load(Ordering::Acquire))?;
        Some((self.local.upgrade()?, tracking))
    }
}

/// Starts the tracking task; `initial` is the connection made by `build()`.
pub(crate) fn spawn(ctx: TrackCtx, initial: Option<Tracked>) {
    tokio::spawn(supervise(ctx, initial));
}

/// Runs the task; restarts it (with a flush) if it ends while the runtime lives.
async fn supervise(ctx: TrackCtx, mut initial: Option<Tracked>) {
    loop {
        let result = tokio::spawn(run(ctx.clone(), initial.take())).await;
        let Some((local, tracking)) = ctx.upgrade() else {
            return;
        };
        tracking.up.store(false, Ordering::Release);
        local.flush(FlushReason::Tracking);
        if tracking.logs.allow("tracking restart") {
            tracing::warn!(
                panicked = result.as_ref().is_err_and(|e| e.is_panic()),
                "tiered: the client-tracking task ended unexpectedly; L1 flushed, restarting it (logged at most once a minute)"
            );
        }
        drop((local, tracking));
        tokio::time::sleep(MIN_BACKOFF).await;
    }
}

/// Connects (again and again, for as long as the runtime lives) and reads.
async fn run(ctx: TrackCtx, mut initial: Option<Tracked>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let tracked = match initial.take() {
            Some(t) => t,
            None => {
                let Some((local, tracking)) = ctx.upgrade() else {
                    return;
                };
                let prefix = tracking.prefix.clone();
                let (capacity, table) = (tracking.capacity, local.table.clone());
                drop((local, tracking));
                match connect(&ctx.client, &prefix, ctx.connect_timeout, capacity, table).await {
                    Ok(t) => {
                        let Some((local, tracking)) = ctx.upgrade() else {
                            return;
                        };
                        // Writes made while untracked went unreported.
                        local.flush(FlushReason::Tracking);
                        tracking.up.store(true, Ordering::Release);
                        Counters::bump(&local.table.runtime().tracking_connects);
                        tracing::info!(
                            prefix,
                            "tiered: client tracking is up; L1 entries written without it were dropped"
                        );
                        t
                    }
                    Err(e) => {
                        if is_auth(&e) {
                            if ctx
                                .tracking
                                .upgrade()
                                .is_some_and(|t| t.logs.allow("tracking refused"))
                            {
                                tracing::error!(error = %describe(&e), "tiered: Redis refuses CLIENT TRACKING; retrying (logged at most once a minute)");
                            }
                        } else {
                            tracing::debug!(error = %describe(&e), "tiered: client-tracking connection attempt failed");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        backoff = MIN_BACKOFF;
        let Some(reason) = read(&ctx, tracked).await else {
            return;
        };
        let Some((local, tracking)) = ctx.upgrade() else {
            return;
        };
        tracking.up.store(false, Ordering::Release);
        local.flush(FlushReason::Tracking);
        tracing::info!(
            reason,
            "tiered: lost the client-tracking connection; L1 flushed, reconnecting"
        );
    }
}

/// Reads until the connection is lost (`Some(reason)`) or the runtime is gone (`None`).
async fn read(ctx: &TrackCtx, tracked: Tracked) -> Option<&'static str> {
    let Tracked { conn, mut pushes } = tracked;
    let mut dropped = ctx
        .local
        .upgrade()?
        .table
        .runtime()
        .tracking_pushes_dropped
        .load(Ordering::Acquire);
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ping = Instant::now() + HEARTBEAT;
    let mut pinging: Option<Ping> = None;
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else {
                    return Some("the tracking connection closed");
                };
                let (local, tracking) = ctx.upgrade()?;
                #[cfg(feature = "test-hooks")]
                local.hooks.tracking.pass().await;
                match push.kind {
                    PushKind::Invalidate => apply(&local, &tracking, &push.data),
                    PushKind::Disconnection => return Some("the tracking connection closed"),
                    _ => {}
                }
            }
            result = async { match pinging.as_mut() { Some(p) => p.await, None => std::future::pending().await } } => {
                pinging = None;
                match result {
                    PingResult::Ok => {}
                    PingResult::Broken => return Some("the tracking connection failed"),
                    PingResult::Missed => return Some("the tracking connection stopped answering heartbeats"),
                }
            }
            _ = tick.tick() => {
                let (local, tracking) = ctx.upgrade()?;
                let now_dropped = local.table.runtime().tracking_pushes_dropped.load(Ordering::Acquire);
                if now_dropped != dropped {
                    dropped = now_dropped;
                    local.flush(FlushReason::Tracking);
                    if tracking.logs.allow("tracking queue full") {
                        tracing::warn!(
                            capacity = tracking.capacity,
                            "tiered: client-tracking push queue full; flushing L1 instead of dropping invalidations (rate-limited: once a minute; see l1_flushes_tracking)"
                        );
                    }
                }
                let now = Instant::now();
                if pinging.is_none() && now >= next_ping {
                    next_ping = now + HEARTBEAT;
                    pinging = Some(ping(Conn::Node(conn.clone()), ctx.ping_timeout));
                }
            }
        }
    }
}

/// One `invalidate` push: the keys written (evicted), or null for a flush of the database.
fn apply(local: &Local, tracking: &Tracking, data: &[Value]) {
    match data.first() {
        Some(Value::Array(keys)) | Some(Value::Set(keys)) => {
            for key in keys {
                let key = match key {
                    Value::BulkString(b) => std::str::from_utf8(b).ok(),
                    Value::SimpleString(s) => Some(s.as_str()),
                    _ => None,
                };
                if let Some(key) = key
                    && tracking.ours(key)
                {
                    local.track_evict(key);
                    Counters::bump(&local.table.runtime().tracking_evictions);
                }
            }
        }
        Some(Value::Nil) | None => {
            tracing::info!("tiered: Redis reported a flush of the database; flushing L1");
            local.flush(FlushReason::Tracking);
        }
        _ => {}
    }
}
