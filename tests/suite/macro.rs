//! `#[tiered_cache]` through the facade, against a real `redis-server` per test.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use support::{RedisServer, bounded};
use tiered::{Runtime, tiered_cache};

async fn runtime(redis: &RedisServer) -> Runtime {
    Runtime::builder()
        .namespace("m")
        .redis_url(redis.url())
        .build()
        .await
        .expect("runtime")
}

/// Counters per test function (each test uses its own memoized functions).
macro_rules! counter {
    ($name:ident) => {
        static $name: AtomicUsize = AtomicUsize::new(0);
    };
}
fn runs(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

counter!(GET_USER);
#[tiered_cache(strategy = "MediumTerm", key = "user:<id>")]
async fn get_user(id: u64) -> User {
    GET_USER.fetch_add(1, Ordering::SeqCst);
    User {
        id,
        name: format!("user-{id}"),
    }
}

#[tokio::test]
async fn body_runs_once_per_distinct_argument_and_invalidate_recomputes() {
    let redis = RedisServer::start();
    let a = runtime(&redis).await;
    a.scope(async {
        for _ in 0..3 {
            for id in 1..=4 {
                assert_eq!(get_user(id).await.id, id);
            }
        }
    })
    .await;
    assert_eq!(runs(&GET_USER), 4);
    assert_eq!(
        redis.keys(),
        vec!["m:user:<1>", "m:user:<2>", "m:user:<3>", "m:user:<4>"]
    );

    a.scope(invalidate_get_user(2)).await.expect("invalidate");
    assert_eq!(redis.get("m:user:<2>"), None, "deleted in Redis");
    a.scope(get_user(2)).await;
    assert_eq!(
        runs(&GET_USER),
        5,
        "the next call in the same runtime computes again"
    );

    // A second runtime whose L1 does not hold the key: after A invalidates, B computes.
    let b = runtime(&redis).await;
    a.scope(invalidate_get_user(3)).await.expect("invalidate");
    b.scope(get_user(3)).await;
    assert_eq!(runs(&GET_USER), 6);
    b.scope(get_user(4)).await;
    assert_eq!(runs(&GET_USER), 6, "B reads A's other entries from L2");
}

#[derive(Debug, Clone, PartialEq)]
struct DbError(String);

counter!(FALLIBLE);
#[tiered_cache(key = "fallible:<n>")]
async fn fallible(n: u32) -> Result<u32, DbError> {
    FALLIBLE.fetch_add(1, Ordering::SeqCst);
    if n == 0 {
        Err(DbError("zero".into()))
    } else {
        Ok(n)
    }
}

counter!(MAYBE);
#[tiered_cache(key = "maybe:<n>")]
async fn maybe(n: u32) -> Option<u32> {
    MAYBE.fetch_add(1, Ordering::SeqCst);
    (n > 0).then_some(n)
}

#[tokio::test]
async fn err_and_none_are_not_cached() {
    let redis = RedisServer::start();
    let rt = runtime(&redis).await;
    rt.scope(async {
        for _ in 0..3 {
            assert_eq!(fallible(0).await, Err(DbError("zero".into())));
            assert_eq!(maybe(0).await, None);
        }
        for _ in 0..3 {
            assert_eq!(fallible(5).await, Ok(5));
            assert_eq!(maybe(5).await, Some(5));
        }
    })
    .await;
    assert_eq!((runs(&FALLIBLE), runs(&MAYBE)), (4, 4));
    assert_eq!(redis.keys(), vec!["m:fallible:<5>", "m:maybe:<5>"]);
}

counter!(SHORT);
#[tiered_cache(ttl = "1s", key = "short:<n>")]
async fn short(n: u32) -> u32 {
    SHORT.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test]
async fn a_one_second_ttl_is_recomputed_after_expiry() {
    let redis = RedisServer::start();
    let rt = runtime(&redis).await;
    rt.scope(short(1)).await;
    rt.scope(short(1)).await;
    assert_eq!(runs(&SHORT), 1);
    let pttl = redis.pttl("m:short:<1>");
    assert!((1..=1000).contains(&pttl), "L2 TTL is 1 s: {pttl}");
    bounded("the entry to expire in Redis", async {
        while redis.pttl("m:short:<1>") != -2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    rt.scope(short(1)).await;
    assert_eq!(runs(&SHORT), 2);
}

struct Repo {
    tenant: String,
}

counter!(REPO_GET);
#[tiered_cache]
impl Repo {
    #[tiered_cache(key = "repo:<self.tenant>:<id>")]
    async fn get(&self, id: u32) -> String {
        REPO_GET.fetch_add(1, Ordering::SeqCst);
        format!("{}-{id}", self.tenant)
    }
}

#[tokio::test]
async fn a_self_field_in_the_key_keeps_tenants_apart() {
    let redis = RedisServer::start();
    let rt = runtime(&redis).await;
    let (a, b) = (
        Repo {
            tenant: "acme".into(),
        },
        Repo {
            tenant: "umbrella".into(),
        },
    );
    rt.scope(async {
        assert_eq!(a.get(1).await, "acme-1");
        assert_eq!(b.get(1).await, "umbrella-1");
        assert_eq!(a.get(1).await, "acme-1");
        a.invalidate_get(1).await.expect("invalidate");
        assert_eq!(b.get(1).await, "umbrella-1");
    })
    .await;
    assert_eq!(runs(&REPO_GET), 2);
    assert_eq!(redis.keys(), vec!["m:repo:<umbrella>:<1>"]);
}

counter!(LOCAL_ONLY);
#[tiered_cache(key = "local:<n>", tiers = "l1")]
async fn local_only(n: u32) -> u32 {
    LOCAL_ONLY.fetch_add(1, Ordering::SeqCst);
    n
}

counter!(REMOTE_ONLY);
#[tiered_cache(key = "remote:<n>", tiers = "l2")]
async fn remote_only(n: u32) -> u32 {
    REMOTE_ONLY.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test]
async fn tiers_l1_sends_nothing_to_redis_and_tiers_l2_never_fills_l1() {
    let redis = RedisServer::start();
    let rt = runtime(&redis).await;
    redis.reset_stats();
    rt.scope(async {
        for _ in 0..3 {
            local_only(1).await;
        }
    })
    .await;
    let sent = ["get", "pttl", "set", "del"].map(|c| redis.calls(c));
    assert_eq!(sent, [0, 0, 0, 0], "tiers = \"l1\" sent {sent:?}");
    assert_eq!(runs(&LOCAL_ONLY), 1);
    rt.scope(async {
        for _ in 0..3 {
            remote_only(1).await;
        }
    })
    .await;
    let s = rt.stats();
    let site = s
        .sites
        .iter()
        .find(|s| s.name.ends_with("::remote_only"))
        .map(|s| s.counts)
        .unwrap_or_default();
    assert_eq!(runs(&REMOTE_ONLY), 1);
    assert_eq!(
        (site.l1_hits, site.l2_hits, site.promotions),
        (0, 2, 0),
        "served by L2, never by L1"
    );
    assert_eq!(redis.keys(), vec!["m:remote:<1>"]);
}

counter!(PROMOTED);
#[tiered_cache(key = "promoted:<n>", promote = 1)]
async fn promoted(n: u32) -> u32 {
    PROMOTED.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test]
async fn promote_1_always_promotes() {
    let redis = RedisServer::start();
    let a = runtime(&redis).await;
    let b = Runtime::builder()
        .namespace("m")
        .redis_url(redis.url())
        .promotion_frequency(1000)
        .build()
        .await
        .expect("b");
    a.scope(async {
        for n in 0..20 {
            promoted(n).await;
        }
    })
    .await;
    b.scope(async {
        for n in 0..20 {
            promoted(n).await;
            promoted(n).await;
        }
    })
    .await;
    let t = b.stats().total;
    assert_eq!(
        (t.l2_hits, t.promotions, t.l1_hits),
        (20, 20, 20),
        "the site's promote = 1 overrides the runtime's 1000"
    );
    assert_eq!(runs(&PROMOTED), 20);
}

counter!(SCHEMA);
#[tiered_cache(key = "schema:<n>", version = 1)]
async fn schema_v1(n: u32) -> u32 {
    SCHEMA.fetch_add(1, Ordering::SeqCst);
    n
}
#[tiered_cache(key = "schema:<n>", version = 2)]
async fn schema_v2(n: u32) -> u32 {
    SCHEMA.fetch_add(1, Ordering::SeqCst);
    n + 100
}

#[tokio::test]
async fn a_new_version_turns_old_entries_into_misses() {
    let redis = RedisServer::start();
    let old = runtime(&redis).await;
    let new = runtime(&redis).await;
    old.scope(schema_v1(1)).await;
    assert_eq!(
        new.scope(schema_v2(1)).await,
        101,
        "v2 does not read v1's entry"
    );
    assert_eq!(runs(&SCHEMA), 2);
    assert_eq!(new.stats().total.decode_failures, 1);
    assert_eq!(new.scope(schema_v2(1)).await, 101);
    assert_eq!(runs(&SCHEMA), 2);
}

counter!(HYGIENE);
/// Argument names that generated code must not collide with.
#[tiered_cache(key = "hygiene:<key>:<site>:<cache>:<value>:<result>:<rt>:<__tiered>")]
async fn hygiene(key: u8, site: u8, cache: u8, value: u8, result: u8, rt: u8, __tiered: u8) -> u32 {
    HYGIENE.fetch_add(1, Ordering::SeqCst);
    u32::from(key)
        + u32::from(site)
        + u32::from(cache)
        + u32::from(value)
        + u32::from(result)
        + u32::from(rt)
        + u32::from(__tiered)
}

counter!(BY_NAME);
#[tiered_cache(key = "name:<name>")]
async fn by_name(name: &str) -> usize {
    BY_NAME.fetch_add(1, Ordering::SeqCst);
    name.len()
}

#[tokio::test]
async fn hygiene_and_reference_arguments() {
    let redis = RedisServer::start();
    let rt = runtime(&redis).await;
    rt.scope(async {
        assert_eq!(hygiene(1, 2, 3, 4, 5, 6, 7).await, 28);
        assert_eq!(hygiene(1, 2, 3, 4, 5, 6, 7).await, 28);
        invalidate_hygiene(1, 2, 3, 4, 5, 6, 7)
            .await
            .expect("invalidate");
        assert_eq!(hygiene(1, 2, 3, 4, 5, 6, 7).await, 28);
        assert_eq!(by_name("x").await, 1);
        assert_eq!(by_name(&String::from("x")).await, 1);
        let owned = String::from("x");
        assert_eq!(by_name(&owned).await, 1);
    })
    .await;
    assert_eq!(runs(&HYGIENE), 2);
    assert_eq!(
        runs(&BY_NAME),
        1,
        "\"x\" and &String::from(\"x\") are the same key"
    );
}

struct Users;
struct Orders;
counter!(DEFAULT_KEY);
#[tiered_cache]
impl Users {
    #[tiered_cache]
    async fn get(&self, id: u32) -> String {
        DEFAULT_KEY.fetch_add(1, Ordering::SeqCst);
        format!("user {id}")
    }
}
#[tiered_cache]
impl Orders {
    #[tiered_cache]
    async fn get(&self, id: u32) -> String {
        DEFAULT_KEY.fetch_add(1, Ordering::SeqCst);
        format!("order {id}")
    }
}

/// Same-named methods of two types are two functions: their keys, stats rows and
/// `invalidate_all_*` stay apart, and their identity comes from what the user wrote (pinned:
/// the keys and the schema fingerprints are the same for every build and toolchain;
/// `module_path!()` writes this test file's module, `macro`, as `r#macro`).
#[tokio::test]
async fn same_named_methods_of_two_types_stay_apart_and_their_keys_are_pinned() {
    let redis = RedisServer::start();
    let rt = runtime(&redis).await;
    rt.scope(async {
        assert_eq!(Users.get(1).await, "user 1");
        assert_eq!(Orders.get(1).await, "order 1");
        assert_eq!(Users.get(1).await, "user 1");
        Orders::invalidate_get(1).await.expect("invalidate");
        assert_eq!(Users.get(1).await, "user 1");
        assert_eq!(Orders.get(2).await, "order 2");
        Users::invalidate_all_get().await.expect("invalidate_all");
        assert_eq!(Orders.get(2).await, "order 2", "from Orders' L1, untouched");
    })
    .await;
    assert_eq!(runs(&DEFAULT_KEY), 3);
    let s = rt.stats();
    let names: Vec<&str> = s.sites.iter().map(|x| x.name).collect();
    assert!(
        names.contains(&concat!(module_path!(), "::Users::get"))
            && names.contains(&concat!(module_path!(), "::Orders::get")),
        "{names:?}"
    );
    assert_eq!(
        s.site(concat!(module_path!(), "::Orders::get"))
            .map(|c| c.l1_hits),
        Some(1)
    );
    assert_eq!(
        redis.keys(),
        vec![
            format!("m:{}::Orders::get:<2>", module_path!()),
            format!("m:{}::Users::get:<1>", module_path!()),
        ]
    );
    // The schema fingerprint is SHA-256 over the return type as written (and the version).
    let stored = redis
        .get(&format!("m:{}::Users::get:<1>", module_path!()))
        .expect("stored");
    assert_eq!(&stored[4..20], &tiered::codec::fingerprint("String", 0)[..]);
    assert_eq!(
        tiered::codec::fingerprint("String", 0)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        PINNED_STRING_FINGERPRINT
    );
}

/// `codec::fingerprint("String", 0)`, pinned: it must never change between builds.
const PINNED_STRING_FINGERPRINT: &str = "11a75d24e23bfd91b4a45c9215c51e51";

#[derive(Debug)]
struct Opaque;

counter!(OPAQUE);
#[tiered_cache(key = "opaque")]
async fn opaque() -> Result<u8, Opaque> {
    if OPAQUE.fetch_add(1, Ordering::SeqCst) == 0 {
        Err(Opaque)
    } else {
        Ok(1)
    }
}

/// A crate-wide alias whose error is `Serialize + Clone`: nothing in the signature says
/// `Result`, and still an `Err` is never cached.
type AppResult<T> = Result<T, String>;
type Maybe<T> = Option<T>;

counter!(ALIASED);
#[tiered_cache(key = "aliased:<n>")]
async fn aliased(n: u8) -> AppResult<u8> {
    ALIASED.fetch_add(1, Ordering::SeqCst);
    if n == 0 { Err("zero".into()) } else { Ok(n) }
}

counter!(ALIASED_OPTION);
#[tiered_cache(key = "aliased-option:<n>")]
async fn aliased_option(n: u8) -> Maybe<u8> {
    ALIASED_OPTION.fetch_add(1, Ordering::SeqCst);
    (n != 0).then_some(n)
}

counter!(DECLARED);
#[tiered_cache(key = "declared:<n>", returns = "result")]
async fn declared(n: u8) -> AppResult<u8> {
    DECLARED.fetch_add(1, Ordering::SeqCst);
    if n == 0 { Err("zero".into()) } else { Ok(n) }
}

#[tokio::test]
async fn uncloneable_errors_and_aliased_results_work() {
    let rt = Runtime::builder().build().await.expect("embedded");
    rt.scope(async {
        assert!(opaque().await.is_err());
        assert_eq!(opaque().await.ok(), Some(1));
        assert_eq!(opaque().await.ok(), Some(1));
        assert!(aliased(0).await.is_err());
        assert!(aliased(0).await.is_err());
        assert_eq!(aliased(3).await, Ok(3));
        assert_eq!(aliased(3).await, Ok(3));
        assert_eq!(aliased_option(0).await, None);
        assert_eq!(aliased_option(0).await, None);
        assert_eq!(aliased_option(4).await, Some(4));
        assert_eq!(aliased_option(4).await, Some(4));
        assert!(declared(0).await.is_err());
        assert!(declared(0).await.is_err());
    })
    .await;
    assert_eq!(
        (
            runs(&OPAQUE),
            runs(&ALIASED),
            runs(&ALIASED_OPTION),
            runs(&DECLARED)
        ),
        (2, 3, 3, 2),
        "an Err or a None behind an alias was cached"
    );
}

counter!(FAILING_ANYHOW);
#[tiered_cache(key = "failing-anyhow:<n>")]
async fn failing_anyhow(n: u32) -> anyhow::Result<u32> {
    FAILING_ANYHOW.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    anyhow::bail!("database down for {n}")
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

counter!(FAILING_BOXED);
#[tiered_cache(key = "failing-boxed:<n>")]
async fn failing_boxed(n: u32) -> BoxResult<u32> {
    FAILING_BOXED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    Err(format!("database down for {n}").into())
}

/// 200 concurrent callers of a body that keeps failing with an error that is not `Clone`
/// (`anyhow::Error`, a boxed error): every caller gets the leader's error text, the body runs
/// at most twice per burst, and nobody waits for a queue of failing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_burst_with_uncloneable_errors_runs_the_body_at_most_twice() {
    let rt = Runtime::builder().build().await.expect("embedded");
    let start = std::time::Instant::now();
    let anyhow_calls: Vec<_> = (0..200)
        .map(|_| tokio::spawn(rt.scope(failing_anyhow(1))))
        .collect();
    // A boxed error: concurrent on one thread (a memoized future with a
    // `Box<dyn Error + Send + Sync>` error cannot be `tokio::spawn`ed yet, see the closing
    // note of this change).
    let local = tokio::task::LocalSet::new();
    let boxed_calls: Vec<_> = (0..200)
        .map(|_| local.spawn_local(rt.scope(failing_boxed(1))))
        .collect();
    let boxed_calls = local
        .run_until(async move {
            let mut out = Vec::new();
            for c in boxed_calls {
                out.push(c.await);
            }
            out
        })
        .await;
    for c in anyhow_calls {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), c)
            .await
            .expect("hung")
            .expect("task");
        assert_eq!(
            r.map_err(|e| e.to_string()),
            Err("database down for 1".into())
        );
    }
    for r in boxed_calls {
        let r = r.expect("task");
        assert_eq!(
            r.map_err(|e| e.to_string()),
            Err("database down for 1".into())
        );
    }
    let took = start.elapsed();
    let runs = (runs(&FAILING_ANYHOW), runs(&FAILING_BOXED));
    assert!(runs.0 <= 2 && runs.1 <= 2, "body runs {runs:?}");
    println!("2 x 200 callers of a failing body (50 ms): body runs {runs:?}, all done in {took:?}");
}
