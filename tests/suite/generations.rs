//! Group invalidation that a missed announcement cannot defeat: keys carry no generation, and
//! values are stamped with the generations they were written under, so an instance whose
//! subscription is down (here: its ACL user lost the channel permission, so the server closed
//! its subscription and refuses a new one) still never reads a value from before
//! `invalidate_all_<fn>()` / `invalidate_all()` through L2, and its own `invalidate_<fn>(k)`
//! removes the entry every instance reads.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{RedisServer, wait_until};
use tiered::{Runtime, tiered_cache};

/// The "database": one version number for everything; bodies return it.
static VERSION: AtomicU64 = AtomicU64::new(0);
static RUNS: AtomicU64 = AtomicU64::new(0);

fn read_db() -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    VERSION.load(Ordering::SeqCst)
}

#[tiered_cache(key = "f:<id>", ttl = "60s", promote = 1)]
async fn f(id: u64) -> u64 {
    let _ = id;
    read_db()
}

#[tiered_cache(key = "g:<id>", ttl = "60s", promote = 1)]
async fn g(id: u64) -> u64 {
    let _ = id;
    read_db()
}

async fn runtime(url: &str) -> Runtime {
    support::runtime(url, "gn").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribed_instance_never_reads_a_group_invalidated_value_from_l2() {
    let redis = RedisServer::start();
    let b_url = redis.acl_user("b", "gn");
    let a = runtime(&redis.url()).await;
    let b = runtime(&b_url).await;
    assert!(b.stats().subscribed);
    // Warm: A fills L2, B reads it (and learns the generations).
    for id in 1..=3 {
        assert_eq!(a.scope(f(id)).await, 0);
        assert_eq!(a.scope(g(id)).await, 0);
        assert_eq!(b.scope(f(id)).await, 0);
        assert_eq!(b.scope(g(id)).await, 0);
    }
    // B loses its channel permission: the server closes B's subscription and refuses a new
    // one, so B hears no announcement from now on.
    redis.cmd::<()>(&[b"ACL", b"SETUSER", b"b", b"resetchannels"]);
    wait_until("B unsubscribed", || !b.stats().subscribed).await;

    VERSION.store(1, Ordering::SeqCst);
    a.scope(invalidate_all_f()).await.expect("invalidate_all_f");
    b.flush_l1(); // what follows is about L2
    assert_eq!(
        b.scope(f(1)).await,
        1,
        "B read f:1 from before invalidate_all_f"
    );
    assert_eq!(b.scope(g(1)).await, 0, "g was not invalidated");
    let stale = b.stats().total.stale_generation_misses;
    assert!(stale >= 1, "B judged the old entry by its generation");

    VERSION.store(2, Ordering::SeqCst);
    a.invalidate_all().await.expect("invalidate_all");
    b.flush_l1();
    assert_eq!(
        b.scope(f(2)).await,
        2,
        "B read f:2 from before invalidate_all"
    );
    assert_eq!(
        b.scope(g(2)).await,
        2,
        "B read g:2 from before invalidate_all"
    );
    assert!(!b.stats().subscribed, "B stayed unsubscribed throughout");

    // B invalidates a key while unsubscribed: it deletes the key every instance reads (its
    // publish is refused, so it reports an error).
    assert_eq!(
        a.scope(f(3)).await,
        2,
        "A computed f:3 under the new generations"
    );
    VERSION.store(3, Ordering::SeqCst);
    let sent = Instant::now();
    let r = b.scope(invalidate_f(3)).await;
    assert!(r.is_err(), "the publish was refused: {r:?}");
    assert_eq!(redis.get("gn:f:<3>"), None, "B's DEL hit the key A reads");
    // A's L1 copy goes too: B's silence, or its report of a lost publish, makes A flush.
    wait_until("A noticed", || {
        let s = a.stats().total;
        s.l1_flushes_lost_publish + s.l1_flushes_silence >= 1
    })
    .await;
    let noticed = sent.elapsed();
    let runs = RUNS.load(Ordering::SeqCst);
    assert_eq!(a.scope(f(3)).await, 3, "A missed on f:3");
    assert_eq!(RUNS.load(Ordering::SeqCst), runs + 1);
    println!(
        "unsubscribed B: {stale} stale-generation misses, 0 stale values; A noticed B's failed publish after {noticed:?}"
    );
}

#[tiered_cache(key = "h:<id>", ttl = "60s", promote = 1)]
async fn h(id: u64) -> u64 {
    let _ = id;
    H_VERSION.load(Ordering::SeqCst)
}

static H_VERSION: AtomicU64 = AtomicU64::new(0);

/// The generations hash is lost (an external `FLUSHALL` here; a restart without persistence
/// or an eviction alike) while instances keep running: one of them fills a value stamped with
/// the generations it still remembers, before anyone noticed. Every instance notices the loss
/// (a new L1 epoch, generations forgotten), and the next group invalidation still makes that
/// value a miss: generations count from the clock, so they never go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_keep_growing_when_their_hash_is_lost() {
    let redis = RedisServer::start();
    let a = support::runtime(&redis.url(), "gr").await;
    let b = support::runtime(&redis.url(), "gr").await;
    a.invalidate_all().await.expect("invalidate_all");
    let before: u64 = redis.cmd(&[b"HGET", b"gr:%~gen", b"*"]);
    // Let both instances read the lost-publish marker once, so its loss can be seen.
    wait_until("the marker exists", || {
        redis
            .cmd::<Option<u64>>(&[b"HGET", b"gr:%~gen", b"!lost"])
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.cmd::<()>(&[b"FLUSHALL"]);
    assert_eq!(
        a.scope(h(1)).await,
        0,
        "A fills, stamped with what it remembers"
    );
    wait_until("both noticed", || {
        a.stats().total.l1_flushes_lost_publish >= 1 && b.stats().total.l1_flushes_lost_publish >= 1
    })
    .await;
    H_VERSION.store(1, Ordering::SeqCst);
    a.invalidate_all().await.expect("invalidate_all");
    let after: u64 = redis.cmd(&[b"HGET", b"gr:%~gen", b"*"]);
    assert!(
        after > before,
        "generation went backwards: {before} -> {after}"
    );
    b.flush_l1();
    assert_eq!(
        b.scope(h(1)).await,
        1,
        "B read a value from before invalidate_all"
    );
}
