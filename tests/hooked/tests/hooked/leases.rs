//! Fill leases never outlive their purpose: a lease that may have reached Redis is released
//! (token-checked) as soon as Redis answers again, whatever happened to the request that took
//! it; lease-shaped bytes that cannot be ours are foreign; judged bytes are deleted only while
//! they are unchanged.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::proxy::{Mode, Proxy};
use support::{RedisServer, bounded, wait_until};
use tiered::{Runtime, tiered_cache};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[tiered_cache(key = "cold:<id>", ttl = "60s", promote = 1)]
async fn cold(id: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    id * 10
}

async fn runtime(url: &str) -> Runtime {
    support::runtime(url, "lz").await
}

/// What another instance finds after A's lease was (or was not) released: B builds, reads
/// the key, and must neither wait on a lease nor find one in Redis afterwards.
async fn b_reads_without_waiting(redis: &RedisServer, id: u64) {
    let b = runtime(&redis.url()).await;
    let runs = RUNS.load(Ordering::SeqCst);
    assert_eq!(b.scope(cold(id)).await, id * 10);
    let s = b.stats().total;
    assert_eq!(s.lease_waits, 0, "B waited on a lease nobody holds");
    assert_eq!(s.computations, 1, "B computed the value once");
    assert_eq!(RUNS.load(Ordering::SeqCst), runs + 1);
    let stored = redis
        .get(&format!("lz:cold:<{id}>"))
        .expect("B filled the key");
    assert!(!support::is_lease(&stored), "a lease was left in Redis");
}

/// A Redis stall during a cold read (`CLIENT PAUSE … WRITE`, as during a failover): A's read
/// (`SET … NX GET`, a write) times out, but Redis stores the lease when the pause ends. A
/// releases it as soon as Redis answers again, so B neither waits `lease_wait` nor finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_by_a_timed_out_read_is_released_when_redis_answers() {
    support::init_logs();
    let redis = RedisServer::start();
    let a = runtime(&redis.url()).await;
    let pause = a.config().l2_timeout() + Duration::from_millis(450);
    redis.cmd::<()>(&[
        b"CLIENT",
        b"PAUSE",
        pause.as_millis().to_string().as_bytes(),
        b"WRITE",
    ]);
    let paused = Instant::now();
    assert_eq!(bounded("A's call", a.scope(cold(1))).await, 10);
    let call = paused.elapsed();
    assert!(
        a.stats().total.l2_timeouts >= 1,
        "the read timed out: {:?}",
        a.stats().total
    );
    let resumed = paused + pause;
    wait_until("A released its lease", || {
        a.stats().total.leases_released >= 1
    })
    .await;
    let released = resumed.elapsed();
    assert!(
        released < Duration::from_secs(1),
        "released {released:?} after the pause"
    );
    b_reads_without_waiting(&redis, 1).await;
    println!(
        "CLIENT PAUSE {pause:?} WRITE: A's call took {call:?}; its lease was released {released:?} after the pause ended"
    );
}

/// The proxy forwards A's read to Redis but withholds the reply, then resets the connection:
/// the lease reached Redis, A never learnt it; A releases it, and learns so on its next
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_reply_was_lost_with_the_connection_is_released() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let a = runtime(&proxy.url()).await;
    redis.reset_stats();
    proxy.set_mode(Mode::Withhold);
    assert_eq!(bounded("A's call", a.scope(cold(2))).await, 20);
    // The read reached Redis and took the lease; its reply never came back. (The janitor's
    // releases reach Redis too, but their replies are withheld as well.)
    assert!(redis.calls("set") >= 1, "the read reached Redis");
    assert_eq!(a.stats().total.leases_released, 0);
    let cut = Instant::now();
    proxy.cut_all();
    proxy.set_mode(Mode::Pass);
    wait_until("A released its lease", || {
        a.stats().total.leases_released >= 1
    })
    .await;
    let released = cut.elapsed();
    assert_eq!(redis.get("lz:cold:<2>"), None, "released, token-checked");
    b_reads_without_waiting(&redis, 2).await;
    println!("withheld reply + reset: lease released {released:?} after the reset");
}

/// Lease-shaped bytes without a TTL, or with a TTL longer than `lease_ttl`, are no lease of
/// ours: a miss that is overwritten, never a reason to wait `lease_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_shaped_bytes_that_cannot_be_ours_are_foreign() {
    let redis = RedisServer::start();
    let fake = support::lease_bytes(5);
    redis.set("lz:cold:<3>", &fake);
    redis.cmd::<()>(&[b"SET", b"lz:cold:<4>", &fake, b"PX", b"3600000"]);
    let a = runtime(&redis.url()).await;
    for id in [3, 4] {
        let start = Instant::now();
        assert_eq!(a.scope(cold(id)).await, id * 10);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "waited on a fake lease"
        );
        let stored = redis.get(&format!("lz:cold:<{id}>")).expect("filled");
        assert!(
            !support::is_lease(&stored),
            "the fake lease was replaced by the value"
        );
    }
    let s = a.stats().total;
    assert_eq!(s.lease_waits, 0);
    assert_eq!(s.decode_failures, 2);
}

/// Bytes judged foreign are deleted only while they are still the same bytes: a value written
/// in between (by another instance) survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_bytes_judged_are_deleted() {
    let redis = RedisServer::start();
    redis.set("lz:cold:<6>", b"garbage");
    let a = runtime(&redis.url()).await;
    let b = runtime(&redis.url()).await;
    a.hooks().judged.close();
    let call = tokio::spawn(a.scope(cold(6)));
    bounded("A judged the garbage", a.hooks().judged.wait_reached(1)).await;
    // Meanwhile a valid value lands: B computes (it also judges the garbage, gate open).
    redis.cmd::<()>(&[b"DEL", b"lz:cold:<6>"]);
    assert_eq!(b.scope(cold(6)).await, 60);
    let fresh = redis.get("lz:cold:<6>").expect("B's value");
    let runs = RUNS.load(Ordering::SeqCst);
    a.hooks().judged.open();
    assert_eq!(bounded("A's call", call).await.expect("task"), 60);
    assert_eq!(
        (a.stats().total.computations, a.stats().total.l2_hits),
        (0, 1),
        "A's delete left B's value alone, and A read it"
    );
    assert_eq!(RUNS.load(Ordering::SeqCst), runs, "nobody recomputed");
    assert_eq!(
        redis.get("lz:cold:<6>"),
        Some(fresh),
        "A's delete of the garbage did not remove B's value"
    );
}
