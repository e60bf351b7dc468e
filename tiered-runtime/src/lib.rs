//! The runtime behind [`tiered`](https://docs.rs/tiered): declarative, tiered memoization of
//! async functions.
//!
//! An in-process **L1** (Moka, typed values, no decoding on a hit) sits in front of a shared
//! **L2** (Redis, time-boxed and guarded by a circuit breaker); concurrent callers of a missing
//! key are **coalesced** so the body runs once; L2 hits are **promoted** to L1 one time in N.
//! Without Redis the same code runs on L1 alone.
//!
//! ```
//! use tiered_runtime::{Fallible, Runtime, Site, SiteOptions, memoize};
//!
//! static GET_USER: Site = Site::new("app::get_user", "user:<id>", SiteOptions::DEFAULT);
//!
//! async fn get_user(id: u64) -> Result<String, String> {
//!     memoize::<Fallible<String, String>, _, _>(&GET_USER, &[&id], || async move {
//!         Ok(format!("user {id}")) // the slow query
//!     })
//!     .await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tiered_runtime::Error> {
//! let rt = Runtime::builder().namespace("shop").build().await?; // add .redis_url(…) for L2
//! rt.scope(async {
//!     assert_eq!(get_user(7).await, Ok("user 7".to_owned())); // computed
//!     assert_eq!(get_user(7).await, Ok("user 7".to_owned())); // L1 hit
//! })
//! .await;
//! assert_eq!(rt.stats().total.computations, 1);
//! # Ok(()) }
//! ```
//!
//! # Behaviour chosen where the design leaves room
//!
//! * **Return kinds.** `T` is always cached; `Option<T>` caches `Some`; `Result<T, E>` caches
//!   `Ok` (the kind is taken from the type, also behind a type alias). With [`Fallible`]
//!   (`E: Clone + Send + Sync + 'static`) one `Err` reaches every follower of the flight; with
//!   [`FallibleFrom`] (`E: From<Error> + Display`: `anyhow`, `eyre`, boxed errors) every
//!   follower gets `E::from(Error::Flight { message })` with the leader's error text; with
//!   [`FallibleUncloneable`] (any other `E`) the followers form one new flight after an `Err`
//!   (the body runs once per flight, never concurrently for one key, so a burst of callers of
//!   a body that keeps failing runs it once per caller, one after another). A `None` is shared
//!   with the flight's followers, not cached.
//! * **Cancelled or panicking leader.** The flight's entry is removed by a drop guard; the
//!   followers wake up and exactly one of them runs the body again (once per takeover). The
//!   panic itself propagates to the leader's caller only.
//! * **Counters** are per runtime and per site ([`Stats`]), in a lock-free per-runtime table;
//!   the L1 hit counter is striped (each thread bumps its own cache line, a snapshot sums
//!   them), so hits on several threads never contend on one atomic.
//! * **L1** is one typed Moka cache per memoized function and runtime, so a hit clones the
//!   value straight out of Moka (no decoding, no type erasure); `l1_max_entries` bounds each
//!   function's L1. Entries are keyed by a 128-bit keyed digest (SipHash-1-3, random secret
//!   per runtime) of the key's bytes, streamed from the arguments (integers and strings
//!   directly, with the bytes their `Display` writes; other types through `Display`): a hit
//!   renders no key string and allocates nothing; the key string is rendered on a miss only,
//!   and an invalidation received for a key string evicts the entry of the same digest. Keys
//!   longer than 1024 bytes (digested in Redis) are rendered on every call. TTL = min(site
//!   TTL, `l1_max_ttl`), and on promotion also ≤ the remaining L2 TTL, which the writer
//!   records in the value's envelope (a value written without it, by an older version, is
//!   served but not promoted); deadlines are checked on a coarse monotonic clock (a few ms of
//!   resolution). Details: the `l1` module source.
//! * **Two functions sharing a key template** (the same shape, placeholder names aside) read
//!   and write the same keys in Redis; their flights and L1s stay apart. The first use of the
//!   second one is reported at ERROR and counted in `template_conflicts`, whatever their types
//!   and tiers.
//! * **L2 reads** are one round trip and, on a hit, one command: `SET key LEASE NX GET PX
//!   lease_ttl` (the value, or the fill lease, atomically), plus `HMGET` of the generations
//!   when they cannot be trusted from memory, and `PTTL` only when a lease was found (to judge
//!   whether it can be one of ours). A miss adds one fill script that replaces our lease with
//!   the value. Servers older than Redis 7.0 (which refuse `NX` with `GET`) get `GET` and
//!   `SET NX` in one `MULTI`/`EXEC` instead, chosen at each connection from `INFO server`
//!   ([`LeaseRead`]). When Redis refuses writes (`OOM` under `noeviction`, `READONLY`), reads
//!   fall back to a plain `GET` for a second at a time (`l2_reads_without_lease`): hits are
//!   served, misses computed without filling. Oversized values are not
//!   written (our lease is released instead). Every L2 operation is bounded by `l2_timeout`;
//!   a breaker opens after `breaker_threshold` consecutive connectivity failures (server
//!   refusals such as `OOM`, or `NOPERM` for one key or channel, do not count) and lets one
//!   probe through after `breaker_cooldown`.
//! * **Connections.** Requests never wait for a reconnect: with no connection they skip L2 at
//!   once. A supervisor task reconnects with a backoff capped at 250 ms for as long as the
//!   runtime lives, and pings every 500 ms to detect half-open links. Redis unreachable at
//!   `build()` starts the runtime degraded; refused credentials are [`Error::Auth`].
//! * **Corrupt or foreign bytes** under a key are a miss: recompute, overwrite (deleting only
//!   the bytes that were judged), count `decode_failures`, WARN once per site (key hash only,
//!   never the value). A value written by a newer wire version is a miss that is neither
//!   deleted nor overwritten.
//! * **Keys**: see [`key`]: `{namespace}:` then the template with each value between `<` and
//!   `>`; injective across templates; the runtime's own keys live under `{namespace}:%~`,
//!   where no rendered key can land. Namespace characters are restricted so that namespaces
//!   never collide.
//! * **Coherence**: the rules, the wire formats, the staleness bounds and the compatibility
//!   rule for rolling deploys are in `docs/coherence.md` and in the `coherence` module source
//!   (one file per part: bus, message, sequence, generations, leases, local effects).
//!   Invalidation = evict L1, `DEL` + `PUBLISH` (one pipeline), evict L1 again. Group
//!   invalidation increments a generation that every L2 value is stamped with; keys carry
//!   none.
//! * **Feature `test-hooks`** (off by default) adds [`Runtime::hooks`](crate::Runtime) pause
//!   points for deterministic tests; never enable it in production.
#![deny(missing_docs)]

mod background;
mod breaker;
mod coalesce;
pub mod codec;
mod coherence;
mod config;
mod error;
mod flight;
#[cfg(feature = "test-hooks")]
pub mod hooks;
pub mod key;
mod l1;
mod l2;
mod logs;
mod memoize;
#[doc(hidden)]
pub mod private;
mod runtime;
mod site;
mod stats;
mod tags;
#[cfg(feature = "metrics")]
mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{
    Builder, ClusterBus, Config, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_L1_MAX_ENTRIES, DEFAULT_L2_TIMEOUT, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_NAMESPACE, DEFAULT_PROMOTION_FREQUENCY, LeaseRead, MAX_BUS_QUEUE, MAX_DURATION,
};
pub use error::{Error, Result};
pub use key::Key;
pub use memoize::{
    CacheValue, CachedErr, CachedNone, Fallible, FallibleFrom, FallibleUncloneable, Optional,
    Plain, Prepared, ReturnKind, memoize, prepare,
};
pub use runtime::{Runtime, invalidate_tag, stats};
pub use site::{Site, SiteOptions, Strategy, Tiers};
pub use stats::{Counts, SiteStats, Stats};
