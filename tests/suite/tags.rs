//! Tags: `tags = ["tenant:<tenant>"]` on the attribute, `invalidate_tag("tenant:acme")` drops
//! every entry carrying the tag, across functions and instances, without `SCAN` (a generation
//! per tag, stamped into the values and checked on read).

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use support::{BodyRuns, RedisServer, bounded, wait_until};
use tiered::{Runtime, tiered_cache};
use tokio::sync::Notify;

/// What the "database" holds per tenant: a version, bumped by a write.
static VERSIONS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Default::default);

fn version(tenant: &str) -> u64 {
    VERSIONS
        .lock()
        .map(|v| v.get(tenant).copied().unwrap_or(0))
        .unwrap_or(0)
}

fn write(tenant: &str) {
    if let Ok(mut v) = VERSIONS.lock() {
        *v.entry(tenant.to_owned()).or_insert(0) += 1;
    }
}

static PROFILE_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);
static ORDER_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);

#[tiered_cache(key = "profile:<tenant>:<id>", ttl = "60s", promote = 1, tags = ["tenant:<tenant>", "user:<id>"])]
async fn profile(tenant: String, id: u64) -> String {
    PROFILE_RUNS.hit();
    format!("{tenant}/{id}/v{}", version(&tenant))
}

#[tiered_cache(key = "orders:<tenant>:<id>", ttl = "60s", promote = 1, tags = ["tenant:<tenant>"])]
async fn orders(tenant: String, id: u64) -> String {
    ORDER_RUNS.hit();
    format!("orders {tenant}/{id}/v{}", version(&tenant))
}

async fn both(rt: &Runtime, tenant: &str, id: u64) -> (String, String) {
    (
        rt.scope(profile(tenant.to_owned(), id)).await,
        rt.scope(orders(tenant.to_owned(), id)).await,
    )
}

fn runs() -> (usize, usize) {
    (PROFILE_RUNS.get(), ORDER_RUNS.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_drops_a_tenants_entries_of_two_functions_in_two_instances_and_spares_the_others()
{
    let redis = RedisServer::start();
    let a = support::runtime(&redis.url(), "tg").await;
    let b = support::runtime(&redis.url(), "tg").await;
    for rt in [&a, &b] {
        both(rt, "acme", 1).await;
        both(rt, "globex", 1).await;
    }
    assert_eq!(runs(), (2, 2), "B read A's values from Redis");
    // Promoted: B's next calls are L1 hits.
    let b_l1 = b.stats().total.l1_hits;
    both(&b, "acme", 1).await;
    assert_eq!(b.stats().total.l1_hits, b_l1 + 2);

    // The read cost of a tag this instance already knows: no extra command.
    redis.reset_stats();
    assert_eq!(
        b.scope(orders("globex".into(), 9)).await,
        "orders globex/9/v0"
    );
    assert_eq!(
        redis.calls("hmget"),
        0,
        "tenant:globex's generation is known"
    );

    write("acme");
    let received = b.stats().total.invalidations_received;
    a.invalidate_tag("tenant:acme")
        .await
        .expect("invalidate_tag");
    let heard = wait_until("B heard the tag's invalidation", || {
        b.stats().total.invalidations_received > received
    })
    .await;
    eprintln!("B heard the tag invalidation after {heard:?}");
    let before = runs();
    assert_eq!(
        both(&b, "acme", 1).await,
        ("acme/1/v1".to_owned(), "orders acme/1/v1".to_owned())
    );
    assert_eq!(
        runs(),
        (before.0 + 1, before.1 + 1),
        "both of acme's entries went"
    );
    assert_eq!(
        both(&a, "acme", 1).await,
        ("acme/1/v1".to_owned(), "orders acme/1/v1".to_owned())
    );
    for rt in [&a, &b] {
        assert_eq!(
            both(rt, "globex", 1).await,
            ("globex/1/v0".to_owned(), "orders globex/1/v0".to_owned())
        );
    }
    assert_eq!(
        runs(),
        (before.0 + 1, before.1 + 1),
        "globex's entries survived (and A read B's new acme values)"
    );

    // A tag of one function only: `user:1` drops both tenants' profiles, not their orders.
    let before = runs();
    b.invalidate_tag("user:1").await.expect("invalidate_tag");
    wait_until("A heard it", || a.stats().total.invalidations_received >= 1).await;
    both(&a, "acme", 1).await;
    both(&a, "globex", 1).await;
    assert_eq!(runs(), (before.0 + 2, before.1));
}

static SLOW_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);
static ENTERED: LazyLock<Notify> = LazyLock::new(Notify::new);
static RELEASE: LazyLock<Notify> = LazyLock::new(Notify::new);
static HOLD: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "slow:<tenant>", ttl = "60s", promote = 1, tags = ["tenant:<tenant>"])]
async fn slow(tenant: String) -> String {
    SLOW_RUNS.hit();
    let read = version(&tenant); // the "query" reads before the write lands
    if HOLD.swap(0, Ordering::SeqCst) == 1 {
        ENTERED.notify_one();
        RELEASE.notified().await;
    }
    format!("{tenant}/v{read}")
}

/// A tag invalidation while a computation of a tagged entry is in flight (its body read the
/// data before the write): the caller gets its value, but nothing stale is stored, in L1 or
/// in Redis; both instances then read the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_during_a_computation_stores_nothing_stale() {
    let redis = RedisServer::start();
    let a = support::runtime(&redis.url(), "tgf").await;
    let b = support::runtime(&redis.url(), "tgf").await;
    HOLD.store(1, Ordering::SeqCst);
    let entered = ENTERED.notified();
    let call = tokio::spawn(a.scope(slow("initech".into())));
    bounded("the body started", entered).await;
    write("initech");
    b.invalidate_tag("tenant:initech")
        .await
        .expect("invalidate_tag");
    wait_until("A heard it", || a.stats().total.invalidations_received >= 1).await;
    RELEASE.notify_one();
    assert_eq!(bounded("call", call).await.expect("task"), "initech/v0");
    let refused = a.stats().total.fills_refused;
    assert_eq!(refused, 1, "the in-flight fill was refused");
    for rt in [&a, &b] {
        assert_eq!(rt.scope(slow("initech".into())).await, "initech/v1");
    }
    SLOW_RUNS.assert_runs(2);
}

static LOCAL_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);

#[tiered_cache(key = "local:<tenant>:<id>", ttl = "60s", tags = ["tenant:<tenant>"])]
async fn local(tenant: String, id: u64) -> u64 {
    LOCAL_RUNS.hit();
    id
}

/// Without Redis, the tag drops this instance's entries of the functions that carry it.
#[tokio::test]
async fn without_redis_a_tag_drops_the_local_entries() {
    let rt = Runtime::builder()
        .namespace("tgl")
        .build()
        .await
        .expect("runtime");
    rt.scope(local("acme".into(), 1)).await;
    rt.scope(local("acme".into(), 1)).await;
    LOCAL_RUNS.assert_runs(1);
    rt.scope(tiered::invalidate_tag("tenant:acme"))
        .await
        .expect("embedded: Ok");
    rt.scope(local("acme".into(), 1)).await;
    LOCAL_RUNS.assert_runs(2);
}
