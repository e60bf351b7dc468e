//! The test support fails loudly, with an install hint, when `redis-server` is missing; its
//! TCP proxy passes, holds, refuses, swallows, delays and cuts links, for every connection or
//! one kind only; its server faults (`CLIENT PAUSE`, `DEBUG SLEEP`, `maxmemory`) take effect;
//! and its log capture keeps each test's events apart.

use crate::support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use support::logs::Logs;
use support::proxy::{Mode, Proxy, Target};
use support::{Pause, RedisServer, bounded};

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

async fn get(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query_async(conn).await
}

/// A proxy in front of a fresh server, and a client for the proxy.
async fn proxied() -> (RedisServer, Proxy, redis::Client) {
    let server = RedisServer::start();
    let proxy = bounded(
        "Proxy::start",
        Proxy::start(SocketAddr::from(([127, 0, 0, 1], server.port()))),
    )
    .await;
    let client = redis::Client::open(proxy.url()).expect("proxy url");
    (server, proxy, client)
}

#[tokio::test]
async fn proxy_blackhole_swallows_everything_and_closes_nothing() {
    let _env = bounded("ENV lock", ENV.lock()).await;
    let (server, proxy, client) = proxied().await;
    let mut conn = bounded("connect", client.get_multiplexed_async_connection())
        .await
        .expect("connect through the proxy");
    assert_eq!(
        bounded("PING", ping(&mut conn)).await.expect("PING"),
        "PONG"
    );

    proxy.set_mode(Mode::Blackhole);
    let get = tokio::time::timeout(Duration::from_millis(300), get(&mut conn, "k")).await;
    assert!(get.is_err(), "GET answered in a blackhole: {get:?}");
    let set = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("SET")
            .arg("swallowed")
            .arg("1")
            .query_async::<()>(&mut conn),
    )
    .await;
    assert!(set.is_err(), "SET answered in a blackhole: {set:?}");
    assert_eq!(server.get("swallowed"), None, "the SET never reached Redis");
    assert_eq!(proxy.live(), 1, "a blackhole closes nothing");
    // A new connection is accepted, and swallowed too.
    let fresh = tokio::time::timeout(Duration::from_millis(300), async {
        let mut c = client.get_multiplexed_async_connection().await?;
        ping(&mut c).await
    })
    .await;
    assert!(
        !matches!(fresh, Ok(Ok(_))),
        "a new connection was answered in a blackhole: {fresh:?}"
    );
    assert_eq!(proxy.accepted(), 2);

    // Pass again: the swallowed requests are lost for good (the old connection waits for
    // replies that never come), a new connection works.
    proxy.set_mode(Mode::Pass);
    let mut fresh = bounded("reconnect", client.get_multiplexed_async_connection())
        .await
        .expect("connect after the blackhole");
    assert_eq!(
        bounded("PING after the blackhole", ping(&mut fresh))
            .await
            .expect("PING after the blackhole"),
        "PONG"
    );
}

#[tokio::test]
async fn proxy_latency_delays_each_way_in_order_without_adding_up() {
    let _env = bounded("ENV lock", ENV.lock()).await;
    let (server, proxy, client) = proxied().await;
    for i in 0..10 {
        server.set(&format!("k{i}"), format!("v{i}").as_bytes());
    }
    let mut conn = bounded("connect", client.get_multiplexed_async_connection())
        .await
        .expect("connect through the proxy");
    let t = Instant::now();
    assert_eq!(
        bounded("PING", ping(&mut conn)).await.expect("PING"),
        "PONG"
    );
    let direct = t.elapsed();

    proxy.set_mode(Mode::Latency(Duration::from_millis(100)));
    let t = Instant::now();
    assert_eq!(
        bounded("PING with latency", ping(&mut conn))
            .await
            .expect("PING with latency"),
        "PONG"
    );
    let delayed = t.elapsed();
    assert!(
        delayed >= Duration::from_millis(200),
        "a round trip took {delayed:?} with 100 ms each way"
    );
    // Ten requests in flight at once on one connection: each gets its own reply (order kept),
    // and the delays overlap instead of adding up (ten in a row would take 2 s).
    let t = Instant::now();
    let replies = bounded("ten GETs with latency", async {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let mut c = conn.clone();
            tasks.push(tokio::spawn(
                async move { get(&mut c, &format!("k{i}")).await },
            ));
        }
        let mut replies = Vec::new();
        for t in tasks {
            replies.push(t.await.expect("task").expect("GET with latency"));
        }
        replies
    })
    .await;
    let ten = t.elapsed();
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.as_deref(), Some(format!("v{i}").as_str()));
    }
    println!(
        "latency 100 ms each way: PING {delayed:?} (without: {direct:?}); ten concurrent GETs {ten:?}"
    );
    assert!(ten < Duration::from_secs(1), "the delays added up: {ten:?}");

    proxy.set_mode(Mode::Pass);
    let t = Instant::now();
    assert_eq!(
        bounded("PING", ping(&mut conn)).await.expect("PING"),
        "PONG"
    );
    println!("back to Pass: PING {:?}", t.elapsed());
}

