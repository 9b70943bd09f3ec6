//! Job dependencies (docs/dependencies.md): linking new jobs to their
//! upstreams at insert, and reading a job's upstreams. Releasing and
//! cancelling dependents is the triggers' work
//! (`migrations/0016_dependencies.sql`).

use grafter_core::dependency::{self, Resolved};
use grafter_core::{Job, JobId, NewJob, Timestamp};
use grafter_store::{Inserted, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::backend;
use crate::row::{job_from_row, micros, JOB_COLUMNS};

/// Links the jobs just inserted (`inserted`, in the order of `jobs`) to
/// their upstreams, upstreams first, so each dependent starts `pending`,
/// due, or `cancelled` by what its upstreams are now; replaces each
/// dependent's entry with its row after linking. An id that names no job is
/// refused (the caller's transaction rolls back).
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
    let mut settle = conn
        .prepare_cached(&format!(
            "UPDATE jobs SET
                deps_left = u.unfinished,
                on_dependency_failure = ?2,
                state = CASE WHEN u.failed > 0 AND ?2 IS NULL THEN 'cancelled'
                             WHEN u.unfinished > 0 THEN 'pending'
                             ELSE state END,
                finished_at = CASE WHEN u.failed > 0 AND ?2 IS NULL THEN ?3 ELSE finished_at END
             FROM (SELECT
                     count(*) FILTER (WHERE j.state NOT IN ('completed', 'dead', 'cancelled', 'expired'))
                         AS unfinished,
                     count(*) FILTER (WHERE j.state IN ('dead', 'cancelled', 'expired')) AS failed
                   FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.depends_on
                   WHERE d.job_id = ?1) AS u
             WHERE jobs.id = ?1
             RETURNING {JOB_COLUMNS}"
        ))
        .map_err(backend)?;
    for i in plan.order {
        let dependent = inserted[i].job.id;
        for (k, upstream) in plan.upstreams[i].iter().enumerate() {
            let id = match *upstream {
                Resolved::Job(id) => id,
                Resolved::Index(j) => inserted[j].job.id,
            };
            let found: Option<i64> = mark
                .query_row([id.0], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            if found.is_none() {
                return Err(StoreError::UnknownDependency {
                    field: format!("jobs[{i}].depends_on[{k}]"),
                    id,
                });
            }
            edge.execute(params![id.0, dependent.0]).map_err(backend)?;
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

/// The jobs `id` depends on, by id; `None` if there is no job `id`.
pub fn dependencies_of(conn: &Connection, id: JobId) -> Result<Option<Vec<Job>>> {
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
    Ok(Some(jobs))
}
