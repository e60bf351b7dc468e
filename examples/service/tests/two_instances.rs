//! Two processes of the real service binary on one PostgreSQL database and one Redis: a
//! value computed by one is served to the other from Redis, and a `PUT` on one reaches the
//! other's cache through the invalidation bus.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (`DATABASE_URL` overrides the admin URL) and
//! `redis-server` on the PATH; without them the test fails and says how to install them.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tiered::testing::RedisServer;
use tiered_service_example::config::DEFAULT_DATABASE_URL;
use tiered_service_example::db;
use tiered_service_example::http::Client;
use tiered_service_example::procs::Service;

/// Ceiling of every wait: catches a hang, measures nothing.
const BOUND: Duration = Duration::from_secs(10);

const POSTGRES_HINT: &str = "PostgreSQL does not answer (default: 127.0.0.1:5432). This \
test needs a real PostgreSQL (trust auth for user postgres, or DATABASE_URL set to an admin \
URL): install it with `apt-get install -y postgresql` and start it with `pg_ctlcluster 15 main \
start` (Debian), or run ./scripts/test.sh, which does both";

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// Fails the test with [`POSTGRES_HINT`] when nothing answers at the admin URL's address.
fn require_postgres(admin: &str) {
    let options = db::options_for(admin, "postgres")
        .unwrap_or_else(|e| panic!("DATABASE_URL {admin:?} is not a PostgreSQL URL: {e}"));
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()
        .into_iter()
        .flatten()
        .any(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{POSTGRES_HINT} (nothing answers at {host}:{port})"
    );
}

/// A database created for this test, dropped (with its sessions) when the value is dropped,
/// also when the test fails.
struct TestDb {
    admin: String,
    name: String,
}

impl TestDb {
    async fn create(admin: &str) -> TestDb {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis();
        let name = format!("tiered_service_test_{}_{millis}", std::process::id());
        let created = db::create_database(admin, &name)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_HINT}: creating database {name}: {e}"));
        assert!(created, "database {name} existed before the test");
        TestDb {
            admin: admin.to_owned(),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Its own thread and runtime: a destructor may run inside the test's runtime.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(db::drop_database(&admin, &name))
        })
        .join();
        match dropped {
            Ok(Ok(())) => println!("dropped database {}", self.name),
            other => eprintln!("could not drop database {}: {other:?}", self.name),
        }
    }
}

async fn get(client: &mut Client, path: &str) -> tiered_service_example::http::Response {
    client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn stats(client: &mut Client) -> Value {
    let r = get(client, "/stats").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().expect("stats JSON")
}

fn field(stats: &Value, name: &str) -> u64 {
    stats
        .get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("/stats has no number `{name}`: {stats}"))
}

