//! `grafter enqueue`, `grafter jobs …`, `grafter queues …`.

use std::time::Duration;

use chrono::Utc;
use clap::{Args, Subcommand};
use grafter_core::{Job, NewJob};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{api_duration, outln, path_name, Failure, ServerArgs};

#[derive(Args)]
pub struct EnqueueArgs {
    /// The job's kind (its name, e.g. send_email).
    kind: String,
    /// Arguments as JSON.
    #[arg(long, default_value = "{}", value_parser = parse_json_arg)]
    args: Value,
    /// Queue.
    #[arg(long, default_value = grafter_core::DEFAULT_QUEUE)]
    queue: String,
    /// Priority: lower runs first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i16,
    /// Run after this delay, e.g. 30s, 5m, 2h.
    #[arg(long, value_parser = api_duration, conflicts_with = "run_at")]
    delay: Option<Duration>,
    /// Run at this time (RFC 3339, e.g. 2030-01-01T09:00:00Z).
    #[arg(long)]
    run_at: Option<chrono::DateTime<Utc>>,
    /// Attempts before the job is dead.
    #[arg(long, default_value_t = grafter_core::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: i32,
    /// Deduplicate among unfinished jobs with this key.
    #[arg(long)]
    unique_key: Option<String>,
    /// A tag (repeat for more).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Longest an attempt may run, e.g. 30s.
    #[arg(long, value_parser = api_duration)]
    timeout: Option<Duration>,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn parse_json_arg(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| {
        format!("not valid JSON ({e}); quote it like --args '{{\"to\": \"a@example.com\"}}'")
    })
}

