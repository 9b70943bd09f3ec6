//! A small HTTP client for the CLI's commands.

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Failure, ServerArgs};

/// How long a command waits for the server's answer.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How much of an answer that is not Grafter's JSON error a failure shows.
const SHOWN_BODY_CHARS: usize = 300;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &ServerArgs) -> Result<Self, Failure> {
        let http = reqwest::Client::builder().timeout(ANSWER_TIMEOUT).build()?;
        Ok(Client {
            http,
            base: args.url.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        })
    }

    /// Sends a request; a non-2xx answer becomes a one-line failure with the
    /// server's own message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                Failure::Message(format!(
                    "cannot reach Grafter at {} ({}); is `grafter serve` running? Set GRAFTER_URL or --url to point elsewhere",
                    self.base,
                    root_cause(&e)
                ))
            } else if e.is_timeout() {
                Failure::Message(format!(
                    "no answer from {url} within {} s: the request may still have been \
                     carried out, so look before sending it again",
                    ANSWER_TIMEOUT.as_secs()
                ))
            } else {
                Failure::Message(format!("request to {url} failed: {}", root_cause(&e)))
            }
        })?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(Failure::Message(describe_error(status, &text)));
        }
        let text = if text.is_empty() { "null" } else { &text };
        serde_json::from_str(text)
            .map_err(|e| Failure::Message(format!("unexpected answer from the server: {e}")))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn describe_error(status: StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(error) => format!(
            "{} ({}, HTTP {})",
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error"),
            error.get("code").and_then(Value::as_str).unwrap_or("?"),
            status.as_u16()
        ),
        None => {
            let body = body.trim();
            let shown: String = body.chars().take(SHOWN_BODY_CHARS).collect();
            let rest = if shown.len() < body.len() {
                format!("… ({} bytes in all)", body.len())
            } else {
                String::new()
            };
            format!("server answered HTTP {}: {shown}{rest}", status.as_u16())
        }
    }
}
