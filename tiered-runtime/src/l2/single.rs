//! One Redis server: a multiplexed connection kept alive by a supervisor task.
//!
//! redis-rs's `ConnectionManager` makes callers wait through its reconnect backoff (observed:
//! up to 9.5 s for a 12 s outage) and stops retrying after six attempts. Instead, requests here
//! use whatever connection is current and fail at once when there is none; a background task
//! owns (re)connection: it retries with a short capped backoff for as long as the runtime lives,
//! pings the connection every [`HEARTBEAT`] and replaces it after [`HEARTBEAT_MISSES`]
//! unanswered pings (a half-open link never errors by itself).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::{L2Error, Request, describe, is_auth};
use crate::breaker::Breaker;
use crate::config::{Config, LeaseRead, RedisTarget};
use crate::error::Error;
use crate::stats::{Counters, SiteTable};

/// Interval of the supervisor's PING on the data connection.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);
/// Consecutive unanswered heartbeats after which the connection is replaced.
pub(crate) const HEARTBEAT_MISSES: u32 = 3;
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

struct Current {
    id: u64,
    conn: MultiplexedConnection,
}

pub(crate) struct Single {
    client: redis::Client,
    addr: String,
    conn_config: redis::AsyncConnectionConfig,
    connect_timeout: Duration,
    ping_timeout: Duration,
    current: RwLock<Option<Current>>,
    next_id: AtomicU64,
    lost: Arc<Notify>,
    breaker: Arc<Breaker>,
    stats: Arc<SiteTable>,
    lease_read: LeaseRead,
    /// The lease read in use on the current connection: `true` for the pipelined form.
    pipelined: AtomicBool,
    /// Shut down: no connection is made or kept any more.
    closed: AtomicBool,
    logs: crate::logs::Limiter,
}

/// The version of a server from its `INFO server` reply (`redis_version:7.0.15`).
pub(crate) fn server_major(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|major| major.parse().ok())
}

impl Single {
    pub(crate) async fn start(
        target: &RedisTarget,
        config: &Config,
        breaker: Arc<Breaker>,
        stats: Arc<SiteTable>,
    ) -> Result<Arc<Single>, Error> {
        let conn_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            // Our own time box (`l2_timeout`) is authoritative and counted as a timeout; this is
            // only a backstop that frees pipeline slots of requests we stopped waiting for.
            .set_response_timeout(Some(config.l2_timeout * 2));
        let single = Arc::new(Single {
            client: target.client.clone(),
            addr: target.addr.clone(),
            conn_config,
            connect_timeout: config.connect_timeout,
            ping_timeout: config.l2_timeout.max(Duration::from_millis(100)),
            current: RwLock::new(None),
            next_id: AtomicU64::new(1),
            lost: Arc::new(Notify::new()),
            breaker,
            stats,
            lease_read: config.lease_read,
            pipelined: AtomicBool::new(config.lease_read == LeaseRead::Pipelined),
            closed: AtomicBool::new(false),
            logs: crate::logs::Limiter::default(),
        });
        match single.connect().await {
            Ok(conn) => {
                single.choose_lease_read(&conn).await;
                super::check_permissions(
                    &conn,
                    &config.namespace,
                    single.pipelined(),
                    single.connect_timeout,
                    &single.addr,
                )
                .await?;
                single.install(conn)
            }
            Err(e) if is_auth(&e) => {
                return Err(Error::Auth {
                    addr: single.addr.clone(),
                    detail: describe(&e),
                });
            }
            Err(e) if super::is_tls_failure(&e) => {
                return Err(Error::Tls {
                    addr: single.addr.clone(),
                    detail: super::tls_detail(&e),
                });
            }
            Err(e) => tracing::warn!(
                redis = %single.addr,
                error = %describe(&e),
                "tiered: Redis is unreachable at startup; running degraded (L1 only) and connecting in the background"
            ),
        }
        tokio::spawn(supervise(Arc::downgrade(&single)));
        Ok(single)
    }

    /// Whether flights read with the pipelined form (see [`LeaseRead`]).
    pub(crate) fn pipelined(&self) -> bool {
        self.pipelined.load(Ordering::Relaxed)
    }

    /// The server refused `SET … NX GET` as a syntax error: it predates 7.0 whatever it
    /// reports. Pipelined reads from now on (until a reconnect chooses again).
    pub(crate) fn refuse_set_nx_get(&self) {
        if !self.pipelined.swap(true, Ordering::Relaxed) && self.logs.allow("set-nx-get") {
            tracing::warn!(redis = %self.addr, "tiered: Redis refused `SET … NX GET`; reading with GET and SET NX pipelined instead");
        }
    }

