//! A crate that depends on `tiered` under another name: `::tiered` does not resolve here, so
//! this compiles only because `crate = "renamed"` tells the macro where the crate is.

use renamed::tiered_cache;

/// A memoized function through the renamed dependency.
#[tiered_cache(crate = "renamed", key = "square:<n>")]
pub async fn square(n: u64) -> u64 {
    n * n
}

/// A type with a memoized method through the renamed dependency.
pub struct Repo;

#[tiered_cache]
impl Repo {
    /// A memoized method.
    #[tiered_cache(crate = "renamed")]
    pub async fn get(&self, id: u32) -> Result<String, String> {
        Ok(format!("repo {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_renamed_dependency_works() {
        let rt = renamed::Runtime::builder()
            .build()
            .await
            .expect("embedded runtime");
        rt.scope(async {
            assert_eq!(square(3).await, 9);
            assert_eq!(square(3).await, 9);
            invalidate_square(3).await.expect("invalidate");
            assert_eq!(Repo.get(1).await, Ok("repo 1".into()));
            Repo::invalidate_all_get().await.expect("invalidate_all");
        })
        .await;
        let s = rt.stats().total;
        assert_eq!((s.computations, s.l1_hits), (2, 1));
    }
}
