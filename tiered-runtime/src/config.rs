//! [`Builder`] → validated [`Config`].

use std::time::Duration;

use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// Default namespace when none is configured.
pub const DEFAULT_NAMESPACE: &str = "tiered";
/// Default bound on the number of L1 entries.
pub const DEFAULT_L1_MAX_ENTRIES: u64 = 100_000;
/// Default time box of one L2 operation.
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(250);
/// Default time box of one connection attempt to Redis.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default promotion frequency: an L2 hit is copied into L1 one time in this many.
pub const DEFAULT_PROMOTION_FREQUENCY: u32 = 10;
/// Default largest encoded value written to (or accepted from) L2: 4 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Default number of consecutive L2 connectivity failures that open the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 3;
/// Default time the breaker stays open before one probe is let through.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_millis(500);
/// Default lifetime of a fill lease in Redis (should exceed the slowest memoized body).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default longest wait for another process's lease before computing without filling.
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(3);
/// Default cap on L1 entry lifetime while the invalidation subscription is down.
pub const DEFAULT_DEGRADED_L1_TTL: Duration = Duration::from_secs(1);
/// Default capacity of the queue between the invalidation subscriber and its handler.
pub const DEFAULT_BUS_QUEUE: usize = 4096;

/// Default time a stale value served by fail-safe is re-cached for (the body is not called
/// again for that key meanwhile).
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(30);
/// Default capacity of the queue of background writes to Redis.
pub const DEFAULT_BACKGROUND_QUEUE: usize = 1024;
/// Default longest time [`Runtime::shutdown`] waits for queued writes and lease releases.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest `bus_queue`.
pub const MAX_BUS_QUEUE: usize = 1 << 20;
/// Largest value of any duration option: longer ones are configuration errors (they would
/// overflow clock arithmetic, and no cache needs them).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How a flight's first read takes the fill lease (see [`Builder::lease_read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeaseRead {
    /// Chosen at each connection from the server's `INFO server`: [`SetNxGet`](Self::SetNxGet)
    /// from Redis 7.0 on, [`Pipelined`](Self::Pipelined) before (and whenever a server answers
    /// `SET … NX GET` with a syntax error).
    #[default]
    Auto,
    /// `SET key lease NX GET PX ttl`: one command returns the value on a hit and takes the
    /// lease on a miss, atomically (Redis ≥ 7.0).
    SetNxGet,
    /// `GET key` and `SET key lease NX PX ttl` in one transaction (`MULTI`/`EXEC`, one round
    /// trip): for servers older than 7.0, which refuse `NX` together with `GET`.
    Pipelined,
}

/// How invalidations travel on a Redis Cluster (see [`Builder::cluster_bus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterBus {
    /// Sharded Pub/Sub (Redis ≥ 7.0), the default: `SPUBLISH` to the master of the channel's
    /// slot, which forwards only to its own replicas; instances `SSUBSCRIBE` there and
    /// subscribe again (with a new L1 epoch) when the server ends the subscription (the
    /// channel's slot moved) or the link is lost. The `SPUBLISH` is sent after the `DEL`'s
    /// reply: two round trips for the invalidating call. Measured on 3 and 6 masters: no
    /// cluster-bus traffic, total CPU per invalidation independent of the cluster's size, and
    /// a shorter propagation tail than classic (see the README).
    #[default]
    Sharded,
    /// Classic Pub/Sub: `PUBLISH` to any node, which the cluster forwards to every node;
    /// instances `SUBSCRIBE` on any node (the next seed after a failure). The invalidating
    /// call's `DEL` and `PUBLISH` go to the key's master together, in one round trip. For
    /// clusters older than Redis 7.0, which have no sharded Pub/Sub.
    Classic,
}

/// Configures and builds a [`Runtime`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tiered_runtime::Error> {
/// use std::time::Duration;
/// let rt = tiered_runtime::Runtime::builder()
///     .namespace("shop")
///     .l1_max_entries(10_000)
///     .l2_timeout(Duration::from_millis(100))
///     .build()          // no `redis_url`: embedded mode, L1 only
///     .await?;
/// assert_eq!(rt.config().namespace(), "shop");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Builder {
    namespace: String,
    redis_url: Option<String>,
    redis_cluster: Option<Vec<String>>,
    cluster_bus: Option<ClusterBus>,
    replica_reads: bool,
    tls: TlsSettings,
    l1_max_entries: u64,
    l1_max_ttl: Option<Duration>,
    l2_timeout: Duration,
    connect_timeout: Duration,
    promotion_frequency: u32,
    max_value_bytes: usize,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    lease_ttl: Duration,
    lease_wait: Duration,
    degraded_l1_ttl: Duration,
    bus_queue: usize,
    lease_read: LeaseRead,
    ttl_jitter: u8,
    fail_safe: Option<Duration>,
    fail_safe_throttle: Duration,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    background_writes: bool,
    background_queue: usize,
    l1_max_bytes: Option<u64>,
    shutdown_timeout: Duration,
    client_tracking: bool,
    deferred: Option<(&'static str, String)>,
}

