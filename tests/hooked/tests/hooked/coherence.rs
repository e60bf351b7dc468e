//! Cross-instance coherence (`docs/coherence.md`; scenarios 6, 7, 25–28): the invalidation
//! bus, no stale fills, gap recovery, leases and group invalidation, against a real
//! `redis-server` per test. Several "instances" are runtimes in this process (`scope`) and, where
//! a test says so, child processes running this same test binary (see [`child`]).

use crate::support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::proxy::{Mode, Proxy};
use support::{RedisServer, bounded, wait_until};
use tiered::hooks::Gate;
use tiered::{Runtime, tiered_cache};

/// A versioned "database" with a body-run counter and a gate the body can park on.
#[derive(Default)]
pub struct Db {
    versions: Mutex<HashMap<u64, u64>>,
    runs: AtomicUsize,
    /// Ids whose next body run parks on `gate` (once).
    park: Mutex<std::collections::HashSet<u64>>,
    /// Where marked bodies wait while it is closed.
    gate: Gate,
    /// Extra time each body takes.
    delay_ms: AtomicU64,
}

impl Db {
    fn leak() -> &'static Db {
        Box::leak(Box::default())
    }
    fn version(&self, id: u64) -> u64 {
        *self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .unwrap_or(&0)
    }
    /// A write: the new version.
    fn write(&self, id: u64) -> u64 {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let e = v.entry(id).or_insert(0);
        *e += 1;
        *e
    }
    /// The next body run for `id` parks on the gate.
    fn park_next(&self, id: u64) {
        self.park
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
    async fn read(&self, id: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let v = self.version(id);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let park = self
            .park
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if park {
            self.gate.pass().await;
        }
        v
    }
}

#[tiered_cache(key = "item:<id>", ttl = "60s", promote = 1)]
async fn item(db: &Db, id: u64) -> u64 {
    db.read(id).await
}

#[tiered_cache(key = "local:<id>", ttl = "60s", tiers = "l1")]
async fn local_item(db: &Db, id: u64) -> u64 {
    db.read(id).await
}

#[tiered_cache(key = "rare:<id>", ttl = "60s", promote = 10)]
async fn rare(db: &Db, id: u64) -> u64 {
    db.read(id).await
}

#[tiered_cache(key = "other:<id>", ttl = "60s", promote = 1)]
async fn other(db: &Db, id: u64) -> u64 {
    db.read(id).await
}

/// One of the memoized functions above, chosen per test variant.
#[derive(Clone, Copy)]
enum Fun {
    Item,
    Local,
    Rare,
}

impl Fun {
    async fn call(self, db: &'static Db, id: u64) -> u64 {
        match self {
            Fun::Item => item(db, id).await,
            Fun::Local => local_item(db, id).await,
            Fun::Rare => rare(db, id).await,
        }
    }
    async fn invalidate(self, id: u64) -> Result<(), tiered::Error> {
        match self {
            Fun::Item => invalidate_item(id).await,
            Fun::Local => invalidate_local_item(id).await,
            Fun::Rare => invalidate_rare(id).await,
        }
    }
}

/// `url` names one server, or a cluster as `cluster:` and its seed URLs separated by commas
/// ([`cluster_url`]), so that every helper (and the child process) serves both topologies.
fn builder(url: &str, ns: &str) -> tiered::Builder {
    let b = Runtime::builder()
        .namespace(ns)
        .connect_timeout(Duration::from_millis(500));
    match url.strip_prefix("cluster:") {
        Some(seeds) => b.redis_cluster(seeds.split(',')),
        None => b.redis_url(url),
    }
}

/// The "URL" of a local cluster for [`builder`].
fn cluster_url(c: &support::cluster::Cluster) -> String {
    format!("cluster:{}", c.urls().join(","))
}

async fn with_lease_wait(url: &str, ms: u64) -> Runtime {
    bounded(
        "build",
        builder(url, "c")
            .lease_wait(Duration::from_millis(ms))
            .build(),
    )
    .await
    .expect("runtime")
}

async fn runtime(url: &str) -> Runtime {
    bounded("build", builder(url, "c").build())
        .await
        .expect("runtime")
}

fn received(rt: &Runtime) -> u64 {
    rt.stats().total.invalidations_received
}

