//! Job dependencies (docs/dependencies.md): linking new jobs to their
//! upstream jobs and batches at insert, and reading what a job waits for.
//! Releasing and cancelling dependents is the triggers' work
//! (`migrations/0018_dependencies.sql`, `0021_batch_and_sql_dependencies.sql`).

use std::collections::HashSet;

use grafter_core::dependency::{self, DependencyFailure, Resolved};
use grafter_core::{JobId, NewJob, Timestamp};
use grafter_store::{Dependencies, Inserted, Result, StoreError};

use crate::batch_row::{batch_columns, batch_from_row};
use crate::conn::Conn;
use crate::error::pg_error;
use crate::row::{job_columns, job_from_row, jobs_from_rows};

/// Links the jobs just inserted (`inserted`, in the order of `jobs`) to
/// their upstream jobs and batches, upstreams first, so each dependent
/// starts `pending`, due, or `cancelled` by what its upstreams are now;
/// replaces each dependent's entry with its row after linking. Must run in
/// the inserting transaction: an id that names no job or batch, an open
/// batch or the job's own batch is refused and it rolls back.
///
/// The upstream's row (a job's or a batch's) is locked (by the write of
/// `has_dependents`) before its state is read, so an upstream finishing
/// meanwhile on another connection either is seen finished here or finds
/// the edge and counts. Every upstream job is locked before any batch, as a
/// job's move locks the job and then its batch, and each kind in id order,
/// so two requests naming the same upstreams in other orders wait for each
/// other instead of deadlocking.
pub(crate) async fn link(
    client: &impl Conn,
    jobs: &[NewJob],
    inserted: &mut [Inserted],
    now: Timestamp,
) -> Result<()> {
    const MARK: &str = "UPDATE jobs SET has_dependents = true WHERE id = $1 RETURNING id";
    const EDGE: &str = "INSERT INTO job_dependencies (depends_on, job_id) VALUES ($1, $2)
                        ON CONFLICT DO NOTHING";
    const MARK_BATCH: &str =
        "UPDATE batches SET has_dependents = true WHERE id = $1 RETURNING open";
    const BATCH_EDGE: &str = "INSERT INTO batch_dependencies (batch_id, job_id) VALUES ($1, $2)
                              ON CONFLICT DO NOTHING";
    // A batch is finished once `finished_at` is set; it failed the
    // dependent unless it succeeded.
    const SETTLE: &str = concat!(
        "UPDATE jobs SET
            deps_left = u.unfinished,
            on_dependency_failure = $2,
            state = CASE WHEN u.failed > 0 AND $2::text IS NULL THEN 'cancelled'
                         WHEN u.unfinished > 0 THEN 'pending'
                         ELSE jobs.state END,
            finished_at = CASE WHEN u.failed > 0 AND $2::text IS NULL THEN $3
                               ELSE jobs.finished_at END
         FROM (SELECT coalesce(sum(unfinished), 0)::integer AS unfinished,
                      coalesce(sum(failed), 0) AS failed
               FROM (SELECT (j.state NOT IN ('completed', 'dead', 'cancelled', 'expired'))::integer
                                AS unfinished,
                            (j.state IN ('dead', 'cancelled', 'expired'))::integer AS failed
                     FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.depends_on
                     WHERE d.job_id = $1
                     UNION ALL
                     SELECT (b.finished_at IS NULL)::integer,
                            (b.finished_at IS NOT NULL AND b.state <> 'succeeded')::integer
                     FROM batch_dependencies AS d JOIN batches AS b ON b.id = d.batch_id
                     WHERE d.job_id = $1) AS edges) AS u
         WHERE jobs.id = $1
         RETURNING ",
        job_columns!()
    );
    let plan = dependency::plan(jobs).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if plan.is_empty() {
        return Ok(());
    }
    // Each upstream's row is written once: writing it again for each of its
    // dependents made a new row version each time, for later writes and
    // reads to walk (quadratic in the dependents of one request).
    let mut marked = HashSet::new();
    let mark = client.statement(MARK).await?;
    let edge = client.statement(EDGE).await?;
    let settle = client.statement(SETTLE).await?;
    // Jobs that existed before, in id order; one that does not exist is
    // left to the walk below, which names the entry that named it.
    let mut existing: Vec<JobId> = plan
        .upstreams
        .iter()
        .flatten()
        .filter_map(|upstream| match *upstream {
            Resolved::Job(id) => Some(id),
            Resolved::Index(_) => None,
        })
        .collect();
    existing.sort_unstable();
    existing.dedup();
    for id in existing {
        if client.row_opt(&mark, &[&id.0]).await?.is_some() {
            marked.insert(id);
        }
    }
    for &i in &plan.order {
        let dependent = inserted[i].job.id;
        for upstream in &plan.upstreams[i] {
            let id = match *upstream {
                Resolved::Job(id) => {
                    // Only a job that existed before may be named by id,
                    // so no id closes a cycle (`plan` checks the refs).
                    if inserted.iter().any(|other| other.job.id == id) {
                        return Err(StoreError::same_request_job(
                            dependency::field(jobs, i, id),
                            id,
                        ));
                    }
                    id
                }
                Resolved::Index(j) => inserted[j].job.id,
            };
            if marked.insert(id) && client.row_opt(&mark, &[&id.0]).await?.is_none() {
                return Err(StoreError::UnknownDependency {
                    field: dependency::field(jobs, i, id),
                    id,
                });
            }
            client
                .rows(&edge, &[&id.0, &dependent.0])
                .await
                .map_err(at_entry(|| dependency::field(jobs, i, id)))?;
        }
    }
    if plan
        .order
        .iter()
        .any(|&i| !jobs[i].depends_on_batches.is_empty())
    {
        let mark_batch = client.statement(MARK_BATCH).await?;
        let batch_edge = client.statement(BATCH_EDGE).await?;
        let mut batches: Vec<_> = plan
            .order
            .iter()
            .flat_map(|&i| jobs[i].depends_on_batches.iter().copied())
            .collect();
        batches.sort_unstable();
        batches.dedup();
        for batch in batches {
            // Only locks: the walk below reads each answer, in order.
            client.row_opt(&mark_batch, &[&batch.0]).await?;
        }
        for &i in &plan.order {
            let dependent = inserted[i].job.id;
            for (k, &batch) in jobs[i].depends_on_batches.iter().enumerate() {
                let field = format!("jobs[{i}].depends_on_batches[{k}]");
                if inserted[i].job.batch_id == Some(batch) {
                    return Err(StoreError::own_batch(field, batch));
                }
                match client.row_opt(&mark_batch, &[&batch.0]).await? {
                    None => return Err(StoreError::unknown_batch(field, batch)),
                    Some(row) if row.try_get::<_, bool>(0).map_err(pg_error)? => {
                        return Err(StoreError::open_batch(field, batch))
                    }
                    Some(_) => {}
                }
                client
                    .rows(&batch_edge, &[&batch.0, &dependent.0])
                    .await
                    .map_err(at_entry(|| field.clone()))?;
            }
        }
    }
    for &i in &plan.order {
        let dependent = inserted[i].job.id;
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

/// An edge's refusal (a chain too deep) naming the request's entry that
/// made it.
fn at_entry(field: impl FnOnce() -> String) -> impl FnOnce(StoreError) -> StoreError {
    move |e| match e {
        StoreError::RefusedDependency { .. } => StoreError::too_deep(field()),
        other => other,
    }
}

/// The jobs and batches `id` waits for, by id; `None` if there is no job
/// `id`.
pub(crate) async fn dependencies_of(
    client: &impl deadpool_postgres::GenericClient,
    id: JobId,
) -> Result<Option<Dependencies>> {
    const EXISTS: &str = "SELECT id FROM jobs WHERE id = $1";
    const SQL: &str = concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs
         WHERE id IN (SELECT depends_on FROM job_dependencies WHERE job_id = $1)
         ORDER BY id"
    );
    const BATCHES: &str = concat!(
        "SELECT ",
        batch_columns!(),
        " FROM batches
         WHERE id IN (SELECT batch_id FROM batch_dependencies WHERE job_id = $1)
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
    let jobs = jobs_from_rows(&rows)?;
    let stmt = client.prepare_cached(BATCHES).await.map_err(pg_error)?;
    let rows = client.query(&stmt, &[&id.0]).await.map_err(pg_error)?;
    let batches = rows.iter().map(batch_from_row).collect::<Result<_>>()?;
    Ok(Some(Dependencies { jobs, batches }))
}
