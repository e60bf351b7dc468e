//! The benchmark runner: `tiered` against the hand-written code it replaces and against two
//! peer crates, on the same workloads, in one run, against a private `redis-server`.
//!
//! ```text
//! cargo bench --bench runner -- --quick          # < 2 min on 2 cores (release build excluded)
//! cargo bench --bench runner                     # full run (K workloads included), < 10 min
//! cargo bench --bench runner -- --only W1,W4b    # some workloads only (W1 W2 W3 W3b W4 W4t W4b W4c W5 W6
//!                                                # K2 K4 K5)
//! cargo bench --bench runner -- --quick --only K2,K4,K5   # the Redis Cluster workloads, ~25 s
//! cargo bench --bench runner -- --out DIR        # default target/tiered-bench/ of the workspace
//! ```
//!
//! Without `--bench` on the command line (`cargo test --all-targets` runs bench targets that
//! way) the quick plan is used. Output: a table per workload on stdout, and in `--out`:
//! `results.jsonl` (one object per system × workload × case × metric, with the date, the
//! machine — `nproc`, CPU model, redis-server and rustc versions — and quick/full),
//! `results.md` (the same tables plus the targets, met or missed) and SVG plots.
//!
//! # Systems
//!
//! Every system caches the same value type, [`User`] (a name, an id, a score and a payload:
//! ~210 bytes as named MessagePack), keyed by a `u64` id, and counts the runs of its body.
//!
//! * `tiered-installed`: `#[tiered::tiered_cache]` on an `async fn`, calls outside any scope,
//!   so they use the runtime installed once with `Runtime::builder()…install()` (with Redis).
//! * `tiered-scoped`: the same functions, every call inside `Runtime::scope` of a built runtime
//!   (with Redis). In W1 one `scope` wraps each task's loop; elsewhere each call is scoped.
//! * `tiered-l2-promote-off` / `tiered-l2-promote-1` (W2): a reader runtime with
//!   `promotion_frequency(u32::MAX)` (hits are never copied into L1), and a function with
//!   `promote = 1` (every hit is copied into L1; L1 is flushed with `flush_l1()` before each
//!   round, and each round reads distinct keys, so every call is an L2 hit).
//! * `moka-future`, `moka-future-foldhash`, `moka-sync`, `moka-sync-foldhash`: hand-written
//!   memoization over `moka::{future,sync}::Cache<u64, User>` (`max_capacity` 100 000 like
//!   tiered's default L1), default hasher or `foldhash::fast::RandomState`. W1: `get` (clones
//!   the value), `insert` on a miss; W3: `get`, then `get_with` on a miss (Moka's coalescing).
//! * `redis-raw`: redis-rs `MultiplexedConnection`: `GET` + `rmp_serde` decode; on a miss the
//!   body, then `SET … PX` of the named-MessagePack value.
//! * `moka+redis`: the two composed by hand: `moka::future::Cache<u64, User>` `get`; on a miss
//!   `get_with` around the `redis-raw` read (so an L2 hit is `GET` + decode + Moka insert, and
//!   concurrent misses of one key are coalesced by Moka).
//! * `multi-tier-cache`: 0.6.9, `CacheManager::new_with_invalidation` (its Moka L1 with
//!   `max_capacity` 100 000, its Redis L2, Pub/Sub invalidation), the MessagePack serializer,
//!   `get_or_compute_typed`; `invalidate` for W4.
//! * `cached`: 4.1: `#[cached(max_size = 100_000, ttl_secs = …)]` on an `async fn` for the
//!   in-memory workloads (W1; with `sync_writes = "by_key"` for W3), and
//!   `#[concurrent_cached(ty = "AsyncRedisCache<u64, User>", …)]` for the Redis workloads
//!   (W2, W5). It has no tier composition and no invalidation bus.
//!
//! On the Redis Cluster (K workloads, `cluster_workloads.rs`):
//!
//! * `tiered-l2-promote-off` (K2) / `tiered-scoped` (K5): runtimes built with
//!   `redis_cluster(every node)`, as in W2 / W5.
//! * `redis-raw-cluster`: the `redis-raw` code on a redis-rs `cluster_async::ClusterConnection`.
//! * `tiered-classic` / `tiered-sharded` (K4): instances A and B built with
//!   `cluster_bus(ClusterBus::Classic | Sharded)` (a namespace per mode).
//! * `raw-publish`: `PUBLISH` on node 0 → a RESP3 `SUBSCRIBE` on node 1 (always across the
//!   cluster bus); `raw-spublish`: `SPUBLISH` through a `ClusterConnection` → `SSUBSCRIBE`
//!   through a RESP3 `ClusterConnection` with a push sender (both at the channel's master).
//!
//! # Workloads
//!
//! Each workload checks the work done (body runs, values equal to `user(id)`, counters); a
//! system that fails a check is reported as `failed: <why>` and not timed; a system that
//! cannot do a workload is `n/a: <why>`. Systems are interleaved round-robin within every
//! repeat; each figure is the median over the repeats, with min–max.
//!
//! * **W1 L1 hit**: 1 key and 10 000 keys, 1 task and 2 tasks (spawned on the runner's Tokio
//!   runtime, 2 worker threads). Batches of 64 calls are timed (per-call p50/p99 of the batch
//!   means) and ops/s counted. Baseline: `moka-future`.
//! * **W2 L2 hit**: the reader's L1 never holds the key; concurrency 1, 16, 256 (tasks calling
//!   distinct keys); p50 per call, ops/s, Redis commands and request reads
//!   (`total_reads_processed`, ≈ round trips) per hit from `INFO stats commandstats`.
//!   Baselines: `redis-raw` (promotion off), `moka+redis` (promotion on).
//! * **W3 stampede**: N concurrent callers of one cold key whose body sleeps 50 ms (N = 1, 10,
//!   100, 1000; 4000 in the full plan), and 100 keys × 10 callers: body runs (must equal the
//!   keys), caller latency minus the body (max, p50).
//! * **W3b isolation**: during a 1000-caller stampede, another task calls 256 other, cached
//!   keys in a loop: p99 per call and calls over 1 ms.
//! * **W4 propagation**: instance A invalidates a key that instance B holds in L1; time until B
//!   applied it (tiered: B's `invalidations_received`, bumped after the eviction;
//!   multi-tier-cache: B's L1 no longer has the key), p50/p99/max, against a raw `PUBLISH` →
//!   subscriber receive in the same run; Redis commands and reads per invalidation.
//! * **W4t client tracking**: another program `DEL`s a key that instance B (`client_tracking`
//!   on) holds in L1; time until B evicted it (`tracking_evictions` moved), against a raw RESP3
//!   connection with `CLIENT TRACKING ON BCAST` receiving the push of the same kind of `DEL`.
//! * **W4b**: a new instance B is built, reads the key (L2 hit into its L1), and A invalidates
//!   it right away; lost = B still returns the old value 50 ms later.
//! * **W4c**: B's body is running (it read the old data) when A writes new data and
//!   invalidates; stale = B (or, through Redis, A) returns the old value after B's call ended.
//! * **W5 miss**: a distinct key per call, the body returns at once; p50 per call (the body
//!   costs nothing, so this is the overhead), ops/s, commands and reads per miss. Baseline:
//!   `redis-raw` (`GET` + `SET PX`).
//! * **W6 memory**: bytes per L1 entry at 10k / 100k (/ 1M in the full plan) entries, from a
//!   counting global allocator (counting only while a static `AtomicBool` is set, so timings
//!   elsewhere pay one relaxed load), and peak RSS (`VmHWM`), each case in a child process
//!   (this executable re-run with a hidden argument). Baseline: `moka-sync` (tiered's L1 is a
//!   `moka::sync::Cache`).
//!
//! The K workloads run on a private local Redis Cluster (`cluster_support.rs`: N masters, no
//! replicas, `redis-cli --cluster create`, killed at exit), started after the W workloads; in
//! the full plan, and in `--quick` only when named in `--only`:
//!
//! * **K2 L2 hit on the cluster** (3 masters): W2 with promotion off, concurrency 1, 16 (256 in
//!   the full plan); p50, ops/s, commands and reads per hit summed over the nodes. Baseline:
//!   `redis-raw-cluster`. Reference rows "1 server": W2's reader and `redis-raw` on the
//!   runner's single server, on the same ids, in the same rounds.
//! * **K5 miss on the cluster** (3 masters): W5; baseline `redis-raw-cluster` (`GET` + `SET PX`).
//! * **K4 propagation on the cluster**, 3 and 6 masters: B holds the key in L1 (a call, then a
//!   checked L1 hit), A invalidates it; time until B applied it, polled as in W4; p50/p99/max
//!   and A's call's own p50/p99. B's classic subscription is on node 1 and the trial keys'
//!   masters are other nodes, so a classic invalidation always crosses the cluster bus.
//!   Baselines `raw-publish` (classic rows) and `raw-spublish` (sharded rows). Per-node cost,
//!   over a second run of the same invalidations without B's reads (each still waited for at
//!   B): the delta of `INFO cpu` (`used_cpu_sys + used_cpu_user`) and of `CLUSTER INFO`'s
//!   `cluster_stats_messages_publish{,shard}_{sent,received}` per invalidation, summed over
//!   the nodes and on the busiest node. A `background` row gives the same counters over 1 s
//!   idle (the runtimes' beacons, one per second each, the clients' topology reads, the
//!   cluster's gossip): they are in every figure, not subtracted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

mod cluster_support;
mod cluster_workloads;

// =============================================================================================
// Counting allocator (W6)
// =============================================================================================

/// Net bytes allocated while [`COUNTING`] is set.
static NET_BYTES: AtomicI64 = AtomicI64::new(0);
/// Set only inside a W6 child process, around the fill of the cache being measured.
static COUNTING: AtomicBool = AtomicBool::new(false);

struct CountingAlloc;

// SAFETY: every call is forwarded to `System` unchanged; the counters have no effect on the
// memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if COUNTING.load(Ordering::Relaxed) && !p.is_null() {
            NET_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if COUNTING.load(Ordering::Relaxed) && !p.is_null() {
            NET_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            NET_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: forwarded; `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; `ptr` was allocated by `System` with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if COUNTING.load(Ordering::Relaxed) && !p.is_null() {
            NET_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// =============================================================================================
// The value, the "database", body-run counters
// =============================================================================================

/// The cached value, the same for every system: ~210 bytes as named MessagePack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    name: String,
    id: u64,
    score: u32,
    payload: String,
}

/// `id`'s value at data version `version` (the score carries the version, for W4b/W4c).
fn user_v(id: u64, version: u32) -> User {
    User {
        name: format!("user-{id:06}"),
        id,
        score: (id % 1000) as u32 + version * 1_000_000,
        payload: format!("{:016x}", id.wrapping_mul(0x9E37_79B9_7F4A_7C15)).repeat(10),
    }
}

fn user(id: u64) -> User {
    user_v(id, 0)
}

fn version_of(u: &User) -> u32 {
    u.score / 1_000_000
}

/// The systems. `as usize` indexes [`RUNS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Sys {
    TieredInstalled,
    TieredScoped,
    TieredL2Off,
    TieredL2On,
    MokaFuture,
    MokaFutureFh,
    MokaSync,
    MokaSyncFh,
    RedisRaw,
    Composed,
    Mtc,
    Cached,
    RawCluster,
    TieredClassic,
    TieredSharded,
    RawPublish,
    RawSpublish,
    Background,
}

impl Sys {
    fn name(self) -> &'static str {
        match self {
            Sys::TieredInstalled => "tiered-installed",
            Sys::TieredScoped => "tiered-scoped",
            Sys::TieredL2Off => "tiered-l2-promote-off",
            Sys::TieredL2On => "tiered-l2-promote-1",
            Sys::MokaFuture => "moka-future",
            Sys::MokaFutureFh => "moka-future-foldhash",
            Sys::MokaSync => "moka-sync",
            Sys::MokaSyncFh => "moka-sync-foldhash",
            Sys::RedisRaw => "redis-raw",
            Sys::Composed => "moka+redis",
            Sys::Mtc => "multi-tier-cache",
            Sys::Cached => "cached",
            Sys::RawCluster => "redis-raw-cluster",
            Sys::TieredClassic => "tiered-classic",
            Sys::TieredSharded => "tiered-sharded",
            Sys::RawPublish => "raw-publish",
            Sys::RawSpublish => "raw-spublish",
            Sys::Background => "background",
        }
    }

    fn from_name(name: &str) -> Option<Sys> {
        ALL_SYS.iter().copied().find(|s| s.name() == name)
    }
}

const ALL_SYS: [Sys; 18] = [
    Sys::TieredInstalled,
    Sys::TieredScoped,
    Sys::TieredL2Off,
    Sys::TieredL2On,
    Sys::MokaFuture,
    Sys::MokaFutureFh,
    Sys::MokaSync,
    Sys::MokaSyncFh,
    Sys::RedisRaw,
    Sys::Composed,
    Sys::Mtc,
    Sys::Cached,
    Sys::RawCluster,
    Sys::TieredClassic,
    Sys::TieredSharded,
    Sys::RawPublish,
    Sys::RawSpublish,
    Sys::Background,
];

/// Body runs per system (tiered's are read from its runtime's `computations`).
static RUNS: [AtomicU64; ALL_SYS.len()] = [const { AtomicU64::new(0) }; ALL_SYS.len()];

fn runs(sys: Sys) -> u64 {
    RUNS[sys as usize].load(Ordering::Relaxed)
}