    /// [`LeaseRead::Auto`]: one `INFO server` on a new connection picks the form (Redis ≥ 7.0:
    /// `SET … NX GET`); when the reply does not tell, `SET … NX GET` is tried and a syntax
    /// error switches to the pipelined form.
    async fn choose_lease_read(&self, conn: &MultiplexedConnection) {
        if self.lease_read != LeaseRead::Auto {
            return;
        }
        let mut conn = conn.clone();
        let info = redis::cmd("INFO").arg("server").to_owned();
        let major =
            match tokio::time::timeout(self.connect_timeout, info.query_async::<String>(&mut conn))
                .await
            {
                Ok(Ok(info)) => server_major(&info),
                _ => None,
            };
        let pipelined = major.is_some_and(|m| m < 7);
        self.pipelined.store(pipelined, Ordering::Relaxed);
        tracing::debug!(redis = %self.addr, ?major, pipelined, "tiered: lease read chosen");
    }

    async fn connect(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&self.conn_config);
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
        }
    }

    /// Drops the connection for good and stops the supervisor.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.lost.notify_one();
    }

    fn install(&self, conn: MultiplexedConnection) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Current { id, conn });
        Counters::bump(&self.stats.runtime().l2_connects);
        self.breaker.reset();
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn checkout(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| (c.id, c.conn.clone()))
    }

    /// Forgets connection `id` (if still current) and wakes the supervisor.
    fn lose(&self, id: u64, reason: &'static str) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|c| c.id == id) {
            *cur = None;
            drop(cur);
            if self.logs.allow("connection lost") {
                tracing::warn!(redis = %self.addr, reason, "tiered: lost the Redis connection; reconnecting in the background (logged at most once a minute)");
            } else {
                tracing::debug!(redis = %self.addr, reason, "tiered: lost the Redis connection; reconnecting in the background");
            }
        }
        self.lost.notify_one();
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        req: Request<'_>,
    ) -> Result<T, L2Error> {
        let Some((id, mut conn)) = self.checkout() else {
            return Err(L2Error::Skipped("not connected"));
        };
        let reply = match req {
            Request::Pipe(p) | Request::AtSlot(p, _) => p.query_async::<T>(&mut conn).await,
            Request::Cmd(c) => c.query_async::<T>(&mut conn).await,
        };
        match reply {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || (e.is_io_error() && !e.is_timeout())
                {
                    self.lose(id, "the connection failed");
                }
                Err(L2Error::Failed(e))
            }
        }
    }
}

/// Keeps a connection up for as long as the `Single` lives.
async fn supervise(weak: Weak<Single>) {
    let mut backoff = MIN_BACKOFF;
    let mut misses = 0u32;
    loop {
        let Some(this) = weak.upgrade() else { return };
        if this.closed.load(Ordering::Acquire) {
            return;
        }
        match this.checkout() {
            None => {
                match this.connect().await {
                    Ok(conn) => {
                        this.choose_lease_read(&conn).await;
                        this.install(conn);
                        misses = 0;
                        backoff = MIN_BACKOFF;
                        tracing::info!(redis = %this.addr, "tiered: connected to Redis");
                        continue;
                    }
                    Err(e) if is_auth(&e) && this.logs.allow("credentials") => tracing::error!(
                        redis = %this.addr,
                        error = %describe(&e),
                        "tiered: Redis refuses the configured credentials; L2 stays off until it accepts them (logged at most once a minute)"
                    ),
                    Err(e) => {
                        tracing::debug!(redis = %this.addr, error = %describe(&e), "tiered: reconnect attempt failed")
                    }
                }
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Some((id, mut conn)) => {
                let lost = this.lost.clone();
                let ping_timeout = this.ping_timeout;
                // Do not keep the `Single` alive while idle.
                drop(this);
                tokio::select! {
                    () = lost.notified() => continue,
                    () = tokio::time::sleep(HEARTBEAT) => {}
                }
                let ping = redis::cmd("PING");
                let result =
                    tokio::time::timeout(ping_timeout, ping.query_async::<()>(&mut conn)).await;
                let Some(this) = weak.upgrade() else { return };
                match result {
                    Ok(Ok(())) => misses = 0,
                    Ok(Err(e)) if e.is_connection_dropped() || e.is_unrecoverable_error() => {
                        this.lose(id, "the heartbeat found the connection closed")
                    }
                    Ok(Err(_)) | Err(_) => {
                        misses += 1;
                        if misses >= HEARTBEAT_MISSES {
                            misses = 0;
                            this.lose(id, "Redis stopped answering heartbeats");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_version_is_read_from_info_server() {
        use super::server_major;
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(server_major(info), Some(7));
        assert_eq!(server_major("redis_version:6.2.14\r\n"), Some(6));
        assert_eq!(server_major("nothing here"), None);
    }
}
