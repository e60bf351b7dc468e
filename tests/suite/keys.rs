//! Key rendering (scenario 9): injective within a template and across templates, inert, and
//! out of reach of the runtime's own keys.

use proptest::prelude::*;
use tiered::key::Template;
use tiered::{Runtime, Site, SiteOptions};

static PAIR_COLON: Site = Site::new("keys::colon", "k:<a>:<b>", SiteOptions::DEFAULT);
static PAIR_DASH: Site = Site::new("keys::dash", "<a>-<b>", SiteOptions::DEFAULT);
static TRIPLE: Site = Site::new("keys::triple", "x<a>y<b>z<c>", SiteOptions::DEFAULT);

fn rt() -> Runtime {
    // Embedded runtimes are built synchronously enough for property tests.
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio")
        .block_on(Runtime::builder().namespace("ns").build())
        .expect("runtime")
}

fn key(rt: &Runtime, site: &'static Site, parts: &[String]) -> String {
    let args: Vec<&(dyn std::fmt::Display + Sync)> = parts.iter().map(|p| p as _).collect();
    rt.key(site, &args).expect("arity").as_str().to_owned()
}

/// Strings made of the characters that matter: separators, escapes, glob and hash-tag
/// characters, `%`, control characters, non-ASCII, and plain letters.
fn tricky() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just(':'),
            Just('-'),
            Just('%'),
            Just('*'),
            Just('?'),
            Just('['),
            Just(']'),
            Just('\\'),
            Just('{'),
            Just('}'),
            Just('\n'),
            Just('\0'),
            Just('x'),
            Just('y'),
            Just('z'),
            Just('é'),
            Just('2'),
            Just('A'),
            Just(' '),
            Just('\u{7f}'),
            Just('\u{85}'),
        ],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn distinct_argument_tuples_never_render_the_same_key(
        a in proptest::collection::vec(tricky(), 3),
        b in proptest::collection::vec(tricky(), 3),
    ) {
        let rt = RT.with(Clone::clone);
        for site in [&PAIR_COLON, &PAIR_DASH] {
            let (ka, kb) = (key(&rt, site, &a[..2]), key(&rt, site, &b[..2]));
            prop_assert_eq!(ka == kb, a[..2] == b[..2], "{:?} vs {:?} -> {} / {}", &a[..2], &b[..2], ka, kb);
        }
        let (ka, kb) = (key(&rt, &TRIPLE, &a), key(&rt, &TRIPLE, &b));
        prop_assert_eq!(ka == kb, a == b);
    }

    #[test]
    fn glob_brace_and_control_characters_never_appear_unescaped(
        a in tricky(), b in tricky(),
    ) {
        let rt = RT.with(Clone::clone);
        let k = key(&rt, &PAIR_COLON, &[a, b]);
        // The template's literal text ("k:" and ":") and the namespace contain none of these.
        prop_assert!(!k.chars().any(|c| "*?[]\\{}".contains(c) || c.is_control()), "{}", k);
    }
}

thread_local! {
    static RT: Runtime = rt();
}

/// A template: literal chunks (over characters that look like separators, escapes and the
/// value delimiters) and placeholders, two placeholders always apart.
fn template() -> impl Strategy<Value = String> {
    let literal = proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('b'),
            Just(':'),
            Just('.'),
            Just('%'),
            Just('>'),
            Just('2'),
            Just('~'),
        ],
        1..4,
    )
    .prop_map(|cs| cs.into_iter().collect::<String>());
    (
        proptest::option::of(literal.clone()),
        proptest::collection::vec(literal, 0..3),
        any::<bool>(),
    )
        .prop_map(|(head, separators, tail_value)| {
            let mut t = head.unwrap_or_default();
            let mut n = 0;
            for sep in separators {
                t.push_str(&format!("<p{n}>{sep}"));
                n += 1;
            }
            if tail_value || t.is_empty() {
                t.push_str(&format!("<p{n}>"));
            }
            t
        })
}

