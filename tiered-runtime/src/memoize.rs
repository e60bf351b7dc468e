//! The memoization entry point: L1 → coalescer → L2 → body.

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::time::Duration;

use tracing::Instrument;

use crate::codec::{self, DecodeError, Stamp};
use crate::coherence::generations;
use crate::coherence::lease::Lease;
use crate::flight::Begin;
use crate::key::{Args, Digested, Key, MAX_KEY_BYTES};
use crate::l1::{Lifetimes, TypedL1};
use crate::l2::L2;
use crate::runtime::{Runtime, with_current};
use crate::site::Site;
use crate::stats::Counters;

/// How a function's return value maps onto what is cached and what followers receive.
///
/// The macro picks the kind from the return type; the four implementations cover every
/// supported shape.
pub trait ReturnKind: 'static {
    /// The function's return type.
    type Output;
    /// The cached value type.
    type Value: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The cacheable part of an outcome, if any.
    fn cached(out: &Self::Output) -> Option<&Self::Value>;
    /// Rebuilds an outcome from a cached value.
    fn from_value(v: Self::Value) -> Self::Output;
    /// A non-cacheable outcome in a form followers of the same flight can share; `None`
    /// makes the followers form a new flight instead.
    fn share(&self, out: &Self::Output) -> Option<Arc<dyn Any + Send + Sync>>;
    /// The follower's copy of a shared outcome.
    fn unshare(&self, shared: &(dyn Any + Send + Sync)) -> Option<Self::Output>;
    /// Whether an outcome is a failure (an `Err`), which fail-safe answers with a stale value.
    /// A `None` is an answer, not a failure.
    fn failed(out: &Self::Output) -> bool {
        let _ = out;
        false
    }
    /// Whether a cached value is a negative answer (a `None` or an `Err` kept by
    /// `cache_none` / `cache_err`): stored for the site's `negative_ttl`, without fail-safe
    /// keeping or refresh-ahead, and counted in `negative_stored` / `negative_hits`.
    fn negative(v: &Self::Value) -> bool {
        let _ = v;
        false
    }
}

/// Any `T`: always cached.
pub struct Plain<T>(PhantomData<fn() -> T>);
/// `Option<T>`: `Some` is cached; a `None` is shared with the flight's followers, not cached.
pub struct Optional<T>(PhantomData<fn() -> T>);
/// `Result<T, E>` with `E: Clone`: `Ok` is cached; an `Err` reaches every follower of the
/// flight (one body run per flight), and is never cached.
pub struct Fallible<T, E>(PhantomData<fn() -> (T, E)>);
/// `Result<T, E>` whose `E` is not `Clone` but converts from [`Error`](crate::Error) and
/// displays itself (`anyhow::Error`, `eyre::Report`, `Box<dyn Error + Send + Sync>`): `Ok` is
/// cached; an `Err` reaches every follower of the flight as
/// `E::from(Error::Flight { message })`, carrying the leader's error text (one body run per
/// flight).
///
/// The conversions are captured as function pointers when the kind is created (where `E` is
/// a concrete type), so the kind itself carries no trait bound on `E`: a spawned memoized
/// future with `E = Box<dyn Error + Send + Sync>` stays `Send` without tripping the compiler's
/// "implementation is not general enough" on higher-ranked trait objects.
pub struct FallibleFrom<T, E> {
    text: fn(&E) -> String,
    from: fn(String) -> E,
    value: PhantomData<fn() -> T>,
}

impl<T, E: From<crate::Error> + std::fmt::Display> FallibleFrom<T, E> {
    /// The kind as a value.
    pub fn new() -> Self {
        FallibleFrom {
            text: |e| e.to_string(),
            from: |message| E::from(crate::Error::Flight { message }),
            value: PhantomData,
        }
    }
}

impl<T, E: From<crate::Error> + std::fmt::Display> Default for FallibleFrom<T, E> {
    fn default() -> Self {
        Self::new()
    }
}
/// `Result<T, E>` whose `E` is neither `Clone` nor convertible from
/// [`Error`](crate::Error): `Ok` is cached; after an `Err` the followers form one new flight
/// (so the body runs once per flight, never concurrently for one key; a burst of callers of a
/// body that keeps failing runs it once per caller, one after another).
pub struct FallibleUncloneable<T, E>(PhantomData<fn() -> (T, E)>);

macro_rules! kind_constructors {
    ($($kind:ident<$($p:ident),*>),*) => {$(
        impl<$($p),*> $kind<$($p),*> {
            /// The kind as a value (used by generated code to pick the kind by inference).
            pub const fn new() -> Self {
                $kind(PhantomData)
            }
        }
        impl<$($p),*> Default for $kind<$($p),*> {
            fn default() -> Self {
                Self::new()
            }
        }
    )*};
}
kind_constructors!(
    Plain<T>,
    Optional<T>,
    Fallible<T, E>,
    FallibleUncloneable<T, E>,
    CachedNone<T>,
    CachedErr<T, E>
);

