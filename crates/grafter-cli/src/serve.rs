//! `grafter serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use grafter_server::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use grafter_engine::redact_url as redact;

use crate::{outln, Failure};

/// Settings: flags win over `GRAFTER_*` variables, which win over the file.
#[derive(Args)]
pub struct ServeArgs {
    /// Where jobs are stored: sqlite://PATH or postgres://… [default: sqlite://grafter.db]
    #[arg(long, env = "GRAFTER_DATABASE_URL")]
    database: Option<String>,
    /// Address to listen on [default: 127.0.0.1:7380]
    #[arg(long, env = "GRAFTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// TOML file with further settings (see README).
    #[arg(long, env = "GRAFTER_CONFIG", value_parser = crate::existing_file)]
    config: Option<PathBuf>,
    /// Require this bearer token on every /v1 request (at least 16 characters).
    #[arg(long, env = "GRAFTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve without a token on a non-loopback address (refused otherwise).
    /// `--insecure=false` (or GRAFTER_INSECURE=false) overrides the file.
    #[arg(long, env = "GRAFTER_INSECURE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: Option<bool>,
    /// Let push targets reach loopback and private addresses (refused
    /// otherwise). `--allow-private-push=false` overrides the file.
    #[arg(long, env = "GRAFTER_ALLOW_PRIVATE_PUSH", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    allow_private_push: Option<bool>,
    /// Export the server's spans over OTLP/HTTP to this collector (its base
    /// URL; spans go to <URL>/v1/traces).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Export the server's spans over OTLP/HTTP to exactly this URL (wins
    /// over --otlp-endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    otlp_traces_endpoint: Option<String>,
    /// The service.name of exported spans [default: grafter]
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    otel_service_name: Option<String>,
    /// Headers sent with every span export, as name=value pairs separated
    /// by commas, values percent-encoded (a collector's API key, say).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true)]
    otlp_headers: Option<String>,
    /// As --otlp-headers, for the traces endpoint alone (wins over it).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        hide_env_values = true
    )]
    otlp_traces_headers: Option<String>,
}

impl ServeArgs {
    /// The server's settings: the file's, then the variables' and flags'.
    fn into_config(self) -> Result<ServerConfig, Failure> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::from_file(path)?,
            None => ServerConfig::default(),
        };
        if let Some(database) = self.database {
            config.database = database;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(token) = self.token {
            config.token = Some(token);
        }
        if let Some(insecure) = self.insecure {
            config.insecure = insecure;
        }
        if let Some(allow) = self.allow_private_push {
            config.push.allow_private = allow;
        }
        // An endpoint given here replaces the file's pair, so the file's
        // traces_endpoint cannot silently win over a newer base URL.
        if let Some(endpoint) = set(self.otlp_endpoint) {
            config.otlp.endpoint = Some(endpoint);
            config.otlp.traces_endpoint = None;
        }
        if let Some(url) = set(self.otlp_traces_endpoint) {
            config.otlp.traces_endpoint = Some(url);
        }
        if let Some(name) = set(self.otel_service_name) {
            config.otlp.service_name = name;
        }
        // Over the file's headers, the general ones, then the traces' own.
        if let Some(list) = &set(self.otlp_headers) {
            config
                .otlp
                .add_header_list("OTEL_EXPORTER_OTLP_HEADERS", list)?;
        }
        if let Some(list) = &set(self.otlp_traces_headers) {
            config
                .otlp
                .add_header_list("OTEL_EXPORTER_OTLP_TRACES_HEADERS", list)?;
        }
        config.validate()?;
        Ok(config)
    }
}

/// `grafter openapi`: the document a server with these settings serves
/// (its security and limits follow them).
pub fn openapi(args: ServeArgs) -> Result<(), Failure> {
    let config = args.into_config()?;
    outln!("{}", grafter_server::openapi_json(&config))
}

pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written is lost, nothing more: the
        // fallback report of it goes through `eprintln!`, which panics on a
        // closed stderr (a log shipper that went away) inside whatever task
        // was logging, shutdown's own included.
        .log_internal_errors(false)
        .init();
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    init_logging();
    let config = args.into_config()?;

    // The address first: a server that cannot listen leaves the database
    // as it found it (not created, not migrated).
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    // One server owns a SQLite file: held until the process ends.
    let lock = lock_sqlite(&config.database)?;
    let store = grafter_engine::open(&config.database, &config.postgres)
        .await
        .map_err(|e| format!("cannot open database {}: {e}", redact(&config.database)))?;
    let address = listener.local_addr()?;
    tracing::info!(
        database = %redact(&config.database),
        auth = if config.token.is_some() { "token" } else { "none" },
        "Grafter listening on http://{address}"
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    grafter_server::serve(listener, store, config, shutdown).await?;
    tracing::info!("Grafter stopped");
    // Its descriptor of the database closes with the process, after the
    // store's: closed sooner, it would release SQLite's own locks on the file.
    std::mem::forget(lock);
    Ok(())
}

/// Takes the lock of the SQLite file `database` names (see
/// [`grafter_sqlite::ServeLock`]); none for PostgreSQL or an in-memory
/// database. A `file:` URI is refused: SQLite reads its path and options
/// its own way, so no lock could be sure to be on the file it opens.
fn lock_sqlite(database: &str) -> Result<Option<grafter_sqlite::ServeLock>, Failure> {
    let Some(path) = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
    else {
        return Ok(None);
    };
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    if path.starts_with("file:") {
        return Err(Failure::Message(format!(
            "cannot serve {database}: grafter serve takes a file's path, sqlite://PATH, \
             not a file: URI"
        )));
    }
    let lock = grafter_sqlite::ServeLock::acquire(std::path::Path::new(path)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            e.to_string()
        } else {
            format!("cannot serve {database}: {e}")
        }
    })?;
    tracing::debug!(lock = %lock.path().display(), "holding the SQLite file's serve lock");
    Ok(Some(lock))
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing in-flight requests");
    shutdown.cancel();
}

/// `grafter migrate`: bring the database's schema up to date and exit.
#[derive(Args)]
pub struct MigrateArgs {
    /// The database: sqlite://PATH or postgres://… [default: the file's
    /// `database`, else sqlite://grafter.db]
    #[arg(long, env = "GRAFTER_DATABASE_URL")]
    database: Option<String>,
    /// TOML file whose `database` and [postgres] settings (schema) apply, as
    /// for `grafter serve`.
    #[arg(long, env = "GRAFTER_CONFIG", value_parser = crate::existing_file)]
    config: Option<PathBuf>,
}

pub async fn migrate(args: MigrateArgs) -> Result<(), Failure> {
    init_logging();
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(database) = args.database {
        config.database = database;
    }
    let database = &config.database;
    let applied = grafter_engine::migrate(database, &config.postgres)
        .await
        .map_err(|e| format!("cannot migrate {}: {e}", redact(database)))?;
    if applied.is_empty() {
        outln!("{}: schema is up to date", redact(database))?;
    } else {
        outln!("{}: applied migrations {applied:?}", redact(database))?;
    }
    Ok(())
}

/// An OpenTelemetry setting that was given a value: an empty one (an
/// `OTEL_…` variable set to nothing) counts as unset, as the OpenTelemetry
/// specification has it.
fn set(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}
