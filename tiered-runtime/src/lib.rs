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
//!   `Ok`. With [`Fallible`] (`E: Clone`) one `Err` reaches every follower of the flight; with
//!   [`FallibleUncloneable`] the followers form one new flight after an `Err` (the body runs
//!   once per flight, never concurrently for one key). A `None` is shared with the flight's
//!   followers, not cached.
//! * **Cancelled or panicking leader.** The flight's entry is removed by a drop guard; the
//!   followers wake up and exactly one of them runs the body again (once per takeover). The
//!   panic itself propagates to the leader's caller only.
//! * **Counters** are per runtime and per site ([`Stats`]); the hot path bumps one relaxed
//!   atomic in a lock-free per-runtime table.
//! * **L1** is one typed Moka cache per memoized function and runtime, so a hit clones the
//!   value straight out of Moka (no decoding, no type erasure); `l1_max_entries` bounds each
//!   function's L1. TTL = min(site TTL, `l1_max_ttl`), and on promotion also ≤ the remaining
//!   L2 TTL (`PTTL`, read in the same round trip as the `GET`); deadlines are checked on a
//!   coarse monotonic clock (a few ms of resolution). Details and measurements: the `l1`
//!   module source.
//! * **Two functions sharing a key template** with different return types keep separate L1s;
//!   in Redis they would read each other's entries as decode failures, so the collision is
//!   reported once at ERROR and counted in `type_conflicts`.
//! * **L2 reads** are one round trip (`GET` + `PTTL` + `SET NX PX` of a fill lease, pipelined);
//!   a miss adds one fill script that replaces our lease with the value. Oversized values are
//!   not written (our lease is released instead). Every L2 operation is bounded by `l2_timeout`; a breaker opens after
//!   `breaker_threshold` consecutive connectivity failures (server refusals such as `OOM` do
//!   not count) and lets one probe through after `breaker_cooldown`.
//! * **Connections.** Requests never wait for a reconnect: with no connection they skip L2 at
//!   once. A supervisor task reconnects with a backoff capped at 250 ms for as long as the
//!   runtime lives, and pings every 500 ms to detect half-open links. Redis unreachable at
//!   `build()` starts the runtime degraded; refused credentials are [`Error::Auth`].
//! * **Corrupt or foreign bytes** under a key are a miss: recompute, overwrite, count
//!   `decode_failures`, WARN once per site (key hash only, never the value).
//! * **Keys**: see [`key`]; namespace characters are restricted so that namespaces never
//!   collide. Once a function's or the namespace's generation is non-zero (after
//!   `invalidate_all_<fn>()` / [`Runtime::invalidate_all`]), L2 keys end in `:~g{ns}.{fn}`;
//!   values encode `:`, so only a template whose literal tail spells that could collide.
//! * **Coherence** (DESIGN §5): the invalidation bus, L1 epochs, poisoned flights and Redis
//!   leases are described in the `bus`, `l1` and `coalesce` module sources and in the README's
//!   "Coherence across instances". Invalidation = evict L1, `DEL` + `PUBLISH` (one pipeline),
//!   evict L1 again (a flight that read Redis between the first eviction and the `DEL` is
//!   caught by the second). Group invalidation first increments the generation, then drops the
//!   L1, so no flight can re-fill it from an old key.
//! * **Feature `test-hooks`** (off by default) adds [`Runtime::hooks`](crate::Runtime) pause
//!   points for deterministic tests; never enable it in production.
#![deny(missing_docs)]

mod breaker;
mod coalesce;
pub mod codec;
mod coherence;
mod config;
mod error;
#[cfg(feature = "test-hooks")]
pub mod hooks;
pub mod key;
mod l1;
mod l2;
mod memoize;
#[doc(hidden)]
pub mod private;
mod runtime;
mod site;
mod stats;

pub use config::{
    Builder, Config, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_L1_MAX_ENTRIES, DEFAULT_L2_TIMEOUT, DEFAULT_MAX_VALUE_BYTES, DEFAULT_NAMESPACE,
    DEFAULT_PROMOTION_FREQUENCY, MAX_BUS_QUEUE, MAX_DURATION,
};
pub use error::{Error, Result};
pub use key::Key;
pub use memoize::{
    CacheValue, Fallible, FallibleUncloneable, Optional, Plain, Prepared, ReturnKind, memoize,
    prepare,
};
pub use runtime::{Runtime, stats};
pub use site::{Site, SiteOptions, Strategy, Tiers};
pub use stats::{Counts, SiteStats, Stats};
