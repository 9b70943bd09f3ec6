//! `grafter`: run the server, enqueue and manage jobs from a shell.

mod batches;
mod bench;
mod client;
mod jobs;
mod ops;
mod schedules;
mod serve;
mod tokens;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// List, show, put, delete, pause, resume or trigger schedules (periodic jobs).
    Schedules(schedules::SchedulesArgs),
    /// List or show batches, or seal or cancel one.
    Batches(batches::BatchesArgs),
    /// Version, store, schema, queues, workers, leader and maintenance health.
    Info(ops::InfoArgs),
    /// Delete finished jobs older than an age (or count them with --dry-run).
    Cleanup(ops::CleanupArgs),
    /// Create, list or revoke scoped API tokens (an admin token is needed).
    Tokens(tokens::TokensArgs),
    /// Print the OpenAPI document of the HTTP API, as `serve` with the same
    /// options would serve it (with a token, its routes need one).
    Openapi(serve::ServeArgs),
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

/// Why a command did not finish.
pub enum Failure {
    /// A failure to report on one line.
    Message(String),
    /// Whoever read stdout stopped reading (`grafter jobs list | head`):
    /// nothing to report, the command just ends.
    OutputClosed,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Message(e.to_string())
    }
}

/// `println!` for command output: a closed stdout is [`Failure::OutputClosed`]
/// rather than the panic `println!` makes of it.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

/// Writes one line of command output (see [`outln!`]).
pub fn write_stdout(line: std::fmt::Arguments) -> Result<(), Failure> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Failure::OutputClosed,
        _ => Failure::Message(format!("cannot write the output: {e}")),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error_line(&format!("cannot start the async runtime: {e}"));
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
            Command::Schedules(args) => schedules::schedules(args).await,
            Command::Batches(args) => batches::batches(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Info(args) => ops::info(args).await,
            Command::Cleanup(args) => ops::cleanup(args).await,
            Command::Tokens(args) => tokens::tokens(args).await,
            Command::Openapi(args) => serve::openapi(args),
        }
    });
    match outcome {
        Ok(()) | Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(Failure::Message(message)) => {
            error_line(&message);
            ExitCode::FAILURE
        }
    }
}

/// Says why the command failed on stderr; a closed stderr is not a reason to
/// panic on the way out (`eprintln!` would).
fn error_line(message: &str) {
    let _ = writeln!(std::io::stderr(), "error: {message}");
}

/// A path argument that must exist.
pub fn existing_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.is_file() {
        Ok(path)
    } else if path.is_dir() {
        Err(format!("{s} is a directory, not a file"))
    } else {
        Err(format!("no such file: {s}"))
    }
}

/// A queue name or schedule id as the API takes it in a URL
/// ([`grafter_core::validate_path_name`]); checked here because a URL
/// library resolves `.` and `..` away before the server could refuse them.
pub fn path_name(s: &str) -> Result<String, String> {
    grafter_core::validate_path_name("name", s).map_err(|e| e.message)?;
    Ok(s.to_owned())
}

/// A duration the API accepts (e.g. 30s, 5m, 2h): humantime's syntax, whole
/// milliseconds, at most [`grafter_core::time::MAX_DURATION`]. Checked here so
/// that the flag is named in the error, no part of it is silently dropped in
/// the conversion to the API's milliseconds, and no later sum can overflow.
pub fn api_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err("must be whole milliseconds (e.g. 1ms, 250ms, 2s), the API's unit".into());
    }
    let max = grafter_core::time::MAX_DURATION;
    if duration > max {
        // humantime's `y` is 365.25 days, the API's year 365: say it in days.
        return Err(format!(
            "must be at most {}d (100 years of 365 days), the longest the API accepts",
            max.as_secs() / 86_400
        ));
    }
    Ok(duration)
}
