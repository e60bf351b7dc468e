use tiered::tiered_cache;

#[tiered_cache(refresh_ahead = 1.5)]
async fn past_the_ttl(n: u32) -> u32 {
    n
}

#[tiered_cache(refresh_ahead = "0.8")]
async fn a_string(n: u32) -> u32 {
    n
}

#[tiered_cache(fail_safe = "forever")]
async fn no_unit(n: u32) -> u32 {
    n
}

#[tiered_cache(soft_timeout = "2s", hard_timeout = "1s")]
async fn hard_before_soft(n: u32) -> u32 {
    n
}

#[tiered_cache(background_writes = "yes")]
async fn not_a_bool(n: u32) -> u32 {
    n
}

#[tiered_cache(trace_keys = "yes")]
async fn not_a_bool_either(n: u32) -> u32 {
    n
}

fn main() {}
