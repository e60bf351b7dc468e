//! Fail-safe, body timeouts, refresh-ahead, background writes, shutdown and the L1 byte bound,
//! against a real `redis-server` per test (and, where a test says so, the embedded mode).

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{RedisServer, bounded, wait_until};
use tiered::{Runtime, tiered_cache};

/// A cloneable error that converts from `tiered::Error` (so a hard timeout can be returned).
#[derive(Debug, Clone, PartialEq)]
enum AppError {
    Db(String),
    Cache(String),
}

impl From<tiered::Error> for AppError {
    fn from(e: tiered::Error) -> Self {
        AppError::Cache(e.to_string())
    }
}

/// The "database" of one test: a version, a switch to fail, a delay, and a run counter.
struct Db {
    version: AtomicU64,
    fail: AtomicBool,
    panic: AtomicBool,
    delay_ms: AtomicU64,
    runs: AtomicU64,
}

impl Db {
    const fn new() -> Db {
        Db {
            version: AtomicU64::new(1),
            fail: AtomicBool::new(false),
            panic: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            runs: AtomicU64::new(0),
        }
    }

    async fn read(&self, id: u64) -> Result<String, AppError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.panic.load(Ordering::SeqCst) {
            panic!("the database driver panicked");
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(AppError::Db("connection refused".into()));
        }
        Ok(format!("{id}@v{}", self.version.load(Ordering::SeqCst)))
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn runtime(redis: &RedisServer, ns: &str) -> Runtime {
    bounded(
        "build",
        Runtime::builder()
            .namespace(ns)
            .redis_url(redis.url())
            .fail_safe_throttle(Duration::from_millis(1500))
            .promotion_frequency(1)
            .build(),
    )
    .await
    .expect("runtime")
}

/// Sleeps past a TTL: the one thing only the clock can do (Redis expires keys by time).
async fn past(ttl_ms: u64) {
    tokio::time::sleep(Duration::from_millis(ttl_ms + 60)).await;
}

static DB_A: Db = Db::new();

#[tiered_cache(key = "a:<id>", ttl = "300ms", fail_safe = "1m")]
async fn fail_safe_a(id: u64) -> Result<String, AppError> {
    DB_A.read(id).await
}

/// Scenario 5 (a): the entry expired by its TTL while fail-safe keeps it; the body returns
/// `Err`: the caller gets the stale value, it is re-cached for the throttle period (1.5 s
/// here) in L1 and in Redis, and the body is not called again for that key until the throttle
/// passes, neither here nor by a second instance with an empty L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_5a_an_erring_body_serves_the_stale_value_and_is_throttled() {
    let redis = RedisServer::start();
    let (a, b) = (runtime(&redis, "t").await, runtime(&redis, "t").await);
    assert_eq!(a.scope(fail_safe_a(1)).await, Ok("1@v1".into()));
    past(300).await;
    DB_A.fail.store(true, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(a.scope(fail_safe_a(1)).await, Ok("1@v1".into()), "stale");
    let first = t.elapsed();
    assert_eq!(DB_A.runs(), 2);
    assert_eq!(a.stats().total.stale_served, 1);
    // The throttle window: nobody calls the body.
    let window = Instant::now();
    let mut calls = 0;
    while window.elapsed() < Duration::from_millis(1000) {
        assert_eq!(a.scope(fail_safe_a(1)).await, Ok("1@v1".into()));
        b.flush_l1();
        assert_eq!(b.scope(fail_safe_a(1)).await, Ok("1@v1".into()));
        calls += 2;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        DB_A.runs(),
        2,
        "0 body calls in the throttle window ({calls} calls)"
    );
    println!(
        "5a: stale served in {first:?}; {calls} calls on two instances in the 1 s throttle window, 0 body runs"
    );
    // After the throttle the body is tried again; still failing, the stale value again.
    past(1500).await;
    assert_eq!(a.scope(fail_safe_a(1)).await, Ok("1@v1".into()));
    assert_eq!(DB_A.runs(), 3);
    // Healthy again: the fresh value once the throttle passes.
    DB_A.fail.store(false, Ordering::SeqCst);
    DB_A.version.store(2, Ordering::SeqCst);
    past(1500).await;
    assert_eq!(a.scope(fail_safe_a(1)).await, Ok("1@v2".into()));
    // A key with no stale value: the error, as without fail-safe.
    DB_A.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        a.scope(fail_safe_a(2)).await,
        Err(AppError::Db("connection refused".into()))
    );
}

