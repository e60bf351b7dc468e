//! The slow path of a memoized call: coalescing, the leader's L2 read, the body run under its
//! timeouts, fail-safe, the fill, and refresh-ahead.
//!
//! [`Runtime::begin`] elects the flight's leader (followers wait for its outcome) and does the
//! leader's reads; what the leader then needs to run the body and store its result is a
//! [`Plan`], which owns everything, so that the body can finish in a task after its caller has
//! been answered ([`Timers::detached`]) or inline in the caller's future ([`Timers::inline`]).
//!
//! **Fail-safe.** With `fail_safe` on, every value written is kept past its TTL (L1: `keep`;
//! Redis: a longer `PX`, the TTL's end recorded in the envelope). A value past its TTL is a
//! miss; but when the body then fails (an `Err`, a panic, its hard timeout) or passes its soft
//! timeout, callers get that stale value instead. After a failure it is re-cached for
//! `fail_safe_throttle` (in L1, and in Redis with its key's remaining lifetime kept), so that
//! the body is not called again for that key meanwhile. Coherence is never undone: a stale
//! value comes from the current L1 epoch only (a gap, a group invalidation or a flush ends it)
//! and from a key still holding it (an invalidation deletes the key), and a flight hit by an
//! invalidation serves no stale value.
//!
//! **Refresh locks.** A key whose value is still there (past its TTL under fail-safe, or due
//! for a refresh-ahead) cannot take the fill lease, which lives on the key. Its recomputation
//! takes a refresh lock instead (`{namespace}:%~refresh:{key}`, `SET NX PX lease_ttl`; an
//! invalidation deletes it too), and writes its value only over the very write it read (the
//! envelope's header, which carries a random nonce): an invalidation or another fill in
//! between refuses the write.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tracing::Instrument;

use crate::coalesce::{Announcer, FlightGuard, Role, Shared, follow};
use crate::codec::{self, Stamp, Times};
use crate::coherence::lease::Lease;
use crate::error::Error;
use crate::key::{Digest, Key};
use crate::l1::{Lifetimes, TypedL1};
use crate::l2::{L2, millis};
use crate::memoize::{L2Read, ReturnKind, next_random, token};
use crate::runtime::Runtime;
use crate::site::Site;
use crate::stats::Counters;

/// What [`Runtime::begin`] decided.
pub(crate) enum Begin<K: ReturnKind> {
    /// The caller's answer (a hit, a follower's share, a stale value).
    Done(K::Output),
    /// An L2 hit due for a refresh-ahead: the answer, and the kind back for the refresh.
    DoneRefresh(K::Output, K),
    /// This caller leads: run the body with the plan.
    Lead(Box<Plan<K>>),
    /// Run the body without caching (a leader's outcome this caller cannot use).
    Body,
}

/// Where the leader's value goes in Redis.
pub(crate) enum Write {
    /// Nowhere (no Redis, a failed read, another process's lease outlasted `lease_wait`).
    None,
    /// Over our fill lease.
    Lease(Lease, Stamp),
    /// Over the write identified by `tag` (a refresh of a value still there).
    Refresh { tag: Vec<u8>, stamp: Stamp },
}

impl Write {
    /// Over the write whose envelope is `bytes` (its [`version_tag`](codec::version_tag)).
    fn refresh(bytes: &[u8], stamp: Stamp) -> Write {
        Write::Refresh {
            tag: codec::version_tag(bytes).to_vec(),
            stamp,
        }
    }
}

/// A stale value fail-safe may serve.
pub(crate) struct StaleValue<V> {
    value: V,
    /// How long it is still kept.
    kept: Duration,
    /// Its envelope, when it came from Redis (re-cached from it).
    bytes: Option<Vec<u8>>,
}

