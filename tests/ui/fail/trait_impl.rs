use tiered::tiered_cache;

pub trait Load {
    async fn load(&self, id: u32) -> u32;
}

pub struct Db;

#[tiered_cache]
impl Load for Db {
    #[tiered_cache]
    async fn load(&self, id: u32) -> u32 {
        id
    }
}

fn main() {}