static DB_E: Db = Db::new();

#[tiered_cache(key = "e:<id>", ttl = "300ms", fail_safe = "1m")]
async fn fail_safe_embedded(id: u64) -> Result<String, AppError> {
    DB_E.read(id).await
}

/// Scenario 5 (a) without Redis: fail-safe lives in L1 alone.
#[tokio::test]
async fn scenario_5a_fail_safe_in_embedded_mode() {
    let rt = Runtime::builder()
        .fail_safe_throttle(Duration::from_secs(60))
        .build()
        .await
        .expect("embedded");
    assert_eq!(rt.scope(fail_safe_embedded(1)).await, Ok("1@v1".into()));
    past(300).await;
    DB_E.fail.store(true, Ordering::SeqCst);
    for _ in 0..50 {
        assert_eq!(rt.scope(fail_safe_embedded(1)).await, Ok("1@v1".into()));
    }
    assert_eq!(DB_E.runs(), 2, "one failed run, then the throttle");
    assert_eq!(rt.stats().total.stale_served, 1);
}

static DB_B: Db = Db::new();

#[tiered_cache(key = "b:<id>", ttl = "300ms", fail_safe = "1m", soft_timeout = "50ms")]
async fn soft(id: u64) -> Result<String, AppError> {
    DB_B.read(id).await
}

/// Scenario 5 (b): past the soft timeout the caller gets the stale value on time while the
/// body finishes in the background and stores its result; 20 concurrent callers meanwhile get
/// the stale value too, and the body runs once (FusionCache's
/// `SoftTimeoutDoesNotBreakStampedeProtectionAsync`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_5b_a_soft_timeout_answers_stale_and_the_body_lands_later() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, "t").await;
    assert_eq!(rt.scope(soft(1)).await, Ok("1@v1".into()));
    past(300).await;
    DB_B.delay_ms.store(400, Ordering::SeqCst);
    DB_B.version.store(2, Ordering::SeqCst);
    let t = Instant::now();
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                (rt.scope(soft(1)).await, t.elapsed())
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for c in callers {
        let (v, took) = bounded("caller", c).await.expect("no panic");
        assert_eq!(v, Ok("1@v1".into()), "the stale value");
        worst = worst.max(took);
    }
    println!(
        "5b: 20 callers got the stale value, slowest after {worst:?} (soft timeout 50 ms, body 400 ms)"
    );
    assert!(
        worst < Duration::from_millis(350),
        "answered before the body ended"
    );
    assert_eq!(DB_B.runs(), 2, "one body run for 20 callers");
    // The body's result lands in the background.
    let landed = wait_until("the refreshed value", || {
        redis
            .get("t:b:<1>")
            .is_some_and(|b| b.windows(4).any(|w| w == b"1@v2"))
    })
    .await;
    println!(
        "5b: the body's value reached Redis {:?} after the calls began",
        t.elapsed()
    );
    let _ = landed;
    // This instance's L1 takes the value right after the fill (the refresh lock's release
    // comes in between): meanwhile it still answers with the stale value, without a run.
    bounded("this instance to answer with the new value", async {
        while rt.scope(soft(1)).await != Ok("1@v2".into()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(DB_B.runs(), 2);
    let s = rt.stats().total;
    assert_eq!((s.soft_timeouts, s.computations), (1, 2), "{s:?}");
}

static DB_C: Db = Db::new();

#[tiered_cache(key = "c:<id>", ttl = "10s", hard_timeout = "100ms")]
async fn hard(id: u64) -> Result<String, AppError> {
    DB_C.read(id).await
}

/// Scenario 5 (c): no stale value, and the body runs past its hard timeout: every caller gets
/// `Error::Timeout` (converted into the function's error type) after about the timeout; the
/// body runs once and still stores its result, which the next call gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_5c_a_hard_timeout_without_stale_value_is_an_error() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, "t").await;
    DB_C.delay_ms.store(400, Ordering::SeqCst);
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                (rt.scope(hard(7)).await, t.elapsed())
            })
        })
        .collect();
    let mut took = Vec::new();
    for c in callers {
        let (v, t) = bounded("caller", c).await.expect("no panic");
        match v {
            Err(AppError::Cache(msg)) => assert!(msg.contains("hard timeout"), "{msg}"),
            other => panic!("expected the timeout error, got {other:?}"),
        }
        took.push(t);
    }
    took.sort();
    println!(
        "5c: 10 callers got the timeout error after {:?}..{:?} (hard timeout 100 ms, body 400 ms)",
        took[0], took[9]
    );
    assert!(took[9] < Duration::from_millis(350));
    assert_eq!(DB_C.runs(), 1);
    wait_until("the late value in Redis", || {
        redis.get("t:c:<7>").is_some_and(|b| !support::is_lease(&b))
    })
    .await;
    assert_eq!(rt.scope(hard(7)).await, Ok("7@v1".into()));
    assert_eq!(DB_C.runs(), 1, "the late result was stored");
}

