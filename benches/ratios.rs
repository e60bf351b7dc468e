//! Ratio benchmark: tiered versus the raw building blocks it wraps, measured in the same run.
//!
//! ```text
//! cargo bench --bench ratios                          # full run (~35 s)
//! TIERED_BENCH_QUICK=1 cargo bench --bench ratios     # smoke run (~5 s)
//! ```
//!
//! Cases:
//!
//! 1. **L1 hit** through `tiered::memoize` on the *installed* runtime (embedded mode, not scoped)
//!    versus a raw `moka::sync::Cache<String, User>` `get` (which clones the value), the raw side
//!    building its key with `format!` like tiered renders it. One thread, then two threads.
//! 2. **L2 hit**: runtime A fills Redis; runtime B (same Redis and namespace, empty L1,
//!    `promotion_frequency(u32::MAX)` so that hits are never promoted) is measured, versus a raw
//!    redis-rs `MultiplexedConnection` `GET` of the same key + `rmp_serde` decode, and versus the
//!    raw `GET` alone.
//! 3. **Miss**: a distinct key per call, the body returns at once, versus raw `GET` + `SET … PX`
//!    of the MessagePack-encoded value.
//! 4. **Invalidation propagation**: runtime A calls `invalidate`; the time until runtime B (same
//!    Redis, subscribed) has applied the message, p50 and p99 over many invalidations, versus a
//!    raw redis-rs `PUBLISH` → `PubSub` receive on the same server.
//!
//! Each measurement calibrates an iteration count from a per-round time budget, warms up, then
//! alternates the two sides over several rounds of that many iterations and keeps the median
//! ns/op of each. Redis is a private `redis-server` spawned on a free 127.0.0.1 port and
//! killed at the end (also on panic); without `redis-server` only the L1 part runs.
//!
//! Arguments are ignored (cargo passes `--bench`). When `--bench` is absent — `cargo test
//! --all-targets` runs bench targets that way — the smoke plan is used, as criterion does.

use std::future::Future;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tiered::{Plain, Runtime, Site, SiteOptions, memoize};

/// A realistic cached value: a short string and a couple of integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    id: u64,
    score: u32,
}

fn user(id: u64) -> User {
    User {
        name: format!("user-{id:06}"),
        id,
        score: u32::try_from(id.wrapping_mul(7) % 1000).unwrap_or(0),
    }
}

/// Size of the pre-warmed working set.
const WORKING_SET: u64 = 1000;

/// The `i`-th id of a thread's access sequence: a permutation of the working set (7919 is a
/// prime, coprime with 1000), shifted per thread.
#[inline]
fn id_at(i: u64, thread: u64) -> u64 {
    (i.wrapping_mul(7919) + thread * 500) % WORKING_SET
}

static L1_USER: Site = Site::new("bench::l1_user", "user:<id>", SiteOptions::DEFAULT);
static L2_USER: Site = Site::new("bench::l2_user", "user:<id>", SiteOptions::DEFAULT);
static MISS_USER: Site = Site::new(
    "bench::miss_user",
    "miss:<id>",
    SiteOptions {
        ttl: Duration::from_secs(120),
        ..SiteOptions::DEFAULT
    },
);

/// Namespace of the installed (L1) runtime; the raw side formats the same keys.
const L1_NS: &str = "ns";
/// Namespace of the two Redis-backed runtimes.
const L2_NS: &str = "l2";

// ---------------------------------------------------------------------------------------------
// Plan and harness
// ---------------------------------------------------------------------------------------------

struct Plan {
    quick: bool,
    rounds: usize,
    /// Target duration of one round of one side, per case. Iteration counts are calibrated
    /// from it, so the total run time does not depend on how fast the machine or its loopback
    /// happens to be.
    l1_round: Duration,
    l2_round: Duration,
    miss_round: Duration,
}

impl Plan {
    fn from_env() -> Plan {
        let env_quick = std::env::var("TIERED_BENCH_QUICK")
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false);
        let under_cargo_bench = std::env::args().any(|a| a == "--bench");
        if env_quick || !under_cargo_bench {
            Plan {
                quick: true,
                rounds: 3,
                l1_round: Duration::from_millis(60),
                l2_round: Duration::from_millis(120),
                miss_round: Duration::from_millis(120),
            }
        } else {
            Plan {
                quick: false,
                rounds: 7,
                l1_round: Duration::from_millis(300),
                l2_round: Duration::from_millis(550),
                miss_round: Duration::from_millis(550),
            }
        }
    }
}