/// The cached-value bound shared by every kind.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached by tiered",
    label = "this value type must be Clone + Serialize + DeserializeOwned + Send + Sync + 'static",
    note = "derive `Clone`, `serde::Serialize` and `serde::Deserialize` for `{Self}`"
)]
pub trait CacheValue: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

impl<T: CacheValue> ReturnKind for Plain<T> {
    type Output = T;
    type Value = T;
    fn cached(out: &T) -> Option<&T> {
        Some(out)
    }
    fn from_value(v: T) -> T {
        v
    }
    fn share(&self, _: &T) -> Option<Arc<dyn Any + Send + Sync>> {
        None
    }
    fn unshare(&self, _: &(dyn Any + Send + Sync)) -> Option<T> {
        None
    }
}

struct NoneMarker;

impl<T: CacheValue> ReturnKind for Optional<T> {
    type Output = Option<T>;
    type Value = T;
    fn cached(out: &Option<T>) -> Option<&T> {
        out.as_ref()
    }
    fn from_value(v: T) -> Option<T> {
        Some(v)
    }
    fn share(&self, out: &Option<T>) -> Option<Arc<dyn Any + Send + Sync>> {
        out.is_none()
            .then(|| Arc::new(NoneMarker) as Arc<dyn Any + Send + Sync>)
    }
    fn unshare(&self, shared: &(dyn Any + Send + Sync)) -> Option<Option<T>> {
        shared.is::<NoneMarker>().then_some(None)
    }
}

impl<T: CacheValue, E: Clone + Send + Sync + 'static> ReturnKind for Fallible<T, E> {
    type Output = Result<T, E>;
    type Value = T;
    fn cached(out: &Result<T, E>) -> Option<&T> {
        out.as_ref().ok()
    }
    fn from_value(v: T) -> Result<T, E> {
        Ok(v)
    }
    fn failed(out: &Result<T, E>) -> bool {
        out.is_err()
    }
    fn share(&self, out: &Result<T, E>) -> Option<Arc<dyn Any + Send + Sync>> {
        out.as_ref()
            .err()
            .map(|e| Arc::new(e.clone()) as Arc<dyn Any + Send + Sync>)
    }
    fn unshare(&self, shared: &(dyn Any + Send + Sync)) -> Option<Result<T, E>> {
        shared.downcast_ref::<E>().map(|e| Err(e.clone()))
    }
}

/// `Option<T>` with `cache_none`: a `None` is cached too, for the site's `negative_ttl`
/// (negative caching).
#[derive(Debug, Clone, Copy)]
pub struct CachedNone<T>(PhantomData<fn() -> T>);

/// `Result<T, E>` with `cache_err` (`E: Clone + Serialize + DeserializeOwned`): an `Err` is
/// cached too, for the site's `negative_ttl` (negative caching). Fail-safe still answers a
/// failed body with a stale value when it has one; the `Err` is cached only when it reaches
/// the caller.
#[derive(Debug, Clone, Copy)]
pub struct CachedErr<T, E>(PhantomData<fn() -> (T, E)>);

impl<T: CacheValue> ReturnKind for CachedNone<T> {
    type Output = Option<T>;
    type Value = Option<T>;
    fn cached(out: &Option<T>) -> Option<&Option<T>> {
        Some(out)
    }
    fn from_value(v: Option<T>) -> Option<T> {
        v
    }
    fn share(&self, _: &Option<T>) -> Option<Arc<dyn Any + Send + Sync>> {
        None
    }
    fn unshare(&self, _: &(dyn Any + Send + Sync)) -> Option<Option<T>> {
        None
    }
    #[inline]
    fn negative(v: &Option<T>) -> bool {
        v.is_none()
    }
}

impl<T: CacheValue, E: CacheValue> ReturnKind for CachedErr<T, E> {
    type Output = Result<T, E>;
    type Value = Result<T, E>;
    fn cached(out: &Result<T, E>) -> Option<&Result<T, E>> {
        Some(out)
    }
    fn from_value(v: Result<T, E>) -> Result<T, E> {
        v
    }
    fn failed(out: &Result<T, E>) -> bool {
        out.is_err()
    }
    fn share(&self, _: &Result<T, E>) -> Option<Arc<dyn Any + Send + Sync>> {
        None
    }
    fn unshare(&self, _: &(dyn Any + Send + Sync)) -> Option<Result<T, E>> {
        None
    }
    #[inline]
    fn negative(v: &Result<T, E>) -> bool {
        v.is_err()
    }
}

