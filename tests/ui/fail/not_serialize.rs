use tiered::tiered_cache;

#[derive(Clone)]
struct Plain(u32);

#[tiered_cache]
async fn f(n: u32) -> Plain {
    Plain(n)
}

fn main() {}
