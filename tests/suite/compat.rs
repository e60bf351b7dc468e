//! Rolling deploys: two wire versions side by side in one Redis. This build (envelope wire 4,
//! bus 2) next to writers of wire 1, 2 and 3 (the previous envelopes) and a writer of wire 6 (a
//! future one), in the roles they play during a deploy: nobody deletes the other's values in a loop,
//! and nobody misses the other's invalidations.

use crate::support;

use serde::Serialize;
use support::{RedisServer, wait_until};
use tiered::codec::{self, Stamp, WIRE_VERSION};
use tiered::{Runtime, tiered_cache};

#[tiered_cache(key = "w:<id>", ttl = "60s", promote = 1)]
async fn w(id: u64) -> u64 {
    id
}

fn fingerprint() -> [u8; 16] {
    // The macro's schema: the return type as written.
    codec::fingerprint("u64", 0)
}

/// `value` in the envelope of another wire version (1: no generations; 2: generations, no
/// expiry; 3: an expiry, no "kept until" nor nonce; 6: a future layout this build cannot know).
fn envelope(version: u8, value: u64) -> Vec<u8> {
    let v4 = codec::encode(&fingerprint(), Stamp::default(), &value).expect("encode");
    let header = match version {
        1 => 20,
        2 => 36,
        3 => 44,
        _ => codec::HEADER_LEN,
    };
    let mut other = v4[..header].to_vec();
    other[2] = version;
    other.extend_from_slice(&v4[codec::HEADER_LEN..]);
    other
}

async fn runtime(url: &str) -> Runtime {
    support::runtime(url, "cp").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_wire_versions_side_by_side_neither_deletes_the_others_values() {
    assert_eq!(WIRE_VERSION, 4);
    let redis = RedisServer::start();
    let rt = runtime(&redis.url()).await;
    // Older writers' values: read as values (wire 1: written under generation 0).
    redis.set("cp:w:<1>", &envelope(1, 41));
    assert_eq!(rt.scope(w(1)).await, 41, "a wire-1 value is a hit");
    redis.set("cp:w:<3>", &envelope(2, 43));
    assert_eq!(rt.scope(w(3)).await, 43, "a wire-2 value is a hit");
    redis.set("cp:w:<4>", &envelope(3, 44));
    assert_eq!(rt.scope(w(4)).await, 44, "a wire-3 value is a hit");
    assert_eq!(rt.stats().total.computations, 0);
    // A newer writer's value: a miss for this build, never deleted nor overwritten, however
    // often it is read.
    let newer = envelope(6, 42);
    redis.set("cp:w:<2>", &newer);
    for _ in 0..3 {
        rt.flush_l1();
        assert_eq!(rt.scope(w(2)).await, 2, "computed here");
    }
    assert_eq!(
        rt.stats().total.computations,
        3,
        "no fill over the newer value"
    );
    assert_eq!(
        redis.get("cp:w:<2>"),
        Some(newer),
        "the newer value survived"
    );
    assert_eq!(rt.stats().total.l2_writes, 0);
}

#[derive(Serialize)]
enum FutureAction {
    Keys { site: String, keys: Vec<String> },
    Tags { tags: Vec<String> },
}

#[derive(Serialize)]
struct FutureMessage {
    v: u8,
    origin: u64,
    seq: u64,
    action: FutureAction,
    /// A field this build does not know.
    trace: String,
}

fn publish(redis: &RedisServer, msg: &FutureMessage) {
    let bytes = rmp_serde::to_vec_named(msg).expect("encode");
    redis.cmd::<()>(&[b"PUBLISH", b"cp:tiered:invalidate:db0:v2", &bytes]);
}

/// A newer version's messages on this bus: an invalidation this build understands (with
/// fields it does not know) is applied; one it cannot read is taken as lost (a new L1 epoch),
/// never as nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_versions_invalidations_are_applied_or_taken_as_lost() {
    let redis = RedisServer::start();
    let rt = runtime(&redis.url()).await;
    assert_eq!(rt.scope(w(5)).await, 5);
    assert_eq!(rt.scope(w(6)).await, 6);
    let runs = rt.stats().total.computations;
    let origin = 0xfeed;
    publish(
        &redis,
        &FutureMessage {
            v: 3,
            origin,
            seq: 1,
            action: FutureAction::Keys {
                site: concat!(module_path!(), "::w").into(),
                keys: vec!["cp:w:<5>".into()],
            },
            trace: "x".into(),
        },
    );
    wait_until("applied", || rt.stats().total.invalidations_received == 1).await;
    redis.cmd::<()>(&[b"DEL", b"cp:w:<5>"]);
    assert_eq!(rt.scope(w(5)).await, 5);
    assert_eq!(rt.stats().total.computations, runs + 1, "w:5 was evicted");
    let flushes = rt.stats().total.l1_flushes_unverified;
    publish(
        &redis,
        &FutureMessage {
            v: 3,
            origin,
            seq: 2,
            action: FutureAction::Tags {
                tags: vec!["tenant:x".into()],
            },
            trace: "x".into(),
        },
    );
    wait_until("taken as lost", || {
        rt.stats().total.l1_flushes_unverified > flushes
    })
    .await;
    redis.cmd::<()>(&[b"DEL", b"cp:w:<6>"]);
    assert_eq!(rt.scope(w(6)).await, 6);
    assert_eq!(rt.stats().total.computations, runs + 2, "L1 was flushed");
}