/// The text of a leader's error, shared with its followers.
struct FlightError(String);

impl<T: CacheValue, E: 'static> ReturnKind for FallibleFrom<T, E> {
    type Output = Result<T, E>;
    type Value = T;
    fn cached(out: &Result<T, E>) -> Option<&T> {
        out.as_ref().ok()
    }
    fn from_value(v: T) -> Result<T, E> {
        Ok(v)
    }
    fn failed(out: &Result<T, E>) -> bool {
        out.is_err()
    }
    fn share(&self, out: &Result<T, E>) -> Option<Arc<dyn Any + Send + Sync>> {
        out.as_ref()
            .err()
            .map(|e| Arc::new(FlightError((self.text)(e))) as Arc<dyn Any + Send + Sync>)
    }
    fn unshare(&self, shared: &(dyn Any + Send + Sync)) -> Option<Result<T, E>> {
        shared
            .downcast_ref::<FlightError>()
            .map(|e| Err((self.from)(e.0.clone())))
    }
}

impl<T: CacheValue, E: 'static> ReturnKind for FallibleUncloneable<T, E> {
    type Output = Result<T, E>;
    type Value = T;
    fn cached(out: &Result<T, E>) -> Option<&T> {
        out.as_ref().ok()
    }
    fn from_value(v: T) -> Result<T, E> {
        Ok(v)
    }
    fn failed(out: &Result<T, E>) -> bool {
        out.is_err()
    }
    fn share(&self, _: &Result<T, E>) -> Option<Arc<dyn Any + Send + Sync>> {
        None
    }
    fn unshare(&self, _: &(dyn Any + Send + Sync)) -> Option<Result<T, E>> {
        None
    }
}

pub(crate) enum Lookup<V> {
    Hit(V),
    /// An L1 hit past the site's refresh-ahead point: the value, and what a refresh needs.
    Refresh(V, Runtime, Key),
    Miss(Runtime, Key),
    /// The key could not be rendered: run the body without caching.
    Bypass,
}

/// Memoizes one call of the function described by `site`, whose key template receives
/// `args` (in placeholder order), computing with `body` on a miss.
///
/// The runtime is the one of the enclosing [`Runtime::scope`], else the installed one, else
/// the embedded default, resolved **when `memoize` is called**: the key is rendered and L1
/// consulted before the returned future is first polled, so `args` need not outlive this call
/// and the future stays `Send` whenever the body's future is. Call it inside the memoized
/// `async fn` (as the macro does), so that it runs within the caller's scope.
///
/// The body runs inline in the caller's future: a soft timeout cancels it (see
/// [`Prepared::run`]); [`Prepared::run_detached`] lets it finish in the background.
///
/// ```
/// use tiered_runtime::{Plain, Site, SiteOptions, memoize};
///
/// static SQUARE: Site = Site::new("doc::square", "square:<n>", SiteOptions::DEFAULT);
///
/// async fn square(n: u64) -> u64 {
///     memoize::<Plain<u64>, _, _>(&SQUARE, &[&n], || async move { n * n }).await
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(square(12).await, 144);
/// assert_eq!(square(12).await, 144); // from L1
/// # }
/// ```
pub fn memoize<K, F, Fut>(
    site: &'static Site,
    args: &[&(dyn Display + Sync)],
    body: F,
) -> impl Future<Output = K::Output> + use<K, F, Fut>
where
    K: ReturnKind + Default,
    F: FnOnce() -> Fut,
    Fut: Future<Output = K::Output>,
{
    prepare::<K>(site, args).run(body)
}

/// The first, synchronous half of [`memoize`]: the key is rendered and L1 consulted. The
/// result borrows nothing, so the arguments can then be moved into the body passed to
/// [`Prepared::run`] (this is what the macro generates).
pub fn prepare<K: ReturnKind + Default>(
    site: &'static Site,
    args: &[&(dyn Display + Sync)],
) -> Prepared<K> {
    prepare_with(K::default(), site, args)
}

/// [`prepare`] with the kind given as a value.
pub(crate) fn prepare_with<K: ReturnKind, A: Args + ?Sized>(
    kind: K,
    site: &'static Site,
    args: &A,
) -> Prepared<K> {
    Prepared {
        site,
        kind,
        lookup: with_current(|rt| {
            let lookup = rt.lookup::<K::Value, A>(site, args);
            // A constant `false` for every kind but the negative-caching ones.
            if let Lookup::Hit(v) | Lookup::Refresh(v, ..) = &lookup
                && K::negative(v)
            {
                Counters::bump(&rt.table().site(site).negative_hits);
            }
            lookup
        }),
        error: None,
    }
}

