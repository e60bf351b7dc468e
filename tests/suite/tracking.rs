//! Writes made outside tiered (`client_tracking`): Redis reports every write of a key of the
//! namespace (`CLIENT TRACKING ON BCAST PREFIX ns:`), so a `DEL`, a `SET`, an expiry or a flush
//! by another program evicts the key from L1 in every instance. Tracking off adds nothing.

use crate::support;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use support::{BodyRuns, RedisServer, bounded, clients, wait_until};
use tiered::{Runtime, tiered_cache};

/// The "database": the current text of each item.
static ITEMS: LazyLock<Mutex<HashMap<(String, u64), String>>> = LazyLock::new(Default::default);
/// Body runs per namespace (the tests of this file run side by side).
static RUNS: LazyLock<Mutex<HashMap<&'static str, BodyRuns>>> = LazyLock::new(Default::default);

fn runs(ns: &'static str) -> BodyRuns {
    RUNS.lock()
        .map(|mut r| r.entry(ns).or_default().clone())
        .unwrap_or_default()
}

fn set_item(ns: &str, id: u64, text: &str) {
    if let Ok(mut items) = ITEMS.lock() {
        items.insert((ns.to_owned(), id), text.to_owned());
    }
}

/// The body reads the "database" of the namespace it runs in.
#[tiered_cache(key = "item:<id>", ttl = "60s", promote = 1)]
async fn item(ns: &'static str, id: u64) -> String {
    runs(ns).hit();
    ITEMS
        .lock()
        .ok()
        .and_then(|items| items.get(&(ns.to_owned(), id)).cloned())
        .unwrap_or_else(|| format!("item {id} v0"))
}

fn key(ns: &str, id: u64) -> String {
    format!("{ns}:item:<{id}>")
}

async fn tracking_runtime(url: &str, ns: &str) -> Runtime {
    support::build(support::builder(url, ns).client_tracking(true)).await
}

fn evictions(rt: &Runtime) -> u64 {
    rt.stats().total.tracking_evictions
}

fn l1_hits(rt: &Runtime) -> u64 {
    rt.stats().total.l1_hits
}

/// Calls until the value is an L1 hit (the runtime's own lease and fill come back as tracking
/// pushes, so a computed value reaches L1 on a later call, read from Redis), then
/// [`settle`]s; returns the value.
async fn warm(rt: &Runtime, ns: &'static str, id: u64) -> String {
    let v = warm_l1(rt, ns, id).await;
    settle(&[rt]).await;
    v
}

