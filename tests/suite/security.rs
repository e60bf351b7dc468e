//! Security scenarios of the reliability plan (11: isolation of tenants, namespaces and
//! databases; 16: ACL changes while running), each against its own `redis-server`.

use crate::support;

use std::time::Duration;

use support::logs::Logs;
use support::{RedisServer, bounded, wait_until};
use tiered::{Counts, Plain, Runtime, Site, SiteOptions, memoize};
use tracing::Level;

static ITEM: Site = Site::new("security::item", "item:<id>", SiteOptions::DEFAULT);

/// `ITEM(id)` on `rt`, whose body answers `"{label}/{id}"`: a value read from another
/// instance's namespace or database would carry its label.
async fn item(rt: &Runtime, label: &str, id: u64) -> String {
    let label = label.to_owned();
    // `memoize` finds its runtime when called: inside the scope.
    rt.scope(async move {
        memoize::<Plain<String>, _, _>(&ITEM, &[&id], || async move { format!("{label}/{id}") })
            .await
    })
    .await
}

/// Invalidates `ITEM(1)` (`"key"`), the whole function (`"function"`) or the namespace.
async fn invalidate(rt: &Runtime, kind: &str) -> tiered::Result<()> {
    match kind {
        "key" => rt.invalidate(&ITEM, &[&1u64]).await,
        "function" => rt.invalidate_site(&ITEM).await,
        _ => rt.invalidate_all().await,
    }
}

fn counts(rt: &Runtime) -> Counts {
    rt.stats().total
}

/// Creates an ACL user that may use only `namespace`'s keys and channels (the minimal rule the
/// README documents); returns its URL.
fn tenant_user(redis: &RedisServer, user: &str, namespace: &str, db: u8) -> String {
    let password = format!(">pw-{user}");
    let keys = format!("~{namespace}:*");
    let channels = format!("&{namespace}:*");
    redis.cmd::<()>(&[
        b"ACL",
        b"SETUSER",
        user.as_bytes(),
        b"on",
        password.as_bytes(),
        keys.as_bytes(),
        channels.as_bytes(),
        b"+@all",
        b"-@dangerous",
        b"+info",
    ]);
    format!("redis://{user}:pw-{user}@127.0.0.1:{}/{db}", redis.port())
}

/// Scenario 11: on one server, two tenants with restricted ACL users (`~t1:* &t1:*`, `~t2:*
/// &t2:*`), two namespaces one of which is a prefix of the other (`shop`, `shop2`), and one
/// namespace on databases 0 and 1. The same function with the same argument computes in each
/// (no instance reads another's value: every first call runs its own body, no L2 hit); then
/// each instance in turn invalidates the key, its function (group) and its whole namespace:
/// every other instance keeps serving its own value from L1 (no foreign eviction, nothing
/// received, no flush). The restricted users see no `NOPERM` (no L2 error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_11_tenants_namespaces_and_databases_stay_isolated() {
    let redis = RedisServer::start();
    let specs: Vec<(&str, &str, String)> = vec![
        ("t1", "t1", tenant_user(&redis, "u1", "t1", 0)),
        ("t2", "t2", tenant_user(&redis, "u2", "t2", 0)),
        ("shop", "shop", redis.url()),
        ("shop2", "shop2", redis.url()),
        (
            "db0",
            "same",
            format!("redis://127.0.0.1:{}/0", redis.port()),
        ),
        (
            "db1",
            "same",
            format!("redis://127.0.0.1:{}/1", redis.port()),
        ),
    ];
    let mut instances = Vec::new();
    for (label, ns, url) in &specs {
        let rt = bounded(
            "build",
            Runtime::builder()
                .namespace(*ns)
                .redis_url(url.as_str())
                .build(),
        )
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        instances.push((*label, rt));
    }
    // The same key everywhere: each computes its own.
    for (label, rt) in &instances {
        assert_eq!(item(rt, label, 1).await, format!("{label}/1"));
        assert_eq!(counts(rt).l2_hits, 0, "{label} read a foreign value");
    }
    for (label, rt) in &instances {
        assert_eq!(item(rt, label, 1).await, format!("{label}/1"));
    }
    let mut foreign = 0;
    for (who, origin) in &instances {
        for kind in ["key", "function", "namespace"] {
            let before: Vec<Counts> = instances.iter().map(|(_, rt)| counts(rt)).collect();
            bounded("invalidate", invalidate(origin, kind))
                .await
                .unwrap_or_else(|e| panic!("{who}: {kind} invalidation: {e}"));
            // Time for a message to arrive, were it to reach anyone.
            tokio::time::sleep(Duration::from_millis(50)).await;
            for ((label, rt), before) in instances.iter().zip(&before) {
                if label == who {
                    continue;
                }
                let now = counts(rt);
                assert_eq!(item(rt, label, 1).await, format!("{label}/1"));
                let kept = counts(rt).l1_hits > now.l1_hits
                    && now.invalidations_received == before.invalidations_received
                    && now.l1_flushes == before.l1_flushes;
                if !kept {
                    foreign += 1;
                    println!("{who}'s {kind} invalidation reached {label}");
                }
            }
            // The origin computes its own value again.
            assert_eq!(item(origin, who, 1).await, format!("{who}/1"));
        }
    }
    let errors: Vec<(&str, u64)> = instances
        .iter()
        .map(|(label, rt)| (*label, counts(rt).l2_errors))
        .collect();
    println!(
        "scenario 11: 6 instances, 18 invalidations (key, function, namespace from each): foreign evictions {foreign}; L2 errors {errors:?}"
    );
    assert_eq!(foreign, 0);
    assert!(
        errors.iter().all(|(_, n)| *n == 0),
        "NOPERM or other errors"
    );
}