/// A call whose key is rendered and whose L1 lookup is done; see [`prepare`].
pub struct Prepared<K: ReturnKind> {
    site: &'static Site,
    kind: K,
    lookup: Lookup<K::Value>,
    error: Option<fn(crate::Error) -> K::Output>,
}

impl<K: ReturnKind> Prepared<K> {
    /// How this function returns a [`Error::Timeout`](crate::Error::Timeout) (a hard timeout
    /// without a stale value): `Some` for a `Result` whose error converts from
    /// [`Error`](crate::Error). Without it such a caller keeps waiting for the body.
    pub fn errors(mut self, error: Option<fn(crate::Error) -> K::Output>) -> Self {
        self.error = error;
        self
    }

    /// Finishes the call: the L1 value, or the coalesced L2 read / body run.
    ///
    /// The body runs inside the returned future, so it may borrow. A soft timeout (or a hard
    /// one answered with a stale value) therefore **cancels** the body: the caller gets the
    /// stale value, the body's future is dropped, nothing is stored, and the next call runs it
    /// again. Refresh-ahead needs a body that can outlive the call and is not started here.
    /// Use [`run_detached`](Self::run_detached) for bodies that are `Send + 'static`.
    pub fn run<F, Fut>(self, body: F) -> impl Future<Output = K::Output> + use<K, F, Fut>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = K::Output>,
    {
        let Prepared {
            site,
            kind,
            lookup,
            error,
        } = self;
        async move {
            match lookup {
                Lookup::Hit(v) | Lookup::Refresh(v, ..) => {
                    if !site.options().trace_keys {
                        l1_hit_span(site);
                    }
                    K::from_value(v)
                }
                // Boxed: the slow path's state machine is large (about 1 KiB), and kept inline
                // it would make every L1 hit create and move that much memory.
                Lookup::Miss(rt, key) => {
                    let span = keyed_call_span(site, &key);
                    Box::pin(
                        async move {
                            match rt.begin(kind, site, key, error).await {
                                Begin::Done(out) | Begin::DoneRefresh(out, _) => out,
                                Begin::Body => computing(&rt, site, body()).await,
                                Begin::Lead(plan) => {
                                    let timers = plan.timers();
                                    let body = computing(&rt, site, body());
                                    timers.inline(plan.finish(body)).await
                                }
                            }
                        }
                        .instrument(span),
                    )
                    .await
                }
                Lookup::Bypass => Box::pin(bypassing(site, body())).await,
            }
        }
    }

    /// [`run`](Self::run) for a body that can outlive the call (`Send + 'static`: it owns its
    /// arguments). Past a soft timeout the caller gets the stale value while the body goes on
    /// in a task and stores its result (still one run per key); a hit past the refresh-ahead
    /// point starts the refresh in a task. The task runs in the caller's
    /// [`Runtime::scope`] and tracing span.
    pub fn run_detached<F, Fut>(self, body: F) -> impl Future<Output = K::Output> + use<K, F, Fut>
    where
        K: Send,
        K::Output: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = K::Output> + Send + 'static,
    {
        let Prepared {
            site,
            kind,
            lookup,
            error,
        } = self;
        async move {
            match lookup {
                Lookup::Hit(v) => {
                    if !site.options().trace_keys {
                        l1_hit_span(site);
                    }
                    K::from_value(v)
                }
                Lookup::Refresh(v, rt, key) => {
                    if !site.options().trace_keys {
                        l1_hit_span(site);
                    }
                    rt.spawn_refresh(kind, site, key, body);
                    K::from_value(v)
                }
                Lookup::Miss(rt, key) => {
                    let span = keyed_call_span(site, &key);
                    Box::pin(
                        async move {
                            match rt.begin(kind, site, key.clone(), error).await {
                                Begin::Done(out) => out,
                                Begin::DoneRefresh(out, kind) => {
                                    rt.spawn_refresh(kind, site, key, body);
                                    out
                                }
                                Begin::Body => computing(&rt, site, body()).await,
                                Begin::Lead(plan) => {
                                    let timers = plan.timers();
                                    let body = computing(&rt, site, body());
                                    if timers.armed()
                                        && let Ok(handle) = tokio::runtime::Handle::try_current()
                                    {
                                        let rt = plan.rt.clone();
                                        let task = rt.scope(plan.finish(body));
                                        let task =
                                            handle.spawn(task.instrument(tracing::Span::current()));
                                        timers.detached(task).await
                                    } else {
                                        timers.inline(plan.finish(body)).await
                                    }
                                }
                            }
                        }
                        .instrument(span),
                    )
                    .await
                }
                Lookup::Bypass => Box::pin(bypassing(site, body())).await,
            }
        }
    }
}

