//! Claims of the README and the crate docs that no other test pins down: each test names the
//! sentence it proves.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::proxy::{Mode, Proxy};
use support::{RedisServer, bounded, wait_until};
use tiered::{Runtime, tiered_cache};

static RUNS: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "c:<id>", ttl = "60s", promote = 1)]
async fn c(id: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

#[tiered_cache(key = "other:<id>", ttl = "60s", promote = 1)]
async fn other(id: u64) -> u64 {
    id
}

#[tiered_cache(key = "boom:<id>", ttl = "60s")]
async fn boom(id: u64) -> u64 {
    panic!("the body panics for {id}")
}

fn lease() -> Vec<u8> {
    support::lease_bytes(7)
}

/// "Nobody waits on a lease while the circuit breaker is open."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_waits_on_a_lease_while_the_breaker_is_open() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let rt = bounded(
        "build",
        Runtime::builder()
            .namespace("cl")
            .redis_url(proxy.url())
            .breaker_threshold(1)
            .breaker_cooldown(Duration::from_secs(60))
            .lease_wait(Duration::from_secs(5))
            .build(),
    )
    .await
    .expect("runtime");
    redis.cmd::<()>(&[b"SET", b"cl:c:<1>", &lease(), b"PX", b"60000"]);
    proxy.set_mode(Mode::Hold);
    // One timeout opens the breaker (threshold 1).
    assert_eq!(rt.scope(c(2)).await, 2);
    wait_until("breaker open", || rt.stats().total.breaker_transitions >= 1).await;
    proxy.set_mode(Mode::Pass);
    let start = Instant::now();
    assert_eq!(rt.scope(c(1)).await, 1);
    let took = start.elapsed();
    let s = rt.stats().total;
    assert_eq!(s.lease_waits, 0, "waited on a lease with the breaker open");
    assert!(s.l2_skips >= 1);
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// "Started degraded (Redis down), L1 entries live at most `degraded_l1_ttl` until the
/// subscription comes up."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_l1_entries_live_at_most_degraded_l1_ttl() {
    let port = RedisServer::reserve_port();
    let cap = Duration::from_millis(300);
    let rt = Runtime::builder()
        .namespace("dg")
        .redis_url(format!("redis://127.0.0.1:{port}/"))
        .degraded_l1_ttl(cap)
        .build()
        .await
        .expect("degraded start");
    assert!(!rt.stats().subscribed);
    assert_eq!(rt.scope(other(1)).await, 1);
    let written = Instant::now();
    assert_eq!(rt.scope(other(1)).await, 1);
    assert_eq!(rt.stats().total.l1_hits, 1, "served from L1 meanwhile");
    tokio::time::sleep_until((written + cap + Duration::from_millis(20)).into()).await;
    assert_eq!(rt.scope(other(1)).await, 1);
    let s = rt.stats().total;
    assert_eq!(
        (s.l1_hits, s.computations),
        (1, 2),
        "the entry outlived degraded_l1_ttl (the site's TTL is 60 s)"
    );
}

/// "`l1_max_entries`: bound on the L1 entries of each memoized function."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_max_entries_bounds_each_function() {
    let rt = Runtime::builder()
        .namespace("mx")
        .l1_max_entries(10)
        .build()
        .await
        .expect("embedded");
    for id in 0..200 {
        rt.scope(c(id)).await;
        rt.scope(other(id)).await;
    }
    let entries = rt.stats().l1_entries;
    assert!(
        entries <= 20,
        "two functions with l1_max_entries 10 hold {entries} entries"
    );
}

/// "A leader cancelled or panicking releases its lease": with Redis, after a panicking body
/// the key holds no lease, so another instance computes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_releases_its_lease() {
    let redis = RedisServer::start();
    let a = support::runtime(&redis.url(), "pn").await;
    let call = tokio::spawn(a.scope(boom(1)));
    assert!(
        bounded("the panicking call", call).await.is_err(),
        "it panicked"
    );
    wait_until("the lease is released", || {
        a.stats().total.leases_released >= 1
    })
    .await;
    assert_eq!(redis.get("pn:boom:<1>"), None, "no lease left behind");
}

/// "`connect_timeout`: time box of one connection attempt": a Redis that accepts the
/// connection but never answers delays `build()` by about `connect_timeout`, not more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_against_a_silent_redis_is_bounded_by_connect_timeout() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    proxy.set_mode(Mode::Hold);
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let rt = bounded(
        "build",
        Runtime::builder()
            .namespace("ct")
            .redis_url(proxy.url())
            .connect_timeout(timeout)
            .build(),
    )
    .await
    .expect("a silent Redis is not a build error");
    let took = start.elapsed();
    assert!(!rt.stats().l2_connected);
    assert!(took < Duration::from_secs(2), "build took {took:?}");
    println!("build against a silent Redis took {took:?} (connect_timeout {timeout:?})");
}

#[tiered_cache(key = "rt:<id>", ttl = "60s", promote = 1)]
async fn round_trips(id: u64) -> u64 {
    id
}

/// "A miss is at most two round trips, an L2 hit one", counted as round trips: the proxy
/// counts the requests that name the key (a client sends its next request only after the
/// reply), for a function's first call (its generations unknown), a later miss, the first
/// miss after an L1 flush (generations forgotten) and an L2 hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_at_most_two_round_trips_and_an_l2_hit_one() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let a = support::runtime(&proxy.url(), "rt").await;
    let b = support::runtime(&redis.url(), "rt").await;
    let mut seen = Vec::new();
    for (case, id) in [
        ("first call", 1u64),
        ("a later miss", 2),
        ("after a flush", 3),
    ] {
        if case == "after a flush" {
            a.flush_l1();
        }
        proxy.count_requests_with(format!("rt:rt:<{id}>").as_bytes());
        assert_eq!(a.scope(round_trips(id)).await, id);
        let n = proxy.requests();
        assert!(n <= 2, "{case}: {n} round trips");
        seen.push((case, n));
    }
    // An L2 hit: B filled the key, A reads it.
    assert_eq!(b.scope(round_trips(4)).await, 4);
    proxy.count_requests_with(b"rt:rt:<4>");
    assert_eq!(a.scope(round_trips(4)).await, 4);
    assert_eq!(proxy.requests(), 1, "an L2 hit is one round trip");
    println!("round trips per miss: {seen:?}; L2 hit: 1");
}
