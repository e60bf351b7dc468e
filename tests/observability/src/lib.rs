//! Nothing but tests: see `tests/`. They need the `metrics` feature, which this package turns on for itself.
