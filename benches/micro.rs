//! Criterion micro-benchmarks of the pieces of tiered's hot path, so that a regression in one
//! piece shows on its own:
//!
//! * `key/render` and `key/digest`: the key string a miss renders, and the L1 key a hit
//!   streams from the same arguments (no allocation) through `Display`; `key/digest_parts`:
//!   the same from the typed values the macro passes (integers and strings skip the `fmt`
//!   machinery); `key/digest_of_string`: the L1 key an invalidation derives from the key
//!   string it carries.
//! * `codec/encode` and `codec/decode`: the L2 envelope of a ~200-byte value.
//! * `l1/hit_through_site`: a memoized call answered from L1 (embedded runtime), beside
//!   `l1/moka_sync_get` and `l1/moka_future_get` on the same value keyed by a `u64`.
//!
//! ```text
//! cargo bench --bench micro
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tiered::codec::{self, Stamp};
use tiered::key::Template;
use tiered::private::{KeyDigester, KeyPart};
use tiered::{Plain, Runtime, Site, SiteOptions, memoize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    id: u64,
    score: u32,
    bio: String,
}

fn user(id: u64) -> User {
    User {
        name: format!("user-{id:06}"),
        id,
        score: 7,
        bio: "b".repeat(150),
    }
}

static USER: Site = Site::new("micro::user", "user:<id>", SiteOptions::DEFAULT);

fn keys(c: &mut Criterion) {
    let Ok(template) = Template::parse("user:<tenant>:<id>") else {
        return;
    };
    let digester = KeyDigester::new("shop");
    let (tenant, id) = ("acme", 4_242_424_242u64);
    let key = template
        .render("shop", &[&tenant, &id])
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default();
    let mut g = c.benchmark_group("key");
    g.bench_function("render", |b| {
        b.iter(|| template.render(black_box("shop"), &[black_box(&tenant), black_box(&id)]))
    });
    g.bench_function("digest", |b| {
        b.iter(|| digester.digest(&template, &[black_box(&tenant), black_box(&id)]))
    });
    g.bench_function("digest_parts", |b| {
        b.iter(|| {
            digester.digest_parts(
                &template,
                &[
                    KeyPart::Str(black_box(tenant)),
                    KeyPart::Unsigned(black_box(id)),
                ],
            )
        })
    });
    g.bench_function("digest_of_string", |b| {
        b.iter(|| digester.of(black_box(&key)))
    });
    g.finish();
}

fn codecs(c: &mut Criterion) {
    let fp = codec::fingerprint("User", 0);
    let value = user(42);
    let bytes = codec::encode(&fp, Stamp::default(), &value).unwrap_or_default();
    let mut g = c.benchmark_group("codec");
    g.bench_function("encode", |b| {
        b.iter(|| codec::encode(&fp, Stamp::default(), black_box(&value)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| codec::decode::<User>(&fp, black_box(&bytes), 1 << 20))
    });
    g.finish();
}

fn l1(c: &mut Criterion) {
    let Ok(tokio) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(rt) = tokio.block_on(Runtime::builder().namespace("micro").build()) else {
        return;
    };
    let call = |id: u64| async move {
        memoize::<Plain<User>, _, _>(&USER, &[&id], || async move { user(id) }).await
    };
    tokio.block_on(rt.scope(call(7)));
    let sync: moka::sync::Cache<u64, User> = moka::sync::Cache::new(10_000);
    sync.insert(7, user(7));
    let future: moka::future::Cache<u64, User> = moka::future::Cache::new(10_000);
    tokio.block_on(future.insert(7, user(7)));

    let mut g = c.benchmark_group("l1");
    g.bench_function("hit_through_site", |b| {
        b.iter(|| tokio.block_on(rt.scope(call(black_box(7)))))
    });
    g.bench_function("moka_sync_get", |b| b.iter(|| sync.get(&black_box(7))));
    g.bench_function("moka_future_get", |b| {
        b.iter(|| tokio.block_on(future.get(&black_box(7))))
    });
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = keys, codecs, l1
}
criterion_main!(micro);
