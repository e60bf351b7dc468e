//! L2 behaviour against a real `redis-server` spawned per test.

use crate::support;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use support::{BodyRuns, RedisServer, bounded, wait_until};
use tiered::{Error, LeaseRead, Plain, Runtime, Site, SiteOptions, Tiers, codec, memoize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

async fn runtime(redis: &RedisServer, promote: u32) -> Runtime {
    Runtime::builder()
        .namespace("t")
        .redis_url(redis.url())
        .promotion_frequency(promote)
        .build()
        .await
        .expect("runtime with redis")
}

const fn opts(promote: u32) -> SiteOptions {
    SiteOptions {
        ttl: SiteOptions::DEFAULT.ttl,
        tiers: Tiers::Both,
        promote,
        version: 0,
        ..SiteOptions::DEFAULT
    }
}

static USER: Site = Site::new("l2::user", "user:<id>", opts(0));

async fn get_user(id: u64, calls: &BodyRuns) -> User {
    let calls = calls.clone();
    memoize::<Plain<User>, _, _>(&USER, &[&id], || async move {
        calls.hit();
        User {
            id,
            name: format!("user-{id}"),
        }
    })
    .await
}

#[tokio::test]
async fn l1_hit_does_not_touch_redis() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, 10).await;
    let calls = BodyRuns::default();
    rt.scope(get_user(1, &calls)).await;
    redis.reset_stats();
    for _ in 0..100 {
        assert_eq!(rt.scope(get_user(1, &calls)).await.name, "user-1");
    }
    assert_eq!(calls.get(), 1);
    let (get, pttl, set) = (redis.calls("get"), redis.calls("pttl"), redis.calls("set"));
    println!("100 L1 hits sent get={get} pttl={pttl} set={set} to Redis");
    assert_eq!((get, pttl, set), (0, 0, 0));
}

#[tokio::test]
async fn miss_is_two_round_trips_and_l2_hit_is_one() {
    let redis = RedisServer::start();
    let a = runtime(&redis, 10).await;
    let b = runtime(&redis, 10).await;
    let calls = BodyRuns::default();
    redis.reset_stats();
    a.scope(get_user(2, &calls)).await;
    let counts = |r: &RedisServer| {
        (
            r.calls("get"),
            r.calls("pttl"),
            r.calls("set"),
            r.calls("eval"),
            r.calls("hmget"),
        )
    };
    let miss = counts(&redis);
    // Round trip 1: `SET key LEASE NX GET` (the value, or the fill lease), plus (first read of
    // the function in this runtime) HMGET of the generations. Round trip 2: the fill script
    // (EVAL), whose own GET (lease check) and SET are counted by Redis too. No PTTL: a value
    // carries its expiry.
    assert_eq!(miss, (1, 0, 2, 1, 1), "a miss: two round trips");
    redis.reset_stats();
    assert_eq!(
        b.scope(get_user(2, &calls)).await,
        User {
            id: 2,
            name: "user-2".into()
        }
    );
    let first_hit = counts(&redis);
    assert_eq!(
        first_hit,
        (0, 0, 1, 0, 1),
        "B's first L2 hit: SET NX GET (a no-op on an existing key) + the generations, one round trip"
    );
    a.scope(get_user(3, &calls)).await;
    redis.reset_stats();
    b.scope(get_user(3, &calls)).await;
    let hit = counts(&redis);
    assert_eq!(
        hit,
        (0, 0, 1, 0, 0),
        "a subscribed instance's L2 hit: one command, nothing else"
    );
    assert_eq!(calls.get(), 2, "B got A's values without running the body");
    assert_eq!(b.stats().total.l2_hits, 2);
    assert_eq!(b.stats().total.computations, 0);
    println!(
        "miss: get/pttl/set/eval/hmget = {miss:?} (2 round trips); first L2 hit: {first_hit:?}; L2 hit: {hit:?} (1 round trip)"
    );
}

static ALWAYS: Site = Site::new("l2::always", "always:<id>", opts(1));

