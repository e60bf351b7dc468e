//! PostgreSQL: the database of a run, its schema and seed, and the queries the handlers run.
//!
//! Every query goes through the runtime query functions (`sqlx::query`, `sqlx::query_as`), and
//! every statement a handler runs is counted in [`db_queries`] (served by `GET /stats`), so
//! that a test or the load generator can tell computed answers from cached ones. Start-up
//! work (creating the database, the schema, the seed) is not counted.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Users seeded into a new database (ids `1..=SEED_USERS`).
pub const SEED_USERS: i64 = 1000;
/// Orders seeded per user.
pub const SEED_ORDERS_PER_USER: i64 = 5;

/// The key of the advisory lock that serializes schema creation and seeding between
/// instances that start together on one database.
const SCHEMA_LOCK: i64 = 0x7469_6572_6564; // "tiered"

static DB_QUERIES: AtomicU64 = AtomicU64::new(0);

/// SQL statements run by the request handlers since start-up.
pub fn db_queries() -> u64 {
    DB_QUERIES.load(Ordering::Relaxed)
}

fn count_query() {
    DB_QUERIES.fetch_add(1, Ordering::Relaxed);
}

/// A user row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

/// An order row (its user is the one asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Primary key.
    pub id: i64,
    /// What was ordered.
    pub item: String,
    /// Price in cents.
    pub amount_cents: i64,
}

/// The fields a `PUT /users/{id}` may change; absent fields keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New e-mail address.
    pub email: Option<String>,
}

/// A database error as text: `Clone`, so that one failed computation can be handed to every
/// caller coalesced on it (the memoized functions return it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        DbError(e.to_string())
    }
}

/// A fresh per-run database name, `tiered_service_<pid>_<millis since the epoch>`.
pub fn run_database_name() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("tiered_service_{}_{millis}", std::process::id())
}

/// Whether `name` is safe to put in SQL as an identifier: ASCII letters, digits and `_`,
/// not starting with a digit, at most 63 bytes (PostgreSQL's limit).
pub fn valid_database_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

fn checked_name(name: &str) -> Result<&str, DbError> {
    if valid_database_name(name) {
        Ok(name)
    } else {
        Err(DbError(format!(
            "invalid database name {name:?}: use ASCII letters, digits and `_` (at most 63)"
        )))
    }
}

/// Connection options of `database` on the server of `admin_url`.
pub fn options_for(admin_url: &str, database: &str) -> Result<PgConnectOptions, DbError> {
    Ok(PgConnectOptions::from_str(admin_url)?.database(database))
}

/// Creates `name` through the admin URL unless it exists; returns whether this call created
/// it. Two processes racing to create the same database both succeed (the loser's
/// `duplicate_database` error means it exists).
pub async fn create_database(admin_url: &str, name: &str) -> Result<bool, DbError> {
    let name = checked_name(name)?;
    let mut admin = PgConnection::connect_with(&PgConnectOptions::from_str(admin_url)?).await?;
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut admin)
        .await?;
    let created = if exists.is_some() {
        false
    } else {
        match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
        {
            Ok(_) => true,
            // 42P04 duplicate_database: another process created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => false,
            Err(e) => return Err(e.into()),
        }
    };
    admin.close().await?;
    Ok(created)
}

/// Drops `name` through the admin URL, closing its other sessions (`WITH (FORCE)`,
/// PostgreSQL 13 or newer); nothing happens when it does not exist.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), DbError> {
    let name = checked_name(name)?;
    let mut admin = PgConnection::connect_with(&PgConnectOptions::from_str(admin_url)?).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(())
}

/// A pool of at most `max_connections` connections to `database` on the admin URL's server.
pub async fn connect(
    admin_url: &str,
    database: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    let options = options_for(admin_url, database)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// Creates the tables when missing and seeds them when `users` is empty, under an advisory
/// lock so that instances starting together on one database do it once. Returns the number
/// of users seeded (0 when the database already had users).
pub async fn prepare(pool: &PgPool) -> Result<i64, DbError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = prepare_locked(&mut conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *conn)
        .await;
    let seeded = result?;
    unlocked?;
    Ok(seeded)
}

async fn prepare_locked(conn: &mut PgConnection) -> Result<i64, DbError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (
             id BIGINT PRIMARY KEY,
             name TEXT NOT NULL,
             email TEXT NOT NULL
         )",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
             id BIGSERIAL PRIMARY KEY,
             user_id BIGINT NOT NULL REFERENCES users (id),
             item TEXT NOT NULL,
             amount_cents BIGINT NOT NULL
         )",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("CREATE INDEX IF NOT EXISTS orders_user_id ON orders (user_id)")
        .execute(&mut *conn)
        .await?;
    let (users,): (i64,) = sqlx::query_as("SELECT count(*) FROM users")
        .fetch_one(&mut *conn)
        .await?;
    if users > 0 {
        return Ok(0);
    }
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO users (id, name, email)
         SELECT g, 'user-' || g, 'user' || g || '@example.com' FROM generate_series(1, $1) g",
    )
    .bind(SEED_USERS)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO orders (user_id, item, amount_cents)
         SELECT u, 'item-' || o, (u * 7919 + o * 104729) % 100000
         FROM generate_series(1, $1) u, generate_series(1, $2) o
         ORDER BY u, o",
    )
    .bind(SEED_USERS)
    .bind(SEED_ORDERS_PER_USER)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE users, orders")
        .execute(&mut *conn)
        .await?;
    Ok(SEED_USERS)
}

/// `SELECT` of one user (one statement); `None` when there is no such user.
pub async fn load_user(pool: &PgPool, id: i64) -> Result<Option<User>, DbError> {
    count_query();
    let row: Option<(i64, String, String)> =
        sqlx::query_as("SELECT id, name, email FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, name, email)| User { id, name, email }))
}

/// `SELECT` of one user's orders, oldest first (one statement); empty when the user has none
/// or does not exist.
pub async fn load_orders(pool: &PgPool, user_id: i64) -> Result<Vec<Order>, DbError> {
    count_query();
    let rows: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT id, item, amount_cents FROM orders WHERE user_id = $1 ORDER BY id")
            .bind(user_id)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, item, amount_cents)| Order {
            id,
            item,
            amount_cents,
        })
        .collect())
}

/// `UPDATE … RETURNING` of one user (one statement); `None` when there is no such user.
pub async fn update_user(
    pool: &PgPool,
    id: i64,
    update: &UserUpdate,
) -> Result<Option<User>, DbError> {
    count_query();
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "UPDATE users SET name = COALESCE($2, name), email = COALESCE($3, email)
         WHERE id = $1 RETURNING id, name, email",
    )
    .bind(id)
    .bind(update.name.as_deref())
    .bind(update.email.as_deref())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, name, email)| User { id, name, email }))
}
