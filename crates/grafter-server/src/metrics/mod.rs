//! Prometheus metrics: counters and histograms kept as jobs move on this
//! node, gauges read from the store at scrape time. Names follow
//! Prometheus's conventions (base units: seconds; `_total` counters); no
//! job id is ever a label, and queue and kind labels are bounded
//! (`budget.rs`).

mod budget;
mod negotiation;
mod running;
mod text_format;

pub use negotiation::wants_prometheus_text;
pub use text_format::prometheus_text;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use grafter_core::{Job, JobId, JobState, SkipReason};
use grafter_engine::maintenance::ServiceHealth;
use grafter_engine::Observer;
use grafter_store::{LimitUsage, QueueInfo};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use budget::{Budget, MAX_QUEUES, MAX_QUEUE_KINDS, OTHER};
use running::Running;

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
pub struct QueueKindLabels {
    pub queue: EscapedText,
    pub kind: EscapedText,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    pub queue: EscapedText,
    pub kind: EscapedText,
    /// `completed`, `retryable`, `dead` or `cancelled`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub queue: EscapedText,
    /// `2xx`, `3xx`, `4xx`, `5xx`, or `error` (no answer).
    pub status: &'static str,
}

/// Seconds, from 5 ms to an hour: a queue wait or a run time.
fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
        3600.0,
    ])
}

type Seconds = Family<QueueLabels, Histogram, fn() -> Histogram>;

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

