//! The one error type of the crate.

use std::time::Duration;

/// Everything that can go wrong in `tiered`'s own API.
///
/// Memoized calls never return this type: when Redis misbehaves they fall back to running the
/// function body. It is returned by configuration ([`Builder::build`](crate::Builder::build),
/// [`Builder::install`](crate::Builder::install)) and by explicit L2 operations such as
/// invalidation.
///
/// No variant ever contains a password: Redis addresses are reported as `host:port`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid; `field` names the builder option.
    #[error("invalid configuration for `{field}`: {reason}")]
    Config {
        /// The builder option that holds the bad value.
        field: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// `install()` was called when a runtime was already installed.
    #[error("a tiered runtime is already installed; `install()` may be called once per process")]
    AlreadyInstalled,
    /// Redis refused the configured credentials (wrong password, unknown user, missing ACL
    /// permission). This is a configuration error: the runtime does not start.
    #[error("Redis at {addr} refused the configured credentials or permissions: {detail}")]
    Auth {
        /// `host:port` of the server.
        addr: String,
        /// What the server said (never the password).
        detail: String,
    },
    /// The TLS handshake with Redis failed (an unknown certificate authority, a certificate
    /// for another host name, a refused client certificate): a configuration error, the
    /// runtime does not start.
    #[error("TLS with Redis at {addr} failed: {detail}")]
    Tls {
        /// `host:port` of the server.
        addr: String,
        /// The cause, as the TLS library reports it.
        detail: String,
    },
    /// An L2 operation failed (connection error, server error).
    #[error("L2 operation `{op}` failed: {detail}")]
    L2 {
        /// The operation (`get`, `set`, `del`, …).
        op: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// An L2 operation did not complete within `l2_timeout`.
    #[error("L2 operation `{op}` timed out after {timeout:?}")]
    L2Timeout {
        /// The operation (`get`, `set`, `del`, …).
        op: &'static str,
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// The L2 operation was not attempted: Redis is not connected or the circuit breaker is open.
    #[error("L2 operation `{op}` skipped: Redis is unavailable ({reason})")]
    L2Unavailable {
        /// The operation (`get`, `set`, `del`, …).
        op: &'static str,
        /// `not connected` or `circuit breaker open`.
        reason: &'static str,
    },
    /// The computation this call joined (another caller's run of the same function and key)
    /// failed, with this error text. A memoized function whose error type is not `Clone` but
    /// converts from this type (`anyhow::Error`, `eyre::Report`, `Box<dyn Error + Send + Sync>`)
    /// returns it, converted, to every caller that waited for that run.
    #[error("{message}")]
    Flight {
        /// The failed run's error, as text (`Display`).
        message: String,
    },
    /// The function's body ran past its hard timeout and no stale value was there to serve
    /// instead. The body keeps running in the background (when it can) and stores its result.
    #[error("`{site}` ran past its hard timeout of {timeout:?}")]
    Timeout {
        /// The memoized function.
        site: &'static str,
        /// The hard timeout.
        timeout: Duration,
    },
    /// The runtime was shut down ([`Runtime::shutdown`](crate::Runtime::shutdown)): it no longer
    /// talks to Redis.
    #[error("the tiered runtime was shut down")]
    Shutdown,
    /// The key template received a different number of values than it has placeholders.
    #[error("key template `{template}` of `{site}` expects {expected} values, got {got}")]
    KeyArity {
        /// The function the site belongs to.
        site: &'static str,
        /// The template.
        template: &'static str,
        /// Placeholders in the template.
        expected: usize,
        /// Values passed.
        got: usize,
    },
}

/// `Result` with [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }
}
