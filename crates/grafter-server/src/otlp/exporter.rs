//! The exporting task: gathers spans from the tracer's bounded queue and
//! posts them to the collector in batches, as OTLP/HTTP protobuf. An export
//! the collector asks to retry (429, 502, 503, 504, or no connection) is
//! tried again after a backoff, as the OTLP specification asks; one that
//! still fails, or fails otherwise (a redirect included: it is never
//! followed), drops its batch (counted). The job path
//! never waits for any of it: while an export waits, new spans queue up to
//! the queue's bound and past it are dropped, so a collector that is down
//! costs the job path nothing.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::leases::Leases;
use super::proto::{self, KeyValue};
use super::{On, Tracer};
use crate::config::{ConfigError, OtlpSettings};

/// Spans waiting for export at most; one more is dropped.
const QUEUE_CAPACITY: usize = 8_192;
/// Most spans in one export request.
const MAX_BATCH: usize = 512;
/// A partial batch is sent after this long.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the last spans to reach the collector.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(3);
/// The waits before each retry of an export (OpenTelemetry's Java SDK's
/// defaults: 1 s growing by half each time, at most 5 attempts).
const RETRY_WAITS: [Duration; 4] = [
    Duration::from_millis(1_000),
    Duration::from_millis(1_500),
    Duration::from_millis(2_250),
    Duration::from_millis(3_375),
];
/// The longest wait a collector's `Retry-After` is followed for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The semantic conventions the spans follow.
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";

/// The running export: [`Exporter::finish`] sends what is queued and stops.
pub struct Exporter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Starts exporting to `settings`' endpoint, if it has one: the tracer
    /// the handlers record into, and the task to finish at shutdown. Spans
    /// dropped are added to `dropped`.
    pub fn start(
        settings: &OtlpSettings,
        dropped: Counter,
    ) -> Result<(Tracer, Option<Exporter>), ConfigError> {
        let Some(url) = settings.traces_url() else {
            return Ok((Tracer::default(), None));
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in settings.resolved_headers()? {
            let invalid = || ConfigError::Invalid {
                field: "otlp.headers",
                message: format!("{name}: not a valid HTTP header name and value"),
            };
            headers.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?,
                reqwest::header::HeaderValue::from_str(&value).map_err(|_| invalid())?,
            );
        }
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/x-protobuf"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            // A redirect would carry the credential headers to wherever it
            // points; a collector answering 3xx fails its export instead.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(|e| ConfigError::Invalid {
                field: "otlp",
                message: format!("cannot make the export's HTTP client: {e}"),
            })?;
        let (sender, spans) = mpsc::channel(QUEUE_CAPACITY);
        let stop = CancellationToken::new();
        let batches = Batches {
            http,
            url,
            resource: resource(&settings.service_name),
            dropped: dropped.clone(),
            failing: false,
        };
        let task = tokio::spawn(batches.run(spans, stop.clone()));
        let tracer = Tracer {
            on: Some(Arc::new(On {
                spans: sender,
                dropped,
                leases: Leases::default(),
            })),
        };
        Ok((tracer, Some(Exporter { stop, task })))
    }

    /// Exports the spans still queued, within a short deadline, and stops.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the OTLP exporter failed");
        }
    }
}

/// The `service.name` (and the SDK's name) every span is reported under.
fn resource(service_name: &str) -> proto::Resource {
    proto::Resource {
        attributes: vec![
            KeyValue::string("service.name", service_name),
            KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
        ],
    }
}

struct Batches {
    http: reqwest::Client,
    url: String,
    resource: proto::Resource,
    dropped: Counter,
    /// Whether the last export failed: its first failure is a warning,
    /// the rest of an outage debug lines.
    failing: bool,
}

impl Batches {
    async fn run(mut self, mut spans: mpsc::Receiver<proto::Span>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut flush_at = Instant::now() + FLUSH_EVERY;
        loop {
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                _ = stop.cancelled() => break,
                received = spans.recv_many(&mut batch, room) => {
                    if received == 0 {
                        break;
                    }
                    if batch.len() < MAX_BATCH {
                        continue;
                    }
                }
                _ = sleep_until(flush_at) => {}
            }
            if !batch.is_empty() {
                // Shutdown does not wait for an export under way (the
                // collector may be slow to answer, or waiting out a retry):
                // its spans go out again with the rest, within the deadline.
                // A collector that took them already gets them twice.
                tokio::select! {
                    _ = self.export(batch.clone(), &stop) => batch.clear(),
                    _ = stop.cancelled() => break,
                }
            }
            flush_at = Instant::now() + FLUSH_EVERY;
        }
        // Shutting down: what is queued goes out, if the collector takes it in time.
        spans.close();
        while let Some(span) = spans.recv().await {
            batch.push(span);
        }
        let mut left = batch.len() as u64;
        let last = async {
            while !batch.is_empty() {
                let rest = batch.split_off(batch.len().min(MAX_BATCH));
                let chunk = std::mem::replace(&mut batch, rest);
                let sent = chunk.len() as u64;
                self.export(chunk, &stop).await;
                left -= sent;
            }
        };
        if tokio::time::timeout(SHUTDOWN_DEADLINE, last).await.is_err() {
            tracing::warn!(
                spans = left,
                "OTLP export: the shutdown deadline passed; the spans left are dropped"
            );
            self.dropped.inc_by(left);
        }
    }

    /// Posts `spans` as one request, retried while the collector asks for
    /// it (see [`RETRY_WAITS`]) unless `stop` has fired; if that fails they
    /// are dropped and counted.
    async fn export(&mut self, spans: Vec<proto::Span>, stop: &CancellationToken) {
        let count = spans.len() as u64;
        let body = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: "grafter-server".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                    schema_url: SCHEMA_URL.into(),
                }],
            }],
        }
        .encode_to_vec();
        let body = bytes::Bytes::from(body);
        let mut waits = RETRY_WAITS.into_iter();
        let failure = loop {
            let (error, retry_after) =
                match self.http.post(&self.url).body(body.clone()).send().await {
                    Ok(answer) if answer.status().is_success() => break None,
                    Ok(answer) => {
                        let error = format!("the collector answered {}", answer.status());
                        if !retryable(answer.status()) {
                            break Some(error);
                        }
                        (error, retry_after(answer.headers()))
                    }
                    Err(error) if error.is_connect() => (format!("{}", error.without_url()), None),
                    Err(error) => break Some(format!("{}", error.without_url())),
                };
            let Some(wait) = waits.next().filter(|_| !stop.is_cancelled()) else {
                break Some(error);
            };
            let wait = match retry_after {
                Some(after) if after > MAX_RETRY_AFTER => break Some(error),
                Some(after) => after,
                None => wait,
            };
            tracing::debug!(%error, ?wait, "OTLP export: retrying");
            tokio::time::sleep(wait).await;
        };
        match failure {
            None => self.failing = false,
            Some(error) => {
                self.dropped.inc_by(count);
                if self.failing {
                    tracing::debug!(%error, spans = count, "OTLP export failed; spans dropped");
                } else {
                    tracing::warn!(%error, spans = count, "OTLP export failed; spans dropped until it works again");
                }
                self.failing = true;
            }
        }
    }
}

/// The answers after which the OTLP specification asks an exporter to try
/// again: the collector is overloaded or briefly unavailable.
fn retryable(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// A `Retry-After` given in seconds (the form collectors send).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    seconds.trim().parse().ok().map(Duration::from_secs)
}
