//! The memoization entry point: L1 → coalescer → L2 → body.

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::time::Duration;

use crate::coalesce::{FlightGuard, Role, Shared, follow};
use crate::codec::{self, DecodeError, Stamp};
use crate::coherence::generations;
use crate::coherence::lease::Lease;
use crate::key::{Args, Digested, Key, MAX_KEY_BYTES};
use crate::l1::TypedL1;
use crate::l2::{L2, millis};
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
kind_constructors!(Plain<T>, Optional<T>, Fallible<T, E>, FallibleUncloneable<T, E>);

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
    fn share(&self, out: &Result<T, E>) -> Option<Arc<dyn Any + Send + Sync>> {
        out.as_ref()
            .err()
            .map(|e| Arc::new(e.clone()) as Arc<dyn Any + Send + Sync>)
    }
    fn unshare(&self, shared: &(dyn Any + Send + Sync)) -> Option<Result<T, E>> {
        shared.downcast_ref::<E>().map(|e| Err(e.clone()))
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
    fn share(&self, _: &Result<T, E>) -> Option<Arc<dyn Any + Send + Sync>> {
        None
    }
    fn unshare(&self, _: &(dyn Any + Send + Sync)) -> Option<Result<T, E>> {
        None
    }
}

pub(crate) enum Lookup<V> {
    Hit(V),
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
        lookup: with_current(|rt| rt.lookup::<K::Value, A>(site, args)),
    }
}

/// A call whose key is rendered and whose L1 lookup is done; see [`prepare`].
pub struct Prepared<K: ReturnKind> {
    site: &'static Site,
    kind: K,
    lookup: Lookup<K::Value>,
}

