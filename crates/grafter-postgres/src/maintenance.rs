//! The maintenance passes, each a bounded batch that skips rows another node
//! holds (`FOR UPDATE SKIP LOCKED`): scheduling due jobs, expiring jobs past
//! their deadline, rescuing expired leases as failed attempts, and pruning old
//! finished jobs.

use grafter_core::JobState;
use grafter_store::transitions::{self, Failure};
use grafter_store::{JobsPrune, JobsRescue, MaintenanceBatch, Result};

use crate::db::Db;
use crate::error::pg_error;
use crate::row::{job_columns, jobs_from_rows, limit, to_json};

/// The finished states, the only ones pruning deletes.
const FINISHED: [JobState; 4] = [
    JobState::Completed,
    JobState::Dead,
    JobState::Cancelled,
    JobState::Expired,
];

impl Db {
    pub(crate) async fn jobs_schedule(&self, params: &MaintenanceBatch) -> Result<u64> {
        const SQL: &str = "
            UPDATE jobs SET state = 'available'
            WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('scheduled', 'retryable') AND run_at <= $1
                         ORDER BY run_at
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(SQL).await.map_err(pg_error)?;
        let moved = tx
            .execute(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(moved)
    }

    pub(crate) async fn jobs_expire(&self, params: &MaintenanceBatch) -> Result<u64> {
        const SQL: &str = "
            UPDATE jobs SET state = 'expired', finished_at = $1
            WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('scheduled', 'available', 'retryable')
                           AND expires_at <= $1
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)
    }

    pub(crate) async fn jobs_rescue_expired(&self, params: &JobsRescue) -> Result<u64> {
        const EXPIRED: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs
             WHERE state = 'running' AND lease_expires_at <= $1
             ORDER BY lease_expires_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED"
        );
        // One statement writes every rescued job's outcome, computed in Rust by the
        // shared failure rules.
        const RECORD: &str = "
            UPDATE jobs SET state = u.state, run_at = u.run_at, errors = u.errors,
                   finished_at = u.finished_at, lease = NULL, lease_expires_at = NULL
            FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::jsonb[], $5::timestamptz[])
                 AS u(id, state, run_at, errors, finished_at)
            WHERE jobs.id = u.id";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(EXPIRED).await.map_err(pg_error)?;
        let rows = tx
            .query(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        let expired = jobs_from_rows(&rows)?;
        if expired.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(expired.len());
        let mut states = Vec::with_capacity(expired.len());
        let mut run_ats = Vec::with_capacity(expired.len());
        let mut errors = Vec::with_capacity(expired.len());
        let mut finished = Vec::with_capacity(expired.len());
        for job in &expired {
            let next = transitions::after_failure(
                job,
                Failure {
                    error: transitions::rescue_reason(job, params.now),
                    retry: true,
                    retry_at: None,
                    default_backoff: &params.backoff,
                    now: params.now,
                },
            );
            ids.push(job.id.0);
            states.push(next.state.as_str());
            run_ats.push(next.run_at);
            errors.push(to_json(&next.errors)?);
            finished.push(next.finished_at);
        }
        let stmt = tx.prepare_cached(RECORD).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&ids, &states, &run_ats, &errors, &finished])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(expired.len() as u64)
    }

    /// Deletes up to `limit` jobs in the named finished states, oldest finish
    /// first, from the `jobs_finished` index (the literal state list is its
    /// predicate, which is what lets the planner use it). Rows another
    /// transaction holds are skipped, so two pruners never wait on each other.
    pub(crate) async fn jobs_prune(&self, params: &JobsPrune) -> Result<u64> {
        const SQL: &str = "
            DELETE FROM jobs
            WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('completed', 'dead', 'cancelled', 'expired')
                           AND state = ANY($1::text[])
                           AND finished_at < $2
                         ORDER BY finished_at
                         LIMIT $3
                         FOR UPDATE SKIP LOCKED)";
        let states: Vec<&str> = FINISHED
            .into_iter()
            .filter(|s| params.states.contains(s))
            .map(JobState::as_str)
            .collect();
        if states.is_empty() || params.limit == 0 {
            return Ok(0);
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(
                &stmt,
                &[&states, &params.finished_before, &limit(params.limit)],
            )
            .await
            .map_err(pg_error)
    }
}