impl std::fmt::Debug for Builder {
    // Hand-written so that a password in `redis_url` never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("namespace", &self.namespace)
            .field("redis", &self.redis_url.as_deref().map(redacted_addr))
            .field("l1_max_entries", &self.l1_max_entries)
            .field("l1_max_ttl", &self.l1_max_ttl)
            .field("l2_timeout", &self.l2_timeout)
            .field("promotion_frequency", &self.promotion_frequency)
            .field("max_value_bytes", &self.max_value_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            redis_url: None,
            redis_cluster: None,
            cluster_bus: None,
            replica_reads: false,
            tls: TlsSettings::default(),
            l1_max_entries: DEFAULT_L1_MAX_ENTRIES,
            l1_max_ttl: None,
            l2_timeout: DEFAULT_L2_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            promotion_frequency: DEFAULT_PROMOTION_FREQUENCY,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            lease_ttl: DEFAULT_LEASE_TTL,
            lease_wait: DEFAULT_LEASE_WAIT,
            degraded_l1_ttl: DEFAULT_DEGRADED_L1_TTL,
            bus_queue: DEFAULT_BUS_QUEUE,
            lease_read: LeaseRead::Auto,
            ttl_jitter: 0,
            fail_safe: None,
            fail_safe_throttle: DEFAULT_FAIL_SAFE_THROTTLE,
            soft_timeout: None,
            hard_timeout: None,
            background_writes: false,
            background_queue: DEFAULT_BACKGROUND_QUEUE,
            l1_max_bytes: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            client_tracking: false,
            deferred: None,
        }
    }
}

