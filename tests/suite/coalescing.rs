//! Coalescing (scenarios 1–4): one body run per key per process, and no follower
//! is ever stranded by a leader that is cancelled, panics or fails.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{BOUND, BodyRuns, RedisServer, bounded};
use tiered::{Fallible, FallibleUncloneable, Optional, Plain, Runtime, Site, SiteOptions, memoize};
use tokio::sync::Notify;

async fn embedded() -> Runtime {
    Runtime::builder()
        .namespace("coalesce")
        .build()
        .await
        .expect("embedded runtime")
}

async fn with_redis(redis: &RedisServer) -> Runtime {
    Runtime::builder()
        .namespace("coalesce")
        .redis_url(redis.url())
        .build()
        .await
        .expect("runtime with redis")
}

/// Waits (bounded, without sleeping a fixed time) until `n` callers are parked on flights.
async fn until_waiters(rt: &Runtime, n: u64) {
    bounded("followers to join", async {
        while rt.stats().total.coalesced_waits < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

static BURST: Site = Site::new(
    "coalescing::burst",
    "burst:<rep>:<key>",
    SiteOptions::DEFAULT,
);

/// 1 000 callers per key; the body holds until all the key's other callers are parked.
async fn burst(rt: &Runtime, rep: u32, keys: u32, callers: u32) -> (usize, Duration) {
    let calls = BodyRuns::default();
    let waits_before = rt.stats().total.coalesced_waits;
    let expected_waits = waits_before + u64::from(callers - keys);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..callers {
        let key = i % keys;
        let (calls, rt2) = (calls.clone(), rt.clone());
        tasks.push(tokio::spawn(rt.scope(async move {
            let t = Instant::now();
            let v = memoize::<Plain<String>, _, _>(&BURST, &[&rep, &key], || async move {
                calls.hit();
                // Held back until every other caller is parked (a barrier without sleeps of
                // fixed length), then a 200 ms body as in the plan.
                while rt2.stats().total.coalesced_waits < expected_waits {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                format!("value-{rep}-{key}")
            })
            .await;
            assert_eq!(v, format!("value-{rep}-{key}"));
            t.elapsed()
        })));
    }
    let mut worst = Duration::ZERO;
    for t in tasks {
        worst = worst.max(bounded("burst caller", t).await.expect("caller task"));
    }
    let _ = started;
    (calls.get(), worst)
}

async fn scenario_1(rt: Runtime, label: &str) {
    let mut worst = Duration::ZERO;
    for rep in 0..20 {
        let (runs, w) = burst(&rt, rep, 1, 1000).await;
        assert_eq!(
            runs, 1,
            "repetition {rep}: 1000 callers on one cold key ran the body {runs} times"
        );
        worst = worst.max(w);
    }
    let (runs, w) = burst(&rt, 1000, 100, 1000).await;
    assert_eq!(
        runs, 100,
        "1000 callers over 100 keys ran the body {runs} times"
    );
    assert_eq!(rt.stats().inflight, 0);
    println!(
        "scenario 1 ({label}): 20/20 bursts ran the body once; 100 keys -> 100 runs; worst caller latency {worst:?} (body 200 ms), spread run {w:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_burst_on_one_key_is_computed_once() {
    scenario_1(embedded().await, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_burst_on_one_key_is_computed_once_with_redis() {
    let redis = RedisServer::start();
    let rt = with_redis(&redis).await;
    redis.reset_stats(); // the start-up permission probe is not part of the count
    scenario_1(rt, "redis").await;
    // Only one L2 read per flight (`SET key LEASE NX GET`): followers never touch Redis. Each
    // flight then fills once with the lease-checking script, whose own GET and SET are
    // counted by Redis too.
    assert_eq!(redis.calls("eval"), 20 + 100, "one fill per flight");
    assert_eq!(
        redis.calls("get"),
        20 + 100,
        "the fill script's check of the lease"
    );
    assert_eq!(
        redis.calls("set"),
        2 * (20 + 100),
        "the read, and the fill script's write"
    );
}

/// Scenario 1 on a Redis Cluster (3 masters): the same counts, summed over the masters (every
/// flight's read and fill touch the key's one slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_burst_on_one_key_is_computed_once_on_a_cluster() {
    let cluster = support::cluster::Cluster::start(3);
    let rt = Runtime::builder()
        .namespace("coalesce")
        .redis_cluster(cluster.urls())
        .build()
        .await
        .expect("runtime on the cluster");
    for node in cluster.nodes() {
        node.reset_stats();
    }
    scenario_1(rt.clone(), "cluster").await;
    let calls = |c: &str| -> u64 { cluster.nodes().iter().map(|n| n.calls(c)).sum() };
    assert_eq!(calls("eval"), 20 + 100, "one fill per flight");
    assert_eq!(
        calls("set"),
        2 * (20 + 100),
        "the read, and the fill's write"
    );
    assert_eq!(rt.stats().total.l2_errors, 0);
}

static PARKED: Site = Site::new("coalescing::parked", "parked:<case>", SiteOptions::DEFAULT);

/// A body that parks forever on its first run (signalling `entered`) and returns after that.
async fn parked_call(case: &'static str, calls: BodyRuns, entered: Arc<Notify>) -> u32 {
    memoize::<Plain<u32>, _, _>(&PARKED, &[&case], || async move {
        if calls.hit() == 1 {
            entered.notify_one();
            std::future::pending::<()>().await;
        }
        7
    })
    .await
}

/// Starts a parked leader and 50 followers; returns the leader's handle and the followers.
async fn leader_and_followers(
    rt: &Runtime,
    case: &'static str,
    calls: &BodyRuns,
    leader_timeout: Option<Duration>,
) -> (
    tokio::task::JoinHandle<Option<u32>>,
    Vec<tokio::task::JoinHandle<u32>>,
) {
    let entered = Arc::new(Notify::new());
    let (c, e) = (calls.clone(), entered.clone());
    let leader = tokio::spawn(rt.scope(async move {
        match leader_timeout {
            Some(d) => tokio::time::timeout(d, parked_call(case, c, e)).await.ok(),
            None => Some(parked_call(case, c, e).await),
        }
    }));
    bounded("leader to enter the body", entered.notified()).await;
    let before = rt.stats().total.coalesced_waits;
    let followers = (0..50)
        .map(|_| {
            let (c, e) = (calls.clone(), entered.clone());
            tokio::spawn(rt.scope(parked_call(case, c, e)))
        })
        .collect();
    until_waiters(rt, before + 50).await;
    (leader, followers)
}

async fn followers_get_the_value(
    rt: &Runtime,
    followers: Vec<tokio::task::JoinHandle<u32>>,
    calls: &BodyRuns,
) {
    for f in followers {
        assert_eq!(bounded("follower", f).await.expect("follower task"), 7);
    }
    assert_eq!(
        calls.get(),
        2,
        "one run by the cancelled leader, one by the follower that took over"
    );
    assert_eq!(rt.stats().inflight, 0, "in-flight map must be empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_aborted_leader_hands_over_to_a_follower() {
    let rt = embedded().await;
    let calls = BodyRuns::default();
    let (leader, followers) = leader_and_followers(&rt, "abort", &calls, None).await;
    leader.abort();
    assert!(
        bounded("aborted leader", leader)
            .await
            .is_err_and(|e| e.is_cancelled())
    );
    followers_get_the_value(&rt, followers, &calls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_leader_dropped_by_timeout_hands_over_to_a_follower() {
    let rt = embedded().await;
    let calls = BodyRuns::default();
    // The leader's own timeout fires while it is parked in the body; no test step waits on it.
    let (leader, followers) =
        leader_and_followers(&rt, "timeout", &calls, Some(Duration::from_millis(300))).await;
    assert_eq!(
        bounded("timed-out leader", leader)
            .await
            .expect("leader task"),
        None
    );
    followers_get_the_value(&rt, followers, &calls).await;
}

static STORM: Site = Site::new("coalescing::storm", "storm", SiteOptions::DEFAULT);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_timeout_storm_leaves_nothing_behind() {
    let rt = embedded().await;
    let calls = BodyRuns::default();
    let storm = |calls: BodyRuns| async move {
        memoize::<Plain<u32>, _, _>(&STORM, &[], || async move {
            calls.hit();
            tokio::time::sleep(Duration::from_millis(200)).await;
            1
        })
        .await
    };
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let c = calls.clone();
            tokio::spawn(rt.scope(async move {
                tokio::time::timeout(Duration::from_millis(50), storm(c)).await
            }))
        })
        .collect();
    let mut timeouts = 0;
    for t in tasks {
        if bounded("storm caller", t).await.expect("no panic").is_err() {
            timeouts += 1;
        }
    }
    assert_eq!(rt.stats().inflight, 0);
    println!(
        "scenario 2 storm: {timeouts}/500 callers timed out, body started {} times",
        calls.get()
    );
    assert_eq!(
        timeouts, 500,
        "a 200 ms body cannot finish within any caller's 50 ms"
    );
    let before = calls.get();
    assert_eq!(
        bounded("normal call", rt.scope(storm(calls.clone()))).await,
        1
    );
    assert_eq!(
        calls.get(),
        before + 1,
        "the next normal call computes once and succeeds"
    );
}

static PANICKY: Site = Site::new("coalescing::panicky", "panicky:<k>", SiteOptions::DEFAULT);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3_panicking_leader_releases_its_followers() {
    let rt = embedded().await;
    let calls = BodyRuns::default();
    let call = |k: u32, calls: BodyRuns, rt: Runtime| async move {
        memoize::<Plain<u32>, _, _>(&PANICKY, &[&k], || async move {
            if calls.hit() == 1 {
                // Panic only once the 19 followers are parked on this flight.
                while rt.stats().total.coalesced_waits < 19 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                panic!("body failed on purpose");
            }
            k * 10
        })
        .await
    };
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(rt.scope(call(1, calls.clone(), rt.clone()))))
        .collect();
    let (mut panicked, mut ok) = (0, 0);
    for t in tasks {
        match bounded("caller", t).await {
            Ok(v) => {
                assert_eq!(v, 10);
                ok += 1;
            }
            Err(e) if e.is_panic() => panicked += 1,
            Err(e) => panic!("unexpected join error {e}"),
        }
    }
    assert_eq!(
        (panicked, ok),
        (1, 19),
        "only the leader's caller sees the panic"
    );
    assert_eq!(calls.get(), 2, "one follower took over once");
    assert_eq!(rt.stats().inflight, 0);
    // The value from the takeover is cached; other keys are unaffected.
    assert_eq!(rt.scope(call(1, calls.clone(), rt.clone())).await, 10);
    assert_eq!(calls.get(), 2);
    assert_eq!(rt.scope(call(2, calls.clone(), rt.clone())).await, 20);
}

static FAILING: Site = Site::new("coalescing::failing", "failing:<k>", SiteOptions::DEFAULT);

#[derive(Debug, Clone, PartialEq)]
struct DbError(String);

async fn scenario_4(rt: Runtime, redis: Option<&RedisServer>) {
    let calls = BodyRuns::default();
    let call = |calls: BodyRuns, rt: Runtime| async move {
        memoize::<Fallible<u32, DbError>, _, _>(&FAILING, &[&"k"], || async move {
            let n = calls.hit();
            while n == 1
                && rt
                    .stats()
                    .site("coalescing::failing")
                    .map_or(0, |c| c.coalesced_waits)
                    < 99
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if n == 1 {
                Err(DbError("db down".into()))
            } else {
                Ok(5)
            }
        })
        .await
    };
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(rt.scope(call(calls.clone(), rt.clone()))))
        .collect();
    for t in tasks {
        assert_eq!(
            bounded("caller", t).await.expect("task"),
            Err(DbError("db down".into()))
        );
    }
    assert_eq!(
        calls.get(),
        1,
        "all 100 callers got the error of a single run"
    );
    assert_eq!(rt.stats().inflight, 0);
    if let Some(redis) = redis {
        assert!(
            redis.keys().is_empty(),
            "errors are not written to L2: {:?}",
            redis.keys()
        );
    }
    assert_eq!(rt.scope(call(calls.clone(), rt.clone())).await, Ok(5));
    assert_eq!(calls.get(), 2, "the next call runs the body again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_leader_error_is_shared_not_cached() {
    scenario_4(embedded().await, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_leader_error_is_shared_not_cached_with_redis() {
    let redis = RedisServer::start();
    scenario_4(with_redis(&redis).await, Some(&redis)).await;
}

/// An error type that is not `Clone`.
#[derive(Debug)]
struct Opaque;

static OPAQUE: Site = Site::new("coalescing::opaque", "opaque", SiteOptions::DEFAULT);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncloneable_error_makes_followers_form_one_new_flight() {
    let rt = embedded().await;
    let calls = BodyRuns::default();
    let call = |calls: BodyRuns, rt: Runtime| async move {
        memoize::<FallibleUncloneable<u32, Opaque>, _, _>(&OPAQUE, &[], || async move {
            let n = calls.hit();
            while n == 1 && rt.stats().total.coalesced_waits < 49 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if n == 1 { Err(Opaque) } else { Ok(9) }
        })
        .await
    };
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(rt.scope(call(calls.clone(), rt.clone()))))
        .collect();
    let mut errs = 0;
    for t in tasks {
        match bounded("caller", t).await.expect("task") {
            Ok(v) => assert_eq!(v, 9),
            Err(Opaque) => errs += 1,
        }
    }
    assert_eq!(errs, 1, "only the failing leader's caller sees its error");
    assert_eq!(calls.get(), 2, "the 49 followers formed one new flight");
    assert_eq!(rt.stats().inflight, 0);
}

static MAYBE: Site = Site::new("coalescing::maybe", "maybe:<k>", SiteOptions::DEFAULT);

#[tokio::test]
async fn none_is_not_cached_and_some_is() {
    let rt = embedded().await;
    let calls = BodyRuns::default();
    let call = |k: u32, calls: BodyRuns| async move {
        memoize::<Optional<u32>, _, _>(&MAYBE, &[&k], || async move {
            calls.hit();
            (k > 0).then_some(k)
        })
        .await
    };
    for _ in 0..3 {
        assert_eq!(rt.scope(call(0, calls.clone())).await, None);
    }
    assert_eq!(calls.get(), 3, "None is recomputed every time");
    for _ in 0..3 {
        assert_eq!(rt.scope(call(4, calls.clone())).await, Some(4));
    }
    assert_eq!(calls.get(), 4, "Some is cached");
    let s = rt.stats();
    let site = s.site("coalescing::maybe").copied().unwrap_or_default();
    assert_eq!((site.l1_hits, site.computations), (2, 4));
}

/// A value whose `Clone` can be made to block the thread (a slow user `Clone`).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct SlowClone(u64);

/// Clones of an id-1 value made while armed; the second one blocks until released.
static SLOW_CLONES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static SLOW_ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static SLOW_RELEASED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Clone for SlowClone {
    fn clone(&self) -> Self {
        if self.0 == 1 && SLOW_ARMED.load(Ordering::SeqCst) {
            // The leader clones its value once for the followers, then once for the L1
            // insert, which runs under the flight's lock: block that one.
            if SLOW_CLONES.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                while !SLOW_RELEASED.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        SlowClone(self.0)
    }
}

static SLOW: Site = Site::new("coalescing::slow", "slow:<id>", SiteOptions::DEFAULT);

async fn slow(id: u64) -> SlowClone {
    memoize::<Plain<SlowClone>, _, _>(&SLOW, &[&id], move || async move { SlowClone(id) }).await
}

/// Runs `fut` to completion on a thread of its own (so that a blocked thread blocks nothing
/// else), reporting on `done`.
fn on_own_thread(rt: Runtime, id: u64, done: std::sync::mpsc::Sender<u64>) {
    std::thread::spawn(move || {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let v = tokio.block_on(rt.scope(slow(id)));
        let _ = done.send(v.0);
    });
}

/// No user code runs under a runtime-wide lock: while one key's leader is stuck in the user's
/// `Clone` (storing its value), other keys' calls complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_user_clone_holds_up_no_other_key() {
    let rt = embedded().await;
    SLOW_ARMED.store(true, Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    on_own_thread(rt.clone(), 1, tx.clone());
    let start = std::time::Instant::now();
    while SLOW_CLONES.load(Ordering::SeqCst) < 2 {
        assert!(
            start.elapsed() < BOUND,
            "the leader never reached its store"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    on_own_thread(rt.clone(), 2, tx);
    let other = rx.recv_timeout(Duration::from_secs(5));
    SLOW_RELEASED.store(true, Ordering::SeqCst);
    assert_eq!(other, Ok(2), "another key's call waited for a user Clone");
    assert_eq!(rx.recv_timeout(BOUND), Ok(1));
}
