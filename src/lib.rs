//! **tiered**: declarative, tiered memoization of async functions.
//!
//! An in-process L1 (Moka) in front of a shared L2 (Redis), with coalescing of concurrent
//! misses and probabilistic promotion of L2 hits. This crate only re-exports
//! [`tiered_runtime`] (all behaviour) and the `#[tiered_cache]` macro.
//!
//! ```
//! use tiered::{Plain, Site, SiteOptions, memoize};
//!
//! static FIB: Site = Site::new("doc::fib", "fib:<n>", SiteOptions::DEFAULT);
//!
//! async fn fib(n: u64) -> u64 {
//!     memoize::<Plain<u64>, _, _>(&FIB, &[&n], || async move {
//!         (1..=n).fold((0u64, 1u64), |(a, b), _| (b, a.wrapping_add(b))).0
//!     })
//!     .await
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() { assert_eq!(fib(10).await, 55); }
//! ```
#![deny(missing_docs)]

pub use tiered_runtime::*;

/// Memoizes an `async fn` through the tiered runtime and generates `invalidate_<fn>`.
pub use tiered_macros::tiered_cache;
