//! Negative caching, opt-in: `cache_none = "…"` caches a `None`, `cache_err = "…"` an `Err`
//! (`E: Clone + Serialize + DeserializeOwned`), each for its own TTL, stored in L1 and L2 and
//! invalidated like values, counted apart (`negative_stored`, `negative_hits`).

use crate::support;

use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use support::{BodyRuns, RedisServer, bounded, wait_until};
use tiered::{Runtime, tiered_cache};

static FIND_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);

/// Ids from 100 on do not exist.
#[tiered_cache(key = "find:<id>", ttl = "60s", cache_none = "30s", promote = 1)]
async fn find(id: u64) -> Option<String> {
    FIND_RUNS.hit();
    (id < 100).then(|| format!("user {id}"))
}

static PLAIN_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);

/// The same without `cache_none`: a `None` is not cached.
#[tiered_cache(key = "plain:<id>", ttl = "60s")]
async fn find_uncached_none(id: u64) -> Option<String> {
    PLAIN_RUNS.hit();
    (id < 100).then(|| format!("user {id}"))
}

async fn runtime(redis: &RedisServer, ns: &str) -> Runtime {
    support::runtime(&redis.url(), ns).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_none_is_served_from_cache_for_its_ttl_in_every_instance_and_dropped_by_the_invalidator()
{
    let redis = RedisServer::start();
    let a = runtime(&redis, "neg").await;
    let b = runtime(&redis, "neg").await;

    assert_eq!(a.scope(find(100)).await, None);
    assert_eq!(a.scope(find(100)).await, None, "from A's L1");
    assert_eq!(b.scope(find(100)).await, None, "from Redis");
    assert_eq!(b.scope(find(100)).await, None, "promoted into B's L1");
    FIND_RUNS.assert_runs(1);
    let (sa, sb) = (a.stats().total, b.stats().total);
    assert_eq!(
        (sa.negative_stored, sa.negative_hits, sa.l1_hits),
        (1, 1, 1)
    );
    assert_eq!((sb.negative_hits, sb.l2_hits, sb.l1_hits), (2, 1, 1));
    // Its own TTL in Redis: 30 s, not the function's 60 s.
    let pttl = redis.pttl("neg:find:<100>");
    assert!(pttl > 0 && pttl <= 30_000, "PTTL {pttl}");
    // A value keeps the function's TTL and is not counted as negative.
    assert_eq!(a.scope(find(7)).await.as_deref(), Some("user 7"));
    assert!(redis.pttl("neg:find:<7>") > 30_000);
    assert_eq!(a.stats().total.negative_stored, 1);

    // The invalidator drops it here and, over the bus, in B.
    let received = b.stats().total.invalidations_received;
    a.scope(invalidate_find(100)).await.expect("invalidate");
    wait_until("B heard the invalidation", || {
        b.stats().total.invalidations_received > received
    })
    .await;
    assert_eq!(redis.get("neg:find:<100>"), None);
    assert_eq!(b.scope(find(100)).await, None);
    FIND_RUNS.assert_runs(3); // find(7), then find(100) again in B
    assert_eq!(
        a.scope(find(100)).await,
        None,
        "B's answer, read from Redis"
    );
    FIND_RUNS.assert_runs(3);

    // Without the option a `None` is never cached.
    assert_eq!(a.scope(find_uncached_none(100)).await, None);
    assert_eq!(a.scope(find_uncached_none(100)).await, None);
    PLAIN_RUNS.assert_runs(2);
    assert_eq!(redis.get("neg:plain:<100>"), None);
}

static SHORT_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);

#[tiered_cache(key = "short:<id>", ttl = "60s", cache_none = "300ms")]
async fn short_lived_none(id: u64) -> Option<u64> {
    SHORT_RUNS.hit();
    (id == 0).then_some(id)
}

/// The negative TTL ends the entry in L1 and L2 alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_none_expires_after_its_own_ttl() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, "negttl").await;
    assert_eq!(rt.scope(short_lived_none(5)).await, None);
    assert_eq!(rt.scope(short_lived_none(5)).await, None);
    SHORT_RUNS.assert_runs(1);
    let gone = wait_until("the negative entry expired in Redis", || {
        redis.pttl("negttl:short:<5>") == -2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await; // L1's coarse clock
    assert_eq!(rt.scope(short_lived_none(5)).await, None);
    SHORT_RUNS.assert_runs(2);
    eprintln!("negative entry gone from Redis {gone:?} after the check began");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum LookupError {
    NotFound(u64),
    Unavailable,
}

static ERR_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);

#[tiered_cache(key = "acct:<id>", ttl = "60s", cache_err = "5s", promote = 1)]
async fn account(id: u64) -> Result<String, LookupError> {
    ERR_RUNS.hit();
    if id >= 100 {
        Err(LookupError::NotFound(id))
    } else {
        Ok(format!("acct {id}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_is_cached_for_its_ttl_and_dropped_by_the_invalidator() {
    let redis = RedisServer::start();
    let a = runtime(&redis, "nerr").await;
    let b = runtime(&redis, "nerr").await;
    let not_found = Err(LookupError::NotFound(100));
    assert_eq!(a.scope(account(100)).await, not_found);
    assert_eq!(a.scope(account(100)).await, not_found);
    assert_eq!(b.scope(account(100)).await, not_found);
    ERR_RUNS.assert_runs(1);
    let pttl = redis.pttl("nerr:acct:<100>");
    assert!(pttl > 0 && pttl <= 5_000, "PTTL {pttl}");
    assert_eq!(a.stats().total.negative_stored, 1);
    assert_eq!(
        a.stats().total.negative_hits + b.stats().total.negative_hits,
        2
    );
    a.scope(invalidate_account(100)).await.expect("invalidate");
    assert_eq!(a.scope(account(100)).await, not_found);
    ERR_RUNS.assert_runs(2);
}

static SAFE_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);

/// Fails from its second run on.
#[tiered_cache(key = "safe:<id>", ttl = "100ms", fail_safe = "60s", cache_err = "5s")]
async fn fail_safe_first(id: u64) -> Result<u64, LookupError> {
    if SAFE_RUNS.hit() > 1 {
        Err(LookupError::Unavailable)
    } else {
        Ok(id)
    }
}

/// With fail-safe, a failed body is answered with the stale value, and the `Err` is not
/// cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_answers_before_an_err_is_cached() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, "nsafe").await;
    assert_eq!(rt.scope(fail_safe_first(1)).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(150)).await; // past the TTL, kept by fail-safe
    assert_eq!(
        bounded("stale", rt.scope(fail_safe_first(1))).await,
        Ok(1),
        "the stale value"
    );
    let s = rt.stats().total;
    assert_eq!((s.stale_served, s.negative_stored), (1, 0));
    SAFE_RUNS.assert_runs(2);
}
