use tiered::tiered_cache;

#[tiered_cache]
async fn generic<T: std::fmt::Display>(t: T) -> String {
    t.to_string()
}

fn main() {}
