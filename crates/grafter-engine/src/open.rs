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
            return Err(OpenError::Unsupported(url.to_owned()));
        }
        if path == ":memory:" {
            return Err(OpenError::InMemory(url.to_owned()));
        }
        return Ok(Backend::Sqlite(path));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Backend::Postgres);
    }
    Err(OpenError::Unsupported(url.to_owned()))
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
