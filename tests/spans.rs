//! Tracing spans: one `tiered.call` span per memoized call, with the outcome of that call
//! (`l1`, `l2`, `miss`, `coalesced`, `stale`, `bypass`), recorded by a subscriber of this test
//! binary's own that keeps every closed span with its fields; a `tiered.body` span per body run.
//! Against a real `redis-server`.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use support::{RedisServer, bounded};
use tiered::{Plain, Runtime, Site, SiteOptions, memoize, tiered_cache};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Subscriber, span};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A closed span: its name and its fields as recorded last.
#[derive(Clone, Debug)]
struct Closed {
    name: &'static str,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Recorder {
    open: Mutex<HashMap<u64, Closed>>,
    closed: Mutex<Vec<Closed>>,
}

/// The layer: a handle on the shared [`Recorder`].
struct Layered(Arc<Recorder>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Layered {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.into_u64(),
                Closed {
                    name: attrs.metadata().name(),
                    fields,
                },
            );
    }
    fn on_record(&self, id: &span::Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(span) = self
            .0
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id.into_u64())
        {
            values.record(&mut Fields(&mut span.fields));
        }
    }
    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let span = self
            .0
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id.into_u64());
        if let Some(span) = span {
            self.0
                .closed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(span);
        }
    }
}

fn recorder() -> Arc<Recorder> {
    static R: OnceLock<Arc<Recorder>> = OnceLock::new();
    R.get_or_init(|| {
        let r = Arc::new(Recorder::default());
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(Layered(r.clone())),
        )
        .expect("the only subscriber of this binary");
        r
    })
    .clone()
}

/// The outcomes of the closed `tiered.call` spans of `site`, in closing order.
fn outcomes(r: &Recorder, site: &str) -> Vec<String> {
    r.closed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|s| {
            s.name == "tiered.call" && s.fields.get("site").map(String::as_str) == Some(site)
        })
        .map(|s| s.fields.get("outcome").cloned().unwrap_or_default())
        .collect()
}

fn spans_named(r: &Recorder, name: &str, site: &str) -> Vec<Closed> {
    r.closed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|s| s.name == name && s.fields.get("site").map(String::as_str) == Some(site))
        .cloned()
        .collect()
}

static PLAIN: Site = Site::new("spans::plain", "plain:<id>", SiteOptions::DEFAULT);
static KEYED: Site = Site::new(
    "spans::keyed",
    "keyed:<id>",
    SiteOptions {
        trace_keys: true,
        ..SiteOptions::DEFAULT
    },
);
static BYPASS: Site = Site::new("spans::bypass", "bypass:<id>", SiteOptions::DEFAULT);

async fn plain(rt: &Runtime, id: u64) -> u64 {
    rt.scope(async move { memoize::<Plain<u64>, _, _>(&PLAIN, &[&id], || async move { id }).await })
        .await
}

#[tiered_cache(key = "slow:<id>", ttl = "60s")]
async fn slow(id: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(100)).await;
    id
}

#[tiered_cache(key = "mk:<id>", ttl = "60s", trace_keys = true)]
async fn macro_keyed(id: u64) -> u64 {
    id
}

static FAIL: AtomicBool = AtomicBool::new(false);
static FS_RUNS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
struct Down;

#[tiered_cache(key = "fs:<id>", ttl = "200ms", fail_safe = "10s")]
async fn fs(id: u64) -> Result<u64, Down> {
    FS_RUNS.fetch_add(1, Ordering::SeqCst);
    if FAIL.load(Ordering::SeqCst) {
        Err(Down)
    } else {
        Ok(id)
    }
}

