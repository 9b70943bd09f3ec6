//! `grafter serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use grafter_server::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::Failure;

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
    /// Require this bearer token on every /v1 request.
    #[arg(long, env = "GRAFTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(database) = args.database {
        config.database = database;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(token) = args.token {
        config.token = Some(token);
    }
    config.validate()?;

    let store = grafter_server::open_store(&config.database)
        .await
        .map_err(|e| format!("cannot open database {}: {e}", config.database))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(
        database = %config.database,
        auth = if config.token.is_some() { "token" } else { "none" },
        "Grafter listening on http://{address}"
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    grafter_server::serve(listener, store, config, shutdown).await?;
    tracing::info!("Grafter stopped");
    Ok(())
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