/// The stampede body's duration.
const BODY: Duration = Duration::from_millis(50);
/// TTL of every value written to Redis by the hand-written systems.
const TTL_MS: u64 = 3 * 3600 * 1000;

/// Id ranges, disjoint per workload so that systems sharing a store never see each other's
/// keys.
const W1_BASE: u64 = 0;
const W2_BASE: u64 = 1_000_000;
const W3_BASE: u64 = 10_000_000;
const W5_BASE: u64 = 100_000_000;
const W4_BASE: u64 = 1_000_000_000;

static NEXT_W3: AtomicU64 = AtomicU64::new(W3_BASE + 1_000);
static NEXT_W5: AtomicU64 = AtomicU64::new(W5_BASE);
static NEXT_W4: AtomicU64 = AtomicU64::new(W4_BASE + 1_000);

fn fresh(counter: &AtomicU64, n: u64) -> u64 {
    counter.fetch_add(n, Ordering::Relaxed)
}

/// The "database" of W4b/W4c: the current data version of each id.
static DB: LazyLock<Mutex<HashMap<u64, u32>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
/// Sleep of the W4 body (W4c makes it slow), in ms.
static COH_DELAY_MS: AtomicU64 = AtomicU64::new(0);
/// W4 bodies started (W4c waits for B's body to be running).
static COH_STARTED: AtomicU64 = AtomicU64::new(0);

fn db_set(id: u64, version: u32) {
    DB.lock().expect("db").insert(id, version);
}

/// The W4 body: reads the data first, then takes its time (a slow query).
async fn coh_body(id: u64) -> User {
    let version = DB.lock().expect("db").get(&id).copied().unwrap_or(0);
    COH_STARTED.fetch_add(1, Ordering::SeqCst);
    let delay = COH_DELAY_MS.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    user_v(id, version)
}

async fn body(sys: Sys, id: u64, delay: Duration) -> User {
    RUNS[sys as usize].fetch_add(1, Ordering::Relaxed);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    user(id)
}

fn body_sync(sys: Sys, id: u64) -> User {
    RUNS[sys as usize].fetch_add(1, Ordering::Relaxed);
    user(id)
}

/// The private Redis URL, for the `cached` stores' `create` blocks.
static REDIS_URL: OnceLock<String> = OnceLock::new();

fn redis_url() -> &'static str {
    REDIS_URL
        .get()
        .map_or("redis://127.0.0.1:1/", String::as_str)
}

/// Error type of the `cached` Redis functions.
#[derive(Debug, Clone)]
pub struct BenchError(String);

/// The memoized functions (dead-code lints off: the macros generate companions that only
/// some workloads call).
#[allow(dead_code)]
mod memo {
    use super::{BODY, BenchError, Sys, User, body, coh_body, redis_url, user};
    use std::time::Duration;

    #[tiered::tiered_cache(key = "l1:<id>", strategy = "LongTerm")]
    pub async fn t_l1(id: u64) -> User {
        user(id)
    }

    #[tiered::tiered_cache(key = "l2:<id>", strategy = "LongTerm")]
    pub async fn t_l2(id: u64) -> User {
        user(id)
    }

    #[tiered::tiered_cache(key = "l2p:<id>", strategy = "LongTerm", promote = 1)]
    pub async fn t_l2p(id: u64) -> User {
        user(id)
    }

    #[tiered::tiered_cache(key = "st:<id>", strategy = "LongTerm")]
    pub async fn t_st(id: u64) -> User {
        tokio::time::sleep(BODY).await;
        user(id)
    }

    #[tiered::tiered_cache(key = "miss:<id>", strategy = "LongTerm")]
    pub async fn t_miss(id: u64) -> User {
        user(id)
    }

    #[tiered::tiered_cache(key = "coh:<id>", strategy = "LongTerm", promote = 1)]
    pub async fn t_coh(id: u64) -> User {
        coh_body(id).await
    }

    #[tiered::tiered_cache(key = "k4:<id>", strategy = "LongTerm", promote = 1)]
    pub async fn t_k4(id: u64) -> User {
        user(id)
    }

    #[tiered::tiered_cache(key = "mem:<id>", strategy = "LongTerm", tiers = "l1")]
    pub async fn t_mem(id: u64) -> User {
        user(id)
    }

    #[cached::macros::cached(max_size = 100_000, ttl_secs = 10_800)]
    pub async fn c_l1(id: u64) -> User {
        body(Sys::Cached, id, Duration::ZERO).await
    }

    #[cached::macros::cached(max_size = 100_000, ttl_secs = 10_800, sync_writes = "by_key")]
    pub async fn c_st(id: u64) -> User {
        body(Sys::Cached, id, BODY).await
    }

    #[cached::macros::concurrent_cached(
        ty = "cached::AsyncRedisCache<u64, User>",
        create = r##"{
            cached::AsyncRedisCache::builder("w2")
                .ttl(Duration::from_secs(10_800))
                .connection_string(redis_url())
                .build()
                .await
                .expect("cached: AsyncRedisCache")
        }"##,
        map_error = r##"|e| BenchError(format!("{e:?}"))"##
    )]
    pub async fn c_l2(id: u64) -> Result<User, BenchError> {
        Ok(body(Sys::Cached, id, Duration::ZERO).await)
    }

    #[cached::macros::concurrent_cached(
        ty = "cached::AsyncRedisCache<u64, User>",
        create = r##"{
            cached::AsyncRedisCache::builder("w5")
                .ttl(Duration::from_secs(10_800))
                .connection_string(redis_url())
                .build()
                .await
                .expect("cached: AsyncRedisCache")
        }"##,
        map_error = r##"|e| BenchError(format!("{e:?}"))"##
    )]
    pub async fn c_miss(id: u64) -> Result<User, BenchError> {
        Ok(body(Sys::Cached, id, Duration::ZERO).await)
    }
}

// =============================================================================================
// Plan and arguments
// =============================================================================================

struct Plan {
    quick: bool,
    reps: usize,
    w1_time: Duration,
    /// W2 calls per round for c = 1, 16, 256.
    w2_calls: [usize; 3],
    w3_callers: Vec<usize>,
    w4_trials: usize,
    w4b_trials: usize,
    w5_calls: usize,
    w6_entries: Vec<u64>,
    /// K2 concurrencies (calls per round as W2's).
    k2_conc: Vec<usize>,
    only: Option<Vec<String>>,
    out: PathBuf,
}

const W2_CONC: [usize; 3] = [1, 16, 256];

impl Plan {
    fn from_args(args: &[String]) -> Plan {
        let mut quick = !args.iter().any(|a| a == "--bench");
        let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tiered-bench");
        let mut only = None;
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "--quick" => quick = true,
                "--out" if i + 1 < args.len() => {
                    // Cargo runs benches in the package directory: a relative path is taken
                    // from where the command was typed ($PWD), as the user means it.
                    let base = std::env::var_os("PWD")
                        .map(PathBuf::from)
                        .unwrap_or_default();
                    out = base.join(&args[i + 1]);
                    i += 1;
                }
                "--only" if i + 1 < args.len() => {
                    only = Some(
                        args[i + 1]
                            .split(',')
                            .map(|s| s.trim().to_ascii_uppercase())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    );
                    i += 1;
                }
                "--bench" => {}
                other => eprintln!("runner: ignoring argument {other:?}"),
            }
            i += 1;
        }
        if quick {
            Plan {
                quick,
                reps: 3,
                w1_time: Duration::from_millis(100),
                w2_calls: [1_500, 6_000, 12_000],
                w3_callers: vec![1, 10, 100, 1000],
                w4_trials: 200,
                w4b_trials: 20,
                w5_calls: 1_500,
                w6_entries: vec![10_000, 100_000],
                k2_conc: vec![1, 16],
                only,
                out,
            }
        } else {
            Plan {
                quick,
                reps: 5,
                w1_time: Duration::from_millis(300),
                w2_calls: [3_000, 12_000, 24_000],
                w3_callers: vec![1, 10, 100, 1000, 4000],
                w4_trials: 1000,
                w4b_trials: 60,
                w5_calls: 4_000,
                w6_entries: vec![10_000, 100_000, 1_000_000],
                k2_conc: vec![1, 16, 256],
                only,
                out,
            }
        }
    }

    fn runs(&self, workload: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|w| w == &workload.to_ascii_uppercase()))
    }

    /// The K workloads (each starts a local Redis Cluster, ~25 s in all in the quick plan): in
    /// the full plan, and in `--quick` only when named in `--only`.
    fn runs_k(&self, workload: &str) -> bool {
        match &self.only {
            Some(_) => self.runs(workload),
            None => !self.quick,
        }
    }
}

// =============================================================================================
// Results
// =============================================================================================

#[derive(Clone, Debug)]
enum Status {
    Ok,
    Na(String),
    Failed(String),
}

/// One system × workload × case × metric: one sample per repeat.
#[derive(Clone, Debug)]
struct Rec {
    workload: &'static str,
    case: String,
    system: &'static str,
    metric: &'static str,
    unit: &'static str,
    samples: Vec<f64>,
    status: Status,
    baseline: Option<&'static str>,
}

impl Rec {
    fn median(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    fn min(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::min)
    }

    fn max(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::max)
    }
}

#[derive(Default)]
struct Results {
    recs: Vec<Rec>,
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        workload: &'static str,
        case: &str,
        sys: Sys,
        metric: &'static str,
        unit: &'static str,
        value: f64,
        baseline: Option<Sys>,
    ) {
        if let Some(r) = self.recs.iter_mut().find(|r| {
            r.workload == workload && r.case == case && r.system == sys.name() && r.metric == metric
        }) {
            r.samples.push(value);
            return;
        }
        self.recs.push(Rec {
            workload,
            case: case.to_owned(),
            system: sys.name(),
            metric,
            unit,
            samples: vec![value],
            status: Status::Ok,
            baseline: baseline.map(Sys::name),
        });
    }

    /// Marks `sys` in `workload`/`case` (every case when `case` is empty) as `status`, and
    /// drops its samples.
    fn mark(&mut self, workload: &'static str, case: &str, sys: Sys, status: Status) {
        let mut found = false;
        for r in self.recs.iter_mut().filter(|r| {
            r.workload == workload && (case.is_empty() || r.case == case) && r.system == sys.name()
        }) {
            r.samples.clear();
            r.status = status.clone();
            found = true;
        }
        if !found {
            self.recs.push(Rec {
                workload,
                case: if case.is_empty() {
                    "all".to_owned()
                } else {
                    case.to_owned()
                },
                system: sys.name(),
                metric: "-",
                unit: "",
                samples: Vec::new(),
                status,
                baseline: None,
            });
        }
    }

    fn find(&self, workload: &str, case: &str, system: &str, metric: &str) -> Option<&Rec> {
        self.recs.iter().find(|r| {
            r.workload == workload && r.case == case && r.system == system && r.metric == metric
        })
    }

    fn ratio(&self, r: &Rec) -> Option<f64> {
        let base = self.find(r.workload, &r.case, r.baseline?, r.metric)?;
        let (a, b) = (r.median()?, base.median()?);
        (b != 0.0).then(|| a / b)
    }
}

// =============================================================================================
// Statistics helpers
// =============================================================================================

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Percentile points drawn in the latency plots.
const PLOT_PCTS: [f64; 11] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9,
];

// =============================================================================================
// Private redis-server
// =============================================================================================

/// A `redis-server` owned by this process, killed when dropped (also while unwinding).
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start() -> Result<RedisServer, String> {
        let mut last = String::new();
        // A freed port may be taken by someone else before the server binds it: retry.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port: {e}"))?
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        "redis-server not found on PATH (apt-get install -y redis-server)"
                            .to_owned()
                    } else {
                        format!("cannot run redis-server: {e}")
                    }
                })?;
            let mut server = RedisServer { port, child };
            match server.wait_ready(Duration::from_secs(5)) {
                Ok(()) => return Ok(server),
                Err(e) => last = e, // dropping `server` kills it
            }
        }
        Err(last)
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

/// Commands executed (every `cmdstat_*` but `INFO` itself) and request reads
/// (`total_reads_processed`, one per batch of requests read from a socket: ≈ round trips).
async fn server_counts(conn: &MultiplexedConnection) -> (u64, u64) {
    let mut conn = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    let (mut calls, mut reads) = (0, 0);
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            if name == "info" {
                continue;
            }
            calls += fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("total_reads_processed:") {
            reads = v.trim().parse().unwrap_or(0);
        }
    }
    (calls, reads)
}

/// Commands and reads per operation between two [`server_counts`] (the later `INFO`'s own
/// read is subtracted).
fn per_op(before: (u64, u64), after: (u64, u64), ops: usize) -> (f64, f64) {
    let n = ops.max(1) as f64;
    (
        after.0.saturating_sub(before.0) as f64 / n,
        after.1.saturating_sub(before.1).saturating_sub(1) as f64 / n,
    )
}

// =============================================================================================
// The world: every instance of every system
// =============================================================================================

type Mtc = Arc<multi_tier_cache::CacheManager>;
type MtcL1 = Arc<multi_tier_cache::MokaCache>;
type FoldState = foldhash::fast::RandomState;

const CAPACITY: u64 = tiered::DEFAULT_L1_MAX_ENTRIES;

