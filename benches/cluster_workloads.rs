//! K2, K4, K5: the W2, W4 and W5 workloads on a private local Redis Cluster (see the runner's
//! module docs, and [`super::cluster_support`] for the cluster itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;

use super::cluster_support::{Cluster, field};
use super::{
    Plan, Results, Status, Sys, TTL_MS, User, World, body, memo, ns, pct, raw_get, sorted, user,
    wait_until,
};

/// Id ranges of the K workloads (apart from the W ranges).
const K2_BASE: u64 = 2_000_000_000;
const K5_BASE: u64 = 3_000_000_000;
const K4_BASE: u64 = 4_000_000_000;

static NEXT_K5: AtomicU64 = AtomicU64::new(K5_BASE);

// =============================================================================================
// The cluster's nodes: connections, counters
// =============================================================================================

/// A plain connection to every node (for `INFO` and `CLUSTER INFO` only).
struct Nodes {
    conns: Vec<MultiplexedConnection>,
}

/// One node's counters at one instant.
#[derive(Clone, Copy, Default)]
struct NodeCounts {
    /// `used_cpu_sys + used_cpu_user`, µs.
    cpu_us: f64,
    /// Classic Pub/Sub messages on the cluster bus, sent + received.
    bus_classic: u64,
    /// Sharded Pub/Sub messages on the cluster bus, sent + received.
    bus_shard: u64,
    /// Commands executed (every `cmdstat_*` but `INFO` and `CLUSTER`).
    calls: u64,
    /// `total_reads_processed`.
    reads: u64,
}

fn info_u64(info: &str, name: &str) -> u64 {
    field(info, name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn info_f64(info: &str, name: &str) -> f64 {
    field(info, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

impl Nodes {
    async fn connect(cluster: &Cluster) -> Result<Nodes, String> {
        let mut conns = Vec::new();
        for url in cluster.urls() {
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            conns.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?,
            );
        }
        Ok(Nodes { conns })
    }

    async fn counts(&self) -> Result<Vec<NodeCounts>, String> {
        let mut out = Vec::with_capacity(self.conns.len());
        for c in &self.conns {
            let mut c = c.clone();
            let cl: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut c)
                .await
                .map_err(|e| format!("CLUSTER INFO: {e}"))?;
            let info: String = redis::cmd("INFO")
                .arg("cpu")
                .arg("stats")
                .arg("commandstats")
                .query_async(&mut c)
                .await
                .map_err(|e| format!("INFO: {e}"))?;
            let mut calls = 0;
            for line in info.lines() {
                if let Some(rest) = line.strip_prefix("cmdstat_")
                    && let Some((name, fields)) = rest.split_once(':')
                    && name != "info"
                    && name != "cluster"
                {
                    calls += fields
                        .split(',')
                        .find_map(|f| f.strip_prefix("calls="))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
            // Zero counters are left out of `CLUSTER INFO`: missing is 0.
            let m = |k: &str| info_u64(&cl, &format!("cluster_stats_messages_{k}"));
            out.push(NodeCounts {
                cpu_us: (info_f64(&info, "used_cpu_sys") + info_f64(&info, "used_cpu_user")) * 1e6,
                bus_classic: m("publish_sent") + m("publish_received"),
                bus_shard: m("publishshard_sent") + m("publishshard_received"),
                calls,
                reads: info_u64(&info, "total_reads_processed"),
            });
        }
        Ok(out)
    }
}

/// Per-node deltas between two [`Nodes::counts`].
fn deltas(before: &[NodeCounts], after: &[NodeCounts]) -> Vec<NodeCounts> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| NodeCounts {
            cpu_us: a.cpu_us - b.cpu_us,
            bus_classic: a.bus_classic.saturating_sub(b.bus_classic),
            bus_shard: a.bus_shard.saturating_sub(b.bus_shard),
            calls: a.calls.saturating_sub(b.calls),
            // The later `INFO`'s own read.
            reads: a.reads.saturating_sub(b.reads).saturating_sub(2),
        })
        .collect()
}

/// Commands and request reads per operation, summed over the nodes.
fn per_op_nodes(d: &[NodeCounts], ops: usize) -> (f64, f64) {
    let n = ops.max(1) as f64;
    (
        d.iter().map(|c| c.calls).sum::<u64>() as f64 / n,
        d.iter().map(|c| c.reads).sum::<u64>() as f64 / n,
    )
}

async fn start_cluster(masters: usize) -> Result<Cluster, String> {
    let t = Instant::now();
    let c = tokio::task::spawn_blocking(move || Cluster::start(masters))
        .await
        .map_err(|e| format!("cluster start-up: {e}"))??;
    println!(
        "private Redis Cluster: {masters} masters on ports {:?}, formed in {:.1} s (killed at exit)",
        c.nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
        t.elapsed().as_secs_f64()
    );
    Ok(c)
}

async fn cluster_conn(urls: &[String]) -> Result<ClusterConnection, String> {
    redis::cluster::ClusterClient::new(urls.to_vec())
        .map_err(|e| format!("cluster client: {e}"))?
        .get_async_connection()
        .await
        .map_err(|e| format!("cluster connection: {e}"))
}

async fn tiered_on(
    urls: &[String],
    ns: &str,
    bus: tiered::ClusterBus,
    promote: bool,
) -> Result<tiered::Runtime, String> {
    let mut b = tiered::Runtime::builder()
        .namespace(ns)
        .redis_cluster(urls.to_vec())
        .cluster_bus(bus);
    if !promote {
        b = b.promotion_frequency(u32::MAX);
    }
    let rt = b.build().await.map_err(|e| format!("build: {e}"))?;
    let s = rt.stats();
    if !(s.l2_connected && s.subscribed) {
        return Err("runtime not connected and subscribed after build()".into());
    }
    Ok(rt)
}

/// The hand-written Redis memoization on the cluster: `GET` + decode, or the body and
/// `SET PX` (the same code as `raw_get`, on a `ClusterConnection`).
async fn raw_cluster_get(conn: &ClusterConnection, id: u64) -> Result<User, String> {
    let mut conn = conn.clone();
    let key = format!("rawc:{id}");
    let found: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("GET: {e}"))?;
    if let Some(bytes) = found {
        return rmp_serde::from_slice(&bytes).map_err(|e| format!("decode: {e}"));
    }
    let v = body(Sys::RawCluster, id, Duration::ZERO).await;
    let bytes = rmp_serde::to_vec_named(&v).map_err(|e| format!("encode: {e}"))?;
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(bytes)
        .arg("PX")
        .arg(TTL_MS)
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("SET: {e}"))?;
    Ok(v)
}

