//! Free functions: plain, Option and Result returns, references, every option.
use serde::{Deserialize, Serialize};
use tiered::tiered_cache;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DbError;

/// Doc comments and attributes are kept.
#[tiered_cache(strategy = "MediumTerm", key = "user:<id>")]
#[allow(clippy::unused_async)]
pub async fn get_user(id: u64) -> Result<User, DbError> {
    Ok(User {
        id,
        name: "ada".into(),
    })
}

#[tiered_cache(
    ttl = "90s",
    key = "find:<name>",
    promote = 3,
    tiers = "both",
    version = 2
)]
async fn find(name: &str) -> Option<u64> {
    (!name.is_empty()).then_some(1)
}

#[tiered_cache(ttl = "500ms", tiers = "l1")]
async fn plain(a: u32, b: &u32) -> u32 {
    a + *b
}

#[tiered_cache(strategy = "RealTime", tiers = "l2")]
async fn unit() {}

#[tiered_cache(strategy = "LongTerm", key = "len:<u.name>")]
async fn name_len(u: &User) -> usize {
    u.name.len()
}

type AppResult<T> = Result<T, String>;

#[tiered_cache(strategy = "ShortTerm", returns = "result", key = "aliased:<n>")]
async fn aliased(n: u8) -> AppResult<u8> {
    Ok(n)
}

#[tiered_cache(strategy = "Default", returns = "value")]
async fn labelled<'a>(label: &'a str) -> String {
    label.to_uppercase()
}

#[tokio::test(flavor = "current_thread")]
async fn every_shape_compiles_and_runs() {
    assert_eq!(get_user(1).await.map(|u| u.id), Ok(1));
    assert_eq!(find("x").await, Some(1));
    assert_eq!(plain(1, &2).await, 3);
    unit().await;
    let u = User {
        id: 1,
        name: "ada".into(),
    };
    assert_eq!(name_len(&u).await, 3);
    assert_eq!(aliased(4).await, Ok(4));
    assert_eq!(labelled("x").await, "X");
    invalidate_get_user(1).await.unwrap();
    invalidate_find("x").await.unwrap();
    invalidate_plain(1, &2).await.unwrap();
    invalidate_unit().await.unwrap();
    invalidate_name_len(&u).await.unwrap();
    invalidate_aliased(4).await.unwrap();
    invalidate_labelled("x").await.unwrap();
}
