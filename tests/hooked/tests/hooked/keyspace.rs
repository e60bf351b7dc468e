//! A keyspace users cannot reach: the runtime's own keys (generations, lost-publish counter,
//! probes) live where no rendered key lands, whatever the template and the values; functions
//! that render the same key never share a flight; sharing a template is reported.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};

use support::{RedisServer, bounded};
use tiered::hooks::Gate;
use tiered::{Runtime, tiered_cache};

static VERSION: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "<name>", ttl = "60s", promote = 1)]
async fn named(name: &str) -> u64 {
    let _ = name;
    VERSION.load(Ordering::SeqCst)
}

#[tiered_cache(key = "x<name>", ttl = "60s", promote = 1)]
async fn prefixed(name: &str) -> u64 {
    let _ = name;
    VERSION.load(Ordering::SeqCst)
}

/// Every internal key's name and every key `SCAN` shows for the namespace, fed back as user
/// arguments: nothing lands on the runtime's own keys, `invalidate_all()` keeps working, and
/// no value from before it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_arguments_never_reach_the_runtimes_own_keys() {
    let redis = RedisServer::start();
    let rt = bounded(
        "build",
        Runtime::builder()
            .namespace("ks")
            .redis_url(redis.url())
            .build(),
    )
    .await
    .expect("runtime");
    // Bring the runtime's own keys into existence: the generations hash (which also holds the
    // lost-publish counter).
    rt.invalidate_all().await.expect("invalidate_all");
    rt.scope(invalidate_all_named())
        .await
        .expect("invalidate_all_named");
    rt.scope(named("seed")).await;
    let mut args: Vec<String> = [
        "%~gen",
        "%~lost",
        "!lost",
        "%~probe",
        "%~probe-gen",
        "%~refresh:named:<seed>",
        "~refresh",
        "~gen",
        "gen",
        "__tiered_gen__",
        "__tiered_probe__",
        "*",
        "%",
        "%~",
        "ks",
        "ks:",
        ":",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let scanned = redis.all_keys();
    assert!(scanned.iter().any(|k| k == "ks:%~gen"), "{scanned:?}");
    for k in &scanned {
        args.push(k.clone());
        if let Some(rest) = k.strip_prefix("ks:") {
            args.push(rest.to_owned());
        }
    }
    args.sort();
    args.dedup();
    let writes = rt.stats().total.l2_writes;
    for a in &args {
        assert_eq!(rt.scope(named(a)).await, 0);
        assert_eq!(rt.scope(prefixed(a)).await, 0);
    }
    let s = rt.stats().total;
    assert_eq!(
        (s.l2_errors, s.decode_failures),
        (0, 0),
        "a user key landed on one of the runtime's own keys"
    );
    assert_eq!(
        s.l2_writes - writes,
        2 * args.len() as u64,
        "every user entry was stored as a value of its own"
    );
    assert_eq!(
        redis.cmd::<String>(&[b"TYPE", b"ks:%~gen"]),
        "hash",
        "the generations are still a hash"
    );
    VERSION.store(1, Ordering::SeqCst);
    rt.invalidate_all()
        .await
        .expect("invalidate_all still works");
    rt.flush_l1(); // read L2 again
    for a in &args {
        assert_eq!(rt.scope(named(a)).await, 1, "{a:?} served from before");
        assert_eq!(rt.scope(prefixed(a)).await, 1, "{a:?} served from before");
    }
    println!(
        "{} user arguments (internal names and every scanned key) never touched the runtime's keys",
        args.len()
    );
}

static GATE: std::sync::LazyLock<Gate> = std::sync::LazyLock::new(Gate::default);
static LEFT_RUNS: AtomicU64 = AtomicU64::new(0);
static RIGHT_RUNS: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "shared:<id>", ttl = "60s")]
async fn left(id: u64) -> u64 {
    LEFT_RUNS.fetch_add(1, Ordering::SeqCst);
    GATE.pass().await;
    id + 1000
}

#[tiered_cache(key = "shared:<n>", ttl = "60s")]
async fn right(n: u64) -> u64 {
    RIGHT_RUNS.fetch_add(1, Ordering::SeqCst);
    n + 2000
}

#[tiered_cache(key = "shared:<n>", ttl = "60s", tiers = "l2")]
async fn remote_text(n: u64) -> String {
    n.to_string()
}

/// Two functions whose templates render the same key: while one computes, the other runs its
/// own body (flights are per function), and the sharing is reported once per site, whatever
/// their types and tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_sharing_a_key_never_share_a_flight_and_are_reported() {
    let rt = Runtime::builder()
        .namespace("fl")
        .build()
        .await
        .expect("runtime");
    GATE.close();
    let parked = tokio::spawn(rt.scope(left(1)));
    bounded("left parked", GATE.wait_reached(1)).await;
    assert_eq!(
        bounded("right", rt.scope(right(1))).await,
        2001,
        "right got left's value through the coalescer"
    );
    GATE.open();
    assert_eq!(bounded("left", parked).await.expect("task"), 1001);
    assert_eq!(rt.scope(remote_text(1)).await, "1");
    let s = rt.stats();
    let conflicts = |site: &str| s.site(site).map_or(0, |c| c.template_conflicts);
    assert_eq!(
        conflicts(concat!(module_path!(), "::left"))
            + conflicts(concat!(module_path!(), "::right"))
            + conflicts(concat!(module_path!(), "::remote_text")),
        2,
        "the second and third site to use the shape are reported: {:?}",
        s.sites
    );
    assert_eq!(
        (
            LEFT_RUNS.load(Ordering::SeqCst),
            RIGHT_RUNS.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
}
