//! Schedules: the rows (written whole under a version check), the due ones
//! (from the `schedules_due` index), and firing them: a batch of firings in
//! one transaction, a few statements for the whole batch. The schedules'
//! rows are locked in id order first, so two firers (a leader and one that
//! just lost the leadership) never deadlock; the version check then lets
//! only one apply each firing, and the unique index on the jobs' schedule id
//! and slot refuses a second job for a slot whatever happens.

use std::collections::{HashMap, HashSet};

use grafter_core::{JobId, JobState, NewJob, Schedule, ScheduleSpec, SkippedSlots, Timestamp};
use grafter_store::{
    DueSchedule, Fired, Result, ScheduleSkipsList, ScheduleWrite, SchedulesDue, SchedulesFire,
    SchedulesList, StoreError, SKIPS_KEPT,
};
use tokio_postgres::types::Json;
use tokio_postgres::Row;

use crate::db::Db;
use crate::error::pg_error;
use crate::inserts::insert_unkeyed;
use crate::row::limit;

/// The columns every schedule query selects, in the order [`schedule_from_row`] reads them.
macro_rules! schedule_columns {
    () => {
        "schedules.id, schedules.spec, schedules.paused, schedules.source, \
         schedules.next_run_at, schedules.last_slot, schedules.last_run_at, \
         schedules.last_job_id, schedules.skip_before, schedules.version, \
         schedules.created_at, schedules.updated_at"
    };
}

fn schedule_from_row(row: &Row) -> Result<Schedule> {
    let Json(spec): Json<ScheduleSpec> = row.try_get(1).map_err(pg_error)?;
    let source: String = row.try_get(3).map_err(pg_error)?;
    Ok(Schedule {
        id: row.try_get(0).map_err(pg_error)?,
        spec,
        paused: row.try_get(2).map_err(pg_error)?,
        source: source
            .parse()
            .map_err(|e: String| StoreError::Backend(format!("reading a schedule row: {e}")))?,
        next_run_at: row.try_get(4).map_err(pg_error)?,
        last_slot: row.try_get(5).map_err(pg_error)?,
        last_run_at: row.try_get(6).map_err(pg_error)?,
        last_job_id: row
            .try_get::<_, Option<i64>>(7)
            .map_err(pg_error)?
            .map(JobId),
        skip_before: row.try_get(8).map_err(pg_error)?,
        version: row.try_get(9).map_err(pg_error)?,
        created_at: row.try_get(10).map_err(pg_error)?,
        updated_at: row.try_get(11).map_err(pg_error)?,
    })
}

