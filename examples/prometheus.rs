//! Metrics for Prometheus: `cargo run -p tiered-observability-tests --example prometheus` (the
//! package that turns on the `metrics` feature and has the Prometheus exporter).
//!
//! Installs the recorder of `metrics-exporter-prometheus`, installs the runtime (embedded, or
//! Redis with `TIERED_REDIS_URL`), makes a few memoized calls, and prints the scrape (the
//! README shows a sample). With `--serve` it then serves the scrape at
//! `http://127.0.0.1:9898/metrics` until stopped, each scrape fresh (`export_metrics` first).

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tiered::tiered_cache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tiered_cache(key = "square:<n>", ttl = "60s")]
async fn square(n: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    n * n
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let rt = tiered::Builder::from_env()
        .namespace("example")
        .install()
        .await?;
    for n in 0..3 {
        square(n).await;
        square(n).await;
    }
    rt.export_metrics();
    let scrape = prometheus.render();
    // The lines of the function's counters that moved, and the body-time summary.
    for line in scrape.lines().filter(|l| {
        l.starts_with("tiered_body_seconds")
            || (l.contains("site=\"prometheus::square\"") && !l.ends_with(" 0"))
    }) {
        println!("{line}");
    }
    if std::env::args().any(|a| a == "--serve") {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:9898").await?;
        println!("serving http://127.0.0.1:9898/metrics");
        loop {
            let (mut socket, _) = listener.accept().await?;
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await?;
            rt.export_metrics();
            let body = prometheus.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await?;
        }
    }
    Ok(())
}
