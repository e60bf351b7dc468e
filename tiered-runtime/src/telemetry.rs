//! Metrics through the `metrics` facade (feature `metrics`): the application installs a
//! recorder (a Prometheus exporter, for example); this runtime hands it its figures.
//!
//! * **Counters**: every counter of [`Counts`](crate::Counts), per function, as
//!   `tiered_<counter>_total` with the labels `namespace` and `site` (the function's path;
//!   `_runtime` for what belongs to no function: the bus's counters, L1 flushes, connects),
//!   handed over as absolute values every [`EXPORT_EVERY`] by a task of the runtime and on
//!   [`Runtime::export_metrics`]. Nothing is added to the call path: the counters are the
//!   runtime's own atomics.
//! * **Gauges** (label `namespace`): `tiered_l1_entries`, `tiered_l1_bytes`,
//!   `tiered_inflight`, `tiered_l2_connected` (0/1), `tiered_subscribed` (0/1),
//!   `tiered_tracking` (0/1, client tracking up), `tiered_l2_breakers_open`,
//!   `tiered_bus_origins`.
//! * **Histograms**, recorded as they happen: `tiered_body_seconds` (a body's run; labels
//!   `namespace`, `site`) and `tiered_l2_request_seconds` (each L2 request, label `namespace`).

use std::sync::Weak;
use std::time::Duration;

use crate::runtime::{Inner, Runtime};

/// How often a runtime hands its counters and gauges to the recorder.
pub(crate) const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// Hands `rt`'s counters and gauges to the installed recorder.
pub(crate) fn export(rt: &Runtime) {
    let stats = rt.stats();
    let namespace = rt.config().namespace().to_owned();
    // Per function; what belongs to no function (the bus's counters, L1 flushes, connects)
    // under `site="_runtime"`, so that a sum over `site` is the runtime's total.
    let mut rest: Vec<(&'static str, u64)> = stats.total.fields();
    for site in &stats.sites {
        for ((name, value), (_, left)) in site.counts.fields().into_iter().zip(rest.iter_mut()) {
            *left = left.saturating_sub(value);
            ::metrics::counter!(
                format!("tiered_{name}_total"),
                "namespace" => namespace.clone(),
                "site" => site.name
            )
            .absolute(value);
        }
    }
    for (name, value) in rest {
        ::metrics::counter!(
            format!("tiered_{name}_total"),
            "namespace" => namespace.clone(),
            "site" => "_runtime"
        )
        .absolute(value);
    }
    let gauges = [
        ("tiered_l1_entries", stats.l1_entries as f64),
        ("tiered_l1_bytes", stats.l1_bytes as f64),
        ("tiered_inflight", stats.inflight as f64),
        (
            "tiered_l2_connected",
            f64::from(u8::from(stats.l2_connected)),
        ),
        ("tiered_subscribed", f64::from(u8::from(stats.subscribed))),
        ("tiered_tracking", f64::from(u8::from(stats.tracking))),
        ("tiered_l2_breakers_open", stats.l2_breakers_open as f64),
        ("tiered_bus_origins", stats.bus_origins as f64),
    ];
    for (name, value) in gauges {
        ::metrics::gauge!(name, "namespace" => namespace.clone()).set(value);
    }
}

/// Starts the task that exports `rt`'s figures every [`EXPORT_EVERY`] while it lives (when
/// there is a Tokio runtime to run it on).
pub(crate) fn spawn_exporter(rt: &Runtime) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Inner> = std::sync::Arc::downgrade(&rt.inner);
    handle.spawn(async move {
        let mut tick = tokio::time::interval(EXPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            export(&Runtime { inner });
        }
    });
}

/// Records a body's run time.
pub(crate) fn body_seconds(namespace: &str, site: &'static str, elapsed: Duration) {
    ::metrics::histogram!(
        "tiered_body_seconds",
        "namespace" => namespace.to_owned(),
        "site" => site
    )
    .record(elapsed.as_secs_f64());
}
