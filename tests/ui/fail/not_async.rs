use tiered::tiered_cache;

#[tiered_cache(key = "n:<n>")]
fn not_async(n: u32) -> u32 {
    n
}

fn main() {
    let _: u32 = not_async(1);
}
