use std::sync::Arc;

use tiered::tiered_cache;

struct Repo;

#[tiered_cache]
impl Repo {
    #[tiered_cache]
    async fn shared(self: Arc<Self>, id: u32) -> u32 {
        id
    }
}

fn main() {}
