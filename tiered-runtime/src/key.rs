//! Key templates and the injective, inert rendering of argument values into Redis keys.
//!
//! A template such as `user:<id>` is literal text and `<placeholder>`s. The rendered key
//! mirrors it: `{namespace}:` then the literal text, with every value written with `Display`,
//! percent-encoded and put between `<` and `>`: `user:<id>` with `id = 42` in namespace `shop`
//! is `shop:user:<42>`.
//!
//! * **Injective across templates.** Values encode `%`, `<` and `>` (and more, below); literal
//!   text encodes `%` and `>` (it cannot hold `<`). So the `<`…`>` pairs of a key mark exactly
//!   where each value starts and ends, and a key can be read back into the template's literal
//!   text and the values. Two different `(template, values)` pairs of one namespace never render
//!   the same key, whatever the templates (`tenant:<t>` with `t = "x.y"` is
//!   `ns:tenant:<x.y>`, `tenant:<t>.y` with `t = "x"` is `ns:tenant:<x>.y`). Templates that
//!   differ only in their placeholders' names have the same *shape* ([`Template::shape`]) and
//!   render the same keys: the runtime reports two sites sharing a shape.
//! * **Inert.** The value escape set is fixed: `%`, `:`, `<`, `>`, the glob characters `*`,
//!   `?`, `[`, `]`, `\`, the hash-tag braces `{`, `}`, and control characters. User input can
//!   never widen a `SCAN` pattern, choose a Redis Cluster slot, or add a level to the `:` tree
//!   Redis tools display.
//! * **Apart from the runtime's own keys.** Every `%` in a rendered key is followed by two
//!   upper-case hex digits (or, in a digested long key, by its `#`), so the runtime keeps its
//!   own state under `{namespace}:%~…`, where no rendered key can land.
//!
//! Keys longer than [`MAX_KEY_BYTES`] keep a readable prefix followed by `#` and the SHA-256
//! of the whole key (hex): stable across builds and toolchains. A digested key is always
//! longer than [`MAX_KEY_BYTES`] while a plain key never is, so the two forms cannot collide.

use std::fmt::{self, Display, Write as _};

use std::hash::Hasher as _;

use sha2::{Digest as _, Sha256};
use siphasher::sip128::{Hasher128 as _, SipHasher13};

/// Keys up to this many bytes are used as they are; longer ones are digested.
pub const MAX_KEY_BYTES: usize = 1024;
/// Bytes of a long key kept as its readable prefix (cut at a character boundary).
const DIGEST_PREFIX_BYTES: usize = 1000;

/// ASCII characters encoded in every value (control characters are added below).
const VALUE_ESCAPED: &[u8] = b"%:<>*?[]\\{}";

/// Bit `b` set: ASCII byte `b` is encoded in values.
const VALUE_MASK: u128 = {
    let mut mask = 0u128;
    let mut i = 0;
    while i < VALUE_ESCAPED.len() {
        mask |= 1 << VALUE_ESCAPED[i];
        i += 1;
    }
    let mut b = 0;
    while b < 0x20 {
        mask |= 1 << b;
        b += 1;
    }
    mask | 1 << 0x7f
};

/// `PLAIN[b]`: byte `b` is written into a value as it is (ASCII outside the escape set; bytes
/// of multi-byte characters are not plain, they take the per-character path).
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x80 {
        t[b] = VALUE_MASK & (1 << b) == 0;
        b += 1;
    }
    t
};

/// The Redis key of the runtime's own state `name` in `namespace`: `{namespace}:%~{name}`.
/// No rendered key can be equal to it (see the module docs).
pub(crate) fn internal(namespace: &str, name: &str) -> String {
    format!("{namespace}:%~{name}")
}

/// A rendered key: `{namespace}:{template with encoded values}`, digested when long (and,
/// for a function with tags, the entry's rendered tags).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String, Vec<String>);

impl Key {
    /// The key as stored in L1 and Redis.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_rendered(mut s: String) -> Key {
        if s.len() > MAX_KEY_BYTES {
            let digest = Sha256::digest(s.as_bytes());
            let mut cut = DIGEST_PREFIX_BYTES;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.reserve(65);
            s.push('#');
            for b in digest.iter() {
                let _ = write!(s, "{b:02x}");
            }
        }
        Key(s, Vec::new())
    }

    /// The same key carrying the entry's rendered tags.
    pub(crate) fn with_tags(mut self, tags: Vec<String>) -> Key {
        self.1 = tags;
        self
    }

    /// The entry's rendered tags (none for a function without tags).
    pub(crate) fn tags(&self) -> &[String] {
        &self.1
    }

    #[cfg(test)]
    fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A malformed key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub &'static str);

