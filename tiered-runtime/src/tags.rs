//! Tags: labels an entry carries besides its key (`tags = ["tenant:<tenant>"]`), so that one
//! call, [`Runtime::invalidate_tag`](crate::Runtime::invalidate_tag), drops every entry
//! carrying a tag, across functions and instances, without `SCAN`.
//!
//! A tag template names the key's values by position (`tenant:<0>`: the key template's first
//! value; the macro turns the names you write into positions, and allows only the key's
//! placeholders, so that the entry under one key always carries the same tags). A tag is
//! rendered as plain text: the literal text and each value as its `Display` writes it, not
//! escaped, so that `invalidate_tag("tenant:acme")` names what `tenant:<tenant>` renders for
//! `"acme"`. Two templates that render the same text share the tag (an invalidation drops
//! both: more than needed, never a wrong value).
//!
//! In Redis a tag is a generation (the field `#<tag>` of the generations hash, see
//! `coherence::generations`), stamped into the values of the functions that carry it and
//! checked on read. In L1 an invalidated tag starts a new epoch for every function that has
//! a tag template which can render it: their other entries go too (one L2 read each to come
//! back), and their computations in flight store nothing.

use crate::key::{Args, TemplateError};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// The key's value at this position.
    Value(usize),
}

/// A compiled tag template.
#[derive(Debug, Clone)]
pub(crate) struct TagTemplate {
    parts: Vec<Part>,
}

impl TagTemplate {
    /// Parses `tenant:<0>` style templates (positions into the key's values).
    pub(crate) fn parse(template: &str) -> Result<TagTemplate, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError("a tag template is empty"));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('<') {
                Some(0) => {
                    let end = rest
                        .find('>')
                        .ok_or(TemplateError("unterminated `<` placeholder in a tag"))?;
                    let index = rest[1..end].trim().parse().map_err(|_| {
                        TemplateError("a tag's placeholder is the position of a key value: `<0>`")
                    })?;
                    parts.push(Part::Value(index));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    parts.push(Part::Literal(rest[..end].to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        Ok(TagTemplate { parts })
    }

    /// The tag for the key's `values`; `None` when a position is out of range.
    pub(crate) fn render<A: Args + ?Sized>(&self, values: &A) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Value(i) if *i < values.count() => values.write_plain(*i, &mut out),
                Part::Value(_) => return None,
            }
        }
        Some(out)
    }

    /// Whether some values could render `tag` (each value any text, the empty one included).
    pub(crate) fn matches(&self, tag: &str) -> bool {
        fn go(parts: &[Part], rest: &str) -> bool {
            match parts.split_first() {
                None => rest.is_empty(),
                Some((Part::Literal(text), more)) => rest
                    .strip_prefix(text.as_str())
                    .is_some_and(|r| go(more, r)),
                Some((Part::Value(_), more)) => rest
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain(std::iter::once(rest.len()))
                    .any(|i| go(more, &rest[i..])),
            }
        }
        go(&self.parts, tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Display;

    #[test]
    fn renders_plain_text_and_matches_what_it_can_render() {
        let t = TagTemplate::parse("tenant:<0>").map_err(|e| e.0);
        let Ok(t) = t else {
            panic!("parse: {t:?}");
        };
        let values: [&(dyn Display + Sync); 2] = [&"acme:eu", &7u32];
        assert_eq!(t.render(&values[..]).as_deref(), Some("tenant:acme:eu"));
        assert!(t.matches("tenant:acme"));
        assert!(t.matches("tenant:"));
        assert!(!t.matches("user:7"));
        let two = TagTemplate::parse("t:<1>/u:<0>").map_err(|e| e.0);
        let Ok(two) = two else {
            panic!("parse: {two:?}");
        };
        assert_eq!(two.render(&values[..]).as_deref(), Some("t:7/u:acme:eu"));
        assert!(two.matches("t:7/u:x") && !two.matches("t:7-u:x"));
        let out_of_range = TagTemplate::parse("x:<5>").map_err(|e| e.0);
        assert!(out_of_range.is_ok_and(|t| t.render(&values[..]).is_none()));
        assert!(TagTemplate::parse("x:<id>").is_err());
    }
}