#[tokio::test]
async fn promotion_with_n_1_always_promotes() {
    let redis = RedisServer::start();
    let a = runtime(&redis, 10).await;
    let b = runtime(&redis, 10).await;
    let call =
        |id: u64| memoize::<Plain<u64>, _, _>(&ALWAYS, &[&id], move || async move { id * 3 });
    for id in 0..50 {
        a.scope(async { call(id).await }).await;
    }
    for id in 0..50 {
        assert_eq!(b.scope(async { call(id).await }).await, id * 3);
    }
    redis.reset_stats();
    for id in 0..50 {
        assert_eq!(b.scope(async { call(id).await }).await, id * 3);
    }
    let s = b.stats().total;
    assert_eq!((s.l2_hits, s.promotions, s.l1_hits), (50, 50, 50));
    assert_eq!(redis.calls("get"), 0, "promoted entries are served from L1");
}

static TENTH: Site = Site::new("l2::tenth", "tenth:<id>", opts(10));

#[tokio::test]
async fn promotion_with_n_10_promotes_about_one_in_ten() {
    let redis = RedisServer::start();
    // Seed 10 000 entries directly (valid envelopes), then read each once from a fresh runtime.
    // Without the macro, a site's schema fingerprint is its name and version.
    let fp = codec::fingerprint(TENTH.name(), 0);
    let mut conn = redis.conn();
    let mut pipe = redis::pipe();
    let expires = unix_ms() + 600_000;
    for id in 0..10_000u64 {
        let bytes =
            codec::encode_until(&fp, codec::Stamp::default(), expires, &id).expect("encode");
        pipe.cmd("SET")
            .arg(format!("t:tenth:<{id}>"))
            .arg(bytes)
            .arg("PX")
            .arg(600_000)
            .ignore();
    }
    pipe.query::<()>(&mut conn).expect("seed");
    let b = runtime(&redis, 1).await; // the site's promote = 10 overrides the runtime's 1
    b.scope(async {
        for id in 0..10_000u64 {
            let v = memoize::<Plain<u64>, _, _>(&TENTH, &[&id], || async { u64::MAX }).await;
            assert_eq!(v, id);
        }
    })
    .await;
    let s = b.stats().total;
    println!(
        "promote = 10: {} promotions over {} L2 hits (expected ~1000, sd ~30)",
        s.promotions, s.l2_hits
    );
    assert_eq!((s.l2_hits, s.computations), (10_000, 0));
    assert!(
        (700..=1300).contains(&s.promotions),
        "{} promotions",
        s.promotions
    );
}

