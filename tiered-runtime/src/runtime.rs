//! [`Runtime`]: the cheap handle over one instance's L1, L2, flights and counters; the
//! process-wide installed runtime; task-local scopes.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::codec::Stamp;
use crate::coherence::bus::{self, Bus, Ctx};
use crate::coherence::generations;
use crate::coherence::lease::Janitor;
use crate::coherence::local::{FlushReason, Local};
use crate::coherence::message::{self, Action};
use crate::coherence::tracking::{self, TrackCtx, Tracked, Tracking};
use crate::config::{Builder, Config};
use crate::error::{Error, Result};
use crate::key::{Args, Key};
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
    /// Redis (absent in embedded mode).
    pub(crate) l2: Option<Arc<L2>>,
    /// Flights, L1s, counters and cached generations (what the bus tasks may touch).
    pub(crate) local: Arc<Local>,
    /// The invalidation bus (with Redis only).
    pub(crate) bus: Option<Arc<Bus>>,
    /// Client tracking (`client_tracking`, one Redis server only).
    pub(crate) tracking: Option<Arc<Tracking>>,
    /// Releases leases their flights could not (with Redis only).
    pub(crate) janitor: Option<Janitor>,
    /// Writes queued off the callers' path (with Redis only).
    pub(crate) writer: Option<crate::background::Writer>,
    /// [`Runtime::shutdown`] began: new flights leave Redis alone.
    pub(crate) closing: std::sync::atomic::AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: what `shutdown` does, in the background (best effort:
        // without a Tokio runtime the connections just close). The goodbye tells the other
        // instances not to take this one's silence for lost invalidations.
        let (Some(l2), Some(bus)) = (self.l2.clone(), self.bus.clone()) else {
            return;
        };
        if self.closing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        if let Some(tracking) = &self.tracking {
            tracking.stop();
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let (writer, janitor) = (self.writer.take(), self.janitor.take());
                let timeout = self.config.shutdown_timeout;
                handle.spawn(async move {
                    close(&l2, &bus, writer.as_ref(), janitor.as_ref(), timeout).await;
                });
            }
            Err(_) => {
                bus.stop();
                l2.close();
            }
        }
    }
}

