//! The `#[tiered_cache]` attribute macro for [`tiered`](https://docs.rs/tiered).
//!
//! The macro itself lands with the next milestone; until then the runtime API in
//! `tiered-runtime` is used directly.
#![deny(missing_docs)]
