//! Schedules, through the engine on each store with its manual clock: slots
//! in time zones across DST changes and a skipped day, catch-up after three
//! days down, overlap, pause and edit at a slot boundary, two engines racing
//! for the same slots, a slot taken once for good, and a firing that fails
//! half-way leaving nothing behind.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use grafter_core::{
    CatchUp, JobState, NewJob, Overlap, ScheduleRef, ScheduleSource, ScheduleSpec, SkipReason,
    Timestamp,
};
use grafter_engine::{Clock, Engine, EngineConfig, FetchRequest, Outcome};
use grafter_store::{Firing, JobsList, Order, SchedulesFire};
use serde_json::json;

use super::S;

fn at(s: &str) -> Timestamp {
    s.parse().expect("a time")
}

fn engine(store: &S, clock: &Clock) -> Engine {
    Engine::new(store.clone(), EngineConfig::default()).with_clock(clock.clone())
}

/// A schedule of a job whose kind is the schedule's id, so its jobs list apart.
fn spec(id: &str, cron: &str, tz: &str) -> ScheduleSpec {
    let mut spec = ScheduleSpec::cron(cron, NewJob::new(id, json!({"from": id})));
    spec.timezone = tz.into();
    spec
}

async fn put(engine: &Engine, id: &str, spec: ScheduleSpec) {
    engine
        .schedule_put(id, spec, ScheduleSource::Api)
        .await
        .expect("put");
}

async fn fire(engine: &Engine) {
    while engine.schedules_fire_due(1_000).await.expect("fire") >= 1_000 {}
}

/// The slots of the jobs schedule `id` made, in order of id.
async fn slots(store: &S, id: &str) -> Vec<Timestamp> {
    jobs_of(store, id)
        .await
        .iter()
        .map(|job| {
            let schedule = job.schedule.as_ref().expect("made by a schedule");
            assert_eq!(schedule.id, id);
            schedule.slot.expect("a slot")
        })
        .collect()
}

async fn jobs_of(store: &S, id: &str) -> Vec<grafter_core::Job> {
    store
        .jobs_list(JobsList {
            kind: Some(id.into()),
            limit: 10_000,
            order: Order::Asc,
            ..JobsList::default()
        })
        .await
        .expect("list")
        .jobs
}

/// Moves the clock from `from` to `to` in steps, firing at each.
async fn run(engine: &Engine, clock: &Clock, from: Timestamp, to: Timestamp, step: Duration) {
    clock.set(from);
    while clock.now() < to {
        clock.advance(step);
        fire(engine).await;
    }
}

