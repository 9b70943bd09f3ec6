//! `grafter`: run the server, enqueue and manage jobs from a shell.

mod bench;
mod client;
mod jobs;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Grafter: durable background jobs. One binary; SQLite by default.
#[derive(Parser)]
#[command(name = "grafter", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: HTTP API, worker protocol and maintenance.
    Serve(serve::ServeArgs),
    /// Apply database migrations and exit (serve also applies them on start).
    Migrate(serve::MigrateArgs),
    /// Enqueue one job.
    Enqueue(jobs::EnqueueArgs),
    /// List, show, retry, cancel or delete jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// List queues with their job counts, or pause and resume one.
    Queues(jobs::QueuesArgs),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Measure throughput and latency on a throwaway database (see docs/benchmarks.md).
    Bench(bench::BenchArgs),
}

/// Where a command finds the server.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The Grafter server's base URL.
    #[arg(
        long,
        env = "GRAFTER_URL",
        default_value = "http://127.0.0.1:7380",
        global = true
    )]
    url: String,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "GRAFTER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print raw JSON answers instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

/// A failure to report on one line.
pub struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Migrate(args) => serve::migrate(args).await,
            Command::Enqueue(args) => jobs::enqueue(args).await,
            Command::Jobs(command) => jobs::jobs(command).await,
            Command::Queues(args) => jobs::queues(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Openapi => {
                println!("{}", grafter_server::openapi_json());
                Ok(())
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A path argument that must exist.
pub fn existing_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("no such file: {s}"))
    }
}
