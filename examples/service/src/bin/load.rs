//! Load generator for the service, and the cached / uncached comparison.
//!
//! ```text
//! load [URL] [options]          drive a running service (default http://127.0.0.1:3000)
//! load --compare [options]      start redis-server and the service three times (L1 + Redis,
//!                               L1 only, --no-cache), run the same load on each, print a table
//! ```
//!
//! Each of the `-c` connections is a keep-alive HTTP/1.1 connection ([`Client`]) that sends
//! one request at a time, back to back, for `-d` seconds after a `--warmup` that is not
//! measured. Each request is, by default, a `GET /users/{id}` (45 %), a
//! `GET /users/{id}/orders` (45 %) or a `PUT /users/{id}` renaming the user (10 %,
//! `--put-percent`), over the ids `1..=1000` (`--ids`) drawn from a Zipf distribution of
//! exponent 1.0 (`--zipf`; 0 is uniform): id 1 is the hottest. It prints requests/s, the
//! latency p50/p99/max of the measured requests, and the database queries per request (from
//! the service's `/stats` before and after the measured phase).

use std::time::{Duration, Instant};

use tiered_service_example::http::Client;
use tiered_service_example::procs::{RedisServer, Service};

const USAGE: &str = "usage: load [URL] [-c CONNECTIONS] [-d SECONDS] [--warmup SECONDS]
            [--put-percent P] [--ids N] [--zipf S] [--seed N]
       load --compare [--service PATH] [same options]   (needs PostgreSQL and redis-server)
defaults: URL http://127.0.0.1:3000, -c 32, -d 10, --warmup 1, --put-percent 10, --ids 1000,
          --zipf 1.0 (0 = uniform), --seed 1";

#[derive(Debug, Clone)]
struct Options {
    url: String,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    put_percent: f64,
    ids: u64,
    zipf: f64,
    seed: u64,
    compare: bool,
    service: Option<std::path::PathBuf>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        url: "http://127.0.0.1:3000".into(),
        connections: 32,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        put_percent: 10.0,
        ids: 1000,
        zipf: 1.0,
        seed: 1,
        compare: false,
        service: None,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{name}: not a number: {v:?}\n{USAGE}"))
        }
        match arg.as_str() {
            "-c" | "--connections" => o.connections = num("-c", value("-c")?)?,
            "-d" | "--duration" => o.duration = secs("-d", &value("-d")?)?,
            "--warmup" => o.warmup = secs("--warmup", &value("--warmup")?)?,
            "--put-percent" => o.put_percent = num("--put-percent", value("--put-percent")?)?,
            "--ids" => o.ids = num("--ids", value("--ids")?)?,
            "--zipf" => o.zipf = num("--zipf", value("--zipf")?)?,
            "--seed" => o.seed = num("--seed", value("--seed")?)?,
            "--compare" => o.compare = true,
            "--service" => o.service = Some(value("--service")?.into()),
            "-h" | "--help" => return Err(USAGE.into()),
            url if url.starts_with("http://") => o.url = url.to_owned(),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.connections == 0 || o.ids == 0 || o.duration.is_zero() {
        return Err(format!("-c, --ids and -d must be positive\n{USAGE}"));
    }
    if !(0.0..=100.0).contains(&o.put_percent) || !(0.0..=10.0).contains(&o.zipf) {
        return Err(format!(
            "--put-percent must be within 0..=100 and --zipf within 0..=10\n{USAGE}"
        ));
    }
    Ok(o)
}

fn secs(name: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{name}: not a number of seconds: {v:?}\n{USAGE}"))
}

/// splitmix64: a small, good-enough generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The request mix: which operation, on which id.
struct Mix {
    put_fraction: f64,
    /// Cumulative weights of ids 1..=n (Zipf: weight of id k is 1/k^s).
    cdf: Vec<f64>,
}

enum Op {
    GetUser(u64),
    GetOrders(u64),
    PutUser(u64),
}

impl Mix {
    fn new(o: &Options) -> Mix {
        let mut total = 0.0;
        let cdf = (1..=o.ids)
            .map(|k| {
                total += 1.0 / (k as f64).powf(o.zipf);
                total
            })
            .collect();
        Mix {
            put_fraction: o.put_percent / 100.0,
            cdf,
        }
    }

