use tiered::tiered_cache;

#[tiered_cache]
async fn sized<const N: usize>(n: u32) -> u32 {
    n + N as u32
}

fn main() {}