/// The zones and days, each slot once: a wall time skipped by
/// spring-forward fires right after the gap, one repeated by fall-back once,
/// a skipped day once when it is over; the 31st and February 29th only in
/// the months that have them.
pub async fn schedules_fire_each_slot_once_across_dst_and_odd_dates(store: S) {
    let ten_minutes = Duration::from_secs(600);
    let day = Duration::from_secs(86_400);
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Duration,
        &'a [&'a str],
    );
    let cases: [Case; 12] = [
        (
            "ny-spring",
            "30 2 * * *",
            "America/New_York",
            "2025-03-08T12:00:00Z",
            "2025-03-10T12:00:00Z",
            ten_minutes,
            &["2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z"],
        ),
        (
            "ny-fall",
            "30 1 * * *",
            "America/New_York",
            "2025-11-01T12:00:00Z",
            "2025-11-03T12:00:00Z",
            ten_minutes,
            &["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"],
        ),
        (
            "ny-hourly",
            "0 * * * *",
            "America/New_York",
            "2025-11-02T04:30:00Z",
            "2025-11-02T08:30:00Z",
            ten_minutes,
            &[
                "2025-11-02T05:00:00Z",
                "2025-11-02T07:00:00Z",
                "2025-11-02T08:00:00Z",
            ],
        ),
        (
            "berlin-spring",
            "30 2 * * *",
            "Europe/Berlin",
            "2025-03-29T12:00:00Z",
            "2025-03-31T12:00:00Z",
            ten_minutes,
            &["2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z"],
        ),
        (
            "berlin-fall",
            "30 2 * * *",
            "Europe/Berlin",
            "2025-10-25T12:00:00Z",
            "2025-10-27T12:00:00Z",
            ten_minutes,
            &["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"],
        ),
        (
            "lord-howe-spring",
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2025-10-04T00:00:00Z",
            "2025-10-06T00:00:00Z",
            ten_minutes,
            &["2025-10-04T15:30:00Z", "2025-10-05T15:15:00Z"],
        ),
        (
            "lord-howe-fall",
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2025-04-05T00:00:00Z",
            "2025-04-07T00:00:00Z",
            ten_minutes,
            &["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z"],
        ),
        (
            "lord-howe-half-hours",
            "*/30 1 * * *",
            "Australia/Lord_Howe",
            "2025-04-05T14:00:00Z",
            "2025-04-05T17:00:00Z",
            ten_minutes,
            &["2025-04-05T14:00:00Z", "2025-04-05T14:30:00Z"],
        ),
        (
            "apia",
            "0 12 * * *",
            "Pacific/Apia",
            "2011-12-29T00:00:00Z",
            "2011-12-31T00:00:00Z",
            ten_minutes,
            &[
                "2011-12-29T22:00:00Z",
                "2011-12-30T10:00:00Z",
                "2011-12-30T22:00:00Z",
            ],
        ),
        (
            "thirty-first",
            "0 0 31 * *",
            "UTC",
            "2025-04-01T00:00:00Z",
            "2025-08-01T00:00:30Z",
            day,
            &["2025-05-31T00:00:00Z", "2025-07-31T00:00:00Z"],
        ),
        (
            "leap-day",
            "0 12 29 2 *",
            "UTC",
            "2027-12-01T00:00:00Z",
            "2028-03-15T00:00:00Z",
            day,
            &["2028-02-29T12:00:00Z"],
        ),
        (
            "seconds",
            "*/20 * * * * *",
            "Europe/Berlin",
            "2025-03-30T00:59:00Z",
            "2025-03-30T01:01:00Z",
            Duration::from_secs(7),
            &[
                "2025-03-30T00:59:00Z",
                "2025-03-30T00:59:20Z",
                "2025-03-30T00:59:40Z",
                "2025-03-30T01:00:00Z",
                "2025-03-30T01:00:20Z",
                "2025-03-30T01:00:40Z",
                "2025-03-30T01:01:00Z",
            ],
        ),
    ];
    for (id, cron, tz, from, to, step, expected) in cases {
        let clock = Clock::manual(at(from));
        let engine = engine(&store, &clock);
        let mut spec = spec(id, cron, tz);
        spec.catch_up = CatchUp::All;
        put(&engine, id, spec).await;
        run(&engine, &clock, at(from), at(to), step).await;
        let expected: Vec<Timestamp> = expected.iter().map(|s| at(s)).collect();
        assert_eq!(slots(&store, id).await, expected, "{id}: {cron} in {tz}");
    }
    // The next February 29th, from a year without one.
    let clock = Clock::manual(at("2025-01-01T00:00:00Z"));
    let engine = engine(&store, &clock);
    put(
        &engine,
        "leap-preview",
        spec("leap-preview", "0 12 29 2 *", "UTC"),
    )
    .await;
    let preview = engine.schedule_preview("leap-preview", 2).await.unwrap();
    assert_eq!(
        preview,
        [at("2028-02-29T12:00:00Z"), at("2032-02-29T12:00:00Z")]
    );
}

