//! Code generation: the function keeps its attributes, visibility and signature and gets a
//! thin body (render the key, call the runtime); a hidden function owns its `static` site; the
//! `invalidate_<fn>` companion renders the key from the same template.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ItemFn;

use crate::attr::{self, Negative, Returns, SpanOf, Tiers};
use crate::errors::Errors;
use crate::signature::{self, Shape};
use crate::template::{self, Template};

pub(crate) fn tiered_cache(args: TokenStream, item: TokenStream) -> TokenStream {
    let f: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let e = syn::Error::new(e.span(), "#[tiered_cache] applies to an `async fn`")
                .to_compile_error();
            return quote!(#item #e);
        }
    };
    let mut errors = Errors::default();
    let opts = attr::parse(args, &mut errors);
    let shape = signature::analyze(&f, &mut errors);
    let template = opts
        .key
        .as_ref()
        .and_then(|k| template::parse(k, &mut errors));
    if let (Some(t), Some(lit)) = (&template, &opts.key) {
        check_placeholders(t, &shape, lit, &mut errors);
    }
    positional_tags(&opts, template.as_ref(), &shape, &mut errors);
    if shape.receiver.is_some() && opts.self_type.is_none() {
        errors.at(
            f.sig.ident.span(),
            "a memoized method needs `#[tiered_cache]` on its `impl` block too (it gives the method its identity, `module::Type::method`); trait items cannot be memoized: memoize an inherent method and call it from the trait",
        );
    }
    let borrowed = shape.receiver.is_some()
        || opts.self_type.is_some()
        || shape.args.iter().any(|a| signature::borrows(&a.ty));
    if let Some((_, span)) = opts.refresh_ahead
        && (borrowed || !opts.detach)
    {
        errors.at(
            span,
            "`refresh_ahead` recomputes in the background, so the body must be able to outlive the call: this function borrows (a `&self` method, or a reference or lifetime in an argument's type) or says `detach = false`; memoize a free function whose arguments are owned (`String`, not `&str`)",
        );
    }
    if let Some(errs) = errors.into_compile_errors() {
        // The function unchanged, and its companions with bodies that never run, so that
        // callers of either do not cascade into further errors.
        let companions = stub_companions(&f, &opts, &shape, template.as_ref());
        return quote!(#f #companions #errs);
    }
    generate(&f, &opts, &shape, template.as_ref())
}

