//! `grafter bench --workload schedules`: N schedules (`--jobs`, default
//! 10,000) all due on the same whole minute, fired by the real maintenance
//! services (leader election, the `periodic` pass at its default interval)
//! on the real clock. Reports how long after the minute the last of the N
//! slots' jobs was enqueued, and the scheduler's idle cost: the time of one
//! firing pass when nothing is due, with no schedules and with the N
//! schedules waiting for the minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use grafter_core::{NewJob, ScheduleSource, ScheduleSpec};
use grafter_engine::maintenance::{
    Maintenance, MaintenanceConfig, MaintenanceHealth, RetentionConfig,
};
use grafter_engine::{Clock, Engine, EngineConfig};
use grafter_store::Store;
use tokio_util::sync::CancellationToken;

use super::target::Target;
use super::BenchArgs;
use crate::{outln, Failure};

/// The queue of the schedules' jobs.
const QUEUE: &str = "bench_schedules";
/// Schedules put at once (SQLite commits concurrent writes together).
const PUTS_IN_FLIGHT: usize = 64;
/// Idle passes timed for each figure.
const IDLE_PASSES: usize = 200;

/// Runs the benchmark and prints its figures.
pub async fn run(args: &BenchArgs, target: &Target) -> Result<(), Failure> {
    let n = args.jobs.unwrap_or(10_000);
    let store = target.open_store().await?;
    let engine = Engine::new(store.clone(), EngineConfig::default());
    let config = MaintenanceConfig::default();

    let idle_empty = idle_pass(&engine, config.batch_size).await?;

    // Every schedule's next slot is the minute `at`: they are put by an
    // engine whose clock stands just before it, so however long putting
    // takes, all of them wait for the same instant. `at` leaves time to put
    // them all (estimated from the first 500) and to time idle passes.
    let probe = n.min(500);
    let started = Instant::now();
    put_schedules(
        &store,
        "probe",
        0..probe,
        next_minute(Utc::now() + chrono::Duration::days(1)),
    )
    .await?;
    let per_put = started.elapsed() / u32::try_from(probe.max(1)).unwrap_or(1);
    for i in 0..probe {
        engine.schedule_delete(&format!("probe-{i:06}")).await?;
    }
    let estimate = per_put * u32::try_from(n).unwrap_or(u32::MAX);
    let at = next_minute(
        Utc::now() + chrono::Duration::from_std(estimate * 2)? + chrono::Duration::seconds(15),
    );
    let started = Instant::now();
    put_schedules(&store, "bench", 0..n, at).await?;
    let put_took = started.elapsed();
    let idle_waiting = idle_pass(&engine, config.batch_size).await?;
    if Utc::now() > at - chrono::Duration::seconds(3) {
        return Err(Failure::Message(format!(
            "putting {n} schedules took {put_took:?}, past the minute chosen for them; try fewer"
        )));
    }

    let cancel = CancellationToken::new();
    let health = MaintenanceHealth::default();
    let maintenance = Maintenance::start(
        &engine,
        &config,
        &RetentionConfig::default(),
        health.clone(),
        cancel.clone(),
    );
    eprintln!("{n} schedules put in {put_took:.1?}; waiting for {at} (all due then)");
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let enqueued_after = loop {
        let enqueued = enqueued(&store).await?;
        if enqueued >= n {
            break (Utc::now() - at).to_std().unwrap_or_default();
        }
        if Instant::now() > deadline {
            maintenance.stop().await;
            return Err(Failure::Message(format!(
                "only {enqueued} of {n} slots enqueued 2 minutes after the minute"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    maintenance.stop().await;
    let failures = health
        .snapshot()
        .get("periodic")
        .map_or(0, |h| h.failures_total);

    outln!("grafter bench --workload schedules on {}", target.kind())?;
    outln!(
        "  database:             {} ({})",
        target.place(),
        target.durability
    )?;
    outln!("  schedules:            {n}, every minute, all due at {at}")?;
    outln!(
        "  all {n} jobs enqueued: {:.3} s after the minute",
        enqueued_after.as_secs_f64()
    )?;
    outln!(
        "  idle pass, 0 schedules:      median {:.3} ms, max {:.3} ms ({IDLE_PASSES} passes)",
        idle_empty.0,
        idle_empty.1
    )?;
    outln!(
        "  idle pass, {n} not due: median {:.3} ms, max {:.3} ms ({IDLE_PASSES} passes)",
        idle_waiting.0,
        idle_waiting.1
    )?;
    outln!("  (put {n} schedules in {put_took:.1?}; periodic pass failures: {failures})")?;
    outln!(
        "{}",
        serde_json::json!({
            "workload": "schedules",
            "database": target.kind(),
            "schedules": n,
            "enqueued_after_s": enqueued_after.as_secs_f64(),
            "idle_pass_empty_ms": {"median": idle_empty.0, "max": idle_empty.1},
            "idle_pass_not_due_ms": {"median": idle_waiting.0, "max": idle_waiting.1},
        })
    )?;
    Ok(())
}

/// The whole minute after `t`.
fn next_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(t) + chrono::Duration::minutes(1)
}

/// Puts schedules `prefix-<i>` for each `i` of `ids` (every minute) with the clock a second before `at`,
/// so that each one's next slot is `at`.
async fn put_schedules(
    store: &Arc<dyn Store>,
    prefix: &'static str,
    ids: std::ops::Range<u64>,
    at: DateTime<Utc>,
) -> Result<(), Failure> {
    let clock = Clock::manual(at - chrono::Duration::seconds(1));
    let engine = Engine::new(store.clone(), EngineConfig::default()).with_clock(clock);
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = ids.peekable();
    while ids.peek().is_some() || !tasks.is_empty() {
        while tasks.len() < PUTS_IN_FLIGHT {
            let Some(i) = ids.next() else { break };
            let engine = engine.clone();
            tasks.spawn(async move {
                let mut job = NewJob::new("bench_tick", serde_json::json!({"schedule": i}));
                job.queue = QUEUE.to_owned();
                let spec = ScheduleSpec::every(60_000, job);
                engine
                    .schedule_put(&format!("{prefix}-{i:06}"), spec, ScheduleSource::Api)
                    .await
                    .map(|(schedule, _)| schedule.next_run_at == Some(at))
            });
        }
        if let Some(done) = tasks.join_next().await {
            if !done?? {
                return Err(Failure::Message(format!(
                    "a schedule's next slot is not {at}"
                )));
            }
        }
    }
    Ok(())
}

/// Median and maximum time, in ms, of a firing pass with nothing due.
async fn idle_pass(engine: &Engine, batch_size: usize) -> Result<(f64, f64), Failure> {
    let mut times = Vec::with_capacity(IDLE_PASSES);
    for _ in 0..IDLE_PASSES {
        let started = Instant::now();
        let fired = engine.schedules_fire_due(batch_size).await?;
        times.push(started.elapsed().as_secs_f64() * 1_000.0);
        if fired != 0 {
            return Err(Failure::Message(
                "a schedule was due while timing idle passes".into(),
            ));
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() - 1]))
}

/// Jobs on the benchmark's queue, from the kept counts.
async fn enqueued(store: &Arc<dyn Store>) -> Result<u64, Failure> {
    Ok(store
        .queues_list()
        .await?
        .iter()
        .filter(|q| q.name == QUEUE)
        .map(|q| q.counts.values().sum::<u64>())
        .sum())
}