impl Db {
    pub(crate) async fn schedule_write(&self, params: &ScheduleWrite) -> Result<bool> {
        const INSERT: &str = "
            INSERT INTO schedules (id, spec, paused, source, next_run_at, last_slot, last_run_at,
                last_job_id, skip_before, version, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            ON CONFLICT (id) DO NOTHING";
        const UPDATE: &str = "
            UPDATE schedules SET spec = $2, paused = $3, source = $4, next_run_at = $5,
                last_slot = $6, last_run_at = $7, last_job_id = $8, skip_before = $9,
                version = $10::bigint, created_at = $11, updated_at = $12
            WHERE id = $1 AND version = $10::bigint - 1";
        let s = &params.schedule;
        let client = self.client().await?;
        let sql = if params.expected_version.is_some() {
            UPDATE
        } else {
            INSERT
        };
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        let written = client
            .execute(
                &stmt,
                &[
                    &s.id,
                    &Json(&s.spec),
                    &s.paused,
                    &s.source.as_str(),
                    &s.next_run_at,
                    &s.last_slot,
                    &s.last_run_at,
                    &s.last_job_id.map(|id| id.0),
                    &s.skip_before,
                    &(params.expected_version.unwrap_or(0) + 1),
                    &s.created_at,
                    &s.updated_at,
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(written == 1)
    }

    pub(crate) async fn schedule_get(&self, id: &str) -> Result<Option<Schedule>> {
        const SQL: &str = concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE id = $1"
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = client.query_opt(&stmt, &[&id]).await.map_err(pg_error)?;
        row.as_ref().map(schedule_from_row).transpose()
    }

    pub(crate) async fn schedules_list(&self, params: &SchedulesList) -> Result<Vec<Schedule>> {
        const SQL: &str = concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2"
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&params.after, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        rows.iter().map(schedule_from_row).collect()
    }

    pub(crate) async fn schedule_delete(&self, id: &str) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("DELETE FROM schedule_skips WHERE schedule_id = $1", &[&id])
            .await
            .map_err(pg_error)?;
        let deleted = tx
            .execute("DELETE FROM schedules WHERE id = $1", &[&id])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(deleted == 1)
    }

    pub(crate) async fn schedules_due(&self, params: &SchedulesDue) -> Result<Vec<DueSchedule>> {
        const SQL: &str = concat!(
            "SELECT ",
            schedule_columns!(),
            ", jobs.state FROM schedules LEFT JOIN jobs ON jobs.id = schedules.last_job_id
             WHERE NOT schedules.paused AND schedules.next_run_at IS NOT NULL
               AND schedules.next_run_at <= $1
             ORDER BY schedules.next_run_at LIMIT $2"
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let state: Option<String> = row.try_get(12).map_err(pg_error)?;
                Ok(DueSchedule {
                    schedule: schedule_from_row(row)?,
                    last_job_state: state
                        .map(|s| s.parse::<JobState>())
                        .transpose()
                        .map_err(|e| StoreError::Backend(format!("reading a job state: {e}")))?,
                })
            })
            .collect()
    }

    pub(crate) async fn schedules_fire(&self, params: &SchedulesFire) -> Result<Vec<Fired>> {
        const LOCK: &str =
            "SELECT id FROM schedules WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE";
        const MOVE: &str = "
            UPDATE schedules AS s SET next_run_at = f.next_run_at,
                last_slot = coalesce(f.last_slot, s.last_slot), skip_before = f.skip_before,
                version = s.version + 1, updated_at = $6
            FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[],
                        $5::timestamptz[], $7::timestamptz[])
                 AS f(id, expected, next_run_at, last_slot, skip_before, created_at)
            WHERE s.id = f.id AND s.version = f.expected AND s.created_at = f.created_at
            RETURNING s.id";
        const TAKEN: &str = "
            SELECT jobs.schedule_id, jobs.schedule_slot FROM jobs
            JOIN unnest($1::text[], $2::timestamptz[]) AS f(id, slot)
              ON jobs.schedule_id = f.id AND jobs.schedule_slot = f.slot
            WHERE jobs.schedule_slot IS NOT NULL";
        const LAST_RUN: &str = "
            UPDATE schedules AS s SET last_job_id = f.job_id, last_run_at = $3
            FROM unnest($1::text[], $2::bigint[]) AS f(id, job_id) WHERE s.id = f.id";
        let firings = &params.firings;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let ids: Vec<&str> = firings.iter().map(|f| f.id.as_str()).collect();
        tx.query(LOCK, &[&ids]).await.map_err(pg_error)?;
        let expected: Vec<i64> = firings.iter().map(|f| f.expected_version).collect();
        let next: Vec<Option<Timestamp>> = firings.iter().map(|f| f.next_run_at).collect();
        let last: Vec<Option<Timestamp>> = firings.iter().map(|f| f.last_slot).collect();
        let skip_before: Vec<Option<Timestamp>> = firings.iter().map(|f| f.skip_before).collect();
        let created: Vec<Timestamp> = firings.iter().map(|f| f.created_at).collect();
        let stmt = tx.prepare_cached(MOVE).await.map_err(pg_error)?;
        let moved: HashSet<String> = tx
            .query(
                &stmt,
                &[
                    &ids,
                    &expected,
                    &next,
                    &last,
                    &skip_before,
                    &params.now,
                    &created,
                ],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(pg_error)?;

        // The applied firings' jobs, less those whose slot a job holds.
        let wanted: Vec<(usize, &NewJob)> = firings
            .iter()
            .enumerate()
            .filter(|(_, f)| moved.contains(&f.id))
            .flat_map(|(i, f)| f.jobs.iter().map(move |job| (i, job)))
            .collect();
        let slotted: Vec<(&str, Timestamp)> = wanted
            .iter()
            .filter_map(|(_, job)| job.schedule.as_ref())
            .filter_map(|s| s.slot.map(|slot| (s.id.as_str(), slot)))
            .collect();
        let taken: HashSet<(String, Timestamp)> = if slotted.is_empty() {
            HashSet::new()
        } else {
            let (slot_ids, slots): (Vec<&str>, Vec<Timestamp>) = slotted.into_iter().unzip();
            let stmt = tx.prepare_cached(TAKEN).await.map_err(pg_error)?;
            tx.query(&stmt, &[&slot_ids, &slots])
                .await
                .map_err(pg_error)?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(pg_error)?
        };
        let mut out: Vec<Fired> = firings
            .iter()
            .map(|f| Fired {
                applied: moved.contains(&f.id),
                ..Fired::default()
            })
            .collect();
        let mut inserting: Vec<(usize, NewJob)> = Vec::with_capacity(wanted.len());
        for (i, job) in wanted {
            let slot = job
                .schedule
                .as_ref()
                .and_then(|s| Some((s.id.clone(), s.slot?)));
            if slot.is_some_and(|slot| taken.contains(&slot)) {
                out[i].duplicates += 1;
            } else {
                inserting.push((i, job.clone()));
            }
        }
        if !inserting.is_empty() {
            let jobs: Vec<NewJob> = inserting.iter().map(|(_, job)| job.clone()).collect();
            let inserted = insert_unkeyed(&tx, &jobs, &vec![params.now; jobs.len()], None).await?;
            let mut last_jobs: HashMap<&str, i64> = HashMap::new();
            for ((i, _), job) in inserting.iter().zip(inserted) {
                last_jobs.insert(firings[*i].id.as_str(), job.id.0);
                out[*i].jobs.push(job);
            }
            let (last_ids, job_ids): (Vec<&str>, Vec<i64>) = last_jobs.into_iter().unzip();
            let stmt = tx.prepare_cached(LAST_RUN).await.map_err(pg_error)?;
            tx.execute(&stmt, &[&last_ids, &job_ids, &params.now])
                .await
                .map_err(pg_error)?;
        }
        let skips: Vec<(&str, &SkippedSlots)> = firings
            .iter()
            .filter(|f| moved.contains(&f.id))
            .flat_map(|f| f.skipped.iter().map(move |s| (f.id.as_str(), s)))
            .collect();
        record_skips(&tx, &skips).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(out)
    }

    pub(crate) async fn schedule_skips_list(
        &self,
        params: &ScheduleSkipsList,
    ) -> Result<Vec<SkippedSlots>> {
        const SQL: &str = "
            SELECT first_slot, last_slot, count, reason, recorded_at FROM schedule_skips
            WHERE schedule_id = $1 ORDER BY id DESC LIMIT $2";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&params.id, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let reason: String = row.try_get(3).map_err(pg_error)?;
                Ok(SkippedSlots {
                    first_slot: row.try_get(0).map_err(pg_error)?,
                    last_slot: row.try_get(1).map_err(pg_error)?,
                    count: u64::try_from(row.try_get::<_, i64>(2).map_err(pg_error)?).unwrap_or(0),
                    reason: reason.parse().map_err(|e: String| {
                        StoreError::Backend(format!("reading a skip record: {e}"))
                    })?,
                    recorded_at: row.try_get(4).map_err(pg_error)?,
                })
            })
            .collect()
    }
}