/// One measured side: runs `iters` operations and returns the time they took.
type Side<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// ns/op of `side`, doubling the iteration count until one run takes at least 10 ms.
fn calibrate(side: &mut Side<'_>) -> f64 {
    let mut n = 1u64;
    loop {
        let took = side(n);
        if took >= Duration::from_millis(10) || n >= 1 << 26 {
            return took.as_nanos() as f64 / n as f64;
        }
        n *= 2;
    }
}

/// Calibration, a warm-up, then `rounds` alternating rounds of each side with the same
/// iteration count (sized so that the slower side takes about `round`); the median ns/op of
/// each side and the iteration count.
fn compare(
    plan: &Plan,
    round: Duration,
    case: &'static str,
    note: &'static str,
    mut ours: Side<'_>,
    mut base: Side<'_>,
) -> Row {
    let slowest = calibrate(&mut ours).max(calibrate(&mut base)).max(1.0);
    let iters = ((round.as_nanos() as f64 / slowest) as u64).max(10);
    ours(iters / 2);
    base(iters / 2);
    let mut a = Vec::with_capacity(plan.rounds);
    let mut b = Vec::with_capacity(plan.rounds);
    for r in 0..plan.rounds {
        // Alternate which side goes first so that drift (thermal, frequency, Redis state)
        // does not favour one of them.
        if r % 2 == 0 {
            a.push(ours(iters));
            b.push(base(iters));
        } else {
            b.push(base(iters));
            a.push(ours(iters));
        }
    }
    Row {
        case,
        ours: median_ns(a, iters),
        base: median_ns(b, iters),
        iters,
        note,
    }
}

fn median_ns(mut samples: Vec<Duration>, iters: u64) -> f64 {
    samples.sort();
    let mid = samples[samples.len() / 2];
    mid.as_nanos() as f64 / iters as f64
}

fn current_thread_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio current_thread runtime")
}

