//! L2: Redis behind a time box and a circuit breaker.
//!
//! Every operation is bounded by `l2_timeout` and admitted by the [`Breaker`]; callers never
//! wait for a reconnect. The backend is an enum so that Redis Cluster can be added as a second
//! variant without touching callers.

pub(crate) mod cluster;
mod single;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::breaker::{Admission, Breaker};
use crate::config::{Config, RedisTarget};
use crate::error::Error;
use crate::stats::{Counters, SiteTable};

pub(crate) use cluster::key_slot;
use redis::FromRedisValue as _;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
pub(crate) use single::Single;

/// Why an L2 operation produced no result.
#[derive(Debug)]
pub(crate) enum L2Error {
    /// Not attempted: not connected, or breaker open.
    Skipped(&'static str),
    /// Exceeded `l2_timeout`.
    Timeout,
    /// Connection or server error.
    Failed(redis::RedisError),
}

impl L2Error {
    pub(crate) fn count(&self, c: &Counters) {
        match self {
            L2Error::Skipped(_) => Counters::bump(&c.l2_skips),
            L2Error::Timeout => Counters::bump(&c.l2_timeouts),
            L2Error::Failed(_) => Counters::bump(&c.l2_errors),
        }
    }

    pub(crate) fn into_error(self, op: &'static str, timeout: Duration) -> Error {
        match self {
            L2Error::Skipped(reason) => Error::L2Unavailable { op, reason },
            L2Error::Timeout => Error::L2Timeout { op, timeout },
            L2Error::Failed(e) => Error::L2 {
                op,
                detail: describe(&e),
            },
        }
    }
}

/// The server error codes an error carries: its own, or those of the commands of a pipeline
/// that failed (redis-rs reports a pipeline's server errors together).
/// The error codes of a reply: its own, and those of the commands inside a failed pipeline
/// or an aborted transaction (`EXECABORT` carries the refusals that caused it).
fn codes(e: &redis::RedisError) -> Vec<String> {
    let mut codes: Vec<String> = e.code().map(str::to_owned).into_iter().collect();
    if let Some(errors) = e.clone().into_server_errors() {
        codes.extend(errors.iter().map(|(_, err)| err.code().to_owned()));
    }
    codes
}

pub(crate) fn describe(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        _ => match e.clone().into_server_errors() {
            Some(errors) if !errors.is_empty() => errors
                .iter()
                .map(|(_, err)| match err.details() {
                    Some(detail) => format!("{} {detail}", err.code()),
                    None => err.code().to_owned(),
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => format!("{:?}", e.kind()),
        },
    }
}

/// Errors that say the link (or the credentials) are broken, as opposed to one refused command
/// (`OOM`, `READONLY`, or `NOPERM` for one key or channel: the link works for the others).
pub(crate) fn is_connectivity(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || (is_auth(e) && !is_noperm(e))
        || is_cluster_unavailable(e)
}

/// A cluster that cannot serve the key's slot now: its master is unreachable (the client ran
/// out of redirects or connections to it), down, or the cluster is failing over. Like a broken
/// link, it opens that master's breaker.
fn is_cluster_unavailable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        e.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
            )
    )
}

fn is_noperm(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || codes(e).iter().any(|c| c == "NOPERM")
}

