use tiered::tiered_cache;

pub struct Db;

impl Db {
    #[tiered_cache]
    async fn load(&self, id: u32) -> u32 {
        id
    }
}

fn main() {}
