use tiered::tiered_cache;

#[tiered_cache(strategy = "ShortTerm", ttl = "90s")]
async fn f(n: u32) -> u32 {
    n
}

fn main() {}