struct World {
    url: String,
    /// The hand-written systems' connection.
    conn: MultiplexedConnection,
    /// `INFO` only.
    info: MultiplexedConnection,
    installed: tiered::Runtime,
    scoped: tiered::Runtime,
    l2_fill: tiered::Runtime,
    l2_off: tiered::Runtime,
    l2_on: tiered::Runtime,
    coh_a: tiered::Runtime,
    coh_b: tiered::Runtime,
    /// W4t: an instance with client tracking on (namespace `trk`).
    trk_b: tiered::Runtime,
    moka_f: moka::future::Cache<u64, User>,
    moka_f_fh: moka::future::Cache<u64, User, FoldState>,
    moka_s: moka::sync::Cache<u64, User>,
    moka_s_fh: moka::sync::Cache<u64, User, FoldState>,
    composed_l1: moka::future::Cache<u64, User>,
    mtc: Mtc,
    mtc_l1: MtcL1,
    mtc_a: Mtc,
    mtc_b: Mtc,
    mtc_b_l1: MtcL1,
}

async fn mtc_instance(url: &str, channel: &str) -> (Mtc, MtcL1) {
    use multi_tier_cache::{InvalidationConfig, MokaCache, MokaCacheConfig, RedisCache};
    let l1 = Arc::new(
        MokaCache::new(MokaCacheConfig {
            max_capacity: CAPACITY,
            ..MokaCacheConfig::default()
        })
        .expect("multi-tier-cache L1"),
    );
    let l2 = Arc::new(
        RedisCache::with_url(url)
            .await
            .expect("multi-tier-cache L2"),
    );
    let mut m = multi_tier_cache::CacheManager::new_with_invalidation(
        Arc::clone(&l1),
        l2,
        url,
        InvalidationConfig {
            channel: channel.to_owned(),
            ..InvalidationConfig::default()
        },
    )
    .await
    .expect("multi-tier-cache manager");
    m.set_serializer(multi_tier_cache::CacheSerializer::MsgPack(
        multi_tier_cache::serialization::MsgPackSerializer,
    ));
    (Arc::new(m), l1)
}

impl World {
    async fn new(url: &str) -> World {
        let client = redis::Client::open(url).expect("redis client");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let info = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let build = |ns: &str| tiered::Runtime::builder().namespace(ns).redis_url(url);
        let installed = build("bi").install().await.expect("install tiered");
        let scoped = build("bs").build().await.expect("tiered runtime");
        let l2_fill = build("l2").build().await.expect("tiered runtime");
        let l2_off = build("l2")
            .promotion_frequency(u32::MAX)
            .build()
            .await
            .expect("tiered runtime");
        let l2_on = build("l2").build().await.expect("tiered runtime");
        let coh_a = build("coh").build().await.expect("tiered runtime");
        let coh_b = build("coh").build().await.expect("tiered runtime");
        let trk_b = build("trk")
            .client_tracking(true)
            .build()
            .await
            .expect("tiered runtime with client tracking");
        assert!(trk_b.stats().tracking, "client tracking must be up");
        for rt in [
            &installed, &scoped, &l2_fill, &l2_off, &l2_on, &coh_a, &coh_b, &trk_b,
        ] {
            assert!(
                rt.stats().l2_connected && rt.stats().subscribed,
                "tiered runtimes must be connected and subscribed"
            );
        }
        let (mtc, mtc_l1) = mtc_instance(url, "mtc:invalidate").await;
        let (mtc_a, _) = mtc_instance(url, "mtc:coh").await;
        let (mtc_b, mtc_b_l1) = mtc_instance(url, "mtc:coh").await;
        World {
            url: url.to_owned(),
            conn,
            info,
            installed,
            scoped,
            l2_fill,
            l2_off,
            l2_on,
            coh_a,
            coh_b,
            trk_b,
            moka_f: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .build(),
            moka_f_fh: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .build_with_hasher(FoldState::default()),
            moka_s: moka::sync::Cache::builder().max_capacity(CAPACITY).build(),
            moka_s_fh: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .build_with_hasher(FoldState::default()),
            composed_l1: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .build(),
            mtc,
            mtc_l1,
            mtc_a,
            mtc_b,
            mtc_b_l1,
        }
    }

    fn runtime(&self, sys: Sys) -> Option<&tiered::Runtime> {
        match sys {
            Sys::TieredInstalled => Some(&self.installed),
            Sys::TieredScoped => Some(&self.scoped),
            Sys::TieredL2Off => Some(&self.l2_off),
            Sys::TieredL2On => Some(&self.l2_on),
            _ => None,
        }
    }

    /// Body runs of `sys` so far.
    fn body_runs(&self, sys: Sys) -> u64 {
        match self.runtime(sys) {
            Some(rt) => rt.stats().total.computations,
            None => runs(sys),
        }
    }
}

// =============================================================================================
// Calls (every workload but W1's timed loop)
// =============================================================================================

#[derive(Clone, Copy, PartialEq, Eq)]
enum Space {
    W1,
    W2,
    W3,
    W5,
}

impl Space {
    fn delay(self) -> Duration {
        if self == Space::W3 {
            BODY
        } else {
            Duration::ZERO
        }
    }
}

async fn tiered_call(space: Space, id: u64) -> User {
    match space {
        Space::W1 => memo::t_l1(id).await,
        Space::W2 => memo::t_l2(id).await,
        Space::W3 => memo::t_st(id).await,
        Space::W5 => memo::t_miss(id).await,
    }
}

async fn cached_call(space: Space, id: u64) -> User {
    match space {
        Space::W1 => memo::c_l1(id).await,
        Space::W3 => memo::c_st(id).await,
        Space::W2 => memo::c_l2(id)
            .await
            .unwrap_or_else(|e| panic!("cached: Redis store: {}", e.0)),
        Space::W5 => memo::c_miss(id)
            .await
            .unwrap_or_else(|e| panic!("cached: Redis store: {}", e.0)),
    }
}

/// The hand-written Redis memoization: `GET` + decode, or the body and `SET PX`.
async fn raw_get(conn: &MultiplexedConnection, sys: Sys, id: u64, delay: Duration) -> User {
    let mut conn = conn.clone();
    let key = format!("raw:{id}");
    let found: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("redis GET");
    if let Some(bytes) = found {
        return rmp_serde::from_slice(&bytes).expect("decode");
    }
    let v = body(sys, id, delay).await;
    let bytes = rmp_serde::to_vec_named(&v).expect("encode");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(bytes)
        .arg("PX")
        .arg(TTL_MS)
        .query_async(&mut conn)
        .await
        .expect("redis SET");
    v
}

/// Moka in front of [`raw_get`], composed by hand.
async fn composed_get(w: &World, id: u64, delay: Duration) -> User {
    if let Some(v) = w.composed_l1.get(&id).await {
        return v;
    }
    w.composed_l1
        .get_with(id, raw_get(&w.conn, Sys::Composed, id, delay))
        .await
}

async fn moka_future_get<S>(
    c: &moka::future::Cache<u64, User, S>,
    sys: Sys,
    id: u64,
    delay: Duration,
) -> User
where
    S: std::hash::BuildHasher + Clone + Send + Sync + 'static,
{
    if let Some(v) = c.get(&id).await {
        return v;
    }
    c.get_with(id, body(sys, id, delay)).await
}

fn moka_sync_get<S>(c: &moka::sync::Cache<u64, User, S>, sys: Sys, id: u64) -> User
where
    S: std::hash::BuildHasher + Clone + Send + Sync + 'static,
{
    c.get(&id)
        .unwrap_or_else(|| c.get_with(id, || body_sync(sys, id)))
}

async fn mtc_get(m: &multi_tier_cache::CacheManager, id: u64, delay: Duration) -> User {
    let key = format!("mtc:{id}");
    m.get_or_compute_typed(
        &key,
        multi_tier_cache::CacheStrategy::LongTerm,
        || async move { Ok(body(Sys::Mtc, id, delay).await) },
    )
    .await
    .expect("multi-tier-cache get_or_compute_typed")
}

/// One call of `sys` on `id` in `space`'s functions (each call scoped for scoped runtimes).
async fn call(w: &World, sys: Sys, space: Space, id: u64) -> User {
    let delay = space.delay();
    match sys {
        Sys::TieredInstalled => tiered_call(space, id).await,
        Sys::TieredScoped => w.scoped.scope(tiered_call(space, id)).await,
        Sys::TieredL2Off => w.l2_off.scope(memo::t_l2(id)).await,
        Sys::TieredL2On => w.l2_on.scope(memo::t_l2p(id)).await,
        Sys::MokaFuture => moka_future_get(&w.moka_f, sys, id, delay).await,
        Sys::MokaFutureFh => moka_future_get(&w.moka_f_fh, sys, id, delay).await,
        Sys::MokaSync => moka_sync_get(&w.moka_s, sys, id),
        Sys::MokaSyncFh => moka_sync_get(&w.moka_s_fh, sys, id),
        Sys::RedisRaw => raw_get(&w.conn, sys, id, delay).await,
        Sys::Composed => composed_get(w, id, delay).await,
        Sys::Mtc => mtc_get(&w.mtc, id, delay).await,
        Sys::Cached => cached_call(space, id).await,
        // The K systems (cluster_workloads.rs) are never called through the single-server world.
        Sys::RawCluster
        | Sys::TieredClassic
        | Sys::TieredSharded
        | Sys::RawPublish
        | Sys::RawSpublish
        | Sys::Background => unreachable!("{} is a K system", sys.name()),
    }
}

