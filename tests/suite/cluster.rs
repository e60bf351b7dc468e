//! L2 on a Redis Cluster (3 masters, spawned per test by `support::cluster`): the same API as on
//! one server. Clusters are formed one at a time per process (a few seconds each on 2 cores).

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};

use support::cluster::Cluster;
use support::{bounded, wait_until};
use tiered::{ClusterBus, Runtime, tiered_cache};

static RUNS: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "profile:<tenant>:<id>", ttl = "60s", promote = 1)]
async fn profile(tenant: String, id: u64) -> String {
    RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{tenant}/{id}")
}

/// A runtime on the classic bus (the tests written for it; the default is the sharded bus).
async fn runtime(cluster: &Cluster, ns: &str) -> Runtime {
    runtime_with(cluster, ns, ClusterBus::Classic).await
}

async fn runtime_with(cluster: &Cluster, ns: &str, bus: ClusterBus) -> Runtime {
    bounded(
        "build",
        Runtime::builder()
            .namespace(ns)
            .redis_cluster(cluster.urls())
            .cluster_bus(bus)
            .build(),
    )
    .await
    .expect("runtime on the cluster")
}

/// The invalidation channel of namespace `ns` (its slot decides where the sharded bus lives).
fn channel(ns: &str) -> String {
    format!("{ns}:tiered:invalidate:db0:v2")
}

/// Scenario 29 (part): keys of many tenants, some with `{` and `}` in their input (never hash
/// tags: the key encoding escapes them), spread over every master; two instances share values
/// through the cluster (one body run per key), with 0 errors (no `CROSSSLOT`); a key
/// invalidation from A reaches B, and `invalidate_all_<fn>()` and `invalidate_all()` work across
/// masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_29_tenants_spread_over_every_master_and_invalidations_reach_every_instance() {
    let cluster = Cluster::start(3);
    let (a, b) = (
        runtime(&cluster, "c29").await,
        runtime(&cluster, "c29").await,
    );
    let tenants = ["acme", "{acme}", "a{b}c", "}{", "{", "globex"];
    for t in tenants {
        for id in 0..20 {
            assert_eq!(
                a.scope(profile(t.to_owned(), id)).await,
                format!("{t}/{id}")
            );
        }
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 120);
    for t in tenants {
        for id in 0..20 {
            assert_eq!(
                b.scope(profile(t.to_owned(), id)).await,
                format!("{t}/{id}")
            );
        }
    }
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        120,
        "B read every value from L2"
    );
    let per_master: Vec<i64> = cluster
        .masters()
        .iter()
        .map(|m| m.cmd::<i64>(&[b"DBSIZE"]))
        .collect();
    println!("scenario 29: 120 keys of 6 tenants; keys per master {per_master:?}");
    assert!(per_master.iter().all(|n| *n > 0), "every master holds keys");
    let (sa, sb) = (a.stats().total, b.stats().total);
    assert_eq!(
        (sa.l2_errors, sb.l2_errors),
        (0, 0),
        "no CROSSSLOT or other error"
    );
    assert_eq!(sb.l2_hits, 120);

    // A key invalidation from A reaches B (B's L1 holds the value: promote = 1).
    let received = b.stats().total.invalidations_received;
    a.scope(invalidate_profile("{acme}".to_owned(), 3))
        .await
        .expect("invalidate");
    wait_until("B to hear it", || {
        b.stats().total.invalidations_received > received
    })
    .await;
    assert_eq!(b.scope(profile("{acme}".to_owned(), 3)).await, "{acme}/3");
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        121,
        "B recomputed the invalidated key"
    );

    // Group invalidations, whose generations live on one master, reach keys on every master.
    a.scope(invalidate_all_profile())
        .await
        .expect("invalidate_all_profile");
    a.invalidate_all().await.expect("invalidate_all");
    let before = RUNS.load(Ordering::SeqCst);
    for t in tenants {
        assert_eq!(a.scope(profile(t.to_owned(), 0)).await, format!("{t}/0"));
    }
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        before + 6,
        "every tenant's key recomputed"
    );
    assert_eq!(a.stats().total.l2_errors, 0);

    // The same invalidations with the sharded bus (`SPUBLISH`/`SSUBSCRIBE` at the master of the
    // channel's slot), on the same cluster, in another namespace.
    let (c, d) = (
        runtime_with(&cluster, "c29s", ClusterBus::Sharded).await,
        runtime_with(&cluster, "c29s", ClusterBus::Sharded).await,
    );
    assert!(c.stats().subscribed && d.stats().subscribed);
    for t in tenants {
        assert_eq!(c.scope(profile(t.to_owned(), 0)).await, format!("{t}/0"));
        assert_eq!(d.scope(profile(t.to_owned(), 0)).await, format!("{t}/0"));
    }
    let runs = RUNS.load(Ordering::SeqCst);
    let received = d.stats().total.invalidations_received;
    c.scope(invalidate_profile("a{b}c".to_owned(), 0))
        .await
        .expect("invalidate");
    wait_until("D to hear it", || {
        d.stats().total.invalidations_received > received
    })
    .await;
    assert_eq!(d.scope(profile("a{b}c".to_owned(), 0)).await, "a{b}c/0");
    assert_eq!(RUNS.load(Ordering::SeqCst), runs + 1, "D recomputed it");
    c.scope(invalidate_all_profile())
        .await
        .expect("invalidate_all_profile");
    wait_until("D to hear it", || {
        d.stats().total.invalidations_received > received + 1
    })
    .await;
    for t in tenants {
        assert_eq!(d.scope(profile(t.to_owned(), 0)).await, format!("{t}/0"));
    }
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        runs + 7,
        "every tenant's key recomputed"
    );
    let (sc, sd) = (c.stats().total, d.stats().total);
    assert_eq!((sc.l2_errors, sd.l2_errors), (0, 0));
    let shard_published: i64 = cluster
        .masters()
        .iter()
        .map(|m| {
            let info: String = m.cmd(&[b"CLUSTER", b"INFO"]);
            info.lines()
                .find_map(|l| l.strip_prefix("cluster_stats_messages_publishshard_sent:"))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0)
        })
        .sum();
    println!(
        "scenario 29 (sharded bus): invalidations reached D; shard messages sent over the cluster bus {shard_published} (no replicas: 0 expected)"
    );

    // Tags on the cluster (sharded bus): the tag generations live in the generations hash on
    // one master, the tagged keys on every master; one call drops a tenant's entries in both
    // instances and spares the other tenants'.
    for t in tenants {
        for rt in [&c, &d] {
            assert_eq!(
                rt.scope(tagged(t.to_owned(), 1)).await,
                format!("tagged {t}/1")
            );
        }
    }
    assert_eq!(TAGGED_RUNS.load(Ordering::SeqCst), 6, "D read C's values");
    let received = d.stats().total.invalidations_received;
    c.invalidate_tag("tenant:{acme}")
        .await
        .expect("invalidate_tag");
    wait_until("D to hear the tag", || {
        d.stats().total.invalidations_received > received
    })
    .await;
    for t in tenants {
        for rt in [&c, &d] {
            assert_eq!(
                rt.scope(tagged(t.to_owned(), 1)).await,
                format!("tagged {t}/1")
            );
        }
    }
    assert_eq!(
        TAGGED_RUNS.load(Ordering::SeqCst),
        7,
        "only {{acme}}'s entry was recomputed, once for both instances"
    );
    let (sc, sd) = (c.stats().total, d.stats().total);
    assert_eq!((sc.l2_errors, sd.l2_errors), (0, 0));
}

