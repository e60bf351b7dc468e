//! `#[tiered_cache]` on an `impl` block: it hands the `Self` type, as written, to every
//! memoized method inside, so that a method's identity (its site name, its default key) is
//! `module::Type::method`, and it rejects the impls whose methods cannot have one identity.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{ImplItem, ItemImpl, LitStr};

use crate::attr::SpanOf;
use crate::errors::Errors;

pub(crate) fn expand(args: TokenStream, mut item: ItemImpl) -> TokenStream {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.at(
            args.span_of(),
            "#[tiered_cache] on an `impl` block takes no options: put them on the methods",
        );
    }
    if let Some((_, path, _)) = &item.trait_ {
        errors.at(
            path.span_of(),
            "#[tiered_cache] cannot memoize trait methods (the generated `invalidate_*` functions are not members of the trait): memoize an inherent method (`impl Type { … }`) and call it from the trait impl",
        );
    }
    if !item.generics.params.is_empty() {
        errors.at(
            item.generics.span_of(),
            "#[tiered_cache] memoizes methods of concrete types only: every instantiation of a generic `impl` would share one cache site (one L1, one key space); write the `impl` for a concrete type, or memoize a function that takes the concrete type",
        );
    }
    let self_type = normalized(&item.self_ty);
    for it in &mut item.items {
        let ImplItem::Fn(f) = it else { continue };
        for a in &mut f.attrs {
            if !is_ours(a) {
                continue;
            }
            let lit = LitStr::new(&self_type, a.path().span_of());
            let extra = quote!(__self_type = #lit);
            match &mut a.meta {
                syn::Meta::Path(path) => {
                    let path = path.clone();
                    a.meta = syn::Meta::List(syn::MetaList {
                        path,
                        delimiter: syn::MacroDelimiter::Paren(Default::default()),
                        tokens: extra,
                    });
                }
                syn::Meta::List(list) => {
                    let tokens = std::mem::take(&mut list.tokens);
                    list.tokens = if tokens.is_empty() {
                        extra
                    } else {
                        quote!(#tokens, #extra)
                    };
                }
                syn::Meta::NameValue(_) => {}
            }
        }
    }
    match errors.into_compile_errors() {
        // The impl beside the errors, its methods unmemoized, so that their callers type-check
        // and no error about generated items follows.
        Some(errs) => {
            for it in &mut item.items {
                if let ImplItem::Fn(f) = it {
                    f.attrs.retain(|a| !is_ours(a));
                }
            }
            quote!(#item #errs)
        }
        None => item.into_token_stream(),
    }
}

/// `#[tiered_cache]` or `#[path::to::tiered_cache]`.
fn is_ours(a: &syn::Attribute) -> bool {
    a.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "tiered_cache")
}

/// A type's tokens without white space: stable whatever the formatting.
pub(crate) fn normalized(ty: &impl ToTokens) -> String {
    ty.to_token_stream()
        .to_string()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}
