//! [`Site`]: the per-function `static` the macro emits.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::key::{Template, TemplateError};

/// Which tiers a site uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiers {
    /// L1 only: nothing is sent to Redis.
    L1,
    /// L2 only: L1 is never filled.
    L2,
    /// L1 in front of L2 (the default).
    Both,
}

impl Tiers {
    pub(crate) fn l1(self) -> bool {
        matches!(self, Tiers::L1 | Tiers::Both)
    }
    pub(crate) fn l2(self) -> bool {
        matches!(self, Tiers::L2 | Tiers::Both)
    }
}

/// Named TTL presets of the `strategy` attribute option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// 10 seconds.
    RealTime,
    /// 5 minutes.
    ShortTerm,
    /// 1 hour.
    MediumTerm,
    /// 3 hours.
    LongTerm,
    /// 5 minutes.
    Default,
}

impl Strategy {
    /// The TTL of the preset.
    pub const fn ttl(self) -> Duration {
        match self {
            Strategy::RealTime => Duration::from_secs(10),
            Strategy::ShortTerm | Strategy::Default => Duration::from_secs(5 * 60),
            Strategy::MediumTerm => Duration::from_secs(60 * 60),
            Strategy::LongTerm => Duration::from_secs(3 * 60 * 60),
        }
    }
}

/// The options of one memoized function.
#[derive(Debug, Clone, Copy)]
pub struct SiteOptions {
    /// Lifetime of an entry (L2 TTL; L1 TTL is capped further by the runtime's `l1_max_ttl`).
    pub ttl: Duration,
    /// Tiers in use.
    pub tiers: Tiers,
    /// Promote an L2 hit to L1 with probability 1/`promote`; `0` uses the runtime's default.
    pub promote: u32,
    /// Schema version: bumping it turns entries written by older code into misses.
    pub version: u32,
    /// TTL jitter in percent (0–100): each value written gets a lifetime shortened by a random
    /// 0 to `jitter` % of `ttl`, so that entries written together do not expire together.
    /// `None` uses the runtime's `ttl_jitter` (default 0).
    pub jitter: Option<u8>,
    /// Fail-safe: how long a value is kept past its TTL as a stale fallback, served when the
    /// body fails (returns `Err`, panics, passes its hard timeout) or passes its soft timeout.
    /// `None` uses the runtime's `fail_safe` (default off).
    pub fail_safe: Option<Duration>,
    /// Soft timeout of the body: past it, a caller that has a stale value gets it, and the body
    /// finishes in the background. `None` uses the runtime's `soft_timeout` (default none).
    pub soft_timeout: Option<Duration>,
    /// Hard timeout of the body: past it, a caller without a stale value gets
    /// [`Error::Timeout`](crate::Error::Timeout) (when its error type converts from
    /// [`Error`](crate::Error)). `None` uses the runtime's `hard_timeout` (default none).
    pub hard_timeout: Option<Duration>,
    /// Refresh-ahead: a hit on an entry past this fraction of its TTL (0 < f < 1) returns the
    /// value and starts one background recomputation. `None`: off.
    pub refresh_ahead: Option<f32>,
    /// Writes to Redis leave the caller's path (queued). `None` uses the runtime's
    /// `background_writes` (default off).
    pub background_writes: Option<bool>,
    /// Records the rendered key on this function's `tiered.call` spans (field `key`). Off by
    /// default: keys carry the arguments, which may be user data.
    pub trace_keys: bool,
    /// The TTL of a negative answer (`cache_none = "…"` / `cache_err = "…"`: a `None` or an
    /// `Err` cached like a value, with a return kind that caches it). `None`: negative
    /// answers are not cached.
    pub negative_ttl: Option<Duration>,
    /// Tag templates (`tags = ["tenant:<tenant>"]` on the attribute): labels the entry
    /// carries, dropped together by [`Runtime::invalidate_tag`](crate::Runtime::invalidate_tag).
    /// Here a placeholder is the *position* of one of the key's values (`tenant:<0>`); the
    /// macro turns the names you write into positions. At most 4.
    pub tags: &'static [&'static str],
}

impl SiteOptions {
    /// `Default` strategy (5 min), both tiers, runtime promotion default, version 0.
    pub const DEFAULT: SiteOptions = SiteOptions {
        ttl: Strategy::Default.ttl(),
        tiers: Tiers::Both,
        promote: 0,
        version: 0,
        jitter: None,
        fail_safe: None,
        soft_timeout: None,
        hard_timeout: None,
        refresh_ahead: None,
        background_writes: None,
        trace_keys: false,
        negative_ttl: None,
        tags: &[],
    };
}

