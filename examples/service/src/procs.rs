//! Child processes for the test and the comparison: a private `redis-server` and the service
//! binary, each stopped when dropped.
//!
//! [`RedisServer`] is the load comparison's own spawner: a server on a free 127.0.0.1 port with
//! `--save "" --appendonly no`, checked to be ours (`INFO server`'s `process_id`) before it is
//! used, whose failures are errors, not panics. (The test uses the test kit's,
//! `tiered::testing::RedisServer`, which fails the test instead.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child gets to start (answer, or print its `listening on` line).
pub const START_BOUND: Duration = Duration::from_secs(30);

/// The message a run fails with when `redis-server` is not installed.
pub const REDIS_INSTALL_HINT: &str = "redis-server was not found on PATH: install it with \
`apt-get install -y redis-server` (Debian/Ubuntu), or run ./scripts/test.sh, which installs it \
when missing";

/// A `redis-server` process of ours, SIGKILLed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts a server on a free 127.0.0.1 port, trying up to five ports; an error says why
    /// (with [`REDIS_INSTALL_HINT`] when `redis-server` is not installed).
    pub fn spawn() -> Result<RedisServer, String> {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start() {
                Ok(server) => return Ok(server),
                Err(e) if e == REDIS_INSTALL_HINT => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start() -> Result<RedisServer, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => REDIS_INSTALL_HINT.to_owned(),
                _ => format!("spawn failed: {e}"),
            })?;
        let mut server = RedisServer { port, child };
        let deadline = Instant::now() + START_BOUND;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "redis-server exited at start ({status}); port {port} taken?"
                ));
            }
            match serving_pid(port) {
                Some(pid) if pid == server.child.id() => return Ok(server),
                Some(pid) => {
                    return Err(format!("port {port} is served by another process ({pid})"));
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        Err(format!(
            "redis-server did not answer within {START_BOUND:?}"
        ))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; someone may take it before it is bound).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `process_id` of the Redis server answering `INFO server` on `port`, `None` while
/// nothing answers.
fn serving_pid(port: u16) -> Option<u32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").ok()?;
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

/// A running service process: started with [`Service::start`], stopped (SIGTERM, then
/// SIGKILL after 10 s) when dropped or by [`Service::stop`]. Its stdout after the
/// `listening on` line and its stderr are passed through, each line prefixed with the
/// instance's label.
#[derive(Debug)]
pub struct Service {
    label: String,
    url: String,
    child: Option<Child>,
}

/// The prefix of the line the service prints once it listens.
pub const LISTENING: &str = "listening on ";

impl Service {
    /// Runs `binary` with `args` and the extra environment `env`, and waits (at most
    /// [`START_BOUND`]) for its `listening on http://…` line. An error carries what the
    /// process printed when it exited first.
    pub fn start(
        label: &str,
        binary: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Service, String> {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("could not run {}: {e}", binary.display()))?;
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            let label = label.to_owned();
            std::thread::spawn(move || {
                let mut sent = false;
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if !sent && line.starts_with(LISTENING) {
                        sent = tx.send(line).is_ok();
                    } else {
                        println!("[{label}] {line}");
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let label = label.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[{label}] {line}");
                }
            });
        }
        drop(tx);
        let mut service = Service {
            label: label.to_owned(),
            url: String::new(),
            child: Some(child),
        };
        let deadline = Instant::now() + START_BOUND;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let url = line[LISTENING.len()..].trim().to_owned();
                    service.url = url;
                    return Ok(service);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the line: the process is exiting.
                    let status = service.wait_exit(Duration::from_secs(5));
                    return Err(format!(
                        "service {label} exited before listening ({status}); its stderr is above"
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "service {label} printed no `listening on` line within {START_BOUND:?}"
                ));
            }
        }
    }

    /// `http://127.0.0.1:PORT`, from the `listening on` line.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_exit(&mut self, bound: Duration) -> String {
        let Some(child) = self.child.as_mut() else {
            return "already stopped".into();
        };
        let deadline = Instant::now() + bound;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return status.to_string();
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.child = None;
                    return format!("killed after {bound:?}");
                }
            }
        }
    }

    /// Asks the process to shut down (SIGTERM: a graceful shutdown, which drops a per-run
    /// database) and waits for it, SIGKILL after 10 s; returns how it ended.
    pub fn stop(&mut self) -> String {
        let Some(pid) = self.pid() else {
            return "already stopped".into();
        };
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let how = self.wait_exit(Duration::from_secs(10));
        if how != "exit status: 0" {
            eprintln!("[{}] stopped: {how}", self.label);
        }
        how
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}
