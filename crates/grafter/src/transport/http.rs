//! The transport over Grafter's HTTP API.

use std::time::Duration;

use async_trait::async_trait;
use grafter_core::{Job as JobRecord, JobId, LeasedJob, NewJob, Progress, WorkerRegistration};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{Fetch, Finish, Transport};
use crate::error::{Error, Result};

/// Talks to a `grafter serve` at a base URL.
pub struct HttpTransport {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl HttpTransport {
    /// A transport to `base` (e.g. `http://127.0.0.1:7380`), with an optional bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| Error::Other(format!("building the HTTP client: {e}")))?;
        Ok(HttpTransport { http, base: base.trim_end_matches('/').to_owned(), token })
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Value>, timeout: Duration) -> Result<T> {
        self.call_with_status(method, path, body, timeout).await.map(|(_, answer)| answer)
    }

    /// Sends a request; a 2xx answer is parsed, anything else becomes an [`Error`].
    async fn call_with_status<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, T)> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("{}: {e}", self.base)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::Unavailable(format!("reading the answer: {e}")))?;
        if status.is_success() {
            let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
            return Ok((status, serde_json::from_slice(bytes)?));
        }
        #[derive(Deserialize)]
        struct Body {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            code: String,
            message: String,
        }
        let (code, message) = match serde_json::from_slice::<Body>(&bytes) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => (String::new(), String::from_utf8_lossy(&bytes).into_owned()),
        };
        Err(match (status, code.as_str()) {
            (StatusCode::CONFLICT, "lease_mismatch") => Error::LeaseLost(message),
            (StatusCode::NOT_FOUND, _) => {
                let id = path.split('/').nth(3).and_then(|s| s.parse().ok()).unwrap_or(0);
                Error::NotFound(JobId(id))
            }
            (s, _) if s.is_server_error() => Error::Unavailable(format!("HTTP {}: {message}", s.as_u16())),
            (s, _) => Error::Rejected(format!("HTTP {} {code}: {message}", s.as_u16())),
        })
    }
}

/// Ordinary calls answer quickly; long-polls get their wait on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(30);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Transport for HttpTransport {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<(JobRecord, bool)>> {
        if let [job] = &jobs[..] {
            // The single-job endpoint says whether it was a duplicate (200) or new (201).
            let body = serde_json::to_value(job)?;
            let (status, job) = self.call_with_status(Method::POST, "/v1/jobs", Some(body), CALL_TIMEOUT).await?;
            return Ok(vec![(job, status == StatusCode::CREATED)]);
        }
        #[derive(Deserialize)]
        struct Jobs {
            jobs: Vec<JobRecord>,
        }
        let answer: Jobs = self.call(Method::POST, "/v1/jobs/batch", Some(json!({ "jobs": jobs })), CALL_TIMEOUT).await?;
        Ok(answer.jobs.into_iter().map(|j| (j, true)).collect())
    }

    async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), None, CALL_TIMEOUT).await
    }

    async fn cancel(&self, id: JobId) -> Result<JobRecord> {
        self.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), Some(json!({})), CALL_TIMEOUT).await
    }

    async fn fetch(&self, fetch: Fetch<'_>, stop: &CancellationToken) -> Result<Vec<LeasedJob>> {
        #[derive(Deserialize)]
        struct Leased {
            jobs: Vec<LeasedJob>,
        }
        let wait = fetch.wait.min(MAX_WAIT);
        let body = json!({
            "queues": fetch.queues,
            "max": fetch.max,
            "wait_ms": ms(wait),
            "lease_ms": ms(fetch.lease),
            "worker_id": fetch.worker_id,
        });
        tokio::select! {
            answer = self.call::<Leased>(Method::POST, "/v1/fetch", Some(body), CALL_TIMEOUT + wait) => Ok(answer?.jobs),
            // Dropping the request is safe: jobs leased by an answer we never read
            // come back when their lease expires.
            _ = stop.cancelled() => Ok(Vec::new()),
        }
    }

    async fn heartbeat(&self, id: JobId, lease: &str, progress: Option<Progress>, extend: Duration) -> Result<JobRecord> {
        let body = json!({ "lease": lease, "progress": progress, "lease_ms": ms(extend) });
        self.call(Method::POST, &format!("/v1/jobs/{id}/heartbeat"), Some(body), CALL_TIMEOUT).await
    }

    async fn finish(&self, id: JobId, lease: &str, finish: &Finish) -> Result<JobRecord> {
        let (action, body) = match finish {
            Finish::Complete(result) => ("ack", json!({ "lease": lease, "result": result })),
            Finish::Fail { error, retry, retry_in } => (
                "fail",
                json!({ "lease": lease, "error": error, "retry": retry, "retry_in_ms": retry_in.map(ms) }),
            ),
            Finish::Release { after } => ("release", json!({ "lease": lease, "delay_ms": after.map(ms) })),
        };
        self.call(Method::POST, &format!("/v1/jobs/{id}/{action}"), Some(body), CALL_TIMEOUT).await
    }

    async fn worker_beat(&self, worker: &WorkerRegistration) -> Result<()> {
        let body = serde_json::to_value(worker)?;
        self.call::<Value>(Method::PUT, &format!("/v1/workers/{}", worker.id), Some(body), CALL_TIMEOUT).await?;
        Ok(())
    }

    async fn worker_gone(&self, worker_id: &str) -> Result<()> {
        match self.call::<Value>(Method::DELETE, &format!("/v1/workers/{worker_id}"), None, CALL_TIMEOUT).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
