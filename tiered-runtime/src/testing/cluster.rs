//! A local Redis Cluster per test: `masters` nodes (and `replicas` per master) started with
//! `--cluster-enabled yes` on free ports (each below 55535, so its bus port, +10000, fits),
//! joined with `redis-cli --cluster create … --cluster-replicas R --cluster-yes` (retried, as
//! redis-rs's own test harness does), and ready once every node reports `cluster_state:ok` with
//! all 16384 slots assigned and every master has its replicas attached. Every node is killed
//! when the value is dropped, and its `nodes.conf` removed.
//!
//! A cluster is 3 or more processes and takes a few seconds to form on 2 cores, so clusters are
//! built one at a time in a process: [`Cluster::start`] holds a process-wide lock for the
//! cluster's lifetime (tests of one binary run in parallel threads).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::RedisServer;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static NEXT_CONF: AtomicUsize = AtomicUsize::new(0);

/// How long a cluster may take to form before the test fails.
const FORM_WITHIN: Duration = Duration::from_secs(30);

/// A running local cluster (see the module docs).
pub struct Cluster {
    nodes: Vec<RedisServer>,
    confs: Vec<std::path::PathBuf>,
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts `masters` master nodes (at least 3, as `redis-cli --cluster create` requires)
    /// and waits until the cluster is ready.
    pub fn start(masters: usize) -> Cluster {
        Self::start_with_replicas(masters, 0)
    }

    /// Starts `masters` masters with `replicas` replicas each and waits until the cluster is
    /// ready, replicas attached.
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Cluster {
        Self::start_with(masters, replicas, &[])
    }