impl Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Literal text, already encoded for the key.
    Literal(String),
    Value,
}

/// A key template compiled once into its segments.
#[derive(Debug, Clone)]
pub struct Template {
    segments: Vec<Segment>,
    /// The literal text around the values, delimiters included: `joints[0]` comes before
    /// the first value, `joints[i + 1]` after value `i` (`user:<id>` is `user:<`, `>`), so
    /// that writing a key is one piece per value and one per joint.
    joints: Vec<String>,
    placeholders: usize,
    literal_len: usize,
}

impl Template {
    /// Parses `user:<id>` style templates. Placeholders are `<…>` with a non-empty name; two
    /// placeholders must be separated by literal text; the template must not be empty.
    pub fn parse(template: &str) -> Result<Template, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError("the key template is empty"));
        }
        let mut segments = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('<') {
                Some(0) => {
                    let end = rest
                        .find('>')
                        .ok_or(TemplateError("unterminated `<` placeholder"))?;
                    let name = &rest[1..end];
                    if name.trim().is_empty() {
                        return Err(TemplateError("empty `<>` placeholder"));
                    }
                    if name.contains('<') {
                        return Err(TemplateError("unterminated `<` placeholder"));
                    }
                    if segments.last() == Some(&Segment::Value) {
                        return Err(TemplateError(
                            "two placeholders must be separated by literal text",
                        ));
                    }
                    segments.push(Segment::Value);
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let text = &rest[..end];
                    // `%` and `>` are encoded so that the value delimiters stay unambiguous.
                    let encoded = text.replace('%', "%25").replace('>', "%3E");
                    segments.push(Segment::Literal(encoded));
                    rest = &rest[end..];
                }
            }
        }
        let literal_len = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(t) => t.len(),
                Segment::Value => 2,
            })
            .sum();
        let placeholders = segments.iter().filter(|s| **s == Segment::Value).count();
        let mut joints = vec![String::new()];
        for seg in &segments {
            let last = joints.len() - 1;
            match seg {
                Segment::Literal(text) => joints[last].push_str(text),
                Segment::Value => {
                    joints[last].push('<');
                    joints.push(">".to_owned());
                }
            }
        }
        Ok(Template {
            joints,
            segments,
            placeholders,
            literal_len,
        })
    }

    /// Number of `<placeholder>`s, i.e. of values [`render`](Self::render) expects.
    pub fn placeholders(&self) -> usize {
        self.placeholders
    }

    /// The template with its placeholders' names left out (`user:<>`): two templates of the
    /// same shape render the same keys for the same values; different shapes never do.
    pub fn shape(&self) -> String {
        let mut out = String::with_capacity(self.literal_len);
        for seg in &self.segments {
            match seg {
                Segment::Literal(text) => out.push_str(text),
                Segment::Value => out.push_str("<>"),
            }
        }
        out
    }

    /// Renders `{namespace}:{template}` with `values` in placeholder order, or `None` when the
    /// number of values differs from the number of placeholders.
    pub fn render(&self, namespace: &str, values: &[&(dyn Display + Sync)]) -> Option<Key> {
        self.render_args(namespace, values)
    }

    /// [`render`](Self::render) for any form of the values.
    pub(crate) fn render_args<A: Args + ?Sized>(&self, namespace: &str, values: &A) -> Option<Key> {
        if values.count() != self.placeholders {
            return None;
        }
        let mut out =
            String::with_capacity(namespace.len() + 1 + self.literal_len + 8 * values.count());
        out.push_str(namespace);
        out.push(':');
        self.write_into(&mut out, values);
        Some(Key::from_rendered(out))
    }

    /// The L1 key ([`Digest`]) of the key `values` render, computed without rendering it: the
    /// bytes [`render`](Self::render) would write are streamed into the digest. `None` when
    /// the arity is wrong; [`Digested::Long`] when the key is longer than [`MAX_KEY_BYTES`]
    /// (its Redis form is digested: render it and use [`Digester::of`]).
    #[inline]
    pub(crate) fn digest<A: Args + ?Sized>(
        &self,
        digester: &Digester,
        values: &A,
    ) -> Option<Digested> {
        if values.count() != self.placeholders {
            return None;
        }
        let mut sink = Hashing::new(digester);
        self.write_into(&mut sink, values);
        Some(if sink.len > MAX_KEY_BYTES {
            Digested::Long
        } else {
            Digested::Short(Digest(sink.finish()))
        })
    }

    /// Writes the template's part of the key (everything after `{namespace}:`).
    #[inline]
    fn write_into<S: Sink, A: Args + ?Sized>(&self, out: &mut S, values: &A) {
        let mut joints = self.joints.iter();
        if let Some(first) = joints.next() {
            out.put(first);
        }
        for (i, joint) in joints.enumerate() {
            values.write_value(i, out);
            out.put(joint);
        }
    }
}

