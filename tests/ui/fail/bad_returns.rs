use tiered::tiered_cache;

#[tiered_cache(returns = "either")]
async fn f(n: u32) -> u32 {
    n
}

fn main() {}
