use tiered::tiered_cache;

#[tiered_cache(key = "name:<name>", refresh_ahead = 0.8)]
async fn borrowed(name: &str) -> String {
    name.to_uppercase()
}

#[tiered_cache(refresh_ahead = 0.8, detach = false)]
async fn not_detached(n: u32) -> u32 {
    n
}

fn main() {}
