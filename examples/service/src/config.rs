//! The service's configuration, from the environment and the command line.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/postgres` | an admin URL: the service creates its database through it |
//! | `SERVICE_DB` | a new `tiered_service_<pid>_<millis>`, dropped at shutdown | an existing or shared database name (created when missing, never dropped) |
//! | `REDIS_URL` | none: L1 only | Redis as L2 and invalidation bus |
//! | `PORT` | 3000 | `0`: any free port (the `listening on` line tells which) |
//! | `TIERED_NAMESPACE` | `service` | the runtime's key prefix |
//! | `CACHE` | `on` | `off` (or the flag `--no-cache`): handlers query PostgreSQL directly |
//! | `DB_POOL_SIZE` | 16 | PostgreSQL connections of the pool |
//! | `RUST_LOG` | `info` | log filter (logs go to stderr) |

/// The default admin URL (the machine's PostgreSQL, trust authentication).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Where the service's database comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A database created for this run and dropped at shutdown.
    PerRun(String),
    /// A named database, created when missing and never dropped (`SERVICE_DB`).
    Shared(String),
}

impl Database {
    /// The database's name.
    pub fn name(&self) -> &str {
        match self {
            Database::PerRun(n) | Database::Shared(n) => n,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Admin URL of the PostgreSQL server.
    pub database_url: String,
    /// The database the service uses.
    pub database: Database,
    /// Redis URL, if any.
    pub redis_url: Option<String>,
    /// TCP port on 127.0.0.1 (0: any free one).
    pub port: u16,
    /// The tiered runtime's namespace.
    pub namespace: String,
    /// Whether handlers go through the memoized functions (`false`: straight to PostgreSQL).
    pub cache: bool,
    /// Pool size.
    pub pool_size: u32,
}

impl Config {
    /// Reads the configuration from `vars` (name → value) and `args` (without the program
    /// name); an error names the offending variable or argument.
    pub fn from_sources(
        vars: impl Fn(&str) -> Option<String>,
        args: impl IntoIterator<Item = String>,
    ) -> Result<Config, String> {
        let mut no_cache_flag = false;
        for arg in args {
            match arg.as_str() {
                "--no-cache" => no_cache_flag = true,
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        let nonempty = |name: &str| vars(name).filter(|v| !v.trim().is_empty());
        let cache = match nonempty("CACHE").as_deref() {
            None | Some("on") => !no_cache_flag,
            Some("off") => false,
            Some(other) => return Err(format!("CACHE must be `on` or `off`, not {other:?}")),
        };
        let port = match nonempty("PORT") {
            None => 3000,
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| format!("PORT must be a port number (0 for any), not {p:?}"))?,
        };
        let pool_size = match nonempty("DB_POOL_SIZE") {
            None => 16,
            Some(p) => match p.trim().parse() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("DB_POOL_SIZE must be a positive number, not {p:?}")),
            },
        };
        let database = match nonempty("SERVICE_DB") {
            Some(name) if crate::db::valid_database_name(&name) => Database::Shared(name),
            Some(name) => {
                return Err(format!(
                    "SERVICE_DB {name:?} is not a plain name (ASCII letters, digits, `_`, \
                     at most 63 bytes, not starting with a digit)"
                ));
            }
            None => Database::PerRun(crate::db::run_database_name()),
        };
        Ok(Config {
            database_url: nonempty("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            database,
            redis_url: nonempty("REDIS_URL"),
            port,
            namespace: nonempty("TIERED_NAMESPACE").unwrap_or_else(|| "service".into()),
            cache,
            pool_size,
        })
    }

    /// Reads the process's environment and arguments.
    pub fn from_env() -> Result<Config, String> {
        Config::from_sources(|name| std::env::var(name).ok(), std::env::args().skip(1))
    }
}

/// What `--help` prints.
pub const USAGE: &str = "usage: tiered-service-example [--no-cache]
environment: DATABASE_URL (admin URL, default postgres://postgres@127.0.0.1:5432/postgres),
  SERVICE_DB (use/share this database; default: a new per-run database dropped at shutdown),
  REDIS_URL (optional L2), PORT (default 3000, 0 = any free port), TIERED_NAMESPACE (service),
  CACHE=off (same as --no-cache), DB_POOL_SIZE (16), RUST_LOG (info)";

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)], args: &[&str]) -> Result<Config, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(
            |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            args.iter().map(|a| a.to_string()),
        )
    }

    #[test]
    fn defaults() {
        let c = config(&[], &[]).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert!(matches!(&c.database, Database::PerRun(n) if n.starts_with("tiered_service_")));
        assert!(crate::db::valid_database_name(c.database.name()));
        assert_eq!(c.redis_url, None);
        assert_eq!(c.port, 3000);
        assert_eq!(c.namespace, "service");
        assert!(c.cache);
    }

    #[test]
    fn overrides_and_errors() {
        let c = config(
            &[
                ("PORT", "0"),
                ("SERVICE_DB", "shared_db"),
                ("REDIS_URL", "redis://127.0.0.1:7000/"),
                ("CACHE", "on"),
            ],
            &["--no-cache"],
        )
        .unwrap();
        assert_eq!(c.port, 0);
        assert_eq!(c.database, Database::Shared("shared_db".into()));
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:7000/"));
        assert!(!c.cache, "--no-cache wins over CACHE=on");
        assert!(!config(&[("CACHE", "off")], &[]).unwrap().cache);
        assert!(config(&[("CACHE", "maybe")], &[]).is_err());
        assert!(config(&[("PORT", "http")], &[]).is_err());
        assert!(config(&[("SERVICE_DB", "x\"; DROP")], &[]).is_err());
        assert!(config(&[], &["--fast"]).is_err());
    }
}
