//! The `#[tiered_cache]` attribute macro of [`tiered`](https://docs.rs/tiered).
//!
//! A small pipeline, one file per stage: `attr` parses the options, `template` the key
//! template, `signature` the function's shape; `expand` writes the wrapper, its `static`
//! site and the `invalidate_<fn>` companion. Every mistake is reported at its own span, all at
//! once; when the attribute is wrong the function is still emitted unchanged beside the errors,
//! so its callers type-check and the IDE keeps working.
#![deny(missing_docs)]

mod attr;
mod errors;
mod expand;
mod item_impl;
mod signature;
mod template;

use proc_macro::TokenStream;

/// Memoizes an `async fn` through the tiered runtime (L1 → coalescing → L2 → body) and
/// generates `invalidate_<fn>(…)` and `invalidate_all_<fn>()` beside it. See the `tiered` crate
/// docs for the options.
///
/// Methods are memoized inside an `impl` block that carries `#[tiered_cache]` too (without
/// options): it gives each method its identity, `module::Type::method`.
#[proc_macro_attribute]
pub fn tiered_cache(args: TokenStream, item: TokenStream) -> TokenStream {
    let item: proc_macro2::TokenStream = item.into();
    match syn::parse2::<syn::ItemImpl>(item.clone()) {
        Ok(imp) => item_impl::expand(args.into(), imp).into(),
        Err(_) => expand::tiered_cache(args.into(), item).into(),
    }
}
