//! A test kit for code that uses tiered (feature `testing`): a real `redis-server` per test, a
//! local Redis Cluster, a TCP proxy that breaks the link on purpose, and a counter of body
//! runs, the same kit tiered's own tests use.
//!
//! Test what your caching does under faults, against real Redis, without a server someone else
//! started: [`RedisServer::start`] spawns `redis-server` on a free `127.0.0.1` port with
//! `--save "" --appendonly no` (nothing on disk) and kills it when the value is dropped;
//! [`Cluster::start`] forms a local cluster the same way; [`Proxy`] sits between your runtime
//! and the server and holds, swallows, delays, refuses or resets the traffic; [`BodyRuns`]
//! counts how often a memoized body ran. The faults a server offers besides the proxy: kill it
//! and start it again empty on the same port ([`RedisServer::kill`], [`RedisServer::restart`]),
//! freeze and thaw it ([`RedisServer::freeze`], [`RedisServer::thaw`]: SIGSTOP/SIGCONT, the TCP
//! connections stay up), pause its clients ([`RedisServer::client_pause`]), block its event
//! loop ([`RedisServer::debug_sleep`]) and cap its memory ([`RedisServer::maxmemory`]).
//!
//! This is test code: every function here **panics** (fails the test) when its environment
//! is not what a test needs: `redis-server` not on `PATH` (the message says how to install
//! it; `TIERED_REDIS_SERVER` names another binary), a server that does not start or answer
//! within [`BOUND`], a command the server refuses. Never enable the feature in production
//! builds: put it on a dev-dependency,
//!
//! ```toml
//! [dev-dependencies]
//! tiered = { version = "0.1", features = ["testing"] }
//! ```
//!
//! Two instances of a service, one Redis: the second instance reads the first one's value
//! from Redis, and the body ran once.
//!
//! ```
//! use std::sync::LazyLock;
//!
//! use tiered::testing::{BodyRuns, RedisServer};
//! use tiered::{Runtime, tiered_cache};
//!
//! static RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);
//!
//! #[tiered_cache(key = "user:<id>", ttl = "60s")]
//! async fn user_name(id: u64) -> String {
//!     RUNS.hit();
//!     format!("user {id}") // the slow query
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tiered::Error> {
//! let redis = RedisServer::start(); // killed when dropped
//! let a = Runtime::builder().namespace("app").redis_url(redis.url()).build().await?;
//! let b = Runtime::builder().namespace("app").redis_url(redis.url()).build().await?;
//!
//! assert_eq!(a.scope(user_name(7)).await, "user 7"); // computed by instance A
//! assert_eq!(b.scope(user_name(7)).await, "user 7"); // read from Redis by instance B
//! RUNS.assert_runs(1);
//! assert_eq!(b.stats().total.l2_hits, 1);
//! assert_eq!(redis.keys(), ["app:user:<7>"]); // what Redis holds: the key format is in the README
//! # Ok(()) }
//! ```
//!
//! Redis stops answering (a half-open link, as when a network partition drops every packet):
//! calls are still answered, by the body, within the L2 time box.
//!
//! ```
//! use std::sync::LazyLock;
//! use std::time::Duration;
//!
//! use tiered::testing::{BodyRuns, Mode, Proxy, RedisServer, bounded};
//! use tiered::{Runtime, tiered_cache};
//!
//! static RUNS: LazyLock<BodyRuns> = LazyLock::new(BodyRuns::default);
//!
//! #[tiered_cache(key = "price:<sku>", ttl = "60s")]
//! async fn price(sku: u32) -> u64 {
//!     RUNS.hit();
//!     u64::from(sku) * 100
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tiered::Error> {
//! let redis = RedisServer::start();
//! let proxy = Proxy::start(redis.addr()).await; // the runtime talks to Redis through it
//! let rt = Runtime::builder()
//!     .namespace("shop")
//!     .redis_url(proxy.url())
//!     .l2_timeout(Duration::from_millis(50))
//!     .build()
//!     .await?;
//!
//! proxy.set_mode(Mode::Blackhole); // Redis unreachable, no connection closed
//! for sku in 0..5 {
//!     // `bounded` fails the test if the call hangs.
//!     assert_eq!(bounded("price", rt.scope(price(sku))).await, u64::from(sku) * 100);
//! }
//! RUNS.assert_runs(5); // every call was answered by its body
//! assert!(rt.stats().total.l2_timeouts + rt.stats().total.l2_skips >= 5);
//! # Ok(()) }
//! ```
#![allow(clippy::missing_panics_doc)]

pub mod cluster;
pub mod proxy;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use cluster::{Cluster, key_slot};
pub use proxy::{Mode, Proxy, Target};

/// How long the kit waits for anything (a server to start, [`bounded`], [`wait_until`]) before
/// it fails the test: a bug is a failure, not a hang.
pub const BOUND: Duration = Duration::from_secs(10);

/// Awaits `fut`, or fails the test (panics, naming `what`) after [`BOUND`].
pub async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("`{what}` did not finish within {BOUND:?}: hung"),
    }
}

