//! What a due schedule's firing comes to, decided from the schedule, the
//! state of its last run and the time, with no I/O: which slots run, which
//! are skipped and why, and where the schedule goes on from.
//!
//! The due slots are walked in order, from `next_run_at` to now. They fall
//! into ranges that follow each other in time: slots before `skip_before`
//! came while the schedule was paused (`paused`); then, by the catch-up
//! policy, slots too late to run (`missed`, `outside_window`, `over_max`);
//! then the slots to run. A walk stops after [`WALK_LIMIT`] slots (an
//! every-second schedule after a long outage): it records what it can
//! decide and the next pass goes on from the first slot it could not.

use std::collections::VecDeque;
use std::time::Duration;

use grafter_core::schedule::ON_TIME_MS;
use grafter_core::{
    time, CatchUp, JobState, Overlap, Schedule, ScheduleRef, SkipReason, SkippedSlots, Timestamp,
    Timing,
};
use grafter_store::Firing;

/// Most slots one schedule's firing walks; more than the largest
/// `catch_up_max`, so every pass moves on.
pub(crate) const WALK_LIMIT: usize = 10_000;

/// A firing, and the previous run to cancel first (overlap `cancel_previous`).
pub(crate) struct Plan {
    pub(crate) firing: Firing,
    pub(crate) cancel: Option<grafter_core::JobId>,
}

/// A run of consecutive skipped slots being gathered.
#[derive(Default)]
struct Range(Option<(Timestamp, Timestamp, u64)>);

impl Range {
    fn add(&mut self, slot: Timestamp) {
        self.0 = Some(match self.0 {
            None => (slot, slot, 1),
            Some((first, _, count)) => (first, slot, count + 1),
        });
    }

    fn record(self, reason: SkipReason, now: Timestamp, out: &mut Vec<SkippedSlots>) {
        if let Some((first_slot, last_slot, count)) = self.0 {
            out.push(SkippedSlots {
                first_slot,
                last_slot,
                count,
                reason,
                recorded_at: now,
            });
        }
    }
}

/// The firing of `schedule`, due at `now`, whose last run is in
/// `last_job_state` (`None`: none, or gone).
pub(crate) fn plan(
    schedule: &Schedule,
    timing: &Timing,
    last_job_state: Option<JobState>,
    now: Timestamp,
) -> Plan {
    let spec = &schedule.spec;
    let before = |ms: u64| time::before(now, Duration::from_millis(ms));
    let on_time = before(ON_TIME_MS);
    let window_start = match spec.catch_up {
        CatchUp::All => before(spec.catch_up_window_ms).min(on_time),
        CatchUp::Skip | CatchUp::Latest => now,
    };
    let keep = match spec.catch_up {
        CatchUp::All => spec.catch_up_max as usize,
        CatchUp::Skip | CatchUp::Latest => 1,
    };
    let late_reason = match spec.catch_up {
        CatchUp::All => SkipReason::OverMax,
        CatchUp::Skip | CatchUp::Latest => SkipReason::Missed,
    };
    let (mut paused, mut outside, mut late) =
        (Range::default(), Range::default(), Range::default());
    let mut candidates: VecDeque<Timestamp> = VecDeque::with_capacity(keep.min(64));
    let mut next = schedule.next_run_at;
    let mut walked = 0;
    while let Some(slot) = next.filter(|&slot| slot <= now && walked < WALK_LIMIT) {
        walked += 1;
        if schedule.skip_before.is_some_and(|before| slot < before) {
            paused.add(slot);
        } else if spec.catch_up == CatchUp::All && slot < window_start {
            outside.add(slot);
        } else {
            if candidates.len() == keep {
                if let Some(evicted) = candidates.pop_front() {
                    late.add(evicted);
                }
            }
            candidates.push_back(slot);
        }
        next = timing.next(slot, false);
    }
    let finished = next.is_none_or(|slot| slot > now);
    let next_run_at = if finished {
        // Slots the engine did not walk are after now; none is left behind.
        next
    } else {
        // The walk stopped short: the candidates are decided next pass.
        candidates.front().copied().or(next)
    };
    let mut fire: Vec<Timestamp> = if finished {
        candidates.into_iter().collect()
    } else {
        Vec::new()
    };
    // Policy `skip` runs the latest slot only while it is on time.
    if spec.catch_up == CatchUp::Skip && fire.first().is_some_and(|&slot| slot < on_time) {
        fire.drain(..).for_each(|slot| late.add(slot));
    }
    let mut overlap = Range::default();
    let unfinished = last_job_state.is_some_and(|state| !state.is_finished());
    let mut cancel = None;
    match spec.overlap {
        Overlap::Allow => {}
        Overlap::Skip => {
            // Each run but the first would overlap the one before it.
            let keep = usize::from(!unfinished);
            fire.drain(keep.min(fire.len())..)
                .for_each(|slot| overlap.add(slot));
        }
        Overlap::CancelPrevious => {
            // Each run would cancel the one before: only the last is run.
            let last = fire.pop();
            fire.drain(..).for_each(|slot| overlap.add(slot));
            fire.extend(last);
            if unfinished && !fire.is_empty() {
                cancel = schedule.last_job_id;
            }
        }
    }
    let mut skipped = Vec::new();
    paused.record(SkipReason::Paused, now, &mut skipped);
    outside.record(SkipReason::OutsideWindow, now, &mut skipped);
    late.record(late_reason, now, &mut skipped);
    overlap.record(SkipReason::Overlap, now, &mut skipped);
    let last_slot = skipped
        .iter()
        .map(|s| s.last_slot)
        .chain(fire.iter().copied())
        .max();
    let jobs = fire
        .into_iter()
        .map(|slot| {
            let mut job = spec.job.clone();
            job.schedule = Some(ScheduleRef {
                id: schedule.id.clone(),
                slot: Some(slot),
            });
            job
        })
        .collect();
    Plan {
        firing: Firing {
            id: schedule.id.clone(),
            expected_version: schedule.version,
            created_at: schedule.created_at,
            next_run_at,
            last_slot,
            skip_before: schedule
                .skip_before
                .filter(|&before| next_run_at.is_some_and(|n| n < before)),
            jobs,
            skipped,
        },
        cancel,
    }
}
