use tiered::tiered_cache;

pub struct Store<T>(T);

#[tiered_cache]
impl<T: Clone + Send + Sync> Store<T> {
    #[tiered_cache]
    async fn get(&self, id: u32) -> u32 {
        id
    }
}

fn main() {}
