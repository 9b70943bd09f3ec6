//! The transport over Grafter's HTTP API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use grafter_core::{Job as JobRecord, JobId, LeasedJob, NewJob, Progress, WorkerRegistration};
use reqwest::{header, Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{Ack, Fetch, Finish, Transport};
use crate::error::{Error, Result};

/// Talks to a `grafter serve` at a base URL.
pub struct HttpTransport {
    http: reqwest::Client,
    /// The server's URL, parsed once: each call only sets the path.
    base: Url,
    token: Option<String>,
    /// Whether the server takes batch acks (`POST /v1/jobs/ack`); servers from
    /// before them answer 404, and then acks go one by one.
    batch_ack: AtomicBool,
}

impl HttpTransport {
    /// A transport to `base` (e.g. `http://127.0.0.1:7380`), with an optional bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| Error::Other(format!("building the HTTP client: {e}")))?;
        let base = Url::parse(base)
            .map_err(|e| Error::Other(format!("the server URL '{base}' is not valid: {e}")))?;
        Ok(HttpTransport {
            http,
            base,
            token,
            batch_ack: AtomicBool::new(true),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T> {
        self.call_with_status(method, path, body, timeout)
            .await
            .map(|(_, answer)| answer)
    }

    /// Sends a request; a 2xx answer is parsed, anything else becomes an [`Error`].
    async fn call_with_status<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, T)> {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        let mut request = self.http.request(method, url).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
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
            let bytes = if bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
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
                let id = path
                    .split('/')
                    .nth(3)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                Error::NotFound(JobId(id))
            }
            (s, _) if s.is_server_error() => {
                Error::Unavailable(format!("HTTP {}: {message}", s.as_u16()))
            }
            (s, _) => Error::Rejected(format!("HTTP {} {code}: {message}", s.as_u16())),
        })
    }
}

impl HttpTransport {
    async fn complete_one_by_one(&self, acks: Vec<Ack>) -> Result<Vec<bool>> {
        let mut done = Vec::with_capacity(acks.len());
        for ack in acks {
            let finish = Finish::Complete(ack.result);
            done.push(match self.finish(ack.id, &ack.lease, &finish).await {
                Ok(_) => true,
                Err(Error::LeaseLost(_) | Error::NotFound(_)) => false,
                Err(e) => return Err(e),
            });
        }
        Ok(done)
    }
}

