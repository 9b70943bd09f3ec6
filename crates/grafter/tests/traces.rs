//! The worker continues the trace a job was enqueued in (docs/traces.md):
//! its `grafter.job` span's fields, read by a `tracing` layer, and the
//! `traceparent` the job is given for its own requests. In process on a
//! SQLite file, on a current-thread runtime so the layer, set for this
//! thread, sees every span the worker makes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grafter::{Client, EnqueueOptions, Job, JobContext, JobError, JobState, Worker};
use grafter_core::trace::TraceParent;
use grafter_core::Backoff;
use grafter_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const WAIT: Duration = Duration::from_secs(20);

/// The fields of every `grafter.job` span, in the order they began.
#[derive(Clone, Default)]
struct JobSpans(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for JobSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        if attrs.metadata().name() == "grafter.job" {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

/// Fails its first attempt; every run notes the `traceparent` it was given.
#[derive(Serialize, Deserialize)]
struct Traced;

static GIVEN: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

impl Job for Traced {
    const KIND: &'static str = "traced";
    type Output = ();

    async fn perform(self, ctx: JobContext) -> Result<(), JobError> {
        let given = ctx
            .traceparent()
            .expect("a worker's run has one")
            .to_owned();
        GIVEN.lock().unwrap().push((ctx.attempt(), given));
        if ctx.attempt() == 1 {
            return Err(JobError::retry("once more"));
        }
        Ok(())
    }
}

#[test]
fn a_first_attempt_is_a_child_and_a_retry_or_a_scheduled_run_a_linked_new_trace() {
    let spans = JobSpans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("grafter.db"))
            .await
            .unwrap();
        let backoff = Backoff {
            base_ms: 100,
            factor: 2.0,
            max_ms: 200,
            jitter: 0.0,
        };
        let client = Client::from_store_with_backoff(Arc::new(store), backoff);
        let worker = Worker::builder(&client)
            .queue("default", 1)
            .poll_wait(Duration::from_millis(200))
            .register::<Traced>()
            .build()
            .unwrap()
            .start();
        let traced = EnqueueOptions {
            traceparent: Some(PARENT.to_owned()),
            ..Default::default()
        };
        let retried = client
            .enqueue_with(Traced, traced.clone())
            .await
            .unwrap()
            .job;
        assert_eq!(retried.traceparent.as_deref(), Some(PARENT));
        let done = client.wait(retried.id, WAIT).await.unwrap();
        assert_eq!((done.state, done.attempt), (JobState::Completed, 2));
        let later = EnqueueOptions {
            delay: Some(Duration::from_millis(300)),
            ..traced
        };
        let scheduled = client.enqueue_with(Traced, later).await.unwrap().job;
        client.wait(scheduled.id, WAIT).await.unwrap();
        worker.shutdown().await;
    });

    let stored = TraceParent::parse(PARENT).unwrap();
    let spans = spans.0.lock().unwrap().clone();
    let given = GIVEN.lock().unwrap().clone();
    // The retried job's two attempts, then the scheduled job's failed first
    // run and its retry.
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!(given.len(), 4, "{given:?}");

    let child = &spans[0];
    assert_eq!(child["attempt"], "1");
    assert_eq!(child["trace_id"], stored.trace_id);
    assert_eq!(child["parent_id"], stored.parent_id);
    assert!(!child.contains_key("link.trace_id"), "{child:?}");
    let own = TraceParent::parse(&given[0].1).unwrap();
    assert_eq!(
        own.trace_id, stored.trace_id,
        "the job's requests join the trace"
    );
    assert_eq!(
        own.parent_id, child["span_id"],
        "as children of the run's span"
    );

    for (span, (attempt, given)) in spans[1..].iter().zip(&given[1..]) {
        assert_ne!(span["trace_id"], stored.trace_id, "{span:?}");
        assert!(!span.contains_key("parent_id"), "{span:?}");
        assert_eq!(span["link.trace_id"], stored.trace_id, "{span:?}");
        assert_eq!(span["link.span_id"], stored.parent_id, "{span:?}");
        let own = TraceParent::parse(given).unwrap();
        assert_eq!(own.trace_id, span["trace_id"], "attempt {attempt}");
        assert_eq!(own.parent_id, span["span_id"]);
    }
    assert_eq!(spans[1]["attempt"], "2", "the retry");
    assert_eq!(
        spans[2]["attempt"], "1",
        "the scheduled run's first attempt"
    );
}
