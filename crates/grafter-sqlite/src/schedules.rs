//! Schedules: the rows (written whole under a version check), the due ones
//! (from the `schedules_due` index), and firing them: each firing moves its
//! schedule on and inserts its jobs in the writer's transaction, a slot
//! taken at most once (`jobs_schedule_slot`). Reads run on a read
//! connection, changes on the writer thread.

use grafter_core::{JobState, NewJob, Schedule, ScheduleSpec, SkippedSlots};
use grafter_store::{
    DueSchedule, Fired, JobsInsert, Result, ScheduleSkipsList, ScheduleWrite, SchedulesDue,
    SchedulesFire, SchedulesList, StoreError, SKIPS_KEPT,
};
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql};

use crate::error::backend;
use crate::inserts;
use crate::row::{micros, timestamp, to_json};

/// The columns every schedule query selects, in the order [`schedule_from_row`] reads them.
const SCHEDULE_COLUMNS: &str = "schedules.id, schedules.spec, schedules.paused, \
    schedules.source, schedules.next_run_at, schedules.last_slot, schedules.last_run_at, \
    schedules.last_job_id, schedules.skip_before, schedules.version, schedules.created_at, \
    schedules.updated_at";

fn conversion(column: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
}

fn schedule_from_row(row: &Row<'_>) -> rusqlite::Result<Schedule> {
    let spec: String = row.get(1)?;
    let spec: ScheduleSpec = serde_json::from_str(&spec).map_err(|e| conversion(1, e))?;
    let source: String = row.get(3)?;
    let opt_time = |i: usize| row.get::<_, Option<i64>>(i).map(|t| t.map(timestamp));
    Ok(Schedule {
        id: row.get(0)?,
        spec,
        paused: row.get(2)?,
        source: source
            .parse()
            .map_err(|e: String| conversion(3, std::io::Error::other(e)))?,
        next_run_at: opt_time(4)?,
        last_slot: opt_time(5)?,
        last_run_at: opt_time(6)?,
        last_job_id: row.get::<_, Option<i64>>(7)?.map(grafter_core::JobId),
        skip_before: opt_time(8)?,
        version: row.get(9)?,
        created_at: timestamp(row.get(10)?),
        updated_at: timestamp(row.get(11)?),
    })
}

pub fn schedule_write(conn: &Connection, params: &ScheduleWrite) -> Result<bool> {
    let s = &params.schedule;
    let spec = to_json(&s.spec)?;
    let (next_run_at, last_slot, last_run_at) = (
        s.next_run_at.map(micros),
        s.last_slot.map(micros),
        s.last_run_at.map(micros),
    );
    let (last_job_id, skip_before) = (s.last_job_id.map(|id| id.0), s.skip_before.map(micros));
    let version = params.expected_version.unwrap_or(0) + 1;
    let (created_at, updated_at) = (micros(s.created_at), micros(s.updated_at));
    let values: [&dyn ToSql; 12] = [
        &s.id,
        &spec,
        &s.paused,
        &s.source.as_str(),
        &next_run_at,
        &last_slot,
        &last_run_at,
        &last_job_id,
        &skip_before,
        &version,
        &created_at,
        &updated_at,
    ];
    let written = match &params.expected_version {
        None => conn
            .prepare_cached(
                "INSERT INTO schedules (id, spec, paused, source, next_run_at, last_slot,
                    last_run_at, last_job_id, skip_before, version, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut stmt| stmt.execute(&values[..])),
        Some(expected) => conn
            .prepare_cached(
                "UPDATE schedules SET spec = ?2, paused = ?3, source = ?4, next_run_at = ?5,
                    last_slot = ?6, last_run_at = ?7, last_job_id = ?8, skip_before = ?9,
                    version = ?10, created_at = ?11, updated_at = ?12
                 WHERE id = ?1 AND version = ?13",
            )
            .and_then(|mut stmt| {
                let mut with_version = values.to_vec();
                with_version.push(expected);
                stmt.execute(&with_version[..])
            }),
    }
    .map_err(backend)?;
    Ok(written == 1)
}

pub fn schedule_get(conn: &Connection, id: &str) -> Result<Option<Schedule>> {
    conn.prepare_cached(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([id], schedule_from_row).optional())
    .map_err(backend)
}

pub fn schedules_list(conn: &Connection, params: &SchedulesList) -> Result<Vec<Schedule>> {
    let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
    conn.prepare_cached(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2"
    ))
    .and_then(|mut stmt| {
        stmt.query_map(params![params.after, limit], schedule_from_row)?
            .collect()
    })
    .map_err(backend)
}

