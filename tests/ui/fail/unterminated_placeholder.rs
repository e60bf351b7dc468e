use tiered::tiered_cache;

#[tiered_cache(key = "user:<id")]
async fn f(id: u32) -> u32 {
    id
}

fn main() {}