static LONG_TTL: Site = Site::new(
    "l2::long_ttl",
    "long:<id>",
    SiteOptions {
        ttl: Duration::from_secs(3600),
        tiers: Tiers::Both,
        promote: 1,
        version: 0,
        ..SiteOptions::DEFAULT
    },
);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The remaining lifetime comes from the envelope (the writer records when its `PX` runs
/// out), so an L2 hit needs no `PTTL`.
#[tokio::test]
async fn promoted_ttl_never_outlives_the_remaining_l2_ttl() {
    let redis = RedisServer::start();
    let fp = codec::fingerprint(LONG_TTL.name(), 0);
    let bytes =
        codec::encode_until(&fp, codec::Stamp::default(), unix_ms() + 400, &41u64).expect("encode");
    redis::cmd("SET")
        .arg("t:long:<1>")
        .arg(bytes)
        .arg("PX")
        .arg(400)
        .query::<()>(&mut redis.conn())
        .expect("seed");
    let rt = runtime(&redis, 10).await;
    let calls = BodyRuns::default();
    let call = |calls: BodyRuns| async move {
        memoize::<Plain<u64>, _, _>(&LONG_TTL, &[&1u64], || async move {
            calls.hit();
            42
        })
        .await
    };
    assert_eq!(
        rt.scope(call(calls.clone())).await,
        41,
        "L2 hit, promoted (promote = 1)"
    );
    assert_eq!(rt.scope(call(calls.clone())).await, 41, "L1 hit");
    assert_eq!(rt.stats().total.promotions, 1);
    // Wait for Redis to expire the key, then a little longer for clocks to agree.
    bounded("key to expire in Redis", async {
        while redis.pttl("t:long:<1>") != -2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        rt.scope(call(calls.clone())).await,
        42,
        "the L1 copy expired with the L2 entry, not after the site's 1 h TTL"
    );
    assert_eq!(calls.get(), 1);
}

/// A value whose writer recorded no expiry (wire 1 and 2 wrote none) is served from L2 but
/// never promoted: its L1 copy could outlive the L2 entry.
#[tokio::test]
async fn values_without_a_recorded_expiry_are_not_promoted() {
    let redis = RedisServer::start();
    let fp = codec::fingerprint(LONG_TTL.name(), 0);
    let bytes = codec::encode(&fp, codec::Stamp::default(), &41u64).expect("encode");
    redis.set("t:long:<2>", &bytes);
    let rt = runtime(&redis, 1).await;
    for _ in 0..3 {
        let call =
            async { memoize::<Plain<u64>, _, _>(&LONG_TTL, &[&2u64], || async { 42 }).await };
        assert_eq!(rt.scope(call).await, 41);
    }
    let s = rt.stats().total;
    assert_eq!((s.l2_hits, s.promotions, s.computations), (3, 0, 0));
}

#[tokio::test]
async fn two_runtimes_share_values_through_redis() {
    let redis = RedisServer::start();
    let a = runtime(&redis, 10).await;
    let b = runtime(&redis, 10).await;
    let (ca, cb) = (BodyRuns::default(), BodyRuns::default());
    assert_eq!(a.scope(get_user(9, &ca)).await.id, 9);
    assert_eq!(b.scope(get_user(9, &cb)).await.id, 9);
    assert_eq!(
        (ca.get(), cb.get()),
        (1, 0),
        "B got an L2 hit without running the body"
    );
    assert_eq!(redis.keys(), vec!["t:user:<9>".to_owned()]);
}

static PERSON: Site = Site::new("l2::person", "person:<id>", SiteOptions::DEFAULT);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Person {
    first: String,
    last: String,
    age: u32,
}

fn fresh() -> Person {
    Person {
        first: "Grace".into(),
        last: "Hopper".into(),
        age: 85,
    }
}

async fn get_person(id: u32, calls: &BodyRuns) -> Person {
    let calls = calls.clone();
    memoize::<Plain<Person>, _, _>(&PERSON, &[&id], || async move {
        calls.hit();
        fresh()
    })
    .await
}

fn person_fp() -> [u8; 16] {
    codec::fingerprint(PERSON.name(), 0)
}

/// Writes `bytes` under the key, calls once, and checks: recomputed, counted, overwritten.
async fn assert_garbage_is_a_miss(
    redis: &RedisServer,
    rt: &Runtime,
    id: u32,
    bytes: &[u8],
    what: &str,
) {
    let key = format!("t:person:<{id}>");
    redis.set(&key, bytes);
    let calls = BodyRuns::default();
    let before = rt.stats().total.decode_failures;
    let v = bounded(what, rt.scope(get_person(id, &calls))).await;
    assert_eq!(v, fresh(), "{what}: wrong value");
    assert_eq!(calls.get(), 1, "{what}: must recompute");
    assert_eq!(
        rt.stats().total.decode_failures,
        before + 1,
        "{what}: counted"
    );
    let stored = redis.get(&key).expect("overwritten");
    assert_eq!(
        codec::decode::<Person>(&person_fp(), &stored, 1 << 20).map(|(v, _)| v),
        Ok(fresh()),
        "{what}: overwritten with a valid value"
    );
}

#[tokio::test]
async fn scenario_13_corrupt_truncated_and_hostile_bytes_are_misses() {
    let redis = RedisServer::start();
    let rt = Runtime::builder()
        .namespace("t")
        .redis_url(redis.url())
        .promotion_frequency(1)
        .max_value_bytes(64 * 1024)
        .build()
        .await
        .expect("runtime");
    let good = codec::encode(&person_fp(), codec::Stamp::default(), &fresh()).expect("encode");
    let header = &good[..codec::HEADER_LEN];
    let random: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    let mut huge_array = header.to_vec();
    huge_array.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]);
    let mut deep = header.to_vec();
    deep.extend(std::iter::repeat_n(0x91u8, 200_000));
    let mut oversized = header.to_vec();
    oversized.extend(std::iter::repeat_n(0u8, 100 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("truncated value", good[..good.len() - 5].to_vec()),
        ("valid value followed by junk", trailing),
        ("array32 claiming u32::MAX elements", huge_array),
        ("200 000 nested arrays", deep),
        ("value over max_value_bytes", oversized),
        ("empty value", Vec::new()),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let t = Instant::now();
        assert_garbage_is_a_miss(&redis, &rt, i as u32, bytes, what).await;
        println!(
            "scenario 13: {what:<40} -> miss, recomputed, overwritten ({:?})",
            t.elapsed()
        );
    }
}

#[tokio::test]
async fn scenario_12_type_changes_never_decode_into_wrong_values() {
    #[derive(Serialize)]
    struct V1Swapped {
        last: String,
        first: String,
        age: u32,
    }
    #[derive(Serialize)]
    struct V1Fewer {
        first: String,
        last: String,
    }
    #[derive(Serialize)]
    struct V1Wider {
        first: String,
        last: String,
        age: i64,
        extra: bool,
    }
    let redis = RedisServer::start();
    let rt = runtime(&redis, 1).await;
    // The same type name (fingerprint) with an older shape, as after a deploy that forgot to
    // bump `version`: named encoding decodes by field name or not at all.
    let fp = person_fp();
    let swapped = V1Swapped {
        last: "Hopper".into(),
        first: "Grace".into(),
        age: 85,
    };
    let calls = BodyRuns::default();
    redis.set(
        "t:person:<100>",
        &codec::encode(&fp, codec::Stamp::default(), &swapped).expect("encode"),
    );
    assert_eq!(
        rt.scope(get_person(100, &calls)).await,
        fresh(),
        "(a) swapped order decodes by name"
    );
    let fewer = V1Fewer {
        first: "Grace".into(),
        last: "Hopper".into(),
    };
    redis.set(
        "t:person:<101>",
        &codec::encode(&fp, codec::Stamp::default(), &fewer).expect("encode"),
    );
    assert_eq!(
        rt.scope(get_person(101, &calls)).await,
        fresh(),
        "(b) a field added since: miss and recompute"
    );
    let wider = V1Wider {
        first: "Grace".into(),
        last: "Hopper".into(),
        age: 85,
        extra: true,
    };
    redis.set(
        "t:person:<102>",
        &codec::encode(&fp, codec::Stamp::default(), &wider).expect("encode"),
    );
    assert_eq!(
        rt.scope(get_person(102, &calls)).await,
        fresh(),
        "(c)/(d) removed field and u32 vs i64 decode by name to the same values"
    );
    assert_eq!(calls.get(), 1, "only (b) had to recompute");
    // A bumped `version` (or another type) changes the fingerprint: old entries are misses.
    let old = codec::encode(
        &codec::fingerprint(PERSON.name(), 7),
        codec::Stamp::default(),
        &fresh(),
    )
    .expect("encode");
    redis.set("t:person:<103>", &old);
    assert_eq!(rt.scope(get_person(103, &calls)).await, fresh());
    assert_eq!(calls.get(), 2, "foreign fingerprint: miss and recompute");
    assert_eq!(rt.stats().total.decode_failures, 2);
}

static BIG: Site = Site::new("l2::big", "big:<id>", SiteOptions::DEFAULT);

#[tokio::test]
async fn scenario_14_oversized_results_are_not_written_to_l2() {
    let redis = RedisServer::start();
    let rt = Runtime::builder()
        .namespace("t")
        .redis_url(redis.url())
        .max_value_bytes(1024 * 1024)
        .build()
        .await
        .expect("runtime");
    let calls = BodyRuns::default();
    let call = |calls: BodyRuns| async move {
        memoize::<Plain<Vec<u8>>, _, _>(&BIG, &[&1], || async move {
            calls.hit();
            vec![7u8; 10 * 1024 * 1024]
        })
        .await
    };
    redis.set("t:big:<1>", b"an older value that must not linger");
    assert_eq!(rt.scope(call(calls.clone())).await.len(), 10 * 1024 * 1024);
    assert_eq!(
        redis.get("t:big:<1>"),
        None,
        "nothing over max_value_bytes in Redis"
    );
    let s = rt.stats().total;
    assert_eq!((s.oversize_skips, s.l2_writes), (1, 0));
    assert_eq!(rt.scope(call(calls.clone())).await.len(), 10 * 1024 * 1024);
    assert_eq!(calls.get(), 1, "L1 still holds it");
}

/// An id the outage loop never computes.
const FRESH: u64 = 1 << 40;

static OUTAGE: Site = Site::new("l2::outage", "outage:<id>", SiteOptions::DEFAULT);

async fn outage_call(id: u64, calls: &BodyRuns) -> u64 {
    let calls = calls.clone();
    memoize::<Plain<u64>, _, _>(&OUTAGE, &[&id], || async move {
        calls.hit();
        id + 1000
    })
    .await
}

#[tokio::test]
async fn scenario_16_wrong_password_is_a_build_error_and_the_right_one_works() {
    let redis = RedisServer::start_with(&["--requirepass", "right-pw"]);
    let bad = format!("redis://:S3cr3t-canary@127.0.0.1:{}/", redis.port());
    match Runtime::builder().redis_url(bad).build().await {
        Err(Error::Auth { addr, detail }) => {
            assert_eq!(addr, format!("127.0.0.1:{}", redis.port()));
            assert!(!detail.contains("S3cr3t-canary"));
        }
        other => panic!("expected Error::Auth, got {other:?}"),
    }
    let rt = Runtime::builder()
        .redis_url(redis.url())
        .build()
        .await
        .expect("right password");
    assert!(rt.stats().l2_connected);
}

#[tokio::test]
async fn invalidate_evicts_l1_and_deletes_in_redis() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, 10).await;
    let calls = BodyRuns::default();
    rt.scope(get_user(3, &calls)).await;
    assert_eq!(redis.keys(), vec!["t:user:<3>".to_owned()]);
    rt.invalidate(&USER, &[&3u64]).await.expect("invalidate");
    assert!(redis.keys().is_empty());
    rt.scope(get_user(3, &calls)).await;
    assert_eq!(calls.get(), 2, "the next call computes again");
}

