//! Prometheus metrics: counters kept as jobs move, gauges read from the store at
//! scrape time.

use std::fmt::Write;
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use grafter_store::QueueInfo;

/// A label value that may hold any printable text, such as a queue name,
/// written with the escapes the exposition format requires (`\\`, `\"`,
/// `\n`): prometheus-client 0.23 writes label values as they are, and one
/// quote in a queue name would make the whole scrape unparsable.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct EscapedText(String);

impl EncodeLabelValue for EscapedText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: EscapedText,
}

impl QueueLabels {
    fn of(queue: &str) -> Self {
        QueueLabels {
            queue: EscapedText(queue.to_owned()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueStateLabels {
    pub queue: EscapedText,
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    enqueued: Family<QueueLabels, Counter>,
    completed: Family<QueueLabels, Counter>,
    batch_acked: Counter,
    failed: Family<QueueLabels, Counter>,
    jobs: Family<QueueStateLabels, Gauge>,
    /// Held from resetting the job gauges until they are written, so a
    /// concurrent scrape never clears them in between.
    rendering: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("grafter");
        let enqueued = Family::<QueueLabels, Counter>::default();
        let completed = Family::<QueueLabels, Counter>::default();
        let batch_acked = Counter::default();
        let failed = Family::<QueueLabels, Counter>::default();
        let jobs = Family::<QueueStateLabels, Gauge>::default();
        registry.register(
            "jobs_enqueued",
            "Jobs created through this server",
            enqueued.clone(),
        );
        registry.register(
            "jobs_completed",
            "Jobs acknowledged one by one through this server",
            completed.clone(),
        );
        registry.register(
            "jobs_batch_acked",
            "Jobs completed through batch acks (POST /v1/jobs/ack) on this server, all queues",
            batch_acked.clone(),
        );
        registry.register(
            "jobs_failed",
            "Failed attempts reported through this server",
            failed.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in the store per queue and state",
            jobs.clone(),
        );
        Metrics {
            registry,
            enqueued,
            completed,
            batch_acked,
            failed,
            jobs,
            rendering: Mutex::new(()),
        }
    }

    pub fn enqueued(&self, queue: &str) {
        self.enqueued.get_or_create(&QueueLabels::of(queue)).inc();
    }

    pub fn completed(&self, queue: &str) {
        self.completed.get_or_create(&QueueLabels::of(queue)).inc();
    }

    pub fn batch_acked(&self, jobs: usize) {
        self.batch_acked.inc_by(jobs as u64);
    }

    pub fn failed(&self, queue: &str) {
        self.failed.get_or_create(&QueueLabels::of(queue)).inc();
    }

    /// Renders the OpenMetrics text, with job gauges set from `queues`. The
    /// gauges are reset first: a queue whose jobs were all deleted or pruned
    /// is not in `queues`, and its last counts must not linger as a backlog.
    pub fn render(&self, queues: &[QueueInfo]) -> String {
        let _rendering = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.jobs.clear();
        for queue in queues {
            for (state, count) in &queue.counts {
                let labels = QueueStateLabels {
                    queue: EscapedText(queue.name.clone()),
                    state: state.to_string(),
                };
                self.jobs
                    .get_or_create(&labels)
                    .set(i64::try_from(*count).unwrap_or(i64::MAX));
            }
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        text
    }
}
