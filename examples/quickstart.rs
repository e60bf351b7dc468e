//! The README's first picture: a slow source memoized with `#[tiered_cache]`.
//!
//! `cargo run --example quickstart` runs on the embedded L1 alone (no Redis needed).
//! With `TIERED_REDIS_URL=redis://127.0.0.1:6379` the same code uses Redis as L2.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tiered::tiered_cache;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug, Clone)]
struct DbError(#[allow(dead_code)] String);

static QUERIES: AtomicUsize = AtomicUsize::new(0);

/// The slow source of truth: 200 ms per query.
#[tiered_cache(strategy = "MediumTerm", key = "user:<id>")]
async fn get_user(id: u64) -> Result<User, DbError> {
    QUERIES.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(User {
        id,
        name: format!("user-{id}"),
    })
}

async fn timed(label: &str, id: u64) {
    let t = Instant::now();
    let user = get_user(id).await;
    println!(
        "{label:<28} {:>10.3?}  {:?}",
        t.elapsed(),
        user.map(|u| u.name)
    );
}

#[tokio::main]
async fn main() -> Result<(), tiered::Error> {
    let rt = tiered::Builder::from_env()
        .namespace("quickstart")
        .install()
        .await?;
    match rt.config().redis_addr() {
        Some(addr) => println!("tiered quickstart: L1 (Moka) + L2 (Redis at {addr})\n"),
        None => println!(
            "tiered quickstart: embedded mode, L1 (Moka) only; set TIERED_REDIS_URL for Redis\n"
        ),
    }

    timed("first call (miss, 200 ms)", 42).await;
    timed("second call (L1 hit)", 42).await;
    timed("third call (L1 hit)", 42).await;

    let before = QUERIES.load(Ordering::Relaxed);
    let t = Instant::now();
    let burst: Vec<_> = (0..1000).map(|_| tokio::spawn(get_user(7))).collect();
    for task in burst {
        let _ = task.await;
    }
    println!(
        "1000 concurrent callers, cold  {:>10.3?}  {} query ran",
        t.elapsed(),
        QUERIES.load(Ordering::Relaxed) - before
    );

    invalidate_get_user(42).await?; // after a write to the source of truth
    timed("after invalidate (miss)", 42).await;
    timed("again (L1 hit)", 42).await;

    let s = tiered::stats();
    println!("\n{:<24} {:>8}", "counter", "value");
    for (name, value) in s.total.fields() {
        if value > 0 {
            println!("{name:<24} {value:>8}");
        }
    }
    println!("{:<24} {:>8}", "l1_entries", s.l1_entries);
    Ok(())
}