/// Ordinary calls answer quickly; long-polls get their wait on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping fetch waits for an answer already in flight.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(500);
/// The server's longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// A request body: JSON written straight from the value, with no `Value` in
/// between.
fn json_body(value: &impl Serialize) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Transport for HttpTransport {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<(JobRecord, bool)>> {
        if let [job] = &jobs[..] {
            // The single-job endpoint says whether it was a duplicate (200) or new (201).
            let body = json_body(job)?;
            let (status, job) = self
                .call_with_status(Method::POST, "/v1/jobs", Some(body), CALL_TIMEOUT)
                .await?;
            return Ok(vec![(job, status == StatusCode::CREATED)]);
        }
        #[derive(Serialize)]
        struct Batch<'a> {
            jobs: &'a [NewJob],
        }
        #[derive(Deserialize)]
        struct Jobs {
            jobs: Vec<JobRecord>,
        }
        let answer: Jobs = self
            .call(
                Method::POST,
                "/v1/jobs/batch",
                Some(json_body(&Batch { jobs: &jobs })?),
                CALL_TIMEOUT,
            )
            .await?;
        Ok(answer.jobs.into_iter().map(|j| (j, true)).collect())
    }

    async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), None, CALL_TIMEOUT)
            .await
    }

    async fn cancel(&self, id: JobId) -> Result<JobRecord> {
        self.call(
            Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            Some(b"{}".to_vec()),
            CALL_TIMEOUT,
        )
        .await
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
        let request = self.call::<Leased>(
            Method::POST,
            "/v1/fetch",
            Some(json_body(&body)?),
            CALL_TIMEOUT + wait,
        );
        tokio::pin!(request);
        tokio::select! {
            answer = &mut request => Ok(answer?.jobs),
            _ = stop.cancelled() => {
                // An answer with leased jobs may already be on its way: wait a
                // moment for it so they can be handed back at once. Past that,
                // dropping the request is still safe: jobs leased by an answer we
                // never read come back when their lease expires.
                match tokio::time::timeout(IN_FLIGHT_GRACE, request).await {
                    Ok(Ok(answer)) => Ok(answer.jobs),
                    _ => Ok(Vec::new()),
                }
            }
        }
    }

    async fn heartbeat(
        &self,
        id: JobId,
        lease: &str,
        progress: Option<Progress>,
        extend: Duration,
    ) -> Result<JobRecord> {
        let body =
            json_body(&json!({ "lease": lease, "progress": progress, "lease_ms": ms(extend) }))?;
        self.call(
            Method::POST,
            &format!("/v1/jobs/{id}/heartbeat"),
            Some(body),
            CALL_TIMEOUT,
        )
        .await
    }

    async fn finish(&self, id: JobId, lease: &str, finish: &Finish) -> Result<JobRecord> {
        let (action, body) = match finish {
            Finish::Complete(result) => ("ack", json!({ "lease": lease, "result": result })),
            Finish::Fail {
                error,
                retry,
                retry_in,
            } => (
                "fail",
                json!({ "lease": lease, "error": error, "retry": retry, "retry_in_ms": retry_in.map(ms) }),
            ),
            Finish::Release { after } => (
                "release",
                json!({ "lease": lease, "delay_ms": after.map(ms) }),
            ),
        };
        self.call(
            Method::POST,
            &format!("/v1/jobs/{id}/{action}"),
            Some(json_body(&body)?),
            CALL_TIMEOUT,
        )
        .await
    }

    async fn complete_many(&self, acks: Vec<Ack>) -> Result<Vec<bool>> {
        #[derive(Deserialize)]
        struct Outcome {
            ok: bool,
        }
        #[derive(Deserialize)]
        struct Outcomes {
            results: Vec<Outcome>,
        }
        if !self.batch_ack.load(Ordering::Relaxed) {
            return self.complete_one_by_one(acks).await;
        }
        #[derive(Serialize)]
        struct Item<'a> {
            id: JobId,
            lease: &'a str,
            result: &'a Option<Value>,
        }
        #[derive(Serialize)]
        struct Items<'a> {
            acks: Vec<Item<'a>>,
        }
        let items = Items {
            acks: acks
                .iter()
                .map(|a| Item {
                    id: a.id,
                    lease: &a.lease,
                    result: &a.result,
                })
                .collect(),
        };
        let n = items.acks.len();
        match self
            .call::<Outcomes>(
                Method::POST,
                "/v1/jobs/ack",
                Some(json_body(&items)?),
                CALL_TIMEOUT,
            )
            .await
        {
            Ok(answer) if answer.results.len() == n => {
                Ok(answer.results.into_iter().map(|o| o.ok).collect())
            }
            Ok(answer) => Err(Error::Other(format!(
                "batch ack of {n} answered {} results",
                answer.results.len()
            ))),
            // A server from before batch acks (where the path means a job
            // named "ack": 404 or 405): ack one by one from now on.
            Err(Error::NotFound(_)) => {
                self.batch_ack.store(false, Ordering::Relaxed);
                self.complete_one_by_one(acks).await
            }
            Err(Error::Rejected(message)) if message.starts_with("HTTP 405 ") => {
                self.batch_ack.store(false, Ordering::Relaxed);
                self.complete_one_by_one(acks).await
            }
            Err(e) => Err(e),
        }
    }

    async fn worker_beat(&self, worker: &WorkerRegistration) -> Result<()> {
        let body = json_body(worker)?;
        self.call::<Value>(
            Method::PUT,
            &format!("/v1/workers/{}", worker.id),
            Some(body),
            CALL_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    async fn worker_gone(&self, worker_id: &str) -> Result<()> {
        match self
            .call::<Value>(
                Method::DELETE,
                &format!("/v1/workers/{worker_id}"),
                None,
                CALL_TIMEOUT,
            )
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
