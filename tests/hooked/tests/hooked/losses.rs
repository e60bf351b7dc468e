//! Every lost invalidation is noticed within a stated bound (README, "Staleness bounds"): a
//! lost first message after a subscription, a lost last message with no later traffic, and a
//! publish that failed at its origin with no later invalidation each make the receiver start
//! a new L1 epoch; and the bus cannot die silently (a panicking handler is restarted).

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{RedisServer, bounded, runtime, wait_until};
use tiered::{Runtime, tiered_cache};

/// One version per key id, so that tests running in parallel do not disturb each other.
static VERSIONS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

#[tiered_cache(key = "v:<id>", ttl = "60s", promote = 1)]
async fn v(id: usize) -> u64 {
    VERSIONS[id].load(Ordering::SeqCst)
}

/// The coarse ceiling on noticing a loss in these tests (the stated bound is 1 s; the
/// figures are printed).
const CEILING: Duration = Duration::from_secs(3);

/// Calls `v(id)` on `rt` until it returns `want`; returns how long the old value was served.
async fn until_fresh(rt: &Runtime, id: usize, want: u64) -> Duration {
    let start = Instant::now();
    bounded("the receiver stops serving the old value", async {
        while rt.scope(v(id)).await != want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let took = start.elapsed();
    assert!(took < CEILING, "served the old value for {took:?}");
    took
}

/// B subscribes; the very first message A sends after that is lost in transit (A has sent
/// others before B subscribed, so B cannot know where A's numbers stand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_first_message_after_subscribing_is_noticed() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url(), "l1").await;
    for _ in 0..5 {
        a.scope(invalidate_v(7)).await.expect("invalidate");
    }
    let b = runtime(&redis.url(), "l1").await;
    assert_eq!(b.scope(v(0)).await, 0, "B warm");
    VERSIONS[0].store(1, Ordering::SeqCst);
    a.hooks().lose_publishes(1);
    a.scope(invalidate_v(0)).await.expect("'delivered'");
    let took = until_fresh(&b, 0, 1).await;
    let s = b.stats().total;
    println!(
        "lost first message after subscribe: B served the old value for {took:?} (flushes: unverified {}, gap {})",
        s.l1_flushes_unverified, s.l1_flushes_sequence_gap
    );
}

/// B knows A; A's last message is lost and nothing follows it: A's beacons reveal the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_last_message_with_no_later_traffic_is_noticed() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url(), "l2").await;
    let b = runtime(&redis.url(), "l2").await;
    let before = b.stats().total.invalidations_received;
    a.scope(invalidate_v(6)).await.expect("invalidate");
    wait_until("B heard A", || {
        b.stats().total.invalidations_received > before
    })
    .await;
    assert_eq!(b.scope(v(1)).await, 0, "B warm");
    VERSIONS[1].store(1, Ordering::SeqCst);
    a.hooks().lose_publishes(1);
    a.scope(invalidate_v(1)).await.expect("'delivered'");
    let took = until_fresh(&b, 1, 1).await;
    assert!(b.stats().total.l1_flushes_sequence_gap >= 1);
    println!("lost last message, no later traffic: B served the old value for {took:?}");
}

/// A's user loses its channel permission. B takes A's silence for a loss once; later, A's
/// invalidation deletes the key but its publish is refused, and A invalidates nothing
/// afterwards: A reports the lost publish in Redis (it can still write keys), and B notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_failed_at_its_origin_is_noticed() {
    let redis = RedisServer::start();
    let url = redis.acl_user("a", "l3");
    let a = runtime(&url, "l3").await;
    let b = runtime(&redis.url(), "l3").await;
    wait_until("B heard A", || b.stats().bus_origins == 1).await;
    redis.cmd::<()>(&[b"ACL", b"SETUSER", b"a", b"resetchannels"]);
    wait_until("B took A's silence for a loss", || {
        b.stats().total.l1_flushes_silence >= 1
    })
    .await;
    assert_eq!(b.scope(v(2)).await, 0, "B warm, after the silence");
    VERSIONS[2].store(1, Ordering::SeqCst);
    let failed = a.scope(invalidate_v(2)).await;
    assert!(failed.is_err(), "the publish was refused: {failed:?}");
    assert_eq!(redis.get("l3:v:<2>"), None, "the DEL went through");
    let took = until_fresh(&b, 2, 1).await;
    assert!(b.stats().total.l1_flushes_lost_publish >= 1);
    println!(
        "publish refused at the origin, nothing after it: B served the old value for {took:?}"
    );
}

