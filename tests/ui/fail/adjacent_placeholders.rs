use tiered::tiered_cache;

#[tiered_cache(key = "<a><b>")]
async fn f(a: u32, b: u32) -> u32 {
    a + b
}

fn main() {}
