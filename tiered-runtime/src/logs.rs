//! The logging contract, in one place.
//!
//! * **ERROR** only for configuration problems: a key template that cannot render, two
//!   functions sharing a key shape, credentials or permissions Redis refuses.
//! * **WARN** once per circuit-breaker transition to open (closing is INFO), once per function
//!   for bytes in Redis that are not its values, and for every other cause (a lost or replaced
//!   connection, with the reason, a refused command, a full invalidation queue, a restarted bus
//!   task) at most once a minute per cause, per runtime ([`Limiter`]).
//! * Never a value, a password or a whole key: keys appear as a short hash, Redis as
//!   `host:port`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one cause may log at WARN (or ERROR) level.
pub(crate) const EVERY: Duration = Duration::from_secs(60);

/// Per-cause rate limit of log lines: [`allow`](Self::allow) is `true` at most once per
/// [`EVERY`] for each cause.
#[derive(Default)]
pub(crate) struct Limiter {
    last: Mutex<HashMap<String, Instant>>,
}

impl Limiter {
    /// Whether a line about `cause` may be logged now (and records it if so).
    pub(crate) fn allow(&self, cause: &str) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get(cause) {
            Some(t) if now.duration_since(*t) < EVERY => false,
            _ => {
                last.insert(cause.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_a_minute_per_cause() {
        let l = Limiter::default();
        assert!(l.allow("OOM"));
        assert!(!l.allow("OOM"));
        assert!(l.allow("NOPERM"), "another cause has its own budget");
        assert!(!l.allow("NOPERM"));
    }
}