impl Builder {
    /// A builder with every option at its default (embedded mode, namespace `tiered`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that reads `TIERED_REDIS_URL`, `TIERED_REDIS_CLUSTER` (seed node URLs separated
    /// by commas), `TIERED_CLUSTER_BUS` (`classic` or `sharded`), `TIERED_CLIENT_TRACKING`
    /// (`on` or `off`; also `true`/`false`, `1`/`0`) and `TIERED_NAMESPACE` from the
    /// environment.
    ///
    /// Unset or empty variables leave the default; a variable that is not valid UTF-8 makes
    /// [`build`](Self::build) fail with an error naming the field. Options set afterwards on the
    /// builder override the environment.
    pub fn from_env() -> Self {
        let mut b = Self::default();
        for (var, field) in [
            ("TIERED_REDIS_URL", "redis_url"),
            ("TIERED_REDIS_CLUSTER", "redis_cluster"),
            ("TIERED_CLUSTER_BUS", "cluster_bus"),
            ("TIERED_CLIENT_TRACKING", "client_tracking"),
            ("TIERED_NAMESPACE", "namespace"),
        ] {
            match std::env::var(var) {
                Ok(v) if v.is_empty() => {}
                Ok(v) if field == "cluster_bus" => match v.trim().to_ascii_lowercase().as_str() {
                    "classic" => b.cluster_bus = Some(ClusterBus::Classic),
                    "sharded" => b.cluster_bus = Some(ClusterBus::Sharded),
                    _ => {
                        b.deferred = Some((
                            field,
                            format!("{var} must be `classic` or `sharded`, not `{v}`"),
                        ));
                    }
                },
                Ok(v) if field == "client_tracking" => {
                    match v.trim().to_ascii_lowercase().as_str() {
                        "on" | "true" | "1" | "yes" => b.client_tracking = true,
                        "off" | "false" | "0" | "no" => b.client_tracking = false,
                        _ => {
                            b.deferred =
                                Some((field, format!("{var} must be `on` or `off`, not `{v}`")));
                        }
                    }
                }
                Ok(v) if field == "redis_url" => b.redis_url = Some(v),
                Ok(v) if field == "redis_cluster" => {
                    b.redis_cluster = Some(
                        v.split(',')
                            .map(|s| s.trim().to_owned())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    );
                }
                Ok(v) => b.namespace = v,
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    b.deferred = Some((field, format!("{var} is not valid UTF-8")));
                }
            }
        }
        b
    }

    /// Prefix of every key (in L1 and Redis). ASCII letters, digits, `-`, `_` and `.`, at most
    /// 64 characters; `:` is reserved as the separator so namespaces can never collide.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Redis URL (`redis://[user:password@]host:port[/db]`). Without it the runtime runs in
    /// embedded mode: L1 only.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// A Redis Cluster as L2: the URLs of some of its nodes (`redis://[user:password@]host:port`;
    /// the client discovers the others). Exclusive with [`redis_url`](Self::redis_url). Every
    /// command the runtime sends touches one slot; invalidations go out with sharded Pub/Sub
    /// by default (see [`cluster_bus`](Self::cluster_bus) and `docs/coherence.md`).
    pub fn redis_cluster<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redis_cluster = Some(seeds.into_iter().map(Into::into).collect());
        self
    }

    /// How invalidations travel on a Redis Cluster: [`ClusterBus::Sharded`]
    /// (`SPUBLISH`/`SSUBSCRIBE`, the default) or [`ClusterBus::Classic`] (`PUBLISH`, for
    /// clusters older than Redis 7.0). Only with
    /// [`redis_cluster`](Self::redis_cluster) (a single server always uses classic Pub/Sub);
    /// the README's Cluster section gives the measurements behind the default.
    pub fn cluster_bus(mut self, mode: ClusterBus) -> Self {
        self.cluster_bus = Some(mode);
        self
    }

    /// Reads L2 values from the cluster's replicas first (default off). A value found on a
    /// replica is returned to the caller but never kept in L1 and never takes a fill lease: a
    /// lagging replica can still return a value after its `DEL`, so such a value is served for
    /// this call only, and each call reads again. A miss (or an error) on the replica falls back
    /// to the master's read, which takes the lease as usual. Only with
    /// [`redis_cluster`](Self::redis_cluster).
    pub fn replica_reads(mut self, on: bool) -> Self {
        self.replica_reads = on;
        self
    }

    /// The certificate authority (PEM) that signed the server's certificate, for `rediss://`
    /// URLs whose server the system's trust store does not know (a private CA). Needs the
    /// `tls` feature. Without it, the system's trust store decides.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca = Some(pem.into());
        self
    }

    /// A client certificate and its private key (both PEM), for servers that verify clients
    /// (mutual TLS, `tls-auth-clients yes`). Needs the `tls` feature and a `rediss://` URL. The
    /// key is never printed (`Debug` of the builder and of `Config` leave it out).
    pub fn tls_client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((cert.into(), key.into()));
        self
    }

    /// Upper bound on the number of L1 entries of each memoized function (every function has
    /// its own typed L1; Moka evicts by TinyLFU beyond the bound). Default 100 000.
    pub fn l1_max_entries(mut self, n: u64) -> Self {
        self.l1_max_entries = n;
        self
    }

    /// Caps the lifetime of every L1 entry, whatever the site's TTL. Default: no cap. Bounds
    /// the staleness caused by writers that bypass invalidation.
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l1_max_ttl = Some(ttl);
        self
    }

    /// Time box of every L2 operation. Default 250 ms.
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2_timeout = timeout;
        self
    }

    /// Time box of one connection attempt to Redis (at `build()` and on every reconnect).
    /// Default 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// An L2 hit is promoted to L1 with probability 1/`n`; `1` always promotes. Default 10.
    /// A site's `promote` option overrides it.
    pub fn promotion_frequency(mut self, n: u32) -> Self {
        self.promotion_frequency = n;
        self
    }

    /// Largest encoded value written to L2; larger values stay out of Redis (and a larger value
    /// found in Redis is treated as a miss without being decoded). Default 4 MiB.
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = n;
        self
    }

    /// Consecutive connectivity failures (timeouts, I/O errors) that open the L2 circuit
    /// breaker. Default 3.
    pub fn breaker_threshold(mut self, n: u32) -> Self {
        self.breaker_threshold = n;
        self
    }

    /// How long the open breaker skips L2 before a single probe is let through. Default 500 ms.
    pub fn breaker_cooldown(mut self, d: Duration) -> Self {
        self.breaker_cooldown = d;
        self
    }

    /// Lifetime of the fill lease a process takes in Redis before computing a missing key
    /// (cross-process stampede protection, see `docs/coherence.md`). A body that runs longer than this loses
    /// its lease and does not fill Redis. Default 10 s.
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = d;
        self
    }

    /// How long a process that finds another process's lease waits for that fill before
    /// computing itself (without filling). At most `lease_ttl`. Default 3 s.
    pub fn lease_wait(mut self, d: Duration) -> Self {
        self.lease_wait = d;
        self
    }

    /// Cap on the lifetime of L1 entries written while the invalidation subscription is down
    /// (Redis configured but unreachable): invalidations sent meanwhile are lost, so this bounds
    /// the staleness they can cause. Default 1 s.
    pub fn degraded_l1_ttl(mut self, d: Duration) -> Self {
        self.degraded_l1_ttl = d;
        self
    }

    /// Capacity of the queue between the invalidation subscriber and its handler. When it is
    /// full, the instance flushes its L1 instead of dropping a message. Default 4096.
    pub fn bus_queue(mut self, n: usize) -> Self {
        self.bus_queue = n;
        self
    }

    /// How the first read of a flight takes the fill lease. Default [`LeaseRead::Auto`]: chosen
    /// from the server's version at each connection; force a form for servers that report a
    /// version they do not implement.
    pub fn lease_read(mut self, form: LeaseRead) -> Self {
        self.lease_read = form;
        self
    }

    /// Default TTL jitter in percent (0–100) for functions without their own `jitter`: each
    /// value written gets a lifetime shortened by a random 0 to `percent` % of its TTL, so that
    /// entries written together (a cold start) do not all expire in the same second. Default 0.
    pub fn ttl_jitter(mut self, percent: u8) -> Self {
        self.ttl_jitter = percent;
        self
    }

    /// Fail-safe (stale-if-error) for every function without its own `fail_safe`: each value is
    /// kept `d` past its TTL, in L1 and in Redis, as a stale fallback. When the body then
    /// returns `Err`, panics or passes its hard timeout, callers get the stale value, which is
    /// re-cached for [`fail_safe_throttle`](Self::fail_safe_throttle). A value removed by an
    /// invalidation is never served stale. Default: off.
    pub fn fail_safe(mut self, d: Duration) -> Self {
        self.fail_safe = Some(d);
        self
    }

    /// How long a stale value served by fail-safe is re-cached (the body is not called again for
    /// that key meanwhile). Default 30 s.
    pub fn fail_safe_throttle(mut self, d: Duration) -> Self {
        self.fail_safe_throttle = d;
        self
    }

    /// Soft timeout of the body for every function without its own: past it, a caller that has
    /// a stale value (fail-safe) gets it at once, and the body finishes in the background and
    /// stores its result. Without a stale value the caller keeps waiting. Default: none.
    pub fn soft_timeout(mut self, d: Duration) -> Self {
        self.soft_timeout = Some(d);
        self
    }

    /// Hard timeout of the body for every function without its own: past it, a caller gets the
    /// stale value if there is one, else [`Error::Timeout`] (for functions whose error type
    /// converts from [`Error`]; others keep waiting). The body still finishes in the
    /// background and stores its result. Default: none.
    pub fn hard_timeout(mut self, d: Duration) -> Self {
        self.hard_timeout = Some(d);
        self
    }

    /// Writes to Redis leave the caller's path for every function without its own setting: the
    /// caller returns once the value is computed, and the fill is queued (bounded by
    /// [`background_queue`](Self::background_queue); what does not fit is dropped and counted).
    /// A queued fill is still refused when an invalidation came in between. Default: off.
    pub fn background_writes(mut self, on: bool) -> Self {
        self.background_writes = on;
        self
    }

    /// Capacity of the background write queue. Default 1024.
    pub fn background_queue(mut self, n: usize) -> Self {
        self.background_queue = n;
        self
    }

    /// Bound on the bytes of each memoized function's L1 (the encoded size of its values),
    /// beside [`l1_max_entries`](Self::l1_max_entries). Default: none.
    pub fn l1_max_bytes(mut self, n: u64) -> Self {
        self.l1_max_bytes = Some(n);
        self
    }

    /// Longest time [`Runtime::shutdown`] waits for queued writes to land and leases to be
    /// released. Default 5 s.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Server-assisted invalidation (default off): a connection of its own asks Redis to
    /// report every write of a key of the namespace (`CLIENT TRACKING ON BCAST PREFIX
    /// {namespace}:` over RESP3), so that a `DEL`, a `SET` or an expiry by another program
    /// evicts the key from L1 in every instance, without an `invalidate_*` call. Losing that
    /// connection starts a new L1 epoch, like a gap on the bus. Costs: the runtime's own writes
    /// come back too (a computed value reaches L1 on the next call, read from Redis), and
    /// tracking does not separate databases (a write of the same key name in another database
    /// evicts too: never a wrong value). One Redis server only (`redis_url`); see
    /// `docs/coherence.md`.
    pub fn client_tracking(mut self, on: bool) -> Self {
        self.client_tracking = on;
        self
    }

    /// Checks every value and returns the validated configuration.
    pub fn validate(mut self) -> Result<Config> {
        if let Some((field, reason)) = self.deferred {
            return Err(Error::config(field, reason));
        }
        validate_namespace(&self.namespace)?;
        let redis = match (self.redis_url.take(), self.redis_cluster.take()) {
            (None, None) => None,
            (Some(url), None) => Some(RedisTarget::parse(url, &self.tls)?),
            (None, Some(seeds)) => Some(RedisTarget::cluster(seeds, &self.tls)?),
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "redis_cluster",
                    "give either redis_url (one server) or redis_cluster (seed nodes), not both",
                ));
            }
        };
        if redis.is_none() && self.tls.is_set() {
            return Err(Error::config(
                "tls_ca",
                "TLS settings need a rediss:// redis_url or redis_cluster",
            ));
        }
        let cluster = redis.as_ref().is_some_and(|r| r.cluster.is_some());
        if self.cluster_bus.is_some() && !cluster {
            return Err(Error::config(
                "cluster_bus",
                "applies to a Redis Cluster (redis_cluster) only",
            ));
        }
        if self.replica_reads && !cluster {
            return Err(Error::config(
                "replica_reads",
                "applies to a Redis Cluster (redis_cluster) only",
            ));
        }
        if self.client_tracking && redis.is_none() {
            return Err(Error::config(
                "client_tracking",
                "needs Redis (redis_url): it reports writes made in Redis",
            ));
        }
        if self.client_tracking && cluster {
            return Err(Error::config(
                "client_tracking",
                "is not supported on a Redis Cluster (redis_cluster): use one Redis server (redis_url)",
            ));
        }
        positive(self.l1_max_entries, "l1_max_entries")?;
        if let Some(ttl) = self.l1_max_ttl {
            duration(ttl, "l1_max_ttl")?;
        }
        duration(self.l2_timeout, "l2_timeout")?;
        duration(self.connect_timeout, "connect_timeout")?;
        positive(u64::from(self.promotion_frequency), "promotion_frequency")?;
        positive(self.max_value_bytes as u64, "max_value_bytes")?;
        positive(u64::from(self.breaker_threshold), "breaker_threshold")?;
        duration(self.breaker_cooldown, "breaker_cooldown")?;
        duration(self.lease_ttl, "lease_ttl")?;
        duration(self.lease_wait, "lease_wait")?;
        if self.lease_wait > self.lease_ttl {
            return Err(Error::config("lease_wait", "must not exceed lease_ttl"));
        }
        duration(self.degraded_l1_ttl, "degraded_l1_ttl")?;
        positive(self.bus_queue as u64, "bus_queue")?;
        if self.bus_queue > MAX_BUS_QUEUE {
            return Err(Error::config("bus_queue", "must be at most 1048576"));
        }
        if self.ttl_jitter > 100 {
            return Err(Error::config("ttl_jitter", "is a percentage: at most 100"));
        }
        if let Some(d) = self.fail_safe {
            duration(d, "fail_safe")?;
        }
        duration(self.fail_safe_throttle, "fail_safe_throttle")?;
        if let Some(d) = self.soft_timeout {
            duration(d, "soft_timeout")?;
        }
        if let Some(d) = self.hard_timeout {
            duration(d, "hard_timeout")?;
            if self.soft_timeout.is_some_and(|s| s > d) {
                return Err(Error::config(
                    "hard_timeout",
                    "must not be shorter than soft_timeout",
                ));
            }
        }
        positive(self.background_queue as u64, "background_queue")?;
        if self.background_queue > MAX_BUS_QUEUE {
            return Err(Error::config("background_queue", "must be at most 1048576"));
        }
        if let Some(n) = self.l1_max_bytes {
            positive(n, "l1_max_bytes")?;
        }
        duration(self.shutdown_timeout, "shutdown_timeout")?;
        Ok(self.into_config(redis))
    }

    /// The configuration without validation; `validate` checks first, and the defaults are
    /// valid by construction (unit-tested).
    fn into_config(self, redis: Option<RedisTarget>) -> Config {
        Config {
            namespace: self.namespace,
            redis,
            cluster_bus: self.cluster_bus.unwrap_or_default(),
            replica_reads: self.replica_reads,
            l1_max_entries: self.l1_max_entries,
            l1_max_ttl: self.l1_max_ttl,
            l2_timeout: self.l2_timeout,
            connect_timeout: self.connect_timeout,
            promotion_frequency: self.promotion_frequency,
            max_value_bytes: self.max_value_bytes,
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: self.breaker_cooldown,
            lease_ttl: self.lease_ttl,
            lease_wait: self.lease_wait,
            degraded_l1_ttl: self.degraded_l1_ttl,
            bus_queue: self.bus_queue,
            lease_read: self.lease_read,
            ttl_jitter: self.ttl_jitter,
            fail_safe: self.fail_safe,
            fail_safe_throttle: self.fail_safe_throttle,
            soft_timeout: self.soft_timeout,
            hard_timeout: self.hard_timeout,
            background_writes: self.background_writes,
            background_queue: self.background_queue,
            l1_max_bytes: self.l1_max_bytes,
            shutdown_timeout: self.shutdown_timeout,
            client_tracking: self.client_tracking,
        }
    }

    /// The default configuration (embedded mode), for the lazily created default runtime.
    pub(crate) fn defaults() -> Config {
        Builder::default().into_config(None)
    }

    /// Builds a runtime without installing it globally.
    ///
    /// With a Redis URL: when Redis answers, this returns once the connection is up; a wrong
    /// password or an ACL refusal is [`Error::Auth`]. When Redis is merely unreachable, the
    /// runtime starts degraded (L1 only, a WARN is logged) and connects in the background as
    /// soon as Redis appears. Must be called inside a Tokio runtime when a Redis URL is set.
    pub async fn build(self) -> Result<Runtime> {
        Runtime::from_config(self.validate()?).await
    }

    /// Builds the runtime and installs it as the process-wide runtime used by memoized calls
    /// outside any [`Runtime::scope`]. A second install is [`Error::AlreadyInstalled`]; a lazily
    /// created embedded default (see [`Runtime::current`]) does not count as an install.
    pub async fn install(self) -> Result<Runtime> {
        crate::runtime::install(self).await
    }
}