static DB_D: Db = Db::new();

#[tiered_cache(key = "d:<id>", ttl = "300ms", fail_safe = "1m")]
async fn coherent(id: u64) -> Result<String, AppError> {
    DB_D.read(id).await
}

/// Fail-safe never undoes coherence: a value removed by `invalidate_*`, a group invalidation
/// or an L1 epoch (a flush, a subscriber gap) is never served stale, here or on another
/// instance; the body's error reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_never_serves_an_invalidated_value() {
    let redis = RedisServer::start();
    let (a, b) = (runtime(&redis, "t").await, runtime(&redis, "t").await);
    let err = Err(AppError::Db("connection refused".into()));
    for id in 1..=3 {
        assert_eq!(a.scope(coherent(id)).await, Ok(format!("{id}@v1")));
        assert_eq!(b.scope(coherent(id)).await, Ok(format!("{id}@v1")));
    }
    past(300).await;
    DB_D.fail.store(true, Ordering::SeqCst);
    // A key invalidation (from A) removes the stale copies in A, in Redis and in B.
    a.scope(invalidate_coherent(1)).await.expect("invalidate");
    wait_until("B to hear it", || {
        b.stats().total.invalidations_received >= 1
    })
    .await;
    assert_eq!(a.scope(coherent(1)).await, err);
    assert_eq!(b.scope(coherent(1)).await, err);
    // A flush (a new L1 epoch) ends the stale copies of this instance; Redis still holds it.
    b.flush_l1();
    assert_eq!(b.scope(coherent(2)).await, Ok("2@v1".into()), "from Redis");
    // A group invalidation: every stale copy is gone everywhere.
    a.scope(invalidate_all_coherent()).await.expect("group");
    for rt in [&a, &b] {
        assert_eq!(
            rt.scope(coherent(3)).await,
            err,
            "after the group invalidation"
        );
    }
    assert_eq!(
        a.stats().total.stale_served + b.stats().total.stale_served,
        1,
        "only the flushed-L1 read of key 2 (served from Redis's kept copy)"
    );
}

static DB_P: Db = Db::new();

#[tiered_cache(key = "p:<id>", ttl = "300ms", fail_safe = "1m")]
async fn panicky(id: u64) -> Result<String, AppError> {
    DB_P.read(id).await
}

/// A panicking body with a stale value: the stale value; without one: the caller sees the
/// panic, as without a cache, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_body_is_answered_with_the_stale_value() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, "t").await;
    assert_eq!(rt.scope(panicky(1)).await, Ok("1@v1".into()));
    past(300).await;
    DB_P.panic.store(true, Ordering::SeqCst);
    assert_eq!(rt.scope(panicky(1)).await, Ok("1@v1".into()));
    assert_eq!(rt.stats().total.body_panics, 1);
    let rt2 = rt.clone();
    let joined = tokio::spawn(async move { rt2.scope(panicky(2)).await }).await;
    assert!(
        joined.is_err_and(|e| e.is_panic()),
        "no stale value: the panic"
    );
    assert_eq!(redis.get("t:p:<2>"), None, "no lease and no value left");
}

/// The shared "database" of the refresh-ahead test: a run counter and the start time of every
/// run, in Redis, so that two processes count together.
static REFRESH_DB: std::sync::OnceLock<redis::Client> = std::sync::OnceLock::new();

