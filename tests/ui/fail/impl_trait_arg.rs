use tiered::tiered_cache;

#[tiered_cache]
async fn show(v: impl std::fmt::Display) -> String {
    v.to_string()
}

fn main() {}
