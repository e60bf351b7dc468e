//! [`Runtime`]: the cheap handle over one instance's L1, L2, flights and counters; the
//! process-wide installed runtime; task-local scopes.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use crate::coalesce::Flights;
use crate::config::{Builder, Config};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::TypedL1;
use crate::l2::L2;
use crate::site::Site;
use crate::stats::{SiteTable, Stats};

tokio::task_local! {
    static CURRENT: Runtime;
}

static INSTALLED: OnceLock<Runtime> = OnceLock::new();
static DEFAULT: OnceLock<Runtime> = OnceLock::new();

/// One cache instance: an L1, an optional L2 connection, the in-flight computations and the
/// counters. Cloning is cheap (an `Arc`); all clones are the same instance.
///
/// Memoized calls use, in this order: the runtime of the enclosing [`scope`](Self::scope), the
/// [installed](Builder::install) one, or a lazily created embedded default (L1 only, default
/// options; one INFO line is logged when it is created). A later `install()` takes precedence
/// over that default.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tiered_runtime::Error> {
/// use tiered_runtime::{Plain, Runtime, Site, SiteOptions, memoize};
///
/// static DOUBLE: Site = Site::new("doc::double", "double:<n>", SiteOptions::DEFAULT);
///
/// async fn double(n: u32) -> u32 {
///     memoize::<Plain<u32>, _, _>(&DOUBLE, &[&n], move || async move { n * 2 }).await
/// }
///
/// let a = Runtime::builder().namespace("a").build().await?;
/// let b = Runtime::builder().namespace("b").build().await?;
/// let run = double;
/// assert_eq!(a.scope(run(2)).await, 4);
/// assert_eq!(a.scope(run(2)).await, 4);
/// assert_eq!(b.scope(run(2)).await, 4);
/// assert_eq!(a.stats().total.computations, 1);
/// assert_eq!(b.stats().total.computations, 1); // separate instances, separate L1s
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) l2: Option<L2>,
    /// Value type per key template, to report two sites that share a template (cold path).
    templates: Mutex<HashMap<&'static str, &'static str>>,
    pub(crate) flights: Flights,
    pub(crate) stats: Arc<SiteTable>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A [`Builder`] with default options.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) async fn from_config(config: Config) -> Result<Runtime> {
        let stats = Arc::new(SiteTable::new());
        let l2 = match &config.redis {
            Some(target) => Some(L2::start(target, &config, stats.clone()).await?),
            None => None,
        };
        Ok(Self::assemble(config, l2, stats))
    }

    fn assemble(config: Config, l2: Option<L2>, stats: Arc<SiteTable>) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                templates: Mutex::new(HashMap::new()),
                config,
                l2,
                flights: Flights::new(),
                stats,
            }),
        }
    }

    fn embedded_default() -> Runtime {
        tracing::info!(
            "tiered: no runtime installed; memoized calls use an embedded L1-only default \
             (call tiered::Runtime::builder()…install() at start-up to configure Redis)"
        );
        let config = Builder::defaults();
        Self::assemble(config, None, Arc::new(SiteTable::new()))
    }

    /// The runtime memoized calls would use here: scoped, else installed, else the embedded
    /// default.
    pub fn current() -> Runtime {
        with_current(Runtime::clone)
    }

    /// The installed runtime, if [`Builder::install`] succeeded.
    pub fn installed() -> Option<Runtime> {
        INSTALLED.get().cloned()
    }

    /// Runs `fut` with this runtime as the current one (task-local). The returned future owns
    /// a handle, so it can be spawned. Tasks spawned inside `fut` do not inherit the scope;
    /// wrap their futures in `scope` too.
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> + use<F> {
        CURRENT.scope(self.clone(), fut)
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A snapshot of the counters, summed and per site.
    pub fn stats(&self) -> Stats {
        let (total, sites) = self.inner.stats.snapshot();
        Stats {
            total,
            sites,
            inflight: self.inner.flights.len(),
            l1_entries: self.inner.stats.l1s().map(|l1| l1.entry_count()).sum(),
            l2_configured: self.inner.l2.is_some(),
            l2_connected: self.inner.l2.as_ref().is_some_and(L2::is_connected),
        }
    }

    /// The key `site` renders for `args` in this runtime's namespace.
    pub fn key(&self, site: &'static Site, args: &[&(dyn Display + Sync)]) -> Result<Key> {
        match site.compiled() {
            Ok(t) => t
                .render(&self.inner.config.namespace, args)
                .ok_or(Error::KeyArity {
                    site: site.name(),
                    template: site.template(),
                    expected: t.placeholders(),
                    got: args.len(),
                }),
            Err(e) => Err(Error::config(
                "key",
                format!("{} in `{}`", e, site.template()),
            )),
        }
    }

    #[inline]
    pub(crate) fn render(
        &self,
        site: &'static Site,
        args: &[&(dyn Display + Sync)],
    ) -> Option<Key> {
        if let Ok(t) = site.compiled()
            && let Some(key) = t.render(&self.inner.config.namespace, args)
        {
            return Some(key);
        }
        if Site::first_time(&site.warned_template) {
            let reason = self.key(site, args).err().map(|e| e.to_string());
            tracing::error!(
                site = site.name(),
                reason,
                "tiered: cannot render the key; calls run uncached"
            );
        }
        None
    }

    /// Invalidates the entry `site` renders for `args`: evicts it from this runtime's L1, then
    /// deletes it in Redis (when configured and the site uses L2).
    ///
    /// The local eviction always happens; the result is `Err` when the remote part could not be
    /// done within `l2_timeout` (or Redis is unavailable), so the caller knows other instances
    /// may still serve the old value until its TTL ends.
    pub async fn invalidate(
        &self,
        site: &'static Site,
        args: &[&(dyn Display + Sync)],
    ) -> Result<()> {
        let key = self.key(site, args)?;
        self.invalidate_key(site, key).await
    }

    async fn invalidate_key(&self, site: &'static Site, key: Key) -> Result<()> {
        let inner = &*self.inner;
        let slot = inner.stats.slot(site);
        if let Some(l1) = slot.l1.get() {
            l1.remove(key.as_str());
        }
        let c = &slot.counters;
        crate::stats::Counters::bump(&c.invalidations_sent);
        match inner.l2.as_ref().filter(|_| site.options().tiers.l2()) {
            Some(l2) => l2.del(key.as_str()).await.map_err(|e| {
                e.count(c);
                e.into_error("del", l2.timeout())
            }),
            None => Ok(()),
        }
    }

    /// Removes every entry from this runtime's L1.
    pub fn flush_l1(&self) {
        for l1 in self.inner.stats.l1s() {
            l1.flush();
        }
        crate::stats::Counters::bump(&self.inner.stats.runtime().l1_flushes);
    }
}