/// Polls `cond` every 2 ms until it holds, failing the test after [`BOUND`]; returns how long
/// it took.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    bounded(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    start.elapsed()
}

/// Counts the runs of a memoized body: call [`hit`](BodyRuns::hit) first thing in the body,
/// then assert how often it ran. Clones share one count.
#[derive(Clone, Default, Debug)]
pub struct BodyRuns(Arc<AtomicUsize>);

impl BodyRuns {
    /// Records one run and returns the new count.
    pub fn hit(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Runs so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Fails the test unless the body ran exactly `expected` times so far.
    #[track_caller]
    pub fn assert_runs(&self, expected: usize) {
        let runs = self.get();
        assert_eq!(
            runs, expected,
            "the body ran {runs} times, expected {expected}"
        );
    }
}

const INSTALL_HINT: &str = "redis-server was not found on PATH. These tests need a real Redis 7: \
install it with `sudo apt-get install -y redis-server` (Debian/Ubuntu), or run the README's \
test command, which installs it when missing.";

/// A `redis-server` process owned by the test, on a free `127.0.0.1` port, with nothing on
/// disk (`--save "" --appendonly no`) and `DEBUG` enabled; SIGKILLed when dropped.
pub struct RedisServer {
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server on a free port with extra `redis-server` arguments
    /// (for example `["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last_err = String::new();
        // A freed port can be taken by someone else before the server binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            let mut s = RedisServer {
                port,
                extra: extra.clone(),
                child: None,
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// A port on which nothing listens (for "Redis unreachable" tests); `start_on` later binds it.
    pub fn reserve_port() -> u16 {
        free_port()
    }

