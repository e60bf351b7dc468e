//! The attribute's options, parsed into a typed struct.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitStr, MetaNameValue, Token};

use crate::errors::Errors;

/// Which tiers the function uses.
#[derive(Clone, Copy)]
pub(crate) enum Tiers {
    L1,
    L2,
    Both,
}

/// The return kind, when given explicitly (`returns = "…"`).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Returns {
    Result,
    Option,
    Value,
}

/// What `cache_none` / `cache_err` caches besides values.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Negative {
    /// `cache_none`: a `None`.
    None,
    /// `cache_err`: an `Err`.
    Err,
}

pub(crate) struct Options {
    pub(crate) key: Option<LitStr>,
    pub(crate) ttl_ms: u64,
    pub(crate) promote: u32,
    pub(crate) tiers: Tiers,
    pub(crate) version: u32,
    /// `jitter = "10%"`: percent of the TTL an entry's lifetime is shortened by, at random.
    pub(crate) jitter: Option<u8>,
    /// `fail_safe = "10m"`, in ms.
    pub(crate) fail_safe_ms: Option<u64>,
    /// `soft_timeout = "50ms"`, in ms (with its span, for errors).
    pub(crate) soft_timeout_ms: Option<(u64, Span)>,
    /// `hard_timeout = "2s"`, in ms.
    pub(crate) hard_timeout_ms: Option<(u64, Span)>,
    /// `refresh_ahead = 0.8`.
    pub(crate) refresh_ahead: Option<(f32, Span)>,
    /// `background_writes = true`.
    pub(crate) background_writes: Option<bool>,
    /// `detach = false`: the body always runs inside the caller's future.
    pub(crate) detach: bool,
    /// `trace_keys = true`: the key on the call's span.
    pub(crate) trace_keys: bool,
    pub(crate) returns: Option<(Returns, Span)>,
    /// `cache_none = "30s"` / `cache_err = "5s"`: negative answers cached for that long (ms).
    pub(crate) negative: Option<(Negative, u64, Span)>,
    /// `tags = ["tenant:<tenant>", …]`: the tag templates as written, and the option's span.
    pub(crate) tags: Option<(Vec<LitStr>, Span)>,
    /// The `Self` type as written, passed down by `#[tiered_cache]` on the enclosing `impl`.
    pub(crate) self_type: Option<String>,
    /// The path of the `tiered` crate (`crate = "…"`), for a renamed dependency.
    pub(crate) krate: Option<syn::Path>,
}

impl Options {
    /// `::tiered`, or the path given with `crate = "…"` (a renamed dependency).
    pub(crate) fn krate(&self) -> syn::Path {
        self.krate
            .clone()
            .unwrap_or_else(|| syn::parse_quote!(::tiered))
    }
}

const KNOWN: &str = "`key`, `strategy`, `ttl`, `promote`, `tiers`, `version`, `jitter`, `fail_safe`, `soft_timeout`, `hard_timeout`, `refresh_ahead`, `background_writes`, `detach`, `trace_keys`, `cache_none`, `cache_err`, `tags`, `returns`, `crate`";

/// Tags a function may declare (the runtime's `codec::MAX_TAGS`).
pub(crate) const MAX_TAGS: usize = 4;
const STRATEGIES: &[(&str, u64)] = &[
    ("RealTime", 10_000),
    ("ShortTerm", 300_000),
    ("MediumTerm", 3_600_000),
    ("LongTerm", 10_800_000),
    ("Default", 300_000),
];

pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> Options {
    let mut o = Options {
        key: None,
        ttl_ms: 300_000,
        promote: 0,
        tiers: Tiers::Both,
        version: 0,
        jitter: None,
        fail_safe_ms: None,
        soft_timeout_ms: None,
        hard_timeout_ms: None,
        refresh_ahead: None,
        background_writes: None,
        detach: true,
        trace_keys: false,
        returns: None,
        negative: None,
        tags: None,
        self_type: None,
        krate: None,
    };
    let metas = match Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(args) {
        Ok(m) => m,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!("expected `option = value` pairs separated by commas ({KNOWN})"),
            ));
            return o;
        }
    };
    let mut seen: Vec<String> = Vec::new();
    let mut ttl_from: Option<&'static str> = None;
    for m in metas {
        let span = m.path.span_of();
        let Some(name) = m.path.get_ident().map(|i| i.to_string()) else {
            errors.at(span, format!("unknown option; expected one of {KNOWN}"));
            continue;
        };
        if seen.contains(&name) {
            errors.at(span, format!("duplicate option `{name}`"));
            continue;
        }
        seen.push(name.clone());
        match name.as_str() {
            "key" => o.key = string(&m.value, "key", errors),
            "strategy" | "ttl" => {
                if let Some(other) = ttl_from {
                    errors.at(
                        span,
                        format!("`{name}` and `{other}` are exclusive: give one TTL"),
                    );
                    continue;
                }
                ttl_from = Some(if name == "ttl" { "ttl" } else { "strategy" });
                let Some(lit) = string(&m.value, ttl_from.unwrap_or("ttl"), errors) else {
                    continue;
                };
                let parsed = if name == "ttl" {
                    parse_ttl(&lit.value())
                } else {
                    STRATEGIES
                        .iter()
                        .find(|(s, _)| *s == lit.value())
                        .map(|(_, ms)| *ms)
                        .ok_or_else(|| {
                            format!(
                                "unknown strategy {:?}; expected RealTime (10 s), ShortTerm (5 min), MediumTerm (1 h), LongTerm (3 h) or Default (5 min)",
                                lit.value()
                            )
                        })
                };
                match parsed {
                    Ok(ms) => o.ttl_ms = ms,
                    Err(msg) => errors.at(lit.span(), msg),
                }
            }
            "promote" => {
                if let Some(n) = int(&m.value, "promote", errors) {
                    if n == 0 {
                        errors.at(
                            m.value.span_of(),
                            "`promote` must be at least 1 (1 = always promote)",
                        );
                    } else {
                        o.promote = n;
                    }
                }
            }
            "version" => {
                if let Some(n) = int(&m.value, "version", errors) {
                    o.version = n;
                }
            }
            "jitter" => {
                if let Some(lit) = string(&m.value, "jitter", errors) {
                    match parse_jitter(&lit.value()) {
                        Some(p) => o.jitter = Some(p),
                        None => errors.at(
                            lit.span(),
                            format!(
                                "`jitter` takes a percentage of the TTL from \"0%\" to \"100%\", e.g. \"10%\"; {:?} is not one",
                                lit.value()
                            ),
                        ),
                    }
                }
            }
            "fail_safe" | "soft_timeout" | "hard_timeout" => {
                if let Some(lit) = string(&m.value, &name, errors) {
                    match parse_ttl(&lit.value()) {
                        Ok(ms) => match name.as_str() {
                            "fail_safe" => o.fail_safe_ms = Some(ms),
                            "soft_timeout" => o.soft_timeout_ms = Some((ms, lit.span())),
                            _ => o.hard_timeout_ms = Some((ms, lit.span())),
                        },
                        Err(msg) => errors.at(lit.span(), msg.replacen("ttl", &name, 1)),
                    }
                }
            }
            "tags" => match &m.value {
                Expr::Array(array) => {
                    let mut tags = Vec::new();
                    for elem in &array.elems {
                        match lit(elem) {
                            Some(Lit::Str(s)) => tags.push(s.clone()),
                            _ => errors.at(
                                elem.span_of(),
                                "a tag is a string literal, a template like the key's: `\"tenant:<tenant>\"`",
                            ),
                        }
                    }
                    if tags.len() > MAX_TAGS {
                        errors.at(
                            m.value.span_of(),
                            format!("at most {MAX_TAGS} tags per function"),
                        );
                    }
                    o.tags = Some((tags, span));
                }
                _ => errors.at(
                    m.value.span_of(),
                    "`tags` takes an array of string literals, e.g. `tags = [\"tenant:<tenant>\"]`",
                ),
            },
            "cache_none" | "cache_err" => {
                if let Some(lit) = string(&m.value, &name, errors) {
                    let which = if name == "cache_none" {
                        Negative::None
                    } else {
                        Negative::Err
                    };
                    match parse_ttl(&lit.value()) {
                        Ok(_) if o.negative.is_some() => errors.at(
                            span,
                            "`cache_none` and `cache_err` exclude each other: `cache_none` is for a function that returns an `Option`, `cache_err` for one that returns a `Result`",
                        ),
                        Ok(ms) => o.negative = Some((which, ms, lit.span())),
                        Err(msg) => errors.at(lit.span(), msg.replacen("ttl", &name, 1)),
                    }
                }
            }
            "refresh_ahead" => match lit(&m.value) {
                Some(Lit::Float(f)) => match f.base10_parse::<f32>() {
                    Ok(x) if x > 0.0 && x < 1.0 => o.refresh_ahead = Some((x, f.span())),
                    _ => errors.at(
                        f.span(),
                        "`refresh_ahead` is the fraction of the TTL after which a hit starts a refresh: a number between 0 and 1, e.g. 0.8",
                    ),
                },
                _ => errors.at(
                    m.value.span_of(),
                    "`refresh_ahead` takes a number between 0 and 1, e.g. `refresh_ahead = 0.8`",
                ),
            },
            "background_writes" | "detach" | "trace_keys" => match lit(&m.value) {
                Some(Lit::Bool(b)) => match name.as_str() {
                    "detach" => o.detach = b.value,
                    "trace_keys" => o.trace_keys = b.value,
                    _ => o.background_writes = Some(b.value),
                },
                _ => errors.at(
                    m.value.span_of(),
                    format!("`{name}` takes `true` or `false`"),
                ),
            },
            "tiers" => {
                if let Some(lit) = string(&m.value, "tiers", errors) {
                    match lit.value().as_str() {
                        "l1" => o.tiers = Tiers::L1,
                        "l2" => o.tiers = Tiers::L2,
                        "both" => o.tiers = Tiers::Both,
                        other => errors.at(
                            lit.span(),
                            format!("unknown tiers {other:?}; expected \"l1\", \"l2\" or \"both\""),
                        ),
                    }
                }
            }
            "crate" => {
                if let Some(lit) = string(&m.value, "crate", errors) {
                    match lit.parse::<syn::Path>() {
                        Ok(path) => o.krate = Some(path),
                        Err(_) => errors.at(
                            lit.span(),
                            format!(
                                "`crate` takes the path of the tiered crate, e.g. \"::tiered\" or \"my_renamed_tiered\"; {:?} is not a path",
                                lit.value()
                            ),
                        ),
                    }
                }
            }
            "returns" => {
                if let Some(lit) = string(&m.value, "returns", errors) {
                    match lit.value().as_str() {
                        "result" => o.returns = Some((Returns::Result, lit.span())),
                        "option" => o.returns = Some((Returns::Option, lit.span())),
                        "value" => o.returns = Some((Returns::Value, lit.span())),
                        other => errors.at(
                            lit.span(),
                            format!("unknown return kind {other:?}; expected \"result\", \"option\" or \"value\""),
                        ),
                    }
                }
            }
            // Written by `#[tiered_cache]` on the enclosing `impl` block, never by users.
            "__self_type" => {
                if let Some(lit) = string(&m.value, "__self_type", errors) {
                    o.self_type = Some(lit.value());
                }
            }
            other => errors.at(
                span,
                format!("unknown option `{other}`; expected one of {KNOWN}"),
            ),
        }
    }
    if let (Some((soft, _)), Some((hard, span))) = (o.soft_timeout_ms, o.hard_timeout_ms)
        && hard < soft
    {
        errors.at(
            span,
            "`hard_timeout` must not be shorter than `soft_timeout`",
        );
    }
    o
}

