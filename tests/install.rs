//! The process-wide runtime: lazy embedded default, `install()` once, `from_env()`.
//! One test function, because it changes process-global state (the installed runtime and
//! environment variables).

mod support;

use support::{BodyRuns, RedisServer};
use tiered::{Error, Plain, Runtime, Site, SiteOptions, memoize};

static SQUARE: Site = Site::new("install::square", "square:<n>", SiteOptions::DEFAULT);

async fn square(n: u64, calls: &BodyRuns) -> u64 {
    let calls = calls.clone();
    memoize::<Plain<u64>, _, _>(&SQUARE, &[&n], || async move {
        calls.hit();
        n * n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_default_then_install_once_then_from_env() {
    let calls = BodyRuns::default();
    // Nothing installed: the embedded default serves.
    assert!(Runtime::installed().is_none());
    assert_eq!(square(3, &calls).await, 9);
    assert_eq!(square(3, &calls).await, 9);
    assert_eq!(tiered::stats().total.l1_hits, 1);
    assert!(!tiered::stats().l2_configured);

    // Installing replaces the default (it was not an install).
    let redis = RedisServer::start();
    let rt = Runtime::builder()
        .namespace("inst")
        .redis_url(redis.url())
        .install()
        .await
        .expect("first install");
    assert_eq!(square(3, &calls).await, 9);
    assert_eq!(calls.get(), 2, "the installed runtime has its own L1");
    assert_eq!(rt.stats().total.computations, 1);
    assert!(tiered::stats().l2_configured);
    assert_eq!(redis.keys(), vec!["inst:square:<3>".to_owned()]);

    // A second install is an error and changes nothing.
    match Runtime::builder().namespace("other").install().await {
        Err(Error::AlreadyInstalled) => {}
        other => panic!("expected AlreadyInstalled, got {other:?}"),
    }
    assert_eq!(Runtime::current().config().namespace(), "inst");

    // A scope still wins over the installed runtime.
    let scoped = Runtime::builder()
        .namespace("scoped")
        .build()
        .await
        .expect("scoped");
    assert_eq!(scoped.scope(square(3, &calls)).await, 9);
    assert_eq!(calls.get(), 3);

    // from_env reads TIERED_REDIS_URL and TIERED_NAMESPACE.
    // SAFETY: this is the only test in this binary, so no other thread reads the environment.
    unsafe {
        std::env::set_var("TIERED_REDIS_URL", redis.url());
        std::env::set_var("TIERED_NAMESPACE", "fromenv");
    }
    let env_rt = tiered::Builder::from_env().build().await.expect("from_env");
    assert_eq!(env_rt.config().namespace(), "fromenv");
    assert_eq!(
        env_rt.config().redis_addr(),
        Some(format!("127.0.0.1:{}", redis.port()).as_str())
    );
    assert!(env_rt.stats().l2_connected);
    // Builder options set afterwards override the environment.
    let overridden = tiered::Builder::from_env()
        .namespace("explicit")
        .build()
        .await
        .expect("build");
    assert_eq!(overridden.config().namespace(), "explicit");
    assert!(!overridden.config().client_tracking());

    // TIERED_CLIENT_TRACKING turns client tracking on; a wrong value names its field.
    // SAFETY: as above.
    unsafe { std::env::set_var("TIERED_CLIENT_TRACKING", "on") };
    let tracked = tiered::Builder::from_env().build().await.expect("tracking");
    assert!(tracked.config().client_tracking());
    assert!(tracked.stats().tracking);
    unsafe { std::env::set_var("TIERED_CLIENT_TRACKING", "maybe") };
    match tiered::Builder::from_env().build().await {
        Err(tiered::Error::Config { field, .. }) => assert_eq!(field, "client_tracking"),
        other => panic!("expected a config error, got {other:?}"),
    }
    unsafe { std::env::remove_var("TIERED_CLIENT_TRACKING") };
}
