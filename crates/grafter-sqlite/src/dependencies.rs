//! Job dependencies (docs/dependencies.md): linking new jobs to their
//! upstream jobs and batches at insert, and reading what a job waits for.
//! Releasing and cancelling dependents is the triggers' work
//! (`migrations/0016_dependencies.sql`, `0019_batch_dependencies.sql`).

use grafter_core::dependency::{self, Resolved};
use grafter_core::{JobId, NewJob, Timestamp};
use grafter_store::{Dependencies, Inserted, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

use crate::batch_row::{batch_from_row, BATCH_COLUMNS};
use crate::error::backend;
use crate::row::{job_from_row, micros, JOB_COLUMNS};

/// Links the jobs just inserted (`inserted`, in the order of `jobs`) to
/// their upstream jobs and batches, upstreams first, so each dependent
/// starts `pending`, due, or `cancelled` by what its upstreams are now;
/// replaces each dependent's entry with its row after linking. An id that
/// names no job or batch, an open batch or the job's own batch is refused
/// (the caller's transaction rolls back).
pub fn link(
    conn: &Connection,
    jobs: &[NewJob],
    inserted: &mut [Inserted],
    now: Timestamp,
) -> Result<()> {
    let plan = dependency::plan(jobs).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if plan.is_empty() {
        return Ok(());
    }
    let mut mark = conn
        .prepare_cached("UPDATE jobs SET has_dependents = 1 WHERE id = ?1 RETURNING id")
        .map_err(backend)?;
    let mut edge = conn
        .prepare_cached(
            "INSERT INTO job_dependencies (depends_on, job_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .map_err(backend)?;
    let mut mark_batch = conn
        .prepare_cached("UPDATE batches SET has_dependents = 1 WHERE id = ?1 RETURNING open")
        .map_err(backend)?;
    let mut batch_edge = conn
        .prepare_cached(
            "INSERT INTO batch_dependencies (batch_id, job_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .map_err(backend)?;
    // A batch is finished once `finished_at` is set; it failed the
    // dependent unless it succeeded.
    let mut settle = conn
        .prepare_cached(&format!(
            "UPDATE jobs SET
                deps_left = u.unfinished,
                on_dependency_failure = ?2,
                state = CASE WHEN u.failed > 0 AND ?2 IS NULL THEN 'cancelled'
                             WHEN u.unfinished > 0 THEN 'pending'
                             ELSE state END,
                finished_at = CASE WHEN u.failed > 0 AND ?2 IS NULL THEN ?3 ELSE finished_at END
             FROM (SELECT sum(unfinished) AS unfinished, sum(failed) AS failed FROM (
                     SELECT j.state NOT IN ('completed', 'dead', 'cancelled', 'expired') AS unfinished,
                            j.state IN ('dead', 'cancelled', 'expired') AS failed
                     FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.depends_on
                     WHERE d.job_id = ?1
                     UNION ALL
                     SELECT b.finished_at IS NULL, b.finished_at IS NOT NULL AND b.state <> 'succeeded'
                     FROM batch_dependencies AS d JOIN batches AS b ON b.id = d.batch_id
                     WHERE d.job_id = ?1)) AS u
             WHERE jobs.id = ?1
             RETURNING {JOB_COLUMNS}"
        ))
        .map_err(backend)?;
    for i in plan.order {
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
            let found: Option<i64> = mark
                .query_row([id.0], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            if found.is_none() {
                return Err(StoreError::UnknownDependency {
                    field: dependency::field(jobs, i, id),
                    id,
                });
            }
            edge.execute(params![id.0, dependent.0])
                .map_err(edge_error(|| dependency::field(jobs, i, id)))?;
        }
        for (k, &batch) in jobs[i].depends_on_batches.iter().enumerate() {
            let field = format!("jobs[{i}].depends_on_batches[{k}]");
            if inserted[i].job.batch_id == Some(batch) {
                return Err(StoreError::own_batch(field, batch));
            }
            let open: Option<bool> = mark_batch
                .query_row([batch.0], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            match open {
                None => return Err(StoreError::unknown_batch(field, batch)),
                Some(true) => return Err(StoreError::open_batch(field, batch)),
                Some(false) => {}
            }
            batch_edge
                .execute(params![batch.0, dependent.0])
                .map_err(edge_error(|| field.clone()))?;
        }
        let policy = jobs[i]
            .on_dependency_failure
            .filter(|p| *p == dependency::DependencyFailure::Run)
            .map(|p| p.as_str());
        inserted[i].job = settle
            .query_row(params![dependent.0, policy, micros(now)], job_from_row)
            .map_err(backend)?;
    }
    Ok(())
}

/// An edge's insert failing: a chain too deep (the message of
/// migrations/0020_dependency_depth.sql's triggers) names the request's
/// entry that made it.
fn edge_error(field: impl FnOnce() -> String) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| {
        if e.to_string().contains("grafter: dependency chain too deep") {
            StoreError::too_deep(field())
        } else {
            backend(e)
        }
    }
}

/// The jobs and batches `id` waits for, by id; `None` if there is no job `id`.
pub fn dependencies_of(conn: &Connection, id: JobId) -> Result<Option<Dependencies>> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT id FROM jobs WHERE id = ?1")
        .and_then(|mut stmt| stmt.query_row([id.0], |row| row.get(0)).optional())
        .map_err(backend)?;
    if exists.is_none() {
        return Ok(None);
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE id IN (SELECT depends_on FROM job_dependencies WHERE job_id = ?1)
             ORDER BY id"
        ))
        .map_err(backend)?;
    let jobs = stmt
        .query_map([id.0], job_from_row)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches
             WHERE id IN (SELECT batch_id FROM batch_dependencies WHERE job_id = ?1)
             ORDER BY id"
        ))
        .map_err(backend)?;
    let batches = stmt
        .query_map([id.0], batch_from_row)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    Ok(Some(Dependencies { jobs, batches }))
}
