//! Job dependencies (docs/dependencies.md): linking new jobs to their
//! upstreams at insert, and reading a job's upstreams. Releasing and
//! cancelling dependents is the trigger's work
//! (`migrations/0018_dependencies.sql`).

use grafter_core::dependency::{self, DependencyFailure, Resolved};
use grafter_core::{Job, JobId, NewJob, Timestamp};
use grafter_store::{Inserted, Result, StoreError};

use crate::conn::Conn;
use crate::error::pg_error;
use crate::row::{job_columns, job_from_row, jobs_from_rows};

/// Links the jobs just inserted (`inserted`, in the order of `jobs`) to
/// their upstreams, upstreams first, so each dependent starts `pending`,
/// due, or `cancelled` by what its upstreams are now; replaces each
/// dependent's entry with its row after linking. Must run in the inserting
/// transaction: an id that names no job is refused and it rolls back.
///
/// The upstream's row is locked (by the write of `has_dependents`) before
/// its state is read, so an upstream finishing meanwhile on another
/// connection either is seen finished here or finds the edge and counts.
pub(crate) async fn link(
    client: &impl Conn,
    jobs: &[NewJob],
    inserted: &mut [Inserted],
    now: Timestamp,
) -> Result<()> {
    const MARK: &str = "UPDATE jobs SET has_dependents = true WHERE id = $1 RETURNING id";
    const EDGE: &str = "INSERT INTO job_dependencies (depends_on, job_id) VALUES ($1, $2)
                        ON CONFLICT DO NOTHING";
    const SETTLE: &str = concat!(
        "UPDATE jobs SET
            deps_left = u.unfinished,
            on_dependency_failure = $2,
            state = CASE WHEN u.failed > 0 AND $2::text IS NULL THEN 'cancelled'
                         WHEN u.unfinished > 0 THEN 'pending'
                         ELSE jobs.state END,
            finished_at = CASE WHEN u.failed > 0 AND $2::text IS NULL THEN $3
                               ELSE jobs.finished_at END
         FROM (SELECT
                 (count(*) FILTER (WHERE j.state NOT IN ('completed', 'dead', 'cancelled', 'expired')))::integer
                     AS unfinished,
                 count(*) FILTER (WHERE j.state IN ('dead', 'cancelled', 'expired')) AS failed
               FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.depends_on
               WHERE d.job_id = $1) AS u
         WHERE jobs.id = $1
         RETURNING ",
        job_columns!()
    );
    let plan = dependency::plan(jobs).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if plan.is_empty() {
        return Ok(());
    }
    let mark = client.statement(MARK).await?;
    let edge = client.statement(EDGE).await?;
    let settle = client.statement(SETTLE).await?;
    for i in plan.order {
        let dependent = inserted[i].job.id;
        for (k, upstream) in plan.upstreams[i].iter().enumerate() {
            let id = match *upstream {
                Resolved::Job(id) => id,
                Resolved::Index(j) => inserted[j].job.id,
            };
            if client.row_opt(&mark, &[&id.0]).await?.is_none() {
                return Err(StoreError::UnknownDependency {
                    field: format!("jobs[{i}].depends_on[{k}]"),
                    id,
                });
            }
            client.rows(&edge, &[&id.0, &dependent.0]).await?;
        }
        let policy = jobs[i]
            .on_dependency_failure
            .filter(|p| *p == DependencyFailure::Run)
            .map(|p| p.as_str());
        let row = client
            .row_opt(&settle, &[&dependent.0, &policy, &now])
            .await?
            .ok_or_else(|| StoreError::Backend(format!("job {dependent} vanished while linked")))?;
        inserted[i].job = job_from_row(&row)?;
    }
    Ok(())
}

/// The jobs `id` depends on, by id; `None` if there is no job `id`.
pub(crate) async fn dependencies_of(
    client: &impl deadpool_postgres::GenericClient,
    id: JobId,
) -> Result<Option<Vec<Job>>> {
    const EXISTS: &str = "SELECT id FROM jobs WHERE id = $1";
    const SQL: &str = concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs
         WHERE id IN (SELECT depends_on FROM job_dependencies WHERE job_id = $1)
         ORDER BY id"
    );
    let stmt = client.prepare_cached(EXISTS).await.map_err(pg_error)?;
    if client
        .query_opt(&stmt, &[&id.0])
        .await
        .map_err(pg_error)?
        .is_none()
    {
        return Ok(None);
    }
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let rows = client.query(&stmt, &[&id.0]).await.map_err(pg_error)?;
    jobs_from_rows(&rows).map(Some)
}
