use tiered::tiered_cache;

// Three mistakes, three errors; the function is still emitted, so its caller in main
// type-checks without a cascade of further errors.
#[tiered_cache(key = "user:<nope>", tiers = "everywhere", colour = "blue")]
async fn get(id: u32) -> u32 {
    id
}

fn main() {
    let _ = get(1);
}