/// The validated configuration of a [`Runtime`].
#[derive(Clone)]
pub struct Config {
    pub(crate) namespace: String,
    pub(crate) redis: Option<RedisTarget>,
    pub(crate) cluster_bus: ClusterBus,
    pub(crate) replica_reads: bool,
    pub(crate) l1_max_entries: u64,
    pub(crate) l1_max_ttl: Option<Duration>,
    pub(crate) l2_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) promotion_frequency: u32,
    pub(crate) max_value_bytes: usize,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) lease_wait: Duration,
    pub(crate) degraded_l1_ttl: Duration,
    pub(crate) bus_queue: usize,
    pub(crate) lease_read: LeaseRead,
    pub(crate) ttl_jitter: u8,
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) background_writes: bool,
    pub(crate) background_queue: usize,
    pub(crate) l1_max_bytes: Option<u64>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) client_tracking: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("namespace", &self.namespace)
            .field("redis", &self.redis.as_ref().map(|r| r.addr.as_str()))
            .field("l1_max_entries", &self.l1_max_entries)
            .field("l1_max_ttl", &self.l1_max_ttl)
            .field("l2_timeout", &self.l2_timeout)
            .field("promotion_frequency", &self.promotion_frequency)
            .field("max_value_bytes", &self.max_value_bytes)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The key prefix.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// `host:port` of the configured Redis, `None` in embedded mode.
    pub fn redis_addr(&self) -> Option<&str> {
        self.redis.as_ref().map(|r| r.addr.as_str())
    }
    /// How invalidations travel on a Redis Cluster.
    pub fn cluster_bus(&self) -> ClusterBus {
        self.cluster_bus
    }
    /// Whether L2 reads try the cluster's replicas first.
    pub fn replica_reads(&self) -> bool {
        self.replica_reads
    }
    /// Bound on L1 entries.
    pub fn l1_max_entries(&self) -> u64 {
        self.l1_max_entries
    }
    /// Cap on L1 entry lifetime, if any.
    pub fn l1_max_ttl(&self) -> Option<Duration> {
        self.l1_max_ttl
    }
    /// Time box of one L2 operation.
    pub fn l2_timeout(&self) -> Duration {
        self.l2_timeout
    }
    /// Runtime-wide promotion frequency (1-in-N).
    pub fn promotion_frequency(&self) -> u32 {
        self.promotion_frequency
    }
    /// Largest encoded value kept in L2.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
    /// Lifetime of a fill lease.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }
    /// Longest wait for another process's lease.
    pub fn lease_wait(&self) -> Duration {
        self.lease_wait
    }
    /// Default TTL jitter in percent.
    pub fn ttl_jitter(&self) -> u8 {
        self.ttl_jitter
    }
    /// Default fail-safe duration, if on.
    pub fn fail_safe(&self) -> Option<Duration> {
        self.fail_safe
    }
    /// Fail-safe throttle.
    pub fn fail_safe_throttle(&self) -> Duration {
        self.fail_safe_throttle
    }
    /// Default soft timeout of bodies.
    pub fn soft_timeout(&self) -> Option<Duration> {
        self.soft_timeout
    }
    /// Default hard timeout of bodies.
    pub fn hard_timeout(&self) -> Option<Duration> {
        self.hard_timeout
    }
    /// Whether writes to Redis are queued by default.
    pub fn background_writes(&self) -> bool {
        self.background_writes
    }
    /// Whether client tracking (server-assisted invalidation) is on.
    pub fn client_tracking(&self) -> bool {
        self.client_tracking
    }
    /// Bound on the bytes of each function's L1, if any.
    pub fn l1_max_bytes(&self) -> Option<u64> {
        self.l1_max_bytes
    }
}

