//! Support for the code `#[tiered_cache]` generates. Not a stable API.

use std::fmt;
use std::marker::PhantomData;

use crate::memoize::{
    CacheValue, CachedErr, CachedNone, Fallible, FallibleFrom, FallibleUncloneable, Optional,
    Plain, ReturnKind,
};
pub use crate::memoize::{Prepared, prepare};

/// `Result<T, E>`, also behind a type alias.
pub trait IsResult {
    /// `T`.
    type Ok;
    /// `E`.
    type Err;
    /// `Err(e)`.
    fn from_err(e: Self::Err) -> Self;
}
impl<T, E> IsResult for Result<T, E> {
    type Ok = T;
    type Err = E;
    fn from_err(e: E) -> Self {
        Err(e)
    }
}

/// `Option<T>`, also behind a type alias.
pub trait IsOption {
    /// `T`.
    type Some;
}
impl<T> IsOption for Option<T> {
    type Some = T;
}

/// Picks the [`ReturnKind`] of a return type `R` from the type itself, by autoref
/// specialization, so that a `Result` or an `Option` behind a type alias is recognised:
/// `(&&&&KindProbe::<R>::new()).kind()` finds, in this order,
///
/// 1. [`ResultCloneErr`]: `R` is a `Result` whose error is `Clone + Send + Sync + 'static`
///    ([`Fallible`]: one `Err` reaches every caller of the flight);
/// 2. [`ResultFromErr`]: a `Result` whose error converts from [`Error`](crate::Error) and is
///    `Display` ([`FallibleFrom`]: every caller of the flight gets the leader's error text);
/// 3. [`ResultErr`] or [`OptionValue`]: any other `Result` ([`FallibleUncloneable`]), an
///    `Option` ([`Optional`]);
/// 4. [`PlainValue`]: anything else ([`Plain`]).
///
/// The cached value type's bounds are checked where the kind is used, so a `Result` whose `Ok`
/// type cannot be cached is reported as such ("`T` cannot be cached by tiered").
pub struct KindProbe<R>(PhantomData<fn() -> R>);

impl<R> KindProbe<R> {
    /// The probe.
    pub const fn new() -> Self {
        KindProbe(PhantomData)
    }
}

impl<R> Default for KindProbe<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// Finds how a return type `R` carries [`Error::Timeout`](crate::Error::Timeout) (a hard
/// timeout without a stale value): `(&&ErrProbe::<R>::new()).timeout_error()` is `Some` for a
/// `Result` (also behind an alias) whose error converts from [`Error`](crate::Error), `None`
/// otherwise.
pub struct ErrProbe<R>(PhantomData<fn() -> R>);

impl<R> ErrProbe<R> {
    /// The probe.
    pub const fn new() -> Self {
        ErrProbe(PhantomData)
    }
}

impl<R> Default for ErrProbe<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// `R` is a `Result` whose error converts from [`Error`](crate::Error).
pub trait TimeoutError<R> {
    /// The conversion.
    fn timeout_error(&self) -> Option<fn(crate::Error) -> R>;
}

impl<R: IsResult> TimeoutError<R> for &ErrProbe<R>
where
    R::Err: From<crate::Error>,
{
    fn timeout_error(&self) -> Option<fn(crate::Error) -> R> {
        Some(|e| R::from_err(R::Err::from(e)))
    }
}

/// Any other `R`: a hard timeout without a stale value keeps waiting for the body.
pub trait NoTimeoutError<R> {
    /// `None`.
    fn timeout_error(&self) -> Option<fn(crate::Error) -> R>;
}

impl<R> NoTimeoutError<R> for ErrProbe<R> {
    fn timeout_error(&self) -> Option<fn(crate::Error) -> R> {
        None
    }
}

/// A `Result` whose error is `Clone + Send + Sync + 'static`.
pub trait ResultCloneErr {
    /// The kind.
    type Kind;
    /// The kind as a value.
    fn kind(&self) -> Self::Kind;
}

impl<R: IsResult> ResultCloneErr for &&&KindProbe<R>
where
    R::Err: Clone + Send + Sync + 'static,
{
    type Kind = Fallible<R::Ok, R::Err>;
    fn kind(&self) -> Self::Kind {
        Fallible::new()
    }
}

