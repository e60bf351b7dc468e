use tiered::tiered_cache;

#[tiered_cache(key = "user:<id>", ttl = "forever")]
async fn get_user(id: u32) -> u32 {
    id
}

/// Callers of the companions see no error of their own: only the attribute's.
pub async fn after_a_write(id: u32) {
    let _ = get_user(id).await;
    let _ = invalidate_get_user(id).await;
    let _ = invalidate_all_get_user().await;
}

fn main() {}