impl Runtime {
    /// `site`'s L1 in this runtime, created on first use. `None` only if the site was used
    /// with another value type before (impossible through the macro, which emits one static
    /// per function).
    #[inline]
    pub(crate) fn l1<V: Clone + Send + Sync + 'static>(
        &self,
        site: &'static Site,
    ) -> Option<&TypedL1<V>> {
        let slot = self.inner.stats.slot(site);
        let l1 = match slot.l1.get() {
            Some(l1) => l1,
            None => slot.l1.get_or_init(|| {
                self.register_type::<V>(site);
                Box::new(TypedL1::<V>::new(
                    self.inner.config.l1_max_entries,
                    self.inner.config.l1_max_ttl,
                ))
            }),
        };
        l1.as_any().downcast_ref::<TypedL1<V>>()
    }

    /// Reports (ERROR, once per site) two sites whose templates and value types collide: their
    /// L1s are separate, but in L2 each reads the other's entries as decode failures.
    fn register_type<V: 'static>(&self, site: &'static Site) {
        let ty = std::any::type_name::<V>();
        let mut templates = self
            .inner
            .templates
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let known = *templates.entry(site.template()).or_insert(ty);
        if known != ty {
            crate::stats::Counters::bump(&self.inner.stats.site(site).type_conflicts);
            if Site::first_time(&site.warned_type) {
                tracing::error!(
                    site = site.name(),
                    template = site.template(),
                    this_type = ty,
                    other_type = known,
                    "tiered: two functions with different return types share this key template; in Redis each will overwrite the other's entries"
                );
            }
        }
    }
}

/// Calls `f` with the current runtime without cloning it.
#[inline]
pub(crate) fn with_current<R>(f: impl Fn(&Runtime) -> R) -> R {
    match CURRENT.try_with(&f) {
        Ok(r) => r,
        Err(_) => f(static_runtime()),
    }
}

fn static_runtime() -> &'static Runtime {
    match INSTALLED.get() {
        Some(rt) => rt,
        None => DEFAULT.get_or_init(Runtime::embedded_default),
    }
}

pub(crate) async fn install(builder: Builder) -> Result<Runtime> {
    if INSTALLED.get().is_some() {
        return Err(Error::AlreadyInstalled);
    }
    let rt = builder.build().await?;
    INSTALLED
        .set(rt.clone())
        .map_err(|_| Error::AlreadyInstalled)?;
    Ok(rt)
}

/// A snapshot of the current runtime's counters (see [`Runtime::current`]).
pub fn stats() -> Stats {
    with_current(Runtime::stats)
}