static TAGGED_RUNS: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "tagged:<tenant>:<id>", ttl = "60s", promote = 1, tags = ["tenant:<tenant>"])]
async fn tagged(tenant: String, id: u64) -> String {
    TAGGED_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("tagged {tenant}/{id}")
}

/// The node that holds the invalidation subscription dies: the subscriber notices, flushes L1
/// (messages may be lost in the gap) and subscribes again on the next seed node, without
/// traffic and without a runtime restart. (The cluster itself is down for keys of the dead
/// master's slots meanwhile: no replicas here; failover is scenario 31's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_moves_to_another_seed_node_when_its_node_dies() {
    let mut cluster = Cluster::start(3);
    let a = runtime(&cluster, "cm").await;
    assert!(a.stats().subscribed);
    let flushes = a.stats().total.l1_flushes_disconnect;
    let subscribes = a.stats().total.bus_subscribes;
    let killed = std::time::Instant::now();
    cluster.kill(0);
    let noticed = wait_until("the gap to be noticed", || {
        a.stats().total.l1_flushes_disconnect > flushes
    })
    .await;
    let back = wait_until("a subscription on another node", || {
        let s = a.stats();
        s.subscribed && s.total.bus_subscribes > subscribes
    })
    .await;
    println!(
        "subscription node killed: gap noticed after {noticed:?}, subscribed again on another seed node {:?} after the kill",
        killed.elapsed()
    );
    let _ = back;
}

