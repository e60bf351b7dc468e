use serde::{Deserialize, Serialize};
use tiered::tiered_cache;

// `cache_none` is for an `Option`.
#[tiered_cache(key = "a:<id>", cache_none = "30s")]
async fn not_an_option(id: u32) -> Result<u32, String> {
    Ok(id)
}

// `cache_err` caches the error, which must be serializable.
#[derive(Debug, Clone)]
struct NotSerializable;

#[tiered_cache(key = "b:<id>", cache_err = "5s")]
async fn unserializable_error(id: u32) -> Result<u32, NotSerializable> {
    Ok(id)
}

// One of the two.
#[tiered_cache(key = "c:<id>", cache_none = "30s", cache_err = "5s")]
async fn both(id: u32) -> Option<u32> {
    Some(id)
}

// Only a duration.
#[tiered_cache(key = "d:<id>", cache_none = "soon")]
async fn bad_ttl(id: u32) -> Option<u32> {
    Some(id)
}

#[derive(Serialize, Deserialize)]
struct Unused;

fn main() {}
