//! The test support fails loudly, with an install hint, when `redis-server` is missing.

mod support;

#[test]
fn missing_redis_server_fails_with_an_install_hint() {
    // SAFETY: the only test in this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("TIERED_REDIS_SERVER", "/nonexistent/redis-server") };
    let err = std::panic::catch_unwind(support::RedisServer::start).err();
    let msg = err
        .as_ref()
        .and_then(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        })
        .unwrap_or_default();
    assert_eq!(msg, support::install_hint());
    assert!(msg.contains("apt-get install -y redis-server"));
}
