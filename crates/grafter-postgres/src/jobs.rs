//! One job by id: reading it, and the changes made to it by hand (cancel,
//! retry, reschedule, delete). The read-modify-write ones lock the row first
//! (`job_lock`); the bulk changes in `browse.rs` use the same lock and rules.

use deadpool_postgres::GenericClient;
use grafter_core::{Job, JobId, JobState, Timestamp};
use grafter_store::{JobCancel, JobReschedule, JobRetry, Result, StoreError};
use serde_json::Value;

use crate::db::Db;
use crate::error::{is_unique_violation, pg_error};
use crate::inserts::waiting_state;
use crate::row::{args_bytes, job_columns, job_from_row, AFTER_JOB_COLUMNS};

pub(crate) fn invalid(job: &Job, message: &str) -> StoreError {
    StoreError::InvalidState {
        id: job.id,
        state: job.state,
        message: message.to_owned(),
    }
}

pub(crate) async fn job_get_on(client: &impl GenericClient, id: JobId) -> Result<Option<Job>> {
    const SQL: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let row = client.query_opt(&stmt, &[&id.0]).await.map_err(pg_error)?;
    row.as_ref().map(job_from_row).transpose()
}

/// Locks a job row for a read-modify-write and returns it with its lease.
pub(crate) async fn job_lock(
    client: &impl GenericClient,
    id: JobId,
) -> Result<(Job, Option<String>)> {
    const SQL: &str = concat!(
        "SELECT ",
        job_columns!(),
        ", jobs.lease FROM jobs WHERE id = $1 FOR UPDATE"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let row = client
        .query_opt(&stmt, &[&id.0])
        .await
        .map_err(pg_error)?
        .ok_or(StoreError::NotFound(id))?;
    let lease = row.try_get(AFTER_JOB_COLUMNS).map_err(pg_error)?;
    Ok((job_from_row(&row)?, lease))
}

impl Db {
    pub(crate) async fn job_get(&self, id: JobId) -> Result<Option<Job>> {
        job_get_on(&self.client().await?, id).await
    }

    pub(crate) async fn job_cancel(&self, params: &JobCancel) -> Result<Job> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (job, _) = job_lock(&tx, params.id).await?;
        let job = cancel_locked(&tx, &job, params.now).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    /// A manual retry: the job is available now.
    pub(crate) async fn job_retry(&self, params: &JobRetry) -> Result<Job> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (job, _) = job_lock(&tx, params.id).await?;
        let job = requeue(&tx, &job, params.now, params.now, params.args.as_ref()).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    pub(crate) async fn job_reschedule(&self, params: &JobReschedule) -> Result<Job> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (job, _) = job_lock(&tx, params.id).await?;
        let job = requeue(&tx, &job, params.run_at, params.now, None).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    pub(crate) async fn job_delete(&self, id: JobId) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM jobs WHERE id = $1")
            .await
            .map_err(pg_error)?;
        let deleted = client.execute(&stmt, &[&id.0]).await.map_err(pg_error)?;
        if deleted == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }
}

/// Puts a locked job back in line at `run_at` (a running, pending or
/// completed one is refused), giving it one more attempt if it has none left,
/// with new `args` if given, and answers it as stored.
pub(crate) async fn requeue(
    client: &impl GenericClient,
    job: &Job,
    run_at: Timestamp,
    now: Timestamp,
    args: Option<&Value>,
) -> Result<Job> {
    const SQL: &str = "UPDATE jobs SET state = $2, run_at = $3, finished_at = NULL,
                cancel_requested = false, max_attempts = greatest(max_attempts, attempt + 1),
                args = coalesce($4, args), args_bytes = coalesce($5, args_bytes),
                expires_at = CASE WHEN $6 THEN NULL ELSE expires_at END
         WHERE id = $1";
    if job.state == JobState::Running {
        return Err(invalid(
            job,
            "a running job cannot be retried or rescheduled; cancel it first",
        ));
    }
    if job.state == JobState::Pending {
        return Err(invalid(
            job,
            "a pending job runs when its dependencies finish; cancel it first",
        ));
    }
    // Its result stands, and a batch it is in may have fired on_success.
    if job.state == JobState::Completed {
        return Err(invalid(
            job,
            "completed jobs are not retried or rescheduled; enqueue a new job",
        ));
    }
    let state = waiting_state(run_at, now);
    // The deadline was for the run that did not happen; the expirer would end
    // the one asked for by hand at once.
    let deadline_passed =
        job.state == JobState::Expired || job.expires_at.is_some_and(|at| at <= run_at.max(now));
    let size = args.map(args_bytes);
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    client
        .execute(
            &stmt,
            &[
                &job.id.0,
                &state.as_str(),
                &run_at,
                &args,
                &size,
                &deadline_passed,
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                invalid(job, "another unfinished job holds its unique_key")
            } else {
                pg_error(e)
            }
        })?;
    // Read again rather than take the row from RETURNING: a dependent may
    // have gone back to pending in a trigger after it.
    job_get_on(client, job.id)
        .await?
        .ok_or(StoreError::NotFound(job.id))
}

/// Cancels a locked job: at once if it is waiting, by request if it is running
/// (its worker learns of it from its next heartbeat or ack answer and stops).
pub(crate) async fn cancel_locked(
    client: &impl GenericClient,
    job: &Job,
    now: Timestamp,
) -> Result<Job> {
    const REQUEST: &str = concat!(
        "UPDATE jobs SET cancel_requested = true WHERE id = $1 RETURNING ",
        job_columns!()
    );
    const CANCEL: &str = concat!(
        "UPDATE jobs SET state = 'cancelled', finished_at = $2 WHERE id = $1 RETURNING ",
        job_columns!()
    );
    if job.state.is_finished() {
        return Err(invalid(job, "only unfinished jobs can be cancelled"));
    }
    let row = if job.state == JobState::Running {
        let stmt = client.prepare_cached(REQUEST).await.map_err(pg_error)?;
        client.query_one(&stmt, &[&job.id.0]).await
    } else {
        let stmt = client.prepare_cached(CANCEL).await.map_err(pg_error)?;
        client.query_one(&stmt, &[&job.id.0, &now]).await
    }
    .map_err(pg_error)?;
    job_from_row(&row)
}
