//! Tiered's integration tests against real Redis (a `redis-server` spawned per test, a local
//! cluster where a test needs one), in one test binary: one link instead of one per file.
//! Tests that change process-wide state (the installed runtime, the global allocator, the
//! global tracing subscriber) and the UI tests keep binaries of their own.

#[path = "../support/mod.rs"]
mod support;

mod claims;
mod cluster;
mod coalescing;
mod compat;
mod embedded;
mod faults;
mod generations;
mod keys;
mod l1_keys;
mod l2;
mod r#macro;
mod negative;
mod resilience;
mod security;
mod shapes;
mod support_selftest;
mod tags;
mod tracking;
