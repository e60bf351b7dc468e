use tiered::tiered_cache;

#[tiered_cache(ttl = "90 parsecs")]
async fn f(n: u32) -> u32 {
    n
}

fn main() {}