#[tokio::test]
async fn invalidate_reports_an_unreachable_redis_but_still_evicts_locally() {
    let mut redis = RedisServer::start();
    let rt = runtime(&redis, 10).await;
    let calls = BodyRuns::default();
    rt.scope(get_user(4, &calls)).await;
    redis.kill();
    let r = rt.invalidate(&USER, &[&4u64]).await;
    assert!(r.is_err(), "remote part failed and is reported: {r:?}");
    assert_eq!(rt.stats().total.invalidations_failed, 1, "and counted");
    rt.scope(get_user(4, &calls)).await;
    assert_eq!(calls.get(), 2, "the local eviction happened anyway");
}

#[tokio::test]
async fn scenario_16_acl_refusals_are_build_errors() {
    let redis = RedisServer::start();
    // May use other keys only; may use our keys but not GET; may do everything on ours.
    redis.cmd::<()>(&[
        b"ACL",
        b"SETUSER",
        b"elsewhere",
        b"on",
        b">pw1",
        b"~other:*",
        b"+@all",
    ]);
    redis.cmd::<()>(&[
        b"ACL", b"SETUSER", b"noget", b"on", b">pw2", b"~t:*", b"+@all", b"-get",
    ]);
    redis.cmd::<()>(&[
        b"ACL",
        b"SETUSER",
        b"scoped",
        b"on",
        b">pw3",
        b"~t:*",
        b"&t:tiered:*",
        b"+@all",
    ]);
    // Our keys and commands, but not our invalidation channel (Redis 7's default for new
    // users is `resetchannels`).
    redis.cmd::<()>(&[
        b"ACL",
        b"SETUSER",
        b"nochannel",
        b"on",
        b">pw4",
        b"~t:*",
        b"+@all",
    ]);
    for (user, pw) in [("elsewhere", "pw1"), ("noget", "pw2"), ("nochannel", "pw4")] {
        let url = format!("redis://{user}:{pw}@127.0.0.1:{}/", redis.port());
        match Runtime::builder()
            .namespace("t")
            .redis_url(url)
            .build()
            .await
        {
            Err(Error::Auth { detail, .. }) => println!("{user}: refused at build: {detail}"),
            other => panic!("{user}: expected Error::Auth, got {other:?}"),
        }
    }
    let url = format!("redis://scoped:pw3@127.0.0.1:{}/", redis.port());
    let rt = Runtime::builder()
        .namespace("t")
        .redis_url(url)
        .build()
        .await
        .expect("scoped user");
    let calls = BodyRuns::default();
    rt.scope(get_user(5, &calls)).await;
    assert_eq!(
        redis.keys(),
        vec!["t:user:<5>".to_owned()],
        "the probe key is gone, the value is there"
    );
}