/// An hourly schedule down for three days (and thirty minutes) after its
/// 01:00 slot: `skip` runs none of the 71 slots it missed, `latest` the
/// last, `all` the latest `catch_up_max` (10) of the 24 within its window
/// (a day); every other slot is recorded with its
/// reason, counted, and the schedule goes on at the next hour.
pub async fn three_days_down_under_each_catch_up_policy(store: S) {
    let start = at("2025-06-01T00:00:30Z");
    let back = at("2025-06-04T00:30:00Z");
    let cases = [
        (CatchUp::Skip, 0, vec![(SkipReason::Missed, 71)]),
        (CatchUp::Latest, 1, vec![(SkipReason::Missed, 70)]),
        (
            CatchUp::All,
            10,
            vec![(SkipReason::OutsideWindow, 47), (SkipReason::OverMax, 14)],
        ),
    ];
    for (policy, runs, skips) in cases {
        let id = format!("down-{policy:?}").to_lowercase();
        let clock = Clock::manual(start);
        let engine = engine(&store, &clock);
        let mut spec = spec(&id, "0 * * * *", "UTC");
        spec.catch_up = policy;
        spec.catch_up_max = 10;
        put(&engine, &id, spec).await;
        clock.set(at("2025-06-01T00:00:40Z"));
        fire(&engine).await;
        assert!(slots(&store, &id).await.is_empty(), "nothing due yet");
        clock.set(at("2025-06-01T01:00:01Z"));
        fire(&engine).await;
        assert_eq!(slots(&store, &id).await, [at("2025-06-01T01:00:00Z")]);

        clock.set(back);
        fire(&engine).await;
        let ran = slots(&store, &id).await;
        assert_eq!(ran.len(), 1 + runs, "{policy:?}: {ran:?}");
        if runs > 0 {
            assert_eq!(ran.last(), Some(&at("2025-06-04T00:00:00Z")), "{policy:?}");
        }
        if policy == CatchUp::All {
            assert_eq!(ran[1], at("2025-06-03T15:00:00Z"), "the latest ten");
        }
        let recorded = engine.schedule_skips(&id, 10).await.unwrap();
        let mut recorded: Vec<(SkipReason, u64)> =
            recorded.iter().map(|s| (s.reason, s.count)).collect();
        recorded.sort();
        assert_eq!(recorded, skips, "{policy:?}");
        let schedule = engine.schedule_get(&id).await.unwrap();
        assert_eq!(schedule.next_run_at, Some(at("2025-06-04T01:00:00Z")));
        assert_eq!(schedule.last_slot, Some(at("2025-06-04T00:00:00Z")));
        // Firing again changes nothing.
        fire(&engine).await;
        assert_eq!(slots(&store, &id).await.len(), 1 + runs);
    }
}

/// Overlap: `skip` records a slot whose previous run is unfinished and runs
/// the next once it finished; `cancel_previous` cancels it and runs. A
/// trigger runs outside the slots (no slot) and counts as the last run.
pub async fn overlap_policies_and_trigger(store: S) {
    let clock = Clock::manual(at("2025-06-01T00:00:00Z"));
    let engine = engine(&store, &clock);
    let mut skip = spec("overlap-skip", "* * * * *", "UTC");
    skip.overlap = Overlap::Skip;
    put(&engine, "overlap-skip", skip).await;
    let mut cancel = spec("overlap-cancel", "* * * * *", "UTC");
    cancel.overlap = Overlap::CancelPrevious;
    put(&engine, "overlap-cancel", cancel).await;

    fire(&engine).await;
    clock.set(at("2025-06-01T00:01:00Z"));
    fire(&engine).await;
    assert_eq!(
        slots(&store, "overlap-skip").await,
        [at("2025-06-01T00:00:00Z")]
    );
    let skipped = engine.schedule_skips("overlap-skip", 10).await.unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].reason, SkipReason::Overlap);
    assert_eq!(skipped[0].first_slot, at("2025-06-01T00:01:00Z"));
    let cancelled = jobs_of(&store, "overlap-cancel").await;
    assert_eq!(cancelled.len(), 2);
    assert_eq!(cancelled[0].state, JobState::Cancelled);
    assert_eq!(cancelled[1].state, JobState::Available);

    // The skipped schedule's run finishes: its next slot runs.
    let request = FetchRequest {
        queues: vec!["default".into()],
        max: 10,
        wait: Duration::ZERO,
        lease: None,
        worker_id: None,
        running_limit: None,
    };
    for leased in engine.fetch(request, std::future::pending()).await.unwrap() {
        if leased.job.kind == "overlap-skip" {
            engine
                .record(
                    leased.job.id,
                    &leased.lease,
                    Outcome::Completed { result: None },
                )
                .await
                .unwrap();
        }
    }
    clock.set(at("2025-06-01T00:02:00Z"));
    fire(&engine).await;
    assert_eq!(
        slots(&store, "overlap-skip").await,
        [at("2025-06-01T00:00:00Z"), at("2025-06-01T00:02:00Z")]
    );

    let triggered = engine.schedule_trigger("overlap-skip").await.unwrap();
    let reference = triggered.schedule.clone().expect("made by the schedule");
    assert_eq!(
        (reference.id.as_str(), reference.slot),
        ("overlap-skip", None)
    );
    let schedule = engine.schedule_get("overlap-skip").await.unwrap();
    assert_eq!(schedule.last_job_id, Some(triggered.id));
    assert_eq!(schedule.next_run_at, Some(at("2025-06-01T00:03:00Z")));
}