#[tiered_cache(key = "r:<id>", ttl = "1s", refresh_ahead = 0.8)]
async fn hot(id: u64) -> String {
    let client = REFRESH_DB.get().expect("the test sets the database");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("database connection");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (n, _): (u64, u64) = redis::pipe()
        .cmd("INCR")
        .arg("db:runs")
        .cmd("RPUSH")
        .arg("db:starts")
        .arg(now)
        .query_async(&mut conn)
        .await
        .expect("database");
    format!("{id}#{n}")
}

/// Calls `hot(1)` every 2 ms for `for_ms`; returns (calls, slowest call).
async fn hammer(rt: &Runtime, for_ms: u64) -> (u64, Duration) {
    let start = Instant::now();
    let (mut calls, mut worst) = (0u64, Duration::ZERO);
    while start.elapsed() < Duration::from_millis(for_ms) {
        let t = Instant::now();
        let v = bounded("hot call", rt.scope(hot(1))).await;
        assert!(v.starts_with("1#"), "{v}");
        worst = worst.max(t.elapsed());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (calls, worst)
}

async fn refresh_runtime(url: &str) -> Runtime {
    Runtime::builder()
        .namespace("t")
        .redis_url(url)
        .promotion_frequency(1)
        .build()
        .await
        .expect("runtime")
}

/// Refresh-ahead under steady load on one hot key (TTL 1 s, refresh at 80 %), from two
/// processes (this one and a child running this test binary again): callers never see a miss
/// (after the first call), and every refresh runs the body once across both processes: the
/// runs' start times, recorded in Redis by the body, are never closer than half a refresh
/// interval (two runs of one refresh would be milliseconds apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_keeps_a_hot_key_warm_with_one_run_per_refresh_across_two_processes() {
    let redis = RedisServer::start();
    let _ = REFRESH_DB.set(redis::Client::open(redis.url()).expect("client"));
    let rt = refresh_runtime(&redis.url()).await;
    assert_eq!(rt.scope(hot(1)).await, "1#1");
    let exe = std::env::current_exe().expect("test binary");
    // The child's test name in this binary: this module's path without the crate's name.
    let entry = format!(
        "{}::refresh_child_entry",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let child = tokio::process::Command::new(exe)
        .args([entry.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env("TIERED_REFRESH_CHILD", redis.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child process");
    let (ours, theirs) = tokio::join!(hammer(&rt, 4000), async {
        bounded("the child's report", child.wait_with_output()).await
    });
    let out = theirs.expect("child output");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = text
        .lines()
        .find_map(|l| l.split_once("@@ ").map(|(_, r)| r.to_owned()))
        .unwrap_or_else(|| panic!("no report from the child: {text}"));
    let child_misses: u64 = report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("misses="))
        .and_then(|n| n.parse().ok())
        .expect("misses in the report");
    let runs: u64 = redis
        .get("db:runs")
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .expect("runs");
    let starts: Vec<u64> = redis.cmd(&[b"LRANGE", b"db:starts", b"0", b"-1"]);
    let gaps: Vec<u64> = starts
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    let s = rt.stats().total;
    println!(
        "refresh-ahead: {} calls here (slowest {:?}), child: {report}; {runs} body runs in 4 s, gaps between runs {gaps:?} ms; here: refreshes {}, skipped {}",
        ours.0, ours.1, s.refreshes, s.refresh_skips
    );
    assert_eq!(s.misses, 1, "only the first call here missed");
    assert_eq!(child_misses, 0, "the child never missed");
    assert!(runs >= 3, "the key was refreshed ({runs} runs)");
    assert!(
        gaps.iter().all(|g| *g >= 400),
        "two runs of one refresh: {gaps:?}"
    );
}

/// The child process of the refresh-ahead test (a no-op in the normal test run).
#[test]
fn refresh_child_entry() {
    let Ok(url) = std::env::var("TIERED_REFRESH_CHILD") else {
        return;
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(async move {
        let _ = REFRESH_DB.set(redis::Client::open(url.as_str()).expect("client"));
        let rt = refresh_runtime(&url).await;
        let (calls, worst) = hammer(&rt, 3800).await;
        let s = rt.stats().total;
        println!(
            "@@ calls={calls} slowest={worst:?} misses={} refreshes={} skips={}",
            s.misses, s.refreshes, s.refresh_skips
        );
    });
}

static DB_I: Db = Db::new();
static GATE_I: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static PARK_I: AtomicBool = AtomicBool::new(false);

#[tiered_cache(key = "i:<id>", ttl = "1s", refresh_ahead = 0.5)]
async fn refreshed(id: u64) -> Result<String, AppError> {
    if PARK_I.load(Ordering::SeqCst)
        && let Ok(permit) = GATE_I.acquire().await
    {
        permit.forget();
    }
    DB_I.read(id).await
}

/// An invalidation during a refresh stores nothing stale: the refresh read the old version,
/// the key is invalidated while it runs, and its value reaches neither Redis nor L1; the next
/// call computes the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_refresh_stores_nothing_stale() {
    let redis = RedisServer::start();
    let rt = refresh_runtime(&redis.url()).await;
    assert_eq!(rt.scope(refreshed(1)).await, Ok("1@v1".into()));
    tokio::time::sleep(Duration::from_millis(560)).await;
    PARK_I.store(true, Ordering::SeqCst);
    // A hit past 50 %: the value at once, and a refresh that parks in the body (it has read
    // nothing yet; it reads v1 once released, as a slow query would have).
    assert_eq!(rt.scope(refreshed(1)).await, Ok("1@v1".into()));
    wait_until("the refresh to start", || rt.stats().total.refreshes == 1).await;
    wait_until("the refresh to reach the body", || rt.stats().inflight == 1).await;
    // The database changes and the key is invalidated while the refresh computes.
    rt.scope(invalidate_refreshed(1)).await.expect("invalidate");
    GATE_I.add_permits(1);
    wait_until("the refresh to end", || rt.stats().inflight == 0).await;
    DB_I.version.store(2, Ordering::SeqCst);
    PARK_I.store(false, Ordering::SeqCst);
    assert_eq!(redis.get("t:i:<1>"), None, "the refresh stored nothing");
    assert_eq!(rt.scope(refreshed(1)).await, Ok("1@v2".into()));
    assert_eq!(
        rt.stats().total.fills_refused,
        1,
        "the refresh's fill was refused"
    );

    // The same with the key deleted behind the runtime's back (no message, so nothing local
    // stops the fill): the fill's script finds that the version it read is gone.
    tokio::time::sleep(Duration::from_millis(560)).await;
    PARK_I.store(true, Ordering::SeqCst);
    assert_eq!(rt.scope(refreshed(1)).await, Ok("1@v2".into()));
    wait_until("the second refresh to start", || {
        rt.stats().total.refreshes == 2
    })
    .await;
    redis.cmd::<()>(&[b"DEL", b"t:i:<1>"]);
    DB_I.version.store(3, Ordering::SeqCst);
    GATE_I.add_permits(1);
    wait_until("the refresh to end", || rt.stats().inflight == 0).await;
    PARK_I.store(false, Ordering::SeqCst);
    assert_eq!(
        redis.get("t:i:<1>"),
        None,
        "the refresh wrote only over the version it read"
    );
    let s = rt.stats().total;
    println!("refresh + invalidation, refresh + external DEL: {s:?}");
    assert_eq!(s.fills_refused, 2);
}

static DB_F: Db = Db::new();
static GATE_F: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static PARK_F: AtomicBool = AtomicBool::new(false);
static REACHED_F: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "f:<id>", ttl = "300ms", fail_safe = "1m")]
async fn failing_later(id: u64) -> Result<String, AppError> {
    if PARK_F.load(Ordering::SeqCst) {
        REACHED_F.fetch_add(1, Ordering::SeqCst);
        if let Ok(permit) = GATE_F.acquire().await {
            permit.forget();
        }
    }
    DB_F.read(id).await
}

/// An invalidation that arrives while a failing body runs: the stale value it would have
/// fallen back to was invalidated meanwhile, so the caller gets the body's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_while_the_body_runs_withdraws_the_stale_value() {
    let redis = RedisServer::start();
    let rt = runtime(&redis, "t").await;
    assert_eq!(rt.scope(failing_later(1)).await, Ok("1@v1".into()));
    past(300).await;
    DB_F.fail.store(true, Ordering::SeqCst);
    PARK_F.store(true, Ordering::SeqCst);
    let caller = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.scope(failing_later(1)).await })
    };
    wait_until("the body to start", || {
        REACHED_F.load(Ordering::SeqCst) == 1
    })
    .await;
    rt.scope(invalidate_failing_later(1))
        .await
        .expect("invalidate");
    GATE_F.add_permits(1);
    assert_eq!(
        bounded("the caller", caller).await.expect("no panic"),
        Err(AppError::Db("connection refused".into())),
        "not the invalidated stale value"
    );
    assert_eq!(rt.stats().total.stale_served, 0);
}

