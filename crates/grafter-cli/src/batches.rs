//! `grafter batches …`: batches over the HTTP API (docs/batches.md).

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{outln, Failure, ServerArgs};

#[derive(Args)]
pub struct BatchesArgs {
    #[command(subcommand)]
    command: Option<BatchesCommand>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum BatchesCommand {
    /// List batches, newest first (the default).
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One batch: state, counts, progress, callbacks.
    Show {
        /// The batch's id.
        id: i64,
    },
    /// Seal an open batch: no more jobs; it settles when they have finished.
    Seal {
        /// The batch's id.
        id: i64,
    },
    /// Cancel a batch's waiting jobs and ask its running ones to stop.
    Cancel {
        /// The batch's id.
        id: i64,
    },
}

pub async fn batches(args: BatchesArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    let (method, path, body) = match &args.command {
        None => (Method::GET, "/v1/batches?limit=50".to_owned(), None),
        Some(BatchesCommand::List { limit }) => {
            (Method::GET, format!("/v1/batches?limit={limit}"), None)
        }
        Some(BatchesCommand::Show { id }) => (Method::GET, format!("/v1/batches/{id}"), None),
        Some(BatchesCommand::Seal { id }) => (
            Method::POST,
            format!("/v1/batches/{id}/seal"),
            Some(json!({})),
        ),
        Some(BatchesCommand::Cancel { id }) => (
            Method::POST,
            format!("/v1/batches/{id}/cancel"),
            Some(json!({})),
        ),
    };
    let answer: Value = client.call(method, &path, body.as_ref()).await?;
    if args.server.json {
        return outln!("{}", serde_json::to_string_pretty(&answer)?);
    }
    match &args.command {
        None | Some(BatchesCommand::List { .. }) => {
            outln!(
                "{:<10} {:<24} {:>9} {:>9} {:>9} {:>9} {:>8}  open",
                "id",
                "state",
                "total",
                "pending",
                "completed",
                "failed",
                "progress"
            )?;
            for batch in answer["batches"].as_array().into_iter().flatten() {
                outln!("{}", row(batch))?;
            }
            Ok(())
        }
        Some(_) => {
            outln!("{}", row(&answer))?;
            let enqueued: Vec<&str> = answer["callbacks_enqueued"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !enqueued.is_empty() {
                outln!("callbacks enqueued: {}", enqueued.join(", "))?;
            }
            Ok(())
        }
    }
}

fn row(batch: &Value) -> String {
    let counts = &batch["counts"];
    let count = |key: &str| counts[key].as_i64().unwrap_or(0);
    format!(
        "{:<10} {:<24} {:>9} {:>9} {:>9} {:>9} {:>7.1}%  {}",
        batch["id"],
        batch["state"].as_str().unwrap_or("?"),
        count("total"),
        count("pending"),
        count("completed"),
        count("dead") + count("cancelled") + count("expired"),
        batch["progress"].as_f64().unwrap_or(0.0) * 100.0,
        batch["open"].as_bool().unwrap_or(false)
    )
}
