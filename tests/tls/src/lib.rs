//! Nothing but tests: see `tests/`. They need the `tls` feature, which this package turns on for itself.