#[tiered_cache(key = "big:<id>", ttl = "60s", tiers = "l1")]
async fn big(id: u64) -> String {
    char::from(b'a' + (id % 26) as u8)
        .to_string()
        .repeat(1 << 20)
}

/// `l1_max_bytes`: 1 000 values of 1 MiB under a 64 MiB bound keep each function's L1 under
/// it (Moka's weigher over the values' encoded size), whatever the entry bound.
#[tokio::test]
async fn l1_max_bytes_bounds_the_memory_of_large_values() {
    let rt = Runtime::builder()
        .l1_max_bytes(64 << 20)
        .build()
        .await
        .expect("embedded");
    let mut peak = 0;
    for id in 0..1000 {
        assert_eq!(rt.scope(big(id)).await.len(), 1 << 20);
        if id % 50 == 49 {
            let s = rt.stats();
            peak = peak.max(s.l1_bytes);
            assert!(s.l1_bytes <= 64 << 20, "{} bytes in L1", s.l1_bytes);
        }
    }
    let s = rt.stats();
    println!(
        "l1_max_bytes 64 MiB: after 1000 values of 1 MiB, {} entries and {} bytes in L1 (peak seen {peak})",
        s.l1_entries, s.l1_bytes
    );
    assert!(s.l1_bytes <= 64 << 20 && s.l1_entries <= 64);
    assert!(s.l1_entries > 0, "L1 still caches");
}

