//! The receiving side, end to end: a real `grafter serve` (in process, on a
//! SQLite file) pushes jobs over loopback to an axum app whose only job code
//! is a `PushEndpoint` with typed jobs. No worker runs anywhere.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use grafter::push::{sign, unix_now, PushEndpoint, Verifier, SIGNATURE_HEADER};
use grafter::server::ServerConfig;
use grafter::{Client, EnqueueOptions, Job, JobContext, JobError, JobRecord, JobState};
use grafter_core::Backoff;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::{CancellationToken, DropGuard};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "the-apps-push-secret-42";

#[derive(Serialize, Deserialize)]
struct SendEmail {
    to: String,
}

impl Job for SendEmail {
    const KIND: &'static str = "send_email";
    const QUEUE: &'static str = "app";
    type Output = Value;

    async fn perform(self, ctx: JobContext) -> Result<Value, JobError> {
        if self.to.is_empty() {
            return Err(JobError::fail("no recipient"));
        }
        if self.to.starts_with("flaky") && ctx.attempt() == 1 {
            return Err(JobError::retry("smtp down"));
        }
        Ok(json!({"sent_to": self.to, "attempt": ctx.attempt(), "queue": ctx.queue()}))
    }
}

static NOT_YET_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Serialize, Deserialize)]
struct NotYet;

impl Job for NotYet {
    const KIND: &'static str = "not_yet";
    const QUEUE: &'static str = "app";
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        if NOT_YET_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(JobError::snooze(Duration::from_secs(1)));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Explodes;

impl Job for Explodes {
    const KIND: &'static str = "explodes";
    const QUEUE: &'static str = "app";
    const MAX_ATTEMPTS: i32 = 1;
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        panic!("kaboom")
    }
}

/// The last request the app received, as it arrived.
type Captured = Arc<Mutex<Option<(HeaderMap, Bytes)>>>;

struct Env {
    client: Client,
    grafter: String,
    app: String,
    captured: Captured,
    http: reqwest::Client,
    _shutdown: DropGuard,
    _dir: tempfile::TempDir,
}

/// A Grafter server and a web app with a push endpoint, both on loopback.
async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = grafter_engine::open(
        &format!("sqlite://{}", dir.path().join("g.db").display()),
        &Default::default(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grafter = format!("http://{}", listener.local_addr().unwrap());
    let mut config = ServerConfig {
        retry: Backoff {
            base_ms: 100,
            factor: 2.0,
            max_ms: 200,
            jitter: 0.0,
        },
        ..Default::default()
    };
    config.maintenance.schedule_interval_ms = 50;
    // The app listens on loopback.
    config.push.allow_private = true;
    let shutdown = CancellationToken::new();
    tokio::spawn(grafter::server::serve(
        listener,
        store,
        config,
        shutdown.clone(),
    ));

    let captured: Captured = Arc::default();
    let endpoint = PushEndpoint::new(Verifier::new(SECRET))
        .register::<SendEmail>()
        .register::<NotYet>()
        .register::<Explodes>();
    let record = captured.clone();
    let app = axum::Router::new()
        .route("/grafter/jobs", endpoint.into_route())
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let record = record.clone();
                async move { capture(record, request, next).await }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}/grafter/jobs", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let env = Env {
        client: Client::http(&grafter).unwrap(),
        grafter,
        app: app_url,
        captured,
        http: reqwest::Client::new(),
        _shutdown: shutdown.drop_guard(),
        _dir: dir,
    };
    env.push_to("app", SECRET).await;
    env
}

