//! Prometheus metrics: counters kept as jobs move, gauges read from the store at
//! scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use grafter_core::{Job, SkipReason};
use grafter_engine::maintenance::ServiceHealth;
use grafter_engine::Observer;
use grafter_store::{LimitUsage, QueueInfo};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    enqueued: Family<QueueLabels, Counter>,
    completed: Family<QueueLabels, Counter>,
    batch_acked: Counter,
    failed: Family<QueueLabels, Counter>,
    jobs: Family<QueueStateLabels, Gauge>,
    limit_in_use: Family<QueueLabels, Gauge>,
    limit_started: Family<QueueLabels, Gauge>,
    limit_throttled: Family<QueueReasonLabels, Gauge>,
    maintenance_failing: Family<ServiceLabels, Gauge>,
    maintenance_failures: Family<ServiceLabels, Gauge>,
    slots_skipped: Family<ReasonLabels, Counter>,
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
        let limit_in_use = Family::<QueueLabels, Gauge>::default();
        let limit_started = Family::<QueueLabels, Gauge>::default();
        let limit_throttled = Family::<QueueReasonLabels, Gauge>::default();
        let maintenance_failing = Family::<ServiceLabels, Gauge>::default();
        let maintenance_failures = Family::<ServiceLabels, Gauge>::default();
        let slots_skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "schedule_slots_skipped",
            "Schedule slots not run, by reason (missed, outside_window, over_max, overlap, paused), \
             decided on this node",
            slots_skipped.clone(),
        );
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
        registry.register(
            "queue_limit_in_use",
            "Running jobs of a limited queue, every partition together: the slots in use",
            limit_in_use.clone(),
        );
        registry.register(
            "queue_limit_started",
            "Jobs of a rate-limited queue started within its rate window, every partition together",
            limit_started.clone(),
        );
        registry.register(
            "queue_limit_throttled",
            "Partitions of a limited queue (1 for the queue itself when not partitioned) \
             whose concurrency or rate is all used now, by reason",
            limit_throttled.clone(),
        );
        registry.register(
            "maintenance_failing",
            "1 while a maintenance service's latest pass on this node failed",
            maintenance_failing.clone(),
        );
        registry.register(
            "maintenance_pass_failures",
            "Failed passes and panics of each maintenance service since this node started",
            maintenance_failures.clone(),
        );
        Metrics {
            registry,
            enqueued,
            completed,
            batch_acked,
            failed,
            jobs,
            limit_in_use,
            limit_started,
            limit_throttled,
            maintenance_failing,
            maintenance_failures,
            slots_skipped,
            rendering: Mutex::new(()),
        }
    }

    fn count(family: &Family<QueueLabels, Counter>, job: &Job) {
        family.get_or_create(&QueueLabels::of(&job.queue)).inc();
    }

    /// Renders the OpenMetrics text, with job gauges set from `queues`, limit
    /// gauges from `limits` (each limited queue's usage) and maintenance
    /// gauges from `maintenance`. The job and limit gauges are reset first:
    /// a queue whose jobs were all deleted or pruned (or whose limits were
    /// removed) is not in them, and its last counts must not linger.
    pub fn render(
        &self,
        queues: &[QueueInfo],
        limits: &[(String, LimitUsage)],
        maintenance: &BTreeMap<&'static str, ServiceHealth>,
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
        self.limit_in_use.clear();
        self.limit_started.clear();
        self.limit_throttled.clear();
        for (queue, usage) in limits {
            let Some(set) = &usage.limits else {
                continue;
            };
            let labels = QueueLabels::of(queue);
            let sum = |f: fn(&grafter_store::PartitionUsage) -> u64| {
                i64::try_from(usage.partitions.iter().map(f).sum::<u64>()).unwrap_or(i64::MAX)
            };
            self.limit_in_use
                .get_or_create(&labels)
                .set(sum(|p| p.running));
            self.limit_started
                .get_or_create(&labels)
                .set(sum(|p| p.started));
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
                        queue: EscapedText(queue.clone()),
                        reason: reason.to_owned(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
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
        Self::count(&self.enqueued, job);
    }

    fn completed(&self, job: &Job) {
        Self::count(&self.completed, job);
    }

    fn batch_completed(&self, count: usize) {
        self.batch_acked.inc_by(count as u64);
    }

    fn failed(&self, job: &Job) {
        Self::count(&self.failed, job);
    }

    fn slots_skipped(&self, reason: SkipReason, count: u64) {
        self.slots_skipped
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc_by(count);
    }
}
