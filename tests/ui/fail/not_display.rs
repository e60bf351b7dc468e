use tiered::tiered_cache;

#[derive(Clone, Copy)]
struct Id(u32);

#[tiered_cache(key = "id:<id>")]
async fn f(id: Id) -> u32 {
    id.0
}

fn main() {}
