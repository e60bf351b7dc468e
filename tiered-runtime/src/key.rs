//! Key templates and the injective, inert rendering of argument values into Redis keys.
//!
//! A template such as `user:<id>` is literal text and `<placeholder>`s. The rendered key is
//! `{namespace}:{template with values}`, where every value is written with `Display` and
//! percent-encoded so that
//!
//! * the encoding is **injective**: `%` itself, `:` and every character of the template's
//!   separators (its literal text after a placeholder) are encoded, so a value can never imitate
//!   a separator and two different argument tuples never render the same key (`("a:b","c")` and
//!   `("a","b:c")` differ). The literal text before the first placeholder is a fixed prefix that
//!   no value can shift, so its characters are not encoded (`repo:<tenant>` keeps `umbrella`
//!   readable);
//! * the key is **inert**: glob characters (`*`, `?`, `[`, `]`, `\`), hash-tag braces (`{`,
//!   `}`) and control characters are encoded, so user input can never widen a pattern or choose
//!   a Redis Cluster slot.
//!
//! Keys longer than [`MAX_KEY_BYTES`] keep a readable prefix followed by `#` and the SHA-256
//! of the whole key (hex): stable across builds and toolchains. A digested key is always
//! longer than [`MAX_KEY_BYTES`] while a plain key never is, so the two forms cannot collide.

use std::fmt::{self, Display, Write as _};

use sha2::{Digest, Sha256};

/// Keys up to this many bytes are used as they are; longer ones are digested.
pub const MAX_KEY_BYTES: usize = 1024;
/// Bytes of a long key kept as its readable prefix (cut at a character boundary).
const DIGEST_PREFIX_BYTES: usize = 1000;

/// Characters encoded in every value, whatever the template.
const ALWAYS_ESCAPED: &[u8] = b"%:*?[]\\{}";

/// A rendered key: `{namespace}:{template with encoded values}`, digested when long.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

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
        Key(s)
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
    Literal(String),
    Value,
}

/// A key template compiled once: its segments and the set of characters to encode in values.
#[derive(Debug, Clone)]
pub struct Template {
    segments: Vec<Segment>,
    placeholders: usize,
    literal_len: usize,
    /// Bit `b` set: ASCII byte `b` must be encoded.
    ascii: u128,
    /// Non-ASCII characters of the literal text (rare), which must be encoded too.
    other: Vec<char>,
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
                    segments.push(Segment::Literal(rest[..end].to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        let mut ascii = 0u128;
        let mut other = Vec::new();
        for &b in ALWAYS_ESCAPED {
            ascii |= 1 << b;
        }
        for b in 0..0x20u8 {
            ascii |= 1 << b;
        }
        ascii |= 1 << 0x7f;
        let mut literal_len = 0;
        let mut after_placeholder = false;
        for seg in &segments {
            if *seg == Segment::Value {
                after_placeholder = true;
            }
            if let Segment::Literal(text) = seg {
                literal_len += text.len();
                // Only separators (literal text after a placeholder) can be imitated by a value;
                // the leading text is a fixed prefix, so its characters stay readable in values.
                if !after_placeholder {
                    continue;
                }
                for c in text.chars() {
                    if c.is_ascii() {
                        ascii |= 1 << (c as u32);
                    } else if !other.contains(&c) {
                        other.push(c);
                    }
                }
            }
        }
        let placeholders = segments.iter().filter(|s| **s == Segment::Value).count();
        Ok(Template {
            segments,
            placeholders,
            literal_len,
            ascii,
            other,
        })
    }

    /// Number of `<placeholder>`s, i.e. of values [`render`](Self::render) expects.
    pub fn placeholders(&self) -> usize {
        self.placeholders
    }

    /// Renders `{namespace}:{template}` with `values` in placeholder order, or `None` when the
    /// number of values differs from the number of placeholders.
    pub fn render(&self, namespace: &str, values: &[&(dyn Display + Sync)]) -> Option<Key> {
        if values.len() != self.placeholders {
            return None;
        }
        let mut out =
            String::with_capacity(namespace.len() + 1 + self.literal_len + 8 * values.len());
        out.push_str(namespace);
        out.push(':');
        let mut values = values.iter();
        for seg in &self.segments {
            match seg {
                Segment::Literal(text) => out.push_str(text),
                Segment::Value => {
                    if let Some(v) = values.next() {
                        let _ = write!(
                            Escaper {
                                out: &mut out,
                                t: self
                            },
                            "{v}"
                        );
                    }
                }
            }
        }
        Some(Key::from_rendered(out))
    }

    fn must_escape(&self, c: char) -> bool {
        if c.is_ascii() {
            self.ascii & (1 << (c as u32)) != 0
        } else {
            c.is_control() || self.other.contains(&c)
        }
    }
}

/// Writes `Display` output into the key, percent-encoding what the template requires.
struct Escaper<'a> {
    out: &'a mut String,
    t: &'a Template,
}

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Fast path, one pass over the bytes: plain ASCII with nothing to encode.
        let ascii = self.t.ascii;
        if s.bytes().all(|b| b < 0x80 && ascii & (1u128 << b) == 0) {
            self.out.push_str(s);
            return Ok(());
        }
        for c in s.chars() {
            if self.t.must_escape(c) {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(self.out, "%{b:02X}");
                }
            } else {
                self.out.push(c);
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
        assert_eq!(render("user:<id>", &[&42]), "ns:user:42");
        assert_eq!(render("<a>-<b>", &[&"x-y", &"z"]), "ns:x%2Dy-z");
        assert_eq!(
            render("q:<q>", &[&"a*b?[c]\\{d}%e:f"]),
            "ns:q:a%2Ab%3F%5Bc%5D%5C%7Bd%7D%25e%3Af"
        );
        assert_eq!(
            render("q:<q>", &[&"line\nbreak\u{0}"]),
            "ns:q:line%0Abreak%00"
        );
        assert_eq!(render("é<q>é", &[&"aéb"]), "ns:éa%C3%A9bé");
        assert_eq!(render("repo:<t>", &[&"umbrella"]), "ns:repo:umbrella");
    }

    #[test]
    fn separator_tricks_do_not_collide() {
        assert_ne!(
            render("<a>:<b>", &[&"a:b", &"c"]),
            render("<a>:<b>", &[&"a", &"b:c"])
        );
        assert_ne!(
            render("<a>/<b>", &[&"", &"x"]),
            render("<a>/<b>", &[&"x", &""])
        );
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

    #[test]
    fn long_keys_are_digested_and_stay_distinct_from_short_ones() {
        let long = "v".repeat(5000);
        let k = render("k:<v>", &[&long]);
        assert!(
            k.len() > MAX_KEY_BYTES && k.len() < MAX_KEY_BYTES + 80,
            "{}",
            k.len()
        );
        assert!(k.starts_with("ns:k:vvv"));
        let hex = &k[k.len() - 64..];
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        // Stable across builds: pinned digest of a fixed input.
        let pinned = render("k:<v>", &[&"a".repeat(2000)]);
        assert!(
            pinned.ends_with("#95f0f74c0b5d5cc803b85714269b74c121699451f3686a71f8738f2337253cd5"),
            "{}",
            &pinned[pinned.len() - 70..]
        );
    }
}
