//! The test support fails loudly, with an install hint, when `redis-server` is missing, and its
//! TCP proxy passes, holds, refuses and cuts links.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::proxy::{Mode, Proxy};
use support::{RedisServer, bounded};

/// `TIERED_REDIS_SERVER` is process-wide and `RedisServer::start` reads it. Every test of this
/// binary holds this lock for its whole body, so the one that points the variable at a missing
/// binary never overlaps another.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[test]
fn missing_redis_server_fails_with_an_install_hint() {
    let _env = ENV.blocking_lock();
    let before = std::env::var_os("TIERED_REDIS_SERVER");
    // SAFETY: every test in this binary holds `ENV` for its whole body: none runs concurrently.
    unsafe { std::env::set_var("TIERED_REDIS_SERVER", "/nonexistent/redis-server") };
    let err = std::panic::catch_unwind(support::RedisServer::start).err();
    // SAFETY: as above; restored before asserting, so a failure does not leak the bogus path.
    match before {
        Some(v) => unsafe { std::env::set_var("TIERED_REDIS_SERVER", v) },
        None => unsafe { std::env::remove_var("TIERED_REDIS_SERVER") },
    }
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

async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn proxy_passes_holds_refuses_and_cuts() {
    let _env = bounded("ENV lock", ENV.lock()).await;
    let server = RedisServer::start();
    let proxy = bounded(
        "Proxy::start",
        Proxy::start(SocketAddr::from(([127, 0, 0, 1], server.port()))),
    )
    .await;
    let client = redis::Client::open(proxy.url()).expect("proxy url");

    // Pass: commands go through.
    let mut conn = bounded("connect", client.get_multiplexed_async_connection())
        .await
        .expect("connect through the proxy");
    let pong = bounded("PING in Pass", ping(&mut conn)).await;
    assert_eq!(pong.expect("PING in Pass"), "PONG");
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.live(), 1);

    // Hold: the link stays open but nothing comes back.
    proxy.set_mode(Mode::Hold);
    let held = tokio::time::timeout(Duration::from_millis(300), ping(&mut conn)).await;
    assert!(held.is_err(), "PING answered while held: {held:?}");
    assert_eq!(proxy.live(), 1, "a hold closes nothing");

    // Pass again: the held PING is forwarded late (its reply is discarded), then a new one works.
    proxy.set_mode(Mode::Pass);
    let pong = bounded("PING after the hold", ping(&mut conn)).await;
    assert_eq!(pong.expect("PING after the hold"), "PONG");

    // Refuse: a new connection fails, the live one keeps working.
    proxy.set_mode(Mode::Refuse);
    let refused = bounded("connect and PING while refusing", async {
        let mut c = client.get_multiplexed_async_connection().await?;
        ping(&mut c).await
    })
    .await;
    assert!(refused.is_err(), "connected while refusing: {refused:?}");
    assert_eq!(proxy.accepted(), 2);
    let pong = bounded("PING on the live link while refusing", ping(&mut conn)).await;
    assert_eq!(pong.expect("PING on the live link while refusing"), "PONG");
    proxy.set_mode(Mode::Pass);

    // cut_all: the live connection is reset, a new one works.
    proxy.cut_all();
    let after_cut = bounded("PING after cut_all", ping(&mut conn)).await;
    assert!(
        after_cut.is_err(),
        "PING answered after cut_all: {after_cut:?}"
    );
    let mut fresh = bounded("reconnect", client.get_multiplexed_async_connection())
        .await
        .expect("reconnect through the proxy");
    let pong = bounded("PING on a new connection", ping(&mut fresh)).await;
    assert_eq!(pong.expect("PING on a new connection"), "PONG");
    assert_eq!(proxy.accepted(), 3);
    bounded("the cut connection to close", async {
        while proxy.live() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
