//! A small HTTP client for the CLI's commands.

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Failure, ServerArgs};

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &ServerArgs) -> Result<Self, Failure> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
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
            if e.is_connect() || e.is_timeout() {
                Failure::Message(format!(
                    "cannot reach Grafter at {} ({}); is `grafter serve` running? Set GRAFTER_URL or --url to point elsewhere",
                    self.base,
                    root_cause(&e)
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
        None => format!("server answered HTTP {}: {}", status.as_u16(), body.trim()),
    }
}