/// Everything the leader needs to run the body and store its outcome; owns it all.
pub(crate) struct Plan<K: ReturnKind> {
    pub(crate) rt: Runtime,
    kind: K,
    site: &'static Site,
    key: Key,
    guard: FlightGuard,
    digest: Digest,
    epoch: u64,
    write: Write,
    /// The refresh lock we hold, if any.
    lock: Option<(String, Vec<u8>)>,
    stale: Option<StaleValue<K::Value>>,
    error: Option<fn(Error) -> K::Output>,
    /// A refresh-ahead run: no caller waits for it.
    refresh: bool,
}

/// The key of the refresh lock of `key` (under the runtime's own `%~` prefix, where no
/// rendered key can land).
pub(crate) fn refresh_lock_key(key: &str) -> String {
    match key.split_once(':') {
        Some((ns, rest)) => format!("{ns}:%~refresh:{rest}"),
        None => format!("%~refresh:{key}"),
    }
}

impl Runtime {
    /// The site's fail-safe duration (its own, else the runtime's).
    pub(crate) fn fail_safe(&self, site: &'static Site) -> Option<Duration> {
        site.options().fail_safe.or(self.inner.config.fail_safe)
    }

    fn soft_timeout(&self, site: &'static Site) -> Option<Duration> {
        site.options()
            .soft_timeout
            .or(self.inner.config.soft_timeout)
    }

    fn hard_timeout(&self, site: &'static Site) -> Option<Duration> {
        site.options()
            .hard_timeout
            .or(self.inner.config.hard_timeout)
    }

    fn background(&self, site: &'static Site) -> bool {
        site.options()
            .background_writes
            .unwrap_or(self.inner.config.background_writes)
    }

    /// Whether a value with `remaining` of its TTL left is due for a refresh-ahead.
    fn due(&self, site: &'static Site, remaining: Option<Duration>) -> bool {
        site.options().refresh_ahead.is_some_and(|f| {
            remaining.is_none_or(|r| r <= site.options().ttl.mul_f32((1.0 - f).clamp(0.0, 1.0)))
        })
    }

    /// When a value with `remaining` of its TTL left becomes due for a refresh-ahead.
    fn refresh_in(&self, site: &'static Site, remaining: Duration) -> Option<Duration> {
        site.options().refresh_ahead.map(|f| {
            remaining.saturating_sub(site.options().ttl.mul_f32((1.0 - f).clamp(0.0, 1.0)))
        })
    }