/// Counts a flight's L2 reads; records them on the current span (the call's) when dropped.
struct RoundTrips(u32);

impl Drop for RoundTrips {
    fn drop(&mut self) {
        tracing::Span::current().record("l2_round_trips", self.0);
    }
}

/// The span of one memoized call (INFO, `tiered.call`): the function, how the call was
/// answered (`outcome`: `l1`, `l2`, `miss`, `coalesced`, `stale` or `bypass`, recorded once
/// known) and the L2 read round trips it took. Never an argument or a value, and the key only
/// for a function that opted in (`trace_keys`).
#[inline]
fn call_span(site: &'static Site) -> tracing::Span {
    tracing::info_span!(
        "tiered.call",
        site = site.name(),
        outcome = tracing::field::Empty,
        l2_round_trips = tracing::field::Empty,
        key = tracing::field::Empty
    )
}

/// [`call_span`] with the key recorded when the function opted in (`trace_keys`).
fn keyed_call_span(site: &'static Site, key: &Key) -> tracing::Span {
    let span = call_span(site);
    if site.options().trace_keys {
        span.record("key", key.as_str());
    }
    span
}

/// An L1 hit's `tiered.call` span, opened and closed at once. Without a subscriber that wants
/// it, one check of a cached interest: no allocation.
#[inline]
fn l1_hit_span(site: &'static Site) {
    let _span = tracing::info_span!("tiered.call", site = site.name(), outcome = "l1");
}

/// A call that runs its body: the outcome `miss` on the call's span, the body in its own
/// `tiered.body` span, its run time recorded (feature `metrics`).
fn computing<Fut: Future>(
    rt: &Runtime,
    site: &'static Site,
    body: Fut,
) -> tracing::instrument::Instrumented<impl Future<Output = Fut::Output> + use<Fut>> {
    crate::flight::outcome("miss");
    timed(rt, site, body).instrument(body_span(site))
}

/// A call whose key cannot be rendered: the body, uncached, in a call span `bypass`.
fn bypassing<Fut: Future>(
    site: &'static Site,
    body: Fut,
) -> tracing::instrument::Instrumented<Fut> {
    let span = call_span(site);
    span.record("outcome", "bypass");
    body.instrument(span)
}

/// A body's future, its run time recorded in `tiered_body_seconds` (feature `metrics`).
#[cfg(feature = "metrics")]
fn timed<Fut: Future>(
    rt: &Runtime,
    site: &'static Site,
    body: Fut,
) -> impl Future<Output = Fut::Output> + use<Fut> {
    let namespace = rt.config().namespace().to_owned();
    async move {
        let started = std::time::Instant::now();
        let out = body.await;
        crate::telemetry::body_seconds(&namespace, site.name(), started.elapsed());
        out
    }
}

/// A body's future as it is (without the feature `metrics`).
#[cfg(not(feature = "metrics"))]
#[inline]
fn timed<Fut: Future>(_: &Runtime, _: &'static Site, body: Fut) -> Fut {
    body
}

/// The span of a body's run (DEBUG, `tiered.body`), a child of its call's.
fn body_span(site: &'static Site) -> tracing::Span {
    tracing::debug_span!("tiered.body", site = site.name())
}

