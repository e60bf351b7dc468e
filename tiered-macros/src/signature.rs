//! The function's shape: receiver, arguments, return type, and what is unsupported. (The
//! return *kind* is taken from the type by the generated code, see `expand`.)

use proc_macro2::Span;
use syn::{FnArg, GenericParam, ItemFn, Pat, ReturnType, Type};

use crate::attr::SpanOf;
use crate::errors::Errors;

pub(crate) struct Arg {
    pub(crate) ident: syn::Ident,
    pub(crate) ty: Type,
}

pub(crate) struct Shape {
    /// `&self` / `&mut self`: the function is a method.
    pub(crate) receiver: Option<syn::Receiver>,
    pub(crate) args: Vec<Arg>,
    /// The return type (`()` when none is written).
    pub(crate) ret: Type,
    pub(crate) ret_span: Span,
}

pub(crate) fn analyze(f: &ItemFn, errors: &mut Errors) -> Shape {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token.span,
            "#[tiered_cache] memoizes async functions only: make this an `async fn`",
        );
    }
    for p in &sig.generics.params {
        match p {
            GenericParam::Lifetime(_) => {}
            GenericParam::Type(t) => errors.at(
                t.ident.span(),
                "#[tiered_cache] does not support generic type parameters: each memoized function has one cached value type and one static site; write a concrete function per type",
            ),
            GenericParam::Const(c) => errors.at(
                c.ident.span(),
                "#[tiered_cache] does not support const generics: write a concrete function",
            ),
        }
    }
    let mut receiver = None;
    let mut args = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                if r.reference.is_none() || r.colon_token.is_some() {
                    errors.at(
                        r.self_token.span,
                        "#[tiered_cache] methods take `&self` or `&mut self` (written exactly so): `self` by value, `self: Arc<Self>`, `self: &Self` and other typed receivers are not supported; take `&self`, or memoize a free function and call it from this method",
                    );
                } else {
                    receiver = Some(r.clone());
                }
            }
            FnArg::Typed(pt) => {
                if contains_impl_trait(&pt.ty) {
                    errors.at(
                        pt.ty.span_of(),
                        "#[tiered_cache] does not support `impl Trait` arguments: they are generic; use a concrete type",
                    );
                }
                match &*pt.pat {
                    Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => args.push(Arg {
                        ident: pi.ident.clone(),
                        ty: (*pt.ty).clone(),
                    }),
                    other => errors.at(
                        other.span_of(),
                        "#[tiered_cache] needs a plain name for every argument so the key can refer to it; destructure inside the body instead",
                    ),
                }
            }
        }
    }
    let (ret, ret_span) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), sig.ident.span()),
        ReturnType::Type(_, ty) => ((**ty).clone(), ty.span_of()),
    };
    Shape {
        receiver,
        args,
        ret,
        ret_span,
    }
}

fn contains_impl_trait(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(_) => true,
        Type::Reference(r) => contains_impl_trait(&r.elem),
        Type::Paren(p) => contains_impl_trait(&p.elem),
        Type::Group(g) => contains_impl_trait(&g.elem),
        Type::Slice(s) => contains_impl_trait(&s.elem),
        Type::Array(a) => contains_impl_trait(&a.elem),
        Type::Tuple(t) => t.elems.iter().any(contains_impl_trait),
        Type::Path(p) => p.path.segments.iter().any(|s| match &s.arguments {
            syn::PathArguments::AngleBracketed(a) => a
                .args
                .iter()
                .any(|g| matches!(g, syn::GenericArgument::Type(t) if contains_impl_trait(t))),
            _ => false,
        }),
        _ => false,
    }
}

/// Whether a type holds a reference or a lifetime (the body would borrow from the caller).
pub(crate) fn borrows(ty: &Type) -> bool {
    fn scan(tokens: proc_macro2::TokenStream) -> bool {
        tokens.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Punct(p) => p.as_char() == '&' || p.as_char() == '\'',
            proc_macro2::TokenTree::Group(g) => scan(g.stream()),
            _ => false,
        })
    }
    scan(quote::ToTokens::to_token_stream(ty))
}
