//! An HTTP service over PostgreSQL whose reads are memoized with `#[tiered_cache]` (L1 Moka,
//! optional Redis L2 with cross-instance invalidation), with what its load generator and its
//! tests share. See the package's README for how to run it.
//!
//! * [`config`]: the environment and the command line;
//! * [`db`]: the database of a run, its seed, and the counted queries;
//! * [`cache`]: the memoized reads (`user:<id>`, `orders:<id>`);
//! * [`api`]: the axum routes;
//! * [`http`]: a small keep-alive HTTP/1.1 client (load generator, tests);
//! * [`procs`]: child processes (a private `redis-server`, the service binary).
#![deny(missing_docs)]

pub mod api;
pub mod cache;
pub mod config;
pub mod db;
pub mod http;
pub mod procs;
