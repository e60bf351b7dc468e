//! Coherence: how instances sharing one Redis stay consistent, in one place.
//!
//! The rules, each enforced by one part (file) of this module:
//!
//! 1. **Invalidation order** (`Runtime::invalidate`): evict the local L1, `DEL` the key and
//!    `PUBLISH` the invalidation in one round trip, evict the local L1 again (a flight that read
//!    Redis between the first eviction and the `DEL` is caught by the second). Receivers evict
//!    their L1 and ignore their own messages ([`bus`], wire format in [`message`]).
//! 2. **No stale fill, locally**: an invalidation poisons and detaches the key's flight
//!    (`coalesce`), and group invalidations and gaps start a new L1 epoch (`l1`): a value read
//!    or computed before either is never stored ([`local`]).
//! 3. **No stale fill, across processes**: the leader holds a lease on the key itself, taken
//!    atomically with the read, and fills only over its own lease; a `DEL` destroys it. A lease
//!    never outlives its purpose: whatever happens to the request, it is turned into the fill
//!    or released as soon as Redis answers ([`lease`]).
//! 4. **Group invalidation without `SCAN`**: generations, stamped into every L2 value, never
//!    part of a key; an instance without a subscription reads the current generations with
//!    every L2 read ([`generations`]).
//! 5. **Every lost invalidation is noticed**: the subscription's loss (connection closed,
//!    server drop, heartbeat), a hole in an origin's numbers, an origin's silence or an origin
//!    that cannot be verified each start a new L1 epoch and forget the cached generations,
//!    within a bound ([`sequence`]).
//! 6. **Writes made outside tiered** (opt-in): with client tracking, Redis reports every
//!    write of a key of the namespace, whoever made it; the key leaves L1 and its flights keep
//!    their values out of L1; the tracking connection's loss is a gap like the bus's
//!    ([`tracking`]).
//! 7. **Bounded state**: every queue and every map fed from the network has a bound, and
//!    reaching it costs an L1 flush, never a silently dropped message.
//!
//! Layers only look down: these parts use the L2 client, the flights, the L1s and the counters,
//! never the `Runtime`; the bus tasks hold a [`local::Local`] handle and weak references.

pub(crate) mod bus;
pub(crate) mod generations;
pub(crate) mod lease;
pub(crate) mod local;
pub(crate) mod message;
pub(crate) mod sequence;
pub(crate) mod tracking;
