//! The transport over Grafter's HTTP API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use grafter_core::{
    time, Batch, BatchId, Job as JobRecord, JobId, JobState, LeasedJob, NewJob, Progress,
    WorkerRegistration,
};
use grafter_engine::{Ack, AckOutcome, FetchRequest, NewBatch, Outcome, Retry, When};
use grafter_store::Dependencies;
use reqwest::{header, Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::Transport;
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

/// Why a call did not get a 2xx answer.
enum Failure {
    /// No answer: the server could not be reached, or the answer broke off.
    Unreachable(String),
    /// An answer with a status other than 2xx, and the API's error body.
    Answer {
        status: StatusCode,
        code: String,
        message: String,
        field: Option<String>,
    },
}

impl Failure {
    /// The library's error for this failure; a 404 is about job `id`.
    fn into_error(self, id: Option<JobId>) -> Error {
        let (status, code, message, field) = match self {
            Failure::Unreachable(message) => return Error::Unavailable(message),
            Failure::Answer {
                status,
                code,
                message,
                field,
            } => (status, code, message, field),
        };
        match (status, code.as_str(), id) {
            (StatusCode::CONFLICT, "lease_mismatch", _) => Error::LeaseLost(message),
            (StatusCode::NOT_FOUND, _, Some(id)) => Error::NotFound(id),
            (s, _, _) if s.is_server_error() => {
                Error::Unavailable(format!("HTTP {}: {message}", s.as_u16()))
            }
            (s, _, _) => Error::Rejected {
                code,
                message,
                field,
                status: Some(s.as_u16()),
            },
        }
    }
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

    /// Sends a request about job `id` (if any); a 2xx answer is parsed,
    /// anything else becomes an [`Error`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        id: Option<JobId>,
    ) -> Result<T> {
        self.send(method, path, body, CALL_TIMEOUT)
            .await
            .map(|(_, _, answer)| answer)
            .map_err(|failure| failure.into_error(id))
    }

    /// Sends a request (`path` may end in a `?query`) and reads its answer:
    /// the status, headers and parsed body of a 2xx, or what went wrong.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, header::HeaderMap, T), Failure> {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        url.set_query(query);
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
            .map_err(|e| Failure::Unreachable(format!("{}: {e}", self.base)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Unreachable(format!("reading the answer: {e}")))?;
        if status.is_success() {
            let bytes = if bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(bytes)
                .map(|answer| (status, headers, answer))
                .map_err(|e| Failure::Answer {
                    status,
                    code: "invalid_answer".to_owned(),
                    message: format!("the server's answer is not what this client expects: {e}"),
                    field: None,
                });
        }
        #[derive(Deserialize)]
        struct Body {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            code: String,
            message: String,
            field: Option<String>,
        }
        Err(match serde_json::from_slice::<Body>(&bytes) {
            Ok(Body { error }) => Failure::Answer {
                status,
                code: error.code,
                message: error.message,
                field: error.field,
            },
            Err(_) => Failure::Answer {
                status,
                code: String::new(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
                field: None,
            },
        })
    }

    async fn complete_one_by_one(&self, acks: Vec<Ack>) -> Result<Vec<AckOutcome>> {
        let mut done = Vec::with_capacity(acks.len());
        for ack in acks {
            let outcome = Outcome::Completed { result: ack.result };
            done.push(match self.record(ack.id, &ack.lease, &outcome).await {
                Ok(_) => AckOutcome::Completed,
                Err(Error::NotFound(_)) => AckOutcome::NotFound,
                Err(Error::LeaseLost(_)) => match self.get(ack.id).await {
                    Ok(job) => AckOutcome::LeaseMismatch {
                        state: job.state,
                        attempt: job.attempt,
                    },
                    Err(Error::NotFound(_)) => AckOutcome::NotFound,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            });
        }
        Ok(done)
    }

    /// Sends one batch ack body of `n` acks: their outcomes, or `None` from
    /// a server from before batch acks.
    async fn send_acks(&self, n: usize, body: Vec<u8>) -> Result<Option<Vec<AckOutcome>>> {
        #[derive(Deserialize)]
        struct Item {
            ok: bool,
            error: Option<ItemError>,
            state: Option<JobState>,
            attempt: Option<i32>,
        }
        #[derive(Deserialize)]
        struct ItemError {
            code: String,
        }
        #[derive(Deserialize)]
        struct Outcomes {
            results: Vec<Item>,
        }
        let answer = self
            .send::<Outcomes>(Method::POST, "/v1/jobs/ack", Some(body), CALL_TIMEOUT)
            .await;
        match answer {
            Ok((_, _, answer)) if answer.results.len() == n => Ok(Some(
                answer
                    .results
                    .into_iter()
                    .map(|item| match (item.ok, item.error) {
                        (true, _) => AckOutcome::Completed,
                        (false, Some(e)) if e.code == "not_found" => AckOutcome::NotFound,
                        (false, _) => AckOutcome::LeaseMismatch {
                            // Servers before 0.1 leave these out; the worker only logs them.
                            state: item.state.unwrap_or(JobState::Running),
                            attempt: item.attempt.unwrap_or_default(),
                        },
                    })
                    .collect(),
            )),
            Ok((_, _, answer)) => Err(Error::Other(format!(
                "batch ack of {n} answered {} results",
                answer.results.len()
            ))),
            // A server from before batch acks, where the path means a job
            // named "ack": 404 or 405.
            Err(Failure::Answer {
                status: StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED,
                ..
            }) => Ok(None),
            Err(failure) => Err(failure.into_error(None)),
        }
    }
}

/// Ordinary calls answer quickly; long-polls get their wait on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest batch ack body sent at once: well under the server's default
/// body limit (1 MiB), as the Ruby worker's.
const MAX_ACK_BODY_BYTES: usize = 512 * 1024;
/// The longest wait the server's long-poll of a job takes.
const MAX_CHANGE_WAIT: Duration = Duration::from_secs(60);
/// How long a stopping fetch waits for an answer already in flight.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(500);
/// The server's longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// A request body: JSON written straight from the value, with no `Value` in
/// between.
fn json_body(value: &impl Serialize) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

/// A delay as the API takes it: whole milliseconds, at most what it accepts.
fn ms(d: Duration) -> u64 {
    time::saturating_ms(d)
}

/// `when` as a delay from now, for the API's `*_ms` fields.
fn delay(when: When) -> Duration {
    match when {
        When::Now => Duration::ZERO,
        When::After(delay) => delay,
        When::At(at) => (at - chrono::Utc::now()).to_std().unwrap_or_default(),
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<(JobRecord, bool)>> {
        if let [job] = &jobs[..] {
            // The single-job endpoint says whether it was a duplicate (200) or new (201).
            let body = json_body(job)?;
            let (status, _, job) = self
                .send(Method::POST, "/v1/jobs", Some(body), CALL_TIMEOUT)
                .await
                .map_err(|failure| failure.into_error(None))?;
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
                None,
            )
            .await?;
        Ok(answer.jobs.into_iter().map(|j| (j, true)).collect())
    }

    async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), None, Some(id))
            .await
    }

    async fn dependencies(&self, id: JobId) -> Result<Dependencies> {
        let answer: DependenciesAnswer = self
            .call(
                Method::GET,
                &format!("/v1/jobs/{id}/dependencies"),
                None,
                Some(id),
            )
            .await?;
        Ok(Dependencies {
            jobs: answer.jobs,
            batches: answer.batches,
        })
    }

    async fn job_change(
        &self,
        id: JobId,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<(JobRecord, i64)> {
        let wait = wait.min(MAX_CHANGE_WAIT);
        let mut path = format!("/v1/jobs/{id}?wait={}", wait.as_millis());
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let (_, headers, job) = self
            .send(Method::GET, &path, None, wait + CALL_TIMEOUT)
            .await
            .map_err(|failure| failure.into_error(Some(id)))?;
        let latest = headers
            .get("grafter-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| after.unwrap_or_default());
        Ok((job, latest))
    }

    async fn cancel(&self, id: JobId) -> Result<JobRecord> {
        self.call(
            Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            Some(b"{}".to_vec()),
            Some(id),
        )
        .await
    }

    async fn fetch(&self, fetch: FetchRequest, stop: &CancellationToken) -> Result<Vec<LeasedJob>> {
        #[derive(Deserialize)]
        struct Leased {
            jobs: Vec<LeasedJob>,
        }
        let wait = fetch.wait.min(MAX_WAIT);
        let body = json!({
            "queues": fetch.queues,
            "max": fetch.max,
            "wait_ms": ms(wait),
            "lease_ms": fetch.lease.map(ms),
            "worker_id": fetch.worker_id,
        });
        let request = self.send::<Leased>(
            Method::POST,
            "/v1/fetch",
            Some(json_body(&body)?),
            CALL_TIMEOUT + wait,
        );
        tokio::pin!(request);
        tokio::select! {
            answer = &mut request => answer.map(|a| a.2.jobs).map_err(|f| f.into_error(None)),
            _ = stop.cancelled() => {
                // An answer with leased jobs may already be on its way: wait a
                // moment for it so they can be handed back at once. Past that,
                // dropping the request is still safe: jobs leased by an answer we
                // never read come back when their lease expires.
                match tokio::time::timeout(IN_FLIGHT_GRACE, request).await {
                    Ok(Ok((_, _, answer))) => Ok(answer.jobs),
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
            Some(id),
        )
        .await
    }

    async fn record(&self, id: JobId, lease: &str, outcome: &Outcome) -> Result<JobRecord> {
        let (action, body) = match outcome {
            Outcome::Completed { result } => ("ack", json!({ "lease": lease, "result": result })),
            Outcome::Failed { error, retry } => {
                let (retry, retry_in) = match retry {
                    Retry::Backoff => (true, None),
                    Retry::At(when) => (true, Some(ms(delay(*when)))),
                    Retry::Never => (false, None),
                };
                (
                    "fail",
                    json!({ "lease": lease, "error": error, "retry": retry, "retry_in_ms": retry_in }),
                )
            }
            Outcome::Released { run_at } => (
                "release",
                json!({ "lease": lease, "delay_ms": ms(delay(*run_at)) }),
            ),
        };
        self.call(
            Method::POST,
            &format!("/v1/jobs/{id}/{action}"),
            Some(json_body(&body)?),
            Some(id),
        )
        .await
    }

    async fn complete_many(&self, acks: Vec<Ack>) -> Result<Vec<AckOutcome>> {
        if !self.batch_ack.load(Ordering::Relaxed) {
            return self.complete_one_by_one(acks).await;
        }
        #[derive(Serialize)]
        struct SentAck<'a> {
            id: JobId,
            lease: &'a str,
            result: &'a Option<Value>,
        }
        // Bodies of at most `MAX_ACK_BODY_BYTES` (an ack alone may be
        // larger), so that jobs with sizeable results do not make a batch the
        // server's body limit refuses; each body is `{"acks":[…]}` of acks
        // encoded once.
        let mut bodies: Vec<(usize, Vec<u8>)> = Vec::new();
        for ack in &acks {
            let encoded = json_body(&SentAck {
                id: ack.id,
                lease: &ack.lease,
                result: &ack.result,
            })?;
            match bodies.last_mut() {
                Some((count, body)) if body.len() + encoded.len() + 2 <= MAX_ACK_BODY_BYTES => {
                    body.push(b',');
                    body.extend_from_slice(&encoded);
                    *count += 1;
                }
                _ => {
                    let mut body = b"{\"acks\":[".to_vec();
                    body.extend_from_slice(&encoded);
                    bodies.push((1, body));
                }
            }
        }
        let mut outcomes = Vec::with_capacity(acks.len());
        for (n, mut body) in bodies {
            body.extend_from_slice(b"]}");
            match self.send_acks(n, body).await? {
                Some(done) => outcomes.extend(done),
                // A server from before batch acks: ack one by one from now on.
                None => {
                    self.batch_ack.store(false, Ordering::Relaxed);
                    let rest = acks.into_iter().skip(outcomes.len()).collect();
                    outcomes.extend(self.complete_one_by_one(rest).await?);
                    break;
                }
            }
        }
        Ok(outcomes)
    }

    async fn worker_beat(&self, worker: &WorkerRegistration) -> Result<()> {
        let body = json_body(worker)?;
        self.call::<Value>(
            Method::PUT,
            &format!("/v1/workers/{}", worker.id),
            Some(body),
            None,
        )
        .await?;
        Ok(())
    }

    async fn worker_gone(&self, worker_id: &str) -> Result<()> {
        let path = format!("/v1/workers/{worker_id}");
        match self
            .send::<Value>(Method::DELETE, &path, None, CALL_TIMEOUT)
            .await
        {
            Ok(_)
            | Err(Failure::Answer {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(()),
            Err(failure) => Err(failure.into_error(None)),
        }
    }

    async fn batch_create(&self, batch: NewBatch) -> Result<(Batch, Vec<JobRecord>)> {
        let body = json!({
            "jobs": batch.jobs,
            "open": batch.open,
            "on_success": batch.callbacks.on_success,
            "on_complete": batch.callbacks.on_complete,
            "on_failure": batch.callbacks.on_failure,
        });
        let answer: BatchAnswer = self
            .call(Method::POST, "/v1/batches", Some(json_body(&body)?), None)
            .await?;
        Ok((answer.batch, answer.jobs))
    }

    async fn batch_add(&self, id: BatchId, jobs: Vec<NewJob>) -> Result<(Batch, Vec<JobRecord>)> {
        let body = json!({ "jobs": jobs });
        let answer: BatchAnswer = self
            .call(
                Method::POST,
                &format!("/v1/batches/{id}/jobs"),
                Some(json_body(&body)?),
                None,
            )
            .await?;
        Ok((answer.batch, answer.jobs))
    }

    async fn batch_seal(&self, id: BatchId) -> Result<Batch> {
        let path = format!("/v1/batches/{id}/seal");
        self.call(Method::POST, &path, Some(b"{}".to_vec()), None)
            .await
    }

    async fn batch_cancel(&self, id: BatchId) -> Result<Batch> {
        let path = format!("/v1/batches/{id}/cancel");
        self.call(Method::POST, &path, Some(b"{}".to_vec()), None)
            .await
    }

    async fn batch_get(&self, id: BatchId) -> Result<Batch> {
        self.call(Method::GET, &format!("/v1/batches/{id}"), None, None)
            .await
    }
}

/// The answer of `GET /v1/jobs/{id}/dependencies`.
#[derive(Deserialize)]
struct DependenciesAnswer {
    jobs: Vec<JobRecord>,
    batches: Vec<Batch>,
}

/// The answer of `POST /v1/batches` and `POST /v1/batches/{id}/jobs`.
#[derive(Deserialize)]
struct BatchAnswer {
    batch: Batch,
    jobs: Vec<JobRecord>,
}
