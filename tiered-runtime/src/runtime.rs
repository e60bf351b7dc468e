//! [`Runtime`]: the cheap handle over one instance's L1, L2, flights and counters; the
//! process-wide installed runtime; task-local scopes.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use crate::bus::{Action, Bus, FlushReason, Generations};
use crate::coalesce::Flights;
use crate::config::{Builder, Config};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::TypedL1;
use crate::l2::L2;
use crate::site::Site;
use crate::stats::{Counters, SiteTable, Stats};

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
    /// The invalidation bus (with Redis only).
    pub(crate) bus: Option<Bus>,
    pub(crate) generations: Generations,
    #[cfg(feature = "test-hooks")]
    pub(crate) hooks: crate::hooks::Hooks,
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
        let Some(target) = config.redis.clone() else {
            return Ok(Self::assemble(config, None, None, stats));
        };
        let l2 = L2::start(&target, &config, stats.clone()).await?;
        let channel = crate::bus::channel(&config.namespace, target.db);
        // The subscription is confirmed before `build()` returns, so no invalidation sent
        // after that is missed. Unreachable Redis: degraded start, the task subscribes later.
        let initial = if l2.is_connected() {
            match crate::bus::subscribe(&target.client, &channel, config.connect_timeout).await {
                Ok(ps) => Some(ps),
                Err(e) if crate::l2::is_auth(&e) => {
                    return Err(Error::Auth {
                        addr: target.addr.clone(),
                        detail: format!("SUBSCRIBE {channel} refused: {}", crate::l2::describe(&e)),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %crate::l2::describe(&e), "tiered: could not subscribe to invalidations at startup; L1 entries live at most degraded_l1_ttl until the subscription is up");
                    None
                }
            }
        } else {
            None
        };
        let bus = Bus::new(
            &config.namespace,
            target.db,
            config.bus_queue,
            initial.is_some(),
        );
        if initial.is_some() {
            Counters::bump(&stats.runtime().bus_subscribes);
        }
        let capacity = config.bus_queue;
        let rt = Self::assemble(config, Some(l2), Some(bus), stats);
        crate::bus::spawn(Arc::downgrade(&rt.inner), initial, capacity);
        Ok(rt)
    }

    fn assemble(
        config: Config,
        l2: Option<L2>,
        bus: Option<Bus>,
        stats: Arc<SiteTable>,
    ) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                templates: Mutex::new(HashMap::new()),
                config,
                l2,
                flights: Flights::new(),
                stats,
                bus,
                generations: Generations::default(),
                #[cfg(feature = "test-hooks")]
                hooks: crate::hooks::Hooks::default(),
            }),
        }
    }

    /// The pause points of this runtime (feature `test-hooks`, for tests only).
    #[cfg(feature = "test-hooks")]
    pub fn hooks(&self) -> &crate::hooks::Hooks {
        &self.inner.hooks
    }

    fn embedded_default() -> Runtime {
        tracing::info!(
            "tiered: no runtime installed; memoized calls use an embedded L1-only default \
             (call tiered::Runtime::builder()…install() at start-up to configure Redis)"
        );
        let config = Builder::defaults();
        Self::assemble(config, None, None, Arc::new(SiteTable::new()))
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
            subscribed: self.inner.bus.as_ref().is_some_and(Bus::is_up),
            bus_queue_peak: self.inner.bus.as_ref().map_or(0, Bus::queue_peak),
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
    /// (with Redis) deletes it in Redis and publishes the invalidation in the same round trip,
    /// so that every other instance evicts it from its L1, then evicts it locally once more. A
    /// computation of the key in flight anywhere stores nothing (see the crate docs).
    ///
    /// The local eviction always happens; the result is `Err` (and `invalidations_failed` is
    /// counted) when the remote part could not be done within `l2_timeout` (or Redis is
    /// unavailable), so the caller knows other instances may still serve the old value until
    /// they notice the gap or its TTL ends.
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
        let c = inner.stats.site(site);
        Counters::bump(&c.invalidations_sent);
        self.evict_local(site.name(), key.as_str());
        let (Some(l2), Some(bus)) = (inner.l2.as_ref(), inner.bus.as_ref()) else {
            return Ok(());
        };
        let l2_key = if site.options().tiers.l2() {
            match self.l2_key(l2, site, &key).await {
                Ok(k) => Some(k),
                Err(e) => {
                    Counters::bump(&c.invalidations_failed);
                    e.count(c);
                    bus.skip();
                    return Err(e.into_error("invalidate", l2.timeout()));
                }
            }
        } else {
            None
        };
        let message = bus.message(Action::Keys {
            site: site.name().to_owned(),
            keys: vec![key.as_str().to_owned()],
        });
        let result = l2
            .del_and_publish(l2_key.as_deref(), bus.channel(), &message)
            .await;
        // Again after the delete: a flight that started between the first eviction and the
        // DEL may have read the old value from Redis.
        self.evict_local(site.name(), key.as_str());
        result.map_err(|e| {
            Counters::bump(&c.invalidations_failed);
            e.count(c);
            e.into_error("invalidate", l2.timeout())
        })
    }

    /// Invalidates every entry of `site` (the generated `invalidate_all_<fn>()`): its
    /// generation in Redis is incremented (so every older key of the site becomes unreachable
    /// without a `SCAN`; old keys expire with their TTL), this runtime's L1 of the site is
    /// dropped, and the new generation is announced to the other instances.
    pub async fn invalidate_site(&self, site: &'static Site) -> Result<()> {
        let c = self.inner.stats.site(site);
        Counters::bump(&c.invalidations_sent);
        let ns = &self.inner.config.namespace;
        let result = self
            .bump_generation(
                &crate::bus::site_generation_key(ns, site.name()),
                |generation| Action::Site {
                    site: site.name().to_owned(),
                    generation,
                },
            )
            .await;
        // After the new generation is known locally: flights that started before it are
        // poisoned, later ones read the new keys.
        self.drop_site(Some(site.name()));
        result.inspect_err(|_| Counters::bump(&c.invalidations_failed))
    }

    /// Invalidates every entry of every function in this runtime's namespace, in every
    /// instance: the namespace's generation in Redis is incremented, L1 is flushed, and the new
    /// generation is announced. Without Redis, flushes L1.
    pub async fn invalidate_all(&self) -> Result<()> {
        let c = self.inner.stats.runtime();
        Counters::bump(&c.invalidations_sent);
        let key = crate::bus::namespace_generation_key(&self.inner.config.namespace);
        let result = self
            .bump_generation(&key, |generation| Action::All { generation })
            .await;
        self.flush(FlushReason::Manual);
        result.inspect_err(|_| Counters::bump(&c.invalidations_failed))
    }

    /// `INCR` of a generation key, recorded locally, then announced.
    async fn bump_generation(&self, key: &str, action: impl FnOnce(u64) -> Action) -> Result<()> {
        let (Some(l2), Some(bus)) = (self.inner.l2.as_ref(), self.inner.bus.as_ref()) else {
            return Ok(());
        };
        let generation = l2.incr(key).await.map_err(|e| {
            bus.skip();
            e.into_error("invalidate", l2.timeout())
        })?;
        let action = action(generation);
        match &action {
            Action::Site { site, generation } => self.inner.generations.set_site(site, *generation),
            Action::All { generation } => self.inner.generations.set_namespace(*generation),
            Action::Keys { .. } => {}
        }
        let message = bus.message(action);
        l2.del_and_publish(None, bus.channel(), &message)
            .await
            .map_err(|e| e.into_error("invalidate", l2.timeout()))
    }

    /// The Redis key of `key`: the key itself while the namespace's and the site's generations
    /// are 0, else followed by `:~g{namespace}.{site}` (a `:` never comes from a value, since
    /// values encode it). Reads the generations from Redis when they are not known (one round
    /// trip, once per site and subscription).
    pub(crate) async fn l2_key(
        &self,
        l2: &L2,
        site: &'static Site,
        key: &Key,
    ) -> std::result::Result<String, crate::l2::L2Error> {
        let gens = &self.inner.generations;
        let (ns, sg) = match gens.get(site.name()) {
            Ok(g) => g,
            Err(era) => {
                let namespace = &self.inner.config.namespace;
                let (ns, sg) = l2
                    .get_two(
                        &crate::bus::namespace_generation_key(namespace),
                        &crate::bus::site_generation_key(namespace, site.name()),
                    )
                    .await?;
                gens.learn(era, site.name(), ns, sg);
                (ns, sg)
            }
        };
        Ok(if ns == 0 && sg == 0 {
            key.as_str().to_owned()
        } else {
            format!("{}:~g{ns}.{sg}", key.as_str())
        })
    }

    /// Evicts `key` from the L1 of the site(s) named `site` and detaches its flight.
    pub(crate) fn evict_local(&self, site: &str, key: &str) {
        self.inner.flights.invalidate_key(key, || {
            for (s, slot) in self.inner.stats.slots() {
                if s.name() == site
                    && let Some(l1) = slot.l1.get()
                {
                    l1.remove(key);
                }
            }
        });
    }

    /// Starts a new L1 epoch for the site(s) named `site` (every site when `None`) and
    /// detaches their flights.
    pub(crate) fn drop_site(&self, site: Option<&str>) {
        self.inner.flights.invalidate_site(site, || {
            for (s, slot) in self.inner.stats.slots() {
                if site.is_none_or(|name| name == s.name())
                    && let Some(l1) = slot.l1.get()
                {
                    l1.new_epoch();
                }
            }
        });
    }

    /// Drops every L1 entry and every flight's right to store (see [`FlushReason`]).
    pub(crate) fn flush(&self, reason: FlushReason) {
        if reason != FlushReason::Manual {
            // Messages may have been lost, generation announcements among them: read the
            // generations from Redis again before the next L2 access.
            self.inner.generations.forget();
        }
        self.drop_site(None);
        reason.count(self.inner.stats.runtime());
    }

    /// Removes every entry from this runtime's L1 (this instance only; see
    /// [`invalidate_all`](Self::invalidate_all) for every instance).
    pub fn flush_l1(&self) {
        self.flush(FlushReason::Manual);
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
