//! `grafter schedules …`: periodic jobs over the HTTP API (docs/schedules.md).

use chrono::Utc;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::jobs::{encode, parse_json_arg};
use crate::{outln, path_name, Failure, ServerArgs};

#[derive(Args)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    command: Option<SchedulesCommand>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// List schedules with their next and last runs (the default).
    List,
    /// One schedule: its definition, next fire times, last run and skipped slots.
    Show {
        /// The schedule's id.
        #[arg(value_parser = path_name)]
        id: String,
    },
    /// Create or replace a schedule (replacing keeps its paused state).
    Put(Box<PutArgs>),
    /// Delete a schedule (its jobs stay).
    Delete {
        /// The schedule's id.
        #[arg(value_parser = path_name)]
        id: String,
    },
    /// Stop firing a schedule.
    Pause {
        /// The schedule's id.
        #[arg(value_parser = path_name)]
        id: String,
    },
    /// Fire a schedule again from now on (slots missed while paused are skipped).
    Resume {
        /// The schedule's id.
        #[arg(value_parser = path_name)]
        id: String,
    },
    /// Enqueue a schedule's job now, outside its slots.
    Trigger {
        /// The schedule's id.
        #[arg(value_parser = path_name)]
        id: String,
    },
}

#[derive(Args)]
struct PutArgs {
    /// The schedule's id.
    #[arg(value_parser = path_name)]
    id: String,
    /// Cron expression: 5 fields, or 6 with seconds first, or @hourly etc.
    #[arg(
        long,
        required_unless_present = "every_ms",
        conflicts_with = "every_ms"
    )]
    cron: Option<String>,
    /// Or an interval in milliseconds (at least 1000).
    #[arg(long)]
    every_ms: Option<u64>,
    /// IANA time zone the cron expression is read in.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// The job's kind.
    #[arg(long)]
    kind: String,
    /// The job's arguments as JSON.
    #[arg(long, default_value = "{}", value_parser = parse_json_arg)]
    args: Value,
    /// The job's queue.
    #[arg(long, default_value = grafter_core::DEFAULT_QUEUE)]
    queue: String,
    /// Missed slots: skip, latest or all.
    #[arg(long, default_value = "skip")]
    catch_up: String,
    /// With catch-up all: how late a slot may be, in ms.
    #[arg(long)]
    catch_up_window_ms: Option<u64>,
    /// With catch-up all: most late slots run at once.
    #[arg(long)]
    catch_up_max: Option<u32>,
    /// While the previous run is unfinished: allow, skip or cancel_previous.
    #[arg(long, default_value = "allow")]
    overlap: String,
    /// Create it paused, or pause it. Without it, a new schedule starts
    /// unpaused and one put again stays as it was (see `schedules resume`).
    #[arg(long)]
    paused: bool,
}

