//! L2 on a Redis Cluster: one `redis::cluster_async::ClusterConnection`, which keeps a
//! connection to every node, routes each request by its key's slot, follows `MOVED`/`ASK` and
//! refreshes the topology, and reconnects to a node it lost.
//!
//! Every request the runtime sends touches one slot (a cluster pipeline is not split across
//! nodes: redis-rs 1.8 refuses it with `CrossSlot`); [`L2`](super::L2) sends what touches several
//! keys as one request per key. The client's own retries are kept short (2 retries, 10–100 ms
//! apart) and every request stays under the runtime's time box (`l2_timeout`) and circuit
//! breaker, so a dead master costs a caller at most `l2_timeout`.
//!
//! **One circuit breaker per master.** A request's first key gives its slot (CRC16, as Redis
//! computes it), the slot its master (from `CLUSTER SLOTS`, read every second and after
//! failures), and the master its own breaker: a dead master opens only its breaker, and the
//! keys of the other masters keep their L2.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};

use super::{L2Error, Request};
use crate::breaker::Breaker;
use crate::config::{Config, LeaseRead, RedisTarget};
use crate::error::Error;
use crate::l2::{describe, is_auth};
use crate::stats::SiteTable;

/// How often the slot map is read again.
const SLOT_MAP_EVERY: Duration = Duration::from_secs(1);

const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

pub(crate) struct Cluster {
    client: redis::cluster::ClusterClient,
    addr: String,
    connect_timeout: Duration,
    current: RwLock<Option<ClusterConnection>>,
    /// `replica_reads`: a second client, whose read-only commands go to replicas (`READONLY`
    /// connections), and its connection once made.
    replicas: Option<(
        redis::cluster::ClusterClient,
        RwLock<Option<ClusterConnection>>,
    )>,
    /// Replica reads pass this breaker (failing replicas never open a master's).
    replica_breaker: Arc<Breaker>,
    /// The pipelined lease read (`GET` + `SET NX` in `MULTI`/`EXEC`, one slot) instead of
    /// `SET … NX GET`.
    pipelined: AtomicBool,
    closed: AtomicBool,
    logs: crate::logs::Limiter,
    /// `(first slot, last slot, master host:port)`, sorted; empty until first read.
    slots: RwLock<Vec<(u16, u16, String)>>,
    /// `(first slot, last slot, replicas as (host, port))` of the same read.
    replica_map: RwLock<Vec<ReplicaRange>>,
    /// Spreads replica reads over a shard's replicas.
    replica_turn: AtomicU64,
    /// A breaker per master, by `host:port` ("" for a slot whose master is not known yet).
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    stats: Arc<SiteTable>,
}