/// Scenario 16 (c): the runtime's ACL user changes while it runs. (1) Its channel permission is
/// withdrawn: Redis drops the subscription, the instance flushes L1 and keeps trying (one ERROR
/// a minute), calls are served. (2) Its password is rotated and its connections killed: the
/// runtime cannot reconnect with the old password and never falls back to the `default` user
/// (which has no password here and could read everything): L2 stays off, calls are computed,
/// an invalidation reports its failure, the refusal is logged once. (3) The user is deleted:
/// the same. A runtime built with the new credentials works.
#[test]
fn scenario_16_acl_changes_while_running_fail_closed() {
    let logs = Logs::new();
    logs.block_on(2, async {
        let redis = RedisServer::start();
        let url = tenant_user(&redis, "svc", "acl", 0);
        let rt = bounded(
            "build",
            Runtime::builder()
                .namespace("acl")
                .redis_url(url.as_str())
                .l2_timeout(Duration::from_millis(200))
                .build(),
        )
        .await
        .expect("runtime");
        assert_eq!(item(&rt, "a", 1).await, "a/1");
        assert!(rt.stats().subscribed);

        // (1) The channel permission goes.
        let mark = logs.mark();
        let flushes = counts(&rt).l1_flushes;
        redis.cmd::<()>(&[b"ACL", b"SETUSER", b"svc", b"resetchannels"]);
        wait_until("the subscription to drop", || {
            !rt.stats().subscribed && counts(&rt).l1_flushes > flushes
        })
        .await;
        for id in 0..20 {
            assert_eq!(item(&rt, "a", id).await, format!("a/{id}"));
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        let refused = logs.matching(mark, Level::ERROR, "refuses the invalidation subscription");
        println!(
            "scenario 16 (channel withdrawn): subscription dropped, L1 flushed; {} ERROR line(s) about the refused subscription in 0.6 s of retries",
            refused.len()
        );
        assert_eq!(refused.len(), 1, "logged once, not per retry");
        assert!(!rt.stats().subscribed, "no silent subscription");
        redis.cmd::<()>(&[b"ACL", b"SETUSER", b"svc", b"&acl:*"]);
        wait_until("the subscription to come back", || rt.stats().subscribed).await;

        // (2) The password is rotated and the user's connections are killed.
        let mark = logs.mark();
        redis.cmd::<()>(&[b"ACL", b"SETUSER", b"svc", b"resetpass", b">rotated-pw"]);
        redis.cmd::<i64>(&[b"CLIENT", b"KILL", b"USER", b"svc"]);
        wait_until("L2 to be off", || {
            !rt.stats().l2_connected || counts(&rt).l2_skips > 0
        })
        .await;
        let before = counts(&rt);
        for id in 100..120 {
            assert_eq!(item(&rt, "a", id).await, format!("a/{id}"));
        }
        let after = counts(&rt);
        assert_eq!(after.l2_hits, before.l2_hits, "no L2 read went through");
        assert!(
            bounded("invalidate", rt.invalidate(&ITEM, &[&100u64]))
                .await
                .is_err(),
            "the invalidation reports that Redis did not take it"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let refusals = logs.matching(mark, Level::ERROR, "refuses the configured credentials");
        // Nothing the runtime wrote reached Redis as another user.
        let written: Vec<String> = redis
            .keys()
            .into_iter()
            .filter(|k| (100..120).any(|id| *k == format!("acl:item:<{id}>")))
            .collect();
        println!(
            "scenario 16 (password rotated): 20 calls computed, L2 hits +0, the invalidation failed; {} ERROR line(s) about the refused credentials in 0.6 s; keys written meanwhile {written:?}",
            refusals.len()
        );
        assert_eq!(refusals.len(), 1, "logged once, not per retry");
        assert!(written.is_empty(), "written as the default user");

        // (3) The user is deleted: the same, and the new credentials work in a new runtime.
        redis.cmd::<i64>(&[b"ACL", b"DELUSER", b"svc"]);
        for id in 200..210 {
            assert_eq!(item(&rt, "a", id).await, format!("a/{id}"));
        }
        let url2 = tenant_user(&redis, "svc2", "acl", 0);
        let rt2 = bounded(
            "build",
            Runtime::builder()
                .namespace("acl")
                .redis_url(url2.as_str())
                .build(),
        )
        .await
        .expect("a runtime with the new user");
        assert_eq!(item(&rt2, "b", 300).await, "b/300");
        assert!(rt2.stats().subscribed && rt2.stats().l2_connected);
        assert_eq!(counts(&rt2).l2_errors, 0);
        logs.assert_absent("pw-svc");
        logs.assert_absent("rotated-pw");
    });
}

/// Scenario 15: a unique password (a canary) in every URL, and every error path the test can
/// drive: unusable URLs, a wrong password, an unreachable port, a cluster seed that is no
/// cluster, a server frozen (timeouts), killed (reconnect and resubscribe loops) and back with
/// another password (refused credentials, in a loop). Every event logged at any level (TRACE
/// included), every error's `Display` and `Debug`, and the `Debug` of the builder, the
/// configuration, the runtime and its stats are searched for the canary: it is never there.
/// (TLS failures are covered by `tests/tls`.)
#[test]
fn scenario_15_the_password_never_reaches_logs_errors_or_debug_output() {
    let logs = Logs::new();
    logs.block_on(2, async {
        let canary = "S3cr3t-canary-15";
        let mut redis = RedisServer::start_with(&["--requirepass", canary]);
        let port = redis.port();
        let good = format!("redis://:{canary}@127.0.0.1:{port}/");
        let mut texts: Vec<String> = Vec::new();
        fn error(texts: &mut Vec<String>, what: &str, e: tiered::Error) {
            println!("scenario 15: {what}: {e}");
            texts.push(e.to_string());
            texts.push(format!("{e:?}"));
        }
        let builder = || {
            Runtime::builder()
                .namespace("s15")
                .redis_url(good.as_str())
                .l2_timeout(Duration::from_millis(100))
                .connect_timeout(Duration::from_millis(300))
        };
        // Unusable URLs and a wrong password: errors from build().
        for url in [
            format!("redis://:{canary}@127.0.0.1:notaport/"),
            format!("redis://user:{canary}@[::1/"),
            format!("http://:{canary}@127.0.0.1:{port}/"),
            format!("redis://:{canary}-wrong@127.0.0.1:{port}/"),
        ] {
            match bounded("build", Runtime::builder().redis_url(url.as_str()).build()).await {
                Err(e) => error(&mut texts, "build", e),
                Ok(_) => panic!("built with an unusable URL or a wrong password"),
            }
        }
        match bounded(
            "build",
            Runtime::builder()
                .redis_cluster([good.as_str()])
                .connect_timeout(Duration::from_millis(300))
                .build(),
        )
        .await
        {
            Err(e) => error(&mut texts, "a plain server as a cluster seed", e),
            Ok(rt) => texts.push(format!("{rt:?}")),
        }
        // An unreachable port: a degraded start, logged.
        let nowhere = RedisServer::reserve_port();
        let unreachable = bounded(
            "build",
            Runtime::builder()
                .redis_url(format!("redis://:{canary}@127.0.0.1:{nowhere}/"))
                .connect_timeout(Duration::from_millis(200))
                .build(),
        )
        .await
        .expect("a degraded start");
        // A working runtime through timeouts, a kill, and a password change.
        let b = builder();
        texts.push(format!("{b:?}"));
        texts.push(format!("{:?}", b.clone().validate().expect("valid")));
        let rt = bounded("build", b.build()).await.expect("runtime");
        texts.push(format!("{rt:?}"));
        for id in 0..10 {
            assert_eq!(item(&rt, "s", id).await, format!("s/{id}"));
        }
        redis.freeze();
        for id in 10..15 {
            assert_eq!(item(&rt, "s", id).await, format!("s/{id}"));
        }
        if let Err(e) = rt.invalidate(&ITEM, &[&1u64]).await {
            error(&mut texts, "invalidate while frozen", e);
        }
        redis.thaw();
        tokio::task::block_in_place(|| redis.kill());
        for id in 15..20 {
            assert_eq!(item(&rt, "s", id).await, format!("s/{id}"));
        }
        if let Err(e) = rt.invalidate(&ITEM, &[&2u64]).await {
            error(&mut texts, "invalidate while killed", e);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| redis.restart());
        wait_until("reconnected", || rt.stats().l2_connected && rt.stats().subscribed).await;
        // Another password: every reconnection is refused.
        redis.cmd::<()>(&[b"CONFIG", b"SET", b"requirepass", b"another-password"]);
        {
            let mut admin = redis::Client::open(format!(
                "redis://:another-password@127.0.0.1:{port}/"
            ))
            .and_then(|c| c.get_connection())
            .expect("admin connection");
            for kind in ["pubsub", "normal"] {
                let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg(kind)
                    .arg("SKIPME")
                    .arg("yes")
                    .query(&mut admin);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for id in 20..25 {
            assert_eq!(item(&rt, "s", id).await, format!("s/{id}"));
        }
        texts.push(format!("{:?}", rt.stats()));
        texts.push(format!("{:?}", unreachable.stats()));
        texts.push(format!("{:?}", rt.config()));
        let events = logs.events();
        let leaks: Vec<&String> = texts.iter().filter(|t| t.contains(canary)).collect();
        println!(
            "scenario 15: {} log events captured (all levels), {} error and Debug texts searched; canary found in {} of them",
            events.len(),
            texts.len(),
            leaks.len() + logs.containing(canary).len()
        );
        assert!(leaks.is_empty(), "the password in: {leaks:?}");
        logs.assert_absent(canary);
        assert!(!events.is_empty(), "the error paths logged something");
    });
}

/// Scenario 16 (a), fail closed: with the `default` user open (no password, every permission:
/// Redis's out-of-the-box setup, where a failed `AUTH` leaves a connection logged in as
/// `default`), a wrong password for a named user is `Error::Auth` from `build()`, not a runtime
/// that carries on as `default`; and with the `default` user disabled too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_16_a_wrong_password_never_falls_back_to_the_default_user() {
    let redis = RedisServer::start();
    let _ = tenant_user(&redis, "svc", "fc", 0);
    let wrong = format!("redis://svc:not-the-password@127.0.0.1:{}/", redis.port());
    for variant in ["default user open", "default user disabled"] {
        if variant == "default user disabled" {
            redis.cmd::<()>(&[b"ACL", b"SETUSER", b"default", b"off"]);
        }
        match bounded(
            "build",
            Runtime::builder()
                .namespace("fc")
                .redis_url(wrong.as_str())
                .build(),
        )
        .await
        {
            Err(tiered::Error::Auth { detail, .. }) => {
                println!("scenario 16 ({variant}): refused at build(): {detail}");
            }
            other => panic!("{variant}: expected Error::Auth, got {other:?}"),
        }
    }
}