/// A `Result` whose error converts from [`Error`](crate::Error) and is `Display`.
pub trait ResultFromErr {
    /// The kind.
    type Kind;
    /// The kind as a value.
    fn kind(&self) -> Self::Kind;
}

impl<R: IsResult> ResultFromErr for &&KindProbe<R>
where
    R::Err: From<crate::Error> + fmt::Display + 'static,
{
    type Kind = FallibleFrom<R::Ok, R::Err>;
    fn kind(&self) -> Self::Kind {
        FallibleFrom::new()
    }
}

/// Any other `Result`.
pub trait ResultErr {
    /// The kind.
    type Kind;
    /// The kind as a value.
    fn kind(&self) -> Self::Kind;
}

impl<R: IsResult> ResultErr for &KindProbe<R>
where
    R::Err: 'static,
{
    type Kind = FallibleUncloneable<R::Ok, R::Err>;
    fn kind(&self) -> Self::Kind {
        FallibleUncloneable::new()
    }
}

/// An `Option`.
pub trait OptionValue {
    /// The kind.
    type Kind;
    /// The kind as a value.
    fn kind(&self) -> Self::Kind;
}

impl<R: IsOption> OptionValue for &KindProbe<R> {
    type Kind = Optional<R::Some>;
    fn kind(&self) -> Self::Kind {
        Optional::new()
    }
}

/// Any other type: always cached.
pub trait PlainValue {
    /// The kind.
    type Kind;
    /// The kind as a value.
    fn kind(&self) -> Self::Kind;
}

impl<R> PlainValue for KindProbe<R> {
    type Kind = Plain<R>;
    fn kind(&self) -> Self::Kind {
        Plain::new()
    }
}

/// The cached value type of a kind (whatever its bounds), so that generated code can require
/// [`CacheValue`] of it directly: the error then says "`T` cannot be cached by tiered".
pub trait KindValue {
    /// The cached value type.
    type Value;
}
impl<T> KindValue for Plain<T> {
    type Value = T;
}
impl<T> KindValue for Optional<T> {
    type Value = T;
}
impl<T, E> KindValue for Fallible<T, E> {
    type Value = T;
}
impl<T, E> KindValue for FallibleFrom<T, E> {
    type Value = T;
}
impl<T, E> KindValue for FallibleUncloneable<T, E> {
    type Value = T;
}

impl<T> KindValue for CachedNone<T> {
    type Value = Option<T>;
}
impl<T, E> KindValue for CachedErr<T, E> {
    type Value = Result<T, E>;
}

/// The kinds `cache_none` applies to: an `Option`.
#[diagnostic::on_unimplemented(
    message = "`cache_none` needs a function that returns an `Option`",
    label = "not an `Option` (also behind a type alias)",
    note = "remove `cache_none`, or use `cache_err` for a `Result`"
)]
pub trait NegativeNone {
    /// The kind that caches `None` too.
    type Negative;
}
impl<T> NegativeNone for Optional<T> {
    type Negative = CachedNone<T>;
}

/// The kinds `cache_err` applies to: a `Result`.
#[diagnostic::on_unimplemented(
    message = "`cache_err` needs a function that returns a `Result`",
    label = "not a `Result` (also behind a type alias)",
    note = "remove `cache_err`, or use `cache_none` for an `Option`"
)]
pub trait NegativeErr {
    /// The kind that caches `Err` too.
    type Negative;
}
impl<T, E> NegativeErr for Fallible<T, E> {
    type Negative = CachedErr<T, E>;
}
impl<T, E> NegativeErr for FallibleFrom<T, E> {
    type Negative = CachedErr<T, E>;
}
impl<T, E> NegativeErr for FallibleUncloneable<T, E> {
    type Negative = CachedErr<T, E>;
}

/// The error type a `cache_err` function caches: `Clone + Serialize + DeserializeOwned`.
#[diagnostic::on_unimplemented(
    message = "`cache_err` caches the error, and `{Self}` cannot be cached by tiered",
    label = "this error type must be Clone + Serialize + DeserializeOwned + Send + Sync + 'static",
    note = "derive `Clone`, `serde::Serialize` and `serde::Deserialize` for `{Self}`, or remove `cache_err`"
)]
pub trait CacheableErr {}
impl<E: CacheValue> CacheableErr for E {}