impl Runtime {
    /// Consults L1, then renders the key on a miss; synchronous, no I/O.
    ///
    /// The hit path renders no key and allocates nothing: the arguments' `Display` output is
    /// streamed through the key's escaping into the L1 key's digest ([`Template::digest`]).
    ///
    /// [`Template::digest`]: crate::key::Template::digest
    #[inline]
    pub(crate) fn lookup<V: Clone + Send + Sync + 'static, A: Args + ?Sized>(
        &self,
        site: &'static Site,
        args: &A,
    ) -> Lookup<V> {
        if site.options().tiers.l1()
            && let Ok(template) = site.compiled()
        {
            let table = self.table();
            let slot = table.slot(site);
            if let Some(l1) = slot.l1.get()
                && let Some(l1) = l1.as_any().downcast_ref::<TypedL1<V>>()
                && let Some(Digested::Short(digest)) = template.digest(&table.digester, args)
                && let Some((v, due)) = l1.get(digest)
            {
                slot.hits.bump();
                if site.options().trace_keys {
                    self.keyed_l1_span(site, args);
                }
                if due {
                    return self.refresh_lookup(site, args, v);
                }
                return Lookup::Hit(v);
            }
        }
        self.render_miss(site, args)
    }

    /// An L1 hit's `tiered.call` span with the rendered key (`trace_keys`); the key is
    /// rendered only when a subscriber wants the span.
    #[cold]
    fn keyed_l1_span<A: Args + ?Sized>(&self, site: &'static Site, args: &A) {
        if tracing::enabled!(tracing::Level::INFO)
            && let Some(key) = self.render(site, args)
        {
            let _span = tracing::info_span!(
                "tiered.call",
                site = site.name(),
                outcome = "l1",
                key = key.as_str()
            );
        }
    }

    /// A hit due for a refresh: the key is rendered for the refresh (off the common path).
    #[cold]
    fn refresh_lookup<V, A: Args + ?Sized>(
        &self,
        site: &'static Site,
        args: &A,
        v: V,
    ) -> Lookup<V> {
        match self.render(site, args) {
            Some(key) => Lookup::Refresh(v, self.clone(), key),
            None => Lookup::Hit(v),
        }
    }

    /// The rest of [`lookup`](Self::lookup): renders the key (a long key, whose L1 key is the
    /// digest of its Redis form, is looked up in L1 here).
    fn render_miss<V: Clone + Send + Sync + 'static, A: Args + ?Sized>(
        &self,
        site: &'static Site,
        args: &A,
    ) -> Lookup<V> {
        let Some(key) = self.render(site, args) else {
            return Lookup::Bypass;
        };
        if site.options().tiers.l1()
            && key.as_str().len() > MAX_KEY_BYTES
            && let Some((v, due)) = self.l1_get::<V>(site, &key)
        {
            return if due {
                Lookup::Refresh(v, self.clone(), key)
            } else {
                Lookup::Hit(v)
            };
        }
        Lookup::Miss(self.clone(), key)
    }

    /// L1 hit by key string: a clone of the value, and whether it is due for a refresh.
    pub(crate) fn l1_get<V: Clone + Send + Sync + 'static>(
        &self,
        site: &'static Site,
        key: &Key,
    ) -> Option<(V, bool)> {
        let table = self.table();
        let slot = table.slot(site);
        let l1 = slot.l1.get()?.as_any().downcast_ref::<TypedL1<V>>()?;
        let hit = l1.get(table.digester.of(key.as_str()))?;
        slot.hits.bump();
        Some(hit)
    }

    /// The lifetimes of an L1 insert of a value that is fresh for `fresh` and kept until
    /// `keep` (both capped by `degraded_l1_ttl` while Redis is configured but the invalidation
    /// subscription, or the client-tracking connection, is down: nothing is kept stale then),
    /// due for a refresh after `refresh`.
    pub(crate) fn l1_life(
        &self,
        fresh: Duration,
        keep: Duration,
        refresh: Option<Duration>,
        size: usize,
    ) -> Lifetimes {
        let untracked = self.inner.tracking.as_ref().is_some_and(|t| !t.is_up());
        match self.inner.bus.as_ref() {
            Some(bus) if !bus.is_up() || untracked => {
                let fresh = fresh.min(self.inner.config.degraded_l1_ttl);
                Lifetimes {
                    fresh,
                    keep: fresh,
                    refresh: None,
                    size,
                }
            }
            _ => Lifetimes {
                fresh,
                keep: keep.max(fresh),
                refresh,
                size,
            },
        }
    }

    /// `replica_reads`: the key's value as a replica holds it, when it is one this runtime
    /// may serve right now (a value of this function, not past its TTL, not older than the
    /// generations known from the bus). Served to this call only: never promoted into L1, no
    /// lease taken. `None` (counted in `replica_fallbacks`): read the master as usual; also
    /// when the generations are not known (the bus is down), which only the master's read
    /// can learn.
    pub(crate) async fn read_replica<V: DeserializeOwned>(
        &self,
        l2: &L2,
        site: &'static Site,
        key: &Key,
        fingerprint: &[u8; 16],
    ) -> Option<V> {
        let c = self.table().site(site);
        let found = match self.known_generations(site, key.tags()) {
            Ok(current) => match l2.replica_get(key.as_str()).await {
                Ok(Some(bytes)) if !codec::is_lease(&bytes) => {
                    match codec::decode::<V>(fingerprint, &bytes, self.inner.config.max_value_bytes)
                    {
                        Ok((v, written))
                            if !written.is_older_than(&current)
                                && codec::expires_at(&bytes)
                                    .is_none_or(|at| at > codec::unix_ms()) =>
                        {
                            Some(v)
                        }
                        // Judged (and counted) by the master's read.
                        _ => None,
                    }
                }
                Ok(_) | Err(crate::l2::L2Error::Skipped(_)) => None,
                Err(e) => {
                    e.count(c);
                    None
                }
            },
            Err(_) => None,
        };
        match found {
            Some(_) => {
                Counters::bump(&c.l2_hits);
                Counters::bump(&c.replica_hits);
                crate::flight::outcome("l2");
            }
            None => Counters::bump(&c.replica_fallbacks),
        }
        found
    }

    /// The leader's L2 read. One round trip reads the value and, when there is none, takes the
    /// fill lease (and, when the cached generations cannot be trusted, reads the current
    /// ones). Another process's lease means it is computing this key: poll (each poll is the
    /// same round trip, so a lease that vanishes without a value is taken over) until its
    /// value appears or `lease_wait` runs out. Bytes that are not a current value of ours
    /// (foreign, corrupt, another schema, an older generation, a lease that cannot be ours)
    /// are deleted if they are still the same bytes, once, and the read is repeated. Any L2
    /// failure (breaker open included) ends the read at once: compute, without filling.
    pub(crate) async fn read_l2<V: DeserializeOwned>(
        &self,
        l2: &L2,
        site: &'static Site,
        key: &Key,
        fingerprint: &[u8; 16],
    ) -> L2Read<V> {
        let inner = &*self.inner;
        let c = self.table().site(site);
        let Some(janitor) = inner.janitor.as_ref() else {
            return L2Read::Compute;
        };
        let cfg = &inner.config;
        let gens = &inner.local.generations;
        // Named only when the cached generations cannot be trusted (rare): no allocation
        // otherwise.
        let mut gen_key = String::new();
        let token = codec::lease(&token());
        let mut deadline = None;
        let mut delay = Duration::from_millis(5);
        let mut judged_once = false;
        // A lease found under the key is judged by its remaining lifetime: asked for (with
        // `PTTL`, in the same round trip) only once a lease has been seen, so that a hit is
        // one command.
        let mut with_pttl = false;
        // The read round trips of this flight, on its call's span when the read ends.
        let mut trips = RoundTrips(0);
        loop {
            let known = self.known_generations(site, key.tags());
            // Armed before the request leaves: whatever happens to it, a lease that may have
            // reached Redis is released or turned into the fill.
            let lease = Lease::new(
                janitor,
                key.as_str().to_owned(),
                token.clone(),
                cfg.lease_ttl,
            );
            if known.is_err() && gen_key.is_empty() {
                gen_key = generations::key(&cfg.namespace);
            }
            let ask = known
                .is_err()
                .then_some((gen_key.as_str(), site.name(), key.tags()));
            trips.0 += 1;
            let reply = match l2
                .read(key.as_str(), lease.bytes(), cfg.lease_ttl, with_pttl, ask)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    e.count(c);
                    return L2Read::Compute;
                }
            };
            let current = match (known, reply.generations) {
                (Ok(stamp), _) => stamp,
                (Err(era), Some(stamp)) => {
                    gens.learn(era, site.name(), key.tags(), stamp);
                    stamp
                }
                (Err(_), None) => Stamp::default(),
            };
            let bytes = match reply.value {
                Some(bytes) => bytes,
                None if reply.leased => return L2Read::Leased(lease, current),
                None => {
                    // Read without a lease (Redis refuses writes): compute, and fill nothing.
                    lease.disarm();
                    return L2Read::Compute;
                }
            };
            // The key held something, so our `SET NX` wrote nothing.
            lease.disarm();
            let verdict = if codec::is_lease(&bytes) {
                match reply.pttl {
                    // Could be one of ours (a tiered lease never lives longer than lease_ttl).
                    Some(pttl) if pttl > 0 && pttl as u128 <= cfg.lease_ttl.as_millis() => None,
                    Some(_) => Some(Err(DecodeError::Foreign)),
                    // Judge it now: read again at once, with its remaining lifetime.
                    None if !with_pttl => {
                        with_pttl = true;
                        continue;
                    }
                    None => None,
                }
            } else {
                Some(codec::decode::<V>(fingerprint, &bytes, cfg.max_value_bytes))
            };
            let judged = match verdict {
                // Another process's lease: wait for its fill.
                None => {
                    let now = tokio::time::Instant::now();
                    let until = *deadline.get_or_insert_with(|| {
                        Counters::bump(&c.lease_waits);
                        now + cfg.lease_wait
                    });
                    if now >= until {
                        Counters::bump(&c.lease_timeouts);
                        return L2Read::Compute;
                    }
                    tokio::time::sleep(delay.min(until - now)).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                    continue;
                }
                Some(Ok((v, written))) => {
                    if !written.is_older_than(&current) {
                        if written.is_newer_than(&current) {
                            // A group invalidation we have not heard of: trust the value's
                            // stamp from now on.
                            gens.learn(gens.era(), site.name(), key.tags(), written);
                        }
                        let now = codec::unix_ms();
                        let until = |at: u64| Duration::from_millis(at.saturating_sub(now));
                        let kept = codec::kept_until(&bytes).map(until);
                        return match codec::expires_at(&bytes) {
                            // Expired by its TTL, kept by fail-safe as a stale fallback.
                            Some(at) if at <= now => L2Read::Stale {
                                value: v,
                                kept: kept.unwrap_or_default(),
                                bytes,
                                stamp: current,
                            },
                            expires => L2Read::Hit {
                                value: v,
                                remaining: expires.map(until),
                                kept,
                                bytes,
                                stamp: current,
                            },
                        };
                    }
                    // Written before a group invalidation: a miss.
                    Counters::bump(&c.stale_generation_misses);
                    bytes
                }
                Some(Err(DecodeError::Newer(_))) => {
                    // A newer version of tiered wrote it: neither ours to delete nor to
                    // overwrite (see the codec's compatibility rule).
                    Counters::bump(&c.decode_failures);
                    return L2Read::Compute;
                }
                Some(Err(e)) => {
                    Counters::bump(&c.decode_failures);
                    if Site::first_time(&site.warned_decode) {
                        tracing::warn!(
                            site = site.name(),
                            key_hash = %key_hash(key),
                            reason = %e,
                            "tiered: bytes in Redis are not a valid value for this function; treating as a miss and overwriting (logged once per function)"
                        );
                    }
                    bytes
                }
            };
            // Delete exactly the bytes judged (never a lease or a value written since), then
            // read again to take the lease (once).
            if judged_once {
                return L2Read::Compute;
            }
            judged_once = true;
            #[cfg(feature = "test-hooks")]
            inner.local.hooks.judged.pass().await;
            if let Err(e) = l2.release_many(&[(key.as_str(), &judged)]).await {
                e.count(c);
                return L2Read::Compute;
            }
        }
    }

    /// The TTL of a value this runtime writes for `site`: the site's TTL shortened by a
    /// random 0 to `jitter` % of it (the site's `jitter`, else the runtime's `ttl_jitter`).
    pub(crate) fn write_ttl(&self, site: &'static Site) -> Duration {
        let ttl = site.options().ttl;
        let percent = site
            .options()
            .jitter
            .unwrap_or(self.inner.config.ttl_jitter)
            .min(100);
        if percent == 0 {
            return ttl;
        }
        // A fraction of `percent` % in steps of 1/10 000 (of a TTL capped so that the float
        // arithmetic cannot overflow).
        let steps = next_random() % 10_001;
        let base = ttl.min(crate::config::MAX_DURATION * 10);
        ttl.saturating_sub(base.mul_f64(f64::from(percent) / 100.0 * (steps as f64 / 10_000.0)))
    }

    pub(crate) fn should_promote(&self, site: &'static Site) -> bool {
        let n = match site.options().promote {
            0 => self.inner.config.promotion_frequency,
            n => n,
        };
        one_in(n)
    }
}