/// Paused and edited exactly at a slot: if the slot had fired, the edit
/// never fires it again; if it had not, it is skipped as paused on resume,
/// with every slot that came while paused; the schedule goes on by its new
/// timing.
pub async fn pause_and_edit_exactly_at_a_slot_boundary(store: S) {
    for fired_first in [true, false] {
        let id = format!("edit-{fired_first}");
        let clock = Clock::manual(at("2025-06-01T09:30:00Z"));
        let engine = engine(&store, &clock);
        put(&engine, &id, spec(&id, "0 * * * *", "UTC")).await;
        clock.set(at("2025-06-01T10:00:00Z"));
        if fired_first {
            fire(&engine).await;
        }
        engine.schedule_pause(&id, true).await.unwrap();
        let mut edited = spec(&id, "*/30 * * * *", "UTC");
        edited.catch_up = CatchUp::All;
        put(&engine, &id, edited).await;
        let schedule = engine.schedule_get(&id).await.unwrap();
        assert!(schedule.paused, "an edit without `paused` keeps it paused");
        let expected_next = if fired_first {
            at("2025-06-01T10:30:00Z")
        } else {
            at("2025-06-01T10:00:00Z")
        };
        assert_eq!(schedule.next_run_at, Some(expected_next), "{id}");
        fire(&engine).await;

        clock.set(at("2025-06-01T11:10:00Z"));
        fire(&engine).await;
        engine.schedule_pause(&id, false).await.unwrap();
        fire(&engine).await;
        clock.set(at("2025-06-01T11:30:00Z"));
        fire(&engine).await;
        let mut expected = Vec::new();
        if fired_first {
            expected.push(at("2025-06-01T10:00:00Z"));
        }
        expected.push(at("2025-06-01T11:30:00Z"));
        assert_eq!(slots(&store, &id).await, expected, "{id}");
        let skipped = engine.schedule_skips(&id, 10).await.unwrap();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].reason, SkipReason::Paused);
        assert_eq!(skipped[0].first_slot, expected_next);
        assert_eq!(skipped[0].last_slot, at("2025-06-01T11:00:00Z"));
    }
}

/// Two engines (two nodes) firing the same every-second schedules at the
/// same moments: every slot is enqueued exactly once.
pub async fn two_engines_racing_enqueue_each_slot_once(store: S) {
    let start = at("2025-06-01T00:00:00Z");
    let clock = Clock::manual(start);
    let (a, b) = (engine(&store, &clock), engine(&store, &clock));
    for i in 0..20 {
        let id = format!("race-{i:02}");
        let mut spec = ScheduleSpec::every(1_000, NewJob::new(id.clone(), json!({})));
        spec.catch_up = CatchUp::All;
        put(&a, &id, spec).await;
    }
    for _ in 0..30 {
        clock.advance(Duration::from_millis(1_000));
        let (x, y) = tokio::join!(a.schedules_fire_due(7), b.schedules_fire_due(7));
        x.unwrap();
        y.unwrap();
    }
    fire(&a).await;
    for i in 0..20 {
        let id = format!("race-{i:02}");
        let expected: Vec<Timestamp> = (0..=30)
            .map(|s| start + chrono::Duration::seconds(s))
            .collect();
        assert_eq!(slots(&store, &id).await, expected, "{id}");
    }
}

/// A slot once taken is never enqueued again, even by a schedule deleted
/// and made again with a clock set back to the same slot.
pub async fn a_slot_taken_is_never_enqueued_again(store: S) {
    let slot = at("2025-06-01T10:00:00Z");
    let clock = Clock::manual(slot);
    let engine = engine(&store, &clock);
    put(&engine, "again", spec("again", "0 * * * *", "UTC")).await;
    fire(&engine).await;
    engine.schedule_delete("again").await.unwrap();
    assert!(engine.schedule_get("again").await.is_err());
    put(&engine, "again", spec("again", "0 * * * *", "UTC")).await;
    assert_eq!(
        engine.schedule_get("again").await.unwrap().next_run_at,
        Some(slot)
    );
    fire(&engine).await;
    assert_eq!(slots(&store, "again").await, [slot]);
    assert_eq!(
        engine.schedule_get("again").await.unwrap().next_run_at,
        Some(at("2025-06-01T11:00:00Z")),
        "moved on all the same"
    );
}

