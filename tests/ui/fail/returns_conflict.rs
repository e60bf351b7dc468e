use tiered::tiered_cache;

type ApiResult<T> = Result<T, String>;

#[tiered_cache(returns = "value")]
async fn aliased(n: u32) -> ApiResult<u32> {
    Ok(n)
}

#[tiered_cache(returns = "result")]
async fn plain(n: u32) -> u32 {
    n
}

#[tiered_cache(returns = "option")]
async fn not_an_option(n: u32) -> ApiResult<u32> {
    Ok(n)
}

fn main() {}
