//! `grafter tokens …`: scoped API tokens over the HTTP API (docs/access.md),
//! with an admin token.

use std::time::Duration;

use chrono::Utc;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{outln, Failure, ServerArgs};

#[derive(Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: Option<TokensCommand>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum TokensCommand {
    /// List tokens (never their secrets), the default.
    List,
    /// Make a token and print its secret, shown this once.
    Create {
        /// What it is for.
        #[arg(long)]
        name: String,
        /// A scope (enqueue, read, work, manage, queues, admin, metrics) or
        /// preset (producer, worker, operator); repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A queue pattern (`*` matches anything) to limit it to; repeatable.
        #[arg(long = "queue")]
        queues: Vec<String>,
        /// Stop working after this long (e.g. 90d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Revoke a token: every node refuses it within seconds.
    Revoke {
        /// The token's id (tok_…).
        #[arg(value_parser = crate::path_name)]
        id: String,
    },
}

pub async fn tokens(args: TokensArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    let json_out = args.server.json;
    match args.command.unwrap_or(TokensCommand::List) {
        TokensCommand::List => {
            let answer: Value = client.call(Method::GET, "/v1/tokens", None).await?;
            if json_out {
                return outln!("{answer}");
            }
            for token in answer["tokens"].as_array().into_iter().flatten() {
                outln!("{}", describe(token))?;
            }
            Ok(())
        }
        TokensCommand::Create {
            name,
            scopes,
            queues,
            expires_in,
        } => {
            let expires_at = expires_in
                .map(|d| {
                    chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| Utc::now().checked_add_signed(d))
                        .ok_or_else(|| Failure::Message("--expires-in is too long".into()))
                })
                .transpose()?;
            let body =
                json!({"name": name, "scopes": scopes, "queues": queues, "expires_at": expires_at});
            let answer: Value = client.call(Method::POST, "/v1/tokens", Some(&body)).await?;
            if json_out {
                return outln!("{answer}");
            }
            outln!("{}", describe(&answer))?;
            outln!(
                "secret (shown once): {}",
                answer["token"].as_str().unwrap_or("?")
            )
        }
        TokensCommand::Revoke { id } => {
            let path = format!("/v1/tokens/{}", crate::jobs::encode(&id));
            let answer: Value = client.call(Method::DELETE, &path, None).await?;
            if json_out {
                return outln!("{answer}");
            }
            outln!("{}", describe(&answer))
        }
    }
}

/// One line per token: id, name, scopes, queues and its dates.
fn describe(token: &Value) -> String {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let queues = match list(&token["queues"]) {
        q if q.is_empty() => "all queues".to_owned(),
        q => format!("queues {q}"),
    };
    let date = |key: &str| token[key].as_str().unwrap_or("never").to_owned();
    let mut line = format!(
        "{}  {}  [{}]  {queues}  expires {}  last used {}",
        token["id"].as_str().unwrap_or("?"),
        token["name"].as_str().unwrap_or("?"),
        list(&token["scopes"]),
        date("expires_at"),
        date("last_used_at"),
    );
    if let Some(revoked) = token["revoked_at"].as_str() {
        line.push_str(&format!("  REVOKED {revoked}"));
    }
    line
}