// =============================================================================================
// The entry point
// =============================================================================================

/// Runs the selected K workloads; `w` is the single-server world (K2's reference rows).
pub async fn run(w: Option<&Arc<World>>, plan: &Plan, res: &mut Results) {
    let (k2, k4, k5) = (plan.runs_k("K2"), plan.runs_k("K4"), plan.runs_k("K5"));
    if !(k2 || k4 || k5) {
        return;
    }
    let t = Instant::now();
    let cluster = match start_cluster(3).await {
        Ok(c) => c,
        Err(why) => {
            println!("no private Redis Cluster ({why}): the K workloads are n/a");
            for (wl, on) in [("K2", k2), ("K4", k4), ("K5", k5)] {
                if on {
                    for sys in K_SYS {
                        res.mark(wl, "", sys, Status::Na(format!("no cluster: {why}")));
                    }
                }
            }
            return;
        }
    };
    println!("K: cluster up in {:.1} s", t.elapsed().as_secs_f64());
    if k2 {
        let t = Instant::now();
        k2_run(&cluster, w, plan, res).await;
        println!("K2 done in {:.1} s", t.elapsed().as_secs_f64());
    }
    if k5 {
        let t = Instant::now();
        k5_run(&cluster, plan, res).await;
        println!("K5 done in {:.1} s", t.elapsed().as_secs_f64());
    }
    if k4 {
        let t = Instant::now();
        k4_run(&cluster, plan, res).await;
        drop(cluster);
        match start_cluster(6).await {
            Ok(c6) => k4_run(&c6, plan, res).await,
            Err(why) => {
                for sys in K4_SYS {
                    res.mark("K4", "6 masters", sys, Status::Failed(why.clone()));
                }
            }
        }
        println!("K4 done in {:.1} s", t.elapsed().as_secs_f64());
    }
}

const K_SYS: [Sys; 7] = [
    Sys::TieredL2Off,
    Sys::TieredScoped,
    Sys::RawCluster,
    Sys::TieredClassic,
    Sys::TieredSharded,
    Sys::RawPublish,
    Sys::RawSpublish,
];

// =============================================================================================
// K2: L2 hit on the cluster
// =============================================================================================

/// Where a K2 system reads: the cluster, or the runner's single server (reference rows).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Where {
    Cluster,
    Single,
}

struct K2 {
    reader: tiered::Runtime,
    raw: ClusterConnection,
    world: Option<Arc<World>>,
}