pub(crate) fn is_auth(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed
            | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || codes(e)
        .iter()
        .any(|c| matches!(c.as_str(), "WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// A failed TLS handshake (an unknown certificate authority, a certificate for another name,
/// a refused client certificate, a server that does not speak TLS): a configuration error at
/// start-up, not an unreachable server.
pub(crate) fn is_tls_failure(e: &redis::RedisError) -> bool {
    if !e.is_io_error() {
        return false;
    }
    let text = tls_detail(e).to_ascii_lowercase();
    [
        "certificate",
        "handshake",
        "unknownissuer",
        "notvalidforname",
        "corrupt message",
        "alert",
        "tls",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// What a failed TLS handshake says (rustls's words: `invalid peer certificate: UnknownIssuer`,
/// `received fatal alert: CertificateRequired` …; they never hold a password).
pub(crate) fn tls_detail(e: &redis::RedisError) -> String {
    e.detail()
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string())
}

/// A command refused because Redis takes no writes now (`OOM`, `READONLY`): the link is fine,
/// and reads still work.
fn is_write_refused(e: &redis::RedisError) -> bool {
    codes(e)
        .iter()
        .any(|c| matches!(c.as_str(), "OOM" | "READONLY"))
}

/// What the first round trip of a flight found (see [`L2::read`]).
/// `SET … NX … GET` refused as a syntax error: a server older than 7.0.
fn is_syntax_error(e: &redis::RedisError) -> bool {
    describe(e).contains("syntax error")
}

/// What [`L2::exec_req`] sends.
#[derive(Clone, Copy)]
pub(crate) enum Request<'a> {
    Pipe(&'a redis::Pipeline),
    Cmd(&'a redis::Cmd),
    /// A pipeline sent as a whole to the master of this slot (a cluster's `DEL` of a key and
    /// the invalidation's `PUBLISH`, which any node takes: one request, in order). On one
    /// server, a plain pipeline.
    AtSlot(&'a redis::Pipeline, u16),
}

/// The form of a flight's read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `SET key lease NX GET PX ttl`.
    SetNxGet,
    /// `MULTI`, `GET key`, `SET key lease NX PX ttl`, `EXEC`.
    Pipelined,
    /// `GET key` (Redis refuses writes).
    Get,
}

/// The next reply of a pipeline, parsed.
fn next<T: redis::FromRedisValue>(
    replies: &mut impl Iterator<Item = redis::Value>,
) -> Result<T, L2Error> {
    T::from_redis_value(replies.next().unwrap_or(redis::Value::Nil))
        .map_err(|e| L2Error::Failed(e.into()))
}

pub(crate) struct ReadReply {
    /// The bytes under the key before our `SET NX` (`None`: the key was empty).
    pub(crate) value: Option<Vec<u8>>,
    /// The key was empty and the lease is now ours (`false` for a read without lease).
    pub(crate) leased: bool,
    /// The key's remaining lifetime in ms (`-1`: none, `-2`: no key), when asked for.
    pub(crate) pttl: Option<i64>,
    /// The current generations, when asked for.
    pub(crate) generations: Option<crate::codec::Stamp>,
}

/// The key a request is routed by on a cluster: the first key of its first command (`EVAL`'s
/// first key; a `PUBLISH`'s channel, which is routed by its slot too).
pub(crate) fn route_key(req: Request<'_>) -> Option<Vec<u8>> {
    let cmd = match req {
        Request::Cmd(c) => c,
        Request::Pipe(p) => p.cmd_iter().next()?,
        Request::AtSlot(..) => return None,
    };
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let at = if name == b"EVAL" || name == b"EVALSHA" {
        let keys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
        if keys == 0 {
            return None;
        }
        3
    } else {
        1
    };
    args.get(at).map(|k| k.to_vec())
}

/// The start-up permission probe: every command L2 uses, on the runtime's own probe keys inside
/// the namespace, so that an ACL user that may connect but not use our keys or commands is a
/// configuration error at `build()`, not a silent miss on every call later. Two requests (the
/// probe key's commands, then the generations hash's), each on one key, so that on a cluster
/// each touches one slot. Returns the probe key (for the error message) and the requests.
fn permission_probes(namespace: &str, pipelined: bool) -> (String, [redis::Pipeline; 2]) {
    // The runtime's own keys, where no rendered key can land.
    let key = crate::key::internal(namespace, "probe");
    let hash = crate::key::internal(namespace, "probe-gen");
    let mut p = redis::pipe();
    // The read of a flight, the fill and release scripts (GET, SET, DEL inside).
    if pipelined {
        p.cmd("GET").arg(&key).ignore();
        p.cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(1000)
            .ignore();
    } else {
        p.cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(1000)
            .ignore();
    }
    p.cmd("PTTL").arg(&key).ignore();
    p.cmd("EVAL")
        .arg("redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], '1', 'PX', 1000) redis.call('DEL', KEYS[1]) return 0")
        .arg(1)
        .arg(&key)
        .ignore();
    p.cmd("DEL").arg(&key).ignore();
    // Generations live in a hash.
    let mut g = redis::pipe();
    g.cmd("HINCRBY").arg(&hash).arg("*").arg(1).ignore();
    g.cmd("HMGET").arg(&hash).arg("*").arg("x").ignore();
    g.cmd("HGET").arg(&hash).arg("*").ignore();
    g.cmd("HSETNX").arg(&hash).arg("y").arg(0).ignore();
    g.cmd("EVAL")
        .arg("redis.call('HGET', KEYS[1], 'x') redis.call('HSET', KEYS[1], 'x', '1') return 0")
        .arg(1)
        .arg(&hash)
        .ignore();
    g.cmd("DEL").arg(&hash).ignore();
    (key, [p, g])
}

/// Runs the [`permission_probes`] on `conn` (each bounded by `timeout`).
pub(crate) async fn check_permissions<C: redis::aio::ConnectionLike + Clone>(
    conn: &C,
    namespace: &str,
    pipelined: bool,
    timeout: Duration,
    addr: &str,
) -> Result<(), Error> {
    let (key, probes) = permission_probes(namespace, pipelined);
    for p in &probes {
        let mut conn = conn.clone();
        let reply = tokio::time::timeout(timeout, p.query_async::<()>(&mut conn));
        judge_probe(reply.await, addr, &key)?;
    }
    Ok(())
}

/// The verdict on one permission probe's reply: a refused credential or permission is
/// [`Error::Auth`]; other refusals (e.g. `OOM`) are left to run time (logged); a timeout is
/// not a verdict.
fn judge_probe(
    reply: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>,
    addr: &str,
    key: &str,
) -> Result<(), Error> {
    match reply {
        Ok(Err(e)) if is_auth(&e) => Err(Error::Auth {
            addr: addr.to_owned(),
            detail: format!("permission check on `{key}` failed: {}", describe(&e)),
        }),
        Ok(Err(e)) => {
            tracing::warn!(redis = %addr, error = %describe(&e), "tiered: Redis refused the start-up probe write; continuing");
            Ok(())
        }
        Ok(Ok(())) | Err(_) => Ok(()),
    }
}

/// A duration as Redis milliseconds (at least 1).
/// Capped at ten years: Redis refuses expiry times that overflow its clock.
pub(crate) fn millis(d: Duration) -> u64 {
    let d = d.min(crate::config::MAX_DURATION * 10);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Deletes `KEYS[1]` only while it holds exactly `ARGV[1]`.
const DEL_IF_EQUAL: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

enum Backend {
    Single(Arc<Single>),
    Cluster(Arc<cluster::Cluster>),
}

pub(crate) struct L2 {
    backend: Backend,
    breaker: Arc<Breaker>,
    timeout: Duration,
    logs: crate::logs::Limiter,
    /// Until then, Redis is taken to refuse writes (`OOM` under `noeviction`, `READONLY` on a
    /// replica): reads skip the lease and use a plain `GET`.
    writes_refused_until: Mutex<Option<Instant>>,
    writes_ever_refused: AtomicBool,
    stats: Arc<SiteTable>,
    /// Invalidations go out with `SPUBLISH` (sharded Pub/Sub on a cluster).
    sharded_bus: bool,
}

/// How long reads stay read-only after Redis refused a write, before the lease is tried again.
const WRITES_REFUSED_FOR: Duration = Duration::from_secs(1);

impl L2 {
    /// Connects (bounded by `connect_timeout`) and starts the connection supervisor.
    /// Unreachable Redis → degraded start; refused credentials → `Err`.
    pub(crate) async fn start(
        target: &RedisTarget,
        config: &Config,
        stats: Arc<SiteTable>,
    ) -> Result<L2, Error> {
        let breaker = Arc::new(Breaker::new(
            config.breaker_threshold,
            config.breaker_cooldown,
            target.addr.clone(),
            stats.clone(),
        ));
        let backend = if target.cluster.is_some() {
            Backend::Cluster(cluster::Cluster::start(target, config, stats.clone()).await?)
        } else {
            Backend::Single(Single::start(target, config, breaker.clone(), stats.clone()).await?)
        };
        Ok(L2 {
            backend,
            breaker,
            timeout: config.l2_timeout,
            logs: crate::logs::Limiter::default(),
            writes_refused_until: Mutex::new(None),
            writes_ever_refused: AtomicBool::new(false),
            stats,
            sharded_bus: target.cluster.is_some()
                && config.cluster_bus == crate::config::ClusterBus::Sharded,
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Closes the connection for good (shutdown).
    pub(crate) fn close(&self) {
        match &self.backend {
            Backend::Single(s) => s.close(),
            Backend::Cluster(c) => c.close(),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        match &self.backend {
            Backend::Single(s) => s.is_connected(),
            Backend::Cluster(c) => c.is_connected(),
        }
    }

    /// Whether L2 is a Redis Cluster: a request must then touch one slot, so what touches
    /// several keys goes out as one request per key.
    fn sharded(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// A flight's first round trip: `SET key lease NX GET PX lease_ttl` (atomically the
    /// value if there is one, else the lease is ours) and, only when asked, `PTTL key`
    /// (`with_pttl`: to judge a lease found there) and `HMGET` of the namespace's and the
    /// function's generations (`generations` names the hash and the function). An L2 hit is
    /// one command: a value's remaining lifetime is in its envelope. With the pipelined form
    /// ([`LeaseRead::Pipelined`](crate::LeaseRead)) the value is read with `GET` and the lease
    /// taken with `SET … NX PX` in one transaction (`MULTI`/`EXEC`), in the same round trip.
    ///
    /// When Redis refuses writes (`OOM` under `noeviction`, `READONLY`), the `SET` is refused
    /// even for a key that holds a value: the read is then repeated as a plain `GET` (no lease,
    /// so a miss computes without filling), and later reads use that form directly for
    /// [`WRITES_REFUSED_FOR`] before the lease is tried again. L2 hits keep being served.
    pub(crate) async fn read(
        &self,
        key: &str,
        lease: &[u8],
        lease_ttl: Duration,
        with_pttl: bool,
        generations: Option<(&str, &str, &[String])>,
    ) -> Result<ReadReply, L2Error> {
        if self.writes_refused() {
            return self.read_only(key, with_pttl, generations).await;
        }
        let form = if self.pipelined() {
            Form::Pipelined
        } else {
            Form::SetNxGet
        };
        match self
            .read_with(key, form, lease, lease_ttl, with_pttl, generations)
            .await
        {
            Err(L2Error::Failed(e)) if is_write_refused(&e) => {
                self.writes_ever_refused.store(true, Ordering::Relaxed);
                *self
                    .writes_refused_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + WRITES_REFUSED_FOR);
                self.read_only(key, with_pttl, generations).await
            }
            Err(L2Error::Failed(e)) if form == Form::SetNxGet && is_syntax_error(&e) => {
                match &self.backend {
                    Backend::Single(s) => s.refuse_set_nx_get(),
                    Backend::Cluster(c) => c.refuse_set_nx_get(),
                }
                self.read_with(
                    key,
                    Form::Pipelined,
                    lease,
                    lease_ttl,
                    with_pttl,
                    generations,
                )
                .await
            }
            other => other,
        }
    }

    fn pipelined(&self) -> bool {
        match &self.backend {
            Backend::Single(s) => s.pipelined(),
            Backend::Cluster(c) => c.pipelined(),
        }
    }

    fn writes_refused(&self) -> bool {
        // Lock-free when Redis never refused a write (the hot path's case).
        self.writes_ever_refused.load(Ordering::Relaxed)
            && self
                .writes_refused_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|until| Instant::now() < until)
    }

    async fn read_only(
        &self,
        key: &str,
        with_pttl: bool,
        generations: Option<(&str, &str, &[String])>,
    ) -> Result<ReadReply, L2Error> {
        Counters::bump(&self.stats.runtime().l2_reads_without_lease);
        self.read_with(key, Form::Get, &[], Duration::ZERO, with_pttl, generations)
            .await
    }

    /// One round trip of the given form, then the optional `PTTL` and `HMGET`.
    async fn read_with(
        &self,
        key: &str,
        form: Form,
        lease: &[u8],
        lease_ttl: Duration,
        with_pttl: bool,
        generations: Option<(&str, &str, &[String])>,
    ) -> Result<ReadReply, L2Error> {
        // `SET key lease NX GET PX ttl`: the value, or the lease.
        let set_nx_get = || {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key)
                .arg(lease)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(millis(lease_ttl));
            cmd
        };
        if form == Form::SetNxGet && !with_pttl && generations.is_none() {
            // The hit path: one command, sent as such (no pipeline around it).
            let value: Option<Vec<u8>> = self.exec_req(Request::Cmd(&set_nx_get())).await?;
            return Ok(ReadReply {
                leased: value.is_none(),
                value,
                pttl: None,
                generations: None,
            });
        }
        let mut p = redis::pipe();
        match form {
            Form::SetNxGet => {
                p.add_command(set_nx_get());
            }
            Form::Pipelined => {
                // In a transaction: nothing can land between the `GET` and the `SET NX`.
                p.atomic();
                p.cmd("GET").arg(key);
                p.cmd("SET")
                    .arg(key)
                    .arg(lease)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(lease_ttl));
            }
            Form::Get => {
                p.cmd("GET").arg(key);
            }
        }
        if with_pttl {
            p.cmd("PTTL").arg(key);
        }
        // The generations live in another key: on a cluster, another slot, so another request,
        // sent at the same time.
        let mut apart = None;
        if let Some((hash, site, tags)) = generations {
            let into = if self.sharded() {
                apart.get_or_insert_with(redis::pipe)
            } else {
                &mut p
            };
            into.cmd("HMGET")
                .arg(hash)
                .arg(crate::coherence::generations::NAMESPACE_FIELD)
                .arg(site);
            for tag in tags {
                into.arg(crate::coherence::generations::tag_field(tag));
            }
        }
        let (replies, more): (Vec<redis::Value>, Vec<redis::Value>) = match &apart {
            Some(g) => {
                let (main, gens) = tokio::join!(self.exec(&p), self.exec(g));
                (main?, gens?)
            }
            None => (self.exec(&p).await?, Vec::new()),
        };
        let mut replies = replies.into_iter().chain(more);
        let value: Option<Vec<u8>> = next(&mut replies)?;
        let leased = match form {
            Form::SetNxGet => value.is_none(),
            Form::Pipelined => {
                let set: Option<redis::Value> = next(&mut replies)?;
                value.is_none() && set.is_some()
            }
            Form::Get => false,
        };
        let pttl = if with_pttl {
            Some(next::<i64>(&mut replies)?)
        } else {
            None
        };
        let generations = match generations {
            Some(_) => {
                let gens: Vec<Option<u64>> = next(&mut replies)?;
                let nth = |i: usize| gens.get(i).copied().flatten().unwrap_or(0);
                let tags: Vec<u64> = (2..gens.len()).map(nth).collect();
                Some(crate::codec::Stamp {
                    namespace: nth(0),
                    site: nth(1),
                    tags: crate::codec::TagGens::from_slice(&tags),
                })
            }
            None => None,
        };
        Ok(ReadReply {
            value,
            leased,
            pttl,
            generations,
        })
    }

    /// Replaces the lease `lease` under `key` with `value` (PX `ttl`), atomically, only while the
    /// lease is still there: an invalidation's `DEL` (or the lease's expiry) in between makes
    /// this a refused fill (`Ok(false)`).
    pub(crate) async fn fill(
        &self,
        key: &str,
        lease: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, L2Error> {
        const FILL: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
            redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end return 0";
        let mut p = redis::pipe();
        p.cmd("EVAL")
            .arg(FILL)
            .arg(1)
            .arg(key)
            .arg(lease)
            .arg(value)
            .arg(millis(ttl));
        let (filled,): (i64,) = self.exec(&p).await?;
        Ok(filled == 1)
    }

    /// `SET lock token NX PX ttl`: whether the lock is now ours.
    pub(crate) async fn try_lock(
        &self,
        lock: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<bool, L2Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(lock)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let reply: Option<redis::Value> = self.exec_req(Request::Cmd(&cmd)).await?;
        Ok(reply.is_some())
    }

    /// Writes `value` under `key` only while the key still holds the write identified by
    /// `tag` (its [`version_tag`](crate::codec::version_tag)): a refresh overwrites only the
    /// version it read, never one written since, nor a key an invalidation deleted. `ttl`
    /// `None` keeps the key's remaining lifetime (`KEEPTTL`). Then releases `lock` (ours) in
    /// the same round trip.
    pub(crate) async fn replace_version(
        &self,
        key: &str,
        tag: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        lock: Option<(&str, &[u8])>,
    ) -> Result<bool, L2Error> {
        const REPLACE: &str = "local v = redis.call('GET', KEYS[1]) \
            if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then \
              if ARGV[3] == 'KEEPTTL' then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') \
              else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end \
              return 1 end return 0";
        let mut p = redis::pipe();
        let eval = p
            .cmd("EVAL")
            .arg(REPLACE)
            .arg(1)
            .arg(key)
            .arg(tag)
            .arg(value);
        match ttl {
            Some(ttl) => eval.arg(millis(ttl)),
            None => eval.arg("KEEPTTL"),
        };
        if let Some((lock, token)) = lock {
            if self.sharded() {
                // Another slot: its own request, after the write.
                let (replaced,): (i64,) = self.exec(&p).await?;
                self.release_many(&[(lock, token)]).await?;
                return Ok(replaced == 1);
            }
            p.cmd("EVAL")
                .arg(DEL_IF_EQUAL)
                .arg(1)
                .arg(lock)
                .arg(token)
                .ignore();
        }
        let (replaced,): (i64,) = self.exec(&p).await?;
        Ok(replaced == 1)
    }

    /// Deletes each key only while it still holds exactly the given bytes (a lease of ours,
    /// or bytes judged foreign), in one round trip on one server.
    pub(crate) async fn release_many(&self, items: &[(&str, &[u8])]) -> Result<(), L2Error> {
        if items.is_empty() {
            return Ok(());
        }
        let release = |items: &[(&str, &[u8])]| {
            let mut p = redis::pipe();
            for (key, bytes) in items {
                p.cmd("EVAL")
                    .arg(DEL_IF_EQUAL)
                    .arg(1)
                    .arg(*key)
                    .arg(*bytes)
                    .ignore();
            }
            p
        };
        if !self.sharded() {
            return self.exec::<()>(&release(items)).await;
        }
        // On a cluster, one request per key (one slot each); the first error is reported.
        let mut first_error = Ok(());
        for item in items {
            if let Err(e) = self.exec::<()>(&release(std::slice::from_ref(item))).await
                && first_error.is_ok()
            {
                first_error = Err(e);
            }
        }
        first_error
    }

    /// `DEL` of `keys` then `PUBLISH channel message`, pipelined: one round trip, and the
    /// deletes are done before any receiver can act on the message.
    pub(crate) async fn del_and_publish(
        &self,
        keys: &[&str],
        channel: &str,
        message: &[u8],
    ) -> Result<(), L2Error> {
        if self.sharded_bus {
            // Each key's `DEL` on its master, then the `SPUBLISH` on the channel's master,
            // only after every delete's reply (requests to several nodes keep no order): no
            // instance re-reads an old value after the message.
            self.delete(keys).await?;
            let mut c = redis::cmd("SPUBLISH");
            c.arg(channel).arg(message);
            return self.exec_req::<()>(Request::Cmd(&c)).await;
        }
        if let (true, Some((last, others))) = (self.sharded(), keys.split_last()) {
            // One request per key's slot, and the message only after every delete (requests to
            // several nodes keep no order): no instance re-reads an old value after the
            // message. The last key's `DEL` and the `PUBLISH` go together to that key's master
            // (any node takes a classic `PUBLISH`), in order, in one request.
            for key in others {
                let mut p = redis::pipe();
                p.cmd("DEL").arg(*key).ignore();
                self.exec::<()>(&p).await?;
            }
            let mut p = redis::pipe();
            p.cmd("DEL").arg(*last).ignore();
            p.cmd("PUBLISH").arg(channel).arg(message).ignore();
            let slot = cluster::key_slot(last.as_bytes());
            return self.exec_req::<()>(Request::AtSlot(&p, slot)).await;
        }
        let mut p = redis::pipe();
        for key in keys {
            p.cmd("DEL").arg(*key).ignore();
        }
        p.cmd("PUBLISH").arg(channel).arg(message).ignore();
        self.exec::<()>(&p).await
    }

    /// Whether an invalidation's message goes out as a request of its own, after the
    /// deletes were answered ([`delete`](Self::delete) then [`publish`](Self::publish)): the
    /// sharded bus on a cluster, whose channel lives on another master than the keys.
    pub(crate) fn publishes_apart(&self) -> bool {
        self.sharded_bus
    }

    /// `DEL` of each key, one request per key (one slot each), in turn.
    pub(crate) async fn delete(&self, keys: &[&str]) -> Result<(), L2Error> {
        for key in keys {
            let mut p = redis::pipe();
            p.cmd("DEL").arg(*key).ignore();
            self.exec::<()>(&p).await?;
        }
        Ok(())
    }

    /// `PUBLISH channel message` (`SPUBLISH` with the sharded bus).
    pub(crate) async fn publish(&self, channel: &str, message: &[u8]) -> Result<(), L2Error> {
        self.del_and_publish(&[], channel, message).await
    }

    /// `HGET key field` of a counter (`None`: absent).
    pub(crate) async fn hget_counter(
        &self,
        key: &str,
        field: &str,
    ) -> Result<Option<u64>, L2Error> {
        let mut p = redis::pipe();
        p.cmd("HGET").arg(key).arg(field);
        let (n,): (Option<u64>,) = self.exec(&p).await?;
        Ok(n)
    }

    /// `HSETNX key field value`.
    pub(crate) async fn hinit(&self, key: &str, field: &str, value: u64) -> Result<(), L2Error> {
        let mut p = redis::pipe();
        p.cmd("HSETNX").arg(key).arg(field).arg(value).ignore();
        self.exec::<()>(&p).await
    }

    /// Raises the generation `field` of the hash `key` to the larger of its value plus one and
    /// `now_ms`, atomically; returns it. (Counting from the clock keeps generations growing
    /// even when the hash is lost: see `coherence::generations`.)
    pub(crate) async fn raise_generation(
        &self,
        key: &str,
        field: &str,
        now_ms: u64,
    ) -> Result<u64, L2Error> {
        const RAISE: &str = "local n = math.max((tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0) + 1, tonumber(ARGV[2])) \
            redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', n)) return n";
        let mut p = redis::pipe();
        p.cmd("EVAL")
            .arg(RAISE)
            .arg(1)
            .arg(key)
            .arg(field)
            .arg(now_ms);
        let (n,): (u64,) = self.exec(&p).await?;
        Ok(n)
    }

    /// `HINCRBY key field 1`: the new value.
    pub(crate) async fn hincr(&self, key: &str, field: &str) -> Result<u64, L2Error> {
        let mut p = redis::pipe();
        p.cmd("HINCRBY").arg(key).arg(field).arg(1);
        let (n,): (u64,) = self.exec(&p).await?;
        Ok(n)
    }

    async fn exec<T: redis::FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, L2Error> {
        self.exec_req(Request::Pipe(p)).await
    }

    /// One request (a pipeline, or a single command: cheaper through redis-rs) under the
    /// breaker and the time box.
    async fn exec_req<T: redis::FromRedisValue>(&self, req: Request<'_>) -> Result<T, L2Error> {
        // Not connected: the supervisor is reconnecting, and there is nothing to probe (a
        // probe skipped for want of a connection would only churn the breaker's state).
        if !self.is_connected() {
            return Err(L2Error::Skipped("not connected"));
        }
        // One breaker per master on a cluster: a dead master opens only its own.
        let breaker = match &self.backend {
            Backend::Single(_) => self.breaker.clone(),
            Backend::Cluster(c) => c.breaker_for(match req {
                Request::AtSlot(_, slot) => Some(slot),
                _ => route_key(req).map(|k| cluster::key_slot(&k)),
            }),
        };
        self.guarded(&breaker, self.run(req)).await
    }

    /// `GET key` on a replica of the key's master (`replica_reads`), under the replicas' own
    /// breaker and the time box. `Skipped` when replica reads are off or not connected, or no
    /// replica of that master is known.
    pub(crate) async fn replica_get(&self, key: &str) -> Result<Option<Vec<u8>>, L2Error> {
        let Backend::Cluster(c) = &self.backend else {
            return Err(L2Error::Skipped("no replicas"));
        };
        let Some((mut conn, breaker, host, port)) = c.replica_route(key.as_bytes()) else {
            return Err(L2Error::Skipped("no replica known"));
        };
        let mut get = redis::cmd("GET");
        get.arg(key);
        let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let read = async move {
            let reply = conn.route_command(get, to).await.map_err(L2Error::Failed)?;
            Option::<Vec<u8>>::from_redis_value(reply).map_err(|e| L2Error::Failed(e.into()))
        };
        self.guarded(&breaker, read).await
    }

    /// Circuit breakers open now (one server: 0 or 1; a cluster: per master, and the
    /// replicas').
    pub(crate) fn open_breakers(&self) -> usize {
        match &self.backend {
            Backend::Single(_) => usize::from(self.breaker.open_now()),
            Backend::Cluster(c) => c.open_breakers(),
        }
    }

    /// Whether reads try a replica first (`replica_reads` on a cluster).
    pub(crate) fn replica_reads(&self) -> bool {
        matches!(&self.backend, Backend::Cluster(c) if c.replica_reads())
    }

    /// Runs `op` under `breaker` and the time box, and tells the breaker how the link fared.
    async fn guarded<T>(
        &self,
        breaker: &Breaker,
        op: impl Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        let (admission, _) = breaker.admit();
        let permit = match admission {
            Admission::Reject => return Err(L2Error::Skipped("circuit breaker open")),
            Admission::Pass => None,
            Admission::Probe(p) => Some(p),
        };
        // A child span of the call's (TRACE, `tiered.l2`): one per request.
        let op = tracing::Instrument::instrument(op, tracing::trace_span!("tiered.l2"));
        #[cfg(feature = "metrics")]
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, op).await {
            Err(_) => Err(L2Error::Timeout),
            Ok(r) => r,
        };
        #[cfg(feature = "metrics")]
        metrics::histogram!("tiered_l2_request_seconds", "namespace" => self.stats.namespace().to_owned())
            .record(started.elapsed().as_secs_f64());
        let link_ok = match &result {
            Ok(_) => Some(true),
            Err(L2Error::Timeout) => Some(false),
            Err(L2Error::Failed(e)) if is_connectivity(e) => Some(false),
            Err(L2Error::Failed(e)) => {
                self.warn_server_error(e);
                Some(true)
            }
            // Not connected: the supervisor is already reconnecting; nothing to learn.
            Err(L2Error::Skipped(_)) => None,
        };
        match (permit, link_ok) {
            (Some(permit), Some(ok)) => {
                permit.report(ok);
            }
            (None, Some(true)) => {
                breaker.success();
            }
            (None, Some(false)) => {
                breaker.failure();
            }
            (_, None) => {}
        }
        result
    }

    async fn run<T: redis::FromRedisValue>(&self, req: Request<'_>) -> Result<T, L2Error> {
        match &self.backend {
            Backend::Single(s) => s.query(req).await,
            Backend::Cluster(c) => c.query(req).await,
        }
    }

    /// Server errors (OOM, READONLY, …) are swallowed by callers; say so at most once a minute
    /// per error code.
    fn warn_server_error(&self, e: &redis::RedisError) {
        let mut codes = codes(e);
        codes.sort();
        codes.dedup();
        let cause = codes.join(",");
        if self.logs.allow(&cause) {
            tracing::warn!(error = %describe(e), "tiered: Redis refused an L2 command; the call was served without it (logged at most once a minute per error code)");
        }
    }
}
