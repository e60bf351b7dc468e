use tiered::tiered_cache;

#[tiered_cache(jitter = "150%")]
async fn over(n: u32) -> u32 {
    n
}

#[tiered_cache(jitter = "10")]
async fn no_percent(n: u32) -> u32 {
    n
}

#[tiered_cache(jitter = 10)]
async fn not_a_string(n: u32) -> u32 {
    n
}

fn main() {}