    fn id(&self, rng: &mut Rng) -> u64 {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let x = rng.unit() * total;
        (self
            .cdf
            .partition_point(|&c| c <= x)
            .min(self.cdf.len() - 1)
            + 1) as u64
    }

    /// The share of requests that go to the hottest `n` ids.
    fn top_share(&self, n: usize) -> f64 {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        self.cdf.get(n.saturating_sub(1)).map_or(1.0, |c| c / total)
    }

    fn next(&self, rng: &mut Rng) -> Op {
        let id = self.id(rng);
        let u = rng.unit();
        if u < self.put_fraction {
            Op::PutUser(id)
        } else if u < self.put_fraction + (1.0 - self.put_fraction) / 2.0 {
            Op::GetUser(id)
        } else {
            Op::GetOrders(id)
        }
    }
}

#[derive(Default)]
struct Phase {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

async fn connection(
    url: String,
    mix: std::sync::Arc<Mix>,
    seed: u64,
    until: Instant,
) -> Result<Phase, String> {
    let mut client = Client::new(&url).map_err(|e| e.to_string())?;
    let mut rng = Rng(seed);
    let mut phase = Phase::default();
    let mut writes = 0u64;
    while Instant::now() < until {
        let op = mix.next(&mut rng);
        let start = Instant::now();
        let result = match op {
            Op::GetUser(id) => client.get(&format!("/users/{id}")).await,
            Op::GetOrders(id) => client.get(&format!("/users/{id}/orders")).await,
            Op::PutUser(id) => {
                writes += 1;
                let body = format!(r#"{{"name":"user-{id}-s{seed}-w{writes}"}}"#);
                client.put_json(&format!("/users/{id}"), &body).await
            }
        };
        let elapsed = start.elapsed();
        match result {
            Ok(r) if r.status == 200 => phase
                .latencies_us
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)),
            Ok(r) => {
                phase.errors += 1;
                phase
                    .first_error
                    .get_or_insert_with(|| format!("status {}: {}", r.status, r.text()));
            }
            Err(e) => {
                phase.errors += 1;
                phase.first_error.get_or_insert_with(|| e.to_string());
                // Do not spin on a dead server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(phase)
}

async fn run_phase(o: &Options, mix: &std::sync::Arc<Mix>, length: Duration, salt: u64) -> Phase {
    let until = Instant::now() + length;
    let tasks: Vec<_> = (0..o.connections as u64)
        .map(|i| {
            let seed = o.seed.wrapping_mul(1_000_003).wrapping_add(i * 7919 + salt);
            tokio::spawn(connection(o.url.clone(), mix.clone(), seed, until))
        })
        .collect();
    let mut all = Phase::default();
    for task in tasks {
        match task.await {
            Ok(Ok(p)) => {
                all.latencies_us.extend(p.latencies_us);
                all.errors += p.errors;
                if all.first_error.is_none() {
                    all.first_error = p.first_error;
                }
            }
            Ok(Err(e)) => {
                all.errors += 1;
                all.first_error.get_or_insert(e);
            }
            Err(e) => {
                all.errors += 1;
                all.first_error.get_or_insert(e.to_string());
            }
        }
    }
    all
}

/// The service's `/stats` as JSON.
async fn stats(url: &str) -> Result<serde_json::Value, String> {
    let mut client = Client::new(url).map_err(|e| e.to_string())?;
    let r = client
        .get("/stats")
        .await
        .map_err(|e| format!("GET {url}/stats: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET {url}/stats: status {}", r.status));
    }
    r.json().map_err(|e| e.to_string())
}

fn delta(before: &serde_json::Value, after: &serde_json::Value, field: &str) -> u64 {
    let get = |v: &serde_json::Value| v.get(field).and_then(serde_json::Value::as_u64);
    get(after)
        .unwrap_or(0)
        .saturating_sub(get(before).unwrap_or(0))
}

/// One measured run.
struct Report {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    db_queries: u64,
    computations: u64,
    l1_hits: u64,
    l2_hits: u64,
    cache: bool,
}

impl Report {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn db_per_request(&self) -> f64 {
        self.db_queries as f64 / (self.requests.max(1)) as f64
    }

    fn print(&self) {
        println!(
            "requests {} in {:.2} s: {:.0} req/s; errors {}",
            self.requests,
            self.seconds,
            self.rps(),
            self.errors
        );
        if let Some(e) = &self.first_error {
            println!("first error: {e}");
        }
        println!(
            "latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us)
        );
        println!(
            "database queries {} ({:.4} per request); cache {}: computations {}, L1 hits {}, \
             L2 hits {}",
            self.db_queries,
            self.db_per_request(),
            if self.cache { "on" } else { "off" },
            self.computations,
            self.l1_hits,
            self.l2_hits
        );
    }
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn measure(o: &Options) -> Result<Report, String> {
    let mix = std::sync::Arc::new(Mix::new(o));
    println!(
        "load: {} connections, {:?} measured after {:?} warm-up; mix {:.1} % GET /users/{{id}}, \
         {:.1} % GET /users/{{id}}/orders, {:.1} % PUT /users/{{id}}; ids 1..={} {} \
         (top 10 ids: {:.0} % of requests)",
        o.connections,
        o.duration,
        o.warmup,
        (100.0 - o.put_percent) / 2.0,
        (100.0 - o.put_percent) / 2.0,
        o.put_percent,
        o.ids,
        if o.zipf == 0.0 {
            "uniform".to_owned()
        } else {
            format!("Zipf s={}", o.zipf)
        },
        mix.top_share(10) * 100.0
    );
    stats(&o.url).await?;
    if !o.warmup.is_zero() {
        run_phase(o, &mix, o.warmup, 1).await;
    }
    let before = stats(&o.url).await?;
    let start = Instant::now();
    let mut phase = run_phase(o, &mix, o.duration, 2).await;
    let seconds = start.elapsed().as_secs_f64();
    let after = stats(&o.url).await?;
    phase.latencies_us.sort_unstable();
    let l = &phase.latencies_us;
    Ok(Report {
        requests: l.len() as u64 + phase.errors,
        errors: phase.errors,
        first_error: phase.first_error,
        seconds,
        p50_us: percentile(l, 50.0),
        p99_us: percentile(l, 99.0),
        max_us: l.last().copied().unwrap_or(0),
        db_queries: delta(&before, &after, "db_queries"),
        computations: delta(&before, &after, "computations"),
        l1_hits: delta(&before, &after, "l1_hits"),
        l2_hits: delta(&before, &after, "l2_hits"),
        cache: after.get("cache").and_then(serde_json::Value::as_bool) == Some(true),
    })
}

async fn compare(o: &Options) -> Result<(), String> {
    let service = match &o.service {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("current_exe: {e}"))?
            .with_file_name(format!(
                "tiered-service-example{}",
                std::env::consts::EXE_SUFFIX
            )),
    };
    if !service.exists() {
        return Err(format!(
            "{} not found: build it first (`cargo build --release -p tiered-service-example`) \
             or give --service PATH",
            service.display()
        ));
    }
    let redis = RedisServer::spawn().map_err(|e| format!("redis-server: {e}"))?;
    let redis_url = redis.url();
    println!(
        "compare: service {}; redis-server on port {}; each run on a fresh per-run database",
        service.display(),
        redis.port()
    );
    let runs: [(&str, &[&str], Option<&str>); 3] = [
        ("tiered, L1 + Redis L2", &[], Some(redis_url.as_str())),
        ("tiered, L1 only", &[], None),
        ("no cache (--no-cache)", &["--no-cache"], None),
    ];
    let mut rows = Vec::new();
    for (label, args, redis_url) in runs {
        println!("\n== {label}");
        let mut env = vec![
            ("PORT", "0"),
            ("TIERED_NAMESPACE", "compare"),
            ("SERVICE_DB", ""),
            ("RUST_LOG", "warn"),
        ];
        env.push(("REDIS_URL", redis_url.unwrap_or("")));
        let mut svc = Service::start(label, &service, args, &env)?;
        let opts = Options {
            url: svc.url().to_owned(),
            ..o.clone()
        };
        let report = measure(&opts).await;
        svc.stop();
        let report = report?;
        report.print();
        rows.push((label, report));
    }
    println!(
        "\n| mode | req/s | p50 ms | p99 ms | max ms | DB queries / request | L1 hits | L2 hits | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, r) in &rows {
        println!(
            "| {label} | {:.0} | {:.3} | {:.3} | {:.1} | {:.4} | {} | {} | {} |",
            r.rps(),
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.max_us),
            r.db_per_request(),
            r.l1_hits,
            r.l2_hits,
            r.errors
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = if o.compare {
        compare(&o).await
    } else {
        measure(&o).await.map(|r| r.print())
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