pub async fn enqueue(args: EnqueueArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    let mut job = NewJob::new(args.kind, args.args);
    job.queue = args.queue;
    job.priority = args.priority;
    job.run_at = match (args.run_at, args.delay) {
        (Some(at), _) => Some(at),
        // `api_duration` bounds the delay, so the sum is far from saturating.
        (None, Some(delay)) => Some(grafter_core::time::after(Utc::now(), delay)),
        (None, None) => None,
    };
    job.max_attempts = args.max_attempts;
    job.unique_key = args.unique_key;
    job.tags = args.tags;
    job.timeout_ms = args
        .timeout
        .map(|t| i64::try_from(t.as_millis()))
        .transpose()?;
    job.validate()?;
    let job: Job = client
        .call(Method::POST, "/v1/jobs", Some(&serde_json::to_value(&job)?))
        .await?;
    if args.server.json {
        outln!("{}", serde_json::to_string_pretty(&job)?)?;
    } else {
        outln!(
            "job {} {} on queue {} ({}, run at {})",
            job.id,
            job.kind,
            job.queue,
            job.state,
            job.run_at.to_rfc3339()
        )?;
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only this state (scheduled, available, running, retryable, completed, dead, cancelled, expired).
        #[arg(long)]
        state: Option<String>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only jobs made by this schedule.
        #[arg(long)]
        schedule: Option<String>,
        /// Only jobs whose args hold a value, as path=value (e.g. user.id=42).
        #[arg(long)]
        args: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Continue from a previous page's cursor.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one job in full.
    Show(JobArg),
    /// Run a dead, cancelled, expired, scheduled or retryable job now.
    Retry(JobArg),
    /// Cancel a job (a running one is asked to stop).
    Cancel(JobArg),
    /// Delete a job.
    Delete(JobArg),
}

#[derive(Args)]
pub struct JobArg {
    /// The job's id.
    id: i64,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn jobs(command: JobsCommand) -> Result<(), Failure> {
    match command {
        JobsCommand::List {
            state,
            queue,
            kind,
            tag,
            schedule,
            args,
            limit,
            cursor,
            server,
        } => {
            let client = Client::new(&server)?;
            let mut query = format!("limit={limit}");
            for (name, value) in [
                ("state", state),
                ("queue", queue),
                ("kind", kind),
                ("tag", tag),
                ("schedule", schedule),
                ("args", args),
                ("cursor", cursor),
            ] {
                if let Some(value) = value {
                    query.push_str(&format!("&{name}={}", encode(&value)));
                }
            }
            let page: Value = client
                .call(Method::GET, &format!("/v1/jobs?{query}"), None)
                .await?;
            if server.json {
                outln!("{}", serde_json::to_string_pretty(&page)?)?;
                return Ok(());
            }
            let jobs: Vec<Job> = serde_json::from_value(page["jobs"].clone())?;
            outln!(
                "{:>10}  {:<10}  {:<16}  {:<24}  {:>7}  run_at",
                "id",
                "state",
                "queue",
                "kind",
                "attempt"
            )?;
            for job in &jobs {
                outln!(
                    "{:>10}  {:<10}  {:<16}  {:<24}  {:>3}/{:<3}  {}",
                    job.id,
                    job.state.as_str(),
                    job.queue,
                    job.kind,
                    job.attempt,
                    job.max_attempts,
                    job.run_at.to_rfc3339()
                )?;
            }
            if let Some(next) = page["next_cursor"].as_str() {
                outln!("more: --cursor {next}")?;
            }
            Ok(())
        }
        JobsCommand::Show(arg) => {
            let client = Client::new(&arg.server)?;
            let job: Value = client
                .call(Method::GET, &format!("/v1/jobs/{}", arg.id), None)
                .await?;
            outln!("{}", serde_json::to_string_pretty(&job)?)?;
            Ok(())
        }
        JobsCommand::Retry(arg) => act(arg, "retry", "available again").await,
        JobsCommand::Cancel(arg) => act(arg, "cancel", "cancelled").await,
        JobsCommand::Delete(arg) => {
            let client = Client::new(&arg.server)?;
            client
                .call::<Value>(Method::DELETE, &format!("/v1/jobs/{}", arg.id), None)
                .await?;
            outln!("job {} deleted", arg.id)?;
            Ok(())
        }
    }
}

async fn act(arg: JobArg, action: &str, done: &str) -> Result<(), Failure> {
    let client = Client::new(&arg.server)?;
    let job: Job = client
        .call(
            Method::POST,
            &format!("/v1/jobs/{}/{action}", arg.id),
            Some(&json!({})),
        )
        .await?;
    if arg.server.json {
        outln!("{}", serde_json::to_string_pretty(&job)?)?;
    } else if job.cancel_requested && job.state == grafter_core::JobState::Running {
        outln!(
            "job {} is running: its worker has been asked to stop",
            job.id
        )?;
    } else {
        outln!("job {} {done} ({})", job.id, job.state)?;
    }
    Ok(())
}

#[derive(Args)]
pub struct QueuesArgs {
    #[command(subcommand)]
    command: Option<QueuesCommand>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum QueuesCommand {
    /// List queues with job counts per state (the default).
    List,
    /// Stop handing out a queue's jobs.
    Pause {
        /// The queue.
        #[arg(value_parser = path_name)]
        name: String,
    },
    /// Hand out a queue's jobs again.
    Resume {
        /// The queue.
        #[arg(value_parser = path_name)]
        name: String,
    },
    /// Limit how many of a queue's jobs run at once and start per period,
    /// on every node (replaces its limits; docs/limits.md).
    SetLimits {
        /// The queue.
        #[arg(value_parser = path_name)]
        name: String,
        /// At most this many running at once.
        #[arg(long)]
        concurrency: Option<i64>,
        /// At most this many started in any window of --period-ms.
        #[arg(long, requires = "period_ms")]
        rate: Option<i64>,
        /// The rate's window, in ms.
        #[arg(long, requires = "rate")]
        period_ms: Option<i64>,
        /// Limit each partition apart: `partition` (the job's own) or
        /// `args.<path>` (e.g. args.customer_id).
        #[arg(long)]
        partition_by: Option<String>,
    },
    /// Remove a queue's limits.
    ClearLimits {
        /// The queue.
        #[arg(value_parser = path_name)]
        name: String,
    },
}

pub async fn queues(args: QueuesArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    let (path, method) = match &args.command {
        None | Some(QueuesCommand::List) => ("/v1/queues".to_owned(), Method::GET),
        Some(QueuesCommand::Pause { name }) => {
            (format!("/v1/queues/{}/pause", encode(name)), Method::POST)
        }
        Some(QueuesCommand::Resume { name }) => {
            (format!("/v1/queues/{}/resume", encode(name)), Method::POST)
        }
        Some(QueuesCommand::SetLimits { name, .. } | QueuesCommand::ClearLimits { name }) => {
            (format!("/v1/queues/{}", encode(name)), Method::PUT)
        }
    };
    let body = match &args.command {
        Some(QueuesCommand::SetLimits {
            concurrency,
            rate,
            period_ms,
            partition_by,
            ..
        }) => {
            let mut limits = serde_json::Map::new();
            if let Some(n) = concurrency {
                limits.insert("concurrency".into(), json!(n));
            }
            if let (Some(count), Some(period_ms)) = (rate, period_ms) {
                limits.insert(
                    "rate".into(),
                    json!({"count": count, "period_ms": period_ms}),
                );
            }
            if let Some(by) = partition_by {
                limits.insert("partition_by".into(), json!(by));
            }
            Some(json!({ "limits": limits }))
        }
        Some(QueuesCommand::ClearLimits { .. }) => Some(json!({ "limits": null })),
        _ => (method == Method::POST).then(|| json!({})),
    };
    let answer: Value = client.call(method, &path, body.as_ref()).await?;
    if args.server.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(());
    }
    let queues = match answer.get("queues") {
        Some(list) => list.as_array().cloned().unwrap_or_default(),
        None => vec![answer],
    };
    let states = [
        "pending",
        "scheduled",
        "available",
        "running",
        "retryable",
        "completed",
        "dead",
        "cancelled",
        "expired",
    ];
    let mut header = format!("{:<20} {:<7}", "queue", "paused");
    for state in states {
        header.push_str(&format!(" {state:>10}"));
    }
    header.push_str("  limits");
    outln!("{header}")?;
    for queue in queues {
        let mut row = format!(
            "{:<20} {:<7}",
            queue["name"].as_str().unwrap_or("?"),
            if queue["paused"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            }
        );
        for state in states {
            row.push_str(&format!(
                " {:>10}",
                queue["counts"][state].as_u64().unwrap_or(0)
            ));
        }
        row.push_str(&format!("  {}", limits_summary(&queue["limits"])));
        outln!("{row}")?;
    }
    Ok(())
}

/// A queue's limits in a few words: `2 at once, 10 per 1000 ms, per
/// args.customer_id`, or `-`.
fn limits_summary(limits: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(n) = limits["concurrency"].as_i64() {
        parts.push(format!("{n} at once"));
    }
    if let (Some(count), Some(ms)) = (
        limits["rate"]["count"].as_i64(),
        limits["rate"]["period_ms"].as_i64(),
    ) {
        parts.push(format!("{count} per {ms} ms"));
    }
    if let Some(by) = limits["partition_by"].as_str() {
        parts.push(format!("per {by}"));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}