/// Runs `body(thread, iters)` on `threads` std threads, each driving its own current_thread
/// Tokio runtime, started together; returns the slowest thread's time (the wall time of the
/// round). ns/op derived from it is per thread.
fn parallel<F, Fut>(threads: u64, iters: u64, body: &F) -> Duration
where
    F: Fn(u64, u64) -> Fut + Sync,
    Fut: Future<Output = ()>,
{
    let barrier = Barrier::new(threads as usize);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let rt = current_thread_rt();
                    barrier.wait();
                    let t0 = Instant::now();
                    rt.block_on(body(t, iters));
                    t0.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

struct Row {
    case: &'static str,
    ours: f64,
    base: f64,
    iters: u64,
    note: &'static str,
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<44} {:>13} {:>15} {:>7} {:>12}",
        "case", "tiered ns/op", "baseline ns/op", "ratio", "iters/round"
    );
    println!("{}", "-".repeat(95));
    for r in rows {
        let ratio = r.ours / r.base;
        let line = format!(
            "{:<44} {:>13.1} {:>15.1} {:>6.2}x {:>12}",
            r.case, r.ours, r.base, ratio, r.iters
        );
        if r.note.is_empty() {
            println!("{line}");
        } else {
            println!("{line}   {}", r.note);
        }
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// Private redis-server
// ---------------------------------------------------------------------------------------------

/// A `redis-server` owned by this process, killed when dropped (also while unwinding).
struct RedisServer {
    port: u16,
    child: Child,
}

enum Spawn {
    Started(RedisServer),
    NotInstalled,
    Failed(String),
}

impl RedisServer {
    fn start() -> Spawn {
        let mut last = String::new();
        // A freed port may be taken by someone else before the server binds it: retry.
        for _ in 0..5 {
            let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(addr) => addr.port(),
                Err(e) => return Spawn::Failed(format!("no free port: {e}")),
            };
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Spawn::NotInstalled,
                Err(e) => return Spawn::Failed(format!("cannot run redis-server: {e}")),
            };
            let mut server = RedisServer { port, child };
            match server.wait_ready(Duration::from_secs(5)) {
                Ok(()) => return Spawn::Started(server),
                Err(e) => last = e, // dropping `server` kills it
            }
        }
        Spawn::Failed(last)
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited at start-up ({status})"));
            }
            if answers_as(self.port, self.child.id()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {} did not answer within {within:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// `true` when the server on `port` answers `PING` and is our child `pid` (`INFO server`),
/// so that a freed port taken over by some other server is never benchmarked against.
fn answers_as(port: u16, pid: u32) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\nINFO server\r\n").is_err() {
        return false;
    }
    let want = format!("process_id:{pid}\r\n");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if seen.len() >= 5 && !seen.starts_with(b"+PONG") {
            return false;
        }
        if seen.windows(want.len()).any(|w| w == want.as_bytes()) {
            return true;
        }
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

fn l1_cases(plan: &Plan, rows: &mut Vec<Row>) {
    let st = current_thread_rt();
    let installed = st
        .block_on(Runtime::builder().namespace(L1_NS).install())
        .expect("install the embedded runtime");

    // Same capacity as tiered's default L1; no expiry policy (tiered's L1 has a per-entry one).
    let raw: moka::sync::Cache<String, User> = moka::sync::Cache::builder()
        .max_capacity(tiered::DEFAULT_L1_MAX_ENTRIES)
        .build();

    // Pre-warm both sides with the whole working set.
    st.block_on(async {
        for id in 0..WORKING_SET {
            let v =
                memoize::<Plain<User>, _, _>(&L1_USER, &[&id], || async move { user(id) }).await;
            assert_eq!(v, user(id));
            raw.insert(format!("{L1_NS}:user:<{id}>"), user(id));
        }
    });
    assert_eq!(
        installed
            .key(&L1_USER, &[&7u64])
            .map(|k| k.to_string())
            .ok(),
        Some(format!("{L1_NS}:user:<7>")),
        "the raw side must build the same key as tiered"
    );

    let ours_op = |thread: u64, iters: u64| async move {
        for i in 0..iters {
            let id = id_at(i, thread);
            let v =
                memoize::<Plain<User>, _, _>(&L1_USER, &[&id], || async move { user(id) }).await;
            black_box(v);
        }
    };
    let raw_ref = &raw;
    let base_op = move |thread: u64, iters: u64| async move {
        for i in 0..iters {
            let id = id_at(i, thread);
            let key = format!("{L1_NS}:user:<{id}>");
            black_box(raw_ref.get(&key));
        }
    };

    rows.push(compare(
        plan,
        plan.l1_round,
        "L1 hit, 1 thread (vs moka get+clone)",
        "target: within 10 % of raw Moka",
        Box::new(|n| {
            st.block_on(async {
                let t0 = Instant::now();
                ours_op(0, n).await;
                t0.elapsed()
            })
        }),
        Box::new(|n| {
            st.block_on(async {
                let t0 = Instant::now();
                base_op(0, n).await;
                t0.elapsed()
            })
        }),
    ));

    rows.push(compare(
        plan,
        plan.l1_round,
        "L1 hit, 2 threads, per thread (vs moka)",
        "target: within 10 % of raw Moka",
        Box::new(|n| parallel(2, n, &ours_op)),
        Box::new(|n| parallel(2, n, &base_op)),
    ));

    let c = installed.stats().total;
    assert_eq!(
        c.computations, WORKING_SET,
        "L1 cases must be pure hits after the warm-up"
    );
    println!(
        "sanity (installed L1 runtime): {} L1 hits, {} computations, {} L1 entries",
        c.l1_hits,
        c.computations,
        installed.stats().l1_entries
    );
}

fn redis_cases(plan: &Plan, server: &RedisServer, rows: &mut Vec<Row>) {
    let rt = current_thread_rt();
    let url = server.url();
    let (a, b, conn) = rt.block_on(async {
        let a = Runtime::builder()
            .namespace(L2_NS)
            .redis_url(url.as_str())
            .build()
            .await
            .expect("runtime A");
        let b = Runtime::builder()
            .namespace(L2_NS)
            .redis_url(url.as_str())
            .promotion_frequency(u32::MAX)
            .build()
            .await
            .expect("runtime B");
        let conn = redis::Client::open(url.as_str())
            .expect("redis client")
            .get_multiplexed_async_connection()
            .await
            .expect("raw multiplexed connection");
        (a, b, conn)
    });
    assert!(
        a.stats().l2_connected && b.stats().l2_connected,
        "both runtimes must be connected to the private Redis"
    );

    // Fill L2 through A (A's L1 keeps the values; B's L1 stays empty).
    rt.block_on(a.scope(async {
        for id in 0..WORKING_SET {
            let v =
                memoize::<Plain<User>, _, _>(&L2_USER, &[&id], || async move { user(id) }).await;
            assert_eq!(v, user(id));
        }
    }));
    assert_eq!(a.stats().total.l2_writes, WORKING_SET, "A must fill L2");

    // The raw side reads the very bytes B reads: the same key, the envelope header skipped.
    let raw_key = |id: u64| format!("{L2_NS}:user:<{id}>");
    assert_eq!(
        b.key(&L2_USER, &[&7u64]).map(|k| k.to_string()).ok(),
        Some(raw_key(7))
    );
    let header = tiered::codec::HEADER_LEN;

    // --- L2 hit -------------------------------------------------------------------------------
    let ours_hit = |n: u64| {
        rt.block_on(b.scope(async {
            let t0 = Instant::now();
            for i in 0..n {
                let id = id_at(i, 0);
                let v = memoize::<Plain<User>, _, _>(&L2_USER, &[&id], || async move { user(id) })
                    .await;
                black_box(v);
            }
            t0.elapsed()
        }))
    };
    let conn_ref = &conn;
    let raw_get_decode = |n: u64| {
        let mut conn = conn_ref.clone();
        rt.block_on(async {
            let t0 = Instant::now();
            for i in 0..n {
                let key = raw_key(id_at(i, 0));
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("raw GET");
                let bytes = bytes.expect("raw GET must hit");
                let v: User = rmp_serde::from_slice(&bytes[header..]).expect("raw decode");
                black_box(v);
            }
            t0.elapsed()
        })
    };
    let raw_get = |n: u64| {
        let mut conn = conn_ref.clone();
        rt.block_on(async {
            let t0 = Instant::now();
            for i in 0..n {
                let key = raw_key(id_at(i, 0));
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("raw GET");
                black_box(bytes.expect("raw GET must hit"));
            }
            t0.elapsed()
        })
    };

    rows.push(compare(
        plan,
        plan.l2_round,
        "L2 hit (vs raw GET + rmp decode)",
        "",
        Box::new(ours_hit),
        Box::new(raw_get_decode),
    ));
    rows.push(compare(
        plan,
        plan.l2_round,
        "L2 hit (vs raw GET, no decode)",
        "",
        Box::new(ours_hit),
        Box::new(raw_get),
    ));

    let c = b.stats().total;
    assert!(c.l2_hits > 0, "B must be served by L2");
    assert_eq!(
        (c.l1_hits, c.promotions, c.computations),
        (0, 0, 0),
        "B must never hit L1, promote or compute during the L2-hit case"
    );
    println!(
        "sanity (runtime B, L2 hits): {} L2 hits, {} L1 hits, {} promotions, {} computations",
        c.l2_hits, c.l1_hits, c.promotions, c.computations
    );

    // --- Miss ---------------------------------------------------------------------------------
    let mut next_ours = 1_000_000_u64;
    let ours_miss = |n: u64| {
        let start = next_ours;
        next_ours += n;
        rt.block_on(b.scope(async {
            let t0 = Instant::now();
            for id in start..start + n {
                let v =
                    memoize::<Plain<User>, _, _>(&MISS_USER, &[&id], || async move { user(id) })
                        .await;
                black_box(v);
            }
            t0.elapsed()
        }))
    };
    let ttl_ms = MISS_USER.options().ttl.as_millis() as u64;
    let mut next_raw = 1_000_000_u64;
    let raw_miss = |n: u64| {
        let start = next_raw;
        next_raw += n;
        let mut conn = conn_ref.clone();
        rt.block_on(async {
            let t0 = Instant::now();
            for id in start..start + n {
                let key = format!("raw:miss:{id}");
                let found: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("raw GET");
                assert!(found.is_none(), "miss keys are distinct");
                let v = user(id);
                let bytes = rmp_serde::to_vec_named(&v).expect("raw encode");
                let () = redis::cmd("SET")
                    .arg(&key)
                    .arg(bytes)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await
                    .expect("raw SET");
                black_box(v);
            }
            t0.elapsed()
        })
    };
    rows.push(compare(
        plan,
        plan.miss_round,
        "miss, distinct keys (vs raw GET + SET PX)",
        "",
        Box::new(ours_miss),
        Box::new(raw_miss),
    ));

    let m = b
        .stats()
        .sites
        .into_iter()
        .find(|s| s.name == MISS_USER.name())
        .map(|s| s.counts)
        .unwrap_or_default();
    assert_eq!(
        m.computations, m.l2_writes,
        "every miss must compute and write L2"
    );
    println!(
        "sanity (runtime B, misses): {} computations, {} L2 writes, {} L2 errors/timeouts",
        m.computations,
        m.l2_writes,
        m.l2_errors + m.l2_timeouts
    );

    // Drop the runtimes (and their Redis tasks) inside their Tokio runtime, before the server.
    rt.block_on(async move {
        drop(a);
        drop(b);
        drop(conn);
    });
}

/// Case 4: invalidation propagation A → B, and a raw PUBLISH → subscriber for reference.
fn propagation(plan: &Plan, server: &RedisServer) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = server.url();
    let n = if plan.quick { 200 } else { 2000 };
    rt.block_on(async move {
        let build = || {
            Runtime::builder()
                .namespace("prop")
                .redis_url(url.as_str())
                .build()
        };
        let a = build().await.expect("runtime A");
        let b = build().await.expect("runtime B");
        let mut tiered_lat = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let id = i % 16;
            b.scope(memoize::<Plain<User>, _, _>(&L2_USER, &[&id], || async move { user(id) }))
                .await;
            let before = b.stats().total.invalidations_received;
            let start = Instant::now();
            a.invalidate(&L2_USER, &[&id]).await.expect("invalidate");
            while b.stats().total.invalidations_received == before {
                if start.elapsed() > Duration::from_secs(5) {
                    panic!("B did not receive an invalidation within 5 s");
                }
                tokio::task::yield_now().await;
            }
            tiered_lat.push(start.elapsed());
        }

        let client = redis::Client::open(url.as_str()).expect("client");
        let mut publisher = client
            .get_multiplexed_async_connection()
            .await
            .expect("publisher");
        let mut sub = client.get_async_pubsub().await.expect("subscriber");
        sub.subscribe("raw-propagation").await.expect("subscribe");
        let mut stream = sub.into_on_message();
        let mut raw_lat = Vec::with_capacity(n);
        for i in 0..n {
            let start = Instant::now();
            let _: i64 = redis::cmd("PUBLISH")
                .arg("raw-propagation")
                .arg(i)
                .query_async(&mut publisher)
                .await
                .expect("publish");
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
            });
            next.await.expect("message");
            raw_lat.push(start.elapsed());
        }
        let pct = |v: &mut Vec<Duration>, p: usize| {
            v.sort();
            v[(v.len() * p / 100).min(v.len() - 1)]
        };
        let (t50, t99) = (pct(&mut tiered_lat, 50), pct(&mut tiered_lat, 99));
        let (r50, r99) = (pct(&mut raw_lat, 50), pct(&mut raw_lat, 99));
        println!(
            "invalidation propagation A -> B over {n} invalidations: p50 {t50:?}, p99 {t99:?} \
             (invalidate = evict + DEL + PUBLISH, B applies); raw PUBLISH -> subscriber: p50 {r50:?}, \
             p99 {r99:?}; ratio p50 {:.2}x, p99 {:.2}x",
            t50.as_secs_f64() / r50.as_secs_f64().max(1e-9),
            t99.as_secs_f64() / r99.as_secs_f64().max(1e-9)
        );
        drop(a);
        drop(b);
    });
}

fn main() {
    let plan = Plan::from_env();
    println!(
        "tiered ratio bench ({} plan: {} rounds, median ns/op; {} build; {} CPUs)",
        if plan.quick { "quick" } else { "full" },
        plan.rounds,
        if cfg!(debug_assertions) {
            "DEBUG — numbers are meaningless, use `cargo bench`"
        } else {
            "optimized"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let started = Instant::now();
    let mut rows = Vec::new();

    l1_cases(&plan, &mut rows);

    match RedisServer::start() {
        Spawn::Started(server) => {
            println!(
                "private redis-server on 127.0.0.1:{} (killed at exit)",
                server.port
            );
            redis_cases(&plan, &server, &mut rows);
            propagation(&plan, &server);
            drop(server);
        }
        Spawn::NotInstalled => println!(
            "redis-server not found on PATH: skipping the L2 and miss cases (install Redis, \
             e.g. `apt-get install redis-server`, to run them)"
        ),
        Spawn::Failed(why) => {
            println!(
                "could not start a private redis-server ({why}): skipping the L2 and miss cases"
            )
        }
    }

    print_table(&rows);
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
