//! Compile-time diagnostics of `#[tiered_cache]` (one file per error, `.stderr` checked in). The
//! pass set, every supported shape and option, is compiled and run in `tests/suite/shapes/`
//! (here it would make trybuild build every dependency instead of only checking them).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
}
