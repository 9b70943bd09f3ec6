//! The maintenance passes, each a bounded batch that skips rows another node
//! holds (`FOR UPDATE SKIP LOCKED`): scheduling due jobs, expiring jobs past
//! their deadline, rescuing expired leases as failed attempts, and pruning old
//! finished jobs.

use deadpool_postgres::GenericClient;
use grafter_core::{storable, Job, JobState, Timestamp};
use grafter_store::transitions::{self, Failure, SET_ASIDE};
use grafter_store::{JobsPrune, JobsRescue, MaintenanceBatch, Result, Scheduled, StoreError};
use serde_json::Value;

use crate::db::Db;
use crate::error::pg_error;
use crate::row::{job_columns, job_from_row, limit, to_json};

/// The finished states, the only ones pruning deletes.
const FINISHED: [JobState; 4] = [
    JobState::Completed,
    JobState::Dead,
    JobState::Cancelled,
    JobState::Expired,
];

/// The finished states among those a prune names.
fn finished_states(params: &JobsPrune) -> Vec<&'static str> {
    FINISHED
        .into_iter()
        .filter(|s| params.states.contains(s))
        .map(JobState::as_str)
        .collect()
}

impl Db {
    pub(crate) async fn jobs_schedule(&self, params: &MaintenanceBatch) -> Result<Scheduled> {
        const SQL: &str = "
            UPDATE jobs SET state = 'available'
            WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('scheduled', 'retryable') AND run_at <= $1
                         ORDER BY run_at
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)
            RETURNING queue";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = tx
            .query(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        let queues = rows
            .iter()
            .map(|row| row.try_get(0).map_err(pg_error))
            .collect::<Result<Vec<String>>>()?;
        Ok(Scheduled::of(queues))
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

    /// Ends expired leases as failed attempts, in one statement for the batch.
    /// A job whose row cannot be read, or that the batch cannot write, is set
    /// aside (made `dead` with the reason in its errors) and the others are
    /// rescued: no stored value can stop the rescue of the rest.
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
        let mut client = self.client().await?;
        let mut tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(EXPIRED).await.map_err(pg_error)?;
        let rows = tx
            .query(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        let mut rescued = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in &rows {
            match job_from_row(row) {
                Ok(job) => rescued.push(rescue(&job, params)?),
                Err(error) => unreadable.push((row.try_get(0).map_err(pg_error)?, error)),
            }
        }
        // The batch in one statement; should it fail, one job at a time.
        let batch = tx.savepoint("rescue_batch").await.map_err(pg_error)?;
        match write_rescued(&batch, &rescued).await {
            Ok(()) => batch.commit().await.map_err(pg_error)?,
            Err(_) => {
                batch.rollback().await.map_err(pg_error)?;
                for one in &rescued {
                    let single = tx.savepoint("rescue_one").await.map_err(pg_error)?;
                    match write_rescued(&single, std::slice::from_ref(one)).await {
                        Ok(()) => single.commit().await.map_err(pg_error)?,
                        Err(error) => {
                            single.rollback().await.map_err(pg_error)?;
                            unreadable.push((one.id, error));
                        }
                    }
                }
            }
        }
        for (id, error) in &unreadable {
            tracing::error!(job = id, %error, "cannot rescue a job; setting it aside as dead");
            let aside = tx.savepoint("set_aside").await.map_err(pg_error)?;
            match set_aside(&aside, *id, params.now, error).await {
                Ok(()) => aside.commit().await.map_err(pg_error)?,
                Err(error) => {
                    aside.rollback().await.map_err(pg_error)?;
                    tracing::error!(job = id, %error, "cannot set a job aside either; it is looked at again in an hour");
                    postpone(&tx, *id, params.now).await?;
                }
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(rows.len() as u64)
    }

    /// Deletes up to `limit` jobs in the named finished states, oldest finish
    /// first, from the `jobs_finished` index (the literal state list is its
    /// predicate, which is what lets the planner use it). Rows another
    /// transaction holds are skipped, so two pruners never wait on each other.
    pub(crate) async fn jobs_prunable_count(&self, params: &JobsPrune) -> Result<u64> {
        const SQL: &str = "
            SELECT count(*) FROM jobs
            WHERE state IN ('completed', 'dead', 'cancelled', 'expired')
              AND state = ANY($1::text[])
              AND finished_at < $2
              AND batch_id IS NULL
              AND NOT (has_dependents AND EXISTS (  -- an unfinished job waits for it
                  SELECT 1 FROM job_dependencies AS d JOIN jobs AS w ON w.id = d.job_id
                  WHERE d.depends_on = jobs.id
                    AND w.state NOT IN ('completed', 'dead', 'cancelled', 'expired')))";
        let states = finished_states(params);
        if states.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = client
            .query_one(&stmt, &[&states, &params.finished_before])
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(crate) async fn jobs_prune(&self, params: &JobsPrune) -> Result<u64> {
        const SQL: &str = "
            DELETE FROM jobs
            WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('completed', 'dead', 'cancelled', 'expired')
                           AND state = ANY($1::text[])
                           AND finished_at < $2
                           AND batch_id IS NULL  -- they go with their batch (batches.rs)
                           AND NOT (has_dependents AND EXISTS (  -- an unfinished job waits for it
                               SELECT 1 FROM job_dependencies AS d JOIN jobs AS w ON w.id = d.job_id
                               WHERE d.depends_on = jobs.id
                                 AND w.state NOT IN ('completed', 'dead', 'cancelled', 'expired')))
                         ORDER BY finished_at
                         LIMIT $3
                         FOR UPDATE SKIP LOCKED)";
        let states = finished_states(params);
        if states.is_empty() || params.limit == 0 {
            return Ok(0);
        }
        // The deletions logged for event streams (`events.rs`) outlive their
        // jobs only as long as finished jobs do.
        const DELETIONS: &str = "
            DELETE FROM job_events
            WHERE seq IN (SELECT seq FROM job_events
                          WHERE kind = 'deleted' AND at < $1
                          LIMIT $2)";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let pruned = client
            .execute(
                &stmt,
                &[&states, &params.finished_before, &limit(params.limit)],
            )
            .await
            .map_err(pg_error)?;
        let deletions = client.prepare_cached(DELETIONS).await.map_err(pg_error)?;
        client
            .execute(&deletions, &[&params.finished_before, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        Ok(pruned)
    }
}

/// What a rescued job becomes, computed by the shared failure rules.
struct Rescued {
    id: i64,
    state: &'static str,
    run_at: Timestamp,
    errors: Value,
    finished_at: Option<Timestamp>,
}

fn rescue(job: &Job, params: &JobsRescue) -> Result<Rescued> {
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
    Ok(Rescued {
        id: job.id.0,
        state: next.state.as_str(),
        run_at: next.run_at,
        errors: to_json(&next.errors)?,
        finished_at: next.finished_at,
    })
}

/// Writes rescued jobs' outcomes in one statement.
async fn write_rescued(client: &impl GenericClient, rescued: &[Rescued]) -> Result<()> {
    const RECORD: &str = "
        UPDATE jobs SET state = u.state, run_at = u.run_at, errors = u.errors,
               finished_at = u.finished_at, lease = NULL, lease_expires_at = NULL
        FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::jsonb[], $5::timestamptz[])
             AS u(id, state, run_at, errors, finished_at)
        WHERE jobs.id = u.id";
    if rescued.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rescued.iter().map(|r| r.id).collect();
    let states: Vec<&str> = rescued.iter().map(|r| r.state).collect();
    let run_ats: Vec<Timestamp> = rescued.iter().map(|r| r.run_at).collect();
    let errors: Vec<&Value> = rescued.iter().map(|r| &r.errors).collect();
    let finished: Vec<Option<Timestamp>> = rescued.iter().map(|r| r.finished_at).collect();
    let stmt = client.prepare_cached(RECORD).await.map_err(pg_error)?;
    client
        .execute(&stmt, &[&ids, &states, &run_ats, &errors, &finished])
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// Makes a job that maintenance cannot process `dead`, with why appended to
/// its errors (or as its only error, if its errors are not a list).
/// Moves the lease end of a job that could be neither rescued nor set
/// aside out of the rescue's way (see [`transitions::looked_at_again`]):
/// left as it was, it would come first in every pass and fail it whole.
async fn postpone(client: &impl GenericClient, id: i64, now: Timestamp) -> Result<()> {
    let stmt = client
        .prepare_cached("UPDATE jobs SET lease_expires_at = $2 WHERE id = $1")
        .await
        .map_err(pg_error)?;
    client
        .execute(&stmt, &[&id, &transitions::looked_at_again(now)])
        .await
        .map_err(pg_error)?;
    Ok(())
}

async fn set_aside(
    client: &impl GenericClient,
    id: i64,
    now: Timestamp,
    error: &StoreError,
) -> Result<()> {
    const SQL: &str = "
        UPDATE jobs SET state = 'dead', finished_at = $2, lease = NULL, lease_expires_at = NULL,
               errors = CASE WHEN jsonb_typeof(errors) = 'array'
                             THEN errors || jsonb_build_array($3::jsonb || jsonb_build_object('attempt', attempt))
                             ELSE jsonb_build_array($3::jsonb || jsonb_build_object('attempt', attempt)) END
        WHERE id = $1";
    let entry = serde_json::json!({
        "at": now,
        "error": storable::text(format!("{SET_ASIDE}: {error}")),
    });
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    client
        .execute(&stmt, &[&id, &now, &entry])
        .await
        .map_err(pg_error)?;
    Ok(())
}