impl<K: ReturnKind> Prepared<K> {
    /// Finishes the call: the L1 value, or the coalesced L2 read / body run.
    pub fn run<F, Fut>(self, body: F) -> impl Future<Output = K::Output> + use<K, F, Fut>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = K::Output>,
    {
        let Prepared { site, kind, lookup } = self;
        async move {
            match lookup {
                Lookup::Hit(v) => K::from_value(v),
                // Boxed: the slow path's state machine is large (about 1 KiB), and kept inline
                // it would make every L1 hit create and move that much memory.
                Lookup::Miss(rt, key) => {
                    Box::pin(rt.fill::<K, F, Fut>(kind, site, key, body)).await
                }
                Lookup::Bypass => Box::pin(body()).await,
            }
        }
    }
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
                && let Some(v) = l1.get(digest)
            {
                slot.hits.bump();
                return Lookup::Hit(v);
            }
        }
        self.render_miss(site, args)
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
            && let Some(v) = self.l1_get::<V>(site, &key)
        {
            return Lookup::Hit(v);
        }
        Lookup::Miss(self.clone(), key)
    }

    /// L1 hit by key string: a clone of the value.
    fn l1_get<V: Clone + Send + Sync + 'static>(
        &self,
        site: &'static Site,
        key: &Key,
    ) -> Option<V> {
        let table = self.table();
        let slot = table.slot(site);
        let l1 = slot.l1.get()?.as_any().downcast_ref::<TypedL1<V>>()?;
        let v = l1.get(table.digester.of(key.as_str()))?;
        slot.hits.bump();
        Some(v)
    }

    /// TTL of an L1 insert: the given one, capped by `degraded_l1_ttl` while Redis is
    /// configured but the invalidation subscription is down.
    fn l1_ttl(&self, ttl: Duration) -> Duration {
        match self.inner.bus.as_ref() {
            Some(bus) if !bus.is_up() => ttl.min(self.inner.config.degraded_l1_ttl),
            _ => ttl,
        }
    }

    /// The slow path: coalesce, read L2 (taking the fill lease on a miss), run the body, fill.
    async fn fill<K, F, Fut>(self, kind: K, site: &'static Site, key: Key, body: F) -> K::Output
    where
        K: ReturnKind,
        F: FnOnce() -> Fut,
        Fut: Future<Output = K::Output>,
    {
        let inner = &*self.inner;
        let c = self.table().site(site);
        let tiers = site.options().tiers;
        let mut guard = loop {
            match inner.local.flights.enter(site.name(), key.as_str()) {
                Role::Leader(guard) => break guard,
                Role::Follower(rx) => {
                    Counters::bump(&c.coalesced_waits);
                    match follow(rx).await {
                        Some(Shared::Value(v)) => match v.downcast_ref::<K::Value>() {
                            Some(v) => return K::from_value(v.clone()),
                            None => return body().await,
                        },
                        Some(Shared::Output(o)) => match kind.unshare(&*o) {
                            Some(out) => return out,
                            None => return body().await,
                        },
                        // The leader was cancelled, panicked or had nothing to share: take over.
                        Some(Shared::Retry) | None => {
                            if tiers.l1()
                                && let Some(v) = self.l1_get::<K::Value>(site, &key)
                            {
                                return K::from_value(v);
                            }
                        }
                    }
                }
            }
        };

        // Leader. The L1 epoch is taken before anything is read: a gap or group invalidation
        // after this point makes whatever this flight stores invisible.
        let l1 = if tiers.l1() {
            self.l1::<K::Value>(site)
        } else {
            None
        };
        let epoch = l1.map_or(0, TypedL1::epoch);
        let digest = self.table().digester.of(key.as_str());
        // A previous flight may have filled L1 between our lookup and `enter`.
        if let Some(v) = l1.and_then(|l1| l1.get(digest)) {
            Counters::bump(&c.l1_hits);
            guard.complete(|| Shared::Value(Arc::new(v.clone())), || {});
            return K::from_value(v);
        }

        let fingerprint = site.fingerprint();
        let l2 = inner.l2.as_deref().filter(|_| tiers.l2());
        let mut lease = None;
        let mut stamp = Stamp::default();
        if let Some(l2) = l2 {
            match self.read_l2::<K::Value>(l2, site, &key, fingerprint).await {
                L2Read::Hit(v, remaining) => {
                    Counters::bump(&c.l2_hits);
                    #[cfg(feature = "test-hooks")]
                    inner.local.hooks.promotion.pass().await;
                    // A value whose expiry its writer did not record (an older wire) is served
                    // but not promoted: its L1 copy could outlive the L2 entry.
                    let promote = l1.filter(|_| remaining.is_some() && self.should_promote(site));
                    let ttl = remaining.map_or(Duration::ZERO, |r| r.min(site.options().ttl));
                    let mut promoted = false;
                    let stored = guard.complete(
                        || Shared::Value(Arc::new(v.clone())),
                        || {
                            if let Some(l1) = promote
                                && !ttl.is_zero()
                            {
                                l1.insert(digest, v.clone(), self.l1_ttl(ttl), epoch);
                                promoted = true;
                            }
                        },
                    );
                    if promoted {
                        Counters::bump(&c.promotions);
                    } else if promote.is_some() && !stored {
                        Counters::bump(&c.fills_refused);
                    }
                    return K::from_value(v);
                }
                L2Read::Leased(l, s) => {
                    lease = Some(l);
                    stamp = s;
                }
                L2Read::Compute => {}
            }
        }

        Counters::bump(&c.misses);
        Counters::bump(&c.computations);
        let out = body().await;
        // The lifetime of what this flight writes, in L2 and L1 alike (jittered).
        let ttl = self.write_ttl(site);
        match K::cached(&out) {
            Some(v) => {
                let mut keep = true;
                if let (Some(l2), Some(lease)) = (l2, lease.take()) {
                    // The followers need not wait for the write to Redis.
                    guard.publish(|| Shared::Value(Arc::new(v.clone())));
                    keep = self
                        .fill_l2(l2, site, &guard, lease, v, fingerprint, stamp, ttl)
                        .await;
                }
                let stored = guard.complete(
                    || Shared::Value(Arc::new(v.clone())),
                    || {
                        if keep && let Some(l1) = l1 {
                            l1.insert(digest, v.clone(), self.l1_ttl(ttl), epoch);
                        }
                    },
                );
                if keep && !stored {
                    Counters::bump(&c.fills_refused);
                }
            }
            None => {
                let shared = kind.share(&out);
                if let (Some(l2), Some(lease)) = (l2, lease.take()) {
                    // Followers need not wait for the lease's release; a `Retry` is not
                    // handed out early (they would find our lease still there).
                    if let Some(o) = &shared {
                        guard.publish(|| Shared::Output(o.clone()));
                    }
                    if let Err(e) = lease.release(l2).await {
                        e.count(c);
                    }
                }
                guard.complete(|| shared.map_or(Shared::Retry, Shared::Output), || {});
            }
        }
        out
    }

    /// The leader's L2 read. One round trip reads the value and, when there is none, takes the
    /// fill lease (and, when the cached generations cannot be trusted, reads the current
    /// ones). Another process's lease means it is computing this key: poll (each poll is the
    /// same round trip, so a lease that vanishes without a value is taken over) until its
    /// value appears or `lease_wait` runs out. Bytes that are not a current value of ours
    /// (foreign, corrupt, another schema, an older generation, a lease that cannot be ours)
    /// are deleted if they are still the same bytes, once, and the read is repeated. Any L2
    /// failure (breaker open included) ends the read at once: compute, without filling.
    async fn read_l2<V: DeserializeOwned>(
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
        loop {
            let known = self.known_generations(site);
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
            let ask = known.is_err().then_some((gen_key.as_str(), site.name()));
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
                    gens.learn(era, site.name(), stamp);
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
                            gens.learn(gens.era(), site.name(), written);
                        }
                        let remaining = codec::expires_at(&bytes)
                            .map(|at| Duration::from_millis(at.saturating_sub(codec::unix_ms())));
                        return L2Read::Hit(v, remaining);
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

    /// Writes the computed value over our lease. `false` when the value must not be kept in
    /// L1 either: the flight was invalidated, or the lease was gone (deleted by an
    /// invalidation, or expired) so the fill was refused.
    #[allow(clippy::too_many_arguments)]
    async fn fill_l2<V: Serialize>(
        &self,
        l2: &L2,
        site: &'static Site,
        guard: &FlightGuard<'_>,
        lease: Lease,
        v: &V,
        fingerprint: &[u8; 16],
        stamp: Stamp,
        ttl: Duration,
    ) -> bool {
        let c = self.table().site(site);
        if guard.poisoned() {
            Counters::bump(&c.fills_refused);
            if let Err(e) = lease.release(l2).await {
                e.count(c);
            }
            return false;
        }
        let expires_at = codec::unix_ms().saturating_add(millis(ttl));
        match codec::encode_until(fingerprint, stamp, expires_at, v) {
            Ok(bytes) if bytes.len() <= self.inner.config.max_value_bytes => {
                match lease.fill(l2, &bytes, ttl).await {
                    Ok(true) => {
                        Counters::bump(&c.l2_writes);
                        true
                    }
                    Ok(false) => {
                        Counters::bump(&c.fills_refused);
                        false
                    }
                    Err(e) => {
                        e.count(c);
                        true
                    }
                }
            }
            other => {
                // Too large (or not serializable): keep it out of Redis; the key held only our
                // lease, which goes.
                Counters::bump(&c.oversize_skips);
                if let Err(e) = other {
                    tracing::debug!(site = site.name(), error = %e, "tiered: value could not be encoded for L2");
                }
                if let Err(e) = lease.release(l2).await {
                    e.count(c);
                }
                true
            }
        }
    }

    /// The TTL of a value this runtime writes for `site`: the site's TTL shortened by a
    /// random 0 to `jitter` % of it (the site's `jitter`, else the runtime's `ttl_jitter`).
    fn write_ttl(&self, site: &'static Site) -> Duration {
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

    fn should_promote(&self, site: &'static Site) -> bool {
        let n = match site.options().promote {
            0 => self.inner.config.promotion_frequency,
            n => n,
        };
        one_in(n)
    }
}

/// What the leader's L2 read decided.
enum L2Read<V> {
    /// A value, with the remaining TTL of its key when its writer recorded it.
    Hit(V, Option<Duration>),
    /// Nothing there: we hold the fill lease; the fill is stamped with these generations.
    Leased(Lease, Stamp),
    /// Compute without filling (L2 unavailable, or another process's lease outlasted
    /// `lease_wait`).
    Compute,
}

/// A fresh lease token: 16 random bytes (per-thread xorshift seeded from the OS hasher).
fn token() -> [u8; 16] {
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
fn next_random() -> u64 {
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