/// What the leader's L2 read decided.
pub(crate) enum L2Read<V> {
    /// A fresh value.
    Hit {
        value: V,
        /// Until its TTL ends, when its writer recorded it.
        remaining: Option<Duration>,
        /// Until its key goes (past the TTL under fail-safe), when recorded.
        kept: Option<Duration>,
        /// The envelope as read (its header identifies this write).
        bytes: Vec<u8>,
        /// The current generations.
        stamp: Stamp,
    },
    /// A value past its TTL that fail-safe keeps (the key still holds it, so no lease).
    Stale {
        value: V,
        kept: Duration,
        bytes: Vec<u8>,
        stamp: Stamp,
    },
    /// Nothing there: we hold the fill lease; the fill is stamped with these generations.
    Leased(Lease, Stamp),
    /// Compute without filling (L2 unavailable, or another process's lease outlasted
    /// `lease_wait`).
    Compute,
}

/// A fresh lease token: 16 random bytes (per-thread xorshift seeded from the OS hasher).
pub(crate) fn token() -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&next_random().to_le_bytes());
    t[8..].copy_from_slice(&next_random().to_le_bytes());
    t
}

/// A short, stable hash of a key for logs (keys may carry user data).
pub(crate) fn key_hash(key: &Key) -> String {
    let fp = codec::fingerprint(key.as_str(), 0);
    fp[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `true` with probability 1/`n` (thread-local xorshift; `n <= 1` is always `true`).
pub(crate) fn one_in(n: u32) -> bool {
    if n <= 1 {
        return true;
    }
    next_random().is_multiple_of(u64::from(n))
}

/// The next value of a thread-local xorshift generator (not cryptographic).
pub(crate) fn next_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}
