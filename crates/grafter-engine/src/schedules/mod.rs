//! Schedules: periodic jobs (docs/schedules.md). The operations people call
//! (put, pause, resume, trigger, delete, preview, the config file's
//! reconciliation) and the firing pass the maintenance leader runs.
//!
//! Every change is written whole under the version it was decided from
//! (`Store::schedule_write`), and retried from a fresh read when someone
//! else changed the schedule meanwhile, so a firing and an edit never
//! overwrite each other. A slot's job is inserted in the same transaction
//! that moves the schedule past the slot, and the store keeps each slot's
//! job unique: a slot runs at most once across any number of nodes.

mod plan;

use std::collections::BTreeMap;

use grafter_core::{
    validate_schedule_id, Job, Schedule, ScheduleRef, ScheduleSource, ScheduleSpec, SkippedSlots,
    Timestamp, ValidationError,
};
use grafter_store::{
    Firing, ScheduleSkipsList, ScheduleWrite, SchedulesDue, SchedulesFire, SchedulesList,
};

use crate::error::{Error, Result};
use crate::Engine;

/// How often a change is tried again when the schedule keeps changing under it.
const WRITE_TRIES: usize = 20;
/// Most jobs one store call of the firing pass inserts.
const JOBS_PER_CALL: usize = 1_000;
/// Most fire times a preview lists.
pub const MAX_PREVIEW: usize = 1_000;
/// Most schedules in one page of a list.
pub const MAX_LIST: usize = 1_000;

/// What the config file's reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Schedules the file made.
    pub created: Vec<String>,
    /// Schedules whose definition the file changed.
    pub updated: Vec<String>,
    /// Schedules the file made before but no longer has: deleted.
    pub deleted: Vec<String>,
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no schedule with id {id:?}"))
}

/// Whether two definitions fire at different slots.
fn timing_changed(old: &ScheduleSpec, new: &ScheduleSpec) -> bool {
    old.cron != new.cron
        || old.every_ms != new.every_ms
        || old.timezone != new.timezone
        || old.start_at != new.start_at
        || old.end_at != new.end_at
}

impl Engine {
    /// Creates or replaces schedule `id` (answers it, and whether it is
    /// new). A changed timing takes effect from now: the next slot is the
    /// first of the new timing at or after the earlier of now and the old
    /// next slot, and after any slot already fired. `paused` absent keeps
    /// the schedule as it is; resuming skips (and records) the slots that
    /// came while it was paused.
    pub async fn schedule_put(
        &self,
        id: &str,
        mut spec: ScheduleSpec,
        source: ScheduleSource,
    ) -> Result<(Schedule, bool)> {
        validate_schedule_id(id)?;
        let timing = spec.validate()?;
        let paused = spec.paused.take();
        for _ in 0..WRITE_TRIES {
            let now = self.now();
            let old = self.store().schedule_get(id.to_owned()).await?;
            let (schedule, expected) = match old {
                None => (
                    Schedule {
                        id: id.to_owned(),
                        next_run_at: timing.next(now, true),
                        spec: spec.clone(),
                        paused: paused.unwrap_or(false),
                        source,
                        last_slot: None,
                        last_run_at: None,
                        last_job_id: None,
                        skip_before: None,
                        version: 0,
                        created_at: now,
                        updated_at: now,
                    },
                    None,
                ),
                Some(old) => {
                    let pausing = paused.unwrap_or(old.paused);
                    if old.spec == spec && old.source == source && old.paused == pausing {
                        return Ok((old, false));
                    }
                    let mut new = old.clone();
                    if timing_changed(&old.spec, &spec) {
                        let from = old.next_run_at.map_or(now, |next| next.min(now));
                        let mut next = timing.next(from, true);
                        if let (Some(slot), Some(last)) = (next, old.last_slot) {
                            if slot <= last {
                                next = timing.next(last, false);
                            }
                        }
                        new.next_run_at = next;
                    }
                    new.spec = spec.clone();
                    new.source = source;
                    set_paused(&mut new, pausing, now);
                    new.updated_at = now;
                    (new, Some(old.version))
                }
            };
            let write = ScheduleWrite {
                schedule: schedule.clone(),
                expected_version: expected,
            };
            if self.store().schedule_write(write).await? {
                let created = expected.is_none();
                let version = expected.map_or(1, |v| v + 1);
                return Ok((
                    Schedule {
                        version,
                        ..schedule
                    },
                    created,
                ));
            }
        }
        Err(busy(id))
    }