static DB_S: Db = Db::new();
static GATE_S: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static PARK_S: AtomicBool = AtomicBool::new(false);
static REACHED_S: AtomicU64 = AtomicU64::new(0);

/// Also reports the namespace of the runtime its body runs under.
#[tiered_cache(key = "s:<id>", ttl = "300ms", fail_safe = "1m", hard_timeout = "5s")]
async fn shared_stale(id: u64) -> Result<(String, String), AppError> {
    if PARK_S.load(Ordering::SeqCst) {
        REACHED_S.fetch_add(1, Ordering::SeqCst);
        if let Ok(permit) = GATE_S.acquire().await {
            permit.forget();
        }
    }
    let namespace = Runtime::current().config().namespace().to_owned();
    DB_S.read(id).await.map(|v| (v, namespace))
}

/// While one instance recomputes an expired key that fail-safe keeps (it holds the key's
/// refresh lock), another instance's callers get the stale value at once instead of waiting or
/// running the body too. The body, run in a task (a hard timeout is armed), still runs under
/// the caller's `Runtime::scope`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_another_instance_recomputes_an_expired_key_callers_get_the_stale_value() {
    let redis = RedisServer::start();
    let (a, b) = (runtime(&redis, "s1").await, runtime(&redis, "s1").await);
    let first = a.scope(shared_stale(1)).await;
    assert_eq!(
        first,
        Ok(("1@v1".into(), "s1".into())),
        "the scope reached the task"
    );
    past(300).await;
    DB_S.version.store(2, Ordering::SeqCst);
    PARK_S.store(true, Ordering::SeqCst);
    let recompute = {
        let a = a.clone();
        tokio::spawn(async move { a.scope(shared_stale(1)).await })
    };
    wait_until("A's body to start", || {
        REACHED_S.load(Ordering::SeqCst) == 1
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            bounded("B's call", b.scope(shared_stale(1))).await,
            Ok(("1@v1".into(), "s1".into())),
            "the stale value, at once"
        );
    }
    assert_eq!(DB_S.runs(), 1, "B ran no body while A recomputes");
    assert_eq!(b.stats().total.stale_served, 10);
    GATE_S.add_permits(1);
    assert_eq!(
        bounded("A's recomputation", recompute)
            .await
            .expect("no panic"),
        Ok(("1@v2".into(), "s1".into()))
    );
    PARK_S.store(false, Ordering::SeqCst);
    b.flush_l1();
    assert_eq!(
        b.scope(shared_stale(1)).await,
        Ok(("1@v2".into(), "s1".into())),
        "A's value"
    );
}