    /// Coalesces the call, then does the leader's reads: L1 again, then L2 (taking the fill
    /// lease on a miss, or the refresh lock for a value kept past its TTL).
    pub(crate) async fn begin<K: ReturnKind>(
        &self,
        kind: K,
        site: &'static Site,
        key: Key,
        error: Option<fn(Error) -> K::Output>,
    ) -> Begin<K> {
        let inner = &*self.inner;
        let c = self.table().site(site);
        let tiers = site.options().tiers;
        let hard = self.hard_timeout(site);
        let guard = loop {
            match inner.local.flights.enter(site.name(), key.as_str()) {
                Role::Leader(guard) => break guard,
                Role::Follower(rx) => {
                    Counters::bump(&c.coalesced_waits);
                    outcome("coalesced");
                    // A follower keeps its own hard timeout (the leader's stale value, if
                    // any, reaches it at the leader's soft timeout).
                    let shared = match (hard, error) {
                        (Some(timeout), Some(error)) => {
                            match tokio::time::timeout(timeout, follow(rx)).await {
                                Ok(shared) => shared,
                                Err(_) => {
                                    Counters::bump(&c.hard_timeouts);
                                    return Begin::Done(error(Error::Timeout {
                                        site: site.name(),
                                        timeout,
                                    }));
                                }
                            }
                        }
                        _ => follow(rx).await,
                    };
                    match shared {
                        Some(Shared::Value(v)) => match v.downcast_ref::<K::Value>() {
                            Some(v) => return Begin::Done(K::from_value(v.clone())),
                            None => return Begin::Body,
                        },
                        Some(Shared::Output(o)) => match kind.unshare(&*o) {
                            Some(out) => return Begin::Done(out),
                            None => return Begin::Body,
                        },
                        // The leader was cancelled, panicked or had nothing to share: take over.
                        Some(Shared::Retry) | None => {
                            if tiers.l1()
                                && let Some((v, _)) = self.l1_get::<K::Value>(site, &key)
                            {
                                return Begin::Done(K::from_value(v));
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
        if let Some((v, _)) = l1.and_then(|l1| l1.get(digest)) {
            Counters::bump(&c.l1_hits);
            outcome("l1");
            guard.complete(|| Shared::Value(Arc::new(v.clone())), || {});
            return Begin::Done(K::from_value(v));
        }
        let fail_safe = self.fail_safe(site);
        let mut stale = match (fail_safe, l1) {
            (Some(_), Some(l1)) => l1.get_stale(digest).map(|s| StaleValue {
                value: s.value,
                kept: s.kept_for,
                bytes: None,
            }),
            _ => None,
        };
        let mut write = Write::None;
        let mut lock = None;
        if let Some(l2) = inner
            .l2
            .as_deref()
            .filter(|_| tiers.l2() && !self.closing())
        {
            // A replica's value: this call (and its followers) only, never into L1.
            if l2.replica_reads()
                && let Some(value) = self
                    .read_replica::<K::Value>(l2, site, &key, site.fingerprint())
                    .await
            {
                if K::negative(&value) {
                    Counters::bump(&c.negative_hits);
                }
                guard.complete(|| Shared::Value(Arc::new(value.clone())), || {});
                return Begin::Done(K::from_value(value));
            }
            match self
                .read_l2::<K::Value>(l2, site, &key, site.fingerprint())
                .await
            {
                L2Read::Hit {
                    value,
                    remaining,
                    kept,
                    bytes,
                    ..
                } => {
                    Counters::bump(&c.l2_hits);
                    if K::negative(&value) {
                        Counters::bump(&c.negative_hits);
                    }
                    outcome("l2");
                    #[cfg(feature = "test-hooks")]
                    inner.local.hooks.promotion.pass().await;
                    // A value whose expiry its writer did not record (an older wire) is served
                    // but not promoted: its L1 copy could outlive the L2 entry.
                    let promote = l1.filter(|_| remaining.is_some() && self.should_promote(site));
                    self.complete_with_l2_value(
                        site,
                        guard,
                        promote,
                        (digest, epoch),
                        &value,
                        (remaining, kept),
                        bytes.len(),
                    );
                    return if self.due(site, remaining) {
                        Begin::DoneRefresh(K::from_value(value), kind)
                    } else {
                        Begin::Done(K::from_value(value))
                    };
                }
                L2Read::Stale {
                    value,
                    kept,
                    bytes,
                    stamp,
                } => {
                    let token = codec::lease(&token());
                    let lock_key = refresh_lock_key(key.as_str());
                    match l2.try_lock(&lock_key, &token, inner.config.lease_ttl).await {
                        Ok(true) => {
                            write = Write::refresh(&bytes, stamp);
                            lock = Some((lock_key, token));
                        }
                        // Another instance is recomputing it: its stale value meanwhile.
                        Ok(false) if fail_safe.is_some() => {
                            Counters::bump(&c.stale_served);
                            outcome("stale");
                            guard.complete(|| Shared::Value(Arc::new(value.clone())), || {});
                            return Begin::Done(K::from_value(value));
                        }
                        Ok(false) => {}
                        Err(e) => e.count(c),
                    }
                    if fail_safe.is_some() {
                        stale = Some(StaleValue {
                            value,
                            kept,
                            bytes: Some(bytes),
                        });
                    }
                }
                L2Read::Leased(lease, stamp) => write = Write::Lease(lease, stamp),
                L2Read::Compute => {}
            }
        }
        Begin::Lead(Box::new(Plan {
            rt: self.clone(),
            kind,
            site,
            key,
            guard,
            digest,
            epoch,
            write,
            lock,
            stale,
            error,
            refresh: false,
        }))
    }

    /// Starts a refresh-ahead of `key` in a task (when a Tokio runtime is there to run it).
    pub(crate) fn spawn_refresh<K, F, Fut>(&self, kind: K, site: &'static Site, key: Key, body: F)
    where
        K: ReturnKind + Send,
        K::Output: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = K::Output> + Send + 'static,
    {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rt = self.clone();
        let task = async move {
            if let Some(plan) = rt.begin_refresh(kind, site, key).await {
                plan.finish(body()).await;
            }
        };
        handle.spawn(self.scope(task).instrument(tracing::Span::current()));
    }

    /// The reads of a refresh-ahead: one per key in this process (the flight), one across
    /// processes (the refresh lock). `None` when there is nothing to do: another flight or
    /// process is at it (the entry's next refresh is put off), or another process already
    /// refreshed it (its value is taken).
    async fn begin_refresh<K: ReturnKind>(
        &self,
        kind: K,
        site: &'static Site,
        key: Key,
    ) -> Option<Plan<K>> {
        let inner = &*self.inner;
        let Role::Leader(guard) = inner.local.flights.enter(site.name(), key.as_str()) else {
            return None;
        };
        let c = self.table().site(site);
        let tiers = site.options().tiers;
        let l1 = if tiers.l1() {
            self.l1::<K::Value>(site)
        } else {
            None
        };
        let epoch = l1.map_or(0, TypedL1::epoch);
        let digest = self.table().digester.of(key.as_str());
        let postpone = |guard: FlightGuard| {
            guard.complete(
                || Shared::Retry,
                || {
                    if let Some(l1) = l1 {
                        l1.postpone_refresh(digest);
                    }
                },
            );
        };
        let mut write = Write::None;
        let mut lock = None;
        if let Some(l2) = inner
            .l2
            .as_deref()
            .filter(|_| tiers.l2() && !self.closing())
        {
            let token = codec::lease(&token());
            let lock_key = refresh_lock_key(key.as_str());
            match l2.try_lock(&lock_key, &token, inner.config.lease_ttl).await {
                Ok(true) => lock = Some((lock_key, token)),
                Ok(false) => {
                    Counters::bump(&c.refresh_skips);
                    postpone(guard);
                    return None;
                }
                Err(e) => {
                    e.count(c);
                    postpone(guard);
                    return None;
                }
            }
            match self
                .read_l2::<K::Value>(l2, site, &key, site.fingerprint())
                .await
            {
                L2Read::Hit {
                    value,
                    remaining,
                    kept,
                    bytes,
                    stamp,
                } => {
                    if !self.due(site, remaining) {
                        // Another process refreshed it already: take its value.
                        release_lock(l2, lock.as_ref(), c).await;
                        let promote = l1.filter(|_| remaining.is_some());
                        self.complete_with_l2_value(
                            site,
                            guard,
                            promote,
                            (digest, epoch),
                            &value,
                            (remaining, kept),
                            bytes.len(),
                        );
                        return None;
                    }
                    write = Write::refresh(&bytes, stamp);
                }
                L2Read::Stale { bytes, stamp, .. } => {
                    write = Write::refresh(&bytes, stamp);
                }
                L2Read::Leased(lease, stamp) => write = Write::Lease(lease, stamp),
                L2Read::Compute => {}
            }
        }
        Counters::bump(&c.refreshes);
        Some(Plan {
            rt: self.clone(),
            kind,
            site,
            key,
            guard,
            digest,
            epoch,
            write,
            lock,
            stale: None,
            error: None,
            refresh: true,
        })
    }
}

impl Runtime {
    /// Ends a flight with a value read from L2, copied into `promote` (an L1) for no longer
    /// than Redis keeps it fresh (`remaining`; kept until `kept`); counts the promotion, or
    /// the refusal when an invalidation hit the flight meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn complete_with_l2_value<V: crate::memoize::CacheValue>(
        &self,
        site: &'static Site,
        guard: FlightGuard,
        promote: Option<&TypedL1<V>>,
        (digest, epoch): (Digest, u64),
        value: &V,
        (remaining, kept): (Option<Duration>, Option<Duration>),
        size: usize,
    ) {
        let c = self.table().site(site);
        let fresh = remaining.map_or(Duration::ZERO, |r| r.min(site.options().ttl));
        let life = self.l1_life(
            fresh,
            kept.unwrap_or(fresh),
            self.refresh_in(site, fresh),
            size,
        );
        let mut promoted = false;
        let stored = guard.complete(
            || Shared::Value(Arc::new(value.clone())),
            || {
                if let Some(l1) = promote
                    && !fresh.is_zero()
                {
                    l1.insert(digest, value.clone(), life, epoch);
                    promoted = true;
                }
            },
        );
        if promoted {
            Counters::bump(&c.promotions);
        } else if promote.is_some() && !stored {
            Counters::bump(&c.fills_refused);
        }
    }
}

/// Deletes our refresh lock (if still ours).
async fn release_lock(l2: &L2, lock: Option<&(String, Vec<u8>)>, c: &Counters) {
    if let Some((key, token)) = lock
        && let Err(e) = l2.release_many(&[(key.as_str(), token.as_slice())]).await
    {
        e.count(c);
    }
}

/// Releases what a flight holds in Redis when it stores nothing: its lease, its lock.
async fn release(l2: Option<&L2>, write: Write, lock: Option<&(String, Vec<u8>)>, c: &Counters) {
    let Some(l2) = l2 else { return };
    if let Write::Lease(lease, _) = write
        && let Err(e) = lease.release(l2).await
    {
        e.count(c);
    }
    release_lock(l2, lock, c).await;
}

impl<K: ReturnKind> Plan<K> {
    /// The caller's timers for this body run.
    pub(crate) fn timers(&self) -> Timers<K> {
        let soft = self
            .stale
            .as_ref()
            .and_then(|_| self.rt.soft_timeout(self.site));
        let hard = self.rt.hard_timeout(self.site);
        let armed = soft.is_some() || hard.is_some();
        Timers {
            soft,
            hard,
            stale: self
                .stale
                .as_ref()
                .filter(|_| armed)
                .map(|s| s.value.clone()),
            announcer: self.guard.announcer().filter(|_| armed),
            error: self.error,
            site: self.site,
            rt: self.rt.clone(),
        }
    }

    /// Runs the body and stores its outcome (or serves the stale value when it fails).
    pub(crate) async fn finish<Fut: Future<Output = K::Output>>(self, body: Fut) -> K::Output {
        let Plan {
            rt,
            kind,
            site,
            key,
            mut guard,
            digest,
            epoch,
            write,
            lock,
            stale,
            refresh,
            ..
        } = self;
        // `mut` for `publish` below.
        let c = rt.table().site(site);
        let l2 = rt.inner.l2.as_deref().filter(|_| site.options().tiers.l2());
        if !refresh {
            Counters::bump(&c.misses);
        }
        Counters::bump(&c.computations);
        let out = match (CatchUnwind(Box::pin(body))).await {
            Ok(out) => out,
            Err(panic) => {
                Counters::bump(&c.body_panics);
                if let Some(stale) = stale
                    && !guard.poisoned()
                {
                    return rt
                        .serve_stale::<K>(site, &key, guard, write, lock, stale, digest, epoch)
                        .await;
                }
                release(l2, write, lock.as_ref(), c).await;
                if refresh {
                    postpone_in::<K::Value>(&rt, site, guard, digest);
                }
                // The panic reaches the caller as if there were no cache; the guard's drop
                // lets the followers take over.
                resume_unwind(panic)
            }
        };
        // Fail-safe first: a failed body with a stale value answers with it (also when
        // `cache_err` would cache the `Err`).
        if K::failed(&out)
            && !refresh
            && !guard.poisoned()
            && let Some(stale) = stale
        {
            return rt
                .serve_stale::<K>(site, &key, guard, write, lock, stale, digest, epoch)
                .await;
        }
        match K::cached(&out) {
            Some(v) => {
                let negative = K::negative(v);
                if negative {
                    Counters::bump(&c.negative_stored);
                }
                rt.store(site, &key, guard, write, lock, v, negative, digest, epoch)
                    .await;
                out
            }
            None => {
                let shared = kind.share(&out);
                // Followers need not wait for the lease's release; a `Retry` is not handed
                // out early (they would find our lease still there).
                if let Some(o) = &shared {
                    guard.publish(|| Shared::Output(o.clone()));
                }
                release(l2, write, lock.as_ref(), c).await;
                if refresh {
                    postpone_in::<K::Value>(&rt, site, guard, digest);
                } else {
                    guard.complete(|| shared.map_or(Shared::Retry, Shared::Output), || {});
                }
                out
            }
        }
    }
}

/// After a failed refresh: its L1 entry asks again later, not on every hit.
fn postpone_in<V: Clone + Send + Sync + 'static>(
    rt: &Runtime,
    site: &'static Site,
    guard: FlightGuard,
    digest: Digest,
) {
    let l1 = rt.l1::<V>(site);
    guard.complete(
        || Shared::Retry,
        || {
            if let Some(l1) = l1 {
                l1.postpone_refresh(digest);
            }
        },
    );
}

impl Runtime {
    /// Writes a computed value to Redis (per `write`) and L1.
    #[allow(clippy::too_many_arguments)]
    async fn store<V: crate::memoize::CacheValue>(
        &self,
        site: &'static Site,
        key: &Key,
        guard: FlightGuard,
        write: Write,
        lock: Option<(String, Vec<u8>)>,
        v: &V,
        negative: bool,
        digest: Digest,
        epoch: u64,
    ) {
        let c = self.table().site(site);
        let cfg = &self.inner.config;
        // The lifetime of what this flight writes, in L2 and L1 alike (jittered); a negative
        // answer lives for its own TTL, never kept stale, never refreshed ahead.
        let (ttl, keep, refresh_at) = match site.options().negative_ttl.filter(|_| negative) {
            Some(ttl) => (ttl, ttl, None),
            None => {
                let ttl = self.write_ttl(site);
                let keep = ttl + self.fail_safe(site).unwrap_or_default();
                (
                    ttl,
                    keep,
                    site.options().refresh_ahead.map(|f| ttl.mul_f32(f)),
                )
            }
        };
        let l1 = if site.options().tiers.l1() {
            self.l1::<V>(site)
        } else {
            None
        };
        let l2 = self
            .inner
            .l2
            .as_deref()
            .filter(|_| site.options().tiers.l2());
        let mut size = 0;
        let mut keep_l1 = true;
        let mut guard = guard;
        if let Some(l2) = l2
            && !matches!(write, Write::None)
        {
            // The followers need not wait for the write to Redis.
            guard.publish(|| Shared::Value(Arc::new(v.clone())));
            let now = codec::unix_ms();
            let times = Times {
                expires_at: now.saturating_add(millis(ttl)),
                kept_until: now.saturating_add(millis(keep)),
                nonce: next_random(),
            };
            if guard.poisoned() {
                Counters::bump(&c.fills_refused);
                keep_l1 = false;
                release(Some(l2), write, lock.as_ref(), c).await;
            } else {
                // Encoded only when it will be written.
                match codec::encode_entry(site.fingerprint(), stamp_of(&write), times, v) {
                    Ok(bytes) if bytes.len() <= cfg.max_value_bytes => {
                        size = bytes.len();
                        let written = match write {
                            Write::Lease(lease, _) if self.background(site) => {
                                self.queue_write(site, lease, bytes, keep, guard.poison_flag());
                                release_lock(l2, lock.as_ref(), c).await;
                                None
                            }
                            Write::Lease(lease, _) => {
                                let r = lease.fill(l2, &bytes, keep).await;
                                release_lock(l2, lock.as_ref(), c).await;
                                Some(r)
                            }
                            Write::Refresh { tag, .. } => {
                                let lock = lock.as_ref().map(|(k, t)| (k.as_str(), t.as_slice()));
                                Some(
                                    l2.replace_version(
                                        key.as_str(),
                                        &tag,
                                        &bytes,
                                        Some(keep),
                                        lock,
                                    )
                                    .await,
                                )
                            }
                            Write::None => None,
                        };
                        match written {
                            Some(Ok(true)) => Counters::bump(&c.l2_writes),
                            Some(Ok(false)) => {
                                // The lease or the version we read was gone: an invalidation
                                // (or the lease's expiry) came in between.
                                Counters::bump(&c.fills_refused);
                                keep_l1 = false;
                            }
                            Some(Err(e)) => e.count(c),
                            None => {}
                        }
                    }
                    other => {
                        // Too large (or not serializable): keep it out of Redis; the key held
                        // only our lease, which goes (a refreshed key keeps its old value).
                        Counters::bump(&c.oversize_skips);
                        if let Err(e) = other {
                            tracing::debug!(site = site.name(), error = %e, "tiered: value could not be encoded for L2");
                        }
                        release(Some(l2), write, lock.as_ref(), c).await;
                    }
                }
            }
        } else if let Some(l2) = l2 {
            release_lock(l2, lock.as_ref(), c).await;
        }
        if size == 0 && l1.is_some_and(TypedL1::weighs) {
            size = codec::encoded_len(v);
        }
        let life = self.l1_life(ttl, keep, refresh_at, size);
        let stored = guard.complete(
            || Shared::Value(Arc::new(v.clone())),
            || {
                if keep_l1 && let Some(l1) = l1 {
                    l1.insert(digest, v.clone(), life, epoch);
                }
            },
        );
        if keep_l1 && !stored {
            Counters::bump(&c.fills_refused);
        }
    }

    /// Fail-safe: answers with the stale value, re-cached for the throttle period (in L1, and in
    /// Redis over the very write it came from, its key's lifetime kept), so that the body is
    /// not called again for this key meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn serve_stale<K: ReturnKind>(
        &self,
        site: &'static Site,
        key: &Key,
        guard: FlightGuard,
        write: Write,
        lock: Option<(String, Vec<u8>)>,
        stale: StaleValue<K::Value>,
        digest: Digest,
        epoch: u64,
    ) -> K::Output {
        let c = self.table().site(site);
        Counters::bump(&c.stale_served);
        outcome("stale");
        let throttle = self.inner.config.fail_safe_throttle.min(stale.kept);
        let l2 = self
            .inner
            .l2
            .as_deref()
            .filter(|_| site.options().tiers.l2());
        if let Some(l2) = l2 {
            match (&write, &stale.bytes) {
                (Write::Refresh { tag, .. }, Some(bytes)) => {
                    let until = codec::unix_ms().saturating_add(millis(throttle));
                    if let Some(again) = codec::with_expiry(bytes, until, next_random()) {
                        let lock = lock.as_ref().map(|(k, t)| (k.as_str(), t.as_slice()));
                        if let Err(e) = l2
                            .replace_version(key.as_str(), tag, &again, None, lock)
                            .await
                        {
                            e.count(c);
                        }
                    } else {
                        release_lock(l2, lock.as_ref(), c).await;
                    }
                }
                _ => release(Some(l2), write, lock.as_ref(), c).await,
            }
        }
        let l1 = if site.options().tiers.l1() {
            self.l1::<K::Value>(site)
        } else {
            None
        };
        let life = Lifetimes {
            fresh: throttle,
            keep: stale.kept,
            refresh: None,
            size: stale.bytes.as_ref().map_or(0, Vec::len),
        };
        let value = stale.value;
        guard.complete(
            || Shared::Value(Arc::new(value.clone())),
            || {
                if let Some(l1) = l1 {
                    l1.insert(digest, value.clone(), life, epoch);
                }
            },
        );
        K::from_value(value)
    }
}

fn stamp_of(write: &Write) -> Stamp {
    match write {
        Write::Lease(_, stamp) | Write::Refresh { stamp, .. } => *stamp,
        Write::None => Stamp::default(),
    }
}

/// The caller's side of a body run: its soft and hard timeouts.
pub(crate) struct Timers<K: ReturnKind> {
    /// Only with a stale value to answer with.
    soft: Option<Duration>,
    hard: Option<Duration>,
    stale: Option<K::Value>,
    announcer: Option<Announcer>,
    error: Option<fn(Error) -> K::Output>,
    site: &'static Site,
    rt: Runtime,
}

impl<K: ReturnKind> Timers<K> {
    /// Whether a timeout may answer the caller before the body ends.
    pub(crate) fn armed(&self) -> bool {
        self.soft.is_some() || self.hard.is_some()
    }

    /// The first timer to fire, and whether it is the soft one.
    fn first(&self) -> Option<(Duration, bool)> {
        match (self.soft, self.hard) {
            (Some(soft), _) => Some((soft, true)),
            (None, Some(hard)) => Some((hard, false)),
            (None, None) => None,
        }
    }

    /// A timer fired: the stale value (handed to the followers too), else the hard timeout's
    /// error; `None`: keep waiting for the body.
    fn fired(&self, soft: bool) -> Option<K::Output> {
        let c = self.rt.table().site(self.site);
        Counters::bump(if soft {
            &c.soft_timeouts
        } else {
            &c.hard_timeouts
        });
        if let Some(v) = &self.stale {
            Counters::bump(&c.stale_served);
            outcome("stale");
            if let Some(a) = &self.announcer {
                a.announce(|| Shared::Value(Arc::new(v.clone())));
            }
            return Some(K::from_value(v.clone()));
        }
        let timeout = self.hard?;
        self.error.map(|error| {
            error(Error::Timeout {
                site: self.site.name(),
                timeout,
            })
        })
    }

    /// Runs `tail` (the body and the store) in the caller's future; a timer that answers the
    /// caller drops it, cancelling the body.
    pub(crate) async fn inline(self, tail: impl Future<Output = K::Output>) -> K::Output {
        let Some((first, soft)) = self.first() else {
            return tail.await;
        };
        let mut tail = std::pin::pin!(tail);
        tokio::select! {
            biased;
            out = &mut tail => return out,
            () = tokio::time::sleep(first) => {}
        }
        if let Some(out) = self.fired(soft) {
            return out;
        }
        tail.await
    }

    /// Waits for the task running the body; a timer that answers the caller leaves the task to
    /// finish and store its result in the background.
    pub(crate) async fn detached(
        self,
        mut handle: tokio::task::JoinHandle<K::Output>,
    ) -> K::Output {
        let joined = |r: Result<K::Output, tokio::task::JoinError>| match r {
            Ok(out) => out,
            Err(e) => match e.try_into_panic() {
                // The body panicked: the caller sees the panic, as without a cache.
                Ok(panic) => resume_unwind(panic),
                Err(_) => resume_unwind(Box::new(
                    "tiered: the task running the memoized body was cancelled (its Tokio runtime is shutting down)",
                )),
            },
        };
        let Some((first, soft)) = self.first() else {
            return joined(handle.await);
        };
        tokio::select! {
            biased;
            r = &mut handle => return joined(r),
            () = tokio::time::sleep(first) => {}
        }
        if let Some(out) = self.fired(soft) {
            return out;
        }
        joined(handle.await)
    }
}

/// A future that turns a panic of `F` into an `Err` carrying the panic's payload.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Records how the current call was answered on its `tiered.call` span (the current span
/// inside a memoized call); a later record replaces an earlier one (`miss`, then `stale`).
#[inline]
pub(crate) fn outcome(o: &'static str) {
    tracing::Span::current().record("outcome", o);
}
