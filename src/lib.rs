//! **tiered**: declarative, tiered memoization of async functions.
//!
//! An in-process L1 (Moka, typed values) in front of a shared L2 (Redis), with coalescing of
//! concurrent misses and probabilistic promotion of L2 hits. This crate re-exports
//! [`tiered_runtime`] (all behaviour) and the [`tiered_cache`] attribute macro.
//!
//! ```
//! use tiered::tiered_cache;
//!
//! #[tiered_cache(strategy = "MediumTerm", key = "fib:<n>")]
//! async fn fib(n: u64) -> u64 {
//!     (1..=n).fold((0u64, 1u64), |(a, b), _| (b, a.wrapping_add(b))).0
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tiered::Error> {
//! tiered::Runtime::builder().namespace("doc").install().await?; // add .redis_url(…) for L2
//! assert_eq!(fib(10).await, 55); // computed
//! assert_eq!(fib(10).await, 55); // L1 hit
//! invalidate_fib(10).await?;     // generated beside `fib`
//! assert_eq!(tiered::stats().total.computations, 1);
//! # Ok(()) }
//! ```
//!
//! The attribute's options (`key`, `strategy`, `ttl`, `promote`, `tiers`, `version`,
//! `returns`, `crate`), the return kinds and the failure semantics are described in the README
//! and in [`tiered_runtime`]'s crate docs; methods are memoized in an `impl` block that carries
//! `#[tiered_cache]` too:
//!
//! ```
//! use tiered::tiered_cache;
//!
//! pub struct Users;
//!
//! #[tiered_cache]
//! impl Users {
//!     #[tiered_cache(key = "user:<id>")]
//!     pub async fn get(&self, id: u64) -> Result<String, String> {
//!         Ok(format!("user {id}")) // the slow query
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! assert_eq!(Users.get(1).await, Ok("user 1".to_owned()));
//! Users::invalidate_get(1).await.expect("embedded: always Ok");
//! # }
//! ```
#![deny(missing_docs)]

pub use tiered_runtime::*;

/// Memoizes an `async fn` through the tiered runtime (L1 → coalescing → L2 → body) and
/// generates `invalidate_<fn>(…)` beside it, with the same visibility, taking the arguments
/// the key uses, and `invalidate_all_<fn>()`, which drops every entry of the function in every
/// instance.
pub use tiered_macros::tiered_cache;
