use tiered::tiered_cache;

#[tiered_cache(strategy = "Forever")]
async fn f(n: u32) -> u32 {
    n
}

fn main() {}
