//! Two independent runtimes (as two service instances would be) sharing one Redis.
//!
//! `TIERED_REDIS_URL=redis://127.0.0.1:6379 cargo run --example two_instances`
//! (defaults to that URL). Instance A computes; instance B is served from Redis without
//! running the body and keeps a copy in its L1; A invalidates, the Pub/Sub bus evicts B's copy,
//! and B computes afresh.

use std::sync::atomic::{AtomicUsize, Ordering};

use tiered::{Runtime, tiered_cache};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[tiered_cache(ttl = "5m", key = "price:<sku>")]
async fn price(sku: &str) -> u64 {
    RUNS.fetch_add(1, Ordering::Relaxed);
    sku.len() as u64 * 100
}

#[tokio::main]
async fn main() -> Result<(), tiered::Error> {
    let url =
        std::env::var("TIERED_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let build = || {
        Runtime::builder()
            .namespace("two-instances")
            .redis_url(url.clone())
            .promotion_frequency(1) // B keeps what it reads from Redis in its L1
            .build()
    };
    let (a, b) = (build().await?, build().await?);
    if !a.stats().l2_connected {
        println!(
            "Redis is not reachable at {:?}: both instances run degraded (L1 only)",
            a.config().redis_addr()
        );
    }
    let runs = || RUNS.load(Ordering::Relaxed);

    a.scope(invalidate_price("sku-1")).await.ok(); // start clean
    println!(
        "A: price = {}  (body runs so far: {})",
        a.scope(price("sku-1")).await,
        runs()
    );
    println!(
        "B: price = {}  (body runs so far: {}: served from Redis)",
        b.scope(price("sku-1")).await,
        runs()
    );
    let received = b.stats().total.invalidations_received;
    let start = std::time::Instant::now();
    a.scope(invalidate_price("sku-1")).await?;
    // A evicted its L1, deleted the key in Redis and published the invalidation; B's
    // subscriber evicts B's L1 copy when the message arrives (well under a millisecond here).
    while b.stats().subscribed && b.stats().total.invalidations_received == received {
        if start.elapsed() > std::time::Duration::from_secs(2) {
            break;
        }
        tokio::task::yield_now().await;
    }
    println!(
        "A invalidated sku-1; B received it after {:?}",
        start.elapsed()
    );
    println!(
        "B: price = {}  (body runs so far: {}: recomputed)",
        b.scope(price("sku-1")).await,
        runs()
    );
    println!(
        "B counters: {:?}",
        b.stats()
            .total
            .fields()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect::<Vec<_>>()
    );
    Ok(())
}