async fn warm_l1(rt: &Runtime, ns: &'static str, id: u64) -> String {
    bounded("warm L1", async {
        loop {
            let hits = l1_hits(rt);
            let v = rt.scope(item(ns, id)).await;
            if l1_hits(rt) > hits {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Lets the pushes of the runtimes' own writes arrive (no eviction for 20 ms), so that a
/// test's next count of evictions is about its own write.
async fn settle(rts: &[&Runtime]) {
    bounded("settle", async {
        loop {
            let before: Vec<u64> = rts.iter().map(|rt| evictions(rt)).collect();
            tokio::time::sleep(Duration::from_millis(20)).await;
            if rts.iter().map(|rt| evictions(rt)).eq(before) {
                return;
            }
        }
    })
    .await;
}

/// Whether the next call is answered from L1 (then it is an L1 hit; else it reads Redis).
async fn served_from_l1(rt: &Runtime, ns: &'static str, id: u64) -> (String, bool) {
    let hits = l1_hits(rt);
    let v = rt.scope(item(ns, id)).await;
    (v, l1_hits(rt) > hits)
}

fn redis_cli(redis: &RedisServer, args: &[&str]) {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(redis.port().to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("redis-cli: {e}; {}", support::install_hint()));
    assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_del_from_redis_cli_evicts_l1_in_every_instance() {
    const NS: &str = "trk-del";
    let redis = RedisServer::start();
    let a = tracking_runtime(&redis.url(), NS).await;
    let b = tracking_runtime(&redis.url(), NS).await;
    assert!(a.stats().tracking && b.stats().tracking);

    // `redis-cli DEL` itself, for three keys.
    for id in 0..3 {
        for rt in [&a, &b] {
            assert_eq!(warm(rt, NS, id).await, format!("item {id} v0"));
        }
        set_item(NS, id, &format!("item {id} v1"));
        let (ea, eb) = (evictions(&a), evictions(&b));
        redis_cli(&redis, &["DEL", &key(NS, id)]);
        wait_until("both instances evicted the key", || {
            evictions(&a) > ea && evictions(&b) > eb
        })
        .await;
        for rt in [&a, &b] {
            let (v, from_l1) = served_from_l1(rt, NS, id).await;
            assert_eq!(v, format!("item {id} v1"), "the deleted value is gone");
            assert!(!from_l1);
        }
    }

    // The delay from another program's `DEL` (sent) to both evictions, over many keys
    // (a plain connection, as redis-cli uses).
    const KEYS: u64 = 200;
    for id in 100..100 + KEYS {
        for rt in [&a, &b] {
            warm_l1(rt, NS, id).await;
        }
    }
    settle(&[&a, &b]).await;
    let mut other = redis.conn();
    let mut delays = Vec::new();
    for id in 100..100 + KEYS {
        let (ea, eb) = (evictions(&a), evictions(&b));
        let start = Instant::now();
        let deleted: u64 = redis::cmd("DEL")
            .arg(key(NS, id))
            .query(&mut other)
            .expect("DEL");
        assert_eq!(deleted, 1);
        bounded("both evicted", async {
            while !(evictions(&a) > ea && evictions(&b) > eb) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        delays.push(start.elapsed());
    }
    for id in 100..100 + KEYS {
        for rt in [&a, &b] {
            assert!(!served_from_l1(rt, NS, id).await.1, "key {id} left L1");
        }
    }
    delays.sort();
    eprintln!(
        "external DEL -> evicted in both instances ({KEYS} keys, debug build): p50 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_an_expiry_and_a_flush_by_another_program_are_seen() {
    const NS: &str = "trk-set";
    let redis = RedisServer::start();
    let a = tracking_runtime(&redis.url(), NS).await;
    let b = tracking_runtime(&redis.url(), NS).await;
    for rt in [&a, &b] {
        assert_eq!(warm(rt, NS, 1).await, "item 1 v0");
    }
    // Another program writes item 1's new value into Redis: bytes as tiered writes them
    // (taken from item 2, whose body answers the new text), under item 1's key.
    set_item(NS, 2, "item 1 written elsewhere");
    assert_eq!(a.scope(item(NS, 2)).await, "item 1 written elsewhere");
    let bytes = redis.get(&key(NS, 2)).expect("item 2 in Redis");
    let before = runs(NS).get();
    let (ea, eb) = (evictions(&a), evictions(&b));
    redis.set(&key(NS, 1), &bytes);
    wait_until("both instances heard the SET", || {
        evictions(&a) > ea && evictions(&b) > eb
    })
    .await;
    for rt in [&a, &b] {
        assert_eq!(rt.scope(item(NS, 1)).await, "item 1 written elsewhere");
    }
    assert_eq!(
        runs(NS).get(),
        before,
        "both read the other program's value from Redis"
    );

    // An expiry set by another program: reported when it is set (a write), and again when
    // the key expires (nobody reads it meanwhile).
    for rt in [&a, &b] {
        warm(rt, NS, 1).await;
    }
    set_item(NS, 1, "item 1 v2");
    let (ea, eb) = (evictions(&a), evictions(&b));
    redis.cmd::<()>(&[b"PEXPIRE", key(NS, 1).as_bytes(), b"20"]);
    let took = wait_until("both instances heard the PEXPIRE and the expiry", || {
        evictions(&a) >= ea + 2 && evictions(&b) >= eb + 2
    })
    .await;
    eprintln!("expiry reported after {took:?}");
    for rt in [&a, &b] {
        assert_eq!(rt.scope(item(NS, 1)).await, "item 1 v2");
    }

    // FLUSHALL: Redis reports a flush (a null invalidation), L1 starts a new epoch.
    for rt in [&a, &b] {
        warm(rt, NS, 1).await;
    }
    let (fa, fb) = (
        a.stats().total.l1_flushes_tracking,
        b.stats().total.l1_flushes_tracking,
    );
    redis.cmd::<()>(&[b"FLUSHALL"]);
    wait_until("both instances flushed L1", || {
        a.stats().total.l1_flushes_tracking > fa && b.stats().total.l1_flushes_tracking > fb
    })
    .await;
    for rt in [&a, &b] {
        assert!(!served_from_l1(rt, NS, 1).await.1, "L1 was flushed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_another_database_evicts_too_but_never_changes_a_value() {
    const NS: &str = "trk-db";
    let redis = RedisServer::start();
    let a = tracking_runtime(&redis.url(), NS).await;
    assert_eq!(warm(&a, NS, 1).await, "item 1 v0");
    let before = runs(NS).get();
    let e = evictions(&a);
    // The same key name in database 3: tracking knows names, not databases.
    let mut other = redis.conn();
    redis::cmd("SELECT")
        .arg(3)
        .query::<()>(&mut other)
        .expect("SELECT");
    redis::cmd("SET")
        .arg(key(NS, 1))
        .arg("not ours")
        .query::<()>(&mut other)
        .expect("SET");
    wait_until("the write in db 3 was reported", || evictions(&a) > e).await;
    let (v, from_l1) = served_from_l1(&a, NS, 1).await;
    assert!(!from_l1, "an extra eviction");
    assert_eq!(v, "item 1 v0", "the value, read again from database 0");
    assert_eq!(
        runs(NS).get(),
        before,
        "no recomputation: the value was in Redis"
    );
}

/// Cuts the runtime's tracking connection (`CLIENT KILL`) after taking the right to track
/// from `user`, so that it stays down until [`allow_tracking`].
async fn cut_tracking(redis: &RedisServer, rt: &Runtime, user: &str) {
    redis.cmd::<()>(&[b"ACL", b"SETUSER", user.as_bytes(), b"-client|tracking"]);
    let flushes = rt.stats().total.l1_flushes_tracking;
    let clients: String = redis.cmd(&[b"CLIENT", b"LIST"]);
    let tracker = clients
        .lines()
        .find(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("a tracking client")
        .to_owned();
    redis.cmd::<()>(&[b"CLIENT", b"KILL", b"ID", tracker.as_bytes()]);
    wait_until("L1 flushed on the loss", || {
        rt.stats().total.l1_flushes_tracking > flushes && !rt.stats().tracking
    })
    .await;
}

fn allow_tracking(redis: &RedisServer, user: &str) {
    redis.cmd::<()>(&[b"ACL", b"SETUSER", user.as_bytes(), b"+client|tracking"]);
}

async fn runtime_as(url: &str, ns: &str, degraded: Duration) -> Runtime {
    support::build(
        support::builder(url, ns)
            .degraded_l1_ttl(degraded)
            .client_tracking(true),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_tracking_connection_starts_a_new_l1_epoch_and_so_does_its_return() {
    const NS: &str = "trk-loss";
    let redis = RedisServer::start();
    let url = redis.acl_user("tracker", NS);
    // Untracked entries would live a minute: only the flushes keep old values out.
    let a = runtime_as(&url, NS, Duration::from_secs(60)).await;
    assert_eq!(warm(&a, NS, 1).await, "item 1 v0");
    cut_tracking(&redis, &a, "tracker").await;
    // A write nobody reports: the new epoch keeps the old value from being served.
    set_item(NS, 1, "item 1 v1");
    redis.cmd::<()>(&[b"DEL", key(NS, 1).as_bytes()]);
    let (v, from_l1) = served_from_l1(&a, NS, 1).await;
    assert_eq!(v, "item 1 v1");
    assert!(!from_l1);
    // Cached while untracked, then written by another program, still unreported.
    assert_eq!(warm(&a, NS, 1).await, "item 1 v1");
    set_item(NS, 1, "item 1 v2");
    redis.cmd::<()>(&[b"DEL", key(NS, 1).as_bytes()]);
    // Allowed again: the connection comes back and starts another epoch.
    allow_tracking(&redis, "tracker");
    wait_until("tracking is back", || a.stats().tracking).await;
    assert_eq!(a.stats().total.tracking_connects, 2);
    let (v, from_l1) = served_from_l1(&a, NS, 1).await;
    assert_eq!(v, "item 1 v2", "the entry cached while untracked went");
    assert!(!from_l1);
    // And writes are reported again.
    warm(&a, NS, 1).await;
    set_item(NS, 1, "item 1 v3");
    let e = evictions(&a);
    redis.cmd::<()>(&[b"DEL", key(NS, 1).as_bytes()]);
    wait_until("reported again", || evictions(&a) > e).await;
    assert_eq!(a.scope(item(NS, 1)).await, "item 1 v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_untracked_l1_entries_live_at_most_degraded_l1_ttl() {
    const NS: &str = "trk-degraded";
    let redis = RedisServer::start();
    let url = redis.acl_user("tracker2", NS);
    let a = runtime_as(&url, NS, Duration::from_millis(100)).await;
    cut_tracking(&redis, &a, "tracker2").await;
    assert_eq!(warm(&a, NS, 1).await, "item 1 v0");
    set_item(NS, 1, "item 1 v1");
    redis.cmd::<()>(&[b"DEL", key(NS, 1).as_bytes()]);
    let took = wait_until_async("the untracked entry expired", || async {
        a.scope(item(NS, 1)).await == "item 1 v1"
    })
    .await;
    eprintln!("untracked L1 entry (degraded_l1_ttl 100 ms) replaced after {took:?}");
}

/// [`wait_until`] for an async condition.
async fn wait_until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    bounded(what, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_off_makes_no_connection_and_sends_no_command() {
    const NS: &str = "trk-off";
    let redis = RedisServer::start();
    let clients_before: String = redis.cmd(&[b"CLIENT", b"LIST"]);
    let off = support::runtime(&redis.url(), NS).await;
    assert!(!off.config().client_tracking());
    let clients_off: String = redis.cmd(&[b"CLIENT", b"LIST"]);
    let on = tracking_runtime(&redis.url(), NS).await;
    let clients_on: String = redis.cmd(&[b"CLIENT", b"LIST"]);
    let count = |s: &str| s.lines().count();
    let off_conns = count(&clients_off) - count(&clients_before);
    let on_conns = count(&clients_on) - count(&clients_off);
    eprintln!("connections: tracking off {off_conns}, tracking on {on_conns}");
    assert_eq!(on_conns, off_conns + 1, "tracking is one connection more");
    assert_eq!(
        redis.calls("client|tracking"),
        1,
        "only the runtime with tracking on"
    );
    let s = off.stats();
    assert!(!s.tracking);
    assert_eq!(s.total.tracking_connects, 0);
    // Without tracking, an external DEL is not seen: the L1 copy stays until its TTL (the
    // documented reason to turn tracking on).
    assert_eq!(warm(&off, NS, 1).await, "item 1 v0");
    let e = evictions(&on);
    redis.cmd::<()>(&[b"DEL", key(NS, 1).as_bytes()]);
    wait_until("the runtime with tracking heard it", || evictions(&on) > e).await;
    assert!(served_from_l1(&off, NS, 1).await.1);
    assert_eq!(off.stats().total.tracking_evictions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_is_refused_where_it_cannot_work() {
    let redis = RedisServer::start();
    // A user that may not track: build() says so.
    let url = redis.acl_user("nottrack", "trk-acl");
    redis.cmd::<()>(&[b"ACL", b"SETUSER", b"nottrack", b"-client|tracking"]);
    let err = Runtime::builder()
        .namespace("trk-acl")
        .redis_url(url)
        .client_tracking(true)
        .build()
        .await
        .expect_err("CLIENT TRACKING refused");
    assert!(matches!(err, tiered::Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("CLIENT TRACKING"), "{err}");
}

static SLOW_RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);

#[tiered_cache(key = "slow:<id>", ttl = "60s", promote = 1)]
async fn slow(id: u64) -> u64 {
    SLOW_RUNS.hit();
    tokio::time::sleep(Duration::from_millis(100)).await;
    id * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_of_a_missing_key_still_run_the_body_once() {
    // The lease taken on the miss comes back as a push and detaches the flight: callers that
    // arrive afterwards wait on the Redis lease, like another instance's callers.
    const NS: &str = "trk-coalesce";
    let redis = RedisServer::start();
    let a = tracking_runtime(&redis.url(), NS).await;
    let b = tracking_runtime(&redis.url(), NS).await;
    let mut calls = Vec::new();
    for i in 0..40u64 {
        let rt = if i % 2 == 0 { a.clone() } else { b.clone() };
        calls.push(tokio::spawn(rt.scope(slow(7))));
        if i % 8 == 0 {
            // Some callers arrive after the lease's push.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for c in calls {
        assert_eq!(bounded("caller", c).await.expect("task"), 70);
    }
    SLOW_RUNS.assert_runs(1);
    let (sa, sb) = (a.stats().total, b.stats().total);
    eprintln!(
        "40 callers over two instances: body runs 1, coalesced waits {}, lease waits {}",
        sa.coalesced_waits + sb.coalesced_waits,
        sa.lease_waits + sb.lease_waits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_tracking_link_is_noticed_by_its_heartbeat() {
    const NS: &str = "trk-halfopen";
    let redis = RedisServer::start();
    let proxy = support::Proxy::start(redis.addr()).await;
    let a = tracking_runtime(&proxy.url(), NS).await;
    assert_eq!(warm(&a, NS, 1).await, "item 1 v0");
    let flushes = a.stats().total.l1_flushes_tracking;
    // Every connection but the subscriber's goes silent, the tracking one among them: no
    // error, no close, no push.
    let start = Instant::now();
    proxy.set_mode_where(support::Mode::Blackhole, support::Target::Data);
    wait_until("the heartbeat noticed", || {
        a.stats().total.l1_flushes_tracking > flushes && !a.stats().tracking
    })
    .await;
    eprintln!(
        "half-open tracking link noticed (L1 flushed) after {:?}",
        start.elapsed()
    );
    assert!(a.stats().subscribed, "the bus was not touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_the_last_drop_close_the_tracking_connection() {
    const NS: &str = "trk-close";
    let redis = RedisServer::start();
    let before = clients(&redis);
    let a = tracking_runtime(&redis.url(), NS).await;
    assert!(clients(&redis) > before);
    bounded("shutdown", a.shutdown()).await;
    wait_until("every connection closed", || clients(&redis) == before).await;
    assert!(!a.stats().tracking);
    let b = tracking_runtime(&redis.url(), NS).await;
    assert!(clients(&redis) > before);
    drop(b);
    wait_until("every connection closed after the drop", || {
        clients(&redis) == before
    })
    .await;
}
