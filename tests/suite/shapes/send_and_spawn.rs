//! Memoized futures are `Send`: they can be spawned on a multi-threaded runtime.
use tiered::tiered_cache;

#[tiered_cache(key = "square:<n>")]
async fn square(n: u64) -> u64 {
    tokio::task::yield_now().await;
    n * n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memoized_futures_are_send() {
    let handles: Vec<_> = (0..8).map(|n| tokio::spawn(square(n))).collect();
    for (n, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), (n * n) as u64);
    }
}
