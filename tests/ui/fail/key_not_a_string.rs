use tiered::tiered_cache;

#[tiered_cache(key = 5)]
async fn f(n: u32) -> u32 {
    n
}

fn main() {}
