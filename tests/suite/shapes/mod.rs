//! Every supported shape and option of `#[tiered_cache]` compiles (and, where it has a body
//! to call, runs): the pass set the compile-time diagnostics in `tests/ui/` are the other half
//! of. Compiled here rather than by trybuild, whose build of a pass set needs a full build of
//! every dependency; the fail set alone is only type-checked.

mod free_functions;
mod jitter;
mod methods;
mod resilience;
mod send_and_spawn;