/// A firing decided from a schedule that was then deleted and made again
/// under its id (its versions start over) is not applied to the new one: no
/// job of the old definition, and the new one's next slot is its own.
pub async fn a_firing_of_a_deleted_schedule_is_not_applied_to_one_made_again(store: S) {
    let clock = Clock::manual(at("2025-06-01T10:00:00Z"));
    let engine = engine(&store, &clock);
    put(&engine, "reborn", spec("old", "0 * * * *", "UTC")).await;
    let old = engine.schedule_get("reborn").await.unwrap();
    let mut job = old.spec.job.clone();
    job.schedule = Some(ScheduleRef {
        id: "reborn".into(),
        slot: old.next_run_at,
    });
    let decided = Firing {
        id: "reborn".into(),
        expected_version: old.version,
        created_at: old.created_at,
        next_run_at: Some(at("2025-06-01T11:00:00Z")),
        last_slot: old.next_run_at,
        skip_before: None,
        jobs: vec![job],
        skipped: Vec::new(),
    };
    engine.schedule_delete("reborn").await.unwrap();
    clock.set(at("2025-06-01T10:00:01Z"));
    put(&engine, "reborn", spec("new", "30 10 * * *", "UTC")).await;
    let new = engine.schedule_get("reborn").await.unwrap();
    assert_eq!(new.version, old.version, "the versions started over");
    let fired = store
        .schedules_fire(SchedulesFire {
            firings: vec![decided],
            now: clock.now(),
        })
        .await
        .unwrap();
    assert!(!fired[0].applied, "applied to the schedule made again");
    assert!(jobs_of(&store, "old").await.is_empty());
    assert_eq!(
        engine.schedule_get("reborn").await.unwrap().next_run_at,
        Some(at("2025-06-01T10:30:00Z"))
    );
}

/// A schedule's jobs, listed by the `schedule` filter: its slots' jobs and
/// its triggered runs, newest first by id, paged by keyset, with other
/// filters checked on them; never another schedule's jobs or plain jobs on
/// the same queue and kind.
pub async fn jobs_list_by_schedule(store: S) {
    let clock = Clock::manual(at("2025-06-01T00:00:00Z"));
    let engine = engine(&store, &clock);
    // Same kind and queue for both: only the schedule tells them apart.
    for id in ["mine", "other"] {
        put(&engine, id, spec("tick", "* * * * *", "UTC")).await;
    }
    let mut mine = Vec::new();
    for minute in 0..5 {
        clock.set(at("2025-06-01T00:00:00Z") + chrono::Duration::minutes(minute));
        fire(&engine).await;
        engine
            .enqueue(NewJob::new("tick", json!({"plain": minute})))
            .await
            .unwrap();
        if minute == 2 {
            mine.push(engine.schedule_trigger("mine").await.unwrap().id);
        }
    }
    let listed = |params: JobsList| {
        let store = store.clone();
        async move {
            let page = store.jobs_list(params).await.expect("list");
            (page.jobs, page.next)
        }
    };
    let all_mine = |jobs: &[grafter_core::Job]| {
        jobs.iter()
            .all(|j| j.schedule.as_ref().is_some_and(|s| s.id == "mine"))
    };
    let (jobs, next) = listed(JobsList {
        schedule: Some("mine".into()),
        limit: 100,
        ..JobsList::default()
    })
    .await;
    assert_eq!(jobs.len(), 6, "five slots and one trigger");
    assert!(all_mine(&jobs));
    assert!(jobs.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert!(next.is_none());
    assert!(
        jobs.iter().any(|j| mine.contains(&j.id)),
        "the triggered run"
    );
    assert_eq!(
        jobs.iter()
            .filter(|j| j.schedule.as_ref().is_some_and(|s| s.slot.is_none()))
            .count(),
        1
    );

    // Pages of two, oldest first, add up to the same jobs.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = listed(JobsList {
            schedule: Some("mine".into()),
            limit: 2,
            order: Order::Asc,
            after,
            ..JobsList::default()
        })
        .await;
        paged.extend(page.into_iter().map(|j| j.id));
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut newest_first: Vec<_> = jobs.iter().map(|j| j.id).collect();
    newest_first.reverse();
    assert_eq!(paged, newest_first);

    // With other filters, checked on the schedule's jobs.
    engine.cancel(jobs[0].id).await.unwrap();
    let (cancelled, _) = listed(JobsList {
        schedule: Some("mine".into()),
        state: Some(JobState::Cancelled),
        limit: 100,
        scan_limit: Some(10_000),
        ..JobsList::default()
    })
    .await;
    assert_eq!(
        cancelled.iter().map(|j| j.id).collect::<Vec<_>>(),
        [jobs[0].id]
    );
    let (on_queue, _) = listed(JobsList {
        schedule: Some("mine".into()),
        queue: Some("default".into()),
        kind: Some("tick".into()),
        limit: 100,
        ..JobsList::default()
    })
    .await;
    assert_eq!(on_queue.len(), 6);
    assert!(all_mine(&on_queue));
    let (elsewhere, _) = listed(JobsList {
        schedule: Some("mine".into()),
        queue: Some("elsewhere".into()),
        limit: 100,
        ..JobsList::default()
    })
    .await;
    assert!(elsewhere.is_empty());
    let (none, next) = listed(JobsList {
        schedule: Some("no-such-schedule".into()),
        limit: 100,
        ..JobsList::default()
    })
    .await;
    assert!(none.is_empty() && next.is_none());
}