static VERSION: AtomicU64 = AtomicU64::new(1);
static HOT_RUNS: AtomicU64 = AtomicU64::new(0);

/// L2 only: every call crosses the cluster (and so the slot move).
#[tiered_cache(key = "hot:<id>", ttl = "60s", tiers = "l2")]
async fn hot(id: u64) -> String {
    HOT_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{id}@v{}", VERSION.load(Ordering::SeqCst))
}

/// Both tiers: B keeps it in L1, so only the invalidation message can make B read it again.
#[tiered_cache(key = "warm:<id>", ttl = "60s", promote = 1)]
async fn warm(id: u64) -> String {
    format!("{id}@v{}", VERSION.load(Ordering::SeqCst))
}

/// Scenario 30: a slot moves to another master (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, its
/// keys `MIGRATE`d, then `SETSLOT … NODE` everywhere) while two instances keep calling a key of
/// that slot through L2: every call answers with a value of that key (0 caller errors); after
/// each invalidation from A has returned, B reads the new version, from Redis and from its L1
/// (0 stale reads); the subscription stays up throughout (classic `PUBLISH` reaches every node,
/// so a slot move does not touch it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_30_a_slot_moves_under_traffic_without_errors_or_stale_reads() {
    use support::cluster::key_slot;
    let cluster = Cluster::start(3);
    let (a, b) = (
        runtime(&cluster, "c30").await,
        runtime(&cluster, "c30").await,
    );
    let slot = key_slot("c30:hot:<7>");
    assert_eq!(
        slot,
        cluster.slot_of("c30:hot:<7>"),
        "the slot computed as Redis does"
    );
    // A key of the other function in the same slot.
    let w = (0u64..)
        .find(|j| key_slot(&format!("c30:warm:<{j}>")) == slot)
        .expect("a key in the slot");
    let owner = cluster.owner_of("c30:hot:<7>").port();
    let target = cluster
        .nodes()
        .iter()
        .position(|n| n.port() != owner)
        .expect("another master");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|rt| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v = bounded("hot call", rt.scope(hot(7))).await;
                    assert!(v.starts_with("7@v"), "another key's value: {v}");
                    calls += 1;
                    tokio::task::yield_now().await;
                }
                calls
            })
        })
        .collect();
    let mut stale = 0;
    for round in 0..6 {
        if round == 3 {
            let t = std::time::Instant::now();
            cluster.move_slot(slot, target);
            println!("scenario 30: slot {slot} moved in {:?}", t.elapsed());
        }
        assert_eq!(
            b.scope(warm(w)).await,
            format!("{w}@v{}", VERSION.load(Ordering::SeqCst))
        );
        let received = b.stats().total.invalidations_received;
        let new = VERSION.fetch_add(1, Ordering::SeqCst) + 1;
        a.scope(invalidate_warm(w)).await.expect("invalidate warm");
        a.scope(invalidate_hot(7)).await.expect("invalidate hot");
        wait_until("B to hear it", || {
            b.stats().total.invalidations_received >= received + 2
        })
        .await;
        if b.scope(warm(w)).await != format!("{w}@v{new}") {
            stale += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut calls = 0;
    for t in traffic {
        calls += bounded("traffic", t).await.expect("no panic");
    }
    let (sa, sb) = (a.stats(), b.stats());
    println!(
        "scenario 30: {calls} calls through L2 across the move, {} body runs; stale reads {stale}; L2 errors A {} B {}, timeouts A {} B {}; subscribed A {} B {}, subscriptions B {}",
        HOT_RUNS.load(Ordering::SeqCst),
        sa.total.l2_errors,
        sb.total.l2_errors,
        sa.total.l2_timeouts,
        sb.total.l2_timeouts,
        sa.subscribed,
        sb.subscribed,
        sb.total.bus_subscribes
    );
    assert_eq!(stale, 0);
    assert!(sa.subscribed && sb.subscribed);
    assert_eq!(sb.total.bus_subscribes, 1, "the subscription never dropped");
    assert_eq!(
        cluster.owner_of("c30:hot:<7>").port(),
        cluster.nodes()[target].port()
    );
}

/// Scenario 30 with the sharded bus: the slot of the invalidation channel moves to another
/// master while two instances call a key through L2 and A keeps invalidating a key B holds in
/// L1. The server ends the sharded subscriptions at the old master (`sunsubscribe`); both
/// instances flush L1 and subscribe again at the new master by themselves. Every call answers
/// (0 caller errors); after each invalidation from A has returned, B reads the new version
/// once it heard the message or resubscribed (0 stale reads); the subscriptions end up at the
/// new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_30_the_channel_slot_moves_and_the_sharded_subscription_follows() {
    use support::cluster::key_slot;
    let cluster = Cluster::start(3);
    let (a, b) = (
        runtime_with(&cluster, "c30s", ClusterBus::Sharded).await,
        runtime_with(&cluster, "c30s", ClusterBus::Sharded).await,
    );
    let chan = channel("c30s");
    let slot = key_slot(&chan);
    let owner = cluster.owner_of(&chan).port();
    let target = cluster
        .nodes()
        .iter()
        .position(|n| n.port() != owner)
        .expect("another master");
    let subscribers = |port: u16| -> i64 {
        let n = cluster
            .nodes()
            .iter()
            .find(|n| n.port() == port)
            .expect("node");
        let reply: Vec<redis::Value> = n.cmd(&[b"PUBSUB", b"SHARDNUMSUB", chan.as_bytes()]);
        match reply.get(1) {
            Some(redis::Value::Int(k)) => *k,
            _ => -1,
        }
    };
    assert_eq!(
        subscribers(owner),
        2,
        "both subscribed at the channel's master"
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|rt| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v = bounded("hot call", rt.scope(hot(8))).await;
                    assert!(v.starts_with("8@v"), "another key's value: {v}");
                    calls += 1;
                    tokio::task::yield_now().await;
                }
                calls
            })
        })
        .collect();
    let (mut stale, mut resubscribed_rounds) = (0, 0);
    for round in 0..6 {
        if round == 3 {
            let t = std::time::Instant::now();
            cluster.move_slot(slot, target);
            println!(
                "scenario 30 (sharded): channel slot {slot} moved in {:?}",
                t.elapsed()
            );
        }
        assert_eq!(
            b.scope(warm(100)).await,
            format!("100@v{}", VERSION.load(Ordering::SeqCst))
        );
        let (received, subscribes) = {
            let s = b.stats().total;
            (s.invalidations_received, s.bus_subscribes)
        };
        let new = VERSION.fetch_add(1, Ordering::SeqCst) + 1;
        bounded("the invalidation", async {
            // Retried while the slot moves (an invalidation reports what it could not do).
            while a.scope(invalidate_warm(100)).await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        wait_until("B to hear it or to subscribe again", || {
            let s = b.stats();
            s.total.invalidations_received > received
                || (s.subscribed && s.total.bus_subscribes > subscribes)
        })
        .await;
        if b.stats().total.invalidations_received == received {
            resubscribed_rounds += 1;
        }
        if b.scope(warm(100)).await != format!("100@v{new}") {
            stale += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut calls = 0;
    for t in traffic {
        calls += bounded("traffic", t).await.expect("no panic");
    }
    wait_until("both subscribed again", || {
        a.stats().subscribed && b.stats().subscribed
    })
    .await;
    let (sa, sb) = (a.stats().total, b.stats().total);
    let new_owner = cluster.nodes()[target].port();
    println!(
        "scenario 30 (sharded): {calls} calls across the move; stale reads {stale}; rounds where B resubscribed before hearing the message {resubscribed_rounds}; subscriptions A {} B {}; subscribers at the new master {}, at the old {}; L2 errors A {} B {}",
        sa.bus_subscribes,
        sb.bus_subscribes,
        subscribers(new_owner),
        subscribers(owner),
        sa.l2_errors,
        sb.l2_errors
    );
    assert_eq!(stale, 0);
    assert_eq!(cluster.owner_of(&chan).port(), new_owner);
    assert!(
        sb.bus_subscribes >= 2 && sa.bus_subscribes >= 2,
        "both subscribed again after the move"
    );
    assert_eq!(
        subscribers(new_owner),
        2,
        "both now subscribed at the new master"
    );
    assert_eq!(subscribers(owner), 0);
}

static SHARD_RUNS: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "shard:<id>", ttl = "60s", tiers = "l2")]
async fn shard(id: u64) -> String {
    SHARD_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("value-of-{id}")
}

#[tiered_cache(key = "held:<id>", ttl = "60s", promote = 1)]
async fn held(id: u64) -> String {
    format!("{id}@v{}", VERSION.load(Ordering::SeqCst))
}

/// Reads `shard(id)` until it is an L2 hit (bounded); returns how long that took.
async fn until_l2_hit(rt: &Runtime, id: u64) -> std::time::Duration {
    let start = std::time::Instant::now();
    bounded("an L2 hit", async {
        loop {
            let hits = rt.stats().total.l2_hits;
            assert_eq!(rt.scope(shard(id)).await, format!("value-of-{id}"));
            if rt.stats().total.l2_hits > hits {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    start.elapsed()
}

/// Scenario 31, with replicas (3 masters + 3 replicas): a graceful `CLUSTER FAILOVER`, then a
/// master killed and its replica promoted by the cluster, while B calls 30 keys spread over
/// every master through L2. Every call answers with its key's value (0 caller errors) under a
/// 1 s ceiling; redirects are followed: L2 hits resume on the promoted masters without a
/// runtime restart; invalidations from A still reach B (its subscription moves if its node
/// died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_31_failover_with_replicas_is_followed_without_errors() {
    let mut cluster = Cluster::start_with_replicas(3, 1);
    let (a, b) = (
        runtime(&cluster, "c31").await,
        runtime(&cluster, "c31").await,
    );
    // A pair on the sharded bus too, whose channel lives on the master failed over first.
    let (c, d) = (
        runtime_with(&cluster, "c31s", ClusterBus::Sharded).await,
        runtime_with(&cluster, "c31s", ClusterBus::Sharded).await,
    );
    for id in 0..30 {
        assert_eq!(a.scope(shard(id)).await, format!("value-of-{id}"));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut calls, mut worst) = (0u64, std::time::Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let id = calls % 30;
                let t = std::time::Instant::now();
                assert_eq!(
                    bounded("a call", b.scope(shard(id))).await,
                    format!("value-of-{id}")
                );
                worst = worst.max(t.elapsed());
                calls += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            (calls, worst)
        })
    };
    // 1. A graceful failover of the master of the sharded pair's channel.
    let m = cluster.master_index_of(&channel("c31s"));
    let id1 = (0..30)
        .find(|id| cluster.master_index_of(&format!("c31:shard:<{id}>")) == m)
        .expect("a key of that master");
    let r = cluster.replica_index_of(m);
    let t = std::time::Instant::now();
    cluster.nodes()[r].cmd::<()>(&[b"CLUSTER", b"FAILOVER"]);
    cluster.wait_master(r);
    let promoted = t.elapsed();
    let hit_after_failover = until_l2_hit(&b, id1).await;
    let sharded_after_failover = invalidation_reaches(&c, &d).await;
    // 2. Another master killed: the cluster promotes its replica.
    let m2 = (0..30)
        .map(|id| cluster.master_index_of(&format!("c31:shard:<{id}>")))
        .find(|i| *i != r)
        .expect("another master");
    let id2 = (0..30)
        .find(|id| cluster.master_index_of(&format!("c31:shard:<{id}>")) == m2)
        .expect("a key of that master");
    let r2 = cluster.replica_index_of(m2);
    let t = std::time::Instant::now();
    cluster.kill(m2);
    cluster.wait_master(r2);
    let promoted2 = t.elapsed();
    let hit_after_kill = until_l2_hit(&b, id2).await;
    let sharded_after_kill = invalidation_reaches(&c, &d).await;
    // Invalidations still reach B.
    assert_eq!(
        b.scope(held(1)).await,
        format!("1@v{}", VERSION.load(Ordering::SeqCst))
    );
    let new = VERSION.fetch_add(1, Ordering::SeqCst) + 1;
    let received = b.stats().total.invalidations_received;
    bounded("the invalidation", async {
        // Retried while the cluster settles (an invalidation reports what it could not do).
        while a.scope(invalidate_held(1)).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    wait_until("B to hear it", || {
        b.stats().total.invalidations_received > received
    })
    .await;
    assert_eq!(b.scope(held(1)).await, format!("1@v{new}"));
    stop.store(true, Ordering::Relaxed);
    let (calls, worst) = bounded("traffic", traffic).await.expect("no panic");
    let s = b.stats().total;
    println!(
        "scenario 31 (replicas): CLUSTER FAILOVER promoted the replica in {promoted:?}, B's L2 hit {hit_after_failover:?} later; master killed, replica promoted in {promoted2:?}, B's L2 hit {hit_after_kill:?} later; {calls} calls, slowest {worst:?} (ceiling 1 s), B: {} L2 errors, {} timeouts, {} skips, {} body runs in all",
        s.l2_errors,
        s.l2_timeouts,
        s.l2_skips,
        SHARD_RUNS.load(Ordering::SeqCst)
    );
    let sd = d.stats().total;
    println!(
        "scenario 31 (replicas, sharded bus): D read the new value {sharded_after_failover:?} after the failover and {sharded_after_kill:?} after the kill; D subscribed {} times, L2 errors {}",
        sd.bus_subscribes, sd.l2_errors
    );
    assert!(
        worst < std::time::Duration::from_secs(1),
        "a call took {worst:?}"
    );
}

/// C invalidates `held(2)`, which D holds in L1 (retried while the cluster settles), and D
/// reads the new version once it heard the message or subscribed again (after which its L1
/// was flushed). Returns how long that took.
async fn invalidation_reaches(c: &Runtime, d: &Runtime) -> std::time::Duration {
    let t = std::time::Instant::now();
    assert_eq!(
        d.scope(held(2)).await,
        format!("2@v{}", VERSION.load(Ordering::SeqCst))
    );
    let (received, subscribes) = {
        let s = d.stats().total;
        (s.invalidations_received, s.bus_subscribes)
    };
    let new = VERSION.fetch_add(1, Ordering::SeqCst) + 1;
    bounded("the invalidation", async {
        while c.scope(invalidate_held(2)).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    wait_until("D to hear it or to subscribe again", || {
        let s = d.stats();
        s.total.invalidations_received > received
            || (s.subscribed && s.total.bus_subscribes > subscribes)
    })
    .await;
    assert_eq!(d.scope(held(2)).await, format!("2@v{new}"), "no stale read");
    t.elapsed()
}

static REPLICATED_RUNS: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "replicated:<id>", ttl = "60s", promote = 1)]
async fn replicated(id: u64) -> String {
    REPLICATED_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{id}@v{}", VERSION.load(Ordering::SeqCst))
}

/// `replica_reads` (3 masters + 3 replicas; this also proves the test cluster replicates):
/// values another instance wrote are served from the replicas (counted in `replica_hits`)
/// and never kept in L1, although the function promotes every L2 hit; a miss falls back to
/// the master (one body run, filled under the lease). A lagging replica (`CLIENT PAUSE
/// WRITE` on it stops it applying its master's stream) still returns a value after its
/// `DEL`: the caller gets that old value (the documented price of replica reads), but since
/// it was not kept, the first call after the replica caught up reads the new value. A frozen
/// replica (SIGSTOP): calls fall back to the master within the time box, then its breaker
/// opens and the replica is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_are_served_but_never_kept() {
    let cluster = Cluster::start_with_replicas(3, 1);
    let writer = runtime_with(&cluster, "rr", ClusterBus::Sharded).await;
    let reader = bounded(
        "build",
        Runtime::builder()
            .namespace("rr")
            .redis_cluster(cluster.urls())
            .replica_reads(true)
            .l2_timeout(std::time::Duration::from_millis(100))
            .build(),
    )
    .await
    .expect("runtime with replica reads");
    assert!(reader.config().replica_reads());
    let v = VERSION.load(Ordering::SeqCst);
    for id in 0..12 {
        assert_eq!(writer.scope(replicated(id)).await, format!("{id}@v{v}"));
    }
    let copies = || -> i64 {
        cluster
            .replicas()
            .iter()
            .map(|r| r.cmd::<i64>(&[b"DBSIZE"]))
            .sum()
    };
    wait_until("the replicas to hold the masters' keys", || copies() >= 12).await;
    // The first read of a function learns its generations from the master (a replica's
    // value is served only against known generations). Replicas that the cluster lists only
    // after the reader connected are picked up when its slot map shows them (read every
    // second).
    let t = std::time::Instant::now();
    bounded("every key a replica hit", async {
        loop {
            let hits = reader.stats().total.replica_hits;
            for id in 0..12 {
                assert_eq!(reader.scope(replicated(id)).await, format!("{id}@v{v}"));
            }
            reader.flush_l1();
            if reader.stats().total.replica_hits == hits + 12 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    println!(
        "replica reads: every shard's replica read {:?} after the reader's first call",
        t.elapsed()
    );
    let before = reader.stats().total;
    for _ in 0..2 {
        for id in 0..12 {
            assert_eq!(reader.scope(replicated(id)).await, format!("{id}@v{v}"));
        }
    }
    let mut s = reader.stats().total;
    s.replica_hits -= before.replica_hits;
    s.replica_fallbacks -= before.replica_fallbacks;
    s.l1_hits -= before.l1_hits;
    s.promotions -= before.promotions;
    println!(
        "replica reads: 24 calls: replica hits {}, fallbacks {}, L1 hits {}, promotions {}, body runs {}",
        s.replica_hits,
        s.replica_fallbacks,
        s.l1_hits,
        s.promotions,
        REPLICATED_RUNS.load(Ordering::SeqCst)
    );
    assert_eq!((s.replica_hits, s.l1_hits, s.promotions), (24, 0, 0));
    assert_eq!(REPLICATED_RUNS.load(Ordering::SeqCst), 12);
    assert_eq!(reader.stats().l1_entries, 0, "nothing kept in L1");

    // A miss: the master's read, the lease, one body run.
    assert_eq!(reader.scope(replicated(50)).await, format!("50@v{v}"));
    assert_eq!(REPLICATED_RUNS.load(Ordering::SeqCst), 13);
    assert!(reader.stats().total.replica_fallbacks >= 1);

    // A lagging replica returns a value after its DEL; it is served, and not kept. (A read
    // falls back to the master when the reader does not know the generations at that moment,
    // e.g. after a flush: then another key of the same master is tried.)
    let m = cluster.master_index_of("rr:replicated:<3>");
    let replica = &cluster.nodes()[cluster.replica_index_of(m)];
    let on_m: Vec<u64> = (0..12)
        .filter(|id| cluster.master_index_of(&format!("rr:replicated:<{id}>")) == m)
        .collect();
    let mut proven = None;
    for &id in on_m.iter().take(3) {
        let old = VERSION.load(Ordering::SeqCst);
        replica.client_pause(3_000, support::Pause::Write);
        let new = VERSION.fetch_add(1, Ordering::SeqCst) + 1;
        let received = reader.stats().total.invalidations_received;
        writer
            .scope(invalidate_replicated(id))
            .await
            .expect("invalidate");
        wait_until("the reader to hear it", || {
            reader.stats().total.invalidations_received > received
        })
        .await;
        let before = reader.stats().total;
        let lagging = reader.scope(replicated(id)).await;
        let after = reader.stats().total;
        println!(
            "replica reads: key {id}: the lagging replica's read answered {lagging} after the DEL (new version {new}); replica hits +{}, fallbacks +{}, L1 flushes so far {}",
            after.replica_hits - before.replica_hits,
            after.replica_fallbacks - before.replica_fallbacks,
            after.l1_flushes
        );
        let served_by_replica = after.replica_hits > before.replica_hits;
        if served_by_replica {
            assert_eq!(
                lagging,
                format!("{id}@v{old}"),
                "the replica still had the old value"
            );
        }
        replica.cmd::<()>(&[b"CLIENT", b"UNPAUSE"]);
        cluster.nodes()[m].cmd::<i64>(&[b"WAIT", b"1", b"2000"]);
        assert_eq!(
            reader.scope(replicated(id)).await,
            format!("{id}@v{new}"),
            "the old value was not kept"
        );
        if served_by_replica {
            proven = Some((id, new));
            break;
        }
        reader.flush_l1();
    }
    let (id, new) = proven.expect("a lagging replica's value was served once");

    // A frozen replica: the master answers, within the time box; then its breaker opens.
    let timeouts = reader.stats().total.l2_timeouts;
    replica.freeze();
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        assert_eq!(reader.scope(replicated(id)).await, format!("{id}@v{new}"));
        worst = worst.max(t.elapsed());
        reader.flush_l1();
    }
    replica.thaw();
    let s = reader.stats().total;
    println!(
        "replica reads: 20 calls with the key's replica frozen (SIGSTOP): slowest {worst:?} (ceiling 1 s), L2 timeouts {}, skips {}, breaker transitions {}",
        s.l2_timeouts - timeouts,
        s.l2_skips,
        s.breaker_transitions
    );
    assert!(worst < std::time::Duration::from_secs(1));
    // The replicas' breaker opened after 3 timeouts (the default threshold; a probe after its
    // 500 ms cooldown may add one): later calls went to the master at once.
    assert!(
        s.l2_timeouts - timeouts <= 4,
        "{} replica reads timed out",
        s.l2_timeouts - timeouts
    );
}

/// Scenario 31, without replicas: a master is SIGKILLed while one instance calls 30 keys spread
/// over the 3 masters through L2. Every call answers with its key's value under a 1 s ceiling;
/// the dead master's keys are computed (its breaker opens: L2 is skipped for them), while the
/// other masters' keys keep being L2 hits (their breakers stay closed). Run with
/// `cluster-require-full-coverage no`: with Redis's default (`yes`) the cluster refuses every
/// key (`CLUSTERDOWN`) once it has marked the master failed (after the node timeout, 1 s here),
/// and callers are then served by computing for every key, as here for the dead master's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_31_a_dead_master_without_replicas_opens_only_its_breaker() {
    let mut cluster = Cluster::start_with(3, 0, &["--cluster-require-full-coverage", "no"]);
    let a = bounded(
        "build",
        Runtime::builder()
            .namespace("c31n")
            .redis_cluster(cluster.urls())
            .l2_timeout(std::time::Duration::from_millis(100))
            .breaker_cooldown(std::time::Duration::from_secs(5))
            .build(),
    )
    .await
    .expect("runtime");
    for id in 0..30 {
        assert_eq!(a.scope(shard(id)).await, format!("value-of-{id}"));
    }
    let m = cluster.master_index_of("c31n:shard:<0>");
    let (dead, live): (Vec<u64>, Vec<u64>) =
        (0..30).partition(|id| cluster.master_index_of(&format!("c31n:shard:<{id}>")) == m);
    cluster.kill(m);
    let start = std::time::Instant::now();
    let (mut worst, mut live_hits, mut live_calls) = (std::time::Duration::ZERO, 0u64, 0u64);
    while start.elapsed() < std::time::Duration::from_secs(2) {
        for id in 0..30u64 {
            let hits = a.stats().total.l2_hits;
            let t = std::time::Instant::now();
            assert_eq!(
                bounded("a call", a.scope(shard(id))).await,
                format!("value-of-{id}")
            );
            worst = worst.max(t.elapsed());
            if live.contains(&id) {
                live_calls += 1;
                live_hits += a.stats().total.l2_hits - hits;
            }
        }
    }
    let s = a.stats().total;
    println!(
        "scenario 31 (no replicas): master with {} of 30 keys killed; over 2 s: slowest call {worst:?} (ceiling 1 s), the other masters' keys: {live_hits} L2 hits in {live_calls} calls; L2 skips {}, timeouts {}, errors {}, breaker transitions {}",
        dead.len(),
        s.l2_skips,
        s.l2_timeouts,
        s.l2_errors,
        s.breaker_transitions
    );
    assert!(!dead.is_empty() && !live.is_empty());
    assert!(
        worst < std::time::Duration::from_secs(1),
        "a call took {worst:?}"
    );
    assert!(s.l2_skips > 0, "the dead master's breaker opened");
    assert_eq!(
        a.stats().l2_breakers_open,
        1,
        "one breaker open (its 5 s cooldown runs)"
    );
    assert_eq!(
        live_hits, live_calls,
        "the other masters' keys stayed L2 hits"
    );
}

#[tiered_cache(key = "acl:<id>", ttl = "60s")]
async fn acl_probe(id: u64) -> u64 {
    id
}

/// ACL users on a cluster fail closed like on one server: a user who may not use the
/// namespace's keys, or not its invalidation channel, is `Error::Auth` from `build()` (the
/// start-up probe runs every command on the runtime's own keys, one slot per request), and a
/// user scoped to them works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_16_acl_refusals_on_a_cluster_are_build_errors() {
    let cluster = Cluster::start(3);
    for node in cluster.nodes() {
        for rule in [
            &[
                &b"elsewhere"[..],
                b"on",
                b">pw1",
                b"~other:*",
                b"&*",
                b"+@all",
            ][..],
            &[&b"nochannel"[..], b"on", b">pw2", b"~t:*", b"+@all"][..],
            &[
                &b"scoped"[..],
                b"on",
                b">pw3",
                b"~t:*",
                b"&t:tiered:*",
                b"+@all",
            ][..],
        ] {
            let mut args: Vec<&[u8]> = vec![b"ACL", b"SETUSER"];
            args.extend_from_slice(rule);
            node.cmd::<()>(&args);
        }
    }
    let urls = |user: &str, pw: &str| -> Vec<String> {
        cluster
            .nodes()
            .iter()
            .map(|n| format!("redis://{user}:{pw}@127.0.0.1:{}/", n.port()))
            .collect()
    };
    for (user, pw) in [("elsewhere", "pw1"), ("nochannel", "pw2")] {
        match bounded(
            "build",
            Runtime::builder()
                .namespace("t")
                .redis_cluster(urls(user, pw))
                .build(),
        )
        .await
        {
            Err(tiered::Error::Auth { detail, .. }) => {
                assert!(!detail.contains(pw), "{detail}");
                println!("{user}: refused at build(): {detail}");
            }
            other => panic!("{user}: expected Error::Auth, got {other:?}"),
        }
    }
    let rt = bounded(
        "build",
        Runtime::builder()
            .namespace("t")
            .redis_cluster(urls("scoped", "pw3"))
            .build(),
    )
    .await
    .expect("a scoped user works");
    assert_eq!(rt.scope(acl_probe(1)).await, 1);
    assert_eq!(rt.stats().total.l2_errors, 0);
}