/// The L1 key of a rendered key: 128 bits of SipHash-1-3 over the key's bytes, keyed with a
/// random secret per runtime. Computed from the arguments on every call without building the
/// key string ([`Template::digest`]), and from the key string an invalidation carries
/// ([`Digester::of`]): the two agree because both hash the same bytes. The secret makes
/// collisions unforgeable (whoever chooses arguments cannot aim two keys at one L1 entry
/// without knowing it), and two distinct keys collide by chance with probability 2⁻¹²⁸.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Digest(pub(crate) u128);

/// Outcome of [`Template::digest`].
pub(crate) enum Digested {
    /// The L1 key.
    Short(Digest),
    /// The key is too long for its Redis form to be itself: render it.
    Long,
}

/// Computes [`Digest`]s for one runtime: its secret and namespace.
#[derive(Debug, Clone)]
pub(crate) struct Digester {
    keyed: SipHasher13,
    /// `keyed` after `{namespace}:`.
    base: SipHasher13,
    base_len: usize,
}

impl Digester {
    pub(crate) fn new(namespace: &str) -> Digester {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new();
        let keyed = SipHasher13::new_with_keys(random.hash_one(0u8), random.hash_one(1u8));
        let mut base = keyed;
        base.write(namespace.as_bytes());
        base.write(b":");
        Digester {
            keyed,
            base,
            base_len: namespace.len() + 1,
        }
    }

    /// The digest of a key string (as rendered, or as carried by an invalidation).
    pub(crate) fn of(&self, key: &str) -> Digest {
        let mut h = self.keyed;
        h.write(key.as_bytes());
        Digest(h.finish128().as_u128())
    }
}

/// One value of a key as generated code passes it: integers and strings are written without
/// the `fmt` machinery, with the same bytes as their `Display` output; anything else through
/// `Display`. (Not a stable API: the macro's.)
#[doc(hidden)]
#[derive(Clone, Copy)]
pub enum KeyPart<'a> {
    /// An unsigned integer.
    Unsigned(u64),
    /// A signed integer.
    Signed(i64),
    /// A string.
    Str(&'a str),
    /// Anything else.
    Display(&'a (dyn Display + Sync)),
}

/// The values of a key, in placeholder order: `&dyn Display`s or [`KeyPart`]s.
pub(crate) trait Args {
    fn count(&self) -> usize;
    /// Writes value `i`, escaped.
    fn write_value<S: Sink>(&self, i: usize, out: &mut S);
    /// Writes value `i` as its `Display` writes it (a tag's value: not escaped).
    fn write_plain(&self, i: usize, out: &mut String);
}

impl Args for [&(dyn Display + Sync)] {
    fn count(&self) -> usize {
        self.len()
    }
    fn write_plain(&self, i: usize, out: &mut String) {
        if let Some(v) = self.get(i) {
            let _ = write!(out, "{v}");
        }
    }
    #[inline]
    fn write_value<S: Sink>(&self, i: usize, out: &mut S) {
        if let Some(v) = self.get(i) {
            let _ = write!(Escaper { out }, "{v}");
        }
    }
}

impl Args for [KeyPart<'_>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn write_plain(&self, i: usize, out: &mut String) {
        let _ = match self.get(i) {
            Some(KeyPart::Unsigned(n)) => write!(out, "{n}"),
            Some(KeyPart::Signed(n)) => write!(out, "{n}"),
            Some(KeyPart::Str(s)) => write!(out, "{s}"),
            Some(KeyPart::Display(v)) => write!(out, "{v}"),
            None => Ok(()),
        };
    }
    #[inline]
    fn write_value<S: Sink>(&self, i: usize, out: &mut S) {
        match self.get(i) {
            // Digits and `-` are never escaped.
            Some(KeyPart::Unsigned(n)) => out.put_ascii(Digits::new(*n).as_bytes()),
            Some(KeyPart::Signed(n)) => {
                if *n < 0 {
                    out.put_ascii(b"-");
                }
                out.put_ascii(Digits::new(n.unsigned_abs()).as_bytes());
            }
            Some(KeyPart::Str(s)) => {
                let _ = fmt::Write::write_str(&mut Escaper { out }, s);
            }
            Some(KeyPart::Display(v)) => {
                let _ = write!(Escaper { out }, "{v}");
            }
            None => {}
        }
    }
}