/// Calls every id once, `concurrency` at a time; `Err` names the first wrong value.
async fn prefill(
    w: &Arc<World>,
    sys: Sys,
    space: Space,
    ids: Vec<u64>,
    concurrency: usize,
) -> Result<(), String> {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (w, ids, next) = (Arc::clone(w), Arc::clone(&ids), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&id) = ids.get(i) else {
                    return Ok(());
                };
                let v = call(&w, sys, space, id).await;
                if v != user(id) {
                    return Err(format!("wrong value for id {id}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("prefill task: {e}"))??;
    }
    Ok(())
}

// =============================================================================================
// W1: L1 hit
// =============================================================================================

const BATCH: u64 = 64;

#[inline]
fn key_at(i: u64, task: u64, keys: u64) -> u64 {
    if keys == 1 {
        W1_BASE
    } else {
        W1_BASE + (i.wrapping_mul(7919) + task * 5003) % keys
    }
}

/// Times batches of [`BATCH`] calls until `deadline`: per-call ns of each batch, and calls.
macro_rules! batches {
    ($deadline:expr, $task:expr, $keys:expr, |$id:ident| $call:expr) => {{
        let mut samples = Vec::with_capacity(1 << 14);
        let mut i: u64 = 0;
        while Instant::now() < $deadline {
            let t0 = Instant::now();
            for _ in 0..BATCH {
                let $id = key_at(i, $task, $keys);
                i += 1;
                black_box($call);
            }
            samples.push(ns(t0.elapsed()) / BATCH as f64);
        }
        (samples, i)
    }};
}

async fn w1_task(
    w: Arc<World>,
    sys: Sys,
    keys: u64,
    task: u64,
    deadline: Instant,
) -> (Vec<f64>, u64) {
    let w = &*w;
    match sys {
        Sys::TieredInstalled => batches!(deadline, task, keys, |id| memo::t_l1(id).await),
        Sys::TieredScoped => {
            w.scoped
                .scope(async { batches!(deadline, task, keys, |id| memo::t_l1(id).await) })
                .await
        }
        Sys::MokaFuture => batches!(deadline, task, keys, |id| match w.moka_f.get(&id).await {
            Some(v) => v,
            None => {
                let v = body_sync(sys, id);
                w.moka_f.insert(id, v.clone()).await;
                v
            }
        }),
        Sys::MokaFutureFh => {
            batches!(
                deadline,
                task,
                keys,
                |id| match w.moka_f_fh.get(&id).await {
                    Some(v) => v,
                    None => {
                        let v = body_sync(sys, id);
                        w.moka_f_fh.insert(id, v.clone()).await;
                        v
                    }
                }
            )
        }
        Sys::MokaSync => batches!(deadline, task, keys, |id| match w.moka_s.get(&id) {
            Some(v) => v,
            None => {
                let v = body_sync(sys, id);
                w.moka_s.insert(id, v.clone());
                v
            }
        }),
        Sys::MokaSyncFh => batches!(deadline, task, keys, |id| match w.moka_s_fh.get(&id) {
            Some(v) => v,
            None => {
                let v = body_sync(sys, id);
                w.moka_s_fh.insert(id, v.clone());
                v
            }
        }),
        Sys::Composed => batches!(deadline, task, keys, |id| composed_get(
            w,
            id,
            Duration::ZERO
        )
        .await),
        Sys::Mtc => batches!(deadline, task, keys, |id| mtc_get(
            &w.mtc,
            id,
            Duration::ZERO
        )
        .await),
        Sys::Cached => batches!(deadline, task, keys, |id| memo::c_l1(id).await),
        _ => (Vec::new(), 0),
    }
}

const W1_SYS: [Sys; 9] = [
    Sys::TieredInstalled,
    Sys::TieredScoped,
    Sys::MokaFuture,
    Sys::MokaFutureFh,
    Sys::MokaSync,
    Sys::MokaSyncFh,
    Sys::Composed,
    Sys::Mtc,
    Sys::Cached,
];

/// Pooled per-call samples per system for the plots.
type Pool = BTreeMap<&'static str, Vec<f64>>;

async fn w1(w: &Arc<World>, plan: &Plan, res: &mut Results, pool: &mut Pool) {
    const W: &str = "W1";
    res.mark(
        W,
        "",
        Sys::RedisRaw,
        Status::Na("no in-process tier".into()),
    );
    let ids: Vec<u64> = (0..10_000).map(|i| W1_BASE + i).collect();
    // Filled in chunks of 100 keys, system after system, so that every system's values are
    // spread over the heap alike: a system filled alone in a tight loop would get its values
    // packed together and win on memory locality, not on its own code (at 10 000 keys the
    // difference reaches 30 %).
    let before: Vec<u64> = W1_SYS.iter().map(|&s| w.body_runs(s)).collect();
    let mut failed: BTreeMap<usize, String> = BTreeMap::new();
    for chunk in ids.chunks(100) {
        for (i, &sys) in W1_SYS.iter().enumerate() {
            if failed.contains_key(&i) {
                continue;
            }
            if let Err(e) = prefill(w, sys, Space::W1, chunk.to_vec(), 16).await {
                failed.insert(i, e);
            }
        }
    }
    let mut ok = Vec::new();
    for (i, &sys) in W1_SYS.iter().enumerate() {
        let ran = w.body_runs(sys) - before[i];
        match failed.remove(&i) {
            Some(why) => res.mark(W, "", sys, Status::Failed(why)),
            None if ran != 10_000 => res.mark(
                W,
                "",
                sys,
                Status::Failed(format!("{ran} body runs filling 10000 keys")),
            ),
            None => ok.push(sys),
        }
    }
    let cases = [(1u64, 1u64), (10_000, 1), (1, 2), (10_000, 2)];
    let runs_before: Vec<u64> = ok.iter().map(|&s| w.body_runs(s)).collect();
    // Warm-up.
    for &sys in &ok {
        for &(keys, tasks) in &cases {
            w1_measure(w, sys, keys, tasks, Duration::from_millis(10)).await;
        }
    }
    for rep in 0..plan.reps {
        for &(keys, tasks) in &cases {
            let case = format!(
                "{keys} keys, {tasks} task{}",
                if tasks > 1 { "s" } else { "" }
            );
            // Rotate the start so that no system is always first.
            for k in 0..ok.len() {
                let sys = ok[(k + rep) % ok.len()];
                let (samples, calls, wall) = w1_measure(w, sys, keys, tasks, plan.w1_time).await;
                let s = sorted(samples);
                let base = Some(Sys::MokaFuture);
                res.push(W, &case, sys, "p50", "ns", pct(&s, 50.0), base);
                res.push(W, &case, sys, "p99", "ns", pct(&s, 99.0), base);
                res.push(
                    W,
                    &case,
                    sys,
                    "ops/s",
                    "ops/s",
                    calls as f64 / wall.as_secs_f64(),
                    base,
                );
                if keys == 10_000 && tasks == 1 {
                    pool.entry(sys.name()).or_default().extend(s);
                }
            }
        }
    }
    for (i, &sys) in ok.iter().enumerate() {
        let ran = w.body_runs(sys) - runs_before[i];
        let mut wrong = None;
        for id in [W1_BASE, W1_BASE + 1, W1_BASE + 9_999] {
            if call(w, sys, Space::W1, id).await != user(id) {
                wrong = Some(id);
            }
        }
        if ran != 0 {
            res.mark(
                W,
                "",
                sys,
                Status::Failed(format!("{ran} body runs during hits")),
            );
        } else if let Some(id) = wrong {
            res.mark(
                W,
                "",
                sys,
                Status::Failed(format!("wrong value for id {id}")),
            );
        }
    }
}

async fn w1_measure(
    w: &Arc<World>,
    sys: Sys,
    keys: u64,
    tasks: u64,
    time: Duration,
) -> (Vec<f64>, u64, Duration) {
    let start = Instant::now();
    let deadline = start + time;
    let handles: Vec<_> = (0..tasks)
        .map(|t| tokio::spawn(w1_task(Arc::clone(w), sys, keys, t, deadline)))
        .collect();
    let mut samples = Vec::new();
    let mut calls = 0;
    for h in handles {
        let (s, c) = h.await.expect("W1 task");
        samples.extend(s);
        calls += c;
    }
    (samples, calls, start.elapsed())
}

// =============================================================================================
// W2: L2 hit
// =============================================================================================

fn w2_baseline(sys: Sys) -> Sys {
    match sys {
        Sys::TieredL2On | Sys::Mtc => Sys::Composed,
        _ => Sys::RedisRaw,
    }
}

/// Makes sure the next call of every W2 key is an L2 hit.
async fn w2_flush(w: &World, sys: Sys) {
    use multi_tier_cache::CacheBackend;
    match sys {
        Sys::TieredL2On | Sys::TieredL2Off => w.runtime(sys).expect("tiered").flush_l1(),
        Sys::Composed => {
            w.composed_l1.invalidate_all();
            w.composed_l1.run_pending_tasks().await;
        }
        Sys::Mtc => {
            CacheBackend::remove_pattern(&*w.mtc_l1, "mtc:*")
                .await
                .expect("multi-tier-cache L1 remove_pattern");
        }
        _ => {}
    }
}

async fn w2(w: &Arc<World>, plan: &Plan, res: &mut Results, pool: &mut Pool) {
    const W: &str = "W2";
    for sys in [Sys::TieredInstalled, Sys::TieredScoped] {
        res.mark(
            W,
            "",
            sys,
            Status::Na("measured as tiered-l2-promote-off / -1 (runtimes built for W2)".into()),
        );
    }
    for sys in [Sys::MokaFuture, Sys::MokaSync] {
        res.mark(W, "", sys, Status::Na("no L2".into()));
    }
    let max = *plan.w2_calls.iter().max().unwrap_or(&0) as u64;
    let ids: Vec<u64> = (0..max).map(|i| W2_BASE + i).collect();
    let mut ok = Vec::new();
    // Fill Redis: tiered through a third runtime (its L1 keeps them, the readers' stay empty).
    let fills: [(Sys, Result<(), String>); 6] = [
        (Sys::TieredL2Off, w2_fill_tiered(w, &ids, false).await),
        (Sys::TieredL2On, w2_fill_tiered(w, &ids, true).await),
        (
            Sys::RedisRaw,
            prefill(w, Sys::RedisRaw, Space::W2, ids.clone(), 64).await,
        ),
        (Sys::Composed, Ok(())), // reads the keys redis-raw wrote (same code, same bytes)
        (
            Sys::Mtc,
            prefill(w, Sys::Mtc, Space::W2, ids.clone(), 64).await,
        ),
        (
            Sys::Cached,
            prefill(w, Sys::Cached, Space::W2, ids.clone(), 64).await,
        ),
    ];
    for (sys, r) in fills {
        match r {
            Ok(()) => ok.push(sys),
            Err(why) => res.mark(W, "", sys, Status::Failed(why)),
        }
    }
    let runs_before: Vec<u64> = ok.iter().map(|&s| w.body_runs(s)).collect();
    let stats_before: Vec<Option<tiered::Stats>> = ok
        .iter()
        .map(|&s| w.runtime(s).map(tiered::Runtime::stats))
        .collect();
    let mut hits = vec![0u64; ok.len()];
    for rep in 0..plan.reps {
        for (ci, &c) in W2_CONC.iter().enumerate() {
            let m = plan.w2_calls[ci];
            let case = format!("c={c}");
            for k in 0..ok.len() {
                let idx = (k + rep) % ok.len();
                let sys = ok[idx];
                w2_flush(w, sys).await;
                let before = server_counts(&w.info).await;
                let (lat, wall) = w2_round(w, sys, c, m).await;
                let after = server_counts(&w.info).await;
                hits[idx] += m as u64;
                let (cmds, reads) = per_op(before, after, m);
                let s = sorted(lat);
                let base = Some(w2_baseline(sys));
                res.push(W, &case, sys, "p50", "ns", pct(&s, 50.0), base);
                res.push(
                    W,
                    &case,
                    sys,
                    "ops/s",
                    "ops/s",
                    m as f64 / wall.as_secs_f64(),
                    base,
                );
                res.push(W, &case, sys, "commands/hit", "cmds", cmds, None);
                res.push(W, &case, sys, "reads/hit", "reads", reads, None);
                if c == 16 {
                    pool.entry(sys.name()).or_default().extend(s);
                }
            }
        }
    }
    for (i, &sys) in ok.iter().enumerate() {
        let ran = w.body_runs(sys) - runs_before[i];
        if ran != 0 {
            res.mark(
                W,
                "",
                sys,
                Status::Failed(format!("{ran} body runs during L2 hits")),
            );
            continue;
        }
        if let (Some(rt), Some(b)) = (w.runtime(sys), &stats_before[i]) {
            let a = rt.stats().total;
            let l2 = a.l2_hits - b.total.l2_hits;
            let l1 = a.l1_hits - b.total.l1_hits;
            if l2 != hits[i] || l1 != 0 {
                res.mark(
                    W,
                    "",
                    sys,
                    Status::Failed(format!(
                        "{l2} L2 hits and {l1} L1 hits for {} calls",
                        hits[i]
                    )),
                );
            }
        }
    }
}

async fn w2_fill_tiered(w: &Arc<World>, ids: &[u64], promoted: bool) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(ids.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (w, ids, next) = (Arc::clone(w), Arc::clone(&ids), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&id) = ids.get(i) else {
                    return Ok(());
                };
                let v = if promoted {
                    w.l2_fill.scope(memo::t_l2p(id)).await
                } else {
                    w.l2_fill.scope(memo::t_l2(id)).await
                };
                if v != user(id) {
                    return Err(format!("wrong value for id {id}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("fill task: {e}"))??;
    }
    Ok(())
}

/// `m` calls on the first `m` W2 ids spread over `c` tasks; per-call ns and the wall time.
async fn w2_round(w: &Arc<World>, sys: Sys, c: usize, m: usize) -> (Vec<f64>, Duration) {
    let start = Instant::now();
    let handles: Vec<_> = (0..c)
        .map(|t| {
            let w = Arc::clone(w);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(m / c + 1);
                let mut i = t;
                while i < m {
                    let id = W2_BASE + i as u64;
                    let t0 = Instant::now();
                    let v = call(&w, sys, Space::W2, id).await;
                    lat.push(ns(t0.elapsed()));
                    debug_assert_eq!(v.id, id);
                    black_box(v);
                    i += c;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(m);
    for h in handles {
        lat.extend(h.await.expect("W2 task"));
    }
    (lat, start.elapsed())
}

// =============================================================================================
// W3 / W3b: stampede and isolation
// =============================================================================================

const W3_SYS: [Sys; 6] = [
    Sys::TieredScoped,
    Sys::MokaFuture,
    Sys::Composed,
    Sys::RedisRaw,
    Sys::Mtc,
    Sys::Cached,
];

/// `callers` concurrent callers over `keys` fresh keys: body runs and per-caller latency (ms).
async fn stampede(w: &Arc<World>, sys: Sys, callers: usize, keys: usize) -> (u64, Vec<f64>) {
    let base = fresh(&NEXT_W3, keys as u64);
    let before = w.body_runs(sys);
    let handles: Vec<_> = (0..callers)
        .map(|i| {
            let w = Arc::clone(w);
            let id = base + (i % keys) as u64;
            tokio::spawn(async move {
                let t0 = Instant::now();
                let v = call(&w, sys, Space::W3, id).await;
                let took = t0.elapsed();
                (v == user(id), took)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(callers);
    let mut wrong = 0;
    for h in handles {
        let (right, took) = h.await.expect("W3 caller");
        wrong += u64::from(!right);
        lat.push(took.as_secs_f64() * 1e3);
    }
    let ran = w.body_runs(sys) - before;
    (if wrong > 0 { u64::MAX } else { ran }, lat)
}

async fn w3(
    w: &Arc<World>,
    plan: &Plan,
    res: &mut Results,
    growth: &mut Vec<(String, Vec<(f64, f64)>)>,
) {
    const W: &str = "W3";
    res.mark(
        W,
        "",
        Sys::MokaSync,
        Status::Na("get_with blocks the executor thread for the whole body".into()),
    );
    res.mark(
        W,
        "",
        Sys::TieredInstalled,
        Status::Na("same runtime code as tiered-scoped (W1 shows the difference)".into()),
    );
    let body_ms = BODY.as_secs_f64() * 1e3;
    let mut cases: Vec<(usize, usize)> = plan.w3_callers.iter().map(|&n| (n, 1)).collect();
    cases.push((1000, 100));
    let mut failed: BTreeMap<(Sys, String), String> = BTreeMap::new();
    for rep in 0..plan.reps {
        for &(callers, keys) in &cases {
            let case = if keys == 1 {
                format!("1 key x {callers} callers")
            } else {
                format!("{keys} keys x {} callers", callers / keys)
            };
            for k in 0..W3_SYS.len() {
                let sys = W3_SYS[(k + rep) % W3_SYS.len()];
                let (ran, lat) = stampede(w, sys, callers, keys).await;
                if ran != keys as u64 {
                    let why = if ran == u64::MAX {
                        "wrong values".to_owned()
                    } else {
                        format!("{ran} body runs for {callers} callers of {keys} key(s)")
                    };
                    failed.entry((sys, case.clone())).or_insert(why);
                }
                let s = sorted(lat);
                let max = s.last().copied().unwrap_or(f64::NAN);
                res.push(W, &case, sys, "body runs", "runs", ran as f64, None);
                res.push(W, &case, sys, "max - body", "ms", max - body_ms, None);
                res.push(
                    W,
                    &case,
                    sys,
                    "p50 - body",
                    "ms",
                    pct(&s, 50.0) - body_ms,
                    None,
                );
            }
        }
    }
    for ((sys, case), why) in &failed {
        // Keep the run counts (they are the finding); drop the timings.
        for r in res.recs.iter_mut().filter(|r| {
            r.workload == W && r.system == sys.name() && &r.case == case && r.metric != "body runs"
        }) {
            r.samples.clear();
            r.status = Status::Failed(why.clone());
        }
    }
    for sys in W3_SYS {
        let pts = plan
            .w3_callers
            .iter()
            .filter_map(|&n| {
                let r = res.find(W, &format!("1 key x {n} callers"), sys.name(), "max - body")?;
                Some((n as f64, r.median()?))
            })
            .collect::<Vec<_>>();
        if !pts.is_empty() {
            growth.push((sys.name().to_owned(), pts));
        }
    }
}

async fn w3b(w: &Arc<World>, plan: &Plan, res: &mut Results) {
    const W: &str = "W3b";
    const HIT_KEYS: u64 = 256;
    res.mark(
        W,
        "",
        Sys::MokaSync,
        Status::Na("no async stampede (see W3)".into()),
    );
    let hit_base = W3_BASE;
    let ids: Vec<u64> = (0..HIT_KEYS).map(|i| hit_base + i).collect();
    let mut ok = Vec::new();
    for sys in W3_SYS {
        if sys == Sys::RedisRaw {
            res.mark(
                W,
                "",
                sys,
                Status::Na("no in-process tier: every call is a Redis GET".into()),
            );
            continue;
        }
        match prefill(w, sys, Space::W3, ids.clone(), HIT_KEYS as usize).await {
            Ok(()) => ok.push(sys),
            Err(why) => res.mark(W, "", sys, Status::Failed(why)),
        }
    }
    let case = "1000 callers + 256-key hitter";
    for rep in 0..plan.reps {
        for k in 0..ok.len() {
            let sys = ok[(k + rep) % ok.len()];
            let stop = Arc::new(AtomicBool::new(false));
            let hitter = {
                let (w, stop) = (Arc::clone(w), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(1 << 16);
                    let mut wrong = 0u64;
                    let mut i = 0u64;
                    let give_up = Instant::now() + Duration::from_secs(10);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                        let id = hit_base + i % HIT_KEYS;
                        let t0 = Instant::now();
                        let v = call(&w, sys, Space::W3, id).await;
                        lat.push(ns(t0.elapsed()));
                        wrong += u64::from(v.id != id);
                        i += 1;
                        if i.is_multiple_of(64) {
                            // Outside the timed calls: a hit never returns Pending, so let the
                            // worker run the stampede's tasks too.
                            tokio::task::yield_now().await;
                        }
                    }
                    (lat, wrong)
                })
            };
            tokio::task::yield_now().await;
            let before = w.body_runs(sys);
            let (ran_st, _) = stampede(w, sys, 1000, 1).await;
            stop.store(true, Ordering::Relaxed);
            let (lat, wrong) = hitter.await.expect("hitter");
            let ran = w.body_runs(sys) - before;
            if wrong > 0 || ran != 1 || ran_st != 1 {
                res.mark(
                    W,
                    "",
                    sys,
                    Status::Failed(format!(
                        "{ran} body runs (expected 1), {wrong} wrong values"
                    )),
                );
                continue;
            }
            let over = lat.iter().filter(|&&l| l > 1e6).count() as f64;
            let s = sorted(lat);
            res.push(W, case, sys, "hit p99", "ns", pct(&s, 99.0), None);
            res.push(W, case, sys, "hits > 1 ms", "calls", over, None);
            res.push(W, case, sys, "hits", "calls", s.len() as f64, None);
        }
    }
}

// =============================================================================================
// W4 / W4b / W4c: invalidation
// =============================================================================================

async fn wait_until<F: FnMut() -> bool>(mut f: F, within: Duration) -> bool {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > within {
            return false;
        }
        tokio::task::yield_now().await;
    }
    true
}

fn mtc_key(id: u64) -> String {
    format!("coh:{id}")
}

async fn mtc_coh(m: &multi_tier_cache::CacheManager, id: u64) -> User {
    m.get_or_compute_typed(
        &mtc_key(id),
        multi_tier_cache::CacheStrategy::LongTerm,
        || async move { Ok(coh_body(id).await) },
    )
    .await
    .expect("multi-tier-cache get_or_compute_typed")
}

async fn mtc_has(l1: &MtcL1, id: u64) -> bool {
    multi_tier_cache::CacheBackend::get(&**l1, &mtc_key(id))
        .await
        .is_some()
}

/// One propagation trial of `sys`; `Err` on a timeout or a refused invalidation.
async fn w4_trial(w: &World, sys: Sys, id: u64, raw: &mut RawBus) -> Result<Duration, String> {
    match sys {
        Sys::TieredScoped => {
            let v = w.coh_b.scope(memo::t_coh(id)).await;
            if v.id != id {
                return Err("wrong value".into());
            }
            let before = w.coh_b.stats().total.invalidations_received;
            let t0 = Instant::now();
            w.coh_a
                .scope(memo::invalidate_t_coh(id))
                .await
                .map_err(|e| format!("invalidate: {e}"))?;
            let b = &w.coh_b;
            if !wait_until(
                || b.stats().total.invalidations_received != before,
                Duration::from_secs(2),
            )
            .await
            {
                return Err("B did not apply an invalidation within 2 s".into());
            }
            Ok(t0.elapsed())
        }
        Sys::Mtc => {
            mtc_coh(&w.mtc_b, id).await;
            if !mtc_has(&w.mtc_b_l1, id).await {
                return Err("B's L1 does not hold the key after a read".into());
            }
            let t0 = Instant::now();
            w.mtc_a
                .invalidate(&mtc_key(id))
                .await
                .map_err(|e| format!("invalidate: {e}"))?;
            while mtc_has(&w.mtc_b_l1, id).await {
                if t0.elapsed() > Duration::from_secs(2) {
                    return Err("B did not apply an invalidation within 2 s".into());
                }
                tokio::task::yield_now().await;
            }
            Ok(t0.elapsed())
        }
        _ => raw.round_trip().await,
    }
}

/// A raw `PUBLISH` → subscriber pair on a channel of its own. The subscriber is a task that
/// records the last number it received, and the publisher polls that number exactly as the
/// other systems' trials poll their receiver (so every row pays the same polling cost).
struct RawBus {
    publisher: MultiplexedConnection,
    received: Arc<AtomicU64>,
    n: u64,
    task: tokio::task::JoinHandle<()>,
}

impl RawBus {
    async fn new(url: &str) -> RawBus {
        let client = redis::Client::open(url).expect("client");
        let publisher = client
            .get_multiplexed_async_connection()
            .await
            .expect("publisher");
        let mut sub = client.get_async_pubsub().await.expect("subscriber");
        sub.subscribe("raw-propagation").await.expect("subscribe");
        let received = Arc::new(AtomicU64::new(0));
        let task = {
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(sub.into_on_message());
                while let Some(msg) =
                    std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx))
                        .await
                {
                    if let Ok(n) = msg.get_payload::<u64>() {
                        received.store(n, Ordering::Release);
                    }
                }
            })
        };
        RawBus {
            publisher,
            received,
            n: 0,
            task,
        }
    }

    async fn publish(&mut self) -> Result<(), String> {
        self.n += 1;
        let _: i64 = redis::cmd("PUBLISH")
            .arg("raw-propagation")
            .arg(self.n)
            .query_async(&mut self.publisher)
            .await
            .map_err(|e| format!("PUBLISH: {e}"))?;
        Ok(())
    }

    async fn round_trip(&mut self) -> Result<Duration, String> {
        let t0 = Instant::now();
        self.publish().await?;
        let (received, n) = (&self.received, self.n);
        if wait_until(
            || received.load(Ordering::Acquire) >= n,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(t0.elapsed())
        } else {
            Err("no message within 2 s".into())
        }
    }
}

impl Drop for RawBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn w4(w: &Arc<World>, plan: &Plan, res: &mut Results) {
    const W: &str = "W4";
    let systems = [Sys::TieredScoped, Sys::Mtc, Sys::RedisRaw];
    for sys in [Sys::MokaFuture, Sys::MokaSync, Sys::Composed, Sys::Cached] {
        res.mark(W, "", sys, Status::Na("no invalidation bus".into()));
    }
    let mut raw = RawBus::new(&w.url).await;
    let per_rep = (plan.w4_trials / plan.reps).max(1);
    let case = "A invalidates, B applies";
    let mut failed: BTreeMap<Sys, String> = BTreeMap::new();
    for rep in 0..plan.reps {
        for k in 0..systems.len() {
            let sys = systems[(k + rep) % systems.len()];
            if failed.contains_key(&sys) {
                continue;
            }
            let mut lat = Vec::with_capacity(per_rep);
            for t in 0..per_rep {
                match w4_trial(w, sys, W4_BASE + (t % 16) as u64, &mut raw).await {
                    Ok(d) => lat.push(ns(d) / 1e3),
                    Err(why) => {
                        failed.insert(sys, why);
                        break;
                    }
                }
            }
            if failed.contains_key(&sys) {
                continue;
            }
            let s = sorted(lat);
            let base = Some(Sys::RedisRaw);
            res.push(W, case, sys, "p50", "us", pct(&s, 50.0), base);
            res.push(W, case, sys, "p99", "us", pct(&s, 99.0), base);
            res.push(
                W,
                case,
                sys,
                "max",
                "us",
                s.last().copied().unwrap_or(f64::NAN),
                base,
            );
        }
    }
    // Commands and reads per invalidation, without B's reads in between.
    const N: usize = 50;
    for sys in systems {
        if let Some(why) = failed.get(&sys) {
            res.mark(W, "", sys, Status::Failed(why.clone()));
            continue;
        }
        let before = server_counts(&w.info).await;
        for i in 0..N as u64 {
            let id = W4_BASE + 100 + i;
            let r = match sys {
                Sys::TieredScoped => w
                    .coh_a
                    .scope(memo::invalidate_t_coh(id))
                    .await
                    .map_err(|e| e.to_string()),
                Sys::Mtc => w
                    .mtc_a
                    .invalidate(&mtc_key(id))
                    .await
                    .map_err(|e| e.to_string()),
                _ => raw.publish().await,
            };
            if let Err(e) = r {
                res.mark(W, "", sys, Status::Failed(format!("invalidate: {e}")));
                break;
            }
        }
        let after = server_counts(&w.info).await;
        let (cmds, reads) = per_op(before, after, N);
        res.push(W, case, sys, "commands/invalidation", "cmds", cmds, None);
        res.push(W, case, sys, "reads/invalidation", "reads", reads, None);
    }
}

/// W4t: another program's `DEL` of a key that B (client tracking on) holds in L1, until B
/// evicted it (its `tracking_evictions` moved, polled as W4 polls), against a raw RESP3
/// connection with `CLIENT TRACKING ON BCAST` receiving the same kind of push. Each trial puts
/// the value back with a `SET` (waiting for its push), lets B read it from Redis into L1 (a
/// read writes nothing, so no push is pending), then times the `DEL`.
async fn w4t(w: &Arc<World>, plan: &Plan, res: &mut Results) {
    const W: &str = "W4t";
    let case = "another program's DEL, B evicts";
    for sys in ALL_SYS {
        if !matches!(sys, Sys::TieredScoped | Sys::RedisRaw) {
            res.mark(W, "", sys, Status::Na("no client tracking".into()));
        }
    }
    let trials = (plan.w4_trials / plan.reps).max(1);
    let b = &w.trk_b;
    let mut conn = w.conn.clone();
    let id = W4_BASE + 5_000;
    let key = format!("trk:coh:<{id}>");
    // The value's bytes, as B's own fill wrote them.
    let _ = b.scope(memo::t_coh(id)).await;
    let bytes: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .ok()
        .flatten();
    let Some(bytes) = bytes else {
        res.mark(
            W,
            "",
            Sys::TieredScoped,
            Status::Failed("no value in Redis".into()),
        );
        return;
    };
    let raw = match RawTracking::new(&w.url).await {
        Ok(r) => Some(r),
        Err(e) => {
            res.mark(W, "", Sys::RedisRaw, Status::Failed(e));
            None
        }
    };
    let evictions = || b.stats().total.tracking_evictions;
    for _ in 0..plan.reps {
        let mut lat = Vec::with_capacity(trials);
        for _ in 0..trials {
            let e = evictions();
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(&bytes)
                .query_async(&mut conn)
                .await
                .expect("SET");
            if !wait_until(|| evictions() > e, Duration::from_secs(2)).await {
                res.mark(
                    W,
                    "",
                    Sys::TieredScoped,
                    Status::Failed("no push for a SET within 2 s".into()),
                );
                return;
            }
            let hits = b.stats().total.l1_hits;
            loop {
                let _ = b.scope(memo::t_coh(id)).await;
                if b.stats().total.l1_hits > hits {
                    break;
                }
            }
            let e = evictions();
            let t0 = Instant::now();
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("DEL");
            if !wait_until(|| evictions() > e, Duration::from_secs(2)).await {
                res.mark(
                    W,
                    "",
                    Sys::TieredScoped,
                    Status::Failed("no eviction within 2 s".into()),
                );
                return;
            }
            lat.push(ns(t0.elapsed()) / 1e3);
        }
        let s = sorted(lat);
        let base = raw.as_ref().map(|_| Sys::RedisRaw);
        res.push(W, case, Sys::TieredScoped, "p50", "us", pct(&s, 50.0), base);
        res.push(W, case, Sys::TieredScoped, "p99", "us", pct(&s, 99.0), base);
        if let Some(raw) = &raw {
            let mut lat = Vec::with_capacity(trials);
            for _ in 0..trials {
                match raw.round_trip(&mut conn).await {
                    Ok(d) => lat.push(ns(d) / 1e3),
                    Err(e) => {
                        res.mark(W, "", Sys::RedisRaw, Status::Failed(e));
                        break;
                    }
                }
            }
            let s = sorted(lat);
            res.push(W, case, Sys::RedisRaw, "p50", "us", pct(&s, 50.0), base);
            res.push(W, case, Sys::RedisRaw, "p99", "us", pct(&s, 99.0), base);
        }
    }
}

/// A raw RESP3 connection with `CLIENT TRACKING ON BCAST PREFIX rawtrk:`, counting the
/// invalidation pushes it receives (what a user would write by hand to hear writes).
struct RawTracking {
    _conn: MultiplexedConnection,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RawTracking {
    async fn new(url: &str) -> Result<RawTracking, String> {
        let info = redis::Client::open(url)
            .map_err(|e| e.to_string())?
            .get_connection_info()
            .clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(settings)).map_err(|e| e.to_string())?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
        let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let _: () = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg("rawtrk:")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let received = Arc::new(AtomicU64::new(0));
        let task = {
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                while let Some(push) = rx.recv().await {
                    if push.kind == redis::PushKind::Invalidate {
                        received.fetch_add(1, Ordering::AcqRel);
                    }
                }
            })
        };
        Ok(RawTracking {
            _conn: conn,
            received,
            task,
        })
    }

    /// `SET` (waits for its push), then times a `DEL` until its push arrived.
    async fn round_trip(&self, conn: &mut MultiplexedConnection) -> Result<Duration, String> {
        let n = self.received.load(Ordering::Acquire);
        let _: () = redis::cmd("SET")
            .arg("rawtrk:x")
            .arg("v")
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        let received = &self.received;
        if !wait_until(
            || received.load(Ordering::Acquire) > n,
            Duration::from_secs(2),
        )
        .await
        {
            return Err("no push for a SET within 2 s".into());
        }
        let n = received.load(Ordering::Acquire);
        let t0 = Instant::now();
        let _: i64 = redis::cmd("DEL")
            .arg("rawtrk:x")
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        if wait_until(
            || received.load(Ordering::Acquire) > n,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(t0.elapsed())
        } else {
            Err("no push for a DEL within 2 s".into())
        }
    }
}

impl Drop for RawTracking {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// W4b, one trial: `Ok(true)` when the invalidation was lost.
async fn w4b_trial(w: &World, sys: Sys) -> Result<bool, String> {
    let id = fresh(&NEXT_W4, 1);
    db_set(id, 0);
    COH_DELAY_MS.store(0, Ordering::SeqCst);
    match sys {
        Sys::TieredScoped => {
            w.coh_a.scope(memo::t_coh(id)).await; // Redis holds version 0
            let b = tiered::Runtime::builder()
                .namespace("coh")
                .redis_url(w.url.as_str())
                .build()
                .await
                .map_err(|e| format!("build: {e}"))?;
            let v = b.scope(memo::t_coh(id)).await; // L2 hit, promoted into B's L1
            db_set(id, 1);
            w.coh_a
                .scope(memo::invalidate_t_coh(id))
                .await
                .map_err(|e| format!("invalidate: {e}"))?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let after = b.scope(memo::t_coh(id)).await;
            drop(b);
            if version_of(&v) != 0 {
                return Err("B did not read the old value first".into());
            }
            Ok(version_of(&after) == 0)
        }
        _ => {
            mtc_coh(&w.mtc_a, id).await;
            let (b, b_l1) = mtc_instance(&w.url, "mtc:coh").await;
            let v = mtc_coh(&b, id).await;
            if !mtc_has(&b_l1, id).await || version_of(&v) != 0 {
                return Err("B did not hold the old value in L1".into());
            }
            db_set(id, 1);
            w.mtc_a
                .invalidate(&mtc_key(id))
                .await
                .map_err(|e| format!("invalidate: {e}"))?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let after = mtc_coh(&b, id).await;
            drop(b);
            Ok(version_of(&after) == 0)
        }
    }
}

/// W4c, one trial: (B serves the old value afterwards, A reads the old value through Redis).
async fn w4c_trial(w: &World, sys: Sys) -> Result<(bool, bool), String> {
    let id = fresh(&NEXT_W4, 1);
    db_set(id, 0);
    let started = COH_STARTED.load(Ordering::SeqCst);
    COH_DELAY_MS.store(20, Ordering::SeqCst);
    let first = match sys {
        Sys::TieredScoped => {
            let b = w.coh_b.clone();
            tokio::spawn(async move { b.scope(memo::t_coh(id)).await })
        }
        _ => {
            let b = Arc::clone(&w.mtc_b);
            tokio::spawn(async move { mtc_coh(&b, id).await })
        }
    };
    let body_running = wait_until(
        || COH_STARTED.load(Ordering::SeqCst) > started,
        Duration::from_secs(1),
    )
    .await;
    COH_DELAY_MS.store(0, Ordering::SeqCst);
    if !body_running {
        return Err("B's body did not start".into());
    }
    db_set(id, 1);
    match sys {
        Sys::TieredScoped => {
            let before = w.coh_b.stats().total.invalidations_received;
            w.coh_a
                .scope(memo::invalidate_t_coh(id))
                .await
                .map_err(|e| format!("invalidate: {e}"))?;
            let b = &w.coh_b;
            wait_until(
                || b.stats().total.invalidations_received != before,
                Duration::from_secs(1),
            )
            .await;
        }
        _ => {
            let before = w
                .mtc_b
                .invalidation_stats()
                .map_or(0, |s| s.messages_received);
            w.mtc_a
                .invalidate(&mtc_key(id))
                .await
                .map_err(|e| format!("invalidate: {e}"))?;
            let b = &w.mtc_b;
            wait_until(
                || b.invalidation_stats().map_or(0, |s| s.messages_received) != before,
                Duration::from_secs(1),
            )
            .await;
        }
    }
    let old = first.await.map_err(|e| format!("B's call: {e}"))?;
    if version_of(&old) != 0 {
        return Err("B's in-flight call did not read the old data".into());
    }
    let (b_next, a_next) = match sys {
        Sys::TieredScoped => (
            w.coh_b.scope(memo::t_coh(id)).await,
            w.coh_a.scope(memo::t_coh(id)).await,
        ),
        _ => (mtc_coh(&w.mtc_b, id).await, mtc_coh(&w.mtc_a, id).await),
    };
    Ok((version_of(&b_next) == 0, version_of(&a_next) == 0))
}

async fn w4bc(w: &Arc<World>, plan: &Plan, res: &mut Results, which: &'static str) {
    let systems = [Sys::TieredScoped, Sys::Mtc];
    for sys in [
        Sys::MokaFuture,
        Sys::MokaSync,
        Sys::RedisRaw,
        Sys::Composed,
        Sys::Cached,
    ] {
        res.mark(which, "", sys, Status::Na("no invalidation bus".into()));
    }
    let n = plan.w4b_trials;
    let case = format!("{n} trials");
    let mut counts: BTreeMap<Sys, (f64, f64)> = BTreeMap::new();
    let mut failed: BTreeMap<Sys, String> = BTreeMap::new();
    // Interleaved trial by trial.
    for t in 0..n {
        for k in 0..systems.len() {
            let sys = systems[(k + t) % systems.len()];
            if failed.contains_key(&sys) {
                continue;
            }
            let r = if which == "W4b" {
                w4b_trial(w, sys).await.map(|lost| (lost, false))
            } else {
                w4c_trial(w, sys).await
            };
            match r {
                Ok((a, b)) => {
                    let c = counts.entry(sys).or_default();
                    c.0 += f64::from(u8::from(a));
                    c.1 += f64::from(u8::from(b));
                }
                Err(why) => {
                    failed.insert(sys, why);
                }
            }
        }
    }
    for sys in systems {
        if let Some(why) = failed.get(&sys) {
            res.mark(which, "", sys, Status::Failed(why.clone()));
            continue;
        }
        let (a, b) = counts.get(&sys).copied().unwrap_or_default();
        if which == "W4b" {
            res.push(which, &case, sys, "lost", "trials", a, None);
        } else {
            res.push(which, &case, sys, "stale in B", "trials", a, None);
            res.push(which, &case, sys, "stale via Redis", "trials", b, None);
        }
    }
}

// =============================================================================================
// W5: miss
// =============================================================================================

const W5_SYS: [Sys; 6] = [
    Sys::TieredScoped,
    Sys::TieredInstalled,
    Sys::RedisRaw,
    Sys::Composed,
    Sys::Mtc,
    Sys::Cached,
];

async fn w5(w: &Arc<World>, plan: &Plan, res: &mut Results, pool: &mut Pool) {
    const W: &str = "W5";
    for sys in [Sys::MokaFuture, Sys::MokaSync] {
        res.mark(
            W,
            "",
            sys,
            Status::Na("no L2 (a miss is only the body)".into()),
        );
    }
    let case = "distinct keys, c=1";
    let m = plan.w5_calls;
    let mut failed: BTreeMap<Sys, String> = BTreeMap::new();
    for rep in 0..plan.reps {
        for k in 0..W5_SYS.len() {
            let sys = W5_SYS[(k + rep) % W5_SYS.len()];
            if failed.contains_key(&sys) {
                continue;
            }
            let base = fresh(&NEXT_W5, m as u64);
            let ran0 = w.body_runs(sys);
            let before = server_counts(&w.info).await;
            let start = Instant::now();
            let mut lat = Vec::with_capacity(m);
            let mut wrong = 0;
            for id in base..base + m as u64 {
                let t0 = Instant::now();
                let v = call(w, sys, Space::W5, id).await;
                lat.push(ns(t0.elapsed()));
                wrong += u64::from(v != user(id));
            }
            let wall = start.elapsed();
            let after = server_counts(&w.info).await;
            let ran = w.body_runs(sys) - ran0;
            if ran != m as u64 || wrong > 0 {
                failed.insert(
                    sys,
                    format!("{ran} body runs for {m} misses, {wrong} wrong values"),
                );
                continue;
            }
            let (cmds, reads) = per_op(before, after, m);
            let s = sorted(lat);
            let base_sys = Some(Sys::RedisRaw);
            res.push(W, case, sys, "p50", "ns", pct(&s, 50.0), base_sys);
            res.push(
                W,
                case,
                sys,
                "ops/s",
                "ops/s",
                m as f64 / wall.as_secs_f64(),
                base_sys,
            );
            res.push(W, case, sys, "commands/miss", "cmds", cmds, None);
            res.push(W, case, sys, "reads/miss", "reads", reads, None);
            pool.entry(sys.name()).or_default().extend(s);
        }
    }
    for (sys, why) in failed {
        res.mark(W, "", sys, Status::Failed(why));
    }
}

// =============================================================================================
// W6: memory per L1 entry (child processes)
// =============================================================================================

const W6_SYS: [Sys; 5] = [
    Sys::TieredScoped,
    Sys::MokaFuture,
    Sys::MokaSync,
    Sys::Mtc,
    Sys::Cached,
];

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The child side: fills `sys`'s L1 with `n` entries and prints one `W6 {json}` line.
fn w6_child(sys: Sys, n: u64) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let cap = n * 2;
    rt.block_on(async move {
        let hwm0 = vm_hwm_kib();
        let check: Result<(), String>;
        let net;
        match sys {
            Sys::TieredScoped => {
                let t = tiered::Runtime::builder()
                    .namespace("mem")
                    .l1_max_entries(cap)
                    .build()
                    .await
                    .map_err(|e| e.to_string())?;
                COUNTING.store(true, Ordering::SeqCst);
                t.scope(async {
                    for id in 0..n {
                        black_box(memo::t_mem(id).await);
                    }
                })
                .await;
                COUNTING.store(false, Ordering::SeqCst);
                net = NET_BYTES.load(Ordering::SeqCst);
                t.scope(async {
                    for id in 0..n {
                        black_box(memo::t_mem(id).await);
                    }
                })
                .await;
                let c = t.stats().total.computations;
                check = if c == n {
                    Ok(())
                } else {
                    Err(format!("{c} computations for {n} keys read twice"))
                };
            }
            Sys::MokaFuture => {
                let c: moka::future::Cache<u64, User> =
                    moka::future::Cache::builder().max_capacity(cap).build();
                COUNTING.store(true, Ordering::SeqCst);
                for id in 0..n {
                    c.insert(id, user(id)).await;
                }
                c.run_pending_tasks().await;
                COUNTING.store(false, Ordering::SeqCst);
                net = NET_BYTES.load(Ordering::SeqCst);
                let e = c.entry_count();
                check = if e == n {
                    Ok(())
                } else {
                    Err(format!("{e} entries"))
                };
            }
            Sys::MokaSync => {
                let c: moka::sync::Cache<u64, User> =
                    moka::sync::Cache::builder().max_capacity(cap).build();
                COUNTING.store(true, Ordering::SeqCst);
                for id in 0..n {
                    c.insert(id, user(id));
                }
                c.run_pending_tasks();
                COUNTING.store(false, Ordering::SeqCst);
                net = NET_BYTES.load(Ordering::SeqCst);
                let e = c.entry_count();
                check = if e == n {
                    Ok(())
                } else {
                    Err(format!("{e} entries"))
                };
            }
            Sys::Mtc => {
                use multi_tier_cache::{CacheBackend, CacheSerializer, MokaCache, MokaCacheConfig};
                let ser =
                    CacheSerializer::MsgPack(multi_tier_cache::serialization::MsgPackSerializer);
                let c = MokaCache::new(MokaCacheConfig {
                    max_capacity: cap,
                    ..MokaCacheConfig::default()
                })
                .map_err(|e| e.to_string())?;
                let ttl = multi_tier_cache::CacheStrategy::LongTerm.to_duration();
                COUNTING.store(true, Ordering::SeqCst);
                for id in 0..n {
                    let bytes = ser.serialize(&user(id)).map_err(|e| e.to_string())?;
                    c.set_with_ttl(&format!("mtc:{id}"), bytes, ttl)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                COUNTING.store(false, Ordering::SeqCst);
                net = NET_BYTES.load(Ordering::SeqCst);
                let probe = CacheBackend::get(&c, &format!("mtc:{}", n - 1)).await;
                check = if probe.is_some() {
                    Ok(())
                } else {
                    Err("last entry missing".into())
                };
            }
            _ => {
                use cached::Cached;
                let mut c: cached::LruTtlCache<u64, User> = cached::LruTtlCache::builder()
                    .max_size(cap as usize)
                    .ttl(Duration::from_secs(10_800))
                    .build()
                    .map_err(|e| format!("{e:?}"))?;
                COUNTING.store(true, Ordering::SeqCst);
                for id in 0..n {
                    c.cache_set(id, user(id));
                }
                COUNTING.store(false, Ordering::SeqCst);
                net = NET_BYTES.load(Ordering::SeqCst);
                let e = c.cache_size() as u64;
                check = if e == n {
                    Ok(())
                } else {
                    Err(format!("{e} entries"))
                };
            }
        }
        let hwm1 = vm_hwm_kib();
        let line = match check {
            Ok(()) => serde_json::json!({
                "bytes_per_entry": net as f64 / n as f64,
                "hwm_kib": hwm1,
                "hwm_delta_bytes_per_entry": (hwm1.saturating_sub(hwm0) * 1024) as f64 / n as f64,
            }),
            Err(why) => serde_json::json!({ "failed": why }),
        };
        println!("W6 {line}");
        Ok(())
    })
}

async fn w6(plan: &Plan, res: &mut Results, curve: &mut Vec<(String, Vec<(f64, f64)>)>) {
    const W: &str = "W6";
    for sys in [
        Sys::TieredInstalled,
        Sys::MokaFutureFh,
        Sys::MokaSyncFh,
        Sys::RedisRaw,
        Sys::Composed,
    ] {
        let why = match sys {
            Sys::TieredInstalled => {
                "same L1 as tiered-scoped (row tiered-scoped: an L1-only runtime, tiers = \"l1\")"
            }
            Sys::RedisRaw => "no in-process tier",
            Sys::Composed => "its L1 is moka-future",
            _ => "same layout as without foldhash",
        };
        res.mark(W, "", sys, Status::Na(why.into()));
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            for sys in W6_SYS {
                res.mark(W, "", sys, Status::Failed(format!("current_exe: {e}")));
            }
            return;
        }
    };
    let mut failed: BTreeMap<Sys, String> = BTreeMap::new();
    for rep in 0..plan.reps {
        for &n in &plan.w6_entries {
            let case = format!("{n} entries");
            for k in 0..W6_SYS.len() {
                let sys = W6_SYS[(k + rep) % W6_SYS.len()];
                if failed.contains_key(&sys) {
                    continue;
                }
                let out = tokio::task::spawn_blocking({
                    let exe = exe.clone();
                    move || {
                        Command::new(exe)
                            .args(["--w6-child", sys.name(), &n.to_string()])
                            .stderr(Stdio::inherit())
                            .output()
                    }
                })
                .await;
                let parsed = match out {
                    Ok(Ok(o)) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .find_map(|l| l.strip_prefix("W6 "))
                        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                        .ok_or_else(|| "child printed no result".to_owned()),
                    Ok(Ok(o)) => Err(format!("child exited with {}", o.status)),
                    Ok(Err(e)) => Err(format!("cannot run child: {e}")),
                    Err(e) => Err(format!("child task: {e}")),
                };
                let v = match parsed {
                    Ok(v) => v,
                    Err(why) => {
                        failed.insert(sys, why);
                        continue;
                    }
                };
                if let Some(why) = v.get("failed").and_then(|f| f.as_str()) {
                    failed.insert(sys, why.to_owned());
                    continue;
                }
                let get = |k: &str| {
                    v.get(k)
                        .and_then(serde_json::Value::as_f64)
                        .unwrap_or(f64::NAN)
                };
                let base = Some(Sys::MokaSync);
                res.push(
                    W,
                    &case,
                    sys,
                    "bytes/entry",
                    "B",
                    get("bytes_per_entry"),
                    base,
                );
                res.push(
                    W,
                    &case,
                    sys,
                    "peak RSS delta/entry",
                    "B",
                    get("hwm_delta_bytes_per_entry"),
                    base,
                );
                res.push(W, &case, sys, "peak RSS", "KiB", get("hwm_kib"), None);
            }
        }
    }
    for sys in W6_SYS {
        if let Some(why) = failed.get(&sys) {
            res.mark(W, "", sys, Status::Failed(why.clone()));
            continue;
        }
        let pts = plan
            .w6_entries
            .iter()
            .filter_map(|&n| {
                let r = res.find(W, &format!("{n} entries"), sys.name(), "bytes/entry")?;
                Some((n as f64, r.median()?))
            })
            .collect();
        curve.push((sys.name().to_owned(), pts));
    }
}

// =============================================================================================
// Targets
// =============================================================================================

struct Target {
    what: String,
    measured: Option<f64>,
    bound: Option<f64>,
    /// `true`: measured ≤ bound.
    at_most: bool,
    note: String,
}

fn targets(res: &Results) -> Vec<Target> {
    let med = |w: &str, c: &str, s: Sys, m: &str| -> Option<f64> {
        res.find(w, c, s.name(), m)
            .filter(|r| matches!(r.status, Status::Ok))
            .and_then(Rec::median)
    };
    let mut t = Vec::new();
    let mut rel =
        |what: String, m: Option<f64>, b: Option<f64>, factor: f64, at_most: bool, base: &str| {
            t.push(Target {
                what,
                measured: m,
                bound: b.map(|b| b * factor),
                at_most,
                note: format!("{factor}x {base}"),
            });
        };
    for sys in [Sys::TieredInstalled, Sys::TieredScoped] {
        for keys in ["1 keys", "10000 keys"] {
            let c = format!("{keys}, 1 task");
            rel(
                format!("W1 {} L1 hit p50, {c}", sys.name()),
                med("W1", &c, sys, "p50"),
                med("W1", &c, Sys::MokaFuture, "p50"),
                1.1,
                true,
                "moka-future p50",
            );
            let c2 = format!("{keys}, 2 tasks");
            rel(
                format!("W1 {} L1 hits/s, {c2}", sys.name()),
                med("W1", &c2, sys, "ops/s"),
                med("W1", &c2, Sys::MokaFuture, "ops/s"),
                0.9,
                false,
                "moka-future ops/s",
            );
        }
    }
    rel(
        "W2 tiered-l2-promote-off p50, c=1".into(),
        med("W2", "c=1", Sys::TieredL2Off, "p50"),
        med("W2", "c=1", Sys::RedisRaw, "p50"),
        1.1,
        true,
        "GET+decode p50",
    );
    rel(
        "W2 tiered-l2-promote-off ops/s, c=256".into(),
        med("W2", "c=256", Sys::TieredL2Off, "ops/s"),
        med("W2", "c=256", Sys::RedisRaw, "ops/s"),
        0.8,
        false,
        "GET+decode ops/s",
    );
    rel(
        "W2 tiered-l2-promote-1 ops/s, c=256".into(),
        med("W2", "c=256", Sys::TieredL2On, "ops/s"),
        med("W2", "c=256", Sys::Composed, "ops/s"),
        1.0,
        false,
        "GET+decode+Moka insert ops/s",
    );
    for sys in [Sys::TieredL2Off, Sys::TieredL2On] {
        for c in ["c=1", "c=16", "c=256"] {
            rel(
                format!("W2 {} commands per L2 hit, {c}", sys.name()),
                med("W2", c, sys, "commands/hit"),
                Some(1.0),
                1.05,
                true,
                "1 command (+5% background: beacons, pings)",
            );
        }
    }
    rel(
        "W5 tiered-scoped miss p50".into(),
        med("W5", "distinct keys, c=1", Sys::TieredScoped, "p50"),
        med("W5", "distinct keys, c=1", Sys::RedisRaw, "p50"),
        1.15,
        true,
        "GET+SET PX p50",
    );
    let body_ms = BODY.as_secs_f64() * 1e3;
    rel(
        "W3 tiered-scoped body runs, 1000 callers".into(),
        med("W3", "1 key x 1000 callers", Sys::TieredScoped, "body runs"),
        Some(1.0),
        1.0,
        true,
        "1 run",
    );
    rel(
        "W3 tiered-scoped caller max, 1000 callers (ms over the body)".into(),
        med(
            "W3",
            "1 key x 1000 callers",
            Sys::TieredScoped,
            "max - body",
        ),
        Some(3.0),
        1.0,
        true,
        &format!("body ({body_ms} ms) + 3 ms"),
    );
    let c3 = "1000 callers + 256-key hitter";
    rel(
        "W3b tiered-scoped hit p99 during a stampede (ns)".into(),
        med("W3b", c3, Sys::TieredScoped, "hit p99"),
        Some(10_000.0),
        1.0,
        true,
        "10 us",
    );
    rel(
        "W3b tiered-scoped hits over 1 ms".into(),
        res.find("W3b", c3, Sys::TieredScoped.name(), "hits > 1 ms")
            .filter(|r| matches!(r.status, Status::Ok))
            .and_then(Rec::max),
        Some(0.0),
        1.0,
        true,
        "none (max over repeats)",
    );
    let c4 = "A invalidates, B applies";
    rel(
        "W4 tiered propagation p99".into(),
        med("W4", c4, Sys::TieredScoped, "p99"),
        med("W4", c4, Sys::RedisRaw, "p99"),
        1.2,
        true,
        "raw PUBLISH->receive p99",
    );
    rel(
        "W4 tiered round trips per invalidation".into(),
        med("W4", c4, Sys::TieredScoped, "reads/invalidation"),
        Some(1.0),
        1.1,
        true,
        "1 round trip (+10% background)",
    );
    for (w, m) in [
        ("W4b", "lost"),
        ("W4c", "stale in B"),
        ("W4c", "stale via Redis"),
    ] {
        let r = res
            .recs
            .iter()
            .find(|r| r.workload == w && r.system == Sys::TieredScoped.name() && r.metric == m);
        rel(
            format!("{w} tiered {m}"),
            r.filter(|r| matches!(r.status, Status::Ok))
                .and_then(Rec::median),
            Some(0.0),
            1.0,
            true,
            "0",
        );
    }
    for n in ["10000 entries", "100000 entries", "1000000 entries"] {
        if res
            .find("W6", n, Sys::TieredScoped.name(), "bytes/entry")
            .is_none()
        {
            continue;
        }
        rel(
            format!("W6 tiered bytes per L1 entry, {n}"),
            med("W6", n, Sys::TieredScoped, "bytes/entry"),
            med("W6", n, Sys::MokaSync, "bytes/entry"),
            1.05,
            true,
            "moka-sync bytes/entry",
        );
    }
    t
}

// =============================================================================================
// Report
// =============================================================================================

struct Machine {
    date: String,
    nproc: usize,
    cpu: String,
    redis: String,
    rustc: String,
}

fn command_line(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Machine {
    fn probe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let redis = command_line("redis-server", "--version");
        let redis = redis
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .map_or(redis.clone(), str::to_owned);
        Machine {
            date: utc_now(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            redis,
            rustc: command_line("rustc", "--version"),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no date crate needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}", v)
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn status_text(s: &Status) -> String {
    match s {
        Status::Ok => "ok".into(),
        Status::Na(why) => format!("n/a: {why}"),
        Status::Failed(why) => format!("failed: {why}"),
    }
}

const WORKLOADS: [(&str, &str); 13] = [
    (
        "W1",
        "L1 hit (batches of 64 timed; baseline moka-future get+clone)",
    ),
    (
        "W2",
        "L2 hit (baseline redis-raw GET+decode; promotion-on rows vs moka+redis)",
    ),
    ("W3", "stampede: cold key(s), 50 ms body"),
    (
        "W3b",
        "isolation: hits on 256 cached keys during a 1000-caller stampede",
    ),
    (
        "W4",
        "invalidation propagation A -> B (baseline raw PUBLISH -> receive)",
    ),
    (
        "W4t",
        "client tracking: another program's DEL -> B evicts (baseline raw CLIENT TRACKING push)",
    ),
    ("W4b", "invalidation right after B's build(): lost"),
    (
        "W4c",
        "invalidation during B's in-flight computation: stale",
    ),
    (
        "W5",
        "miss, body returns at once (baseline redis-raw GET + SET PX)",
    ),
    ("W6", "memory per L1 entry (baseline moka-sync)"),
    (
        "K2",
        "L2 hit on a Redis Cluster, promotion off (baseline redis-raw-cluster GET+decode; 1-server rows vs redis-raw)",
    ),
    (
        "K4",
        "invalidation propagation A -> B on a Redis Cluster, classic vs sharded (baselines raw PUBLISH / SPUBLISH -> receive); per-node cost",
    ),
    (
        "K5",
        "miss on a Redis Cluster, body returns at once (baseline redis-raw-cluster GET + SET PX)",
    ),
];

fn markdown(res: &Results, machine: &Machine, plan: &Plan, elapsed: Duration) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# tiered benchmark runner: results\n");
    let _ = writeln!(
        md,
        "{} plan, {} repeats (median, min-max over repeats); {}; {} CPUs ({}); redis-server {}; {}; run took {:.1} s{}.\n",
        if plan.quick { "quick" } else { "full" },
        plan.reps,
        machine.date,
        machine.nproc,
        machine.cpu,
        machine.redis,
        machine.rustc,
        elapsed.as_secs_f64(),
        if cfg!(debug_assertions) {
            "; DEBUG BUILD: numbers are meaningless"
        } else {
            ""
        },
    );
    for (w, title) in WORKLOADS {
        let rows: Vec<&Rec> = res.recs.iter().filter(|r| r.workload == w).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {w}: {title}\n");
        let _ = writeln!(
            md,
            "| case | system | metric | median | min-max | unit | ratio | status |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---:|---|---:|---|");
        let mut cases: Vec<&str> = Vec::new();
        for r in &rows {
            if !cases.contains(&r.case.as_str()) {
                cases.push(&r.case);
            }
        }
        for case in cases {
            for r in rows.iter().filter(|r| r.case == case) {
                let (med, range) = match (r.median(), r.min(), r.max()) {
                    (Some(m), Some(a), Some(b)) => {
                        (fmt_num(m), format!("{}-{}", fmt_num(a), fmt_num(b)))
                    }
                    _ => ("-".into(), "-".into()),
                };
                let ratio = match (res.ratio(r), r.baseline) {
                    (Some(x), Some(b)) if b != r.system => format!("{x:.2}x {b}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.case,
                    r.system,
                    r.metric,
                    med,
                    range,
                    r.unit,
                    ratio,
                    status_text(&r.status)
                );
            }
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | bound | ratio | result |");
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    for t in targets(res) {
        let (m, b) = (t.measured, t.bound);
        let verdict = match (m, b) {
            (Some(m), Some(b)) if (t.at_most && m <= b) || (!t.at_most && m >= b) => "met",
            (Some(_), Some(_)) => "MISSED",
            _ => "not measured",
        };
        let ratio = match (m, b) {
            (Some(m), Some(b)) if b != 0.0 => format!("{:.2}", m / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} {} ({}) | {} | {} |",
            t.what,
            m.map_or("-".into(), fmt_num),
            if t.at_most { "<=" } else { ">=" },
            b.map_or("-".into(), fmt_num),
            t.note,
            ratio,
            verdict
        );
    }
    md
}

fn jsonl(res: &Results, machine: &Machine, plan: &Plan) -> String {
    let mut out = String::new();
    for r in &res.recs {
        let v = serde_json::json!({
            "date": machine.date,
            "machine": {
                "nproc": machine.nproc,
                "cpu": machine.cpu,
                "redis_server": machine.redis,
                "rustc": machine.rustc,
            },
            "mode": if plan.quick { "quick" } else { "full" },
            "reps": plan.reps,
            "workload": r.workload,
            "case": r.case,
            "system": r.system,
            "metric": r.metric,
            "unit": r.unit,
            "median": r.median(),
            "min": r.min(),
            "max": r.max(),
            "samples": r.samples,
            "baseline": r.baseline,
            "ratio": res.ratio(r),
            "status": status_text(&r.status),
        });
        let _ = writeln!(out, "{v}");
    }
    out
}

// =============================================================================================
// Plots
// =============================================================================================

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn axis_label(v: f64, log: bool) -> String {
    let v = if log { 10f64.powf(v) } else { v };
    fmt_num(v)
}

fn line_chart(
    path: &Path,
    title: &str,
    (x_desc, log_x): (&str, bool),
    (y_desc, log_y): (&str, bool),
    series: &Series,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let tx = |v: f64| if log_x { v.max(1e-9).log10() } else { v };
    let ty = |v: f64| if log_y { v.max(1e-9).log10() } else { v };
    let pts: Series = series
        .iter()
        .map(|(n, p)| {
            (
                n.clone(),
                p.iter()
                    .map(|&(x, y)| (tx(x), ty(y)))
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect(),
            )
        })
        .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
        .collect();
    let all = || pts.iter().flat_map(|(_, p)| p.iter().copied());
    let (mut x0, mut x1) = all().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(x), b.max(x)));
    let (mut y0, mut y1) = all().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(y), b.max(y)));
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| {
        ((b - a).abs() * 0.05).max(if a.abs() > 0.0 { a.abs() * 0.05 } else { 0.5 })
    };
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (x0 - px)..(x1 + px),
            (if log_y { y0 - py } else { (y0 - py).min(0.0) })..(y1 + py),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| axis_label(*v, log_x))
        .y_label_formatter(&|v| axis_label(*v, log_y))
        .draw()?;
    for (i, (name, p)) in pts.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            p.iter()
                .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn percentile_series(pool: &Pool, scale: f64) -> Series {
    pool.iter()
        .map(|(name, samples)| {
            let s = sorted(samples.clone());
            (
                (*name).to_owned(),
                PLOT_PCTS.iter().map(|&p| (p, pct(&s, p) / scale)).collect(),
            )
        })
        .collect()
}

// =============================================================================================
// Main
// =============================================================================================

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--w6-child") {
        let sys = args.get(i + 1).and_then(|s| Sys::from_name(s));
        let n = args.get(i + 2).and_then(|s| s.parse::<u64>().ok());
        let (Some(sys), Some(n)) = (sys, n) else {
            eprintln!("usage: --w6-child SYSTEM ENTRIES");
            std::process::exit(2);
        };
        if let Err(e) = w6_child(sys, n) {
            println!("W6 {}", serde_json::json!({ "failed": e }));
        }
        return;
    }
    let plan = Plan::from_args(&args);
    let machine = Machine::probe();
    println!(
        "tiered bench runner: {} plan, {} repeats; {} CPUs ({}); redis-server {}; {}{}",
        if plan.quick { "quick" } else { "full" },
        plan.reps,
        machine.nproc,
        machine.cpu,
        machine.redis,
        machine.rustc,
        if cfg!(debug_assertions) {
            "; DEBUG BUILD: use `cargo bench`"
        } else {
            ""
        },
    );
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut res = Results::default();

    // K2 prints reference rows on the single server.
    let needs_redis = ["W1", "W2", "W3", "W3B", "W4", "W4T", "W4B", "W4C", "W5"]
        .iter()
        .any(|w| plan.runs(w))
        || plan.runs_k("K2");
    let server = if needs_redis {
        match RedisServer::start() {
            Ok(s) => Some(s),
            Err(why) => {
                println!("no private redis-server ({why}): the Redis workloads are n/a");
                for (w, _) in WORKLOADS {
                    if w == "W6" || w.starts_with('K') {
                        continue;
                    }
                    for sys in ALL_SYS {
                        res.mark(w, "", sys, Status::Na(format!("no redis-server: {why}")));
                    }
                }
                None
            }
        }
    } else {
        None
    };

    // Everything runs in a task on a worker thread (not on the thread blocked in `block_on`),
    // like the requests of a service.
    let url = server.as_ref().map(RedisServer::url);
    if let Some(server) = &server {
        println!(
            "private redis-server on 127.0.0.1:{} (killed at exit)",
            server.port
        );
    }
    let out = rt
        .block_on(rt.spawn(run_workloads(
            plan,
            url,
            Outcome {
                res,
                ..Outcome::default()
            },
        )))
        .expect("the workloads panicked");
    let Outcome {
        plan,
        res,
        lat1,
        lat2,
        lat5,
        growth,
        memory,
    } = out;
    let plan = plan.expect("the plan comes back");
    // Drop every runtime and connection while Tokio still runs, then the server.
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(server);

    let elapsed = started.elapsed();
    let md = markdown(&res, &machine, &plan, elapsed);
    println!("\n{md}");
    if let Err(e) = write_outputs(
        &plan,
        &res,
        &machine,
        &md,
        [&lat1, &lat2, &lat5],
        &growth,
        &memory,
    ) {
        eprintln!(
            "runner: could not write the outputs to {}: {e}",
            plan.out.display()
        );
        std::process::exit(1);
    }
    println!(
        "wrote {}/results.jsonl, results.md and *.svg; total {:.1} s",
        plan.out.display(),
        elapsed.as_secs_f64()
    );
}

#[derive(Default)]
struct Outcome {
    plan: Option<Plan>,
    res: Results,
    lat1: Pool,
    lat2: Pool,
    lat5: Pool,
    growth: Series,
    memory: Series,
}

async fn run_workloads(plan: Plan, url: Option<String>, mut o: Outcome) -> Outcome {
    let mut world = None;
    if let Some(url) = url {
        let _ = REDIS_URL.set(url.clone());
        let w = Arc::new(World::new(&url).await);
        world = Some(Arc::clone(&w));
        let size = rmp_serde::to_vec_named(&user(42)).map_or(0, |b| b.len());
        println!("value: {size} bytes as named MessagePack");
        let res = &mut o.res;
        if plan.runs("W1") {
            let t = Instant::now();
            w1(&w, &plan, res, &mut o.lat1).await;
            println!("W1 done in {:.1} s", t.elapsed().as_secs_f64());
        }
        if plan.runs("W2") {
            let t = Instant::now();
            w2(&w, &plan, res, &mut o.lat2).await;
            println!("W2 done in {:.1} s", t.elapsed().as_secs_f64());
        }
        if plan.runs("W3") {
            let t = Instant::now();
            w3(&w, &plan, res, &mut o.growth).await;
            println!("W3 done in {:.1} s", t.elapsed().as_secs_f64());
        }
        if plan.runs("W3b") {
            let t = Instant::now();
            w3b(&w, &plan, res).await;
            println!("W3b done in {:.1} s", t.elapsed().as_secs_f64());
        }
        if plan.runs("W4") {
            let t = Instant::now();
            w4(&w, &plan, res).await;
            println!("W4 done in {:.1} s", t.elapsed().as_secs_f64());
        }
        if plan.runs("W4t") {
            let t = Instant::now();
            w4t(&w, &plan, res).await;
            println!("W4t done in {:.1} s", t.elapsed().as_secs_f64());
        }
        for which in ["W4b", "W4c"] {
            if plan.runs(which) {
                let t = Instant::now();
                w4bc(&w, &plan, res, which).await;
                println!("{which} done in {:.1} s", t.elapsed().as_secs_f64());
            }
        }
        if plan.runs("W5") {
            let t = Instant::now();
            w5(&w, &plan, res, &mut o.lat5).await;
            println!("W5 done in {:.1} s", t.elapsed().as_secs_f64());
        }
    }
    cluster_workloads::run(world.as_ref(), &plan, &mut o.res).await;
    drop(world);
    if plan.runs("W6") {
        let t = Instant::now();
        w6(&plan, &mut o.res, &mut o.memory).await;
        println!("W6 done in {:.1} s", t.elapsed().as_secs_f64());
    }
    o.plan = Some(plan);
    o
}

fn write_outputs(
    plan: &Plan,
    res: &Results,
    machine: &Machine,
    md: &str,
    [lat1, lat2, lat5]: [&Pool; 3],
    growth: &Series,
    memory: &Series,
) -> Result<(), Box<dyn std::error::Error>> {
    let out = &plan.out;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.jsonl"), jsonl(res, machine, plan))?;
    std::fs::write(out.join("results.md"), md)?;
    if !lat1.is_empty() {
        line_chart(
            &out.join("w1_l1_hit_latency.svg"),
            "W1 L1 hit, 10 000 keys, 1 task: per-call latency (batch means)",
            ("percentile", false),
            ("ns per call (log)", true),
            &percentile_series(lat1, 1.0),
        )?;
    }
    if !lat2.is_empty() {
        line_chart(
            &out.join("w2_l2_hit_latency.svg"),
            "W2 L2 hit, c=16: per-call latency",
            ("percentile", false),
            ("us per call (log)", true),
            &percentile_series(lat2, 1e3),
        )?;
    }
    if !lat5.is_empty() {
        line_chart(
            &out.join("w5_miss_latency.svg"),
            "W5 miss, c=1: per-call latency",
            ("percentile", false),
            ("us per call (log)", true),
            &percentile_series(lat5, 1e3),
        )?;
    }
    if !growth.is_empty() {
        line_chart(
            &out.join("w3_stampede_growth.svg"),
            "W3 stampede: slowest caller minus the 50 ms body",
            ("concurrent callers of one cold key (log)", true),
            ("ms", false),
            growth,
        )?;
    }
    if !memory.is_empty() {
        line_chart(
            &out.join("w6_memory_per_entry.svg"),
            "W6 memory per L1 entry (counting allocator)",
            ("entries (log)", true),
            ("bytes per entry", false),
            memory,
        )?;
    }
    Ok(())
}