    /// [`start_with_replicas`](Self::start_with_replicas) with extra `redis-server` arguments
    /// for every node (e.g. `--cluster-require-full-coverage no`).
    pub fn start_with(masters: usize, replicas: usize, extra: &[&str]) -> Cluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes = Vec::new();
        let mut confs = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let conf = format!(
                "tiered-nodes-{}-{}.conf",
                std::process::id(),
                NEXT_CONF.fetch_add(1, Ordering::Relaxed)
            );
            confs.push(std::env::temp_dir().join(&conf));
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "1000",
            ];
            args.extend_from_slice(extra);
            nodes.push(RedisServer::start_with(&args));
        }
        let cluster = Cluster {
            nodes,
            confs,
            _turn: turn,
        };
        cluster.create(replicas);
        cluster.wait_ready(masters, replicas);
        cluster
    }

    fn create(&self, replicas: usize) {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut last = String::new();
        for _ in 0..5 {
            let out = Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .output();
            match out {
                Ok(o) if o.status.success() => return,
                Ok(o) => last = String::from_utf8_lossy(&o.stdout).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "redis-cli was not found on PATH: install the Debian package redis-tools (it comes with redis-server), or run the README's test command"
                ),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-cli --cluster create failed: {last}");
    }

    fn wait_ready(&self, masters: usize, replicas: usize) {
        let start = Instant::now();
        while start.elapsed() < FORM_WITHIN {
            let formed = self.nodes.iter().all(|n| {
                let info = n.cmd::<String>(&[b"CLUSTER", b"INFO"]);
                field(&info, "cluster_state") == Some("ok")
                    && field(&info, "cluster_slots_assigned") == Some("16384")
                    && field(&info, "cluster_known_nodes")
                        == Some(self.nodes.len().to_string().as_str())
            });
            // Every master has its replicas attached and in sync.
            if formed && self.masters().len() == masters {
                let attached = self.masters().iter().all(|m| {
                    let info = m.cmd::<String>(&[b"INFO", b"replication"]);
                    let online = info
                        .lines()
                        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                        .count();
                    online >= replicas
                });
                if attached {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not become ready within {FORM_WITHIN:?}");
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let live = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a live node");
        let slot: i64 = live.cmd(&[b"CLUSTER", b"KEYSLOT", key.as_bytes()]);
        u16::try_from(slot).expect("a slot")
    }

    /// Moves `slot` to the master `to` (an index into [`nodes`](Self::nodes)) the way an
    /// operator resharding does: `IMPORTING` on the target, `MIGRATING` on the owner, `MIGRATE`
    /// of its keys in batches, then `SETSLOT … NODE` on every master. Clients see `ASK` while
    /// keys move and `MOVED` afterwards.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let slot_s = slot.to_string();
        let from = self
            .masters()
            .into_iter()
            .find(|m| {
                let shards: redis::Value = m.cmd(&[b"CLUSTER", b"SLOTS"]);
                let me = m.port() as i64;
                slot_ranges(&shards)
                    .into_iter()
                    .any(|(a, b, port)| port == me && (a..=b).contains(&i64::from(slot)))
            })
            .expect("the slot's owner");
        let target = &self.nodes[to];
        assert_ne!(from.port(), target.port(), "the slot is already there");
        let id = |n: &RedisServer| n.cmd::<String>(&[b"CLUSTER", b"MYID"]);
        let (from_id, to_id) = (id(from), id(target));
        target.cmd::<()>(&[
            b"CLUSTER",
            b"SETSLOT",
            slot_s.as_bytes(),
            b"IMPORTING",
            from_id.as_bytes(),
        ]);
        from.cmd::<()>(&[
            b"CLUSTER",
            b"SETSLOT",
            slot_s.as_bytes(),
            b"MIGRATING",
            to_id.as_bytes(),
        ]);
        let port = target.port().to_string();
        loop {
            let keys: Vec<Vec<u8>> =
                from.cmd(&[b"CLUSTER", b"GETKEYSINSLOT", slot_s.as_bytes(), b"100"]);
            if keys.is_empty() {
                break;
            }
            let mut args: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                port.as_bytes(),
                b"",
                b"0",
                b"5000",
                b"KEYS",
            ];
            args.extend(keys.iter().map(Vec::as_slice));
            from.cmd::<()>(&args);
        }
        for m in self.masters() {
            m.cmd::<()>(&[
                b"CLUSTER",
                b"SETSLOT",
                slot_s.as_bytes(),
                b"NODE",
                to_id.as_bytes(),
            ]);
        }
    }

    /// Index (into [`nodes`](Self::nodes)) of the current master of `key`.
    pub fn master_index_of(&self, key: &str) -> usize {
        let port = self.owner_of(key).port();
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .expect("a node")
    }

    /// Index of a replica of the master `master` (an index into [`nodes`](Self::nodes)).
    pub fn replica_index_of(&self, master: usize) -> usize {
        let port = self.nodes[master].port().to_string();
        self.nodes
            .iter()
            .position(|n| {
                n.is_running() && {
                    let info = n.cmd::<String>(&[b"INFO", b"replication"]);
                    field(&info, "role") == Some("slave")
                        && field(&info, "master_port") == Some(port.as_str())
                }
            })
            .expect("a replica of that master")
    }

    /// Waits (bounded) until node `i` is a master that serves slots and every live node
    /// reports `cluster_state:ok`.
    pub fn wait_master(&self, i: usize) {
        let start = Instant::now();
        while start.elapsed() < FORM_WITHIN {
            let info = self.nodes[i].cmd::<String>(&[b"INFO", b"replication"]);
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let ci = n.cmd::<String>(&[b"CLUSTER", b"INFO"]);
                field(&ci, "cluster_state") == Some("ok")
            });
            if field(&info, "role") == Some("master") && ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node {i} did not become a master of a healthy cluster within {FORM_WITHIN:?}");
    }

    /// Kills node `i` (SIGKILL); the others carry on (the cluster marks it failed after its
    /// node timeout, 1 s).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its port, empty (no persistence) but with its cluster
    /// configuration, and waits until every node reports `cluster_state:ok`.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        let start = Instant::now();
        while start.elapsed() < FORM_WITHIN {
            if self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let ci = n.cmd::<String>(&[b"CLUSTER", b"INFO"]);
                field(&ci, "cluster_state") == Some("ok")
            }) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the cluster did not recover within {FORM_WITHIN:?} after node {i} restarted");
    }

    /// The nodes that are masters now (`INFO replication`: `role:master`).
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .filter(|n| {
                let info = n.cmd::<String>(&[b"INFO", b"replication"]);
                field(&info, "role") == Some("master")
            })
            .collect()
    }

    /// The nodes that are replicas now.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .filter(|n| {
                let info = n.cmd::<String>(&[b"INFO", b"replication"]);
                field(&info, "role") == Some("slave")
            })
            .collect()
    }

    /// `redis://127.0.0.1:<port>/` of every node (seed nodes for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node that serves `key`'s slot.
    pub fn owner_of(&self, key: &str) -> &RedisServer {
        let slot: i64 = self.nodes[0].cmd(&[b"CLUSTER", b"KEYSLOT", key.as_bytes()]);
        let owned = |n: &RedisServer| {
            let shards: redis::Value = n.cmd(&[b"CLUSTER", b"SLOTS"]);
            let me = n.port() as i64;
            slot_ranges(&shards)
                .into_iter()
                .any(|(from, to, port)| port == me && (from..=to).contains(&slot))
        };
        self.nodes
            .iter()
            .find(|n| owned(n))
            .unwrap_or_else(|| panic!("no node owns slot {slot} of {key:?}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for c in &self.confs {
            let _ = std::fs::remove_file(c);
        }
    }
}

/// The cluster slot of `key` (CRC16/XMODEM of the key, or of its `{hash tag}`, mod 16384), as
/// `CLUSTER KEYSLOT` computes it, without a round trip (the runtime's own function).
pub fn key_slot(key: &str) -> u16 {
    crate::l2::cluster::key_slot(key.as_bytes())
}

/// `name:value` of a `CLUSTER INFO` / `INFO` reply.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// `(first slot, last slot, master port)` of each range of a `CLUSTER SLOTS` reply.
fn slot_ranges(reply: &redis::Value) -> Vec<(i64, i64, i64)> {
    let redis::Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|r| match r {
            redis::Value::Array(parts) => match parts.as_slice() {
                [
                    redis::Value::Int(from),
                    redis::Value::Int(to),
                    redis::Value::Array(master),
                    ..,
                ] => match master.get(1) {
                    Some(redis::Value::Int(port)) => Some((*from, *to, *port)),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}