/// The decimal digits of a `u64`, as `Display` writes them.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    #[inline]
    fn new(mut n: u64) -> Digits {
        let mut buf = [b'0'; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Digits { buf, start }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Where a key's bytes go: a `String`, or a digest.
pub(crate) trait Sink {
    fn put(&mut self, s: &str);
    /// ASCII bytes (digits, escapes).
    fn put_ascii(&mut self, b: &[u8]);
}

impl Sink for String {
    #[inline]
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
    #[inline]
    fn put_ascii(&mut self, b: &[u8]) {
        self.extend(b.iter().map(|&b| char::from(b)));
    }
}

/// Streams key bytes into the digest through a stack buffer: the hasher is fed in large
/// pieces (SipHash's per-call cost dominates for the short pieces a key is made of). The
/// digest does not depend on how the bytes are cut.
struct Hashing {
    hasher: SipHasher13,
    len: usize,
    buf: [u8; HASH_BUF],
    used: usize,
}

const HASH_BUF: usize = 64;

impl Hashing {
    #[inline(always)]
    fn new(digester: &Digester) -> Hashing {
        Hashing {
            hasher: digester.base,
            len: digester.base_len,
            buf: [0; HASH_BUF],
            used: 0,
        }
    }

    #[inline(always)]
    fn finish(&mut self) -> u128 {
        self.hasher.write(&self.buf[..self.used]);
        self.hasher.finish128().as_u128()
    }
}

impl Sink for Hashing {
    #[inline]
    fn put(&mut self, s: &str) {
        self.put_ascii(s.as_bytes());
    }
    #[inline]
    fn put_ascii(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        if self.used + bytes.len() > HASH_BUF {
            self.hasher.write(&self.buf[..self.used]);
            self.used = 0;
            if bytes.len() > HASH_BUF {
                self.hasher.write(bytes);
                return;
            }
        }
        // Byte by byte: the pieces are a few bytes long, shorter than a `memcpy` call costs.
        for (slot, b) in self.buf[self.used..].iter_mut().zip(bytes) {
            *slot = *b;
        }
        self.used += bytes.len();
    }
}

fn must_escape(c: char) -> bool {
    if c.is_ascii() {
        VALUE_MASK & (1 << (c as u32)) != 0
    } else {
        c.is_control()
    }
}

/// Writes `Display` output into the key, percent-encoding the value escape set.
struct Escaper<'a, S: Sink + ?Sized> {
    out: &'a mut S,
}

impl<S: Sink + ?Sized> fmt::Write for Escaper<'_, S> {
    #[inline]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Fast path, one pass over the bytes: plain ASCII with nothing to encode.
        if s.bytes().all(|b| PLAIN[usize::from(b)]) {
            self.out.put(s);
            return Ok(());
        }
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for c in s.chars() {
            let mut buf = [0u8; 4];
            let bytes = c.encode_utf8(&mut buf);
            if must_escape(c) {
                for b in bytes.bytes() {
                    self.out
                        .put_ascii(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
                }
            } else {
                self.out.put(bytes);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, v: &[&(dyn Display + Sync)]) -> String {
        Template::parse(t)
            .ok()
            .and_then(|t| t.render("ns", v))
            .map(Key::into_string)
            .unwrap_or_default()
    }

    #[test]
    fn renders_namespace_and_values() {
        assert_eq!(render("user:<id>", &[&42]), "ns:user:<42>");
        assert_eq!(render("<a>-<b>", &[&"x-y", &"z"]), "ns:<x-y>-<z>");
        assert_eq!(
            render("q:<q>", &[&"a*b?[c]\\{d}%e:f<g>"]),
            "ns:q:<a%2Ab%3F%5Bc%5D%5C%7Bd%7D%25e%3Af%3Cg%3E>"
        );
        assert_eq!(
            render("q:<q>", &[&"line\nbreak\u{0}"]),
            "ns:q:<line%0Abreak%00>"
        );
        assert_eq!(render("é<q>é", &[&"aéb"]), "ns:é<aéb>é");
        assert_eq!(
            render("100%>x:<t>", &[&"umbrella"]),
            "ns:100%25%3Ex:<umbrella>"
        );
        assert_eq!(render("static", &[]), "ns:static");
    }

    #[test]
    fn separator_and_template_tricks_do_not_collide() {
        assert_ne!(
            render("<a>:<b>", &[&"a:b", &"c"]),
            render("<a>:<b>", &[&"a", &"b:c"])
        );
        assert_ne!(
            render("<a>/<b>", &[&"", &"x"]),
            render("<a>/<b>", &[&"x", &""])
        );
        assert_ne!(
            render("tenant:<t>", &[&"x.y"]),
            render("tenant:<t>.y", &[&"x"])
        );
        assert_ne!(render("a<x>", &[&"bc"]), render("ab<x>", &[&"c"]));
        assert_ne!(render("user:42", &[]), render("user:<id>", &[&42]));
    }

    #[test]
    fn shapes_ignore_placeholder_names() {
        let shape = |t: &str| Template::parse(t).map(|t| t.shape()).unwrap_or_default();
        assert_eq!(shape("user:<id>"), shape("user:<uid>"));
        assert_ne!(shape("user:<id>"), shape("user:<id>:x"));
    }

    #[test]
    fn internal_keys_are_out_of_reach() {
        let gen_key = internal("ns", "gen");
        for v in ["%~gen", "~gen", "%", "ns:%~gen", ""] {
            for t in ["<v>", "%~<v>", "%<v>", "%~gen<v>", "x<v>"] {
                assert_ne!(render(t, &[&v]), gen_key, "{t} with {v:?}");
            }
        }
        assert_ne!(render("%~gen", &[]), gen_key);
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in ["", "<a><b>", "x<a", "x<>", "<a<b>"] {
            assert!(Template::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Template::parse("static").is_ok());
    }

    #[test]
    fn wrong_arity_renders_nothing() {
        let t = Template::parse("a:<x>:<y>").map_err(|e| e.0);
        assert_eq!(
            t.as_ref().map(|t| t.render("ns", &[&1]).is_none()),
            Ok(true)
        );
    }

    fn dyns<'a>(v: &'a [&'a (dyn Display + Sync)]) -> &'a [&'a (dyn Display + Sync)] {
        v
    }

    /// The L1 key streamed from the arguments is the digest of the rendered key, for every
    /// kind of value (escapes, multi-byte characters, `Display` impls that write in pieces),
    /// and a long key is reported as such.
    #[test]
    fn streamed_digests_equal_digests_of_the_rendered_key() {
        struct Pieces;
        impl Display for Pieces {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a")?;
                f.write_str("<b:")?;
                let (n, s) = (7, "é*");
                write!(f, "{n}-{s}")
            }
        }
        let d = Digester::new("ns");
        let other = Digester::new("ns");
        let cases: Vec<(&str, Vec<&(dyn Display + Sync)>)> = vec![
            ("user:<id>", vec![&42u64]),
            ("q:<q>", vec![&"a*b?[c]\\{d}%e:f<g>\n\u{0}"]),
            ("é<q>é", vec![&"aéb"]),
            ("100%>x:<t>", vec![&"umbrella"]),
            ("<a>-<b>", vec![&Pieces, &""]),
            ("static", vec![]),
        ];
        for (t, v) in &cases {
            let t = Template::parse(t).map_err(|e| e.0);
            let Ok(t) = t else { panic!("{t:?}") };
            let key = t.render("ns", v).map(Key::into_string).unwrap_or_default();
            match t.digest(&d, &v[..]) {
                Some(Digested::Short(digest)) => {
                    assert_eq!(digest, d.of(&key), "{key}");
                    assert_ne!(digest, other.of(&key), "keyed per runtime");
                }
                _ => panic!("{key} should have a short digest"),
            }
        }
        let long = "v".repeat(MAX_KEY_BYTES);
        let t = Template::parse("k:<v>").map_err(|e| e.0);
        let Ok(t) = t else { panic!("{t:?}") };
        assert!(matches!(t.digest(&d, dyns(&[&long])), Some(Digested::Long)));
        assert!(t.digest(&d, dyns(&[])).is_none(), "wrong arity");
        // Right at the limit: still short, and equal to the rendered key's digest.
        let fits = "v".repeat(MAX_KEY_BYTES - "ns:k:<>".len());
        let key = t
            .render("ns", &[&fits])
            .map(Key::into_string)
            .unwrap_or_default();
        assert_eq!(key.len(), MAX_KEY_BYTES);
        assert!(
            matches!(t.digest(&d, dyns(&[&fits])), Some(Digested::Short(x)) if x == d.of(&key))
        );
    }

    /// The integer edges render through [`KeyPart`] exactly as through `Display`.
    #[test]
    fn key_part_integer_edges_render_like_display() {
        let t = Template::parse("n:<u>/<i>").map_err(|e| e.0);
        let Ok(t) = t else { panic!("{t:?}") };
        for u in [0, 1, 9, 10, 99, 100, u64::from(u32::MAX), u64::MAX] {
            for i in [i64::MIN, -10, -9, -1, 0, 1, 10, i64::MAX] {
                let display = t.render("ns", &[&u, &i]);
                let parts = t.render_args("ns", &[KeyPart::Unsigned(u), KeyPart::Signed(i)][..]);
                assert_eq!(display, parts, "{u} {i}");
            }
        }
    }

    proptest::proptest! {
        /// Integers and strings passed as [`KeyPart`]s render exactly as through `Display`.
        #[test]
        fn key_parts_render_like_display(u in proptest::num::u64::ANY, i in proptest::num::i64::ANY, s in ".{0,20}") {
            let t = Template::parse("p:<u>/<i>/<s>").map_err(|e| e.0);
            let Ok(t) = t else { panic!("{t:?}") };
            let display = t.render("ns", &[&u, &i, &s]);
            let parts = t.render_args("ns", &[KeyPart::Unsigned(u), KeyPart::Signed(i), KeyPart::Str(&s)][..]);
            proptest::prop_assert_eq!(&display, &parts);
            let d = Digester::new("ns");
            let key = display.map(Key::into_string).unwrap_or_default();
            let streamed = t.digest(&d, &[KeyPart::Unsigned(u), KeyPart::Signed(i), KeyPart::Str(&s)][..]);
            proptest::prop_assert!(matches!(streamed, Some(Digested::Short(x)) if x == d.of(&key)));
        }

        #[test]
        fn streamed_digest_matches_for_any_values(a in ".{0,40}", b in proptest::num::u64::ANY) {
            let d = Digester::new("p");
            let t = Template::parse("x:<a>/<b>").map_err(|e| e.0);
            let Ok(t) = t else { panic!("{t:?}") };
            let key = t.render("p", &[&a, &b]).map(Key::into_string).unwrap_or_default();
            let streamed = t.digest(&d, dyns(&[&a, &b]));
            proptest::prop_assert!(matches!(streamed, Some(Digested::Short(x)) if x == d.of(&key)));
        }
    }

    const PINNED: &str = "#fdf758b5c7b95684cf1a4ce109d779cda602a8045de03ffad8fa4a43f5fba664";

    #[test]
    fn long_keys_are_digested_and_stay_distinct_from_short_ones() {
        let long = "v".repeat(5000);
        let k = render("k:<v>", &[&long]);
        assert!(
            k.len() > MAX_KEY_BYTES && k.len() < MAX_KEY_BYTES + 80,
            "{}",
            k.len()
        );
        assert!(k.starts_with("ns:k:<vvv"));
        let hex = &k[k.len() - 64..];
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        // Stable across builds: pinned digest of a fixed input.
        let pinned = render("k:<v>", &[&"a".repeat(2000)]);
        assert!(pinned.ends_with(PINNED), "{}", &pinned[pinned.len() - 70..]);
    }
}