/// The reason a schedule's slots were skipped (a fixed set: no escaping).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueReasonLabels {
    pub queue: EscapedText,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueStateLabels {
    pub queue: EscapedText,
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    enqueued: Family<QueueKindLabels, Counter>,
    finished: Family<FinishedLabels, Counter>,
    batch_acked: Counter,
    queue_wait: Seconds,
    run_time: Seconds,
    leases_expired: Counter,
    push_deliveries: Family<DeliveryLabels, Counter>,
    jobs: Family<QueueStateLabels, Gauge>,
    oldest_available: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    limit_in_use: Family<QueueLabels, Gauge>,
    limit_started: Family<QueueLabels, Gauge>,
    limit_throttled: Family<QueueReasonLabels, Gauge>,
    maintenance_failing: Family<ServiceLabels, Gauge>,
    maintenance_failures: Family<ServiceLabels, Gauge>,
    slots_skipped: Family<ReasonLabels, Counter>,
    queues: Budget<String>,
    queue_kinds: Budget<(String, String)>,
    running: Running,
    otlp_spans_dropped: Counter,
    /// Held from resetting the job gauges until they are written, so a
    /// concurrent scrape never clears them in between.
    rendering: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("grafter");
        let metrics = Metrics {
            registry: Registry::default(),
            enqueued: Family::default(),
            finished: Family::default(),
            batch_acked: Counter::default(),
            queue_wait: Family::new_with_constructor(seconds_histogram),
            run_time: Family::new_with_constructor(seconds_histogram),
            leases_expired: Counter::default(),
            push_deliveries: Family::default(),
            jobs: Family::default(),
            oldest_available: Family::default(),
            limit_in_use: Family::default(),
            limit_started: Family::default(),
            limit_throttled: Family::default(),
            maintenance_failing: Family::default(),
            maintenance_failures: Family::default(),
            slots_skipped: Family::default(),
            queues: Budget::new(MAX_QUEUES),
            queue_kinds: Budget::new(MAX_QUEUE_KINDS),
            running: Running::default(),
            otlp_spans_dropped: Counter::default(),
            rendering: Mutex::new(()),
        };
        registry.register(
            "schedule_slots_skipped",
            "Schedule slots not run, by reason (missed, outside_window, over_max, overlap, paused), \
             decided on this node",
            metrics.slots_skipped.clone(),
        );
        registry.register(
            "jobs_enqueued",
            "Jobs created through this node, by queue and kind",
            metrics.enqueued.clone(),
        );
        registry.register(
            "jobs_finished",
            "Attempts that ended on this node, by queue, kind and what the job became \
             (completed, retryable, dead, cancelled)",
            metrics.finished.clone(),
        );
        registry.register(
            "jobs_batch_acked",
            "Jobs completed through batch acks (POST /v1/jobs/ack) on this node, all queues \
             (also in jobs_finished)",
            metrics.batch_acked.clone(),
        );
        registry.register_with_unit(
            "job_queue_wait",
            "From when a job was due (its run_at) to its start, per queue",
            Unit::Seconds,
            metrics.queue_wait.clone(),
        );
        registry.register_with_unit(
            "job_run_time",
            "From an attempt's start to its end, per queue (attempts leased by this node)",
            Unit::Seconds,
            metrics.run_time.clone(),
        );
        registry.register(
            "leases_expired",
            "Leases found expired by this node's rescuer (each a failed attempt)",
            metrics.leases_expired.clone(),
        );
        registry.register(
            "push_deliveries",
            "Push requests sent by this node, by queue and answer (2xx, 3xx, 4xx, 5xx, error)",
            metrics.push_deliveries.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in the store per queue and state",
            metrics.jobs.clone(),
        );
        registry.register_with_unit(
            "queue_oldest_available_age",
            "How long the longest-waiting available job of a queue has been due",
            Unit::Seconds,
            metrics.oldest_available.clone(),
        );
        registry.register(
            "queue_limit_in_use",
            "Running jobs of a limited queue, every partition together: the slots in use",
            metrics.limit_in_use.clone(),
        );
        registry.register(
            "queue_limit_started",
            "Jobs of a rate-limited queue started within its rate window, every partition together",
            metrics.limit_started.clone(),
        );
        registry.register(
            "queue_limit_throttled",
            "Partitions of a limited queue (1 for the queue itself when not partitioned) \
             whose concurrency or rate is all used now, by reason",
            metrics.limit_throttled.clone(),
        );
        registry.register(
            "maintenance_failing",
            "1 while a maintenance service's latest pass on this node failed",
            metrics.maintenance_failing.clone(),
        );
        registry.register(
            "maintenance_pass_failures",
            "Failed passes and panics of each maintenance service since this node started",
            metrics.maintenance_failures.clone(),
        );
        registry.register(
            "otlp_spans_dropped",
            "Spans of this node not exported over OTLP: the export queue was full, or the \
             collector failed or did not answer in time",
            metrics.otlp_spans_dropped.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A queue's label, or [`OTHER`] past the budget.
    fn queue(&self, queue: &str) -> QueueLabels {
        if self.queues.admits(&queue.to_owned()) {
            QueueLabels::of(queue)
        } else {
            QueueLabels::of(OTHER)
        }
    }

    /// A queue's and kind's labels, or [`OTHER`] for both past the budget.
    fn queue_kind(&self, queue: &str, kind: &str) -> QueueKindLabels {
        let (queue, kind) = if self
            .queue_kinds
            .admits(&(queue.to_owned(), kind.to_owned()))
        {
            (queue, kind)
        } else {
            (OTHER, OTHER)
        };
        QueueKindLabels {
            queue: EscapedText(queue.to_owned()),
            kind: EscapedText(kind.to_owned()),
        }
    }

    /// Counts an attempt that ended at `at`, and its run time if this node
    /// started it.
    fn finish(
        &self,
        queue: &str,
        kind: &str,
        outcome: &'static str,
        started: Option<running::Started>,
        at: DateTime<Utc>,
    ) {
        let QueueKindLabels { queue: q, kind: k } = self.queue_kind(queue, kind);
        self.finished
            .get_or_create(&FinishedLabels {
                queue: q,
                kind: k,
                outcome,
            })
            .inc();
        if let Some(started) = started {
            self.run_time
                .get_or_create(&self.queue(queue))
                .observe(seconds_between(started.at, at));
        }
    }

    /// The count of spans the OTLP exporter dropped, for it to add to.
    pub fn otlp_spans_dropped(&self) -> Counter {
        self.otlp_spans_dropped.clone()
    }

    /// Counts one push request by its answer's status class (`None`: no answer).
    pub fn push_delivered(&self, queue: &str, status: Option<u16>) {
        let status = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            _ => "error",
        };
        let QueueLabels { queue } = self.queue(queue);
        self.push_deliveries
            .get_or_create(&DeliveryLabels { queue, status })
            .inc();
    }

    /// Renders the OpenMetrics text, with job gauges set from `queues` (and
    /// their oldest available job's age at `now`), limit gauges from `limits`
    /// (each limited queue's usage) and maintenance gauges from
    /// `maintenance`. The job and limit gauges are reset first: a queue whose
    /// jobs were all deleted or pruned (or whose limits were removed) is not
    /// in them, and its last counts must not linger.
    pub fn render(
        &self,
        queues: &[QueueInfo],
        limits: &[(String, LimitUsage)],
        maintenance: &BTreeMap<&'static str, ServiceHealth>,
        now: DateTime<Utc>,
    ) -> String {
        for (service, health) in maintenance {
            let labels = ServiceLabels {
                service: (*service).to_owned(),
            };
            self.maintenance_failing
                .get_or_create(&labels)
                .set(i64::from(health.failing()));
            self.maintenance_failures
                .get_or_create(&labels)
                .set(i64::try_from(health.failures_total).unwrap_or(i64::MAX));
        }
        let _rendering = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.jobs.clear();
        self.oldest_available.clear();
        // Queues past the label budget add up under `_other` (the oldest
        // job's age: the oldest of theirs).
        for queue in queues {
            let label = self.queue(&queue.name);
            for (state, count) in &queue.counts {
                let labels = QueueStateLabels {
                    queue: label.queue.clone(),
                    state: state.to_string(),
                };
                self.jobs
                    .get_or_create(&labels)
                    .inc_by(i64::try_from(*count).unwrap_or(i64::MAX));
            }
            if let Some(oldest) = queue.oldest_available_at {
                let age = self.oldest_available.get_or_create(&label);
                age.set(age.get().max(seconds_between(oldest, now)));
            }
        }
        self.limit_in_use.clear();
        self.limit_started.clear();
        self.limit_throttled.clear();
        for (queue, usage) in limits {
            let Some(set) = &usage.limits else {
                continue;
            };
            let labels = self.queue(queue);
            let sum = |f: fn(&grafter_store::PartitionUsage) -> u64| {
                i64::try_from(usage.partitions.iter().map(f).sum::<u64>()).unwrap_or(i64::MAX)
            };
            self.limit_in_use
                .get_or_create(&labels)
                .inc_by(sum(|p| p.running));
            self.limit_started
                .get_or_create(&labels)
                .inc_by(sum(|p| p.started));
            let full_by_concurrency = set.concurrency.map_or(0, |n| {
                usage
                    .partitions
                    .iter()
                    .filter(|p| p.running >= n.max(0) as u64)
                    .count()
            });
            let full_by_rate = usage
                .partitions
                .iter()
                .filter(|p| p.rate_full_until.is_some())
                .count();
            for (reason, n) in [("concurrency", full_by_concurrency), ("rate", full_by_rate)] {
                self.limit_throttled
                    .get_or_create(&QueueReasonLabels {
                        queue: labels.queue.clone(),
                        reason: reason.to_owned(),
                    })
                    .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        text
    }
}

/// The counters follow every change the engine makes on this node: through
/// the API, the push dispatcher, and in-process workers sharing the engine.
impl Observer for Metrics {
    fn enqueued(&self, job: &Job) {
        self.enqueued
            .get_or_create(&self.queue_kind(&job.queue, &job.kind))
            .inc();
    }

    fn started(&self, job: &Job) {
        let started = job.attempted_at.unwrap_or_else(Utc::now);
        self.queue_wait
            .get_or_create(&self.queue(&job.queue))
            .observe(seconds_between(job.run_at, started));
        self.running.start(job);
    }

    fn completed(&self, job: &Job) {
        let at = job.finished_at.unwrap_or_else(Utc::now);
        let started = self.running.finish(job.id);
        self.finish(&job.queue, &job.kind, "completed", started, at);
    }

    fn batch_completed(&self, ids: &[JobId]) {
        self.batch_acked.inc_by(ids.len() as u64);
        let now = Utc::now();
        for &id in ids {
            match self.running.finish(id) {
                Some(started) => {
                    let (queue, kind) = (started.queue.clone(), started.kind.clone());
                    self.finish(&queue, &kind, "completed", Some(started), now);
                }
                // Leased through another node: its queue and kind are not known here.
                None => self.finish(OTHER, OTHER, "completed", None, now),
            }
        }
    }

    fn failed(&self, job: &Job) {
        let outcome = match job.state {
            JobState::Retryable | JobState::Scheduled | JobState::Available => "retryable",
            JobState::Cancelled => "cancelled",
            _ => "dead",
        };
        let at = job.finished_at.unwrap_or_else(Utc::now);
        let started = self.running.finish(job.id);
        self.finish(&job.queue, &job.kind, outcome, started, at);
    }

    fn leases_expired(&self, count: u64) {
        self.leases_expired.inc_by(count);
    }

    fn slots_skipped(&self, reason: SkipReason, count: u64) {
        self.slots_skipped
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc_by(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job gauges keep to the queue label budget, as the counters do:
    /// queues past it add up under `_other`.
    #[test]
    fn queues_past_the_label_budget_add_up_under_other() {
        let metrics = Metrics::new();
        let now = Utc::now();
        let queues: Vec<QueueInfo> = (0..MAX_QUEUES + 2)
            .map(|i| {
                let mut queue = QueueInfo::empty(format!("q{i:04}"), false);
                queue.counts.insert(JobState::Available, 1);
                queue.oldest_available_at = Some(now - chrono::Duration::seconds(i as i64));
                queue
            })
            .collect();
        let text = metrics.render(&queues, &[], &BTreeMap::new(), now);
        let samples = |family: &str| -> Vec<&str> {
            text.lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .filter(|l| !l.contains("state=") || l.contains("state=\"available\""))
                .collect()
        };
        let jobs = samples("grafter_jobs");
        assert_eq!(jobs.len(), MAX_QUEUES + 1, "{jobs:?}");
        assert!(
            jobs.contains(&"grafter_jobs{queue=\"_other\",state=\"available\"} 2"),
            "{jobs:?}"
        );
        let ages = samples("grafter_queue_oldest_available_age_seconds");
        assert_eq!(ages.len(), MAX_QUEUES + 1, "{ages:?}");
        let other = ages
            .iter()
            .find(|l| l.contains("queue=\"_other\""))
            .expect("an _other age");
        assert!(
            other.ends_with(&format!(" {}.0", MAX_QUEUES + 1)),
            "{other}"
        );
    }
}
