use async_trait::async_trait;
use tiered::tiered_cache;

#[async_trait]
pub trait Users {
    async fn get(&self, id: u32) -> u32;
}

pub struct Db;

#[tiered_cache]
#[async_trait]
impl Users for Db {
    #[tiered_cache]
    async fn get(&self, id: u32) -> u32 {
        id
    }
}

fn main() {}