/// `90s`, `500ms`, `5m`, `2h`, `1d`.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid ttl {s:?}: expected a positive whole number and a unit: ms, s, m, h or d (e.g. \"90s\")"
        )
    };
    let digits = s.trim().chars().take_while(char::is_ascii_digit).count();
    let (n, unit) = s.trim().split_at(digits);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(factor) {
        Some(0) => Err(format!("invalid ttl {s:?}: must be greater than zero")),
        Some(ms) => Ok(ms),
        None => Err(bad()),
    }
}

fn lit(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        _ => None,
    }
}

fn string(value: &Expr, name: &str, errors: &mut Errors) -> Option<LitStr> {
    match lit(value) {
        Some(Lit::Str(s)) => Some(s.clone()),
        _ => {
            errors.at(value.span_of(), format!("`{name}` takes a string literal"));
            None
        }
    }
}

/// `"10%"` → 10; whole percentages from 0 to 100.
fn parse_jitter(text: &str) -> Option<u8> {
    let digits = text.trim().strip_suffix('%')?.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u8>().ok().filter(|p| *p <= 100)
}

fn int(value: &Expr, name: &str, errors: &mut Errors) -> Option<u32> {
    match lit(value) {
        Some(Lit::Int(i)) => match i.base10_parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                errors.at(i.span(), format!("`{name}` must fit in a u32"));
                None
            }
        },
        _ => {
            errors.at(
                value.span_of(),
                format!("`{name}` takes an integer literal"),
            );
            None
        }
    }
}

/// The span of a whole syntax node (first to last token).
pub(crate) trait SpanOf {
    fn span_of(&self) -> Span;
}

impl<T: quote::ToTokens> SpanOf for T {
    fn span_of(&self) -> Span {
        let mut tokens = self.to_token_stream().into_iter();
        let first = tokens.next().map(|t| t.span());
        let last = tokens.last().map(|t| t.span());
        match (first, last) {
            (Some(f), Some(l)) => f.join(l).unwrap_or(f),
            (Some(f), None) => f,
            _ => Span::call_site(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90s"), Ok(90_000));
        assert_eq!(parse_ttl("500ms"), Ok(500));
        assert_eq!(parse_ttl("5m"), Ok(300_000));
        assert_eq!(parse_ttl("2h"), Ok(7_200_000));
        assert_eq!(parse_ttl("1d"), Ok(86_400_000));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("s").is_err());
        assert!(parse_ttl("10 parsecs").is_err());
        assert!(parse_ttl("-1s").is_err());
    }
}
