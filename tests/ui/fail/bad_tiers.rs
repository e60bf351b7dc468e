use tiered::tiered_cache;

#[tiered_cache(tiers = "l3")]
async fn f(n: u32) -> u32 {
    n
}

fn main() {}