impl Cluster {
    /// Connects (bounded by `connect_timeout`); an unreachable cluster is a degraded start, a
    /// refused credential an error. A supervisor connects in the background until it succeeds.
    pub(crate) async fn start(
        target: &RedisTarget,
        config: &Config,
        stats: Arc<SiteTable>,
    ) -> Result<Arc<Cluster>, Error> {
        let seeds: Vec<redis::ConnectionInfo> = target
            .cluster
            .iter()
            .flatten()
            .map(|c| c.get_connection_info().clone())
            .collect();
        let builder = || {
            target
                .tls
                .apply(ClusterClientBuilder::new(seeds.clone()))
                .connection_timeout(config.connect_timeout)
                // Our own time box is authoritative; this only frees the client's slots.
                .response_timeout(config.l2_timeout * 2)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100)
        };
        let built = |b: ClusterClientBuilder| {
            b.build().map_err(|e| {
                Error::config(
                    "redis_cluster",
                    format!("cannot build a cluster client ({:?})", e.kind()),
                )
            })
        };
        let replicas = if config.replica_reads {
            Some((
                built(
                    builder()
                        .read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy),
                )?,
                RwLock::new(None),
            ))
        } else {
            None
        };
        let client = built(builder())?;
        let cluster = Arc::new(Cluster {
            client,
            addr: target.addr.clone(),
            connect_timeout: config.connect_timeout,
            current: RwLock::new(None),
            replicas,
            replica_map: RwLock::new(Vec::new()),
            replica_turn: AtomicU64::new(0),
            replica_breaker: Arc::new(Breaker::new(
                config.breaker_threshold,
                config.breaker_cooldown,
                format!("{} (replica reads)", target.addr),
                stats.clone(),
            )),
            pipelined: AtomicBool::new(config.lease_read == LeaseRead::Pipelined),
            closed: AtomicBool::new(false),
            logs: crate::logs::Limiter::default(),
            slots: RwLock::new(Vec::new()),
            breakers: Mutex::new(HashMap::new()),
            breaker_threshold: config.breaker_threshold,
            breaker_cooldown: config.breaker_cooldown,
            stats,
        });
        match cluster.connect().await {
            Ok(conn) => {
                super::check_permissions(
                    &conn,
                    &config.namespace,
                    cluster.pipelined(),
                    cluster.connect_timeout,
                    &cluster.addr,
                )
                .await?;
                cluster.install(conn);
                cluster.read_slot_map().await;
                cluster.connect_replicas().await;
            }
            Err(e) if is_auth(&e) => {
                return Err(Error::Auth {
                    addr: cluster.addr.clone(),
                    detail: describe(&e),
                });
            }
            Err(e) if super::is_tls_failure(&e) => {
                return Err(Error::Tls {
                    addr: cluster.addr.clone(),
                    detail: super::tls_detail(&e),
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

    /// Connects the replica-read client when it is configured and not connected yet.
    async fn connect_replicas(&self) {
        let Some((client, conn)) = &self.replicas else {
            return;
        };
        if conn.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        match tokio::time::timeout(self.connect_timeout * 2, client.get_async_connection()).await {
            Ok(Ok(c)) if !self.closed.load(Ordering::Acquire) => {
                *conn.write().unwrap_or_else(|p| p.into_inner()) = Some(c);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(redis = %self.addr, error = %describe(&e), "tiered: replica-read connect attempt failed")
            }
            Err(_) => {}
        }
    }

    /// For a replica read of `key`: the replica-read connection, its breaker and a replica of
    /// the key's master, from the slot map this runtime reads every second (not the client's
    /// own, which knows only the replicas listed when it connected). `None` when replica reads
    /// are off, not connected, or no replica of that master is known.
    pub(crate) fn replica_route(
        &self,
        key: &[u8],
    ) -> Option<(ClusterConnection, Arc<Breaker>, String, u16)> {
        let (_, conn) = self.replicas.as_ref()?;
        let conn = conn.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        let slot = key_slot(key);
        let (host, port) = {
            let map = self.replica_map.read().unwrap_or_else(|p| p.into_inner());
            let (_, _, replicas) = map
                .iter()
                .find(|(from, to, _)| (*from..=*to).contains(&slot))?;
            let turn = self.replica_turn.fetch_add(1, Ordering::Relaxed) as usize;
            replicas.get(turn % replicas.len().max(1))?.clone()
        };
        Some((conn, self.replica_breaker.clone(), host, port))
    }

    /// Breakers open now (the masters' and the replicas').
    pub(crate) fn open_breakers(&self) -> usize {
        let masters = self
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|b| b.open_now())
            .count();
        masters + usize::from(self.replica_breaker.open_now())
    }

    /// Whether `replica_reads` is on.
    pub(crate) fn replica_reads(&self) -> bool {
        self.replicas.is_some()
    }

    /// The breaker of the master that serves `slot` (see the module docs).
    pub(crate) fn breaker_for(&self, slot: Option<u16>) -> Arc<Breaker> {
        let master = slot
            .and_then(|slot| {
                let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
                slots
                    .iter()
                    .find(|(from, to, _)| (*from..=*to).contains(&slot))
                    .map(|(_, _, addr)| addr.clone())
            })
            .unwrap_or_default();
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers
            .entry(master.clone())
            .or_insert_with(|| {
                let name = if master.is_empty() {
                    self.addr.clone()
                } else {
                    format!("{} (master {master})", self.addr)
                };
                Arc::new(Breaker::new(
                    self.breaker_threshold,
                    self.breaker_cooldown,
                    name,
                    self.stats.clone(),
                ))
            })
            .clone()
    }

    /// Reads `CLUSTER SLOTS` (time-boxed); keeps the last map when it fails.
    async fn read_slot_map(&self) {
        let conn = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(mut conn) = conn else { return };
        let reply = tokio::time::timeout(
            self.connect_timeout,
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<redis::Value>(&mut conn),
        )
        .await;
        if let Ok(Ok(reply)) = reply {
            let ranges = slot_ranges(&reply);
            if !ranges.is_empty() {
                let mut masters = Vec::with_capacity(ranges.len());
                let mut replicas = Vec::with_capacity(ranges.len());
                for (from, to, (host, port), of_range) in ranges {
                    masters.push((from, to, format!("{host}:{port}")));
                    replicas.push((from, to, of_range));
                }
                masters.sort();
                replicas.sort();
                *self.slots.write().unwrap_or_else(|p| p.into_inner()) = masters;
                *self.replica_map.write().unwrap_or_else(|p| p.into_inner()) = replicas;
            }
        }
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
        if let Some((_, conn)) = &self.replicas {
            *conn.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
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
            Request::AtSlot(p, slot) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                let count = p.cmd_iter().count();
                match conn.route_pipeline(p.clone(), 0, count, route).await {
                    Ok(replies) => T::from_redis_value(redis::Value::Array(replies))
                        .map_err(redis::RedisError::from),
                    Err(e) => Err(e),
                }
            }
        };
        reply.map_err(L2Error::Failed)
    }
}

/// Connects in the background while no connection was ever made (afterwards the cluster
/// client reconnects to each node itself), then reads the slot map every second.
async fn supervise(weak: Weak<Cluster>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(this) = weak.upgrade() else { return };
        if this.closed.load(Ordering::Acquire) {
            return;
        }
        if this.is_connected() {
            this.read_slot_map().await;
            this.connect_replicas().await;
            drop(this);
            tokio::time::sleep(SLOT_MAP_EVERY).await;
            continue;
        }
        match this.connect().await {
            Ok(conn) => {
                this.install(conn);
                continue;
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

/// The cluster slot of `key`: CRC16/XMODEM of the key (or of its non-empty `{hash tag}`) mod
/// 16384, as Redis computes it. Keys the runtime renders never hold braces (they are escaped),
/// so it is the whole key's.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|b| *b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// `(first slot, last slot, replicas as (host, port))`.
type ReplicaRange = (u16, u16, Vec<(String, u16)>);

/// `(host, port)` of a node.
type Node = (String, u16);

/// `(first slot, last slot, master, replicas)` of each range of a `CLUSTER SLOTS` reply.
fn slot_ranges(reply: &redis::Value) -> Vec<(u16, u16, Node, Vec<Node>)> {
    let redis::Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|r| {
            let redis::Value::Array(parts) = r else {
                return None;
            };
            let [
                redis::Value::Int(from),
                redis::Value::Int(to),
                master,
                replicas @ ..,
            ] = parts.as_slice()
            else {
                return None;
            };
            Some((
                u16::try_from(*from).ok()?,
                u16::try_from(*to).ok()?,
                node_addr(master)?,
                replicas.iter().filter_map(node_addr).collect(),
            ))
        })
        .collect()
}

/// `(host, port)` of a node entry of `CLUSTER SLOTS`.
fn node_addr(node: &redis::Value) -> Option<Node> {
    let redis::Value::Array(parts) = node else {
        return None;
    };
    let host = match parts.first()? {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let redis::Value::Int(port) = parts.get(1)? else {
        return None;
    };
    Some((host, u16::try_from(*port).ok()?))
}

#[cfg(test)]
mod tests {
    use super::key_slot;

    #[test]
    fn slots_are_computed_as_redis_does() {
        // Values from `CLUSTER KEYSLOT` (Redis 7.0.15).
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
    }
}