pub fn schedule_delete(conn: &Connection, id: &str) -> Result<bool> {
    conn.prepare_cached("DELETE FROM schedule_skips WHERE schedule_id = ?1")
        .and_then(|mut stmt| stmt.execute([id]))
        .map_err(backend)?;
    let deleted = conn
        .prepare_cached("DELETE FROM schedules WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([id]))
        .map_err(backend)?;
    Ok(deleted == 1)
}

pub fn schedules_due(conn: &Connection, params: &SchedulesDue) -> Result<Vec<DueSchedule>> {
    let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
    conn.prepare_cached(&format!(
        "SELECT {SCHEDULE_COLUMNS}, jobs.state
         FROM schedules INDEXED BY schedules_due
         LEFT JOIN jobs ON jobs.id = schedules.last_job_id
         WHERE schedules.paused = 0 AND schedules.next_run_at IS NOT NULL
           AND schedules.next_run_at <= ?1
         ORDER BY schedules.next_run_at LIMIT ?2"
    ))
    .and_then(|mut stmt| {
        stmt.query_map(params![micros(params.now), limit], |row| {
            let state: Option<String> = row.get(12)?;
            Ok(DueSchedule {
                schedule: schedule_from_row(row)?,
                last_job_state: state
                    .map(|s| s.parse::<JobState>())
                    .transpose()
                    .map_err(|e| conversion(12, e))?,
            })
        })?
        .collect()
    })
    .map_err(backend)
}

pub fn schedules_fire(conn: &Connection, params: &SchedulesFire) -> Result<Vec<Fired>> {
    let now = micros(params.now);
    let mut out = Vec::with_capacity(params.firings.len());
    for firing in &params.firings {
        let moved = conn
            .prepare_cached(
                "UPDATE schedules SET next_run_at = ?3, last_slot = coalesce(?4, last_slot),
                    skip_before = ?5, version = version + 1, updated_at = ?6
                 WHERE id = ?1 AND version = ?2 AND created_at = ?7",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    firing.id,
                    firing.expected_version,
                    firing.next_run_at.map(micros),
                    firing.last_slot.map(micros),
                    firing.skip_before.map(micros),
                    now,
                    micros(firing.created_at),
                ])
            })
            .map_err(backend)?;
        if moved == 0 {
            out.push(Fired::default());
            continue;
        }
        let mut fired = Fired {
            applied: true,
            ..Fired::default()
        };
        for job in &firing.jobs {
            if slot_taken(conn, job)? {
                fired.duplicates += 1;
                continue;
            }
            let insert = JobsInsert {
                jobs: vec![job.clone()],
                now: params.now,
            };
            fired.jobs.extend(
                inserts::jobs_insert_many(conn, &insert)?
                    .into_iter()
                    .map(|i| i.job),
            );
        }
        if let Some(last) = fired.jobs.last() {
            conn.prepare_cached(
                "UPDATE schedules SET last_job_id = ?2, last_run_at = ?3 WHERE id = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![firing.id, last.id.0, now]))
            .map_err(backend)?;
        }
        record_skips(conn, &firing.id, &firing.skipped)?;
        out.push(fired);
    }
    Ok(out)
}

/// Whether a stored job already holds `job`'s slot. The writer thread is
/// the only writer, so nothing can take it between this and the insert;
/// the unique index would refuse it anyway.
fn slot_taken(conn: &Connection, job: &NewJob) -> Result<bool> {
    let Some((id, Some(slot))) = job.schedule.as_ref().map(|s| (&s.id, s.slot)) else {
        return Ok(false);
    };
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_schedule_slot
                        WHERE schedule_id = ?1 AND schedule_slot = ?2 AND schedule_slot IS NOT NULL)",
    )
    .and_then(|mut stmt| stmt.query_row(params![id, micros(slot)], |row| row.get(0)))
    .map_err(backend)
}

fn record_skips(conn: &Connection, id: &str, skipped: &[SkippedSlots]) -> Result<()> {
    if skipped.is_empty() {
        return Ok(());
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO schedule_skips (schedule_id, first_slot, last_slot, count, reason,
                recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    for skip in skipped {
        let count = i64::try_from(skip.count)
            .map_err(|_| StoreError::Invalid("skip count out of range".into()))?;
        insert
            .execute(params![
                id,
                micros(skip.first_slot),
                micros(skip.last_slot),
                count,
                skip.reason.as_str(),
                micros(skip.recorded_at),
            ])
            .map_err(backend)?;
    }
    let kept = i64::try_from(SKIPS_KEPT).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "DELETE FROM schedule_skips WHERE schedule_id = ?1 AND id <= (
            SELECT id FROM schedule_skips WHERE schedule_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![id, kept]))
    .map_err(backend)?;
    Ok(())
}

pub fn schedule_skips_list(
    conn: &Connection,
    params: &ScheduleSkipsList,
) -> Result<Vec<SkippedSlots>> {
    let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "SELECT first_slot, last_slot, count, reason, recorded_at FROM schedule_skips
         WHERE schedule_id = ?1 ORDER BY id DESC LIMIT ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![params.id, limit], |row| {
            let reason: String = row.get(3)?;
            Ok(SkippedSlots {
                first_slot: timestamp(row.get(0)?),
                last_slot: timestamp(row.get(1)?),
                count: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                reason: reason
                    .parse()
                    .map_err(|e: String| conversion(3, std::io::Error::other(e)))?,
                recorded_at: timestamp(row.get(4)?),
            })
        })?
        .collect()
    })
    .map_err(backend)
}
