use tiered::tiered_cache;

#[tiered_cache]
async fn sum((a, b): (u32, u32)) -> u32 {
    a + b
}

fn main() {}
