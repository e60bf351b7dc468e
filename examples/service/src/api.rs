//! The HTTP routes (axum).
//!
//! | route | answer |
//! |---|---|
//! | `GET /users/{id}` | the user as JSON (memoized, key `user:<id>`), 404 when missing |
//! | `GET /users/{id}/orders` | the user's orders as a JSON array (memoized, key `orders:<id>`), `[]` when none |
//! | `PUT /users/{id}` | JSON `{"name": …, "email": …}` (either may be left out) updates PostgreSQL, then invalidates `user:<id>` in every instance; answers the updated user, 404 when missing |
//! | `GET /stats` | JSON: `db_queries` and the runtime's counters |
//! | `GET /metrics` | Prometheus text format |
//!
//! **When the invalidation fails** (Redis unreachable or slow): the database write has
//! happened and this instance's L1 entry is gone (`invalidate_*` always evicts locally), so
//! `PUT` still answers 200 with the new user, adds the header `x-cache-invalidation: failed`,
//! counts it (`invalidations_failed`) and logs a warning. Other instances may serve the old
//! value until their entry's TTL ends; if their subscription is down as well, their L1
//! entries live at most `degraded_l1_ttl` (1 s). A client that needs every instance to see
//! the write can retry the `PUT` (it is idempotent) until the header is gone.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;

use crate::cache;
use crate::db::{self, DbError, UserUpdate};

/// The header a `PUT` answer carries when the invalidation's Redis part failed.
pub const INVALIDATION_FAILED_HEADER: &str = "x-cache-invalidation";

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Whether reads go through the memoized functions.
    pub cache: bool,
    /// The database (used directly when `cache` is off, and for writes).
    pub pool: PgPool,
    /// The runtime, for `/stats` and `/metrics`.
    pub runtime: tiered::Runtime,
    /// The Prometheus recorder's handle, if one is installed.
    pub prometheus: Option<PrometheusHandle>,
}

/// The service's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/users/{id}/orders", get(get_orders))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn db_error(e: DbError) -> Response {
    tracing::error!(error = %e, "database error");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "database error" })),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "user not found" })),
    )
        .into_response()
}

async fn get_user(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let user = if state.cache {
        cache::get_user(id).await
    } else {
        db::load_user(&state.pool, id).await
    };
    match user {
        Ok(Some(user)) => Json(user).into_response(),
        Ok(None) => not_found(),
        Err(e) => db_error(e),
    }
}

async fn get_orders(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let orders = if state.cache {
        cache::get_orders(id).await
    } else {
        db::load_orders(&state.pool, id).await
    };
    match orders {
        Ok(orders) => Json(orders).into_response(),
        Err(e) => db_error(e),
    }
}

async fn put_user(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(update): Json<UserUpdate>,
) -> Response {
    let blank = |v: &Option<String>| v.as_deref().is_some_and(|s| s.trim().is_empty());
    if (update.name.is_none() && update.email.is_none())
        || blank(&update.name)
        || blank(&update.email)
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": "give a non-empty `name` and/or `email`" })),
        )
            .into_response();
    }
    let user = match db::update_user(&state.pool, id, &update).await {
        Ok(Some(user)) => user,
        Ok(None) => return not_found(),
        Err(e) => return db_error(e),
    };
    let mut response = Json(user).into_response();
    if state.cache
        && let Err(e) = cache::invalidate_get_user(id).await
    {
        tracing::warn!(
            user = id,
            error = %e,
            "user updated, but its invalidation did not reach Redis: other instances may \
             serve the old value until its TTL ends"
        );
        response.headers_mut().insert(
            HeaderName::from_static(INVALIDATION_FAILED_HEADER),
            HeaderValue::from_static("failed"),
        );
    }
    response
}

async fn stats(State(state): State<AppState>) -> Response {
    let s = state.runtime.stats();
    let t = &s.total;
    Json(json!({
        "cache": state.cache,
        "db_queries": db::db_queries(),
        "computations": t.computations,
        "misses": t.misses,
        "l1_hits": t.l1_hits,
        "l2_hits": t.l2_hits,
        "coalesced_waits": t.coalesced_waits,
        "invalidations_sent": t.invalidations_sent,
        "invalidations_received": t.invalidations_received,
        "invalidations_failed": t.invalidations_failed,
        "l1_entries": s.l1_entries,
        "l2_connected": s.l2_connected,
        "subscribed": s.subscribed,
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let Some(prometheus) = &state.prometheus else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no Prometheus recorder installed\n",
        )
            .into_response();
    };
    state.runtime.export_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus.render(),
    )
        .into_response()
}