impl K2 {
    async fn call(&self, sys: Sys, at: Where, id: u64) -> Result<User, String> {
        match (sys, at) {
            (Sys::TieredL2Off, Where::Cluster) => Ok(self.reader.scope(memo::t_l2(id)).await),
            (Sys::RawCluster, Where::Cluster) => raw_cluster_get(&self.raw, id).await,
            (Sys::TieredL2Off, Where::Single) => {
                let w = self.world.as_ref().ok_or("no single server")?;
                Ok(w.l2_off.scope(memo::t_l2(id)).await)
            }
            (_, Where::Single) => {
                let w = self.world.as_ref().ok_or("no single server")?;
                Ok(raw_get(&w.conn, Sys::RedisRaw, id, Duration::ZERO).await)
            }
            _ => Err("not a K2 system".into()),
        }
    }

    fn runtime(&self, sys: Sys, at: Where) -> Option<&tiered::Runtime> {
        match (sys, at) {
            (Sys::TieredL2Off, Where::Cluster) => Some(&self.reader),
            (Sys::TieredL2Off, Where::Single) => self.world.as_ref().map(|w| &w.l2_off),
            _ => None,
        }
    }

    fn body_runs(&self, sys: Sys, at: Where) -> u64 {
        match self.runtime(sys, at) {
            Some(rt) => rt.stats().total.computations,
            None if at == Where::Cluster => super::runs(Sys::RawCluster),
            None => super::runs(Sys::RedisRaw),
        }
    }
}

