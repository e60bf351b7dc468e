//! Log capture for assertions: which events the runtime logged, at which level, with which
//! fields, while one test ran.
//!
//! One global subscriber per test binary ([`install`], done by [`Logs::new`]) records every
//! event emitted on a *tagged* thread, with the tag of that thread; events of untagged threads
//! are not kept (only printed, like every event, when `RUST_LOG` asks for them). A test tags
//! the threads that run its code:
//!
//! - on a multi-thread tokio runtime, with [`Logs::block_on`] (or [`Logs::runtime`]): every
//!   worker and blocking thread of that runtime carries the tag from its start, so the
//!   runtime's background tasks (reconnect supervisors, the invalidation subscriber, the
//!   breaker's callers) are attributed to the test that owns them, while other tests of the
//!   binary run beside it on threads of their own;
//! - on a current-thread runtime (`#[tokio::test]`), with [`Logs::enter`]: every task runs on
//!   the test's thread.
//!
//! A test then reads what it logged ([`Logs::events`], or [`Logs::since`] a [`Logs::mark`]),
//! counts by level, or checks that no event text contains a secret ([`Logs::assert_absent`]).

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One recorded event.
#[derive(Clone, Debug)]
pub struct Event {
    /// Its level.
    pub level: Level,
    /// Its target (the module path, e.g. `tiered_runtime::breaker`).
    pub target: String,
    /// Its message.
    pub message: String,
    /// Its other fields, formatted as the event's `Display`/`Debug` would.
    pub fields: Vec<(&'static str, String)>,
    /// When it was recorded.
    pub at: Instant,
    tag: u64,
}

impl Event {
    /// The value of field `name`, if the event has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Everything the event says, as one line: `LEVEL target: message k=v …`.
    pub fn text(&self) -> String {
        let mut s = format!("{} {}: {}", self.level, self.target, self.message);
        for (k, v) in &self.fields {
            let _ = write!(s, " {k}={v}");
        }
        s
    }
}

static EVENTS: Mutex<Vec<Event>> = Mutex::new(Vec::new());
static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The tag of the test this thread works for (0: none).
    static TAG: Cell<u64> = const { Cell::new(0) };
}

fn events() -> std::sync::MutexGuard<'static, Vec<Event>> {
    EVENTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The layer that records events of tagged threads.
struct Capture;

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let tag = TAG.with(Cell::get);
        if tag == 0 {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        events().push(Event {
            level: *meta.level(),
            target: meta.target().to_owned(),
            message: fields.message,
            fields: fields.others,
            at: Instant::now(),
            tag,
        });
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.others.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.message = value;
        } else {
            self.others.push((field.name(), value));
        }
    }
}

/// Installs the capture (and a `RUST_LOG`-filtered printer to the test output) as the global
/// subscriber of this test binary, once. Panics if another global subscriber was installed
/// first (the capture would then see nothing).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let print = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::EnvFilter::from_default_env());
        let subscriber = tracing_subscriber::registry().with(Capture).with(print);
        tracing::subscriber::set_global_default(subscriber)
            .expect("another global tracing subscriber was installed before the log capture");
    });
}

/// The events of one test: the threads it tags and what was logged on them.
pub struct Logs {
    tag: u64,
}

/// Keeps the current thread tagged (see [`Logs::enter`]); restores its previous tag on drop.
pub struct Entered {
    previous: u64,
}

impl Drop for Entered {
    fn drop(&mut self) {
        TAG.with(|t| t.set(self.previous));
    }
}

impl Default for Logs {
    fn default() -> Self {
        Self::new()
    }
}

impl Logs {
    /// A new capture with a tag of its own (installs the global subscriber on first use).
    pub fn new() -> Logs {
        install();
        Logs {
            tag: NEXT_TAG.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Tags the current thread until the guard drops: on a current-thread tokio runtime every
    /// task runs on it, so this captures all of a `#[tokio::test]`'s events.
    pub fn enter(&self) -> Entered {
        let previous = TAG.with(|t| t.replace(self.tag));
        Entered { previous }
    }

    /// A multi-thread tokio runtime with `workers` worker threads, all of whose threads
    /// (workers and blocking pool) are tagged from their start.
    pub fn runtime(&self, workers: usize) -> tokio::runtime::Runtime {
        let tag = self.tag;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .on_thread_start(move || TAG.with(|t| t.set(tag)))
            .build()
            .expect("tokio runtime")
    }

    /// Runs `fut` on [`runtime`](Self::runtime)`(workers)`, the calling thread tagged too, as
    /// `#[tokio::test(flavor = "multi_thread", worker_threads = N)]` would; then shuts the
    /// runtime down (giving its blocking threads a second).
    pub fn block_on<F: std::future::Future>(&self, workers: usize, fut: F) -> F::Output {
        let rt = self.runtime(workers);
        let out = {
            let _entered = self.enter();
            rt.block_on(fut)
        };
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        out
    }

    /// A point in the log: [`since`](Self::since) returns what came after it.
    pub fn mark(&self) -> usize {
        events().len()
    }

    /// Every event this test logged.
    pub fn events(&self) -> Vec<Event> {
        self.since(0)
    }

    /// The events this test logged after `mark`.
    pub fn since(&self, mark: usize) -> Vec<Event> {
        events()
            .iter()
            .skip(mark)
            .filter(|e| e.tag == self.tag)
            .cloned()
            .collect()
    }

    /// The events this test logged after `mark` at `level` whose message contains `text`.
    pub fn matching(&self, mark: usize, level: Level, text: &str) -> Vec<Event> {
        self.since(mark)
            .into_iter()
            .filter(|e| e.level == level && e.message.contains(text))
            .collect()
    }

    /// How many events this test logged after `mark` at `level`.
    pub fn count(&self, mark: usize, level: Level) -> usize {
        self.since(mark).iter().filter(|e| e.level == level).count()
    }

    /// The events this test logged whose text ([`Event::text`]) contains `canary`.
    pub fn containing(&self, canary: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.text().contains(canary))
            .collect()
    }

    /// Fails the test if any event it logged contains `canary` (a password, a value).
    pub fn assert_absent(&self, canary: &str) {
        let found: Vec<String> = self.containing(canary).iter().map(Event::text).collect();
        assert!(found.is_empty(), "`{canary}` was logged: {found:#?}");
    }

    /// Prints this test's events at WARN and ERROR after `mark`, one a line, each prefixed by
    /// `what`.
    pub fn print_warnings(&self, what: &str, mark: usize) {
        for e in self.since(mark) {
            if e.level <= Level::WARN {
                println!("{what}: {}", e.text());
            }
        }
    }

    /// Prints this test's events at `level` or more severe after `mark`, one a line, each with
    /// its time since `origin` and prefixed by `what`: the story of a fault, as logged.
    pub fn print_timeline(&self, what: &str, mark: usize, level: Level, origin: Instant) {
        for e in self.since(mark) {
            if e.level <= level {
                let at = e.at.saturating_duration_since(origin);
                println!("{what}: {at:>12.3?} {}", e.text());
            }
        }
    }
}