/// One `tiered.call` span per call, with the outcome of each: a first call computes (`miss`,
/// with one `tiered.body` span and its L2 read round trips), the next is an L1 hit (`l1`),
/// another instance reads L2 (`l2`); of two concurrent callers one computes and one waits
/// (`coalesced`); a failing body past the TTL under fail-safe gets the stale value (`stale`);
/// a call whose key cannot be rendered runs uncached (`bypass`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_span_per_call_with_its_outcome() {
    let r = recorder();
    let redis = RedisServer::start();
    let build = || async {
        bounded(
            "build",
            Runtime::builder()
                .namespace("spans")
                .redis_url(redis.url())
                .build(),
        )
        .await
        .expect("runtime")
    };
    let (a, b) = (build().await, build().await);
    assert_eq!(plain(&a, 1).await, 1);
    assert_eq!(plain(&a, 1).await, 1);
    assert_eq!(plain(&b, 1).await, 1);
    assert_eq!(outcomes(&r, "spans::plain"), ["miss", "l1", "l2"]);
    let calls = spans_named(&r, "tiered.call", "spans::plain");
    assert_eq!(
        calls[0].fields.get("l2_round_trips").map(String::as_str),
        Some("1"),
        "the miss read L2 once"
    );
    assert_eq!(spans_named(&r, "tiered.body", "spans::plain").len(), 1);

    let (x, y) = tokio::join!(a.scope(slow(7)), a.scope(slow(7)));
    assert_eq!((x, y), (7, 7));
    let mut slow_outcomes = outcomes(&r, "spans::slow");
    slow_outcomes.sort();
    assert_eq!(slow_outcomes, ["coalesced", "miss"]);

    assert_eq!(a.scope(fs(3)).await.ok(), Some(3));
    tokio::time::sleep(Duration::from_millis(300)).await;
    FAIL.store(true, Ordering::SeqCst);
    assert_eq!(a.scope(fs(3)).await.ok(), Some(3), "the stale value");
    assert_eq!(FS_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(outcomes(&r, "spans::fs"), ["miss", "stale"]);

    // Two arguments for one placeholder: the key cannot be rendered.
    let v = a
        .scope(async {
            memoize::<Plain<u64>, _, _>(&BYPASS, &[&1u64, &2u64], || async { 5 }).await
        })
        .await;
    assert_eq!(v, 5);
    assert_eq!(outcomes(&r, "spans::bypass"), ["bypass"]);
    let all = r.closed.lock().unwrap_or_else(|p| p.into_inner()).len();
    println!(
        "spans: {all} closed spans recorded; plain {:?}, slow {slow_outcomes:?}, fs {:?}, bypass {:?}",
        outcomes(&r, "spans::plain"),
        outcomes(&r, "spans::fs"),
        outcomes(&r, "spans::bypass")
    );
    // No span carries an argument, a key or a value, but for a function that opted in
    // (`trace_keys`), whose call spans carry the key, on a miss and on an L1 hit.
    for s in r.closed.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        for v in s.fields.values() {
            assert!(!v.contains("plain:") && !v.contains("<1>"), "{s:?}");
        }
    }
    for _ in 0..2 {
        let v = a
            .scope(async { memoize::<Plain<u64>, _, _>(&KEYED, &[&9u64], || async { 9 }).await })
            .await;
        assert_eq!(v, 9);
    }
    let keyed = spans_named(&r, "tiered.call", "spans::keyed");
    let keys: Vec<(Option<&String>, Option<&String>)> = keyed
        .iter()
        .map(|s| (s.fields.get("outcome"), s.fields.get("key")))
        .collect();
    println!("spans: trace_keys: {keys:?}");
    assert_eq!(keyed.len(), 2);
    assert_eq!(a.scope(macro_keyed(4)).await, 4);
    let by_macro = spans_named(&r, "tiered.call", "spans::macro_keyed");
    assert_eq!(
        by_macro[0].fields.get("key").map(String::as_str),
        Some("spans:mk:<4>"),
        "the attribute `trace_keys = true`"
    );
    for s in &keyed {
        assert_eq!(
            s.fields.get("key").map(String::as_str),
            Some("spans:keyed:<9>")
        );
    }
}
