//! The service: `cargo run -p tiered-service-example` (see the package's README and
//! [`tiered_service_example::config`] for the settings).
//!
//! Start-up: the Prometheus recorder, the database (created and seeded when new), the tiered
//! runtime (Redis when `REDIS_URL` is set), then the listener; it prints exactly one line,
//! `listening on http://127.0.0.1:<port>`, on stdout once it accepts connections. SIGTERM or
//! Ctrl-C: stop accepting, finish the requests in progress, shut the runtime down, and drop
//! the database when it was created for this run.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use metrics_exporter_prometheus::PrometheusBuilder;
use tiered_service_example::api::{self, AppState};
use tiered_service_example::config::{Config, Database};
use tiered_service_example::{cache, db};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    // The recorder first: the runtime hands its figures to whichever is installed.
    let prometheus = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "no Prometheus recorder: /metrics answers 503");
            None
        }
    };

    let name = config.database.name().to_owned();
    let created = db::create_database(&config.database_url, &name)
        .await
        .map_err(|e| {
            format!(
                "PostgreSQL: cannot create or find database {name:?} through DATABASE_URL \
                 ({}): {e}. Is PostgreSQL running on 127.0.0.1:5432? \
                 (`apt-get install postgresql`, `pg_ctlcluster 15 main start`)",
                redacted(&config.database_url)
            )
        })?;
    let drop_at_exit = created && matches!(config.database, Database::PerRun(_));
    let served = serve(&config, &name, prometheus).await;
    if drop_at_exit {
        match db::drop_database(&config.database_url, &name).await {
            Ok(()) => tracing::info!(database = %name, "per-run database dropped"),
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "could not drop the per-run database")
            }
        }
    }
    served
}

async fn serve(
    config: &Config,
    name: &str,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<(), String> {
    let pool = db::connect(&config.database_url, name, config.pool_size)
        .await
        .map_err(|e| format!("PostgreSQL: cannot connect to database {name:?}: {e}"))?;
    let seeded = db::prepare(&pool)
        .await
        .map_err(|e| format!("PostgreSQL: cannot create or seed the schema: {e}"))?;
    tracing::info!(database = %name, seeded_users = seeded, "database ready");
    cache::set_pool(pool.clone());

    let mut builder = tiered::Runtime::builder().namespace(config.namespace.clone());
    // Without the cache the handlers never call a memoized function: no need for Redis.
    if config.cache
        && let Some(url) = &config.redis_url
    {
        builder = builder.redis_url(url.clone());
    }
    let runtime = builder
        .install()
        .await
        .map_err(|e| format!("tiered runtime: {e}"))?;
    tracing::info!(
        cache = config.cache,
        redis = ?runtime.config().redis_addr(),
        namespace = %config.namespace,
        "tiered runtime installed"
    );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", config.port))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("listener address: {e}"))?
        .port();
    let state = AppState {
        cache: config.cache,
        pool: pool.clone(),
        runtime: runtime.clone(),
        prometheus,
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://127.0.0.1:{port}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server: {e}"));
    tracing::info!("shutting down");
    runtime.shutdown().await;
    pool.close().await;
    served
}

/// Resolves on Ctrl-C or SIGTERM (a signal that cannot be watched is logged and ignored).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot watch Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
