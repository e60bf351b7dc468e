//! L2 on a Redis Cluster: one `redis::cluster_async::ClusterConnection`, which keeps a
//! connection to every node, routes each request by its key's slot, follows `MOVED`/`ASK` and
//! refreshes the topology, and reconnects to a node it lost.
//!
//! Every request the runtime sends touches one slot (a cluster pipeline is not split across
//! nodes: redis-rs 1.8 refuses it with `CrossSlot`); [`L2`](super::L2) sends what touches several
//! keys as one request per key. The client's own retries are kept short (2 retries, 10–100 ms
//! apart) and every request stays under the runtime's time box (`l2_timeout`) and circuit
//! breaker, so a dead master costs a caller at most `l2_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;

use super::{L2Error, Request};
use crate::config::{Config, LeaseRead, RedisTarget};
use crate::error::Error;
use crate::l2::{describe, is_auth};

const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

pub(crate) struct Cluster {
    client: redis::cluster::ClusterClient,
    addr: String,
    connect_timeout: Duration,
    current: RwLock<Option<ClusterConnection>>,
    /// The pipelined lease read (`GET` + `SET NX` in `MULTI`/`EXEC`, one slot) instead of
    /// `SET … NX GET`.
    pipelined: AtomicBool,
    closed: AtomicBool,
    logs: crate::logs::Limiter,
}

impl Cluster {
    /// Connects (bounded by `connect_timeout`); an unreachable cluster is a degraded start, a
    /// refused credential an error. A supervisor connects in the background until it succeeds.
    pub(crate) async fn start(
        target: &RedisTarget,
        config: &Config,
    ) -> Result<Arc<Cluster>, Error> {
        let seeds: Vec<redis::ConnectionInfo> = target
            .cluster
            .iter()
            .flatten()
            .map(|c| c.get_connection_info().clone())
            .collect();
        let client = ClusterClientBuilder::new(seeds)
            .connection_timeout(config.connect_timeout)
            // Our own time box is authoritative; this only frees the client's slots.
            .response_timeout(config.l2_timeout * 2)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()
            .map_err(|e| {
                Error::config(
                    "redis_cluster",
                    format!("cannot build a cluster client ({:?})", e.kind()),
                )
            })?;
        let cluster = Arc::new(Cluster {
            client,
            addr: target.addr.clone(),
            connect_timeout: config.connect_timeout,
            current: RwLock::new(None),
            pipelined: AtomicBool::new(config.lease_read == LeaseRead::Pipelined),
            closed: AtomicBool::new(false),
            logs: crate::logs::Limiter::default(),
        });
        match cluster.connect().await {
            Ok(conn) => cluster.install(conn),
            Err(e) if is_auth(&e) => {
                return Err(Error::Auth {
                    addr: cluster.addr.clone(),
                    detail: describe(&e),
                });
            }
            Err(e) => tracing::warn!(
                redis = %cluster.addr,
                error = %describe(&e),
                "tiered: the Redis Cluster is unreachable at startup; running degraded (L1 only) and connecting in the background"
            ),
        }
        tokio::spawn(supervise(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    async fn connect(&self) -> Result<ClusterConnection, redis::RedisError> {
        match tokio::time::timeout(self.connect_timeout * 2, self.client.get_async_connection())
            .await
        {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
        }
    }

    fn install(&self, conn: ClusterConnection) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        tracing::info!(redis = %self.addr, "tiered: connected to the Redis Cluster");
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub(crate) fn pipelined(&self) -> bool {
        self.pipelined.load(Ordering::Relaxed)
    }

    /// A node refused `SET … NX GET` as a syntax error (older than 7.0): pipelined reads from
    /// now on.
    pub(crate) fn refuse_set_nx_get(&self) {
        if !self.pipelined.swap(true, Ordering::Relaxed) && self.logs.allow("set-nx-get") {
            tracing::warn!(redis = %self.addr, "tiered: a cluster node refused `SET … NX GET`; reading with GET and SET NX pipelined instead");
        }
    }

    /// Drops the connection for good (shutdown).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        req: Request<'_>,
    ) -> Result<T, L2Error> {
        let conn = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(mut conn) = conn else {
            return Err(L2Error::Skipped("not connected"));
        };
        let reply = match req {
            Request::Pipe(p) => p.query_async::<T>(&mut conn).await,
            Request::Cmd(c) => c.query_async::<T>(&mut conn).await,
        };
        reply.map_err(L2Error::Failed)
    }
}

/// Connects in the background while no connection was ever made (afterwards the cluster
/// client reconnects to each node itself).
async fn supervise(weak: Weak<Cluster>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(this) = weak.upgrade() else { return };
        if this.closed.load(Ordering::Acquire) || this.is_connected() {
            return;
        }
        match this.connect().await {
            Ok(conn) => {
                this.install(conn);
                return;
            }
            Err(e) if is_auth(&e) && this.logs.allow("credentials") => tracing::error!(
                redis = %this.addr,
                error = %describe(&e),
                "tiered: the Redis Cluster refuses the configured credentials; L2 stays off until it accepts them (logged at most once a minute)"
            ),
            Err(e) => {
                tracing::debug!(redis = %this.addr, error = %describe(&e), "tiered: cluster connect attempt failed")
            }
        }
        drop(this);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