    /// Starts a server on a given port (for "Redis appears later" tests).
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        if let Err(e) = s.spawn() {
            panic!("could not start redis-server on port {port}: {e}");
        }
        s
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new(server_binary());
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // `DEBUG SLEEP` (refused by default since Redis 7.0); redis-test does the same.
            "--enable-debug-command",
            "yes",
        ])
        .args(["--dir", &std::env::temp_dir().to_string_lossy()])
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(e) => return Err(format!("spawn failed: {e}")),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited at start ({status}); port {port} taken?"
                ));
            }
            // Whoever answers on the port must be our process: a server another test (or
            // another test binary) started on the same port a moment earlier would answer
            // while ours fails to bind it.
            match serving_pid(self.port, self.password()) {
                Some(pid) if Some(pid) == self.child.as_ref().map(Child::id) => return Ok(()),
                Some(pid) => {
                    self.kill();
                    return Err(format!(
                        "port {port} is served by another redis-server ({pid})"
                    ));
                }
                None => {}
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err("redis-server did not answer INFO within 10 s".into())
    }

    fn password(&self) -> Option<&str> {
        let i = self.extra.iter().position(|a| a == "--requirepass")?;
        self.extra.get(i + 1).map(String::as_str)
    }

    /// Whether the process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, e.g. the upstream of a [`Proxy`].
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/` (with the password of `--requirepass`, if given).
    pub fn url(&self) -> String {
        match self.password() {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// SIGKILLs the server (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): TCP stays up, nothing is answered. Returns once the
    /// process is stopped (the signal is delivered asynchronously).
    pub fn freeze(&self) {
        self.signal("-STOP");
        let deadline = Instant::now() + BOUND;
        while self.process_state() != Some('T') {
            assert!(
                Instant::now() < deadline,
                "redis-server did not stop on SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The state letter of the server process in `/proc/PID/stat` (`T`: stopped).
    fn process_state(&self) -> Option<char> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `PID (comm) S …`: the state follows the last `)` (a command name may hold one).
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .map(|c| c.id().to_string())
            .expect("server running");
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill {sig} {pid} failed");
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("could not restart redis-server on port {}: {e}", self.port);
        }
    }

    /// A plain synchronous connection for inspecting and seeding the server.
    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("test redis url");
        client.get_connection().expect("connect to the test redis")
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> T {
        let mut c = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn()).expect("redis command")
    }

    /// Creates the ACL user `user` (password `pw-{user}`) with the keys of `namespace`, every
    /// channel and every command but the dangerous ones; returns its URL.
    pub fn acl_user(&self, user: &str, namespace: &str) -> String {
        let password = format!(">pw-{user}");
        let keys = format!("~{namespace}:*");
        self.cmd::<()>(&[
            b"ACL",
            b"SETUSER",
            user.as_bytes(),
            b"on",
            password.as_bytes(),
            keys.as_bytes(),
            b"&*",
            b"+@all",
            b"-@dangerous",
        ]);
        format!("redis://{user}:pw-{user}@127.0.0.1:{}/", self.port)
    }

    /// Raw bytes under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.cmd(&[b"GET", key.as_bytes()])
    }

    /// Writes raw bytes under `key` (no expiry).
    pub fn set(&self, key: &str, value: &[u8]) {
        self.cmd::<()>(&[b"SET", key.as_bytes(), value]);
    }

    /// Remaining TTL of `key` in ms (`-2` missing, `-1` no expiry).
    pub fn pttl(&self, key: &str) -> i64 {
        self.cmd(&[b"PTTL", key.as_bytes()])
    }

    /// Every key (test servers are small), the runtime's own (`{namespace}:%~…`) included.
    pub fn all_keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.cmd(&[b"KEYS", b"*"]);
        k.sort();
        k
    }

    /// Every key but the runtime's own (`{namespace}:%~…`, e.g. the generations hash).
    pub fn keys(&self) -> Vec<String> {
        let mut k = self.all_keys();
        k.retain(|k| !k.contains(":%~"));
        k
    }

    /// Resets `INFO commandstats`.
    pub fn reset_stats(&self) {
        self.cmd::<()>(&[b"CONFIG", b"RESETSTAT"]);
    }

    /// How many times `command` (lower case, e.g. `get`) ran since the last reset, from
    /// `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.cmd(&[b"INFO", b"commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Runs one command and returns its reply or the server's error (e.g. `OOM`).
    pub fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> redis::RedisResult<T> {
        let mut c = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn())
    }

    /// `CLIENT PAUSE ms ALL|WRITE`: returns at once; the server stops serving every command
    /// ([`Pause::All`]) or every write, `PUBLISH` included ([`Pause::Write`]), from other
    /// clients for `ms` milliseconds. Keys neither expire nor are evicted meanwhile.
    pub fn client_pause(&self, ms: u64, what: Pause) {
        let what: &[u8] = match what {
            Pause::All => b"ALL",
            Pause::Write => b"WRITE",
        };
        self.cmd::<()>(&[b"CLIENT", b"PAUSE", ms.to_string().as_bytes(), what]);
    }

    /// `DEBUG SLEEP secs`: blocks the whole server (its event loop) for `secs` seconds. The
    /// command is sent on a connection of its own, and this returns once the server has
    /// stopped answering (a `PING` on a third connection went unanswered for 50 ms), without
    /// waiting for the sleep to end: its reply is read on a thread. Join the handle to wait
    /// until the server answers again.
    pub fn debug_sleep(&self, secs: f64) -> std::thread::JoinHandle<String> {
        use std::io::Write;
        let mut s = self.raw_conn();
        let secs = secs.to_string();
        s.write_all(&resp(&[b"DEBUG", b"SLEEP", secs.as_bytes()]))
            .expect("send DEBUG SLEEP");
        let mut probe = self.raw_conn();
        let _ = probe.set_read_timeout(Some(Duration::from_millis(50)));
        let deadline = Instant::now() + BOUND;
        loop {
            probe.write_all(&resp(&[b"PING"])).expect("send PING");
            if read_line(&mut probe).is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "DEBUG SLEEP never took effect");
        }
        std::thread::spawn(move || {
            // The server answers when it wakes up; a bound keeps a bug from hanging the test.
            let _ = s.set_read_timeout(Some(BOUND));
            read_line(&mut s)
        })
    }

    /// A raw connection to the server, authenticated if it has a password.
    fn raw_conn(&self) -> std::net::TcpStream {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        if let Some(pw) = self.password() {
            s.write_all(&resp(&[b"AUTH", pw.as_bytes()]))
                .expect("send AUTH");
            read_line(&mut s);
        }
        s
    }

    /// `CONFIG SET maxmemory-policy policy` then `CONFIG SET maxmemory bytes` (`0`: no limit).
    /// `policy` is one of Redis's, e.g. `noeviction` or `allkeys-lru`.
    pub fn maxmemory(&self, bytes: u64, policy: &str) {
        self.cmd::<()>(&[b"CONFIG", b"SET", b"maxmemory-policy", policy.as_bytes()]);
        self.cmd::<()>(&[
            b"CONFIG",
            b"SET",
            b"maxmemory",
            bytes.to_string().as_bytes(),
        ]);
    }

    /// A field of `INFO` (e.g. `used_memory`, `evicted_keys`), `None` if absent.
    pub fn info_field(&self, name: &str) -> Option<String> {
        let info: String = self.cmd(&[b"INFO", b"all"]);
        let prefix = format!("{name}:");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_owned())
    }
}

