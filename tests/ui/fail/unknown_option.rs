use tiered::tiered_cache;

#[tiered_cache(key = "n:<n>", expire = "5s")]
async fn f(n: u32) -> u32 {
    n
}

fn main() {}