async fn user_name(client: &mut Client, id: u64) -> String {
    let r = get(client, &format!("/users/{id}")).await;
    assert_eq!(r.status, 200, "GET /users/{id}: {}", r.text());
    let user = r.json().expect("user JSON");
    user.get("name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("user without a name: {user}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_one_instance_reaches_the_other() {
    let admin = admin_url();
    require_postgres(&admin);
    let started = Instant::now();
    let redis = RedisServer::start();
    let test_db = TestDb::create(&admin).await;
    let namespace = format!("svc-test-{}", std::process::id());
    let redis_url = redis.url();
    let env = [
        ("DATABASE_URL", admin.as_str()),
        ("SERVICE_DB", test_db.name.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("PORT", "0"),
        ("TIERED_NAMESPACE", namespace.as_str()),
        ("CACHE", "on"),
        ("RUST_LOG", "warn"),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_tiered-service-example"));
    // A creates the schema and seeds it; B finds it seeded.
    let a = Service::start("A", binary, &[], &env).unwrap_or_else(|e| panic!("{e}"));
    let b = Service::start("B", binary, &[], &env).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "A at {}, B at {}, Redis on port {}, database {} (started in {:?})",
        a.url(),
        b.url(),
        redis.port(),
        test_db.name,
        started.elapsed()
    );
    let mut ca = Client::new(a.url()).expect("url").with_timeout(BOUND);
    let mut cb = Client::new(b.url()).expect("url").with_timeout(BOUND);

    let (a0, b0) = (stats(&mut ca).await, stats(&mut cb).await);
    assert_eq!(field(&a0, "db_queries"), 0, "seeding is not counted: {a0}");
    assert_eq!(field(&b0, "db_queries"), 0, "{b0}");
    assert_eq!(a0.get("subscribed"), Some(&Value::Bool(true)), "{a0}");
    assert_eq!(b0.get("subscribed"), Some(&Value::Bool(true)), "{b0}");

    // First reads: A computes (one query) and fills Redis; B reads A's value from Redis.
    assert_eq!(user_name(&mut ca, 1).await, "user-1");
    assert_eq!(user_name(&mut cb, 1).await, "user-1");
    let (a1, b1) = (stats(&mut ca).await, stats(&mut cb).await);
    println!(
        "first GET /users/1: A db_queries {} computations {}; B db_queries {} l2_hits {}",
        field(&a1, "db_queries"),
        field(&a1, "computations"),
        field(&b1, "db_queries"),
        field(&b1, "l2_hits")
    );
    assert_eq!(field(&a1, "db_queries"), 1, "A computes once: {a1}");
    assert_eq!(field(&a1, "computations"), 1, "{a1}");
    assert_eq!(field(&b1, "db_queries"), 0, "B is served from Redis: {b1}");
    assert_eq!(field(&b1, "l2_hits"), 1, "{b1}");

    // Second reads: no query anywhere (A: L1; B: L1 or Redis).
    assert_eq!(user_name(&mut ca, 1).await, "user-1");
    assert_eq!(user_name(&mut cb, 1).await, "user-1");
    let (a2, b2) = (stats(&mut ca).await, stats(&mut cb).await);
    println!(
        "second GET /users/1: A db_queries {} l1_hits {}; B db_queries {} l1_hits {} l2_hits {}",
        field(&a2, "db_queries"),
        field(&a2, "l1_hits"),
        field(&b2, "db_queries"),
        field(&b2, "l1_hits"),
        field(&b2, "l2_hits")
    );
    assert_eq!(field(&a2, "db_queries"), 1, "{a2}");
    assert_eq!(field(&a2, "l1_hits"), 1, "{a2}");
    assert_eq!(field(&b2, "db_queries"), 0, "{b2}");

    // A renames user 1: the UPDATE, then the invalidation, which B receives.
    let received_before = field(&b2, "invalidations_received");
    let r = ca
        .put_json("/users/1", r#"{"name":"renamed-by-a"}"#)
        .await
        .expect("PUT /users/1");
    let put_done = Instant::now();
    assert_eq!(r.status, 200, "PUT: {}", r.text());
    assert_eq!(
        r.header(tiered_service_example::api::INVALIDATION_FAILED_HEADER),
        None,
        "the invalidation reached Redis"
    );
    assert_eq!(
        r.json().expect("user JSON").get("name"),
        Some(&Value::from("renamed-by-a"))
    );
    let delay = loop {
        let s = stats(&mut cb).await;
        if field(&s, "invalidations_received") > received_before {
            break put_done.elapsed();
        }
        assert!(
            put_done.elapsed() < BOUND,
            "B received no invalidation within {BOUND:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    println!("B received the invalidation {delay:?} after A's PUT answered");
    let a3 = stats(&mut ca).await;
    assert_eq!(field(&a3, "db_queries"), 2, "the UPDATE: {a3}");
    assert_eq!(field(&a3, "invalidations_sent"), 1, "{a3}");

    // B computes the new value (one query) and fills Redis; A reads it from there.
    assert_eq!(user_name(&mut cb, 1).await, "renamed-by-a");
    assert_eq!(user_name(&mut ca, 1).await, "renamed-by-a");
    let (a4, b4) = (stats(&mut ca).await, stats(&mut cb).await);
    println!(
        "after the PUT: A db_queries {} (SELECT + UPDATE), B db_queries {} (SELECT)",
        field(&a4, "db_queries"),
        field(&b4, "db_queries")
    );
    assert_eq!(field(&b4, "db_queries"), 1, "B recomputes once: {b4}");
    assert_eq!(
        field(&a4, "db_queries"),
        2,
        "A reads B's value from Redis: {a4}"
    );

    // A missing user is a 404, and the answer "no such user" is cached too.
    for _ in 0..2 {
        let r = get(&mut ca, "/users/999999").await;
        assert_eq!(r.status, 404, "{}", r.text());
    }
    assert_eq!(
        field(&stats(&mut ca).await, "db_queries"),
        3,
        "one query for two 404s"
    );

    // Orders, and the Prometheus scrape.
    let r = get(&mut cb, "/users/2/orders").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let orders = r.json().expect("orders JSON");
    assert_eq!(
        orders.as_array().map(Vec::len),
        Some(db::SEED_ORDERS_PER_USER as usize),
        "{orders}"
    );
    let r = get(&mut ca, "/metrics").await;
    assert_eq!(r.status, 200);
    let scrape = r.text();
    let sent = format!(
        "tiered_invalidations_sent_total{{namespace=\"{namespace}\",site=\"tiered_service_example::cache::get_user\"}} 1"
    );
    assert!(
        scrape.lines().any(|l| l == sent),
        "no `{sent}` in the scrape:\n{scrape}"
    );
    println!("whole test: {:?}", started.elapsed());
}
