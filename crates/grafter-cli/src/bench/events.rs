//! `grafter bench --workload events`: N idle event streams (`--jobs`,
//! default 10,000) held open on one `grafter serve`, one per waiting job
//! (docs/events.md). Reports the server's resident memory before and after
//! opening them (and so per stream), its CPU while they sit idle, and the
//! latency of an event: from sending a change of a watched job (a cancel) to
//! its `state` event arriving on that job's stream, next to the cancel's own
//! round trip.
//!
//! The streams are plain HTTP/1.1 requests on their own connections, read as
//! bytes: a client that holds 10,000 of them should cost little itself.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::target::{Server, Target};
use super::BenchArgs;
use crate::{outln, Failure};

/// The queue of the watched jobs (no worker takes them).
const QUEUE: &str = "bench_events";
/// Jobs per enqueue request.
const ENQUEUE_BATCH: usize = 1_000;
/// Streams being opened at once.
const OPENING_AT_ONCE: usize = 64;
/// Most latency samples (each ends one stream).
const SAMPLES: usize = 1_000;
/// How long the open streams are left idle while the server's CPU is read.
const IDLE_FOR: Duration = Duration::from_secs(5);

/// Runs the benchmark and prints its figures.
pub async fn run(args: &BenchArgs, target: &Target) -> Result<(), Failure> {
    let n = usize::try_from(args.jobs.unwrap_or(10_000)).unwrap_or(usize::MAX);
    let server = target.serve().await?;
    let outcome = measure(n, &server).await;
    server.stop().await;
    outcome
}

async fn measure(n: usize, server: &Server) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let count = ENQUEUE_BATCH.min(n - ids.len());
        let jobs: Vec<_> = (0..count)
            .map(|_| json!({"kind": "watched", "queue": QUEUE}))
            .collect();
        let answer: serde_json::Value = http
            .post(format!("{}/v1/jobs/batch", server.url))
            .json(&json!({ "jobs": jobs }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let batch = answer["jobs"].as_array().cloned().unwrap_or_default();
        ids.extend(batch.iter().filter_map(|job| job["id"].as_i64()));
    }
    let address = server
        .url
        .strip_prefix("http://")
        .unwrap_or(&server.url)
        .to_owned();
    let rss_before = server.rss().unwrap_or(0);

    let started = Instant::now();
    let mut streams = Vec::with_capacity(n);
    for chunk in ids.chunks(OPENING_AT_ONCE) {
        let opening = chunk.iter().map(|&id| open(&address, id));
        for stream in futures_util::future::join_all(opening).await {
            streams.push(stream?);
        }
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server.rss().unwrap_or(0);
    let cpu_before = super::cpu::Sample::now(server.pid());
    tokio::time::sleep(IDLE_FOR).await;
    let idle = cpu_before
        .server_seconds_until(&super::cpu::Sample::now(server.pid()))
        .unwrap_or(0.0);

    let samples = SAMPLES.min(streams.len());
    let mut to_event = Vec::with_capacity(samples);
    let mut round_trips = Vec::with_capacity(samples);
    for (stream, &id) in streams.iter_mut().zip(&ids).take(samples) {
        let sent = Instant::now();
        http.post(format!("{}/v1/jobs/{id}/cancel", server.url))
            .send()
            .await?
            .error_for_status()?;
        round_trips.push(sent.elapsed());
        read_until(stream, b"event: state").await?;
        to_event.push(sent.elapsed());
    }

    let per_stream = rss_after.saturating_sub(rss_before) / n.max(1) as u64;
    outln!("workload    events: {n} idle event streams on one grafter serve")?;
    outln!(
        "opened      {n} streams in {:.2} s",
        opened_in.as_secs_f64()
    )?;
    outln!(
        "memory      server RSS {:.1} MiB before, {:.1} MiB with the streams open: {:.1} KiB a stream",
        mib(rss_before),
        mib(rss_after),
        per_stream as f64 / 1024.0
    )?;
    outln!(
        "idle        server CPU {:.1} % of one core over {} s with every stream open",
        idle / IDLE_FOR.as_secs_f64() * 100.0,
        IDLE_FOR.as_secs()
    )?;
    outln!(
        "latency     change sent → its event on the stream: median {:.2} ms, p90 {:.2} ms, max {:.2} ms ({samples} samples)",
        millis(percentile(&mut to_event, 0.5)),
        millis(percentile(&mut to_event, 0.9)),
        millis(percentile(&mut to_event, 1.0)),
    )?;
    outln!(
        "            the change's own round trip (commit included): median {:.2} ms",
        millis(percentile(&mut round_trips, 0.5)),
    )?;
    Ok(())
}

/// Opens a job's event stream on a connection of its own, and reads up to
/// its snapshot.
async fn open(address: &str, id: i64) -> Result<TcpStream, Failure> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!(
        "GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    read_until(&mut stream, b"event: snapshot").await?;
    Ok(stream)
}

/// Reads from `stream` until `marker` has gone by.
async fn read_until(stream: &mut TcpStream, marker: &[u8]) -> Result<(), Failure> {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer))
            .await
            .map_err(|_| Failure::Message("no event on a stream within 30 s".into()))??;
        if read == 0 {
            return Err(Failure::Message("a stream closed early".into()));
        }
        seen.extend_from_slice(&buffer[..read]);
        if seen.windows(marker.len()).any(|w| w == marker) {
            return Ok(());
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(samples: &mut [Duration], at: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let index = ((samples.len() - 1) as f64 * at).round() as usize;
    samples[index]
}
