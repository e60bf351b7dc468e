//! Client tracking under pauses: a write reported while a value read from Redis waits to be
//! promoted keeps it out of L1 (the tracking push may overtake the data reply: two
//! connections), and pushes dropped by a full queue flush L1.

use crate::support;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use support::{RedisServer, bounded, wait_until};
use tiered::{Runtime, tiered_cache};

static ITEMS: LazyLock<Mutex<HashMap<(String, u64), String>>> = LazyLock::new(Default::default);

fn set_item(ns: &str, id: u64, text: &str) {
    if let Ok(mut items) = ITEMS.lock() {
        items.insert((ns.to_owned(), id), text.to_owned());
    }
}

#[tiered_cache(key = "titem:<id>", ttl = "60s", promote = 1)]
async fn titem(ns: &'static str, id: u64) -> String {
    ITEMS
        .lock()
        .ok()
        .and_then(|items| items.get(&(ns.to_owned(), id)).cloned())
        .unwrap_or_else(|| format!("v0 of {id}"))
}

fn key(ns: &str, id: u64) -> String {
    format!("{ns}:titem:<{id}>")
}

async fn tracking_runtime(url: &str, ns: &str, queue: usize) -> Runtime {
    support::build(
        support::builder(url, ns)
            .bus_queue(queue)
            .client_tracking(true),
    )
    .await
}

fn evictions(rt: &Runtime) -> u64 {
    rt.stats().total.tracking_evictions
}

/// Whether the next call is an L1 hit, and its value.
async fn call(rt: &Runtime, ns: &'static str, id: u64) -> (String, bool) {
    let hits = rt.stats().total.l1_hits;
    let v = bounded("call", rt.scope(titem(ns, id))).await;
    (v, rt.stats().total.l1_hits > hits)
}

/// Calls until the value is an L1 hit and no eviction came for 20 ms (the pushes of the
/// runtime's own lease and fill have arrived).
async fn warm(rt: &Runtime, ns: &'static str, id: u64) {
    bounded("warm", async {
        loop {
            if call(rt, ns, id).await.1 {
                let e = evictions(rt);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if evictions(rt) == e {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reported_while_a_read_value_waits_for_promotion_keeps_it_out_of_l1() {
    const NS: &str = "trk-race";
    let redis = RedisServer::start();
    let a = tracking_runtime(&redis.url(), NS, 1024).await;
    let b = tracking_runtime(&redis.url(), NS, 1024).await;
    for id in 0..20u64 {
        // A fills Redis (its lease, then its value: two writes, two pushes); B reads the
        // value from Redis and is paused before its L1 insert.
        let heard = evictions(&b);
        assert_eq!(call(&a, NS, id).await.0, format!("v0 of {id}"));
        wait_until("B heard A's lease and fill", || evictions(&b) >= heard + 2).await;
        b.hooks().promotion.close();
        let pending = tokio::spawn(b.scope(titem(NS, id)));
        b.hooks().promotion.wait_reached(id as usize + 1).await;
        // Another program changes the value now; B hears of it before its insert.
        set_item(NS, id, &format!("v1 of {id}"));
        let e = evictions(&b);
        redis.cmd::<()>(&[b"DEL", key(NS, id).as_bytes()]);
        wait_until("B heard the DEL", || evictions(&b) > e).await;
        b.hooks().promotion.open();
        assert_eq!(
            bounded("paused call", pending).await.expect("task"),
            format!("v0 of {id}"),
            "read before the write"
        );
        let (v, _) = call(&b, NS, id).await;
        assert_eq!(
            v,
            format!("v1 of {id}"),
            "id {id}: B kept the value read before the DEL in L1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_dropped_by_a_full_queue_flush_l1() {
    const NS: &str = "trk-full";
    let redis = RedisServer::start();
    let a = tracking_runtime(&redis.url(), NS, 2).await;
    for id in 0..8u64 {
        warm(&a, NS, id).await;
    }
    let flushes = a.stats().total.l1_flushes_tracking;
    // The reader stops taking pushes; eight DELs (eight pushes) overflow a queue of two.
    a.hooks().tracking.close();
    for id in 0..8u64 {
        set_item(NS, id, &format!("v1 of {id}"));
        redis.cmd::<()>(&[b"DEL", key(NS, id).as_bytes()]);
    }
    wait_until("pushes dropped", || {
        a.stats().total.tracking_pushes_dropped > 0
    })
    .await;
    a.hooks().tracking.open();
    wait_until("L1 flushed", || {
        a.stats().total.l1_flushes_tracking > flushes
    })
    .await;
    for id in 0..8u64 {
        let (v, from_l1) = call(&a, NS, id).await;
        assert_eq!(
            v,
            format!("v1 of {id}"),
            "id {id}: its push was dropped, L1 was not kept"
        );
        assert!(!from_l1);
    }
    eprintln!(
        "pushes dropped {}, L1 flushes (tracking) {}",
        a.stats().total.tracking_pushes_dropped,
        a.stats().total.l1_flushes_tracking - flushes
    );
}