/// The config file's schedules: made, updated when changed, deleted when
/// gone from the file; schedules made through the API are left alone.
pub async fn config_schedules_are_reconciled_by_id(store: S) {
    let clock = Clock::manual(at("2025-06-01T00:00:00Z"));
    let engine = engine(&store, &clock);
    put(&engine, "from-api", spec("from-api", "@daily", "UTC")).await;
    let mut file = BTreeMap::new();
    file.insert("nightly".to_owned(), spec("nightly", "0 3 * * *", "UTC"));
    file.insert("hourly".to_owned(), spec("hourly", "@hourly", "UTC"));
    let first = engine.schedules_reconcile(&file).await.unwrap();
    assert_eq!(first.created, ["hourly", "nightly"]);
    let again = engine.schedules_reconcile(&file).await.unwrap();
    assert_eq!(again, Default::default(), "nothing changed");
    file.remove("hourly");
    file.insert(
        "nightly".to_owned(),
        spec("nightly", "0 4 * * *", "Europe/Berlin"),
    );
    let second = engine.schedules_reconcile(&file).await.unwrap();
    assert_eq!(
        (second.updated, second.deleted),
        (vec!["nightly".to_owned()], vec!["hourly".to_owned()])
    );
    let listed: Vec<String> = engine
        .schedules_list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ["from-api", "nightly"]);
    let nightly = engine.schedule_get("nightly").await.unwrap();
    assert_eq!(nightly.source, ScheduleSource::Config);
    assert_eq!(nightly.next_run_at, Some(at("2025-06-01T02:00:00Z")));
}

/// A firing that fails between inserting a slot's job and recording the
/// slot on the schedule (`break_between` makes the store fail there; each
/// store its own way) leaves neither: no job, the schedule as it was. Once
/// the cause is gone (`repair`), the slot fires once.
pub async fn a_firing_that_fails_half_way_leaves_nothing<B, R>(
    store: S,
    break_between: impl FnOnce() -> B,
    repair: impl FnOnce() -> R,
) where
    B: Future<Output = ()>,
    R: Future<Output = ()>,
{
    let slot = at("2025-06-01T10:00:00Z");
    let clock = Clock::manual(slot);
    let engine = engine(&store, &clock);
    put(&engine, "atomic", spec("atomic", "0 * * * *", "UTC")).await;
    let before = engine.schedule_get("atomic").await.unwrap();
    break_between().await;
    assert!(engine.schedules_fire_due(10).await.is_err());
    assert!(jobs_of(&store, "atomic").await.is_empty(), "no job");
    assert_eq!(engine.schedule_get("atomic").await.unwrap(), before);
    repair().await;
    fire(&engine).await;
    assert_eq!(slots(&store, "atomic").await, [slot]);
    let after = engine.schedule_get("atomic").await.unwrap();
    assert_eq!(
        after.last_job_id,
        Some(jobs_of(&store, "atomic").await[0].id)
    );
}