/// Values made of the characters that matter for the template-vs-template question.
fn value() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('b'),
            Just(':'),
            Just('.'),
            Just('%'),
            Just('<'),
            Just('>'),
            Just('2'),
            Just('~'),
        ],
        0..4,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn render(template: &str, values: &[String]) -> Option<(String, String)> {
    let t = Template::parse(template).ok()?;
    let values: Vec<&(dyn std::fmt::Display + Sync)> = values
        .iter()
        .take(t.placeholders())
        .map(|v| v as _)
        .collect();
    let key = t.render("ns", &values)?;
    Some((key.as_str().to_owned(), t.shape()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    /// Scenario 9 across templates: two (template, values) pairs of one namespace render the
    /// same key only when the templates have the same shape (they differ at most in their
    /// placeholders' names) and the values are equal; and no key is the runtime's own.
    #[test]
    fn scenario_9_distinct_templates_never_render_the_same_key(
        t1 in template(), t2 in template(),
        v1 in proptest::collection::vec(value(), 3),
        v2 in proptest::collection::vec(value(), 3),
    ) {
        let (Some((k1, s1)), Some((k2, s2))) = (render(&t1, &v1), render(&t2, &v2)) else {
            return Ok(());
        };
        let n1 = Template::parse(&t1).map(|t| t.placeholders()).unwrap_or(0);
        let n2 = Template::parse(&t2).map(|t| t.placeholders()).unwrap_or(0);
        let same = s1 == s2 && v1[..n1] == v2[..n2];
        prop_assert_eq!(k1 == k2, same, "{} {:?} -> {} / {} {:?} -> {}", t1, &v1[..n1], k1, t2, &v2[..n2], k2);
        for internal in ["ns:%~gen", "ns:%~probe", "ns:%~probe-gen"] {
            prop_assert_ne!(&k1, internal);
        }
    }
}

/// The example: `tenant:<t>` with `x.y` and `tenant:<t>.y` with `x`.
#[test]
fn scenario_9_a_value_cannot_imitate_another_templates_literal_text() {
    let a = render("tenant:<t>", &["x.y".into()]);
    let b = render("tenant:<t>.y", &["x".into()]);
    assert_ne!(a.map(|k| k.0), b.map(|k| k.0));
}

/// Every pair (and triple) of strings up to length 3 over an alphabet of separators, `%` and
/// glob characters: no two distinct tuples share a key. Exhaustive, so it covers every
/// interaction of these characters at these lengths (400 words: 160 000 pairs per template, two
/// templates, and 57³ = 185 193 triples of the words up to length 2; every tuple's key is
/// compared with every other's through the map).
#[test]
fn scenario_9_exhaustive_small_tuples_are_injective() {
    use std::collections::HashMap;
    let rt = rt();
    let alphabet = [':', '-', '%', 'x', '*', 'y', 'z'];
    let mut words = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..3 {
        frontier = frontier
            .iter()
            .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
            .collect();
        words.extend(frontier.iter().cloned());
    }
    let short: Vec<&String> = words.iter().filter(|w| w.len() <= 2).collect();
    let mut checked = 0u64;
    for site in [&PAIR_COLON, &PAIR_DASH] {
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        for a in &words {
            for b in &words {
                let k = key(&rt, site, &[a.clone(), b.clone()]);
                if let Some(prev) = seen.insert(k.clone(), (a.clone(), b.clone())) {
                    panic!("{prev:?} and {:?} both render {k}", (a, b));
                }
                checked += 1;
            }
        }
    }
    let mut seen = HashMap::new();
    for a in &short {
        for b in &short {
            for c in &short {
                let k = key(&rt, &TRIPLE, &[a.to_string(), b.to_string(), c.to_string()]);
                assert!(
                    seen.insert(k.clone(), (a, b, c)).is_none(),
                    "collision on {k}"
                );
                checked += 1;
            }
        }
    }
    println!("scenario 9: {checked} distinct tuples rendered to {checked} distinct keys");
}

#[test]
fn scenario_9_known_collision_pairs_stay_apart() {
    let rt = rt();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_ne!(
        key(&rt, &PAIR_COLON, &s(&["a:b", "c"])),
        key(&rt, &PAIR_COLON, &s(&["a", "b:c"]))
    );
    assert_ne!(
        key(&rt, &PAIR_COLON, &s(&["", "x"])),
        key(&rt, &PAIR_COLON, &s(&["x", ""]))
    );
    assert_ne!(
        key(&rt, &PAIR_DASH, &s(&["a-", "b"])),
        key(&rt, &PAIR_DASH, &s(&["a", "-b"]))
    );
    // 10 KB arguments give a bounded key that still differs in its last byte.
    let long_a = s(&[&"v".repeat(10_000), "1"]);
    let long_b = s(&[&"v".repeat(10_000), "2"]);
    let (ka, kb) = (
        key(&rt, &PAIR_COLON, &long_a),
        key(&rt, &PAIR_COLON, &long_b),
    );
    assert_ne!(ka, kb);
    assert!(ka.len() <= 1100, "digested key is {} bytes", ka.len());
    println!("longest key produced: {} bytes", ka.len().max(kb.len()));
}

/// Values sit between `<` and `>`, so a template's separator inside a value needs no escape.
#[test]
fn separators_inside_values_stay_readable() {
    let rt = rt();
    let k = key(&rt, &PAIR_DASH, &["-".into(), "a-b".into()]);
    assert_eq!(k, "ns:<->-<a-b>");
}

#[test]
fn wrong_arity_is_an_error_not_a_panic() {
    let rt = rt();
    assert!(rt.key(&PAIR_COLON, &[&1]).is_err());
}
