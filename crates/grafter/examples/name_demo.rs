//! The seed's "Worker Test app" scenario, with Grafter.
//!
//! `GET http://127.0.0.1:3000/?name=foo` enqueues a `NameJob` and answers at
//! once with the job's id; a worker runs it by waiting 10 seconds and then
//! logging `Hello, foo`. Kill the process with SIGKILL while the job runs,
//! start it again, and the job finishes (attempt 2).
//!
//! ```sh
//! cargo run --release -p grafter --example name_demo          # web app + Grafter API + worker, one process
//! cargo run --release -p grafter --example name_demo -- web   # web app + Grafter API only
//! cargo run --release -p grafter --example name_demo -- worker # a worker only, over HTTP (GRAFTER_URL)
//! ```
//!
//! Settings: `PORT` (web app, default 3000), `GRAFTER_LISTEN` (API, default
//! 127.0.0.1:7380), `GRAFTER_DATABASE_URL` (default sqlite://grafter-demo.db),
//! `GRAFTER_URL` (where `worker` finds the API), `NAME_JOB_SECONDS` (default 10),
//! `SHUTDOWN_TIMEOUT_SECONDS` (default 30).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use grafter::{Client, Job, JobContext, JobError, Worker};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct NameJob {
    name: String,
}

impl Job for NameJob {
    const KIND: &'static str = "name_job";
    type Output = Value;

    async fn perform(self, ctx: JobContext) -> Result<Value, JobError> {
        let seconds: u64 = env_or("NAME_JOB_SECONDS", "10").parse().unwrap_or(10);
        for second in 0..seconds {
            ctx.progress(
                second as f64 / seconds as f64,
                format!("{second} of {seconds} s"),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let greeting = format!("Hello, {}", self.name);
        tracing::info!(job = %ctx.id(), attempt = ctx.attempt(), "{greeting}");
        Ok(json!({ "greeting": greeting }))
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The worker as the demo runs it: a short lease so a killed worker's job comes
/// back within seconds; on SIGTERM, running jobs get `SHUTDOWN_TIMEOUT_SECONDS`
/// (default 30) to finish before they are handed back.
fn name_worker(client: &Client) -> grafter::WorkerBuilder {
    let shutdown_timeout = env_or("SHUTDOWN_TIMEOUT_SECONDS", "30")
        .parse()
        .unwrap_or(30);
    Worker::builder(client)
        .register::<NameJob>()
        .queue("default", 4)
        .lease(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(shutdown_timeout))
}

async fn enqueue_name(
    State((client, api)): State<(Client, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let Some(name) = query.get("name").filter(|n| !n.is_empty()).cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "add ?name=yourname"})),
        );
    };
    match client.enqueue(NameJob { name }).await {
        Ok(enqueued) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "job_id": enqueued.job.id,
                "state": enqueued.job.state,
                "status_url": format!("http://{api}/v1/jobs/{}", enqueued.job.id),
            })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

/// Serves the web app and the Grafter API on one store until a signal.
async fn web(client: Client, worker: Option<Worker>) -> Result<(), Box<dyn std::error::Error>> {
    let store = client.store().expect("an in-process client").clone();
    let api_addr = env_or("GRAFTER_LISTEN", "127.0.0.1:7380");
    let web_addr = format!("127.0.0.1:{}", env_or("PORT", "3000"));
    let shutdown = CancellationToken::new();

    let api_listener = tokio::net::TcpListener::bind(&api_addr).await?;
    let api = tokio::spawn(grafter::server::serve(
        api_listener,
        store,
        Default::default(),
        shutdown.clone(),
    ));
    let app = Router::new()
        .route("/", get(enqueue_name))
        .with_state((client, api_addr.clone()));
    let web_listener = tokio::net::TcpListener::bind(&web_addr).await?;
    let web = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(web_listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    });
    let running = worker.map(|w| w.start());
    tracing::info!("web app on http://{web_addr}/?name=foo, Grafter API on http://{api_addr}");

    grafter::wait_for_signal().await;
    if let Some(running) = running {
        running.shutdown().await;
    }
    shutdown.cancel();
    api.await??;
    web.await??;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mode = std::env::args().nth(1).unwrap_or_else(|| "all".to_owned());
    let database = env_or("GRAFTER_DATABASE_URL", "sqlite://grafter-demo.db");
    match mode.as_str() {
        "all" => {
            let client = Client::open(&database).await?;
            // The API server in this process runs the maintenance services.
            let worker = name_worker(&client).maintenance(false).build()?;
            web(client, Some(worker)).await
        }
        "web" => web(Client::open(&database).await?, None).await,
        "worker" => {
            let client = Client::from_env()?;
            name_worker(&client).build()?.run_until_signal().await;
            Ok(())
        }
        other => Err(format!("unknown mode '{other}': use all, web or worker").into()),
    }
}