/// `cache_none`: the kind taken from the type, turned into the one that caches `None`.
pub fn negative_none<K: NegativeNone>(_kind: K) -> K::Negative
where
    K::Negative: Default,
{
    K::Negative::default()
}

/// `cache_err`: the kind taken from the type, turned into the one that caches `Err`.
pub fn negative_err<T, E: CacheableErr, K: NegativeErr<Negative = CachedErr<T, E>>>(
    _kind: K,
) -> CachedErr<T, E> {
    CachedErr::default()
}

/// Requires the kind's value type to be cacheable (see [`KindValue`]).
pub fn cacheable<K: KindValue>(kind: K) -> K
where
    K::Value: CacheValue,
{
    kind
}

/// The kinds `returns = "value"` agrees with.
#[diagnostic::on_unimplemented(
    message = "`returns = \"value\"` conflicts with this return type",
    label = "this type is a `Result` or an `Option`, whose `Err` or `None` is never cached",
    note = "remove `returns`, or write `returns = \"result\"` / `returns = \"option\"`"
)]
pub trait DeclaredValue {}
impl<T> DeclaredValue for Plain<T> {}

/// The kinds `returns = "result"` agrees with.
#[diagnostic::on_unimplemented(
    message = "`returns = \"result\"` but this return type is not a `Result`",
    label = "not a `Result` (also behind a type alias)",
    note = "remove `returns`: the return kind is taken from the type"
)]
pub trait DeclaredResult {}
impl<T, E> DeclaredResult for Fallible<T, E> {}
impl<T, E> DeclaredResult for FallibleFrom<T, E> {}
impl<T, E> DeclaredResult for FallibleUncloneable<T, E> {}

/// The kinds `returns = "option"` agrees with.
#[diagnostic::on_unimplemented(
    message = "`returns = \"option\"` but this return type is not an `Option`",
    label = "not an `Option` (also behind a type alias)",
    note = "remove `returns`: the return kind is taken from the type"
)]
pub trait DeclaredOption {}
impl<T> DeclaredOption for Optional<T> {}

/// Checks a `returns = "…"` declaration against the kind taken from the type.
pub fn declared_value<K: DeclaredValue>(kind: K) -> K {
    kind
}

/// Checks a `returns = "result"` declaration against the kind taken from the type.
pub fn declared_result<K: DeclaredResult>(kind: K) -> K {
    kind
}

/// Checks a `returns = "option"` declaration against the kind taken from the type.
pub fn declared_option<K: DeclaredOption>(kind: K) -> K {
    kind
}

/// A value the key template names: `Display + Sync`, with an error that says what to do.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of the key: it does not implement `Display` (or is not `Sync`)",
    label = "the key template names this argument",
    note = "implement `Display` for `{Self}`, or name one of its fields in the template (`<arg.field>`)"
)]
pub trait KeyArg: fmt::Display + Sync {}
impl<T: fmt::Display + Sync + ?Sized> KeyArg for T {}

/// A value the key template names, as the key takes it.
pub fn key_arg<T: KeyArg>(v: &T) -> ArgProbe<'_, T> {
    ArgProbe::new(v)
}

pub use crate::key::KeyPart;

/// A key value with its type, so that `(&&probe).key_part()` can pick a [`KeyPart`] that is
/// written without the `fmt` machinery (integers, strings: [`ExactPart`]) and fall back to
/// `Display` ([`AnyPart`]) by autoref specialization.
pub struct ArgProbe<'a, T> {
    typed: &'a T,
    erased: &'a (dyn fmt::Display + Sync),
}

impl<'a, T: fmt::Display + Sync> ArgProbe<'a, T> {
    /// The probe of `v`.
    pub fn new(v: &'a T) -> Self {
        ArgProbe {
            typed: v,
            erased: v,
        }
    }
}

impl<'a, T> ArgProbe<'a, T> {
    /// The value as `Display` (for the generated `invalidate_*` functions).
    pub fn as_dyn(&self) -> &'a (dyn fmt::Display + Sync) {
        self.erased
    }
}

