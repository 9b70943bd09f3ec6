//! `grafter info` and `grafter cleanup`: operations over the API.

use std::time::Duration;

use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{api_duration, outln, Failure, ServerArgs};

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    server: ServerArgs,
}

/// Version, store, schema, queues, workers, leader and maintenance health.
pub async fn info(args: InfoArgs) -> Result<(), Failure> {
    let info: Value = Client::new(&args.server)?
        .call(Method::GET, "/v1/info", None)
        .await?;
    if args.server.json {
        return outln!("{info}");
    }
    outln!("grafter {}", info["version"].as_str().unwrap_or("?"))?;
    outln!(
        "store       {} (schema version {})",
        info["store"].as_str().unwrap_or("?"),
        info["schema_version"]
    )?;
    for leader in info["leaders"].as_array().into_iter().flatten() {
        outln!(
            "leader      {}: {} (until {})",
            leader["name"].as_str().unwrap_or("?"),
            leader["node"].as_str().unwrap_or("?"),
            leader["expires_at"].as_str().unwrap_or("?")
        )?;
    }
    outln!(
        "workers     {}",
        info["workers"].as_array().map_or(0, Vec::len)
    )?;
    for (name, service) in info["maintenance"].as_object().into_iter().flatten() {
        let state = if service["failing"] == true {
            format!("FAILING: {}", service["last_error"].as_str().unwrap_or(""))
        } else {
            "ok".to_owned()
        };
        outln!(
            "maintenance {name:<10} {state}, last pass {}",
            service["last_pass_at"]
                .as_str()
                .unwrap_or("never (not the leader?)")
        )?;
    }
    for queue in info["queues"].as_array().into_iter().flatten() {
        let counts: Vec<String> = queue["counts"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64() != Some(0))
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        let oldest = match queue["oldest_available_age_ms"].as_i64() {
            Some(ms) => format!(", oldest available {:.1} s", ms as f64 / 1000.0),
            None => String::new(),
        };
        outln!(
            "queue       {}: {}{oldest}",
            queue["name"].as_str().unwrap_or("?"),
            if counts.is_empty() {
                "empty".to_owned()
            } else {
                counts.join(", ")
            }
        )?;
    }
    Ok(())
}

#[derive(Args)]
pub struct CleanupArgs {
    /// Delete jobs that finished at least this long ago (e.g. 7d, 12h).
    #[arg(long, value_parser = api_duration)]
    older_than: Duration,
    /// Only jobs in this finished state (repeatable; default: completed,
    /// dead, cancelled and expired).
    #[arg(long = "state")]
    states: Vec<String>,
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Deletes finished jobs older than an age, or counts them.
pub async fn cleanup(args: CleanupArgs) -> Result<(), Failure> {
    let older_than_ms = u64::try_from(args.older_than.as_millis())?;
    let body =
        json!({"older_than_ms": older_than_ms, "states": args.states, "dry_run": args.dry_run});
    let answer: Value = Client::new(&args.server)?
        .call(Method::POST, "/v1/cleanup", Some(&body))
        .await?;
    if args.server.json {
        return outln!("{answer}");
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for (state, n) in answer["jobs"].as_object().into_iter().flatten() {
        outln!("{state:<10} {n}")?;
    }
    outln!(
        "{verb} {} jobs finished before {}",
        answer["total"],
        answer["finished_before"].as_str().unwrap_or("?")
    )
}