/// A frozen (SIGSTOP) server keeps TCP up and answers nothing: every L2 operation is cut at
/// `l2_timeout`, the breaker opens and calls stop waiting on Redis at all; after SIGCONT the
/// breaker closes by itself and L2 hits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_is_time_boxed_and_the_breaker_opens_then_closes() {
    let redis = RedisServer::start();
    let build = || {
        Runtime::builder()
            .namespace("t")
            .redis_url(redis.url())
            .l2_timeout(Duration::from_millis(100))
            .breaker_cooldown(Duration::from_millis(200))
            .promotion_frequency(u32::MAX)
            .build()
    };
    let (a, b) = (build().await.expect("a"), build().await.expect("b"));
    let calls = BodyRuns::default();
    redis.freeze();
    let mut latencies = Vec::new();
    for id in 0..20 {
        let t = Instant::now();
        assert_eq!(
            bounded("call while frozen", a.scope(outage_call(id, &calls))).await,
            id + 1000
        );
        latencies.push(t.elapsed());
    }
    let worst = latencies.iter().max().copied().unwrap_or_default();
    let s = a.stats().total;
    println!(
        "frozen: first call {:?}, last call {:?}, max {worst:?}; timeouts {}, skips {}, breaker transitions {}",
        latencies[0], latencies[19], s.l2_timeouts, s.l2_skips, s.breaker_transitions
    );
    assert!(
        worst < Duration::from_secs(1),
        "a call stalled for {worst:?}"
    );
    assert_eq!(calls.get(), 20);
    assert!(
        s.breaker_transitions >= 1 && s.l2_skips > 0,
        "the breaker opened: {s:?}"
    );
    redis.thaw();
    let thawed = Instant::now();
    let before = calls.get();
    bounded("L2 to serve again", async {
        loop {
            a.scope(outage_call(FRESH + 1, &calls)).await; // computed once, then L1
            if redis.get(&format!("t:outage:<{}>", FRESH + 1)).is_some() {
                break;
            }
            a.flush_l1();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // B's own breaker opened too (its beacons timed out) and closes by itself after its
    // cooldown: its L2 hits resume without traffic-dependent help.
    let hits = b.stats().total.l2_hits;
    bounded("B's L2 hits to resume", async {
        loop {
            assert_eq!(
                b.scope(outage_call(FRESH + 1, &calls)).await,
                FRESH + 1 + 1000
            );
            if b.stats().total.l2_hits > hits {
                break;
            }
            b.flush_l1();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    println!(
        "after SIGCONT: L2 writes and hits resumed within {:?} ({} recomputations meanwhile)",
        thawed.elapsed(),
        calls.get() - before
    );
}

/// Reads survive refused writes: under `maxmemory` with `noeviction`, the read that takes the
/// lease (`SET … NX GET`, a write) is refused even for a key that holds a value; the runtime
/// then reads with a plain `GET`, so L2 hits keep being served, and misses compute without
/// filling. Nobody gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_hits_are_served_while_redis_refuses_writes() {
    let redis = RedisServer::start();
    let a = runtime(&redis, 1).await;
    let b = runtime(&redis, 1).await;
    let calls = BodyRuns::default();
    for id in 1..=3 {
        a.scope(get_user(id, &calls)).await;
    }
    assert_eq!(calls.get(), 3);
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);
    for id in 1..=3 {
        assert_eq!(b.scope(get_user(id, &calls)).await.id, id);
    }
    let s = b.stats().total;
    assert_eq!(
        (s.l2_hits, s.computations),
        (3, 0),
        "hits served from L2 under OOM"
    );
    assert!(s.l2_reads_without_lease >= 3, "{s:?}");
    // A miss: computed, not filled, no error.
    assert_eq!(b.scope(get_user(9, &calls)).await.id, 9);
    assert_eq!(b.stats().total.l2_writes, 0);
    // Key invalidations still reach the other instances (DEL and PUBLISH are not refused):
    // B holds user 1 in L1 (promoted), A invalidates it, B evicts and recomputes.
    let runs = calls.get();
    assert_eq!(b.scope(get_user(1, &calls)).await.id, 1);
    assert_eq!(calls.get(), runs, "B answers user 1 from L1");
    let received = b.stats().total.invalidations_received;
    a.invalidate(&USER, &[&1u64])
        .await
        .expect("an invalidation under OOM succeeds");
    wait_until("B received the invalidation", || {
        b.stats().total.invalidations_received > received
    })
    .await;
    assert_eq!(b.scope(get_user(1, &calls)).await.id, 1);
    assert_eq!(calls.get(), runs + 1, "B's L1 copy was evicted: recomputed");
    assert_eq!(
        redis.get("t:user:<1>"),
        None,
        "deleted in Redis, not refilled"
    );
    // A group invalidation writes (it raises a generation): refused, it is an `Err` that names
    // the cause, and nothing retries it in a loop.
    let err = a
        .invalidate_site(&USER)
        .await
        .expect_err("a group invalidation under OOM fails");
    assert!(err.to_string().contains("OOM"), "{err}");
    redis.reset_stats();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = redis.calls("eval") + redis.calls("hincrby");
    println!("group invalidation under OOM: `{err}`; scripts/HINCRBY in the next second: {writes}");
    assert!(writes <= 10, "{writes} write attempts in one second");
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory", b"0"]);
}

/// The lease read for servers older than 7.0 (`GET` + `SET NX PX` pipelined), forced here
/// (`LeaseRead::Auto` picks it from `INFO server` below 7.0): an L2 hit is still one round
/// trip, a miss two, and the lease still makes one instance compute while the other waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_lease_read_for_servers_before_7() {
    let redis = RedisServer::start();
    let build = || {
        Runtime::builder()
            .namespace("t")
            .redis_url(redis.url())
            .promotion_frequency(1)
            .lease_read(LeaseRead::Pipelined)
            .build()
    };
    let a = build().await.expect("runtime");
    let b = build().await.expect("runtime");
    let calls = BodyRuns::default();
    let counts = |r: &RedisServer| {
        (
            r.calls("get"),
            r.calls("set"),
            r.calls("exec"),
            r.calls("pttl"),
            r.calls("eval"),
        )
    };
    a.scope(get_user(1, &calls)).await; // the generations are read once per runtime
    b.scope(get_user(1, &calls)).await;
    redis.reset_stats();
    a.scope(get_user(2, &calls)).await;
    // MULTI, GET, SET NX, EXEC (round trip 1); the fill script's GET and SET (round trip 2).
    assert_eq!(counts(&redis), (2, 2, 1, 0, 1), "a miss");
    redis.reset_stats();
    b.scope(get_user(2, &calls)).await;
    assert_eq!(
        counts(&redis),
        (1, 1, 1, 0, 0),
        "an L2 hit: GET + a no-op SET NX"
    );
    assert_eq!(calls.get(), 2);

    // One cold key, both instances at once, a slow body: it runs once.
    static SLOW: Site = Site::new("l2::slow_pipelined", "slow:<id>", opts(1));
    let slow = |calls: BodyRuns| async move {
        memoize::<Plain<u64>, _, _>(&SLOW, &[&7u64], || async move {
            calls.hit();
            tokio::time::sleep(Duration::from_millis(200)).await;
            7
        })
        .await
    };
    let before = calls.get();
    let (x, y) = tokio::join!(
        tokio::spawn(a.scope(slow(calls.clone()))),
        tokio::spawn(b.scope(slow(calls.clone())))
    );
    assert_eq!((x.expect("a"), y.expect("b")), (7, 7));
    assert_eq!(calls.get(), before + 1, "the lease held across instances");
    let waits = a.stats().total.lease_waits + b.stats().total.lease_waits;
    assert_eq!(waits, 1, "the other instance waited for the fill");

    // Refused writes (last: B then reads without a lease for a while): the transaction is
    // refused as a whole, and reads fall back to GET.
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);
    b.flush_l1();
    let runs = calls.get();
    assert_eq!(b.scope(get_user(2, &calls)).await.id, 2);
    assert_eq!(calls.get(), runs, "an L2 hit under OOM");
    assert!(b.stats().total.l2_reads_without_lease >= 1);
    redis.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory", b"0"]);
}

/// `jitter = "10%"`: 1000 values written together get lifetimes spread over the last 10 % of
/// their TTL, never longer than the TTL (what Redis holds: each key's `PTTL`).
#[tiered::tiered_cache(key = "jit:<id>", ttl = "100s", jitter = "10%")]
async fn jittered(id: u64) -> u64 {
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_jitter_spreads_expirations_within_the_bound() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, 10).await;
    let start = Instant::now();
    for id in 0..1000u64 {
        assert_eq!(rt.scope(jittered(id)).await, id);
    }
    let elapsed = start.elapsed().as_millis() as i64;
    let mut conn = redis.conn();
    let mut pipe = redis::pipe();
    for id in 0..1000u64 {
        pipe.cmd("PTTL").arg(format!("t:jit:<{id}>"));
    }
    let pttls: Vec<i64> = pipe.query(&mut conn).expect("PTTL");
    let (min, max) = (
        pttls.iter().copied().min().unwrap_or(0),
        pttls.iter().copied().max().unwrap_or(0),
    );
    println!(
        "jitter 10 % of 100 s: 1000 expirations spread over {} ms (min {min} ms, max {max} ms; writes took {elapsed} ms)",
        max - min
    );
    assert!(max <= 100_000, "no lifetime beyond the TTL: {max}");
    assert!(
        min >= 90_000 - elapsed - 1000,
        "no lifetime shortened by more than 10 %: {min}"
    );
    assert!(
        max - min >= 5_000,
        "spread over at least half the window: {}",
        max - min
    );
}

#[test]
fn ttl_jitter_is_a_percentage() {
    let err = tiered::Runtime::builder()
        .ttl_jitter(101)
        .validate()
        .expect_err("101 %");
    assert!(err.to_string().contains("ttl_jitter"), "{err}");
}
