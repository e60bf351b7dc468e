//! Every resilience option, on a free function (its body can finish in the background), on a
//! function that borrows (soft timeouts cancel its body instead) and with `detach = false`.

use std::rc::Rc;

use tiered::tiered_cache;

#[derive(Debug, Clone)]
struct AppError;

impl From<tiered::Error> for AppError {
    fn from(_: tiered::Error) -> Self {
        AppError
    }
}

#[tiered_cache(
    key = "user:<id>",
    ttl = "5m",
    fail_safe = "1h",
    soft_timeout = "50ms",
    hard_timeout = "2s",
    refresh_ahead = 0.8,
    background_writes = true
)]
async fn user(id: u64) -> Result<String, AppError> {
    Ok(id.to_string())
}

#[tiered_cache(key = "name:<name>", fail_safe = "10m", soft_timeout = "50ms")]
async fn borrowed(name: &str) -> Option<String> {
    Some(name.to_owned())
}

/// A body that is not `Send` (it holds an `Rc` across an await) opts out of the background.
#[tiered_cache(key = "local:<n>", detach = false, soft_timeout = "10ms")]
async fn local(n: u32) -> u32 {
    let rc = Rc::new(n);
    tokio::task::yield_now().await;
    *rc
}

#[test]
fn compiles() {
    let _ = (user, borrowed, local);
}