impl Default for SiteOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static NEXT_SITE_INDEX: AtomicUsize = AtomicUsize::new(0);

/// One memoized function: its name, key template and options, plus the lazily computed state
/// shared by every runtime (compiled template, index into each runtime's counter table,
/// rate-limit flags for logs).
///
/// Meant to live in a `static`:
///
/// ```
/// use std::time::Duration;
/// use tiered_runtime::{Site, SiteOptions};
///
/// static GET_USER: Site = Site::new(
///     "app::get_user",
///     "user:<id>",
///     SiteOptions { ttl: Duration::from_secs(60), version: 1, ..SiteOptions::DEFAULT },
/// );
/// assert_eq!(GET_USER.name(), "app::get_user");
/// ```
#[derive(Debug)]
pub struct Site {
    name: &'static str,
    template: &'static str,
    schema: Option<&'static str>,
    options: SiteOptions,
    compiled: OnceLock<Result<Template, TemplateError>>,
    compiled_tags: OnceLock<Option<Vec<crate::tags::TagTemplate>>>,
    index: OnceLock<usize>,
    fingerprint: OnceLock<[u8; 16]>,
    pub(crate) warned_decode: AtomicBool,
    pub(crate) warned_shared_template: AtomicBool,
    pub(crate) warned_template: AtomicBool,
}

impl Site {
    /// A site for the function `name` (its path, used in stats and logs) with key `template`.
    /// Its schema fingerprint is made of `name` and `options.version`: bump the version when
    /// the value type changes (or use [`with_schema`](Self::with_schema)).
    pub const fn new(name: &'static str, template: &'static str, options: SiteOptions) -> Site {
        Self::with_schema(name, template, "", options)
    }

    /// A site whose schema fingerprint is made of `schema` (the value type as written; the
    /// macro passes the function's return type) and `options.version`: entries written for
    /// another schema are misses. Built only from text, so the same for every build and
    /// toolchain.
    pub const fn with_schema(
        name: &'static str,
        template: &'static str,
        schema: &'static str,
        options: SiteOptions,
    ) -> Site {
        Site {
            name,
            template,
            schema: if schema.is_empty() {
                None
            } else {
                Some(schema)
            },
            options,
            compiled: OnceLock::new(),
            compiled_tags: OnceLock::new(),
            index: OnceLock::new(),
            fingerprint: OnceLock::new(),
            warned_decode: AtomicBool::new(false),
            warned_shared_template: AtomicBool::new(false),
            warned_template: AtomicBool::new(false),
        }
    }

    /// The function's path.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The key template, as written.
    pub fn template(&self) -> &'static str {
        self.template
    }

    /// The options.
    pub fn options(&self) -> &SiteOptions {
        &self.options
    }

    pub(crate) fn compiled(&self) -> &Result<Template, TemplateError> {
        self.compiled.get_or_init(|| Template::parse(self.template))
    }

    /// Dense process-wide index, assigned on first use; each runtime keeps its per-site
    /// counters in a table indexed by it.
    /// The tag templates; `None` when one does not parse or there are more than
    /// [`MAX_TAGS`](crate::codec::MAX_TAGS) (calls then run uncached, like a bad key template).
    pub(crate) fn tag_templates(&self) -> Option<&[crate::tags::TagTemplate]> {
        self.compiled_tags
            .get_or_init(|| {
                if self.options.tags.len() > crate::codec::MAX_TAGS {
                    return None;
                }
                self.options
                    .tags
                    .iter()
                    .map(|t| crate::tags::TagTemplate::parse(t).ok())
                    .collect()
            })
            .as_deref()
    }

    pub(crate) fn index(&self) -> usize {
        *self
            .index
            .get_or_init(|| NEXT_SITE_INDEX.fetch_add(1, Ordering::Relaxed))
    }

    /// Schema fingerprint of this site's values: its schema (else its name) and `version`.
    pub(crate) fn fingerprint(&self) -> &[u8; 16] {
        self.fingerprint.get_or_init(|| {
            let schema = self.schema.unwrap_or(self.name);
            if self.options.negative_ttl.is_some() {
                // The cached value is the whole `Option`/`Result`, not its `Some`/`Ok` value:
                // another schema than the same function without negative caching.
                crate::codec::fingerprint(&format!("{schema} +negative"), self.options.version)
            } else {
                crate::codec::fingerprint(schema, self.options.version)
            }
        })
    }

    /// Logs at most once per site and flag.
    pub(crate) fn first_time(flag: &AtomicBool) -> bool {
        !flag.swap(true, Ordering::Relaxed)
    }
}
