//! L2: Redis behind a time box and a circuit breaker.
//!
//! Every operation is bounded by `l2_timeout` and admitted by the [`Breaker`]; callers never
//! wait for a reconnect. The backend is an enum so that Redis Cluster can be added as a second
//! variant without touching callers.

mod single;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::breaker::{Admission, Breaker};
use crate::config::{Config, RedisTarget};
use crate::error::Error;
use crate::stats::{Counters, SiteTable};

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

/// A redis error without anything that could carry a password.
pub(crate) fn describe(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        _ => format!("{:?}", e.kind()),
    }
}

/// Errors that say the link (or the credentials) are broken, as opposed to one refused command.
pub(crate) fn is_connectivity(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || is_auth(e)
}

pub(crate) fn is_auth(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed
            | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

enum Backend {
    Single(Arc<Single>),
}

pub(crate) struct L2 {
    backend: Backend,
    breaker: Arc<Breaker>,
    timeout: Duration,
    last_server_warn: Mutex<Option<Instant>>,
}

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
        let single = Single::start(target, config, breaker.clone(), stats).await?;
        Ok(L2 {
            backend: Backend::Single(single),
            breaker,
            timeout: config.l2_timeout,
            last_server_warn: Mutex::new(None),
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn is_connected(&self) -> bool {
        match &self.backend {
            Backend::Single(s) => s.is_connected(),
        }
    }

    /// `GET` and `PTTL` of `key`, pipelined: one round trip. The duration is the remaining TTL
    /// (`None`: the key has no expiry).
    pub(crate) async fn get_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<Duration>)>, L2Error> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let (value, pttl): (Option<Vec<u8>>, i64) = self.exec(&p).await?;
        Ok(value.map(|v| {
            let ttl = match pttl {
                -1 => None,
                ms if ms < 0 => Some(Duration::ZERO),
                ms => Some(Duration::from_millis(ms.unsigned_abs())),
            };
            (v, ttl)
        }))
    }

    /// `SET key value PX ttl`.
    pub(crate) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), L2Error> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut p = redis::pipe();
        p.cmd("SET").arg(key).arg(value).arg("PX").arg(ms).ignore();
        self.exec::<()>(&p).await
    }

    /// `DEL key`.
    pub(crate) async fn del(&self, key: &str) -> Result<(), L2Error> {
        let mut p = redis::pipe();
        p.cmd("DEL").arg(key).ignore();
        self.exec::<()>(&p).await
    }

    async fn exec<T: redis::FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, L2Error> {
        let (admission, _) = self.breaker.admit();
        let permit = match admission {
            Admission::Reject => return Err(L2Error::Skipped("circuit breaker open")),
            Admission::Pass => None,
            Admission::Probe(p) => Some(p),
        };
        let result = match tokio::time::timeout(self.timeout, self.run(p)).await {
            Err(_) => Err(L2Error::Timeout),
            Ok(r) => r,
        };
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
                self.breaker.success();
            }
            (None, Some(false)) => {
                self.breaker.failure();
            }
            (_, None) => {}
        }
        result
    }

    async fn run<T: redis::FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, L2Error> {
        match &self.backend {
            Backend::Single(s) => s.query(p).await,
        }
    }

    /// Server errors (OOM, READONLY, …) are swallowed by callers; say so at most once a minute.
    fn warn_server_error(&self, e: &redis::RedisError) {
        let mut last = self
            .last_server_warn
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %describe(e), "tiered: Redis refused an L2 command; the call was served without it (rate-limited: once a minute)");
        }
    }
}