/// A parsed Redis address; keeps the client, never prints the password.
#[derive(Clone)]
pub(crate) struct RedisTarget {
    pub(crate) client: redis::Client,
    pub(crate) addr: String,
    /// The database index (part of the invalidation channel's name: Pub/Sub is not scoped
    /// by database).
    pub(crate) db: i64,
    /// The seed nodes of a Redis Cluster (`client` is the first); `None`: one server.
    pub(crate) cluster: Option<Vec<redis::Client>>,
    /// The TLS settings the clients were built with (a cluster client needs them again for
    /// the nodes it discovers).
    pub(crate) tls: TlsSettings,
}

impl RedisTarget {
    fn parse(url: String, tls: &TlsSettings) -> Result<Self> {
        let client = open_client(&url, "redis_url", tls)?;
        Ok(RedisTarget {
            addr: redacted_addr(&url),
            db: client.get_connection_info().redis_settings().db(),
            client,
            cluster: None,
            tls: tls.clone(),
        })
    }

    fn cluster(seeds: Vec<String>, tls: &TlsSettings) -> Result<Self> {
        let mut clients = Vec::new();
        for url in &seeds {
            let client = open_client(url, "redis_cluster", tls)?;
            if client.get_connection_info().redis_settings().db() != 0 {
                return Err(Error::config(
                    "redis_cluster",
                    format!(
                        "{}: a Redis Cluster has only database 0",
                        redacted_addr(url)
                    ),
                ));
            }
            clients.push(client);
        }
        let Some(first) = clients.first().cloned() else {
            return Err(Error::config(
                "redis_cluster",
                "needs at least one seed node",
            ));
        };
        Ok(RedisTarget {
            addr: format!("cluster {}", redacted_addr(&seeds[0])),
            db: 0,
            client: first,
            cluster: Some(clients),
            tls: tls.clone(),
        })
    }
}