/// A key value of a type written directly (integers, strings).
pub trait ExactPart<'a> {
    /// The value as the key takes it.
    fn key_part(&self) -> KeyPart<'a>;
}

/// Any other key value: through `Display`.
pub trait AnyPart<'a> {
    /// The value as the key takes it.
    fn key_part(&self) -> KeyPart<'a>;
}

impl<'a, T> AnyPart<'a> for ArgProbe<'a, T> {
    fn key_part(&self) -> KeyPart<'a> {
        KeyPart::Display(self.erased)
    }
}

macro_rules! exact_parts {
    ($variant:ident as $wide:ty: $($t:ty),*) => {$(
        impl<'a> ExactPart<'a> for &ArgProbe<'a, $t> {
            #[inline]
            fn key_part(&self) -> KeyPart<'a> {
                KeyPart::$variant(*self.typed as $wide)
            }
        }
        impl<'a> ExactPart<'a> for &ArgProbe<'a, &$t> {
            #[inline]
            fn key_part(&self) -> KeyPart<'a> {
                KeyPart::$variant(**self.typed as $wide)
            }
        }
    )*};
}
exact_parts!(Unsigned as u64: u8, u16, u32, u64, usize);
exact_parts!(Signed as i64: i8, i16, i32, i64, isize);

impl<'a> ExactPart<'a> for &ArgProbe<'a, String> {
    #[inline]
    fn key_part(&self) -> KeyPart<'a> {
        KeyPart::Str(self.typed.as_str())
    }
}

impl<'a> ExactPart<'a> for &ArgProbe<'a, &str> {
    #[inline]
    fn key_part(&self) -> KeyPart<'a> {
        KeyPart::Str(self.typed)
    }
}

impl<'a> ExactPart<'a> for &ArgProbe<'a, &String> {
    #[inline]
    fn key_part(&self) -> KeyPart<'a> {
        KeyPart::Str(self.typed.as_str())
    }
}

/// [`prepare`] with the kind given as a value and the key's values as [`KeyPart`]s (what
/// generated code calls).
pub fn prepare_parts<K: ReturnKind>(
    kind: K,
    site: &'static crate::Site,
    parts: &[KeyPart<'_>],
) -> Prepared<K> {
    crate::memoize::prepare_with(kind, site, parts)
}

/// [`prepare`] with the kind given as a value (so generated code can obtain it by inference).
pub fn prepare_as<K: ReturnKind>(
    kind: K,
    site: &'static crate::Site,
    args: &[&(dyn fmt::Display + Sync)],
) -> Prepared<K> {
    crate::memoize::prepare_with(kind, site, args)
}

/// The L1 key digest of a runtime, for the micro-benchmarks (not a stable API).
pub struct KeyDigester(crate::key::Digester);

impl KeyDigester {
    /// A digester with a fresh secret for `namespace`.
    pub fn new(namespace: &str) -> Self {
        KeyDigester(crate::key::Digester::new(namespace))
    }

    /// The L1 key `template` gives `values` (`None`: wrong arity, or a key longer than
    /// [`MAX_KEY_BYTES`](crate::key::MAX_KEY_BYTES), which is rendered instead).
    pub fn digest(
        &self,
        template: &crate::key::Template,
        values: &[&(dyn fmt::Display + Sync)],
    ) -> Option<u128> {
        match template.digest(&self.0, values)? {
            crate::key::Digested::Short(d) => Some(d.0),
            crate::key::Digested::Long => None,
        }
    }

    /// [`digest`](Self::digest) of values given as [`KeyPart`]s (what generated code passes).
    pub fn digest_parts(
        &self,
        template: &crate::key::Template,
        parts: &[KeyPart<'_>],
    ) -> Option<u128> {
        match template.digest(&self.0, parts)? {
            crate::key::Digested::Short(d) => Some(d.0),
            crate::key::Digested::Long => None,
        }
    }

    /// The L1 key of a key string (as an invalidation carries it).
    pub fn of(&self, key: &str) -> u128 {
        self.0.of(key).0
    }
}
