use tiered::tiered_cache;

pub trait Users {
    #[tiered_cache]
    async fn get(&self, id: u32) -> u32 {
        id
    }
}

fn main() {}