/// Drains the write queue, gives the janitor a last round, says goodbye on the bus, ends the
/// subscription and closes the connection; each wait bounded by what is left of `timeout`.
async fn close(
    l2: &L2,
    bus: &Bus,
    writer: Option<&crate::background::Writer>,
    janitor: Option<&Janitor>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    if let Some(writer) = writer {
        writer.drain(left()).await;
    }
    if let Some(janitor) = janitor {
        janitor.stop(left()).await;
    }
    let _ = tokio::time::timeout(left(), l2.publish(bus.channel(), &bus.bye())).await;
    bus.stop();
    l2.close();
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
        let table = Arc::new(SiteTable::new(&config.namespace));
        let local = Arc::new(Local::new(table.clone()));
        let Some(target) = config.redis.clone() else {
            return Ok(Self::assemble(config, None, local, None, None, None, None));
        };
        let l2 = Arc::new(L2::start(&target, &config, table.clone()).await?);
        let channel = message::channel(&config.namespace, target.db);
        let field = if target.cluster.is_some() {
            "redis_cluster"
        } else {
            "redis_url"
        };
        let nodes = match &target.cluster {
            Some(seeds) if config.cluster_bus == crate::config::ClusterBus::Sharded => {
                bus::Nodes::Sharded(
                    seeds
                        .iter()
                        .map(|c| c.get_connection_info().clone())
                        .collect(),
                    target.tls.clone(),
                )
            }
            Some(seeds) => bus::Nodes::Classic(resp3_clients(seeds, field)?),
            None => {
                bus::Nodes::Classic(resp3_clients(std::slice::from_ref(&target.client), field)?)
            }
        };
        // The subscription is confirmed before `build()` returns, so no invalidation sent
        // after that is missed. Unreachable Redis: degraded start, the task subscribes later.
        let initial = if l2.is_connected() {
            match bus::subscribe(
                &nodes,
                0,
                &channel,
                config.connect_timeout,
                config.bus_queue,
                table.clone(),
            )
            .await
            {
                Ok(sub) => Some(sub),
                Err(e) if crate::l2::is_auth(&e) => {
                    return Err(Error::Auth {
                        addr: target.addr.clone(),
                        detail: format!(
                            "{} {channel} refused: {}",
                            nodes.command(),
                            crate::l2::describe(&e)
                        ),
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
        let bus = Arc::new(Bus::new(
            &config.namespace,
            target.db,
            config.bus_queue,
            initial.is_some(),
        ));
        if initial.is_some() {
            Counters::bump(&table.runtime().bus_subscribes);
        }
        let tracking = Self::start_tracking(&config, &target, &l2, &local).await?;
        let janitor = Janitor::start(Arc::downgrade(&l2), table.clone());
        let writer = crate::background::Writer::start(
            Arc::downgrade(&l2),
            table,
            config.background_queue,
            #[cfg(feature = "test-hooks")]
            Arc::downgrade(&local),
        );
        let ctx = Ctx {
            local: Arc::downgrade(&local),
            bus: Arc::downgrade(&bus),
            l2: Arc::downgrade(&l2),
            nodes,
            connect_timeout: config.connect_timeout,
            ping_timeout: config.l2_timeout.max(Duration::from_millis(250)),
        };
        let (tracking, track) = match tracking {
            Some((t, ctx, initial)) => (Some(t), Some((ctx, initial))),
            None => (None, None),
        };
        let rt = Self::assemble(
            config,
            Some(l2),
            local,
            Some(bus),
            tracking,
            Some(janitor),
            Some(writer),
        );
        if let Some((ctx, initial)) = track {
            tracking::spawn(ctx, initial);
        }
        bus::spawn(ctx, initial);
        Ok(rt)
    }

    /// With `client_tracking`: connects the tracking connection before `build()` returns
    /// (when Redis answers), so that every write made afterwards is reported.
    async fn start_tracking(
        config: &Config,
        target: &crate::config::RedisTarget,
        l2: &L2,
        local: &Arc<Local>,
    ) -> Result<Option<(Arc<Tracking>, TrackCtx, Option<Tracked>)>> {
        if !config.client_tracking {
            return Ok(None);
        }
        let client = bus::resp3(&target.client)
            .map_err(|e| Error::config("client_tracking", crate::l2::describe(&e)))?;
        let tracking = Arc::new(Tracking::new(&config.namespace, config.bus_queue));
        let initial = if l2.is_connected() {
            match tracking::connect(
                &client,
                tracking.prefix(),
                config.connect_timeout,
                config.bus_queue,
                local.table.clone(),
            )
            .await
            {
                Ok(t) => {
                    tracking.set_up();
                    Counters::bump(&local.table.runtime().tracking_connects);
                    Some(t)
                }
                Err(e) if crate::l2::is_auth(&e) => {
                    return Err(Error::Auth {
                        addr: target.addr.clone(),
                        detail: format!("CLIENT TRACKING refused: {}", crate::l2::describe(&e)),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %crate::l2::describe(&e), "tiered: could not turn client tracking on at startup; L1 entries live at most degraded_l1_ttl until it is up");
                    None
                }
            }
        } else {
            None
        };
        let ctx = TrackCtx {
            local: Arc::downgrade(local),
            tracking: Arc::downgrade(&tracking),
            client,
            connect_timeout: config.connect_timeout,
            ping_timeout: config.l2_timeout.max(Duration::from_millis(250)),
        };
        Ok(Some((tracking, ctx, initial)))
    }

    fn assemble(
        config: Config,
        l2: Option<Arc<L2>>,
        local: Arc<Local>,
        bus: Option<Arc<Bus>>,
        tracking: Option<Arc<Tracking>>,
        janitor: Option<Janitor>,
        writer: Option<crate::background::Writer>,
    ) -> Runtime {
        let rt = Runtime {
            inner: Arc::new(Inner {
                config,
                l2,
                local,
                bus,
                tracking,
                janitor,
                writer,
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        #[cfg(feature = "metrics")]
        crate::telemetry::spawn_exporter(&rt);
        rt
    }

    /// Hands this runtime's counters and gauges to the installed `metrics` recorder now (they
    /// are also handed over every second by a task of the runtime): call it before rendering
    /// a scrape for figures of this instant. Feature `metrics`.
    #[cfg(feature = "metrics")]
    pub fn export_metrics(&self) {
        crate::telemetry::export(self);
    }

    /// The per-site table of this runtime (counters, L1s).
    #[inline]
    pub(crate) fn table(&self) -> &SiteTable {
        &self.inner.local.table
    }

    /// The pause points of this runtime (feature `test-hooks`, for tests only).
    #[cfg(feature = "test-hooks")]
    pub fn hooks(&self) -> &crate::hooks::Hooks {
        &self.inner.local.hooks
    }

    fn embedded_default() -> Runtime {
        tracing::info!(
            "tiered: no runtime installed; memoized calls use an embedded L1-only default \
             (call tiered::Runtime::builder()…install() at start-up to configure Redis)"
        );
        let config = Builder::defaults();
        let local = Arc::new(Local::new(Arc::new(SiteTable::new(&config.namespace))));
        Self::assemble(config, None, local, None, None, None, None)
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

    /// Shuts this instance down, bounded by `shutdown_timeout` (default 5 s): computations in
    /// flight finish (their fills land or their leases are released), queued background writes
    /// land (what cannot within the bound is dropped and counted in
    /// `background_writes_dropped`), leases awaiting release get a last attempt, the
    /// invalidation subscription (and the client-tracking connection) ends and the connection
    /// closes; every task of the instance
    /// ends. Afterwards memoized calls through this runtime still answer, from L1 or by
    /// computing, without Redis; invalidations evict locally and return [`Error::Shutdown`].
    /// Dropping the last handle of a runtime does the same in the background. Calling it again
    /// does nothing.
    pub async fn shutdown(&self) {
        let inner = &*self.inner;
        if inner
            .closing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let (Some(l2), Some(bus)) = (inner.l2.as_deref(), inner.bus.as_deref()) else {
            return;
        };
        let timeout = inner.config.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        while inner.local.flights.len() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(tracking) = &inner.tracking {
            tracking.stop();
        }
        close(l2, bus, inner.writer.as_ref(), inner.janitor.as_ref(), left).await;
    }

    /// Whether [`shutdown`](Self::shutdown) began.
    pub(crate) fn closing(&self) -> bool {
        self.inner
            .closing
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A snapshot of the counters, summed and per site.
    pub fn stats(&self) -> Stats {
        let (total, sites) = self.table().snapshot();
        Stats {
            total,
            sites,
            inflight: self.inner.local.flights.len(),
            l1_entries: self.table().l1s().map(|l1| l1.entry_count()).sum(),
            l1_bytes: self.table().l1s().map(|l1| l1.bytes()).sum(),
            l2_configured: self.inner.l2.is_some(),
            l2_connected: self.inner.l2.as_ref().is_some_and(|l2| l2.is_connected()),
            subscribed: self.inner.bus.as_ref().is_some_and(|b| b.is_up()),
            tracking: self.inner.tracking.as_ref().is_some_and(|t| t.is_up()),
            l2_breakers_open: self.inner.l2.as_ref().map_or(0, |l2| l2.open_breakers()),
            bus_queue_peak: self.inner.bus.as_ref().map_or(0, |b| b.queue_peak()),
            bus_origins: self.inner.bus.as_ref().map_or(0, |b| b.origins()),
        }
    }

    /// The key `site` renders for `args` in this runtime's namespace.
    pub fn key(&self, site: &'static Site, args: &[&(dyn Display + Sync)]) -> Result<Key> {
        self.key_args(site, args)
    }

    pub(crate) fn key_args<A: Args + ?Sized>(&self, site: &'static Site, args: &A) -> Result<Key> {
        match site.compiled() {
            Ok(t) => t
                .render_args(&self.inner.config.namespace, args)
                .ok_or(Error::KeyArity {
                    site: site.name(),
                    template: site.template(),
                    expected: t.placeholders(),
                    got: args.count(),
                }),
            Err(e) => Err(Error::config(
                "key",
                format!("{} in `{}`", e, site.template()),
            )),
        }
    }

    #[inline]
    pub(crate) fn render<A: Args + ?Sized>(&self, site: &'static Site, args: &A) -> Option<Key> {
        if let Ok(t) = site.compiled()
            && let Some(key) = t.render_args(&self.inner.config.namespace, args)
        {
            if site.options().tags.is_empty() {
                return Some(key);
            }
            // A function with tags: its entry carries them (rendered on a miss only).
            if let Some(tags) = site.tag_templates().and_then(|templates| {
                templates
                    .iter()
                    .map(|t| t.render(args))
                    .collect::<Option<Vec<String>>>()
            }) {
                return Some(key.with_tags(tags));
            }
        }
        if Site::first_time(&site.warned_template) {
            let reason = self.key_args(site, args).err().map(|e| e.to_string());
            tracing::error!(
                site = site.name(),
                reason,
                "tiered: cannot render the key (or its tags); calls run uncached"
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
        let c = self.table().site(site);
        Counters::bump(&c.invalidations_sent);
        self.evict_local(site.name(), key.as_str());
        let (Some(l2), Some(bus)) = (inner.l2.as_ref(), inner.bus.as_ref()) else {
            return Ok(());
        };
        if self.closing() {
            return Err(Error::Shutdown);
        }
        #[cfg(feature = "test-hooks")]
        inner.local.hooks.invalidation.pass().await;
        // Keys carry no generation: this deletes the entry every instance reads, whatever
        // generations any of them knows.
        // The refresh lock goes too (fail-safe and refresh-ahead recompute under it): the next
        // recomputation need not wait for it to expire.
        let lock;
        let del: &[&str] = if !site.options().tiers.l2() {
            &[]
        } else if site.options().refresh_ahead.is_some() || self.fail_safe(site).is_some() {
            lock = crate::flight::refresh_lock_key(key.as_str());
            &[key.as_str(), lock.as_str()]
        } else {
            &[key.as_str()]
        };
        let message = bus.message(Action::Keys {
            site: site.name().to_owned(),
            keys: vec![key.as_str().to_owned()],
        });
        let channel = bus.channel();
        #[cfg(feature = "test-hooks")]
        let lost = format!("{channel}:lost");
        #[cfg(feature = "test-hooks")]
        let channel = if inner.local.hooks.take_lost_publish() {
            lost.as_str()
        } else {
            channel
        };
        let result = if l2.publishes_apart() {
            // The sharded bus: the message goes to another master than the deletes, so only
            // after their replies (requests to several nodes keep no order), and no instance
            // re-reads an old value after the message.
            match l2.delete(del).await {
                Ok(()) => {
                    #[cfg(feature = "test-hooks")]
                    inner.local.hooks.publication.pass().await;
                    l2.publish(channel, &message).await
                }
                Err(e) => Err(e),
            }
        } else {
            l2.del_and_publish(del, channel, &message).await
        };
        // Again after the delete: a flight that started between the first eviction and the
        // DEL may have read the old value from Redis.
        self.evict_local(site.name(), key.as_str());
        result.map_err(|e| {
            Counters::bump(&c.invalidations_failed);
            bus.publish_failed();
            e.count(c);
            e.into_error("invalidate", l2.timeout())
        })
    }

    /// Invalidates every entry of `site` (the generated `invalidate_all_<fn>()`) in every
    /// instance: its generation in Redis is incremented (every value written before is stamped
    /// with an older one and becomes a miss, without a `SCAN`; old values expire with their
    /// TTL), this runtime's L1 of the site is dropped, and the new generation is announced.
    pub async fn invalidate_site(&self, site: &'static Site) -> Result<()> {
        let c = self.table().site(site);
        Counters::bump(&c.invalidations_sent);
        let result = self
            .bump_generation(site.name(), |generation| Action::Site {
                site: site.name().to_owned(),
                generation,
            })
            .await;
        // After the new generation is known locally: flights that started before it are
        // poisoned, later ones read under the new generation.
        self.drop_site(Some(site.name()));
        result.inspect_err(|_| Counters::bump(&c.invalidations_failed))
    }

    /// Invalidates every entry carrying `tag` (`tags = ["tenant:<tenant>"]` on the attribute;
    /// `invalidate_tag("tenant:acme")`), across functions and instances, without `SCAN`: the
    /// tag's generation in Redis is raised (every value stamped with an older one becomes a
    /// miss; old values expire with their TTL), this runtime's L1 of every function with a tag
    /// template that can render `tag` starts a new epoch, and the new generation is announced
    /// so that every instance does the same. Without Redis, drops those L1s. `Err` (and
    /// `invalidations_failed`) when the Redis part could not be done.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        let c = self.table().runtime();
        Counters::bump(&c.invalidations_sent);
        let result = self
            .bump_generation(&generations::tag_field(tag), |generation| Action::Tag {
                tag: tag.to_owned(),
                generation,
            })
            .await;
        // After the new generation is known locally (see `invalidate_site`).
        self.inner.local.drop_tagged(tag);
        result.inspect_err(|_| Counters::bump(&c.invalidations_failed))
    }

    /// Invalidates every entry of every function in this runtime's namespace, in every
    /// instance: the namespace's generation in Redis is incremented, L1 is flushed, and the new
    /// generation is announced. Without Redis, flushes L1.
    pub async fn invalidate_all(&self) -> Result<()> {
        let c = self.table().runtime();
        Counters::bump(&c.invalidations_sent);
        let result = self
            .bump_generation(generations::NAMESPACE_FIELD, |generation| Action::All {
                generation,
            })
            .await;
        self.flush(FlushReason::Manual);
        result.inspect_err(|_| Counters::bump(&c.invalidations_failed))
    }

    /// Raises a generation in Redis, records it locally, then announces it. A failure uses up a
    /// sequence number, so that receivers notice (the increment may have happened).
    async fn bump_generation(&self, field: &str, action: impl FnOnce(u64) -> Action) -> Result<()> {
        let (Some(l2), Some(bus)) = (self.inner.l2.as_ref(), self.inner.bus.as_ref()) else {
            return Ok(());
        };
        if self.closing() {
            return Err(Error::Shutdown);
        }
        let key = generations::key(&self.inner.config.namespace);
        let generation = l2
            .raise_generation(&key, field, generations::now_ms())
            .await
            .map_err(|e| {
                // The increment may have happened: make receivers forget their generations.
                bus.skip();
                bus.publish_failed();
                e.into_error("invalidate", l2.timeout())
            })?;
        let action = action(generation);
        let gens = &self.inner.local.generations;
        match &action {
            Action::Site { site, generation } => gens.set_site(site, *generation),
            Action::Tag { tag, generation } => gens.set_tag(tag, *generation),
            Action::All { generation } => gens.set_namespace(*generation),
            _ => {}
        }
        let message = bus.message(action);
        l2.publish(bus.channel(), &message).await.map_err(|e| {
            bus.publish_failed();
            e.into_error("invalidate", l2.timeout())
        })
    }

    /// The generations an L2 read of `site` may rely on without asking Redis: the cached ones,
    /// while the subscription is up (else every read asks). `Err` carries the era to learn
    /// under.
    pub(crate) fn known_generations(
        &self,
        site: &'static Site,
        tags: &[String],
    ) -> std::result::Result<Stamp, u64> {
        let gens = &self.inner.local.generations;
        match self.inner.bus.as_ref() {
            Some(bus) if bus.is_up() => gens.get(site.name(), tags),
            _ => Err(gens.era()),
        }
    }

    /// Evicts `key` from the L1 of the site named `site` and detaches its flight.
    pub(crate) fn evict_local(&self, site: &str, key: &str) {
        self.inner.local.evict(site, key);
    }

    /// Starts a new L1 epoch for the site named `site` (every site when `None`).
    pub(crate) fn drop_site(&self, site: Option<&str>) {
        self.inner.local.drop_site(site);
    }

    /// Drops every L1 entry and every flight's right to store.
    pub(crate) fn flush(&self, reason: FlushReason) {
        self.inner.local.flush(reason);
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
        let slot = self.table().slot(site);
        let l1 = match slot.l1.get() {
            Some(l1) => l1,
            None => slot.l1.get_or_init(|| {
                Box::new(TypedL1::<V>::bounded(
                    self.inner.config.l1_max_entries,
                    self.inner.config.l1_max_bytes,
                    self.inner.config.l1_max_ttl,
                ))
            }),
        };
        l1.as_any().downcast_ref::<TypedL1<V>>()
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

/// [`Runtime::invalidate_tag`] on the current runtime (see [`Runtime::current`]): drops every
/// entry carrying `tag`, across functions and instances.
pub async fn invalidate_tag(tag: &str) -> Result<()> {
    let rt = Runtime::current();
    rt.invalidate_tag(tag).await
}

/// A snapshot of the current runtime's counters (see [`Runtime::current`]).
pub fn stats() -> Stats {
    with_current(Runtime::stats)
}

/// RESP3 clients of `nodes`, for a classic subscription; an unusable one is an error naming
/// `field`.
fn resp3_clients(nodes: &[redis::Client], field: &'static str) -> Result<Vec<redis::Client>> {
    nodes
        .iter()
        .map(bus::resp3)
        .collect::<redis::RedisResult<Vec<_>>>()
        .map_err(|e| {
            Error::config(
                field,
                format!(
                    "cannot use it for the invalidation subscription ({:?})",
                    e.kind()
                ),
            )
        })
}
