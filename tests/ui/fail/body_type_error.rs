use tiered::tiered_cache;

#[tiered_cache]
async fn parse(n: u32) -> u64 {
    if n == 0 {
        return 0;
    }
    "not a number"
}

fn main() {}