/// A can delete keys but neither publish nor write the lost-publish report: its beacons stop,
/// and B takes its silence for a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_can_neither_publish_nor_report_is_noticed_by_its_silence() {
    let redis = RedisServer::start();
    let url = redis.acl_user("a", "l5");
    let a = runtime(&url, "l5").await;
    let b = runtime(&redis.url(), "l5").await;
    assert_eq!(b.scope(v(5)).await, 0, "B warm");
    wait_until("B heard A", || b.stats().bus_origins == 1).await;
    redis.cmd::<()>(&[b"ACL", b"SETUSER", b"a", b"resetchannels", b"-hincrby"]);
    VERSIONS[5].store(1, Ordering::SeqCst);
    let failed = a.scope(invalidate_v(5)).await;
    assert!(failed.is_err(), "the publish was refused: {failed:?}");
    assert_eq!(redis.get("l5:v:<5>"), None, "the DEL went through");
    let took = until_fresh(&b, 5, 1).await;
    let s = b.stats().total;
    assert!(s.l1_flushes_silence >= 1);
    assert_eq!(s.l1_flushes_lost_publish, 0, "A could not report it");
    println!(
        "an origin that can neither publish nor report: B served the old value for {took:?} (silence)"
    );
}

/// A panic in the invalidation handler (here forced by a test hook; in production, e.g. a
/// user `Drop` run by an eviction) does not leave the bus dead: the task is restarted, L1
/// starts a new epoch, and later invalidations are received again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_bus_task_is_restarted_and_flushes() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url(), "l4").await;
    let b = runtime(&redis.url(), "l4").await;
    assert_eq!(b.scope(v(3)).await, 0, "B warm");
    b.hooks().panic_handler();
    a.scope(invalidate_v(4)).await.expect("invalidate");
    wait_until("B restarted its bus", || b.stats().total.bus_restarts == 1).await;
    assert!(b.stats().total.l1_flushes_bus_restart >= 1);
    wait_until("B resubscribed", || b.stats().subscribed).await;
    VERSIONS[3].store(1, Ordering::SeqCst);
    let before = b.stats().total.invalidations_received;
    a.scope(invalidate_v(3)).await.expect("invalidate");
    wait_until("B received again", || {
        b.stats().total.invalidations_received > before
    })
    .await;
    assert_eq!(b.scope(v(3)).await, 1, "B applied the invalidation");
}

/// An instance that ends cleanly (its last handle dropped) says goodbye: the others forget it
/// without taking its silence for a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_ends_cleanly_costs_the_others_no_flush() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url(), "l6").await;
    let b = runtime(&redis.url(), "l6").await;
    wait_until("B heard A", || b.stats().bus_origins == 1).await;
    drop(a);
    let gone = wait_until("B forgot A", || b.stats().bus_origins == 0).await;
    // Past the silence bound: a goodbye, not a silence.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let s = b.stats().total;
    assert_eq!(
        (
            s.l1_flushes_silence,
            s.l1_flushes_unverified,
            s.l1_flushes_sequence_gap
        ),
        (0, 0, 0)
    );
    println!("goodbye: B forgot A {gone:?} after A's runtime was dropped, no flush");
}

/// Loss detection depends on no write Redis can refuse: under `maxmemory` with `noeviction`
/// (which refuses `SET`, `INCR`, `HINCRBY`, not `DEL` or `PUBLISH`), key invalidations are
/// delivered and a lost one is still noticed through the beacons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_detection_keeps_working_when_redis_refuses_writes() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url(), "l7").await;
    let b = runtime(&redis.url(), "l7").await;
    wait_until("B heard A", || b.stats().bus_origins == 1).await;
    assert_eq!(b.scope(v(6)).await, 0, "B warm");
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);
    let refused = redis::cmd("SET")
        .arg("l7:probe")
        .arg("x")
        .query::<()>(&mut redis.conn());
    assert!(
        refused.is_err_and(|e| e.code() == Some("OOM")),
        "Redis refuses writes"
    );
    // Delivered: DEL and PUBLISH still work.
    let before = b.stats().total.invalidations_received;
    a.scope(invalidate_v(7))
        .await
        .expect("DEL + PUBLISH under OOM");
    wait_until("B received", || {
        b.stats().total.invalidations_received > before
    })
    .await;
    // Lost in transit: the beacons (PUBLISH) reveal it.
    VERSIONS[6].store(1, Ordering::SeqCst);
    a.hooks().lose_publishes(1);
    a.scope(invalidate_v(6)).await.expect("'delivered'");
    let took = until_fresh(&b, 6, 1).await;
    assert!(b.stats().total.l1_flushes_sequence_gap >= 1);
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory", b"0"]);
    println!("under OOM: a lost invalidation was noticed after {took:?}");
}