/// The next message of a subscription, or `None` if none arrives within `within`.
async fn next_message(
    stream: &mut Pin<Box<redis::aio::PubSubStream>>,
    within: Duration,
) -> Option<String> {
    use futures_core::Stream;
    let next = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx));
    match tokio::time::timeout(within, next).await {
        Ok(Some(msg)) => Some(msg.get_payload().expect("a text payload")),
        Ok(None) => panic!("the subscription ended"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn proxy_faults_can_target_the_subscriber_or_the_data_connections() {
    let _env = bounded("ENV lock", ENV.lock()).await;
    let (server, proxy, client) = proxied().await;
    let mut data = bounded("connect", client.get_multiplexed_async_connection())
        .await
        .expect("data connection");
    let mut pubsub = bounded("pubsub connect", client.get_async_pubsub())
        .await
        .expect("pubsub connection");
    bounded("SUBSCRIBE", pubsub.subscribe("ch"))
        .await
        .expect("SUBSCRIBE");
    let mut messages = Box::pin(pubsub.into_on_message());
    assert_eq!((proxy.live(), proxy.live_subscribers()), (2, 1));
    let publish = |conn: &mut redis::aio::MultiplexedConnection, m: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PUBLISH")
                .arg("ch")
                .arg(m)
                .query_async::<u64>(&mut conn)
                .await
        }
    };

    // Hold the subscriber only: data flows, messages wait in the proxy.
    proxy.set_mode_where(Mode::Hold, Target::Subscriber);
    assert_eq!(
        bounded("PING", ping(&mut data)).await.expect("PING"),
        "PONG"
    );
    let receivers = bounded("PUBLISH", publish(&mut data, "m1"))
        .await
        .expect("PUBLISH");
    assert_eq!(receivers, 1, "Redis still counts the held subscriber");
    assert_eq!(
        next_message(&mut messages, Duration::from_millis(300)).await,
        None,
        "a message crossed a held subscriber connection"
    );
    proxy.set_mode(Mode::Pass);
    assert_eq!(
        next_message(&mut messages, Duration::from_secs(5)).await,
        Some("m1".to_owned()),
        "the held message is delivered after the hold"
    );

    // Hold the data connections only: the subscriber still hears what others publish.
    proxy.set_mode_where(Mode::Hold, Target::Data);
    let held = tokio::time::timeout(Duration::from_millis(300), ping(&mut data)).await;
    assert!(held.is_err(), "PING answered on a held data connection");
    let receivers: u64 = server.cmd(&[b"PUBLISH", b"ch", b"m2"]);
    assert_eq!(receivers, 1);
    assert_eq!(
        next_message(&mut messages, Duration::from_secs(5)).await,
        Some("m2".to_owned()),
        "the subscriber was held by a fault aimed at data connections"
    );
    proxy.set_mode(Mode::Pass);
    assert_eq!(
        bounded("PING after the hold", ping(&mut data))
            .await
            .expect("PING after the hold"),
        "PONG"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_faults_pause_sleep_and_cap_memory() {
    let _env = bounded("ENV lock", ENV.lock()).await;
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).expect("url");
    let mut conn = bounded("connect", client.get_multiplexed_async_connection())
        .await
        .expect("connect");

    // CLIENT PAUSE WRITE: reads go on, writes wait for the end of the pause.
    server.client_pause(300, Pause::Write);
    let t = Instant::now();
    bounded("GET during a write pause", get(&mut conn, "k"))
        .await
        .expect("GET");
    let read = t.elapsed();
    let t = Instant::now();
    bounded(
        "SET during a write pause",
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async::<()>(&mut conn),
    )
    .await
    .expect("SET");
    let write = t.elapsed();
    println!("CLIENT PAUSE 300 WRITE: GET {read:?}, SET {write:?}");
    assert!(write >= Duration::from_millis(200), "SET took {write:?}");

    // CLIENT PAUSE ALL: reads wait too.
    server.client_pause(300, Pause::All);
    let t = Instant::now();
    bounded("GET during a pause", get(&mut conn, "k"))
        .await
        .expect("GET");
    let paused = t.elapsed();
    println!("CLIENT PAUSE 300 ALL: GET {paused:?}");
    assert!(paused >= Duration::from_millis(200), "GET took {paused:?}");

    // DEBUG SLEEP: the whole server stops, the caller does not wait for it.
    let t = Instant::now();
    let sleep = server.debug_sleep(0.3);
    let returned = t.elapsed();
    bounded("PING during DEBUG SLEEP", ping(&mut conn))
        .await
        .expect("PING");
    let blocked = t.elapsed();
    let reply = tokio::task::spawn_blocking(move || sleep.join().expect("DEBUG SLEEP thread"));
    let reply = bounded("DEBUG SLEEP reply", reply).await.expect("join");
    println!("DEBUG SLEEP 0.3: returned in {returned:?}, a PING took {blocked:?}, reply {reply}");
    assert_eq!(reply, "+OK");
    assert!(
        blocked >= Duration::from_millis(200),
        "PING took {blocked:?}"
    );

    // maxmemory with noeviction: a large write is refused with OOM once memory is full.
    server.maxmemory(1, "noeviction");
    let big = vec![b'x'; 64 * 1024];
    let refused = server.try_cmd::<()>(&[b"SET", b"big", &big]);
    let err = refused.expect_err("SET over maxmemory");
    assert_eq!(err.code(), Some("OOM"), "{err}");
    server.maxmemory(0, "noeviction");
}

#[test]
fn log_capture_keeps_each_tests_events_apart() {
    let (a, b) = (Logs::new(), Logs::new());
    let mark = a.mark();
    a.block_on(2, async {
        tracing::warn!(secret = "S3cr3t-canary", "from a's runtime");
        // On a spawned task, on whichever worker runs it: tagged too.
        tokio::spawn(async { tracing::error!("from a task of a's runtime") })
            .await
            .expect("task");
        tokio::task::spawn_blocking(|| tracing::info!("from a's blocking pool"))
            .await
            .expect("blocking task");
    });
    {
        let _b = b.enter();
        tracing::warn!("from b's thread");
    }
    tracing::warn!("from an untagged thread");
    let texts: Vec<String> = a.since(mark).iter().map(|e| e.text()).collect();
    assert_eq!(texts.len(), 3, "{texts:#?}");
    assert_eq!(
        (
            a.count(mark, tracing::Level::WARN),
            a.count(mark, tracing::Level::ERROR)
        ),
        (1, 1)
    );
    assert_eq!(a.events()[0].field("secret"), Some("S3cr3t-canary"));
    assert_eq!(
        a.matching(mark, tracing::Level::INFO, "blocking pool")
            .len(),
        1
    );
    let b_texts: Vec<String> = b.events().iter().map(|e| e.text()).collect();
    assert_eq!(b_texts.len(), 1, "{b_texts:#?}");
    assert!(b_texts[0].contains("from b's thread"));
    b.assert_absent("S3cr3t-canary");
    assert_eq!(a.containing("S3cr3t-canary").len(), 1, "found in a field");
}

#[test]
fn a_port_served_by_another_server_is_not_taken_for_ours() {
    let _env = ENV.blocking_lock();
    let first = RedisServer::start();
    let port = first.port();
    // Ours cannot bind the port; the server answering there is not ours.
    let second = std::panic::catch_unwind(|| RedisServer::start_on(port, &[]));
    let msg = second
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(
        msg.contains("exited at start") || msg.contains("served by another redis-server"),
        "{msg}"
    );
    assert_eq!(first.cmd::<String>(&[b"PING"]), "PONG");
}

/// A local cluster of 3 masters forms (every node `cluster_state:ok`, all slots assigned),
/// spreads keys over every master, and redirects a key sent to a node that does not own it.
#[test]
fn a_local_cluster_of_three_masters_forms_and_spreads_keys() {
    let _env = ENV.blocking_lock();
    let t = Instant::now();
    let cluster = support::cluster::Cluster::start(3);
    println!("3-master cluster ready in {:?}", t.elapsed());
    let owners: std::collections::HashSet<u16> = (0..30)
        .map(|i| cluster.owner_of(&format!("k:{i}")).port())
        .collect();
    assert_eq!(owners.len(), 3, "keys spread over every master");
    let owner = cluster.owner_of("k:0").port();
    let other = cluster
        .nodes()
        .iter()
        .find(|n| n.port() != owner)
        .expect("another node");
    let moved = other.try_cmd::<()>(&[b"SET", b"k:0", b"v"]);
    assert!(
        moved
            .as_ref()
            .is_err_and(|e| e.to_string().to_uppercase().contains("MOVED")),
        "{moved:?}"
    );
    cluster.owner_of("k:0").cmd::<()>(&[b"SET", b"k:0", b"v"]);
    assert_eq!(cluster.owner_of("k:0").get("k:0"), Some(b"v".to_vec()));
}