/// What [`RedisServer::client_pause`] pauses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Every command.
    All,
    /// Writes (`SET`, `DEL`, `EVAL`, `PUBLISH` …); reads and `PING` go on.
    Write,
}

/// One command in RESP (an array of bulk strings).
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply line (`+OK`, `-ERR …`) from a raw connection, without its `\r\n`; an empty
/// string if the connection failed or closed first.
fn read_line(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(line.strip_suffix(b"\r\n").unwrap_or(&line)).into_owned()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server`, or the binary named by `TIERED_REDIS_SERVER`.
fn server_binary() -> String {
    std::env::var("TIERED_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// The message a test fails with when the server binary cannot be found.
pub fn install_hint() -> &'static str {
    INSTALL_HINT
}

fn free_port() -> u16 {
    // Below 55535 so that a cluster bus port (+10000) still fits.
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if port < 55535 {
            return port;
        }
    }
    panic!("no free port below 55535");
}

/// The `process_id` of the server answering `INFO server` on `port` (raw socket, no client
/// library), used while waiting for startup; `None` while nothing answers.
fn serving_pid(port: u16, password: Option<&str>) -> Option<u32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    if let Some(pw) = password {
        s.write_all(&resp(&[b"AUTH", pw.as_bytes()])).ok()?;
        read_line(&mut s);
    }
    s.write_all(&resp(&[b"INFO", b"server"])).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1)
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
}
