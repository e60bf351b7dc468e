//! Compile-time diagnostics of `#[tiered_cache]` (one file per error, `.stderr` checked in) and
//! a pass set covering every supported shape and option.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
