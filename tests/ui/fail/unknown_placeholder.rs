use tiered::tiered_cache;

#[tiered_cache(key = "user:<user_id>")]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