pub async fn schedules(args: SchedulesArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    let path = |id: &str, action: &str| Some(format!("/v1/schedules/{}{action}", encode(id)));
    let (method, path, body) = match &args.command {
        // No one path: the list may take several pages (`list_all`).
        None | Some(SchedulesCommand::List) => (Method::GET, None, None),
        Some(SchedulesCommand::Show { id }) => (Method::GET, path(id, ""), None),
        Some(SchedulesCommand::Put(put)) => (Method::PUT, path(&put.id, ""), Some(definition(put))),
        Some(SchedulesCommand::Delete { id }) => (Method::DELETE, path(id, ""), None),
        Some(SchedulesCommand::Pause { id }) => (Method::POST, path(id, "/pause"), Some(json!({}))),
        Some(SchedulesCommand::Resume { id }) => {
            (Method::POST, path(id, "/resume"), Some(json!({})))
        }
        Some(SchedulesCommand::Trigger { id }) => {
            (Method::POST, path(id, "/trigger"), Some(json!({})))
        }
    };
    let answer: Value = match path {
        Some(path) => client.call(method, &path, body.as_ref()).await?,
        None => list_all(&client).await?,
    };
    if args.server.json {
        return outln!("{}", serde_json::to_string_pretty(&answer)?);
    }
    match &args.command {
        None | Some(SchedulesCommand::List) => {
            let schedules = answer["schedules"].as_array().cloned().unwrap_or_default();
            outln!(
                "{:<24} {:<22} {:<16} {:<7} {:<26} {}",
                "id",
                "when",
                "timezone",
                "paused",
                "next run",
                "last run"
            )?;
            for s in schedules {
                outln!("{}", row(&s))?;
            }
            Ok(())
        }
        Some(SchedulesCommand::Delete { id }) => outln!("deleted schedule {id}"),
        Some(SchedulesCommand::Trigger { .. }) => outln!(
            "enqueued job {} ({}) on {}",
            answer["id"],
            answer["kind"].as_str().unwrap_or("?"),
            answer["queue"].as_str().unwrap_or("?")
        ),
        Some(_) => {
            outln!("{}", row(&answer))?;
            if let Some(upcoming) = answer["upcoming"].as_array() {
                let times: Vec<&str> = upcoming.iter().filter_map(Value::as_str).collect();
                outln!("next: {}", times.join(", "))?;
            }
            for skip in answer["skipped"].as_array().into_iter().flatten() {
                outln!(
                    "skipped {} slot(s) {} .. {}: {}",
                    skip["count"],
                    skip["first_slot"].as_str().unwrap_or("?"),
                    skip["last_slot"].as_str().unwrap_or("?"),
                    skip["reason"].as_str().unwrap_or("?")
                )?;
            }
            Ok(())
        }
    }
}

/// Schedules per request: the most the API gives in one page.
const PAGE: usize = 1000;

/// Every schedule, following `next` page by page, as one page that has no
/// `next` (what `--json` prints).
async fn list_all(client: &Client) -> Result<Value, Failure> {
    let mut schedules = Vec::new();
    let mut path = format!("/v1/schedules?limit={PAGE}");
    loop {
        let page: Value = client.call(Method::GET, &path, None).await?;
        schedules.extend(page["schedules"].as_array().into_iter().flatten().cloned());
        match page["next"].as_str() {
            Some(after) => path = format!("/v1/schedules?limit={PAGE}&after={}", encode(after)),
            None => return Ok(json!({"schedules": schedules, "next": null})),
        }
    }
}

fn definition(put: &PutArgs) -> Value {
    let mut body = json!({
        "timezone": put.timezone,
        "job": {"kind": put.kind, "args": put.args, "queue": put.queue},
        "catch_up": put.catch_up,
        "overlap": put.overlap,
    });
    // An absent `paused` keeps the stored one: sending `false` would resume a
    // schedule an operator paused, just by putting its definition again.
    if put.paused {
        body["paused"] = json!(true);
    }
    let fields = [
        ("cron", put.cron.as_ref().map(|c| json!(c))),
        ("every_ms", put.every_ms.map(|ms| json!(ms))),
        (
            "catch_up_window_ms",
            put.catch_up_window_ms.map(|ms| json!(ms)),
        ),
        ("catch_up_max", put.catch_up_max.map(|n| json!(n))),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    body
}

fn row(s: &Value) -> String {
    let when = match (s["cron"].as_str(), s["every_ms"].as_u64()) {
        (Some(cron), _) => cron.to_owned(),
        (None, Some(ms)) => format!("every {ms} ms"),
        _ => "?".to_owned(),
    };
    let time = |key: &str| {
        s[key]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok())
            .map_or("-".to_owned(), |t| t.to_rfc3339())
    };
    format!(
        "{:<24} {:<22} {:<16} {:<7} {:<26} {}",
        s["id"].as_str().unwrap_or("?"),
        when,
        s["timezone"].as_str().unwrap_or("UTC"),
        s["paused"].as_bool().unwrap_or(false),
        time("next_run_at"),
        time("last_run_at")
    )
}
