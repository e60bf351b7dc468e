//! Integration tests that need the runtime's pause points (feature `test-hooks`), in one test
//! binary.

#[path = "../../../support/mod.rs"]
mod support;

mod background;
mod coherence;
mod keyspace;
mod leases;
mod losses;
mod tracking;