/// `TIERED_INTERLEAVINGS` (default 1000): randomized interleavings per variant.
fn interleavings() -> u64 {
    std::env::var("TIERED_INTERLEAVINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// A small deterministic generator for interleavings (seed printed on failure).
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// Scenario 6: an invalidation while the body runs (parked on the gate, or at a random point
/// of the body) prevents its value from being stored, in L1 and Redis. The writer invalidates
/// from the reader's own runtime (`remote = false`) or from another runtime over Pub/Sub
/// (`remote = true`, and the reader's runtime must have *received* the message). After that,
/// no call gets the old version, and a third runtime with an empty L1 (so reading Redis) does
/// not either.
/// With `l1_only`, the function uses `tiers = "l1"`: no lease protects it, only the local
/// poisoning of the flight (by the local invalidation or by the received message).
async fn scenario_6(remote: bool, l1_only: bool) {
    let redis = RedisServer::start();
    scenario_6_at(&redis.url(), remote, l1_only, interleavings()).await;
}

async fn scenario_6_at(url: &str, remote: bool, l1_only: bool, n: u64) {
    let reader = runtime(url).await;
    let writer = if remote {
        runtime(url).await
    } else {
        reader.clone()
    };
    let fresh = runtime(url).await;
    let db = Db::leak();
    let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(remote) ^ (u64::from(l1_only) << 1);
    let fun = if l1_only { Fun::Local } else { Fun::Item };
    let call = move |id: u64| fun.call(db, id);
    let invalidate = move |id: u64| fun.invalidate(id);
    let mut rng = Rng(seed);
    let mut parked = 0;
    for i in 0..n {
        let id = i;
        let park = rng.next(2) == 0;
        let (body_yields, writer_yields) = (rng.next(8), rng.next(8));
        if park {
            db.gate.close();
            db.park_next(id);
            parked += 1;
        }
        let before = received(&reader);
        let first = tokio::spawn(reader.scope(async move {
            yields(body_yields).await;
            call(id).await
        }));
        if park {
            db.gate.wait_reached(parked).await;
        } else {
            yields(writer_yields).await;
        }
        let new = db.write(id);
        bounded("invalidate", writer.scope(invalidate(id)))
            .await
            .expect("invalidate");
        if remote {
            wait_until("message received", || received(&reader) > before).await;
        }
        // The invalidation has taken effect for `reader`: from now on, only `new`.
        let during = bounded("call after invalidate", reader.scope(call(id))).await;
        assert_eq!(
            during, new,
            "iteration {i} (seed {seed:#x}): stale read while the old computation was in flight"
        );
        db.gate.open();
        let old = bounded("first call", first).await.expect("task");
        assert!(old <= new);
        let after = bounded("call after completion", reader.scope(call(id))).await;
        assert_eq!(
            after, new,
            "iteration {i} (seed {seed:#x}): the old computation was stored in L1"
        );
        let from_redis = bounded("fresh runtime", fresh.scope(call(id))).await;
        assert_eq!(
            from_redis, new,
            "iteration {i} (seed {seed:#x}): Redis holds the old value"
        );
    }
    let refused = reader.stats().total.fills_refused;
    println!(
        "scenario 6 ({}, {}): {n} interleavings ({parked} parked on the gate), stale reads 0, stale L2 writes 0, fills refused {refused}",
        if remote {
            "other runtime over Pub/Sub"
        } else {
            "same runtime"
        },
        if l1_only { "tiers = l1" } else { "L1 + L2" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_invalidation_during_compute_same_runtime() {
    scenario_6(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_invalidation_during_compute_same_runtime_l1_only() {
    scenario_6(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_invalidation_during_compute_over_pubsub_l1_only() {
    scenario_6(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_invalidation_during_compute_over_pubsub() {
    scenario_6(true, false).await;
}

/// Scenario 6 on a Redis Cluster (3 masters), invalidations from another runtime over Pub/Sub,
/// L1 + L2: a quarter of the interleavings (each costs more round trips, and clusters form one
/// at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_invalidation_during_compute_over_pubsub_on_a_cluster() {
    let cluster = support::cluster::Cluster::start(3);
    scenario_6_at(&cluster_url(&cluster), true, false, interleavings() / 4).await;
}

/// Scenario 6, the Redis half alone: the message is held back in the reader's handler (test
/// hook), so nothing poisons the reader's flight; only the lease stops the old computation from
/// filling Redis (the invalidation's `DEL` destroyed it) and from filling L1 (a refused fill
/// is not kept). A third runtime reads Redis afterwards and never gets the old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_invalidation_during_compute_lease_alone_stops_the_fill() {
    let redis = RedisServer::start();
    scenario_6_lease_alone(&redis.url(), interleavings()).await;
}

/// The lease alone on a Redis Cluster (a quarter of the interleavings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_invalidation_during_compute_lease_alone_stops_the_fill_on_a_cluster() {
    let cluster = support::cluster::Cluster::start(3);
    scenario_6_lease_alone(&cluster_url(&cluster), interleavings() / 4).await;
}

async fn scenario_6_lease_alone(url: &str, n: u64) {
    let reader = runtime(url).await;
    let writer = runtime(url).await;
    let fresh = runtime(url).await;
    let db = Db::leak();
    for id in 0..n {
        db.gate.close();
        db.park_next(id);
        reader.hooks().handler.close();
        let first = tokio::spawn(reader.scope(item(db, id)));
        db.gate
            .wait_reached(usize::try_from(id + 1).unwrap_or(usize::MAX))
            .await;
        let new = db.write(id);
        let before = received(&reader);
        writer.scope(invalidate_item(id)).await.expect("invalidate");
        db.gate.open();
        assert_eq!(
            bounded("old computation", first).await.expect("task"),
            new - 1
        );
        assert_eq!(
            bounded("fresh", fresh.scope(item(db, id))).await,
            new,
            "id {id}: the old computation filled Redis after its lease was deleted"
        );
        reader.hooks().handler.open();
        wait_until("reader received", || received(&reader) > before).await;
        assert_eq!(reader.scope(item(db, id)).await, new, "id {id}: stale L1");
    }
    let refused = reader.stats().total.fills_refused;
    assert_eq!(refused, n, "every old fill was refused by Redis");
    println!(
        "scenario 6 (lease alone): {n} parked computations, {refused} fills refused by the lease check, stale L2 writes 0"
    );
}

/// Scenario 7, randomized: B reads a key from L2 and its promotion is paused between the L2
/// reply and the L1 insert while the key is invalidated, in one of three ways chosen at random
/// for each key (with random yields between the steps):
/// 0. A invalidates (DEL, then PUBLISH), B receives the message, then resumes;
/// 1. B itself invalidates the key during its paused promotion;
/// 2. the evict → DEL → evict window of B's own invalidation: B's call starts after the first
///    eviction and reads the old value before the `DEL`; the second eviction must catch it.
///
/// In every case B must not serve the value from before the invalidation afterwards.
/// Promotion 1-in-1 (`item`) and 1-in-10 (`rare`).
async fn scenario_7(rare_site: bool) {
    let redis = RedisServer::start();
    let a = runtime(&redis.url()).await;
    let b = runtime(&redis.url()).await;
    let db = Db::leak();
    let fun = if rare_site { Fun::Rare } else { Fun::Item };
    let call = move |id: u64| fun.call(db, id);
    let invalidate = move |id: u64| fun.invalidate(id);
    let n = interleavings();
    let seed = 0x9e37_79b9_7f4a_7c15 ^ n ^ u64::from(rare_site);
    let mut rng = Rng(seed);
    let mut paused = 0;
    let mut windows = 0;
    let mut variants = [0u64; 3];
    for id in 0..n {
        assert_eq!(bounded("warm A", a.scope(call(id))).await, 0);
        let variant = rng.next(3);
        variants[variant as usize] += 1;
        if variant == 2 {
            // B's own invalidation, held between its first eviction and the DEL.
            b.hooks().invalidation.close();
            let new = db.write(id);
            let inv = tokio::spawn(b.scope(invalidate(id)));
            windows += 1;
            b.hooks().invalidation.wait_reached(windows).await;
            yields(rng.next(5)).await;
            assert_eq!(
                bounded("B reads before the DEL", b.scope(call(id))).await,
                0,
                "id {id} (seed {seed:#x}): the DEL had not happened yet"
            );
            b.hooks().invalidation.open();
            bounded("B's invalidation", inv)
                .await
                .expect("task")
                .expect("invalidate");
            assert_eq!(
                bounded("B after", b.scope(call(id))).await,
                new,
                "id {id} (seed {seed:#x}): the second eviction missed a read of the window"
            );
            continue;
        }
        b.hooks().promotion.close();
        let before = received(&b);
        let pending = tokio::spawn(b.scope(call(id)));
        paused += 1;
        b.hooks().promotion.wait_reached(paused).await;
        yields(rng.next(5)).await;
        let new = db.write(id);
        if variant == 0 {
            bounded("invalidate", a.scope(invalidate(id)))
                .await
                .expect("invalidate");
            wait_until("B received", || received(&b) > before).await;
        } else {
            bounded("invalidate on B", b.scope(invalidate(id)))
                .await
                .expect("invalidate");
        }
        yields(rng.next(5)).await;
        b.hooks().promotion.open();
        assert_eq!(bounded("paused call", pending).await.expect("task"), 0);
        assert_eq!(
            bounded("B after", b.scope(call(id))).await,
            new,
            "id {id} (variant {variant}, seed {seed:#x}): B promoted the value from before the DEL"
        );
    }
    let s = b.stats().total;
    println!(
        "scenario 7 (promote 1-in-{}): {n} runs (remote {}, local {}, evict-DEL-evict window {}), stale values 0, fills refused {}",
        if rare_site { 10 } else { 1 },
        variants[0],
        variants[1],
        variants[2],
        s.fills_refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_7_promotion_paused_before_l1_insert_always_promote() {
    scenario_7(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_7_promotion_paused_before_l1_insert_promote_1_in_10() {
    scenario_7(true).await;
}

/// Startup: 50 trials of "B builds, A invalidates at once": B's subscription is confirmed when
/// `build()` returns, so it receives the message and never serves the old value afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_no_invalidation_is_missed_after_build() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url()).await;
    let db = Db::leak();
    for id in 0..50 {
        assert_eq!(a.scope(item(db, id)).await, 0);
        let b = runtime(&redis.url()).await;
        // B warms its L1 with the old value, concurrently with A's write + invalidation.
        let warm = tokio::spawn(b.scope(item(db, id)));
        let new = db.write(id);
        a.scope(invalidate_item(id)).await.expect("invalidate");
        wait_until(
            "B received the invalidation sent right after its build",
            || received(&b) >= 1,
        )
        .await;
        bounded("warm", warm).await.expect("task");
        assert_eq!(b.scope(item(db, id)).await, new, "trial {id}");
    }
}

/// Degraded start: Redis is down at `build()`; entries written before the
/// subscription comes up are not served after it, even though their TTL has not run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_degraded_entries_are_dropped_when_the_subscription_comes_up() {
    let port = RedisServer::reserve_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let b = bounded(
        "degraded build",
        builder(&url, "c")
            .degraded_l1_ttl(Duration::from_secs(60))
            .build(),
    )
    .await
    .expect("a degraded start is not an error");
    assert!(!b.stats().subscribed);
    let db = Db::leak();
    assert_eq!(b.scope(item(db, 1)).await, 0);
    assert_eq!(b.scope(item(db, 1)).await, 0);
    assert_eq!(db.runs(), 1, "served from L1 while degraded");
    db.write(1);
    let _redis = RedisServer::start_on(port, &[]);
    let took = wait_until("subscribed", || b.stats().subscribed).await;
    assert_eq!(
        b.scope(item(db, 1)).await,
        1,
        "the entry written before the subscription is gone"
    );
    println!("degraded start: subscribed {took:?} after Redis appeared; the old entry was dropped");
}

/// Scenario 26: `CLIENT KILL TYPE pubsub` for B while new connections are refused (so the gap
/// is certain), A invalidates during the gap; when B is back, it has flushed L1 and reads the
/// new value. L1 flushes by disconnect = disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_26_invalidations_sent_while_the_subscriber_is_disconnected() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let a = runtime(&redis.url()).await;
    let b = runtime(&proxy.url()).await;
    let db = Db::leak();
    let rounds = 3;
    for round in 0..rounds {
        let id = 100 + round;
        a.scope(item(db, id)).await;
        assert_eq!(b.scope(item(db, id)).await, 0, "B warm");
        let subscribes = b.stats().total.bus_subscribes;
        proxy.set_mode(Mode::Refuse);
        // Kills every subscriber, A's too: both flush and resubscribe.
        redis.cmd::<i64>(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
        wait_until("B noticed the gap", || !b.stats().subscribed).await;
        let new = db.write(id);
        wait_until("A resubscribed", || a.stats().subscribed).await;
        a.scope(invalidate_item(id)).await.expect("invalidate");
        proxy.set_mode(Mode::Pass);
        let back = wait_until("B resubscribed", || {
            b.stats().subscribed && b.stats().total.bus_subscribes > subscribes
        })
        .await;
        assert_eq!(
            b.scope(item(db, id)).await,
            new,
            "round {round}: stale read after reconnect"
        );
        println!(
            "scenario 26 round {round}: B resubscribed {back:?} after the proxy accepted again"
        );
    }
    let s = b.stats().total;
    assert_eq!(s.l1_flushes_disconnect, rounds, "one flush per disconnect");
    println!(
        "scenario 26: {rounds} disconnects, {} disconnect flushes, {} resubscribe flushes, stale reads 0",
        s.l1_flushes_disconnect, s.l1_flushes_subscribed
    );
}

/// Scenario 26, half-open variant: the proxy holds B's links (no FIN, no RST); B flushes at the
/// first sign, whichever comes first: A's beacons stop arriving (a silence) or its own
/// heartbeat goes unanswered (one missed PING: within heartbeat + ping time box); the heartbeat
/// drops the subscription in any case, and B resubscribes once the link passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_26_a_held_subscriber_link_is_detected_by_the_heartbeat() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let a = runtime(&redis.url()).await;
    let b = runtime(&proxy.url()).await;
    let db = Db::leak();
    a.scope(item(db, 1)).await;
    assert_eq!(b.scope(item(db, 1)).await, 0);
    wait_until("B heard A", || b.stats().bus_origins == 1).await;
    proxy.set_mode(Mode::Hold);
    let held = Instant::now();
    // A's silence or B's heartbeat, whichever is first, starts a new epoch.
    wait_until("B took the held link for a loss", || {
        let s = b.stats().total;
        s.l1_flushes_silence + s.l1_flushes_disconnect >= 1
    })
    .await;
    let silent = held.elapsed();
    wait_until("heartbeat detects the held link", || !b.stats().subscribed).await;
    let detected = held.elapsed();
    let new = db.write(1);
    a.scope(invalidate_item(1)).await.expect("invalidate");
    // While held, calls on B still return (L2 is time-boxed); none serves the flushed entry.
    let start = Instant::now();
    assert_eq!(b.scope(item(db, 1)).await, new);
    let held_call = start.elapsed();
    proxy.set_mode(Mode::Pass);
    proxy.cut_all();
    let back = wait_until("B resubscribed", || b.stats().subscribed).await;
    assert_eq!(b.scope(item(db, 1)).await, new);
    assert!(
        held_call < Duration::from_secs(2),
        "a call stalled {held_call:?} on a held link"
    );
    println!(
        "held link: B flushed after {silent:?}; the heartbeat detected the link after {detected:?} (500 ms, 1 miss, 250 ms time box); a call while held took {held_call:?}; resubscribed {back:?} after release"
    );
}

/// Scenario 26, long outage: Redis is down 12 s (longer than redis-rs's own reconnect
/// retries), with no traffic at all; the subscriber comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_26_subscriber_recovers_by_itself_after_a_12s_outage() {
    let mut redis = RedisServer::start();
    let b = runtime(&redis.url()).await;
    assert!(b.stats().subscribed);
    redis.kill();
    wait_until("gap noticed", || !b.stats().subscribed).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    redis.restart();
    let back = wait_until("resubscribed without any traffic", || b.stats().subscribed).await;
    println!("12 s outage: resubscribed {back:?} after the restart, no call made");
}

/// Scenario 27: the server drops a subscriber that does not read (output buffer limit); B
/// flushes L1, subscribes again and carries on, with no stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_27_the_server_drops_a_slow_subscriber() {
    let redis = RedisServer::start();
    redis.cmd::<()>(&[
        b"CONFIG",
        b"SET",
        b"client-output-buffer-limit",
        b"pubsub 64kb 32kb 1",
    ]);
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let a = runtime(&redis.url()).await;
    let b = runtime(&proxy.url()).await;
    let db = Db::leak();
    a.scope(item(db, 7)).await;
    assert_eq!(b.scope(item(db, 7)).await, 0);
    // B stops reading: the server's output buffer for B's subscriber fills.
    proxy.set_mode(Mode::Hold);
    let mut publisher = redis.conn();
    let channel = "c:tiered:invalidate:db0:v2";
    let mut burst = redis::pipe();
    for i in 0..10_000u32 {
        burst
            .cmd("PUBLISH")
            .arg(channel)
            // 1 KiB each: 10 MiB in all, more than the kernel's socket buffers absorb.
            .arg(format!("burst message {i} {}", "x".repeat(1024)))
            .ignore();
    }
    let () = burst.query(&mut publisher).expect("burst");
    // The server drops B's subscriber (over the 64 KiB hard limit): only A's is left.
    let subscribers = || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut redis.conn())
            .expect("client list");
        list.lines().count()
    };
    let dropped_after =
        wait_until("the server dropped B's subscriber", || subscribers() == 1).await;
    // Sent after the drop: B cannot receive it on that subscription; only its flush on the
    // disconnect keeps it from serving the old value.
    let new = db.write(7);
    a.scope(invalidate_item(7)).await.expect("invalidate");
    let start = Instant::now();
    proxy.set_mode(Mode::Pass);
    wait_until("B noticed", || b.stats().total.l1_flushes_disconnect >= 1).await;
    wait_until("B resubscribed", || b.stats().subscribed).await;
    assert_eq!(b.scope(item(db, 7)).await, new, "stale read after the drop");
    println!(
        "scenario 27: the server dropped B's subscriber {dropped_after:?} after the burst; B resubscribed {:?} after the link passed again; stale reads 0",
        start.elapsed()
    );
}

/// Scenario 28, scaled by count (2 cores cannot publish 100 000 messages/s for 5 s): 10 000
/// invalidations from A while B's handler is blocked and its queue holds 64. Every message is
/// either applied or covered by an L1 flush (no silent drop), the queue never exceeds its
/// bound, and B serves no stale value afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_28_invalidation_storm_is_bounded_and_never_drops_silently() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url()).await;
    let b = bounded("build", builder(&redis.url(), "c").bus_queue(64).build())
        .await
        .expect("runtime");
    let db = Db::leak();
    let total = 10_000u64;
    // The last key invalidated: its message arrives when the queue is long full.
    let last = total - 1;
    a.scope(item(db, last)).await;
    assert_eq!(b.scope(item(db, last)).await, 0);
    let rss_before = rss_kib();
    b.hooks().handler.close();
    let new = db.write(last);
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            tokio::spawn(a.scope(async move {
                for i in (t..total).step_by(8) {
                    invalidate_item(i).await.expect("invalidate");
                }
            }))
        })
        .collect();
    for t in tasks {
        bounded("storm", t).await.expect("task");
    }
    let overflow_flushes = || b.stats().total.l1_flushes_overflow;
    wait_until("the handler has seen the storm", || {
        b.hooks().handler.reached() >= 1 && overflow_flushes() > 0
    })
    .await;
    b.hooks().handler.open();
    // Every invalidation is applied, or dropped at one of the two bounded queues (counted, and
    // covered by an overflow flush). Dropped pushes may include beacons, hence `>=`.
    let dropped = || {
        let t = b.stats().total;
        t.bus_messages_dropped + t.bus_pushes_dropped
    };
    wait_until("every message applied or dropped and flushed", || {
        received(&b) + dropped() >= total
    })
    .await;
    let s = b.stats();
    assert!(s.total.l1_flushes_overflow >= 1);
    assert!(s.bus_queue_peak <= 64, "queue peak {}", s.bus_queue_peak);
    // A's 8 concurrent invalidators reach Redis slightly out of sequence order: not a loss.
    // (Pushes dropped before the reader saw them are holes in the numbers, rightly.)
    if s.total.bus_pushes_dropped == 0 {
        assert_eq!(
            s.total.l1_flushes_sequence_gap, 0,
            "reordering taken for a loss"
        );
    }
    assert_eq!(
        b.scope(item(db, last)).await,
        new,
        "stale read after the storm"
    );
    println!(
        "scenario 28 (scaled): {total} invalidations; applied {}, dropped {} at the handler queue and {} at the push queue, covered by {} overflow flushes, silent drops 0; peak queue {} (bound 64); RSS {} KiB -> {} KiB",
        s.total.invalidations_received,
        s.total.bus_messages_dropped,
        s.total.bus_pushes_dropped,
        s.total.l1_flushes_overflow,
        s.bus_queue_peak,
        rss_before,
        rss_kib()
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `invalidate_all_<fn>` and `Runtime::invalidate_all`, with two functions and two
/// namespaces: nothing outside the target is evicted, nothing inside survives — in this
/// instance and in another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_invalidation_by_function_and_by_namespace() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url()).await;
    let a2 = runtime(&redis.url()).await;
    let elsewhere = bounded("build", builder(&redis.url(), "d").build())
        .await
        .expect("runtime");
    let db = Db::leak();
    let ids = 0..5u64;
    let warm = |rt: &Runtime| {
        let rt = rt.clone();
        let ids = ids.clone();
        async move {
            for id in ids {
                rt.scope(item(db, id)).await;
                rt.scope(other(db, id)).await;
            }
        }
    };
    warm(&a).await;
    warm(&a2).await;
    warm(&elsewhere).await;
    // `elsewhere` has its own namespace: it computed its own entries.
    let runs = db.runs();
    assert_eq!(runs, 20);
    for id in ids.clone() {
        db.write(id);
    }
    let before = received(&a2);
    a.scope(invalidate_all_item())
        .await
        .expect("invalidate_all_item");
    wait_until("a2 received", || received(&a2) > before).await;
    for id in ids.clone() {
        assert_eq!(a.scope(item(db, id)).await, 1, "item:{id} survived in A");
        assert_eq!(a2.scope(item(db, id)).await, 1, "item:{id} survived in A2");
        assert_eq!(a.scope(other(db, id)).await, 0, "other:{id} was evicted");
        assert_eq!(
            elsewhere.scope(item(db, id)).await,
            0,
            "namespace d was evicted"
        );
    }
    assert_eq!(
        db.runs(),
        runs + 5,
        "A recomputed item once, A2 read it from L2"
    );
    let before = received(&a2);
    a.invalidate_all().await.expect("invalidate_all");
    wait_until("a2 received", || received(&a2) > before).await;
    for id in ids.clone() {
        assert_eq!(a2.scope(other(db, id)).await, 1, "other:{id} survived");
        assert_eq!(a2.scope(item(db, id)).await, 1);
        assert_eq!(
            elsewhere.scope(other(db, id)).await,
            0,
            "namespace d was evicted"
        );
    }
    assert_eq!(db.runs(), runs + 15);
    // Nothing was scanned or deleted: keys carry no generation, so the recomputed values
    // replaced the old ones under the same keys (namespaces c and d: item and other, 5 ids).
    assert_eq!(redis.keys().len(), 20, "{:?}", redis.keys());
}

/// A lease holder that disappears mid-computation (its task aborted, so its future is
/// dropped) releases its lease; one whose process dies does not, and then the waiter computes
/// after at most `lease_wait` without filling. Both bounded, nobody hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlived_by_its_holder_costs_at_most_lease_wait() {
    let redis = RedisServer::start();
    let holder = runtime(&redis.url()).await;
    let waiter = with_lease_wait(&redis.url(), 300).await;
    let stuck = Db::leak();
    let db = Db::leak();
    // A lease left by a process that died: written directly, as the holder would have.
    let lease = support::lease_bytes(9);
    redis.cmd::<()>(&[b"SET", b"c:item:<1>", &lease, b"PX", b"10000"]);
    let start = Instant::now();
    assert_eq!(waiter.scope(item(db, 1)).await, 0);
    let waited = start.elapsed();
    let s = waiter.stats().total;
    assert_eq!((s.lease_waits, s.lease_timeouts), (1, 1));
    assert_eq!(
        redis.get("c:item:<1>"),
        Some(lease),
        "a lease it does not hold is never overwritten"
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    // A holder cancelled mid-computation releases its lease at once.
    stuck.gate.close();
    stuck.park_next(2);
    let task = tokio::spawn(holder.scope(item(stuck, 2)));
    stuck.gate.wait_reached(1).await;
    let held = redis.get("c:item:<2>").expect("the holder's lease");
    assert!(support::is_lease(&held));
    task.abort();
    wait_until("lease released", || redis.get("c:item:<2>").is_none()).await;
    assert_eq!(waiter.scope(item(db, 2)).await, 0);
    assert_eq!(
        waiter.stats().total.lease_timeouts,
        1,
        "no wait on a released lease"
    );
    println!("dead holder: the waiter computed after {waited:?} (lease_wait 300 ms)");
}

mod child {
    //! Child processes: this test binary run again with `TIERED_CHILD_URL` set executes
    //! [`child_process_entry`] as a small command server over stdin/stdout, so that several
    //! processes share one Redis through the global (installed) runtime path.

    use super::*;
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::process::{Child, ChildStdin, ChildStdout, Command};

    pub struct Proc {
        child: Child,
        stdin: ChildStdin,
        lines: tokio::io::Lines<BufReader<ChildStdout>>,
    }

    impl Proc {
        pub async fn spawn(url: &str) -> Proc {
            let exe = std::env::current_exe().expect("test binary path");
            // The entry's test name in this binary: this module's path without the crate's.
            let entry = format!(
                "{}::child_process_entry",
                module_path!().split_once("::").map_or("", |(_, m)| m)
            );
            let mut child = Command::new(exe)
                .args([entry.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                .env("TIERED_CHILD_URL", url)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn child");
            let stdin = child.stdin.take().expect("stdin");
            let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let mut p = Proc {
                child,
                stdin,
                lines,
            };
            assert_eq!(p.ask("ping").await, "pong");
            p
        }

        pub async fn send(&mut self, cmd: &str) {
            self.stdin
                .write_all(format!("{cmd}\n").as_bytes())
                .await
                .expect("write to child");
            self.stdin.flush().await.expect("flush");
        }

        pub async fn reply(&mut self) -> String {
            bounded("child reply", async {
                loop {
                    match self.lines.next_line().await.expect("read child") {
                        Some(l) => {
                            // libtest's "test … " may precede the first reply on its line.
                            if let Some(i) = l.find("@@ ") {
                                return l[i + 3..].to_owned();
                            }
                        }
                        None => panic!("child exited"),
                    }
                }
            })
            .await
        }

        pub async fn ask(&mut self, cmd: &str) -> String {
            self.send(cmd).await;
            self.reply().await
        }

        pub async fn kill(&mut self) {
            let _ = self.child.kill().await;
        }
    }

    /// As a child (`TIERED_CHILD_URL` set): the command server. In the normal test run: the
    /// harness's self-test, which spawns this binary as a child and talks to it.
    #[test]
    fn child_process_entry() {
        let Ok(url) = std::env::var("TIERED_CHILD_URL") else {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio");
            rt.block_on(async {
                let redis = RedisServer::start();
                let mut child = Proc::spawn(&redis.url()).await;
                assert_eq!(child.ask("get 41").await.split(' ').next(), Some("0"));
                child.kill().await;
            });
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio");
        rt.block_on(async move {
            let runtime = builder(&url, "c").install().await.expect("install");
            let db = Db::leak();
            db.delay_ms.store(200, Ordering::SeqCst);
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let words: Vec<&str> = line.split_whitespace().collect();
                let reply = match words.as_slice() {
                    ["ping"] => "pong".to_owned(),
                    ["get", id] => {
                        let id: u64 = id.parse().unwrap_or(0);
                        let v = item(db, id).await;
                        format!("{v} {} {}", db.runs(), tiered::stats().total.l1_hits)
                    }
                    ["write", id] => db.write(id.parse().unwrap_or(0)).to_string(),
                    ["received"] => received(&runtime).to_string(),
                    // Starts a computation of `id` that never ends (it holds the lease).
                    ["hang", id] => {
                        let id: u64 = id.parse().unwrap_or(0);
                        db.gate.close();
                        db.park_next(id);
                        tokio::spawn(async move { item(db, id).await });
                        db.gate.wait_reached(1).await;
                        "parked".to_owned()
                    }
                    ["burst", id, n] => {
                        let id: u64 = id.parse().unwrap_or(0);
                        let n: usize = n.parse().unwrap_or(0);
                        let before = db.runs();
                        let calls: Vec<_> = (0..n)
                            .map(|_| tokio::spawn(async move { item(db, id).await }))
                            .collect();
                        for c in calls {
                            let _ = c.await;
                        }
                        (db.runs() - before).to_string()
                    }
                    _ => "unknown".to_owned(),
                };
                println!("@@ {reply}");
            }
        });
    }
}

/// Scenario 25: three instances (A and B in this process, C a child process), all warm. A
/// writes and invalidates, then recomputes at once: B and C miss on their next call, and A's
/// own echoed message does not evict A's newer value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_25_cross_instance_invalidation_three_instances() {
    let redis = RedisServer::start();
    scenario_25(&redis.url()).await;
}

/// Scenario 25 on a Redis Cluster (3 masters): the same three instances, C a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_25_cross_instance_invalidation_three_instances_on_a_cluster() {
    let cluster = support::cluster::Cluster::start(3);
    scenario_25(&cluster_url(&cluster)).await;
    the_sharded_message_waits_for_the_delete(&cluster_url(&cluster)).await;
}

/// On the sharded cluster bus (the default) the message goes to the channel's master and the
/// `DEL` to the key's: A's invalidation is held after its `DEL` was answered and before its
/// `SPUBLISH` (the `publication` gate), and B, holding the key in L1, reads it while A is held
/// and again once it heard the message: the second read is the new value. (Were the message
/// sent before the `DEL`, B would hear it, read the old value still in Redis and keep it in
/// L1.)
async fn the_sharded_message_waits_for_the_delete(url: &str) {
    let a = runtime(url).await;
    let b = runtime(url).await;
    let db = Db::leak();
    let id = 900;
    assert_eq!(a.scope(item(db, id)).await, 0);
    bounded("B holds the key in L1", async {
        loop {
            let hits = b.stats().total.l1_hits;
            assert_eq!(b.scope(item(db, id)).await, 0);
            if b.stats().total.l1_hits > hits {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let new = db.write(id);
    let rb = received(&b);
    a.hooks().publication.close();
    let invalidation = {
        let a = a.clone();
        tokio::spawn(async move { a.scope(invalidate_item(id)).await })
    };
    a.hooks().publication.wait_reached(1).await;
    // While A is held: B may or may not have heard (it must not have, here), and reads.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let heard_early = received(&b) > rb;
    let during = b.scope(item(db, id)).await;
    a.hooks().publication.open();
    bounded("A's invalidation", invalidation)
        .await
        .expect("no panic")
        .expect("invalidate");
    wait_until("B received", || received(&b) > rb).await;
    let after = b.scope(item(db, id)).await;
    println!(
        "sharded bus ordering: B heard the message before the DEL was answered: {heard_early}; B read {during} while A was held, {after} after (new {new})"
    );
    assert!(!heard_early, "the message went out before the DEL's reply");
    assert_eq!(after, new, "B kept an old value");
}

async fn scenario_25(url: &str) {
    let a = runtime(url).await;
    let b = runtime(url).await;
    let mut c = child::Proc::spawn(url).await;
    let db = Db::leak();
    for round in 0..10u64 {
        let id = round;
        assert_eq!(a.scope(item(db, id)).await, 0);
        assert_eq!(b.scope(item(db, id)).await, 0);
        // C's reply: value, body runs, L1 hits (of its installed runtime).
        let c_get = |reply: String| -> [u64; 3] {
            let v: Vec<u64> = reply.split(' ').filter_map(|w| w.parse().ok()).collect();
            [v[0], v[1], v[2]]
        };
        let [c_value, _, c_hits] = c_get(c.ask(&format!("get {id}")).await);
        assert_eq!(c_value, 0, "C warm from L2");
        let (rb, rc): (u64, u64) = (
            received(&b),
            c.ask("received").await.parse().expect("count"),
        );
        let new = db.write(id);
        let echoes = a.stats().total.bus_own_messages;
        a.scope(invalidate_item(id)).await.expect("invalidate");
        let a_runs = db.runs();
        assert_eq!(a.scope(item(db, id)).await, new, "A recomputes at once");
        assert_eq!(db.runs(), a_runs + 1);
        wait_until("B received", || received(&b) > rb).await;
        bounded("C received", async {
            loop {
                let n: u64 = c.ask("received").await.parse().expect("count");
                if n > rc {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        wait_until("A's own echo arrived", || {
            a.stats().total.bus_own_messages > echoes
        })
        .await;
        let a_hits = a.stats().total.l1_hits;
        assert_eq!(a.scope(item(db, id)).await, new);
        assert_eq!(
            a.stats().total.l1_hits,
            a_hits + 1,
            "A's echo evicted A's newer value"
        );
        assert_eq!(db.runs(), a_runs + 1);
        assert_eq!(
            b.scope(item(db, id)).await,
            new,
            "B: stale after propagation"
        );
        // C misses its L1 and reads A's new value from Redis.
        let [c_value, _, c_hits_after] = c_get(c.ask(&format!("get {id}")).await);
        assert_eq!(
            c_hits_after, c_hits,
            "C answered from its L1 after the invalidation"
        );
        assert_eq!(c_value, new, "C: stale after propagation");
    }
    c.kill().await;
    println!(
        "scenario 25: 10 rounds; B and C missed after every invalidation; A's echo evicted nothing"
    );
}

/// Cross-process stampede: 3 processes (this one and two children) × 200 concurrent callers on
/// one cold key, body 200 ms: the body runs once in 20 of 20 repetitions (the others wait on
/// the lease and read the fill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_process_stampede_runs_the_body_once() {
    let redis = RedisServer::start();
    let mut kids = vec![
        child::Proc::spawn(&redis.url()).await,
        child::Proc::spawn(&redis.url()).await,
    ];
    let me = runtime(&redis.url()).await;
    let db = Db::leak();
    db.delay_ms.store(200, Ordering::SeqCst);
    let mut waits = 0;
    for rep in 0..20u64 {
        let id = 1000 + rep;
        for k in &mut kids {
            k.send(&format!("burst {id} 200")).await;
        }
        let before = db.runs();
        let calls: Vec<_> = (0..200)
            .map(|_| tokio::spawn(me.scope(async move { item(db, id).await })))
            .collect();
        for c in calls {
            bounded("caller", c).await.expect("task");
        }
        let mut runs = db.runs() - before;
        for k in &mut kids {
            runs += k.reply().await.parse::<usize>().expect("runs");
        }
        assert_eq!(
            runs, 1,
            "repetition {rep}: the body ran {runs} times across 3 processes"
        );
        waits = me.stats().total.lease_waits;
    }
    for k in &mut kids {
        k.kill().await;
    }
    println!(
        "cross-process stampede: 20/20 repetitions ran the body once across 3 processes x 200 callers; this process waited on another's lease {waits} times"
    );
}

/// A publish that fails leaves a hole in its origin's sequence: the next message from that
/// origin makes every subscribed receiver flush its L1 (an invalidation it never got cannot
/// leave a stale entry behind). The failed invalidation is an `Err` and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_publish_is_a_sequence_gap_and_receivers_flush() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let a = runtime(&proxy.url()).await;
    let b = runtime(&redis.url()).await;
    let db = Db::leak();
    assert_eq!(a.scope(item(db, 1)).await, 0);
    let before = received(&b);
    a.scope(invalidate_item(1)).await.expect("delivered");
    wait_until("B received", || received(&b) > before).await;
    assert_eq!(b.scope(item(db, 2)).await, 0, "B warm on another key");
    // A cannot reach Redis: its invalidation of key 3 fails and is never published.
    proxy.set_mode(Mode::Refuse);
    proxy.cut_all();
    // Certainly not sent: A knows it is disconnected before it tries.
    wait_until("A disconnected", || !a.stats().l2_connected).await;
    let failed = a.scope(invalidate_item(3)).await;
    assert!(
        failed.is_err(),
        "a failed invalidation is reported: {failed:?}"
    );
    assert_eq!(a.stats().total.invalidations_failed, 1);
    proxy.set_mode(Mode::Pass);
    wait_until("A reconnected", || a.stats().l2_connected).await;
    let gaps = b.stats().total.l1_flushes_sequence_gap;
    bounded("retry", async {
        while a.scope(invalidate_item(4)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    wait_until("B saw the gap", || {
        b.stats().total.l1_flushes_sequence_gap > gaps
    })
    .await;
    let l1_hits = b.stats().total.l1_hits;
    assert_eq!(b.scope(item(db, 2)).await, 0);
    assert_eq!(
        b.stats().total.l1_hits,
        l1_hits,
        "B's L1 was flushed by the sequence gap: key 2 came from Redis"
    );
}

/// A lease holder whose process is killed (SIGKILL) mid-computation: another process waits at
/// most `lease_wait`, then computes (without filling, since the lease is not its own); nobody
/// hangs, and once the dead lease expires (`lease_ttl`) the key is filled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_computation_costs_at_most_lease_wait() {
    let redis = RedisServer::start();
    let mut holder = child::Proc::spawn(&redis.url()).await;
    assert_eq!(holder.ask("hang 5").await, "parked");
    let lease = redis.get("c:item:<5>").expect("the child's lease");
    assert!(support::is_lease(&lease), "a lease envelope");
    holder.kill().await;
    let waiter = with_lease_wait(&redis.url(), 400).await;
    let db = Db::leak();
    let callers: Vec<_> = (0..50)
        .map(|_| tokio::spawn(waiter.scope(async move { item(db, 5).await })))
        .collect();
    let start = Instant::now();
    for c in callers {
        assert_eq!(bounded("caller", c).await.expect("task"), 0);
    }
    let took = start.elapsed();
    let s = waiter.stats().total;
    assert_eq!(
        db.runs(),
        1,
        "one computation after the wait, shared by the 50 callers"
    );
    assert_eq!((s.lease_waits, s.lease_timeouts), (1, 1));
    assert_eq!(
        redis.get("c:item:<5>"),
        Some(lease),
        "not overwritten by a non-holder"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    println!(
        "killed holder: 50 callers got a value after {took:?} (lease_wait 400 ms), body ran once"
    );
}

/// Scenario 26, external deletes: a `DEL` or `FLUSHALL` made directly in Redis sends no
/// message, so an instance may serve its L1 copy until the copy's TTL ends; `l1_max_ttl`
/// bounds that staleness (documented in the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_26_external_deletes_are_bounded_by_l1_max_ttl() {
    let redis = RedisServer::start();
    let cap = Duration::from_millis(300);
    let b = bounded("build", builder(&redis.url(), "c").l1_max_ttl(cap).build())
        .await
        .expect("runtime");
    let db = Db::leak();
    assert_eq!(b.scope(item(db, 1)).await, 0);
    let new = db.write(1);
    let deleted = Instant::now();
    redis.cmd::<()>(&[b"FLUSHALL"]);
    let right_after = b.scope(item(db, 1)).await;
    // Past the cap (plus a coarse-clock tick), the L1 copy cannot be served any more.
    tokio::time::sleep_until((deleted + cap + Duration::from_millis(20)).into()).await;
    assert_eq!(
        b.scope(item(db, 1)).await,
        new,
        "served beyond l1_max_ttl after an external delete"
    );
    println!(
        "external FLUSHALL: right after it B served {right_after} (stale, {} the documented limit), after l1_max_ttl {cap:?} the new value",
        if right_after == new {
            "not even"
        } else {
            "within"
        }
    );
}

/// While a process waits on another's lease, an L2 failure ends the wait at once (no waiting
/// on leases without Redis): the caller computes within about one `l2_timeout`, not
/// `lease_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_failure_ends_a_lease_wait() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let waiter = bounded(
        "build",
        builder(&proxy.url(), "c")
            .lease_wait(Duration::from_secs(8))
            .lease_ttl(Duration::from_secs(8))
            .build(),
    )
    .await
    .expect("runtime");
    let lease = support::lease_bytes(3);
    redis.cmd::<()>(&[b"SET", b"c:item:<9>", &lease, b"PX", b"8000"]);
    let db = Db::leak();
    let call = tokio::spawn(waiter.scope(item(db, 9)));
    wait_until("waiting on the lease", || {
        waiter.stats().total.lease_waits == 1
    })
    .await;
    let held = Instant::now();
    proxy.set_mode(Mode::Hold);
    assert_eq!(bounded("caller", call).await.expect("task"), 0);
    let took = held.elapsed();
    let s = waiter.stats().total;
    assert_eq!(
        s.lease_timeouts, 0,
        "the wait ended on the failure, not on lease_wait"
    );
    assert!(s.l2_timeouts >= 1);
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} (lease_wait 8 s)"
    );
    println!(
        "lease wait ended {took:?} after Redis stopped answering (l2_timeout 250 ms, lease_wait 8 s)"
    );
}

/// A generation announcement lost to a full handler queue: the overflow flush also forgets the
/// cached generations, so B reads them from Redis again and never serves the function's old
/// entries from L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_generation_announcement_is_read_again_from_redis() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url()).await;
    let b = bounded("build", builder(&redis.url(), "c").bus_queue(1).build())
        .await
        .expect("runtime");
    let db = Db::leak();
    assert_eq!(a.scope(item(db, 1)).await, 0);
    assert_eq!(
        b.scope(item(db, 1)).await,
        0,
        "B warm (L1 and the generation)"
    );
    b.hooks().handler.close();
    // Fill B's queue (one waits in the handler, one in the queue), then announce.
    for id in 100..103 {
        a.scope(invalidate_item(id)).await.expect("invalidate");
    }
    let flushes = b.stats().total.l1_flushes_overflow;
    let new = db.write(1);
    a.scope(invalidate_all_item())
        .await
        .expect("invalidate_all_item");
    wait_until("the announcement overflowed", || {
        b.stats().total.l1_flushes_overflow > flushes
    })
    .await;
    // The handler is still blocked: B never applied the announcement.
    assert_eq!(
        b.scope(item(db, 1)).await,
        new,
        "B read the function's old generation from Redis"
    );
    b.hooks().handler.open();
}

/// Scenario 28, before the handler: the subscriber's own push queue (between redis-rs and the
/// reader) is bounded too. With the reader held, a storm fills it; the pushes that do not fit
/// are dropped and B flushes L1 instead of buffering without bound or missing them silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_28_a_storm_that_overflows_the_push_queue_flushes_l1() {
    let redis = RedisServer::start();
    let a = runtime(&redis.url()).await;
    let b = bounded("build", builder(&redis.url(), "c").bus_queue(16).build())
        .await
        .expect("runtime");
    let db = Db::leak();
    assert_eq!(b.scope(item(db, 1)).await, 0, "B warm");
    b.hooks().reader.close();
    let new = db.write(1);
    a.scope(invalidate_item(1)).await.expect("invalidate");
    bounded("the reader holds", b.hooks().reader.wait_reached(1)).await;
    for id in 1000..1200 {
        a.scope(invalidate_item(id)).await.expect("invalidate");
    }
    wait_until("the storm overflowed B's push queue", || {
        b.stats().total.bus_pushes_dropped > 0
    })
    .await;
    b.hooks().reader.open();
    wait_until("B flushed on the overflow", || {
        b.stats().total.l1_flushes_overflow >= 1
    })
    .await;
    assert_eq!(b.scope(item(db, 1)).await, new, "no stale read");
    println!(
        "push queue of 16 overflowed by a storm of 201: {} pushes dropped, {} overflow flush(es), bus_queue_peak {}",
        b.stats().total.bus_pushes_dropped,
        b.stats().total.l1_flushes_overflow,
        b.stats().bus_queue_peak
    );
}
