//! L1 entries are keyed by a digest of the key's bytes, computed from the arguments without
//! rendering the key; an invalidation carries the key as Redis knows it (digested when long),
//! and every instance derives the same L1 key from it. These tests prove the two derivations
//! agree across instances: for keys with escaped characters and for long keys.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};

use support::{RedisServer, wait_until};
use tiered::tiered_cache;

static VERSION: AtomicU64 = AtomicU64::new(0);
static RUNS: AtomicU64 = AtomicU64::new(0);

#[tiered_cache(key = "doc:<name>", ttl = "60s", promote = 1)]
async fn doc(name: String) -> u64 {
    let _ = name;
    RUNS.fetch_add(1, Ordering::SeqCst);
    VERSION.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_invalidations_evict_digested_l1_entries_short_escaped_and_long() {
    let redis = RedisServer::start();
    let a = support::runtime(&redis.url(), "lk").await;
    let b = support::runtime(&redis.url(), "lk").await;
    let names = [
        "plain".to_owned(),
        "a:b*<c>[d]{e}%f é\n\u{0}".to_owned(),
        "v".repeat(5000),
        format!("{}é", "w".repeat(1020)),
    ];
    for name in &names {
        let before = b.stats().total;
        assert_eq!(
            b.scope(doc(name.clone())).await,
            VERSION.load(Ordering::SeqCst)
        );
        // Now in B's L1: answered without the body and without Redis.
        let runs = RUNS.load(Ordering::SeqCst);
        assert_eq!(
            b.scope(doc(name.clone())).await,
            VERSION.load(Ordering::SeqCst)
        );
        assert_eq!(
            RUNS.load(Ordering::SeqCst),
            runs,
            "second call is an L1 hit"
        );
        assert_eq!(b.stats().total.l1_hits, before.l1_hits + 1);

        let new = VERSION.fetch_add(1, Ordering::SeqCst) + 1;
        let received = b.stats().total.invalidations_received;
        a.scope(invalidate_doc(name.clone()))
            .await
            .expect("invalidate");
        wait_until("B received the invalidation", || {
            b.stats().total.invalidations_received > received
        })
        .await;
        assert_eq!(
            b.scope(doc(name.clone())).await,
            new,
            "B's L1 entry for a {}-byte argument was evicted",
            name.len()
        );
    }
    // Redis holds the long keys in their digested form.
    let keys = redis.keys();
    assert!(
        keys.iter().any(|k| k.len() > 1024 && k.contains('#')),
        "{:?}",
        keys.iter().map(|k| k.len()).collect::<Vec<_>>()
    );
}