/// Calls every id once through `f`, 64 at a time; `Err` names the first wrong value.
async fn fill<F, Fut>(ids: &[u64], f: F) -> Result<(), String>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<User, String>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(ids.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (ids, next, f) = (Arc::clone(&ids), Arc::clone(&next), f.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&id) = ids.get(i) else {
                    return Ok(());
                };
                if f(id).await? != user(id) {
                    return Err(format!("wrong value for id {id}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("fill task: {e}"))??;
    }
    Ok(())
}

async fn k2_run(cluster: &Cluster, w: Option<&Arc<World>>, plan: &Plan, res: &mut Results) {
    const W: &str = "K2";
    let urls = cluster.urls();
    let setup = async {
        let fill_rt = tiered_on(&urls, "k2", tiered::ClusterBus::Classic, true).await?;
        let reader = tiered_on(&urls, "k2", tiered::ClusterBus::Classic, false).await?;
        let raw = cluster_conn(&urls).await?;
        let nodes = Nodes::connect(cluster).await?;
        Ok::<_, String>((fill_rt, reader, raw, nodes))
    };
    let (fill_rt, reader, raw, nodes) = match setup.await {
        Ok(s) => s,
        Err(why) => {
            for sys in [Sys::TieredL2Off, Sys::RawCluster] {
                res.mark(W, "", sys, Status::Failed(why.clone()));
            }
            return;
        }
    };
    let k = Arc::new(K2 {
        reader,
        raw,
        world: w.cloned(),
    });
    let max = plan
        .k2_conc
        .iter()
        .map(|c| plan.w2_calls[c_index(*c)])
        .max();
    let ids: Vec<u64> = (0..max.unwrap_or(0) as u64).map(|i| K2_BASE + i).collect();
    let mut systems: Vec<(Sys, Where)> = Vec::new();
    let case_of = |at: Where, c: usize| match at {
        Where::Cluster => format!("cluster (3 masters), c={c}"),
        Where::Single => format!("1 server, c={c}"),
    };
    let fill_rt = Arc::new(fill_rt);
    let tiered_fill = {
        let rt = Arc::clone(&fill_rt);
        fill(&ids, move |id| {
            let rt = Arc::clone(&rt);
            async move { Ok(rt.scope(memo::t_l2(id)).await) }
        })
        .await
    };
    let raw_fill = {
        let conn = k.raw.clone();
        fill(&ids, move |id| {
            let conn = conn.clone();
            async move { raw_cluster_get(&conn, id).await }
        })
        .await
    };
    for (sys, r) in [(Sys::TieredL2Off, tiered_fill), (Sys::RawCluster, raw_fill)] {
        match r {
            Ok(()) => systems.push((sys, Where::Cluster)),
            Err(why) => res.mark(W, "", sys, Status::Failed(why)),
        }
    }
    // The reference rows on the runner's single server: the W2 reader and `GET` + decode.
    if let Some(w) = w {
        let single = {
            let w1 = Arc::clone(w);
            let t = fill(&ids, move |id| {
                let w = Arc::clone(&w1);
                async move { Ok(w.l2_fill.scope(memo::t_l2(id)).await) }
            })
            .await;
            let w2 = Arc::clone(w);
            let r = fill(&ids, move |id| {
                let w = Arc::clone(&w2);
                async move { Ok(raw_get(&w.conn, Sys::RedisRaw, id, Duration::ZERO).await) }
            })
            .await;
            [(Sys::TieredL2Off, t), (Sys::RedisRaw, r)]
        };
        for (sys, r) in single {
            match r {
                Ok(()) => systems.push((sys, Where::Single)),
                Err(why) => {
                    for c in &plan.k2_conc {
                        res.mark(
                            W,
                            &case_of(Where::Single, *c),
                            sys,
                            Status::Failed(why.clone()),
                        );
                    }
                }
            }
        }
    }
    let runs_before: Vec<u64> = systems.iter().map(|&(s, a)| k.body_runs(s, a)).collect();
    let stats_before: Vec<Option<tiered::Counts>> = systems
        .iter()
        .map(|&(s, a)| k.runtime(s, a).map(|rt| rt.stats().total))
        .collect();
    let mut hits = vec![0u64; systems.len()];
    let mut failed: Vec<Option<String>> = vec![None; systems.len()];
    for rep in 0..plan.reps {
        for &c in &plan.k2_conc {
            let m = plan.w2_calls[c_index(c)];
            for j in 0..systems.len() {
                let idx = (j + rep) % systems.len();
                if failed[idx].is_some() {
                    continue;
                }
                let (sys, at) = systems[idx];
                let case = case_of(at, c);
                let before = match at {
                    Where::Cluster => nodes.counts().await.ok(),
                    Where::Single => None,
                };
                let (lat, wall, wrong) = k2_round(&k, sys, at, c, m).await;
                let after = match at {
                    Where::Cluster => nodes.counts().await.ok(),
                    Where::Single => None,
                };
                hits[idx] += m as u64;
                if let Some(why) = wrong {
                    failed[idx] = Some(why);
                    continue;
                }
                let s = sorted(lat);
                let base = Some(match at {
                    Where::Cluster => Sys::RawCluster,
                    Where::Single => Sys::RedisRaw,
                });
                res.push(W, &case, sys, "p50", "ns", pct(&s, 50.0), base);
                res.push(
                    W,
                    &case,
                    sys,
                    "ops/s",
                    "ops/s",
                    m as f64 / wall.as_secs_f64(),
                    base,
                );
                if let (Some(b), Some(a)) = (before, after) {
                    let (cmds, reads) = per_op_nodes(&deltas(&b, &a), m);
                    res.push(W, &case, sys, "commands/hit", "cmds", cmds, None);
                    res.push(W, &case, sys, "reads/hit", "reads", reads, None);
                }
            }
        }
    }
    for (i, &(sys, at)) in systems.iter().enumerate() {
        let ran = k.body_runs(sys, at) - runs_before[i];
        let why = if let Some(why) = failed[i].take() {
            Some(why)
        } else if ran != 0 {
            Some(format!("{ran} body runs during L2 hits"))
        } else if let (Some(rt), Some(b)) = (k.runtime(sys, at), &stats_before[i]) {
            let a = rt.stats().total;
            let (l2, l1) = (a.l2_hits - b.l2_hits, a.l1_hits - b.l1_hits);
            (l2 != hits[i] || l1 != 0)
                .then(|| format!("{l2} L2 hits and {l1} L1 hits for {} calls", hits[i]))
        } else {
            None
        };
        if let Some(why) = why {
            for c in &plan.k2_conc {
                res.mark(W, &case_of(at, *c), sys, Status::Failed(why.clone()));
            }
        }
    }
    drop(fill_rt);
}

/// Index of `c` in the W2 concurrencies (K2 uses W2's calls per round).
fn c_index(c: usize) -> usize {
    super::W2_CONC.iter().position(|&x| x == c).unwrap_or(0)
}

/// `m` calls on the first `m` K2 ids spread over `c` tasks: per-call ns, the wall time, and
/// the first wrong value or error.
async fn k2_round(
    k: &Arc<K2>,
    sys: Sys,
    at: Where,
    c: usize,
    m: usize,
) -> (Vec<f64>, Duration, Option<String>) {
    let start = Instant::now();
    let handles: Vec<_> = (0..c)
        .map(|t| {
            let k = Arc::clone(k);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(m / c + 1);
                let mut wrong = None;
                let mut i = t;
                while i < m {
                    let id = K2_BASE + i as u64;
                    let t0 = Instant::now();
                    let r = k.call(sys, at, id).await;
                    lat.push(ns(t0.elapsed()));
                    match r {
                        Ok(v) if v == user(id) => {}
                        Ok(_) => wrong = Some(format!("wrong value for id {id}")),
                        Err(e) => wrong = Some(e),
                    }
                    i += c;
                }
                (lat, wrong)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(m);
    let mut wrong = None;
    for h in handles {
        match h.await {
            Ok((l, w)) => {
                lat.extend(l);
                wrong = wrong.or(w);
            }
            Err(e) => wrong = Some(format!("K2 task: {e}")),
        }
    }
    (lat, start.elapsed(), wrong)
}

// =============================================================================================
// K5: miss on the cluster
// =============================================================================================

async fn k5_run(cluster: &Cluster, plan: &Plan, res: &mut Results) {
    const W: &str = "K5";
    let urls = cluster.urls();
    let case = "cluster (3 masters), distinct keys, c=1";
    let setup = async {
        let rt = tiered_on(&urls, "k5", tiered::ClusterBus::Classic, true).await?;
        let raw = cluster_conn(&urls).await?;
        let nodes = Nodes::connect(cluster).await?;
        Ok::<_, String>((rt, raw, nodes))
    };
    let (rt, raw, nodes) = match setup.await {
        Ok(s) => s,
        Err(why) => {
            for sys in [Sys::TieredScoped, Sys::RawCluster] {
                res.mark(W, "", sys, Status::Failed(why.clone()));
            }
            return;
        }
    };
    let systems = [Sys::TieredScoped, Sys::RawCluster];
    let body_runs = |sys: Sys| match sys {
        Sys::TieredScoped => rt.stats().total.computations,
        _ => super::runs(sys),
    };
    let m = plan.w5_calls;
    let mut failed: Vec<Option<String>> = vec![None; systems.len()];
    for rep in 0..plan.reps {
        for j in 0..systems.len() {
            let idx = (j + rep) % systems.len();
            if failed[idx].is_some() {
                continue;
            }
            let sys = systems[idx];
            let base = NEXT_K5.fetch_add(m as u64, Ordering::Relaxed);
            let ran0 = body_runs(sys);
            let before = nodes.counts().await.ok();
            let start = Instant::now();
            let mut lat = Vec::with_capacity(m);
            let mut wrong = 0;
            let mut error = None;
            for id in base..base + m as u64 {
                let t0 = Instant::now();
                let v = match sys {
                    Sys::TieredScoped => Ok(rt.scope(memo::t_miss(id)).await),
                    _ => raw_cluster_get(&raw, id).await,
                };
                lat.push(ns(t0.elapsed()));
                match v {
                    Ok(v) => wrong += u64::from(v != user(id)),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            let wall = start.elapsed();
            let after = nodes.counts().await.ok();
            let ran = body_runs(sys) - ran0;
            if let Some(e) = error {
                failed[idx] = Some(e);
                continue;
            }
            if ran != m as u64 || wrong > 0 {
                failed[idx] = Some(format!(
                    "{ran} body runs for {m} misses, {wrong} wrong values"
                ));
                continue;
            }
            let s = sorted(lat);
            let b = Some(Sys::RawCluster);
            res.push(W, case, sys, "p50", "ns", pct(&s, 50.0), b);
            res.push(
                W,
                case,
                sys,
                "ops/s",
                "ops/s",
                m as f64 / wall.as_secs_f64(),
                b,
            );
            if let (Some(bf), Some(af)) = (before, after) {
                let (cmds, reads) = per_op_nodes(&deltas(&bf, &af), m);
                res.push(W, case, sys, "commands/miss", "cmds", cmds, None);
                res.push(W, case, sys, "reads/miss", "reads", reads, None);
            }
        }
    }
    for (i, sys) in systems.into_iter().enumerate() {
        if let Some(why) = failed[i].take() {
            res.mark(W, "", sys, Status::Failed(why));
        }
    }
}

// =============================================================================================
// K4: propagation on the cluster, classic and sharded
// =============================================================================================

const K4_SYS: [Sys; 4] = [
    Sys::TieredClassic,
    Sys::TieredSharded,
    Sys::RawPublish,
    Sys::RawSpublish,
];

/// Counts the numbers received on a raw subscription (RESP3 pushes, classic or sharded).
struct Received(Arc<AtomicU64>);

impl redis::aio::AsyncPushSender for Received {
    fn send(&self, info: redis::PushInfo) -> Result<(), redis::aio::SendError> {
        if matches!(
            info.kind,
            redis::PushKind::Message | redis::PushKind::SMessage
        ) && let Some(v) = info.data.get(1)
            && let Ok(n) = redis::from_redis_value_ref::<u64>(v)
        {
            self.0.fetch_max(n, Ordering::AcqRel);
        }
        Ok(())
    }
}

const RAW_CHANNEL: &str = "raw-propagation";

/// A raw publisher and subscriber: classic (`PUBLISH` on node 0, `SUBSCRIBE` on node 1, so
/// every message crosses the cluster bus), or sharded (`SPUBLISH` and `SSUBSCRIBE` through
/// `ClusterConnection`s, both routed to the master of the channel's slot).
enum RawPub {
    Classic(MultiplexedConnection),
    Sharded(ClusterConnection),
}

struct RawK4 {
    publisher: RawPub,
    received: Arc<AtomicU64>,
    n: u64,
    /// The subscriber's connection, held for the subscription's lifetime.
    _sub: Box<dyn std::any::Any + Send>,
}

impl RawK4 {
    async fn new(cluster: &Cluster, sharded: bool) -> Result<RawK4, String> {
        let received = Arc::new(AtomicU64::new(0));
        let urls = cluster.urls();
        if sharded {
            let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(Received(Arc::clone(&received)))
                .build()
                .map_err(|e| format!("cluster client: {e}"))?;
            let mut sub = client
                .get_async_connection()
                .await
                .map_err(|e| format!("subscriber: {e}"))?;
            sub.ssubscribe(RAW_CHANNEL)
                .await
                .map_err(|e| format!("SSUBSCRIBE: {e}"))?;
            Ok(RawK4 {
                publisher: RawPub::Sharded(cluster_conn(&urls).await?),
                received,
                n: 0,
                _sub: Box::new(sub),
            })
        } else {
            let publisher = redis::Client::open(urls[0].as_str())
                .map_err(|e| e.to_string())?
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("publisher: {e}"))?;
            let config = redis::AsyncConnectionConfig::new()
                .set_push_sender(Received(Arc::clone(&received)));
            let mut sub = redis::Client::open(format!("{}?protocol=resp3", urls[1]))
                .map_err(|e| e.to_string())?
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| format!("subscriber: {e}"))?;
            sub.subscribe(RAW_CHANNEL)
                .await
                .map_err(|e| format!("SUBSCRIBE: {e}"))?;
            Ok(RawK4 {
                publisher: RawPub::Classic(publisher),
                received,
                n: 0,
                _sub: Box::new(sub),
            })
        }
    }

    /// Publishes the next number; the call's own duration.
    async fn publish(&mut self) -> Result<Duration, String> {
        self.n += 1;
        let t0 = Instant::now();
        let r: Result<i64, _> = match &mut self.publisher {
            RawPub::Classic(c) => {
                redis::cmd("PUBLISH")
                    .arg(RAW_CHANNEL)
                    .arg(self.n)
                    .query_async(c)
                    .await
            }
            RawPub::Sharded(c) => {
                redis::cmd("SPUBLISH")
                    .arg(RAW_CHANNEL)
                    .arg(self.n)
                    .query_async(c)
                    .await
            }
        };
        let d = t0.elapsed();
        match r {
            // A classic `PUBLISH` counts the receivers on its own node only (ours is on
            // another); an `SPUBLISH` counts them on the channel's master, where ours is.
            Ok(0) if matches!(self.publisher, RawPub::Sharded(_)) => {
                Err("SPUBLISH: no subscriber received the message".into())
            }
            Ok(_) => Ok(d),
            Err(e) => Err(format!("publish: {e}")),
        }
    }

    /// Publish, then poll the subscriber's number until it arrives: (propagation, call).
    async fn round_trip(&mut self) -> Result<(Duration, Duration), String> {
        let t0 = Instant::now();
        let call = self.publish().await?;
        let (received, n) = (&self.received, self.n);
        if wait_until(
            || received.load(Ordering::Acquire) >= n,
            Duration::from_secs(2),
        )
        .await
        {
            Ok((t0.elapsed(), call))
        } else {
            Err("no message within 2 s".into())
        }
    }
}

/// One mode's pair of runtimes and its trial ids.
struct Pair {
    a: tiered::Runtime,
    b: tiered::Runtime,
    ids: Vec<u64>,
}

/// One tiered trial: B holds `id` in L1 (a call, then an L1 hit), A invalidates it; the time
/// from just before A's call until B applied it (B's `invalidations_received`, bumped after
/// the eviction, polled as W4 does), and A's call's own duration.
async fn tiered_trial(p: &Pair, id: u64) -> Result<(Duration, Duration), String> {
    if p.b.scope(memo::t_k4(id)).await != user(id) {
        return Err("wrong value".into());
    }
    let l1 = p.b.stats().total.l1_hits;
    if p.b.scope(memo::t_k4(id)).await != user(id) {
        return Err("wrong value".into());
    }
    if p.b.stats().total.l1_hits == l1 {
        return Err("B's second call was not an L1 hit".into());
    }
    invalidate(p, id).await
}

/// A invalidates `id` and waits until B applied it: (propagation, call).
async fn invalidate(p: &Pair, id: u64) -> Result<(Duration, Duration), String> {
    let before = p.b.stats().total.invalidations_received;
    let t0 = Instant::now();
    p.a.scope(memo::invalidate_t_k4(id))
        .await
        .map_err(|e| format!("invalidate: {e}"))?;
    let call = t0.elapsed();
    let b = &p.b;
    if !wait_until(
        || b.stats().total.invalidations_received != before,
        Duration::from_secs(2),
    )
    .await
    {
        return Err("B did not apply an invalidation within 2 s".into());
    }
    Ok((t0.elapsed(), call))
}

/// Builds A and B in namespace `ns`: A's seeds start at node 0 and B's at node 1, so that B's
/// classic subscription is on node 1; the trial ids are 16 ids whose key's master is not
/// node 1 (so a classic `PUBLISH`, sent to the key's master, always crosses the cluster bus).
async fn pair(cluster: &Cluster, ns: &str, bus: tiered::ClusterBus) -> Result<Pair, String> {
    let urls = cluster.urls();
    let mut b_urls = urls.clone();
    b_urls.rotate_left(1);
    let a = tiered_on(&urls, ns, bus, true).await?;
    let b = tiered_on(&b_urls, ns, bus, true).await?;
    let ranges = tokio::task::block_in_place(|| cluster.slot_ranges())?;
    let key = |id: u64| format!("{ns}:k4:<{id}>");
    let mut ids: Vec<u64> = (K4_BASE..)
        .filter(|&id| cluster.master_of(&ranges, &key(id)) != Some(1))
        .take(17)
        .collect();
    // Check the slot prediction once, on an id of its own: the key is on the master we expect.
    let id = ids.pop().ok_or("no trial ids")?;
    if b.scope(memo::t_k4(id)).await != user(id) {
        return Err("wrong value".into());
    }
    let master = cluster
        .master_of(&ranges, &key(id))
        .ok_or("no master for the key")?;
    let port = cluster.nodes[master].port;
    let k = key(id);
    let exists: i64 = tokio::task::block_in_place(|| {
        super::cluster_support::node_cmd(port, &["EXISTS", k.as_str()])
    })?;
    if exists != 1 {
        return Err(format!("key {k:?} not on node {master} as predicted"));
    }
    Ok(Pair { a, b, ids })
}

async fn k4_run(cluster: &Cluster, plan: &Plan, res: &mut Results) {
    const W: &str = "K4";
    let masters = cluster.nodes.len();
    let case = format!("{masters} masters");
    let nodes = match Nodes::connect(cluster).await {
        Ok(n) => n,
        Err(why) => {
            for sys in K4_SYS {
                res.mark(W, &case, sys, Status::Failed(why.clone()));
            }
            return;
        }
    };
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    for (sys, ns, bus) in [
        (Sys::TieredClassic, "k4c", tiered::ClusterBus::Classic),
        (Sys::TieredSharded, "k4s", tiered::ClusterBus::Sharded),
    ] {
        match pair(cluster, ns, bus).await {
            Ok(p) => pairs.push(Some(p)),
            Err(why) => {
                res.mark(W, &case, sys, Status::Failed(why));
                pairs.push(None);
            }
        }
    }
    let mut raws: Vec<Option<RawK4>> = Vec::new();
    for (sys, sharded) in [(Sys::RawPublish, false), (Sys::RawSpublish, true)] {
        match RawK4::new(cluster, sharded).await {
            Ok(r) => raws.push(Some(r)),
            Err(why) => {
                res.mark(W, &case, sys, Status::Failed(why));
                raws.push(None);
            }
        }
    }
    // Background: the four runtimes' beacons (and the cluster's own gossip), 1 s idle.
    if let Ok(before) = nodes.counts().await {
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(after) = nodes.counts().await {
            let secs = t0.elapsed().as_secs_f64();
            let d = deltas(&before, &after);
            let sys = Sys::Background;
            let cpu: f64 = d.iter().map(|c| c.cpu_us).sum();
            let bus: u64 = d.iter().map(|c| c.bus_classic + c.bus_shard).sum();
            res.push(W, &case, sys, "cpu/s all nodes", "us", cpu / secs, None);
            res.push(
                W,
                &case,
                sys,
                "bus msgs/s all nodes",
                "msgs",
                bus as f64 / secs,
                None,
            );
        }
    }
    let per_rep = (plan.w4_trials / plan.reps).max(1);
    let mut failed: [Option<String>; 4] = Default::default();
    let runs_before: Vec<u64> = pairs
        .iter()
        .map(|p| p.as_ref().map_or(0, |p| p.b.stats().total.computations))
        .collect();
    let mut trials = [0u64; 2];
    for rep in 0..plan.reps {
        for j in 0..K4_SYS.len() {
            let idx = (j + rep) % K4_SYS.len();
            let sys = K4_SYS[idx];
            if failed[idx].is_some() {
                continue;
            }
            let mut lat = Vec::with_capacity(per_rep);
            let mut calls = Vec::with_capacity(per_rep);
            let mut err = None;
            // Propagation trials.
            for t in 0..per_rep {
                let r = match (idx, &pairs.get(idx), raws.get_mut(idx.wrapping_sub(2))) {
                    (0 | 1, Some(Some(p)), _) => {
                        trials[idx] += 1;
                        tiered_trial(p, p.ids[t % p.ids.len()]).await
                    }
                    (2 | 3, _, Some(Some(r))) => r.round_trip().await,
                    _ => Err("not set up".into()),
                };
                match r {
                    Ok((d, c)) => {
                        lat.push(ns(d) / 1e3);
                        calls.push(ns(c) / 1e3);
                    }
                    Err(why) => {
                        err = Some(why);
                        break;
                    }
                }
            }
            if let Some(why) = err {
                failed[idx] = Some(why);
                continue;
            }
            // Per-node cost: the same invalidations (each waited for at B) without B's reads.
            let before = nodes.counts().await;
            for t in 0..per_rep {
                let r = match (idx, &pairs.get(idx), raws.get_mut(idx.wrapping_sub(2))) {
                    (0 | 1, Some(Some(p)), _) => invalidate(p, p.ids[t % p.ids.len()]).await,
                    (2 | 3, _, Some(Some(r))) => r.round_trip().await,
                    _ => Err("not set up".into()),
                };
                if let Err(why) = r {
                    err = Some(why);
                    break;
                }
            }
            let after = nodes.counts().await;
            if let Some(why) = err {
                failed[idx] = Some(why);
                continue;
            }
            let base = Some(if matches!(sys, Sys::TieredSharded | Sys::RawSpublish) {
                Sys::RawSpublish
            } else {
                Sys::RawPublish
            });
            let s = sorted(lat);
            let c = sorted(calls);
            res.push(W, &case, sys, "p50", "us", pct(&s, 50.0), base);
            res.push(W, &case, sys, "p99", "us", pct(&s, 99.0), base);
            let max = s.last().copied().unwrap_or(f64::NAN);
            res.push(W, &case, sys, "max", "us", max, base);
            res.push(W, &case, sys, "call p50", "us", pct(&c, 50.0), base);
            res.push(W, &case, sys, "call p99", "us", pct(&c, 99.0), base);
            match (before, after) {
                (Ok(b), Ok(a)) => {
                    let d = deltas(&b, &a);
                    let n = per_rep as f64;
                    let cpu: Vec<f64> = d.iter().map(|x| x.cpu_us / n).collect();
                    let bus: Vec<f64> = d
                        .iter()
                        .map(|x| (x.bus_classic + x.bus_shard) as f64 / n)
                        .collect();
                    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
                    let total = cpu.iter().sum::<f64>();
                    res.push(W, &case, sys, "cpu/inv all nodes", "us", total, base);
                    res.push(W, &case, sys, "cpu/inv max node", "us", max(&cpu), base);
                    let bus_total = bus.iter().sum::<f64>();
                    res.push(
                        W,
                        &case,
                        sys,
                        "bus msgs/inv all nodes",
                        "msgs",
                        bus_total,
                        None,
                    );
                    res.push(
                        W,
                        &case,
                        sys,
                        "bus msgs/inv max node",
                        "msgs",
                        max(&bus),
                        None,
                    );
                }
                (Err(e), _) | (_, Err(e)) => failed[idx] = Some(e),
            }
        }
    }
    // B's body ran once per trial: every invalidation deleted the key from Redis too (else
    // B's next call would have been an L2 hit).
    for (i, p) in pairs.iter().enumerate() {
        if let (Some(p), None) = (p, &failed[i]) {
            let ran = p.b.stats().total.computations - runs_before[i];
            if ran != trials[i] {
                failed[i] = Some(format!(
                    "B's body ran {ran} times in {} trials (the key outlived its invalidation)",
                    trials[i]
                ));
            }
        }
    }
    for (i, why) in failed.into_iter().enumerate() {
        if let Some(why) = why {
            res.mark(W, &case, K4_SYS[i], Status::Failed(why));
        }
    }
}