async fn capture(record: Captured, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    *record.lock().unwrap() = Some((parts.headers.clone(), bytes.clone()));
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

impl Env {
    async fn push_to(&self, queue: &str, secret: &str) {
        self.push_with(queue, json!({"url": self.app, "secret": secret}))
            .await
    }

    async fn push_with(&self, queue: &str, push: Value) {
        let response = self
            .http
            .put(format!("{}/v1/queues/{queue}", self.grafter))
            .json(&json!({ "push": push }))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }

    async fn run<J: Job>(&self, job: J, options: EnqueueOptions) -> JobRecord {
        let id = self.client.enqueue_with(job, options).await.unwrap().job.id;
        self.client.wait(id, WAIT).await.unwrap()
    }

    /// Sends a request to the app's endpoint as if from Grafter.
    async fn replay(&self, signature: Option<&str>, body: &[u8]) -> (u16, String) {
        let mut request = self.http.post(&self.app).body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

fn errors(job: &JobRecord) -> Vec<&str> {
    job.errors.iter().map(|e| e.error.as_str()).collect()
}

#[tokio::test]
async fn typed_jobs_run_inside_grafters_pushes_with_every_outcome() {
    let env = env().await;
    let done = env
        .run(
            SendEmail {
                to: "ada@example.com".into(),
            },
            EnqueueOptions::default(),
        )
        .await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(
        done.result,
        Some(json!({"sent_to": "ada@example.com", "attempt": 1, "queue": "app"}))
    );

    let retried = env
        .run(
            SendEmail {
                to: "flaky@example.com".into(),
            },
            EnqueueOptions::default(),
        )
        .await;
    assert_eq!(retried.state, JobState::Completed);
    assert_eq!(retried.attempt, 2);
    assert_eq!(errors(&retried), ["500 Internal Server Error: smtp down"]);

    let failed = env
        .run(SendEmail { to: String::new() }, EnqueueOptions::default())
        .await;
    assert_eq!(failed.state, JobState::Dead);
    assert_eq!((failed.attempt, failed.max_attempts), (1, 25));
    assert_eq!(errors(&failed), ["422 Unprocessable Entity: no recipient"]);

    let snoozed = env.run(NotYet, EnqueueOptions::default()).await;
    assert_eq!(snoozed.state, JobState::Completed);
    assert_eq!(snoozed.attempt, 1, "a snooze does not count");
    assert!(snoozed.errors.is_empty());
    assert_eq!(NOT_YET_RUNS.load(Ordering::SeqCst), 2);

    let panicked = env.run(Explodes, EnqueueOptions::default()).await;
    assert_eq!(panicked.state, JobState::Dead);
    assert_eq!(
        errors(&panicked),
        ["500 Internal Server Error: panicked: kaboom"]
    );

    let unknown = env
        .client
        .enqueue_raw(vec![{
            let mut job = grafter::NewJob::new("not_registered", json!({}));
            job.queue = "app".into();
            job.max_attempts = 1;
            job
        }])
        .await
        .unwrap();
    let unknown = env.client.wait(unknown[0].id, WAIT).await.unwrap();
    assert_eq!(
        errors(&unknown),
        ["404 Not Found: no job kind 'not_registered' is registered at this endpoint"]
    );
}

#[tokio::test]
async fn the_endpoint_accepts_grafters_signature_and_rejects_wrong_secret_changed_body_and_stale_time(
) {
    let env = env().await;
    // Grafter's own request is accepted (the job completes)...
    let done = env
        .run(
            SendEmail {
                to: "ada@example.com".into(),
            },
            EnqueueOptions::default(),
        )
        .await;
    assert_eq!(done.state, JobState::Completed);
    let (headers, body) = env
        .captured
        .lock()
        .unwrap()
        .clone()
        .expect("the app saw Grafter's request");
    let signature = headers[SIGNATURE_HEADER].to_str().unwrap().to_owned();
    // ...and so is the very same request again, within the tolerance.
    let (status, _) = env.replay(Some(&signature), &body).await;
    assert_eq!(status, 200);

    // A queue signing with another secret: refused, a failed attempt whose
    // error says why.
    env.push_to("elsewhere", "not-the-apps-secret-0000").await;
    let options = EnqueueOptions {
        queue: Some("elsewhere".into()),
        max_attempts: Some(1),
        ..Default::default()
    };
    let refused = env
        .run(
            SendEmail {
                to: "ada@example.com".into(),
            },
            options,
        )
        .await;
    assert_eq!(refused.state, JobState::Dead);
    assert_eq!(
        errors(&refused),
        ["401 Unauthorized: signature does not match (wrong secret, or the body was changed)"]
    );

    // A changed body.
    let changed = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("ada@example.com", "eve@example.com");
    let (status, text) = env.replay(Some(&signature), changed.as_bytes()).await;
    assert_eq!(
        (status, text.as_str()),
        (
            401,
            "signature does not match (wrong secret, or the body was changed)"
        )
    );

    // A stale timestamp, correctly signed.
    let stale = sign(&[SECRET], unix_now() - 600, &body);
    let (status, text) = env.replay(Some(&stale), &body).await;
    assert_eq!(status, 401);
    assert!(text.contains("from this clock (tolerance 300 s)"), "{text}");

    // No signature at all.
    let (status, text) = env.replay(None, &body).await;
    assert_eq!(
        (status, text.as_str()),
        (
            401,
            "missing signature header (Grafter-Signature or webhook-signature)"
        )
    );
}

#[tokio::test]
async fn the_endpoint_accepts_standard_webhooks_signatures_alone() {
    let env = env().await;
    let push = json!({"url": env.app, "secret": SECRET, "signing": "standard-webhooks"});
    env.push_with("standard", push).await;
    let options = EnqueueOptions {
        queue: Some("standard".into()),
        ..Default::default()
    };
    // Retried once: the second attempt carries the same webhook-id.
    let to = "flaky@example.com".into();
    let done = env.run(SendEmail { to }, options).await;
    assert_eq!((done.state, done.attempt), (JobState::Completed, 2));
    let (headers, body) = env.captured.lock().unwrap().clone().unwrap();
    assert!(headers.get(SIGNATURE_HEADER).is_none(), "{headers:?}");
    assert_eq!(headers["webhook-id"], format!("job_{}", done.id.0).as_str());
    assert!(headers["webhook-signature"]
        .to_str()
        .unwrap()
        .starts_with("v1,"));

    let replay = |body: Vec<u8>, timestamp: String| {
        let request = env
            .http
            .post(&env.app)
            .header("webhook-id", headers["webhook-id"].clone())
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", headers["webhook-signature"].clone())
            .body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let sent_at = headers["webhook-timestamp"].to_str().unwrap().to_owned();
    assert_eq!(replay(body.to_vec(), sent_at.clone()).await, 200);
    assert_eq!(replay(b"{}".to_vec(), sent_at).await, 401, "a changed body");
    let later = (unix_now() + 600).to_string();
    assert_eq!(replay(body.to_vec(), later).await, 401, "a moved timestamp");
}
