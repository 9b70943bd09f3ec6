//! Opening (and migrating) a store by its database URL: `sqlite://PATH` or
//! `postgres://…`, each available when its cargo feature is on.

use std::sync::Arc;

use grafter_store::{Store, StoreError};
use serde::Deserialize;

/// How a PostgreSQL database is used (the `[postgres]` table of the config).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// Most pooled connections per node.
    pub pool_size: usize,
    /// Schema for Grafter's tables (default: the connection's search path).
    pub schema: Option<String>,
    /// `LISTEN` for new work; turn off behind PgBouncer in transaction mode.
    pub listen: bool,
    /// With `listen` off, how often waiting fetches look again.
    pub poll_interval_ms: u64,
    /// Apply migrations on start (else run `grafter migrate` first).
    pub migrate: bool,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            pool_size: 16,
            schema: None,
            listen: true,
            poll_interval_ms: 1_000,
            migrate: true,
        }
    }
}

/// Why a database URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not a URL Grafter knows.
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    Unsupported(String),
    /// A URL whose backend this build leaves out.
    #[error(
        "'{url}' needs the `{feature}` feature of grafter-engine, which this build leaves out"
    )]
    NotBuiltIn {
        /// The URL.
        url: String,
        /// The cargo feature that adds its backend.
        feature: &'static str,
    },
    /// A PostgreSQL schema that lacks migrations, opened by a node that
    /// does not apply them.
    #[error(
        "the database's schema lacks migrations {pending:?} of this grafter, and \
         postgres.migrate is off: run `grafter migrate` with the same settings first"
    )]
    NotMigrated {
        /// The versions not applied.
        pending: Vec<i32>,
    },
    /// An SQLite database only in memory: each of a store's connections
    /// would have its own, empty and apart.
    #[error(
        "'{0}' is an in-memory database, which grafter cannot serve (its reads run on \
         connections of their own, and each would see a database of its own): use \
         sqlite://PATH"
    )]
    InMemory(String),
    /// The store would not open.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The backend a URL names, and what follows its scheme.
enum Backend<'a> {
    Sqlite(&'a str),
    Postgres,
}

fn backend(url: &str) -> Result<Backend<'_>, OpenError> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(OpenError::Unsupported(redact_url(url)));
        }
        if path == ":memory:" {
            return Err(OpenError::InMemory(url.to_owned()));
        }
        return Ok(Backend::Sqlite(path));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Backend::Postgres);
    }
    Err(OpenError::Unsupported(redact_url(url)))
}

/// A database URL fit for logs and messages: any password replaced by
/// `***`, whether in `user:password@`, in a `password=` query parameter, or
/// in libpq's `key=value` form (`host=db password=…`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_values(url);
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let mut shown = match rest.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{rest}"),
        },
        None => format!("{scheme}://{rest}"),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// libpq's `key=value` form with the password's value hidden: everything
/// from `password` on, as a quoted value may hold spaces (and a value is
/// not worth parsing to show the settings after it).
fn redact_key_values(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    match lower.find("password") {
        Some(at) => format!("{}password=***", &text[..at]),
        None => text.to_owned(),
    }
}

/// Opens the store a database URL names: `sqlite://PATH` (also `sqlite:PATH`)
/// or `postgres://…` (also `postgresql://`), the latter with `postgres`.
/// Pending migrations are applied (on PostgreSQL unless `postgres.migrate`
/// is off).
pub async fn open(url: &str, postgres: &PostgresSettings) -> Result<Arc<dyn Store>, OpenError> {
    match backend(url)? {
        Backend::Sqlite(path) => open_sqlite(url, path).await,
        Backend::Postgres => open_postgres(url, postgres).await,
    }
}

/// Applies pending migrations to the database a URL names and returns the
/// versions applied now (SQLite applies its own on open and reports none).
pub async fn migrate(url: &str, postgres: &PostgresSettings) -> Result<Vec<i32>, OpenError> {
    match backend(url)? {
        Backend::Sqlite(path) => {
            open_sqlite(url, path).await?;
            Ok(Vec::new())
        }
        Backend::Postgres => migrate_postgres(url, postgres).await,
    }
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(_url: &str, path: &str) -> Result<Arc<dyn Store>, OpenError> {
    Ok(Arc::new(grafter_sqlite::SqliteStore::open(path).await?))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(url: &str, _path: &str) -> Result<Arc<dyn Store>, OpenError> {
    Err(OpenError::NotBuiltIn {
        url: url.to_owned(),
        feature: "sqlite",
    })
}

#[cfg(feature = "postgres")]
fn postgres_config(url: &str, settings: &PostgresSettings) -> grafter_postgres::PostgresConfig {
    let mut config = grafter_postgres::PostgresConfig::new(url);
    config.pool_size = settings.pool_size;
    config.schema = settings.schema.clone();
    config.listen = settings.listen;
    config.poll_interval = std::time::Duration::from_millis(settings.poll_interval_ms);
    config.migrate = settings.migrate;
    config
}

#[cfg(feature = "postgres")]
async fn open_postgres(
    url: &str,
    settings: &PostgresSettings,
) -> Result<Arc<dyn Store>, OpenError> {
    let config = postgres_config(url, settings);
    let store = grafter_postgres::PostgresStore::connect(config).await?;
    if !settings.migrate {
        let pending = store.pending_migrations().await?;
        if !pending.is_empty() {
            return Err(OpenError::NotMigrated { pending });
        }
    }
    Ok(Arc::new(store))
}

#[cfg(feature = "postgres")]
async fn migrate_postgres(url: &str, settings: &PostgresSettings) -> Result<Vec<i32>, OpenError> {
    let mut config = postgres_config(url, settings);
    config.listen = false;
    config.migrate = false;
    config.pool_size = 1;
    let store = grafter_postgres::PostgresStore::connect(config).await?;
    Ok(store.migrate().await?)
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(
    url: &str,
    _settings: &PostgresSettings,
) -> Result<Arc<dyn Store>, OpenError> {
    Err(OpenError::NotBuiltIn {
        url: url.to_owned(),
        feature: "postgres",
    })
}

#[cfg(not(feature = "postgres"))]
async fn migrate_postgres(url: &str, settings: &PostgresSettings) -> Result<Vec<i32>, OpenError> {
    open_postgres(url, settings).await.map(|_| Vec::new())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/jobs"),
            "postgres://app:***@db:5432/jobs"
        );
        assert_eq!(
            redact_url("postgres://app@db/jobs"),
            "postgres://app@db/jobs"
        );
        assert_eq!(redact_url("sqlite://grafter.db"), "sqlite://grafter.db");
        assert_eq!(
            redact_url("postgres://app@db/jobs?sslmode=require&Password=s3cret"),
            "postgres://app@db/jobs?sslmode=require&Password=***"
        );
        assert_eq!(
            redact_url("postgres://app:pw@db/jobs?password=s3cret"),
            "postgres://app:***@db/jobs?password=***"
        );
        assert_eq!(
            redact_url("host=db user=app PassWord='s3 cret' dbname=jobs"),
            "host=db user=app password=***"
        );
    }
}
