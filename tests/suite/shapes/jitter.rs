use tiered::tiered_cache;

#[tiered_cache(key = "j:<n>", ttl = "1m", jitter = "0%")]
async fn none(n: u32) -> u32 {
    n
}

#[tiered_cache(key = "k:<n>", jitter = "100%")]
async fn all(n: u32) -> u32 {
    n
}

#[test]
fn compiles() {
    let _ = (none(1), all(2));
}
