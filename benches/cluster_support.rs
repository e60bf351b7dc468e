//! A private local Redis Cluster for the K workloads: `masters` nodes (no replicas) started with
//! `--cluster-enabled yes` on free ports of 127.0.0.1 (below 55535, so that each bus port,
//! +10000, fits), joined with `redis-cli --cluster create … --cluster-replicas 0
//! --cluster-yes` (retried), ready once every node reports `cluster_state:ok`, all 16384 slots
//! assigned and every node known. Every node is killed when the value is dropped, and its
//! directory (holding its `nodes.conf`) removed. Blocking: start it on a blocking thread.
//!
//! A compact version of `tests/support/cluster.rs` (which depends on the tests' support module).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// How long a cluster may take to form.
const FORM_WITHIN: Duration = Duration::from_secs(30);

/// One node: its port and process.
pub struct Node {
    pub port: u16,
    child: Child,
}

impl Node {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// A running local cluster (see the module docs).
pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts `masters` (≥ 3) master nodes and waits until the cluster is ready.
    pub fn start(masters: usize) -> Result<Cluster, String> {
        if masters < 3 {
            return Err("a Redis Cluster needs at least 3 masters".into());
        }
        let dir = std::env::temp_dir().join(format!(
            "tiered-bench-cluster-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..masters {
            let node = cluster.start_node()?;
            cluster.nodes.push(node);
        }
        cluster.create()?;
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn start_node(&self) -> Result<Node, String> {
        let mut last = String::new();
        // A freed port may be taken by someone else before the server binds it: retry.
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port: {e}"))?
                .port();
            if port >= 55_535 {
                continue;
            }
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run redis-server: {e}"))?;
            let mut node = Node { port, child };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(status)) = node.child.try_wait() {
                    last = format!("redis-server exited at start-up ({status})");
                    break;
                }
                if super::answers_as(port, node.child.id()) {
                    return Ok(node);
                }
                if Instant::now() >= deadline {
                    last = format!("cluster node on port {port} did not answer within 5 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // dropping `node` kills it
        }
        Err(last)
    }

    fn create(&self) -> Result<(), String> {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut last = String::new();
        for _ in 0..5 {
            let out = Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output();
            match out {
                Ok(o) if o.status.success() => return Ok(()),
                Ok(o) => last = String::from_utf8_lossy(&o.stdout).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(
                        "redis-cli not found on PATH (apt-get install -y redis-tools)".into(),
                    );
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("redis-cli --cluster create failed: {last}"))
    }

    fn wait_ready(&self) -> Result<(), String> {
        let start = Instant::now();
        let n = self.nodes.len().to_string();
        while start.elapsed() < FORM_WITHIN {
            let formed = self.nodes.iter().all(|node| {
                let Ok(info) = node_cmd::<String>(node.port, &["CLUSTER", "INFO"]) else {
                    return false;
                };
                field(&info, "cluster_state") == Some("ok")
                    && field(&info, "cluster_slots_assigned") == Some("16384")
                    && field(&info, "cluster_known_nodes") == Some(n.as_str())
            });
            if formed {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the cluster did not become ready within {FORM_WITHIN:?}"
        ))
    }

    /// `redis://127.0.0.1:<port>/` of every node, in start order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// `(first slot, last slot, master port)` of every slot range (`CLUSTER SLOTS`).
    pub fn slot_ranges(&self) -> Result<Vec<(u16, u16, u16)>, String> {
        let reply: redis::Value = node_cmd(self.nodes[0].port, &["CLUSTER", "SLOTS"])?;
        let redis::Value::Array(ranges) = reply else {
            return Err("CLUSTER SLOTS: not an array".into());
        };
        let mut out = Vec::new();
        for r in ranges {
            if let redis::Value::Array(parts) = r
                && let [
                    redis::Value::Int(from),
                    redis::Value::Int(to),
                    redis::Value::Array(master),
                    ..,
                ] = parts.as_slice()
                && let Some(redis::Value::Int(port)) = master.get(1)
            {
                out.push((*from as u16, *to as u16, *port as u16));
            }
        }
        Ok(out)
    }

    /// Index (into `nodes`) of the master that serves `key`.
    pub fn master_of(&self, ranges: &[(u16, u16, u16)], key: &str) -> Option<usize> {
        let slot = key_slot(key);
        let port = ranges.iter().find(|(a, b, _)| (*a..=*b).contains(&slot))?.2;
        self.nodes.iter().position(|n| n.port == port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear(); // kills every node
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One command on the node at `port` (blocking, its own connection).
pub fn node_cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .map_err(|e| format!("client: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| format!("connect to {port}: {e}"))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
        .map_err(|e| format!("{} on {port}: {e}", args.join(" ")))
}

/// The cluster slot of `key` (CRC16/XMODEM of the key, or of its `{hash tag}`, mod 16384).
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|b| *b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// `name:value` of a `CLUSTER INFO` / `INFO` reply.
pub fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}
