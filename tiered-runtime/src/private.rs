//! Support for the code `#[tiered_cache]` generates. Not a stable API.

use std::fmt;
use std::marker::PhantomData;

use crate::memoize::{CacheValue, Fallible, FallibleUncloneable, Optional, Plain, ReturnKind};
pub use crate::memoize::{Prepared, prepare};

/// `Result<T, E>`, also behind a type alias.
pub trait IsResult {
    /// `T`.
    type Ok;
    /// `E`.
    type Err;
}
impl<T, E> IsResult for Result<T, E> {
    type Ok = T;
    type Err = E;
}

/// `Option<T>`, also behind a type alias.
pub trait IsOption {
    /// `T`.
    type Some;
}
impl<T> IsOption for Option<T> {
    type Some = T;
}

/// The kind of a plain return type `R`.
pub fn plain<R: CacheValue>() -> Plain<R> {
    Plain::new()
}

/// The kind of an `Option`-like return type `R`.
pub fn optional<R: IsOption>() -> Optional<R::Some>
where
    R::Some: CacheValue,
{
    Optional::new()
}

/// Picks [`Fallible`] when the error type is `Clone + Send + Sync`, else
/// [`FallibleUncloneable`], by autoref specialization: `(&ResultProbe::<R>::new()).kind()`
/// finds [`ErrIsClone::kind`] first when its bounds hold, [`ErrIsNotClone::kind`] otherwise.
pub struct ResultProbe<R>(PhantomData<fn() -> R>);

impl<R> ResultProbe<R> {
    /// The probe.
    pub const fn new() -> Self {
        ResultProbe(PhantomData)
    }
}

impl<R> Default for ResultProbe<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// Chosen when the error is `Clone`: one `Err` reaches every coalesced caller.
pub trait ErrIsClone {
    /// The kind.
    type Kind: ReturnKind;
    /// The kind as a value.
    fn kind(&self) -> Self::Kind;
}

impl<R: IsResult> ErrIsClone for ResultProbe<R>
where
    R::Ok: CacheValue,
    R::Err: Clone + Send + Sync + 'static,
{
    type Kind = Fallible<R::Ok, R::Err>;
    fn kind(&self) -> Self::Kind {
        Fallible::new()
    }
}

/// Chosen when the error is not `Clone`: followers form a new flight after an `Err`.
pub trait ErrIsNotClone {
    /// The kind.
    type Kind: ReturnKind;
    /// The kind as a value.
    fn kind(&self) -> Self::Kind;
}

impl<R: IsResult> ErrIsNotClone for &ResultProbe<R>
where
    R::Ok: CacheValue,
    R::Err: 'static,
{
    type Kind = FallibleUncloneable<R::Ok, R::Err>;
    fn kind(&self) -> Self::Kind {
        FallibleUncloneable::new()
    }
}

/// [`prepare`] with the kind given as a value (so generated code can obtain it by inference).
pub fn prepare_as<K: ReturnKind>(
    _kind: K,
    site: &'static crate::Site,
    args: &[&(dyn fmt::Display + Sync)],
) -> Prepared<K> {
    prepare::<K>(site, args)
}

/// Displays the name of `T`: the default key of a method includes its `Self` type.
pub struct TypeName<T: ?Sized>(PhantomData<fn() -> *const T>);

impl<T: ?Sized> TypeName<T> {
    /// The value.
    pub const fn new() -> Self {
        TypeName(PhantomData)
    }
}

impl<T: ?Sized> Default for TypeName<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: ?Sized> fmt::Display for TypeName<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::any::type_name::<T>())
    }
}
