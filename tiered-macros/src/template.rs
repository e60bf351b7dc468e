//! The key template, parsed once into segments and used by both the function and its
//! `invalidate_<fn>` companion, so the two can never disagree.

use syn::LitStr;

use crate::errors::Errors;

/// `<root.field.field>`.
pub(crate) struct Placeholder {
    pub(crate) root: String,
    pub(crate) fields: Vec<String>,
}

pub(crate) struct Template {
    pub(crate) placeholders: Vec<Placeholder>,
}

/// Parses and checks a template. Stable Rust cannot point inside a string literal, so every
/// error is at the literal and names the offending placeholder.
pub(crate) fn parse(lit: &LitStr, errors: &mut Errors) -> Option<Template> {
    let text = lit.value();
    let at = |errors: &mut Errors, msg: String| errors.at(lit.span(), msg);
    if text.is_empty() {
        at(errors, "the key template is empty".into());
        return None;
    }
    let mut placeholders = Vec::new();
    let mut rest = text.as_str();
    let mut after_placeholder = false;
    let mut ok = true;
    while let Some(open) = rest.find('<') {
        if open > 0 {
            // Literal text separates this placeholder from the previous one.
            after_placeholder = false;
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else {
            at(
                errors,
                format!("unterminated placeholder `<{after}`: add `>`"),
            );
            return None;
        };
        let name = after[..close].trim();
        if after_placeholder {
            at(
                errors,
                format!(
                    "placeholders must be separated by literal text: `<{name}>` follows another placeholder directly"
                ),
            );
            ok = false;
        }
        if name.is_empty() {
            at(
                errors,
                "empty placeholder `<>`: name an argument, e.g. `<id>`".into(),
            );
            ok = false;
        } else if name.contains('<') {
            at(errors, format!("unterminated placeholder in `<{name}>`"));
            ok = false;
        } else {
            let mut parts = name.split('.').map(str::trim);
            let root = parts.next().unwrap_or_default().to_owned();
            let fields: Vec<String> = parts.map(str::to_owned).collect();
            if std::iter::once(&root).chain(&fields).any(|p| !is_ident(p)) {
                at(
                    errors,
                    format!(
                        "placeholder `<{name}>` must be an argument name or a field path like `<user.id>`"
                    ),
                );
                ok = false;
            } else {
                placeholders.push(Placeholder { root, fields });
            }
        }
        after_placeholder = true;
        rest = &after[close + 1..];
    }
    ok.then_some(Template { placeholders })
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}
