//! Nothing but tests: see `tests/`. They use the runtime's pause points (feature
//! `test-hooks`), which this package turns on for itself only.