    /// One schedule.
    pub async fn schedule_get(&self, id: &str) -> Result<Schedule> {
        validate_schedule_id(id)?;
        self.store()
            .schedule_get(id.to_owned())
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Up to `limit` (at most [`MAX_LIST`]) schedules by id, after `after`.
    pub async fn schedules_list(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Schedule>> {
        if !(1..=MAX_LIST).contains(&limit) {
            return Err(ValidationError::new(
                "limit",
                format!("must be between 1 and {MAX_LIST}, got {limit}"),
            )
            .into());
        }
        // Any text is a place in the order of ids, but PostgreSQL cannot
        // compare one holding NUL.
        if after.as_ref().is_some_and(|after| after.contains('\0')) {
            return Err(ValidationError::new("after", "must not contain NUL").into());
        }
        Ok(self
            .store()
            .schedules_list(SchedulesList { after, limit })
            .await?)
    }

    /// Deletes a schedule (its jobs stay).
    pub async fn schedule_delete(&self, id: &str) -> Result<()> {
        validate_schedule_id(id)?;
        if self.store().schedule_delete(id.to_owned()).await? {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// Pauses or resumes a schedule. Resuming skips the slots that came
    /// while it was paused (recorded with reason `paused`) and goes on
    /// from now.
    pub async fn schedule_pause(&self, id: &str, paused: bool) -> Result<Schedule> {
        for _ in 0..WRITE_TRIES {
            let old = self.schedule_get(id).await?;
            if old.paused == paused {
                return Ok(old);
            }
            let now = self.now();
            let mut new = old.clone();
            set_paused(&mut new, paused, now);
            new.updated_at = now;
            let write = ScheduleWrite {
                schedule: new.clone(),
                expected_version: Some(old.version),
            };
            if self.store().schedule_write(write).await? {
                return Ok(Schedule {
                    version: old.version + 1,
                    ..new
                });
            }
        }
        Err(busy(id))
    }

    /// Enqueues the schedule's job now, outside its slots (the job's
    /// `schedule.slot` is `null`). Works on paused schedules too; the
    /// overlap policy does not apply.
    pub async fn schedule_trigger(&self, id: &str) -> Result<Job> {
        for _ in 0..WRITE_TRIES {
            let schedule = self.schedule_get(id).await?;
            let mut job = schedule.spec.job.clone();
            job.schedule = Some(ScheduleRef {
                id: id.to_owned(),
                slot: None,
            });
            let firing = Firing {
                id: id.to_owned(),
                expected_version: schedule.version,
                created_at: schedule.created_at,
                next_run_at: schedule.next_run_at,
                last_slot: None,
                skip_before: schedule.skip_before,
                jobs: vec![job],
                skipped: Vec::new(),
            };
            let fired = self.fire(vec![firing]).await?;
            if let Some(job) = fired.into_iter().flatten().flatten().next() {
                return Ok(job);
            }
        }
        Err(busy(id))
    }

    /// The next `count` (1 to [`MAX_PREVIEW`]) slots of a schedule from
    /// now on, by its definition (paused or not).
    pub async fn schedule_preview(&self, id: &str, count: usize) -> Result<Vec<Timestamp>> {
        if !(1..=MAX_PREVIEW).contains(&count) {
            return Err(ValidationError::new(
                "count",
                format!("must be between 1 and {MAX_PREVIEW}, got {count}"),
            )
            .into());
        }
        let schedule = self.schedule_get(id).await?;
        let timing = schedule.spec.validate()?;
        let from = schedule
            .last_slot
            .map_or(self.now(), |last| last.max(self.now()));
        let mut slots = timing.upcoming(from, count + 1);
        slots.retain(|&slot| schedule.last_slot.is_none_or(|last| slot > last));
        slots.truncate(count);
        Ok(slots)
    }

    /// A schedule's latest skipped slots, newest first.
    pub async fn schedule_skips(&self, id: &str, limit: usize) -> Result<Vec<SkippedSlots>> {
        validate_schedule_id(id)?;
        Ok(self
            .store()
            .schedule_skips_list(ScheduleSkipsList {
                id: id.to_owned(),
                limit,
            })
            .await?)
    }

    /// Makes the schedules `source = config` match `file`: each of the
    /// file's is created or updated (and becomes the file's, even if the
    /// API made it), and each the file made before but no longer names is
    /// deleted. Schedules made through the API are left alone.
    pub async fn schedules_reconcile(
        &self,
        file: &BTreeMap<String, ScheduleSpec>,
    ) -> Result<Reconciled> {
        let mut report = Reconciled::default();
        for (id, spec) in file {
            let before = self.store().schedule_get(id.clone()).await?;
            let (after, created) = self
                .schedule_put(id, spec.clone(), ScheduleSource::Config)
                .await
                .map_err(|e| match e {
                    Error::Invalid(e) => {
                        ValidationError::new(format!("schedules.{id}.{}", e.field), e.message)
                            .into()
                    }
                    other => other,
                })?;
            if created {
                report.created.push(id.clone());
            } else if before.is_some_and(|b| b.version != after.version) {
                report.updated.push(id.clone());
            }
        }
        let mut after = None;
        loop {
            let page = self.schedules_list(after.clone(), MAX_LIST).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for schedule in page {
                if schedule.source == ScheduleSource::Config && !file.contains_key(&schedule.id) {
                    self.store().schedule_delete(schedule.id.clone()).await?;
                    report.deleted.push(schedule.id);
                }
            }
        }
        Ok(report)
    }

    /// The firing pass: up to `limit` due schedules, each moved past the
    /// slots that have come (run or skipped by its policies) and their jobs
    /// enqueued; answers how many schedules it read.
    pub async fn schedules_fire_due(&self, limit: usize) -> Result<u64> {
        let now = self.now();
        let due = self
            .store()
            .schedules_due(SchedulesDue { now, limit })
            .await?;
        let read = due.len() as u64;
        let mut firings = Vec::new();
        let mut jobs = 0;
        for due in due {
            let timing = match due.schedule.spec.validate() {
                Ok(timing) => timing,
                Err(error) => {
                    // A row from before a rule changed: it stops, visibly,
                    // rather than stopping the others.
                    tracing::error!(schedule = %due.schedule.id, %error, "stored schedule is no longer valid; it will not fire until it is put again");
                    firings.push(Firing {
                        id: due.schedule.id.clone(),
                        expected_version: due.schedule.version,
                        created_at: due.schedule.created_at,
                        next_run_at: None,
                        last_slot: None,
                        skip_before: None,
                        jobs: Vec::new(),
                        skipped: Vec::new(),
                    });
                    continue;
                }
            };
            let plan = plan::plan(&due.schedule, &timing, due.last_job_state, now);
            if let Some(previous) = plan.cancel {
                if let Err(error) = self.cancel(previous).await {
                    tracing::debug!(%error, "previous run not cancelled");
                }
            }
            jobs += plan.firing.jobs.len();
            firings.push(plan.firing);
            if jobs >= JOBS_PER_CALL {
                self.fire(std::mem::take(&mut firings)).await?;
                jobs = 0;
            }
        }
        if !firings.is_empty() {
            self.fire(firings).await?;
        }
        Ok(read)
    }

    /// Applies firings; answers, per firing, its jobs (`None`: not applied).
    async fn fire(&self, firings: Vec<Firing>) -> Result<Vec<Option<Vec<Job>>>> {
        let skipped: Vec<Vec<SkippedSlots>> = firings.iter().map(|f| f.skipped.clone()).collect();
        let fired = self
            .store()
            .schedules_fire(SchedulesFire {
                firings,
                now: self.now(),
            })
            .await?;
        let mut out = Vec::with_capacity(fired.len());
        for (fired, skipped) in fired.into_iter().zip(skipped) {
            if !fired.applied {
                out.push(None);
                continue;
            }
            self.announce_available(&fired.jobs);
            for job in &fired.jobs {
                self.observer().enqueued(job);
            }
            for skip in &skipped {
                self.observer().slots_skipped(skip.reason, skip.count);
            }
            if fired.duplicates > 0 {
                tracing::warn!(
                    duplicates = fired.duplicates,
                    "slots already taken were not enqueued again"
                );
            }
            out.push(Some(fired.jobs));
        }
        Ok(out)
    }
}

/// Pauses or resumes `schedule` at `now`.
fn set_paused(schedule: &mut Schedule, paused: bool, now: Timestamp) {
    if schedule.paused && !paused {
        schedule.skip_before = Some(now);
    }
    schedule.paused = paused;
}

fn busy(id: &str) -> Error {
    grafter_store::StoreError::Unavailable(format!(
        "schedule {id:?} kept changing while it was being written; try again"
    ))
    .into()
}