/// TLS settings for `rediss://` URLs (see [`Builder::tls_ca_pem`]).
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    ca: Option<Vec<u8>>,
    /// Certificate and private key, PEM.
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsSettings {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// redis-rs's form of the settings, when any is set.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if !self.is_set() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        })
    }
}

impl TlsSettings {
    /// A cluster client builder with these settings (for the nodes it discovers: the seeds'
    /// clients carry them already).
    pub(crate) fn apply(
        &self,
        builder: redis::cluster::ClusterClientBuilder,
    ) -> redis::cluster::ClusterClientBuilder {
        #[cfg(feature = "tls")]
        if let Some(certs) = self.certificates() {
            return builder.certs(certs);
        }
        builder
    }
}

/// A client for `url` (the option `field`), with the TLS settings for a `rediss://` URL.
fn open_client(url: &str, field: &'static str, tls: &TlsSettings) -> Result<redis::Client> {
    // The URL may carry a password: report only what redis-rs says about its shape.
    let unusable = |e: redis::RedisError| {
        Error::config(
            field,
            format!(
                "{} is not a usable Redis URL ({})",
                redacted_addr(url),
                e.kind_str()
            ),
        )
    };
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    let secure = scheme.eq_ignore_ascii_case("rediss");
    if !secure {
        if tls.is_set() {
            return Err(Error::config(
                "tls_ca",
                format!(
                    "TLS settings are given but {} is not a rediss:// URL",
                    redacted_addr(url)
                ),
            ));
        }
        return redis::Client::open(url).map_err(unusable);
    }
    if url.contains("#insecure") {
        return Err(Error::config(
            field,
            "`#insecure` (TLS without certificate checks) is not supported: give the server's CA with tls_ca_pem",
        ));
    }
    #[cfg(feature = "tls")]
    {
        // rustls needs a process-wide crypto provider; another part of the program may have
        // installed one already (then that one is used).
        let _ = rustls::crypto::ring::default_provider().install_default();
        match tls.certificates() {
            Some(certs) => redis::Client::build_with_tls(url, certs).map_err(|e| {
                Error::config(
                    "tls_ca",
                    format!(
                        "the TLS settings for {} are not usable: {}",
                        redacted_addr(url),
                        crate::l2::describe(&e)
                    ),
                )
            }),
            None => redis::Client::open(url).map_err(unusable),
        }
    }
    #[cfg(not(feature = "tls"))]
    {
        Err(Error::config(
            field,
            "rediss:// (TLS) needs the `tls` feature of tiered",
        ))
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}
impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

/// `host:port` of a Redis URL, without scheme, user or password.
pub(crate) fn redacted_addr(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[..end].to_owned()
}

fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > 64 {
        return Err(Error::config(
            "namespace",
            "must be 1 to 64 characters long",
        ));
    }
    if let Some(c) = ns
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(Error::config(
            "namespace",
            format!("character {c:?} is not allowed (use ASCII letters, digits, '-', '_', '.')"),
        ));
    }
    Ok(())
}

