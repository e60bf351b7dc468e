use tiered::tiered_cache;

#[tiered_cache(promote = 0)]
async fn f(n: u32) -> u32 {
    n
}

fn main() {}
