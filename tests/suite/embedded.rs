//! Embedded mode: no Redis configured; the L1 path, TTLs, return kinds and stats hold.

use crate::support;

use std::time::Duration;

use support::BodyRuns;
use tiered::{Fallible, Plain, Runtime, Site, SiteOptions, Tiers, memoize};

static SHORT: Site = Site::new(
    "embedded::short",
    "short:<id>",
    SiteOptions {
        ttl: Duration::from_millis(300),
        tiers: Tiers::Both,
        promote: 0,
        version: 0,
        ..SiteOptions::DEFAULT
    },
);

async fn short(id: u32, calls: &BodyRuns) -> u32 {
    let calls = calls.clone();
    memoize::<Plain<u32>, _, _>(&SHORT, &[&id], || async move {
        calls.hit();
        id
    })
    .await
}

#[tokio::test]
async fn embedded_runtime_caches_per_argument_and_expires_with_the_ttl() {
    let rt = Runtime::builder()
        .namespace("emb")
        .build()
        .await
        .expect("embedded");
    assert!(!rt.stats().l2_configured);
    let calls = BodyRuns::default();
    for _ in 0..3 {
        for id in 0..5 {
            assert_eq!(rt.scope(short(id, &calls)).await, id);
        }
    }
    assert_eq!(calls.get(), 5, "once per distinct argument");
    let site = rt
        .stats()
        .site("embedded::short")
        .copied()
        .unwrap_or_default();
    assert_eq!(
        (site.l1_hits, site.misses, site.computations, site.l2_skips),
        (10, 5, 5, 0)
    );
    // After the entry's TTL, the next call computes again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    rt.scope(short(0, &calls)).await;
    assert_eq!(calls.get(), 6);
}

#[tokio::test]
async fn l1_max_ttl_caps_every_entry() {
    let rt = Runtime::builder()
        .l1_max_ttl(Duration::from_millis(100))
        .build()
        .await
        .expect("embedded");
    static LONG: Site = Site::new("embedded::long", "long:<id>", SiteOptions::DEFAULT);
    let calls = BodyRuns::default();
    let call = |calls: BodyRuns| async move {
        memoize::<Plain<u8>, _, _>(&LONG, &[&1], || async move {
            calls.hit();
            1
        })
        .await
    };
    rt.scope(call(calls.clone())).await;
    rt.scope(call(calls.clone())).await;
    assert_eq!(calls.get(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    rt.scope(call(calls.clone())).await;
    assert_eq!(
        calls.get(),
        2,
        "the 5 min site TTL was capped by l1_max_ttl"
    );
}

#[tokio::test]
async fn errors_are_not_cached_in_embedded_mode() {
    static FLAKY: Site = Site::new("embedded::flaky", "flaky", SiteOptions::DEFAULT);
    let rt = Runtime::builder().build().await.expect("embedded");
    let calls = BodyRuns::default();
    let call = |calls: BodyRuns| async move {
        memoize::<Fallible<u8, String>, _, _>(&FLAKY, &[], || async move {
            if calls.hit() < 3 {
                Err("not yet".to_owned())
            } else {
                Ok(3)
            }
        })
        .await
    };
    assert!(rt.scope(call(calls.clone())).await.is_err());
    assert!(rt.scope(call(calls.clone())).await.is_err());
    assert_eq!(rt.scope(call(calls.clone())).await, Ok(3));
    assert_eq!(rt.scope(call(calls.clone())).await, Ok(3));
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn two_scoped_runtimes_are_independent() {
    let a = Runtime::builder().namespace("a").build().await.expect("a");
    let b = Runtime::builder().namespace("b").build().await.expect("b");
    let calls = BodyRuns::default();
    a.scope(short(1, &calls)).await;
    b.scope(short(1, &calls)).await;
    a.scope(short(1, &calls)).await;
    assert_eq!(calls.get(), 2);
    assert_eq!((a.stats().total.l1_hits, b.stats().total.l1_hits), (1, 0));
    assert_eq!(a.key(&SHORT, &[&1]).expect("key").as_str(), "a:short:<1>");
}

#[tokio::test]
async fn a_site_with_a_malformed_template_runs_uncached_instead_of_failing() {
    static BAD: Site = Site::new("embedded::bad", "<a><b>", SiteOptions::DEFAULT);
    let rt = Runtime::builder().build().await.expect("embedded");
    let calls = BodyRuns::default();
    for _ in 0..2 {
        let c = calls.clone();
        let v = rt
            .scope(async move {
                memoize::<Plain<u8>, _, _>(&BAD, &[&1, &2], || async move {
                    c.hit();
                    5
                })
                .await
            })
            .await;
        assert_eq!(v, 5);
    }
    assert_eq!(calls.get(), 2);
    assert!(rt.key(&BAD, &[&1, &2]).is_err());
}

#[tokio::test]
async fn two_sites_sharing_a_template_keep_their_own_values_and_are_reported() {
    static AS_NUMBER: Site = Site::new("embedded::as_number", "shared:<id>", SiteOptions::DEFAULT);
    static AS_TEXT: Site = Site::new("embedded::as_text", "shared:<id>", SiteOptions::DEFAULT);
    let rt = Runtime::builder().build().await.expect("embedded");
    let n = rt
        .scope(async { memoize::<Plain<u32>, _, _>(&AS_NUMBER, &[&1], || async { 1u32 }).await })
        .await;
    let t = rt
        .scope(async {
            memoize::<Plain<String>, _, _>(&AS_TEXT, &[&1], || async { "one".to_owned() }).await
        })
        .await;
    let n2 = rt
        .scope(async { memoize::<Plain<u32>, _, _>(&AS_NUMBER, &[&1], || async { 2u32 }).await })
        .await;
    assert_eq!(
        (n, t.as_str(), n2),
        (1, "one", 1),
        "each site reads its own L1"
    );
    assert_eq!(
        rt.stats().total.template_conflicts,
        1,
        "the collision is reported once"
    );
}
