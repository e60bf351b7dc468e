//! Test support: tiered's public test kit (`tiered::testing`: a real `redis-server` per test,
//! a local cluster, the fault proxy, body-run counters) plus what only tiered's own tests need:
//! the lease's wire bytes, a runtime builder with the tests' defaults and [`logs`], which
//! captures the runtime's log events for assertions. Nothing here ever talks to a server the
//! test did not start.
#![allow(dead_code)]

pub mod logs;

use std::time::Duration;

// The public test kit (`tiered::testing`, feature `testing`): our tests use what users get.
pub use tiered::testing::*;

/// A fill lease as the runtime writes it (the wire-1 lease envelope), with a 16-byte token of
/// `token` bytes: what a holder that died or lost its reply leaves under a key.
pub fn lease_bytes(token: u8) -> Vec<u8> {
    let mut lease = b"tR\x01\x01".to_vec();
    lease.extend_from_slice(&[token; 16]);
    lease
}

/// Whether `bytes` are a fill lease (of any holder).
pub fn is_lease(bytes: &[u8]) -> bool {
    bytes.starts_with(b"tR\x01\x01") && bytes.len() == 20
}

/// A runtime on `url` in namespace `ns` (connect timeout 500 ms), built within [`BOUND`].
pub async fn runtime(url: &str, ns: &str) -> tiered::Runtime {
    build(builder(url, ns)).await
}

/// The tests' builder: `url`, namespace `ns`, connect timeout 500 ms.
pub fn builder(url: &str, ns: &str) -> tiered::Builder {
    tiered::Runtime::builder()
        .namespace(ns)
        .redis_url(url)
        .connect_timeout(Duration::from_millis(500))
}

/// Builds within [`BOUND`]; fails the test on an error.
pub async fn build(b: tiered::Builder) -> tiered::Runtime {
    bounded("build", b.build()).await.expect("runtime")
}

/// The number of clients connected to `redis` (the test's own `INFO` connection included).
pub fn clients(redis: &RedisServer) -> usize {
    redis
        .info_field("connected_clients")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Makes `RUST_LOG=debug cargo test` show the runtime's logs (and installs the log capture of
/// [`logs`], which records only what tests tag).
pub fn init_logs() {
    logs::install();
}
