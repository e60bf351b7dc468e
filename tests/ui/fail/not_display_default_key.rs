use tiered::tiered_cache;

pub struct Pool;

#[tiered_cache]
async fn load(pool: &Pool, id: u32) -> u32 {
    let _ = pool;
    id
}

fn main() {}
