//! Metrics (feature `metrics`): a recorder of this test binary's own keeps every counter,
//! gauge and histogram the runtime hands to the `metrics` facade, and the documented names move
//! with the calls, against a real `redis-server`.

#[path = "../../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use support::{RedisServer, bounded};
use tiered::{Plain, Runtime, Site, SiteOptions, memoize};

/// One metric's value: a counter's, a gauge's (as bits of an `f64`), or a histogram's samples.
#[derive(Default)]
struct Cell {
    value: AtomicU64,
    samples: Mutex<Vec<f64>>,
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.value.load(Ordering::Relaxed)) + value);
    }
    fn decrement(&self, value: f64) {
        self.set(f64::from_bits(self.value.load(Ordering::Relaxed)) - value);
    }
    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(value);
    }
}

/// Every metric registered, by `name{label=value,…}` (labels sorted).
#[derive(Default)]
struct Recording {
    cells: Mutex<BTreeMap<String, Arc<Cell>>>,
}

impl Recording {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_default()
            .clone()
    }

    fn get(&self, name: &str) -> Option<Arc<Cell>> {
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn counter(&self, name: &str) -> u64 {
        self.get(name)
            .map_or(0, |c| c.value.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.get(name)
            .map(|c| f64::from_bits(c.value.load(Ordering::Relaxed)))
    }

    fn samples(&self, name: &str) -> usize {
        self.get(name).map_or(0, |c| {
            c.samples.lock().unwrap_or_else(|p| p.into_inner()).len()
        })
    }

    fn names(&self) -> Vec<String> {
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

struct Handle(Arc<Recording>);

impl Recorder for Handle {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.0.cell(key))
    }
}

fn recording() -> Arc<Recording> {
    static R: OnceLock<Arc<Recording>> = OnceLock::new();
    R.get_or_init(|| {
        let r = Arc::new(Recording::default());
        metrics::set_global_recorder(Handle(r.clone())).expect("the only recorder");
        r
    })
    .clone()
}

static ITEM: Site = Site::new("observability::item", "item:<id>", SiteOptions::DEFAULT);

async fn item(rt: &Runtime, id: u64) -> u64 {
    rt.scope(
        async move { memoize::<Plain<u64>, _, _>(&ITEM, &[&id], || async move { id + 1 }).await },
    )
    .await
}

/// Two instances on one server: A computes 5 keys and reads them again (5 misses, 5 L1 hits),
/// B reads them from L2 (5 L2 hits), A invalidates one (B receives it). The documented
/// counters (`tiered_<counter>_total{namespace,site}`), gauges (`{namespace}`) and histograms
/// show exactly that after `export_metrics()`; the exporter task hands them over by itself
/// within a second too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_metrics_move() {
    let r = recording();
    let redis = RedisServer::start();
    let build = || async {
        bounded(
            "build",
            Runtime::builder()
                .namespace("obs")
                .redis_url(redis.url())
                .build(),
        )
        .await
        .expect("runtime")
    };
    let (a, b) = (build().await, build().await);
    for id in 0..5 {
        assert_eq!(item(&a, id).await, id + 1);
        assert_eq!(item(&a, id).await, id + 1);
        assert_eq!(item(&b, id).await, id + 1);
    }
    let received = b.stats().total.invalidations_received;
    a.invalidate(&ITEM, &[&1u64]).await.expect("invalidate");
    support::wait_until("B to receive it", || {
        b.stats().total.invalidations_received > received
    })
    .await;
    // The exporter task hands the counters over by itself (every second).
    support::wait_until("the exporter task", || {
        r.counter("tiered_invalidations_received_total{namespace=obs,site=_runtime}") >= 1
    })
    .await;
    a.export_metrics();
    b.export_metrics();
    let site = "namespace=obs,site=observability::item";
    let counter = |name: &str| r.counter(&format!("tiered_{name}_total{{{site}}}"));
    // Two runtimes export into one recorder with the same labels: absolute values, the
    // larger wins here; each figure below is one instance's.
    assert_eq!(counter("misses"), 5, "A's misses");
    assert_eq!(counter("computations"), 5);
    assert_eq!(counter("l1_hits"), 5, "A's second reads");
    assert_eq!(counter("l2_hits"), 5, "B's reads");
    assert_eq!(counter("invalidations_sent"), 1);
    assert_eq!(
        r.counter("tiered_invalidations_received_total{namespace=obs,site=_runtime}"),
        1,
        "the bus's counters belong to no function"
    );
    assert_eq!(counter("l2_errors"), 0);
    assert_eq!(r.gauge("tiered_l2_connected{namespace=obs}"), Some(1.0));
    assert_eq!(r.gauge("tiered_subscribed{namespace=obs}"), Some(1.0));
    assert_eq!(
        r.gauge("tiered_tracking{namespace=obs}"),
        Some(0.0),
        "client tracking is off by default"
    );
    assert_eq!(r.gauge("tiered_l2_breakers_open{namespace=obs}"), Some(0.0));
    assert!(r.gauge("tiered_l1_entries{namespace=obs}").is_some());
    let bodies = r.samples(&format!("tiered_body_seconds{{{site}}}"));
    let requests = r.samples("tiered_l2_request_seconds{namespace=obs}");
    println!(
        "metrics: {} names recorded; tiered_body_seconds samples {bodies}, tiered_l2_request_seconds samples {requests}",
        r.names().len()
    );
    assert_eq!(bodies, 5, "one sample per body run");
    assert!(
        requests >= 15,
        "the reads, fills and the invalidation: {requests}"
    );
}