/// Inserts skip records, then trims each schedule that got some to its
/// newest [`SKIPS_KEPT`].
async fn record_skips(
    tx: &deadpool_postgres::Transaction<'_>,
    skips: &[(&str, &SkippedSlots)],
) -> Result<()> {
    const INSERT: &str = "
        INSERT INTO schedule_skips (schedule_id, first_slot, last_slot, count, reason, recorded_at)
        SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
                             $5::text[], $6::timestamptz[])";
    const TRIM: &str = "
        DELETE FROM schedule_skips AS k USING unnest($1::text[]) AS f(id)
        WHERE k.schedule_id = f.id AND k.id <= (
            SELECT id FROM schedule_skips WHERE schedule_id = f.id
            ORDER BY id DESC OFFSET $2 LIMIT 1)";
    if skips.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = skips.iter().map(|(id, _)| *id).collect();
    let firsts: Vec<Timestamp> = skips.iter().map(|(_, s)| s.first_slot).collect();
    let lasts: Vec<Timestamp> = skips.iter().map(|(_, s)| s.last_slot).collect();
    let counts: Vec<i64> = skips
        .iter()
        .map(|(_, s)| i64::try_from(s.count).unwrap_or(i64::MAX))
        .collect();
    let reasons: Vec<&str> = skips.iter().map(|(_, s)| s.reason.as_str()).collect();
    let recorded: Vec<Timestamp> = skips.iter().map(|(_, s)| s.recorded_at).collect();
    let stmt = tx.prepare_cached(INSERT).await.map_err(pg_error)?;
    tx.execute(
        &stmt,
        &[&ids, &firsts, &lasts, &counts, &reasons, &recorded],
    )
    .await
    .map_err(pg_error)?;
    let mut distinct = ids;
    distinct.sort_unstable();
    distinct.dedup();
    let stmt = tx.prepare_cached(TRIM).await.map_err(pg_error)?;
    tx.execute(&stmt, &[&distinct, &limit(SKIPS_KEPT)])
        .await
        .map_err(pg_error)?;
    Ok(())
}
