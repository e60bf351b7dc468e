//! Writes to Redis off the caller's path (`background_writes`) and shutdown, with the
//! background writer held at its pause point so that "later" is under the test's control.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{RedisServer, bounded, clients, wait_until};
use tiered::{Runtime, tiered_cache};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[tiered_cache(key = "q:<id>", ttl = "60s", background_writes = true)]
async fn queued(id: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    id * 10
}

async fn runtime(url: &str, queue: usize) -> Runtime {
    bounded(
        "build",
        Runtime::builder()
            .namespace("bg")
            .redis_url(url)
            .background_queue(queue)
            .shutdown_timeout(Duration::from_secs(2))
            .build(),
    )
    .await
    .expect("runtime")
}

/// The caller returns before its value is written: while the writer is held, Redis holds only
/// the caller's lease; released, the value lands. An invalidation in between (it deletes the
/// lease) refuses the queued fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_returns_before_its_fill_and_an_invalidation_refuses_the_queued_fill() {
    let redis = RedisServer::start();
    let rt = runtime(&redis.url(), 64).await;
    rt.hooks().background_write.close();
    assert_eq!(bounded("the caller", rt.scope(queued(1))).await, 10);
    rt.hooks().background_write.wait_reached(1).await;
    let held = redis.get("bg:q:<1>").expect("the lease");
    assert!(support::is_lease(&held), "only the lease is there yet");
    assert_eq!(rt.stats().total.background_writes, 1);
    assert_eq!(bounded("from L1", rt.scope(queued(1))).await, 10);
    rt.hooks().background_write.open();
    // The writer counts the write once Redis has answered: wait for both.
    wait_until("the queued fill to land", || {
        redis
            .get("bg:q:<1>")
            .is_some_and(|b| !support::is_lease(&b))
            && rt.stats().total.l2_writes == 1
    })
    .await;

    rt.hooks().background_write.close();
    assert_eq!(bounded("the caller", rt.scope(queued(2))).await, 20);
    rt.hooks().background_write.wait_reached(2).await;
    rt.scope(invalidate_queued(2)).await.expect("invalidate");
    rt.hooks().background_write.open();
    wait_until("the queued fill to be refused", || {
        rt.stats().total.fills_refused == 1
    })
    .await;
    assert_eq!(redis.get("bg:q:<2>"), None, "nothing stale was written");
}

/// A full queue drops fills (counted), never blocks a caller; their leases are released; then
/// shutdown lands what was queued, leaves no lease of ours in Redis, and every task ends: the
/// runtime's connections close. Later calls compute without Redis and invalidations say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_shutdown_drains_releases_and_disconnects() {
    let redis = RedisServer::start();
    let before = clients(&redis);
    let rt = runtime(&redis.url(), 4).await;
    assert!(clients(&redis) > before, "the runtime is connected");
    rt.hooks().background_write.close();
    for id in 100..160 {
        assert_eq!(bounded("a caller", rt.scope(queued(id))).await, id * 10);
    }
    let s = rt.stats().total;
    println!(
        "60 fills, writer held: {} queued, {} dropped",
        s.background_writes, s.background_writes_dropped
    );
    assert_eq!(s.background_writes + s.background_writes_dropped, 60);
    assert!(s.background_writes_dropped > 0, "the queue is bounded");
    // Shutdown begins while the writes are still held: it must wait for them (the gate opens
    // a moment later; the wait is what is tested, the moment only orders the two).
    let shutdown = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.shutdown().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    rt.hooks().background_write.open();
    bounded("shutdown", shutdown).await.expect("shutdown");
    let s = rt.stats().total;
    let keys = redis.keys();
    let leases = keys
        .iter()
        .filter(|k| redis.get(k).is_some_and(|b| support::is_lease(&b)))
        .count();
    let values = keys.iter().filter(|k| k.starts_with("bg:q:")).count() - leases;
    println!(
        "after shutdown: {values} values and {leases} leases in Redis; written {}, dropped {}, leases released {}",
        s.l2_writes, s.background_writes_dropped, s.leases_released
    );
    assert_eq!(leases, 0, "no lease of ours is left");
    assert_eq!(
        values as u64, s.background_writes,
        "every queued fill landed"
    );
    wait_until("the runtime's connections to close", || {
        clients(&redis) == before
    })
    .await;
    assert_eq!(bounded("after shutdown", rt.scope(queued(999))).await, 9990);
    assert!(matches!(
        rt.scope(invalidate_queued(999)).await,
        Err(tiered::Error::Shutdown)
    ));
    assert_eq!(redis.get("bg:q:<999>"), None, "no Redis after shutdown");
}

/// Dropping the last handle shuts down in the background: the connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_closes_the_connections() {
    let redis = RedisServer::start();
    let before = clients(&redis);
    let rt = runtime(&redis.url(), 64).await;
    assert_eq!(rt.scope(queued(7)).await, 70);
    assert!(clients(&redis) > before);
    drop(rt);
    wait_until("the connections to close", || clients(&redis) == before).await;
}