/// `invalidate_<fn>` and `invalidate_all_<fn>` for a function whose attribute is wrong: the
/// same signatures as far as they can be known (the arguments the key names, or every
/// argument), and bodies that never run (the crate does not compile).
fn stub_companions(
    f: &ItemFn,
    opts: &attr::Options,
    shape: &Shape,
    template: Option<&Template>,
) -> TokenStream {
    let name = &f.sig.ident;
    let vis = &f.vis;
    let companion = format_ident!("invalidate_{}", name);
    let companion_all = format_ident!("invalidate_all_{}", name);
    let krate = opts.krate();
    let named = |a: &signature::Arg| {
        template.is_none_or(|t| t.placeholders.iter().any(|p| a.ident == p.root))
    };
    let args: Vec<_> = shape.args.iter().filter(|a| named(a)).collect();
    let idents = args.iter().map(|a| &a.ident);
    let params = args.iter().map(|a| {
        let (ident, ty) = (&a.ident, &a.ty);
        quote!(#ident: #ty)
    });
    let uses_self = template.is_some_and(|t| t.placeholders.iter().any(|p| p.root == "self"))
        && shape.receiver.is_some();
    let receiver = uses_self.then(|| quote!(&self,));
    let unused = uses_self.then(|| quote!(let _ = self;));
    quote! {
        #[doc(hidden)]
        #[allow(unused_variables, clippy::unused_async)]
        #vis async fn #companion(#receiver #(#params),*)
            -> ::core::result::Result<(), #krate::Error>
        {
            #unused
            let _ = (#(&#idents,)*);
            ::core::unreachable!("#[tiered_cache] reported an error for this function")
        }

        #[doc(hidden)]
        #[allow(clippy::unused_async)]
        #vis async fn #companion_all() -> ::core::result::Result<(), #krate::Error> {
            ::core::unreachable!("#[tiered_cache] reported an error for this function")
        }
    }
}

fn check_placeholders(t: &Template, shape: &Shape, lit: &syn::LitStr, errors: &mut Errors) {
    let names: Vec<String> = shape.args.iter().map(|a| a.ident.to_string()).collect();
    for p in &t.placeholders {
        if p.root == "self" {
            if shape.receiver.is_none() {
                errors.at(
                    lit.span(),
                    format!(
                        "placeholder `<self.{}>` needs a `&self` receiver",
                        p.fields.join(".")
                    ),
                );
            } else if p.fields.is_empty() {
                errors.at(lit.span(), "placeholder `<self>` names the receiver: name one of its fields, e.g. `<self.tenant>`");
            }
        } else if !names.contains(&p.root) {
            let known = if names.is_empty() {
                "it has none".to_owned()
            } else {
                format!(
                    "it has {}",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            errors.at(
                lit.span(),
                format!(
                    "unknown placeholder `<{}>`: the function has no argument named `{}` ({known})",
                    p.root, p.root
                ),
            );
        }
    }
}

fn generate(
    f: &ItemFn,
    opts: &attr::Options,
    shape: &Shape,
    template: Option<&Template>,
) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = f;
    let krate = opts.krate();
    let name = &sig.ident;
    let name_str = name.to_string();
    let site_fn = format_ident!("__tiered_site_{}", name);
    let companion = format_ident!("invalidate_{}", name);
    let companion_all = format_ident!("invalidate_all_{}", name);
    // Inside an `impl` (told by `#[tiered_cache]` on it): `module::Type::name`.
    let self_type = opts.self_type.as_deref();
    let is_method = self_type.is_some();
    let qualified = match self_type {
        Some(ty) => format!("{ty}::{name_str}"),
        None => name_str.clone(),
    };
    let site_call = if is_method {
        quote!(Self::#site_fn())
    } else {
        quote!(#site_fn())
    };

    // The key's values, in placeholder order, and the arguments they use.
    let (values, used_args, uses_self, template_expr) = match template {
        Some(t) => {
            let mut values = Vec::new();
            let mut used = Vec::new();
            let mut uses_self = false;
            for p in &t.placeholders {
                let fields = p.fields.iter().map(|f| format_ident!("{}", f));
                if p.root == "self" {
                    uses_self = true;
                    values.push(quote!(#krate::private::key_arg(&self #(.#fields)*)));
                } else if let Some(arg) = shape.args.iter().find(|a| a.ident == p.root) {
                    let ident = &arg.ident;
                    // Spanned at the argument's type: "X doesn't implement Display" points there.
                    let span = arg.ty.span_of();
                    values.push(
                        quote_spanned!(span=> #krate::private::key_arg(&#ident #(.#fields)*)),
                    );
                    used.push(p.root.clone());
                }
            }
            let lit = opts.key.as_ref().map(|k| quote!(#k)).unwrap_or_default();
            (values, used, uses_self, lit)
        }
        None => {
            // Default key: the function's path (`module::Type::method` for methods, from
            // what the user wrote, never `std::any::type_name`) plus every argument.
            let mut values = Vec::new();
            let mut suffix = String::new();
            for a in &shape.args {
                let ident = &a.ident;
                let span = a.ty.span_of();
                values.push(quote_spanned!(span=> __tiered_default_key_arg(&#ident)));
                suffix.push_str(&format!(":<{ident}>"));
            }
            let used = shape.args.iter().map(|a| a.ident.to_string()).collect();
            (
                values,
                used,
                false,
                quote!(::core::concat!(::core::module_path!(), "::", #qualified, #suffix)),
            )
        }
    };

    // The return kind comes from the type itself (a `Result` or an `Option` behind an alias
    // included), by autoref specialization in the runtime; `returns = "…"` only declares it,
    // and a declaration that conflicts with the type is an error at the declaration.
    let ret = &shape.ret;
    let probe = quote_spanned! {shape.ret_span=> {
        #[allow(unused_imports)]
        use #krate::private::{
            OptionValue as _, PlainValue as _, ResultCloneErr as _, ResultErr as _,
            ResultFromErr as _,
        };
        #krate::private::cacheable((&&&&#krate::private::KindProbe::<#ret>::new()).kind())
    }};
    let declared = match opts.returns {
        None => probe,
        Some((Returns::Value, span)) => {
            quote_spanned!(span=> #krate::private::declared_value(#probe))
        }
        Some((Returns::Result, span)) => {
            quote_spanned!(span=> #krate::private::declared_result(#probe))
        }
        Some((Returns::Option, span)) => {
            quote_spanned!(span=> #krate::private::declared_option(#probe))
        }
    };
    // Negative caching turns the kind into the one that caches the `None` / `Err` too; a
    // return type it does not apply to is an error at the option's value.
    let kind = match opts.negative {
        None => declared,
        Some((Negative::None, _, span)) => {
            quote_spanned!(span=> #krate::private::negative_none(#declared))
        }
        Some((Negative::Err, _, span)) => {
            quote_spanned!(span=> #krate::private::negative_err(#declared))
        }
    };
    let negative_ttl = millis_of(opts.negative.map(|n| n.1));
    // Checked (and reported) before generation: here only the positional forms.
    let tags = positional_tags(opts, template, shape, &mut Errors::default());

    // The schema fingerprint's source: the return type as written (white space removed), so
    // it is the same for every build and toolchain.
    let schema = crate::item_impl::normalized(ret);
    let ttl_ms = opts.ttl_ms;
    let tiers = match opts.tiers {
        Tiers::L1 => quote!(L1),
        Tiers::L2 => quote!(L2),
        Tiers::Both => quote!(Both),
    };
    let (promote, version) = (opts.promote, opts.version);
    let jitter = match opts.jitter {
        Some(p) => quote!(::core::option::Option::Some(#p)),
        None => quote!(::core::option::Option::None),
    };
    let millis = millis_of;
    let fail_safe = millis(opts.fail_safe_ms);
    let soft_timeout = millis(opts.soft_timeout_ms.map(|t| t.0));
    let hard_timeout = millis(opts.hard_timeout_ms.map(|t| t.0));
    let refresh_ahead = match opts.refresh_ahead {
        Some((f, _)) => quote!(::core::option::Option::Some(#f)),
        None => quote!(::core::option::Option::None),
    };
    let background_writes = match opts.background_writes {
        Some(b) => quote!(::core::option::Option::Some(#b)),
        None => quote!(::core::option::Option::None),
    };
    let trace_keys = opts.trace_keys;
    // The body can outlive the call (finish in the background after a soft timeout, run a
    // refresh-ahead) when it owns everything it uses: a free function whose arguments hold no
    // reference or lifetime. Its future must then be `Send`.
    let detached =
        opts.detach && !is_method && !shape.args.iter().any(|a| signature::borrows(&a.ty));
    let run = if detached {
        quote!(run_detached)
    } else {
        quote!(run)
    };

    let companion_args = shape
        .args
        .iter()
        .filter(|a| used_args.contains(&a.ident.to_string()))
        .map(|a| {
            let (ident, ty) = (&a.ident, &a.ty);
            quote!(#ident: #ty)
        });
    let companion_self = uses_self.then(|| quote!(&self,));
    let generics = &sig.generics;
    let where_clause = &sig.generics.where_clause;
    let companion_doc = format!(
        "Invalidates the entry that `{name_str}` caches for these arguments: evicts it from this \
         instance's L1, deletes it in Redis and announces the invalidation so that every other \
         instance evicts it from its L1 (when Redis is configured). A computation of this entry \
         in flight anywhere stores nothing. The local eviction always happens; `Err` means the \
         remote part could not be done within `l2_timeout`, so other instances may serve the \
         old value until its TTL ends. Generated by `#[tiered_cache]`."
    );
    let companion_all_doc = format!(
        "Invalidates every entry that `{name_str}` caches, in every instance: increments the \
         function's generation in Redis (part of each of its keys, so no key scan is needed; \
         old keys expire with their TTL), drops this instance's L1 of the function and \
         announces the new generation to the others. Generated by `#[tiered_cache]`."
    );

    // Spanned at the return type, so that a value type that cannot be cached is reported
    // there rather than at the attribute.
    // For the default key, a checker local to this function whose error names its arguments
    // (a pool or a client passed as an argument is not `Display`: say how to leave it out).
    let key_checker = (template.is_none() && !shape.args.is_empty()).then(|| {
        let names = shape
            .args
            .iter()
            .map(|a| format!("`{}`", a.ident))
            .collect::<Vec<_>>()
            .join(", ");
        let example = shape.args.last().map_or(String::new(), |a| a.ident.to_string());
        let message = format!(
            "`{{Self}}` cannot be part of the default key of `{name_str}`: it does not implement `Display` (or is not `Sync`)"
        );
        let note = format!(
            "without `key = \"…\"` the key uses every argument ({names}); name the ones that identify the value, e.g. `#[tiered_cache(key = \"{name_str}:<{example}>\")]`"
        );
        quote! {
            #[diagnostic::on_unimplemented(
                message = #message,
                label = "the default key uses this argument",
                note = #note
            )]
            trait __TieredDefaultKeyArg: ::core::fmt::Display + ::core::marker::Sync {}
            impl<T: ::core::fmt::Display + ::core::marker::Sync + ?Sized> __TieredDefaultKeyArg for T {}
            fn __tiered_default_key_arg<T: __TieredDefaultKeyArg>(
                v: &T,
            ) -> #krate::private::ArgProbe<'_, T> {
                #krate::private::ArgProbe::new(v)
            }
        }
    });

    let ret_span = shape.ret_span;
    // The user's block keeps its own spans. The "fake return" (never taken) fixes the async
    // block's output to the declared return type before the block is checked, so that a type
    // error inside the body points at the user's expression ("expected `u64`, found `&str`"),
    // as it would without the attribute; the trick is tracing-attributes'.
    let body = quote_spanned! {ret_span=>
        #key_checker
        // Integers and strings reach the key without the `fmt` machinery (autoref picks
        // `ExactPart` for them, `AnyPart`, through `Display`, for anything else).
        let __tiered_prepared = {
            #[allow(unused_imports)]
            use #krate::private::{AnyPart as _, ExactPart as _};
            #krate::private::prepare_parts(#kind, #site_call, &[#((&&#values).key_part()),*])
        };
        #[allow(unused_imports)]
        use #krate::private::{NoTimeoutError as _, TimeoutError as _};
        __tiered_prepared
            .errors((&&#krate::private::ErrProbe::<#ret>::new()).timeout_error())
            .#run(move || async move {
                #[allow(
                    unreachable_code,
                    clippy::diverging_sub_expression,
                    clippy::empty_loop,
                    clippy::needless_return
                )]
                if false {
                    let __tiered_fake_return: #ret = loop {};
                    return __tiered_fake_return;
                }
                #block
            })
            .await
    };

    quote! {
        #(#attrs)*
        #vis #sig {
            #body
        }

        #[doc(hidden)]
        fn #site_fn() -> &'static #krate::Site {
            static __TIERED_SITE: #krate::Site = #krate::Site::with_schema(
                ::core::concat!(::core::module_path!(), "::", #qualified),
                #template_expr,
                #schema,
                #krate::SiteOptions {
                    ttl: ::core::time::Duration::from_millis(#ttl_ms),
                    tiers: #krate::Tiers::#tiers,
                    promote: #promote,
                    version: #version,
                    jitter: #jitter,
                    fail_safe: #fail_safe,
                    soft_timeout: #soft_timeout,
                    hard_timeout: #hard_timeout,
                    refresh_ahead: #refresh_ahead,
                    background_writes: #background_writes,
                    trace_keys: #trace_keys,
                    negative_ttl: #negative_ttl,
                    tags: &[#(#tags),*],
                },
            );
            &__TIERED_SITE
        }

        #[doc = #companion_doc]
        #vis async fn #companion #generics (#companion_self #(#companion_args),*)
            -> ::core::result::Result<(), #krate::Error> #where_clause
        {
            #key_checker
            #krate::Runtime::current().invalidate(#site_call, &[#(#values.as_dyn()),*]).await
        }

        #[doc = #companion_all_doc]
        #vis async fn #companion_all() -> ::core::result::Result<(), #krate::Error> {
            #krate::Runtime::current().invalidate_site(#site_call).await
        }
    }
}

/// `Some(Duration::from_millis(ms))` / `None` as tokens.
fn millis_of(ms: Option<u64>) -> TokenStream {
    match ms {
        Some(ms) => quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    }
}

/// The tag templates with each placeholder turned into the position of the same placeholder
/// in the key (`tenant:<tenant>` with the key `t:<tenant>:<id>` is `tenant:<0>`), the form the
/// runtime renders. A tag may use only the key's placeholders, so that the entry under one key
/// always carries the same tags; anything else is an error at the tag.
fn positional_tags(
    opts: &attr::Options,
    template: Option<&Template>,
    shape: &Shape,
    errors: &mut Errors,
) -> Vec<String> {
    let Some((tags, _)) = &opts.tags else {
        return Vec::new();
    };
    // The key's placeholders as written (`user.id`), in order: the template's, or every
    // argument for the default key.
    let key: Vec<String> = match template {
        Some(t) => t
            .placeholders
            .iter()
            .map(|p| {
                std::iter::once(p.root.as_str())
                    .chain(p.fields.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect(),
        None => shape.args.iter().map(|a| a.ident.to_string()).collect(),
    };
    let mut out = Vec::new();
    for lit in tags {
        let text = lit.value();
        if text.is_empty() {
            errors.at(lit.span(), "a tag template is empty");
            continue;
        }
        let mut positional = String::new();
        let mut rest = text.as_str();
        let mut ok = true;
        while let Some(open) = rest.find('<') {
            positional.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('>') else {
                errors.at(
                    lit.span(),
                    format!("unterminated placeholder `<{after}` in a tag: add `>`"),
                );
                ok = false;
                break;
            };
            let name: String = after[..close]
                .split('.')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(".");
            match key.iter().position(|k| *k == name) {
                Some(i) => positional.push_str(&format!("<{i}>")),
                None => {
                    errors.at(
                        lit.span(),
                        format!(
                            "the tag's placeholder `<{name}>` is not one of the key's ({}): a tag may use only the key's placeholders, so that the entry under one key always carries the same tags",
                            key.iter().map(|k| format!("`<{k}>`")).collect::<Vec<_>>().join(", ")
                        ),
                    );
                    ok = false;
                }
            }
            rest = &after[close + 1..];
        }
        positional.push_str(rest);
        if ok {
            out.push(positional);
        }
    }
    out
}
