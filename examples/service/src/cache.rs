//! The memoized reads: `#[tiered_cache]` over the queries of [`crate::db`].
//!
//! The macro makes every argument of a memoized function part of its call (the key template
//! names the ones that form the key), and a pool is no part of what identifies a user. So the
//! functions take only the id and read the pool from a process-wide [`OnceLock`] set once at
//! start-up by [`set_pool`]: the cache key is `user:<id>` / `orders:<id>` and nothing else.
//! That is fine for a service with one database; a library serving several pools would use a
//! memoized method on a type that holds the pool instead (its key template can still name
//! only the id).
//!
//! Return types: `Result<Option<User>, DbError>` caches `Ok` values only, so a database error
//! is never cached, while `Ok(None)` (no such user) is cached like any answer: a burst of
//! requests for a missing id costs one query per TTL, not one per request. Users are never
//! created through the API, so no insert has to invalidate a cached `None`.

use std::sync::OnceLock;

use sqlx::PgPool;
use tiered::tiered_cache;

use crate::db::{self, DbError, Order, User};

static POOL: OnceLock<PgPool> = OnceLock::new();

/// Sets the pool the memoized functions query; only the first call has an effect (returns
/// `false` for later ones).
pub fn set_pool(pool: PgPool) -> bool {
    POOL.set(pool).is_ok()
}

fn pool() -> Result<&'static PgPool, DbError> {
    POOL.get()
        .ok_or_else(|| DbError("the database pool is not set (call cache::set_pool first)".into()))
}

/// One user, memoized for an hour under `user:<id>`; `PUT /users/{id}` invalidates it in
/// every instance through the generated `invalidate_get_user(id)`.
#[tiered_cache(strategy = "MediumTerm", key = "user:<id>")]
pub async fn get_user(id: i64) -> Result<Option<User>, DbError> {
    db::load_user(pool()?, id).await
}

/// One user's orders, memoized for 5 minutes under `orders:<id>` (the API never changes
/// orders).
#[tiered_cache(strategy = "ShortTerm", key = "orders:<id>")]
pub async fn get_orders(id: i64) -> Result<Vec<Order>, DbError> {
    db::load_orders(pool()?, id).await
}