fn positive(v: u64, field: &'static str) -> Result<()> {
    if v == 0 {
        return Err(Error::config(field, "must be greater than zero"));
    }
    Ok(())
}

fn duration(d: Duration, field: &'static str) -> Result<()> {
    if d.is_zero() {
        return Err(Error::config(field, "must be greater than zero"));
    }
    if d > MAX_DURATION {
        return Err(Error::config(field, "must be at most 365 days"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(b: Builder) -> &'static str {
        match b.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn every_invalid_value_names_its_field() {
        assert_eq!(field_of(Builder::new().l1_max_entries(0)), "l1_max_entries");
        assert_eq!(
            field_of(Builder::new().l2_timeout(Duration::ZERO)),
            "l2_timeout"
        );
        assert_eq!(
            field_of(Builder::new().connect_timeout(Duration::ZERO)),
            "connect_timeout"
        );
        assert_eq!(
            field_of(Builder::new().l1_max_ttl(Duration::ZERO)),
            "l1_max_ttl"
        );
        assert_eq!(
            field_of(Builder::new().promotion_frequency(0)),
            "promotion_frequency"
        );
        assert_eq!(
            field_of(Builder::new().max_value_bytes(0)),
            "max_value_bytes"
        );
        assert_eq!(
            field_of(Builder::new().breaker_threshold(0)),
            "breaker_threshold"
        );
        assert_eq!(
            field_of(Builder::new().breaker_cooldown(Duration::ZERO)),
            "breaker_cooldown"
        );
        for (field, b) in [
            ("l1_max_ttl", Builder::new().l1_max_ttl(Duration::MAX)),
            ("l2_timeout", Builder::new().l2_timeout(Duration::MAX)),
            (
                "connect_timeout",
                Builder::new().connect_timeout(Duration::MAX),
            ),
            (
                "breaker_cooldown",
                Builder::new().breaker_cooldown(Duration::MAX),
            ),
            ("lease_ttl", Builder::new().lease_ttl(Duration::MAX)),
            (
                "degraded_l1_ttl",
                Builder::new().degraded_l1_ttl(Duration::MAX),
            ),
        ] {
            assert_eq!(field_of(b), field, "Duration::MAX");
        }
        assert_eq!(
            field_of(
                Builder::new()
                    .lease_wait(Duration::MAX)
                    .lease_ttl(Duration::MAX)
            ),
            "lease_ttl"
        );
        assert_eq!(field_of(Builder::new().bus_queue(usize::MAX)), "bus_queue");
        // Cluster-only options without a cluster.
        assert_eq!(
            field_of(Builder::new().cluster_bus(ClusterBus::Classic)),
            "cluster_bus"
        );
        assert_eq!(
            field_of(
                Builder::new()
                    .redis_url("redis://127.0.0.1:7000")
                    .replica_reads(true)
            ),
            "replica_reads"
        );
        assert_eq!(
            field_of(Builder::new().fail_safe(Duration::ZERO)),
            "fail_safe"
        );
        assert_eq!(
            field_of(Builder::new().fail_safe_throttle(Duration::MAX)),
            "fail_safe_throttle"
        );
        assert_eq!(
            field_of(Builder::new().soft_timeout(Duration::ZERO)),
            "soft_timeout"
        );
        assert_eq!(
            field_of(
                Builder::new()
                    .soft_timeout(Duration::from_secs(2))
                    .hard_timeout(Duration::from_secs(1))
            ),
            "hard_timeout"
        );
        assert_eq!(
            field_of(Builder::new().background_queue(0)),
            "background_queue"
        );
        assert_eq!(field_of(Builder::new().l1_max_bytes(0)), "l1_max_bytes");
        assert_eq!(
            field_of(Builder::new().shutdown_timeout(Duration::ZERO)),
            "shutdown_timeout"
        );
        assert_eq!(field_of(Builder::new().namespace("")), "namespace");
        assert_eq!(field_of(Builder::new().namespace("a:b")), "namespace");
        assert_eq!(
            field_of(Builder::new().namespace("x".repeat(65))),
            "namespace"
        );
        assert_eq!(
            field_of(Builder::new().redis_url("http://nope")),
            "redis_url"
        );
        assert_eq!(field_of(Builder::new().redis_url("not a url")), "redis_url");
        assert_eq!(
            field_of(Builder::new().client_tracking(true)),
            "client_tracking",
            "tracking needs Redis"
        );
        assert_eq!(
            field_of(
                Builder::new()
                    .redis_cluster(["redis://127.0.0.1:7000"])
                    .client_tracking(true)
            ),
            "client_tracking",
            "tracking is for one server"
        );
        assert_eq!(
            field_of(Builder::new().redis_cluster(Vec::<String>::new())),
            "redis_cluster"
        );
        assert_eq!(
            field_of(Builder::new().redis_cluster(["redis://127.0.0.1:7000/2"])),
            "redis_cluster",
            "a cluster has only database 0"
        );
        assert_eq!(
            field_of(Builder::new().redis_cluster(["http://nope"])),
            "redis_cluster"
        );
        assert_eq!(
            field_of(
                Builder::new()
                    .redis_url("redis://127.0.0.1:6390")
                    .redis_cluster(["redis://127.0.0.1:7000"])
            ),
            "redis_cluster",
            "one server or a cluster, not both"
        );
    }

    #[test]
    fn a_bad_seed_node_error_never_echoes_the_password() {
        let err = Builder::new()
            .redis_cluster(["redis://user:S3cr3t-canary@127.0.0.1:7000/3"])
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("127.0.0.1:7000"), "{err}");
        assert!(!err.contains("S3cr3t-canary"), "{err}");
    }

    #[test]
    fn a_malformed_url_error_never_echoes_the_password() {
        let err = Builder::new()
            .redis_url("redis://user:S3cr3t-canary@[::1:bad/0")
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.is_empty());
        assert!(!err.contains("S3cr3t-canary"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let b = Builder::new().redis_url("redis://user:S3cr3t-canary@127.0.0.1:6390/2");
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("S3cr3t-canary"), "{dbg}");
        assert!(dbg.contains("127.0.0.1:6390"), "{dbg}");
        let cfg = b.validate().map(|c| format!("{c:?}")).unwrap_or_default();
        assert!(
            !cfg.contains("S3cr3t-canary") && cfg.contains("127.0.0.1:6390"),
            "{cfg}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        let validated = Builder::new().validate().map(|c| format!("{c:?}"));
        assert_eq!(validated.ok(), Some(format!("{:?}", Builder::defaults())));
        let c = Builder::new().validate().map_err(|e| e.to_string());
        let c = c.as_ref().map(|c| (c.namespace(), c.promotion_frequency()));
        assert_eq!(c, Ok(("tiered", 10)));
    }
}
