//! The insert statements, run on the store's connections or inside an
//! application's transaction (`enqueue_in`), both through [`Conn`]: jobs
//! without a `unique_key` many to a statement, keyed jobs one at a time. They
//! take no `Db`, so `group_insert.rs` can run them without a cycle (the entry
//! that chooses the group is `Db::jobs_insert_many`, in `db.rs`).

use grafter_core::{BatchId, Job, JobState, NewJob, Timestamp};
use grafter_store::{Inserted, Result, StoreError};
use tokio_postgres::types::Json;

use crate::conn::Conn;
use crate::dependencies;
use crate::error::pg_error;
use crate::row::{
    args_bytes, job_columns, job_from_row, jobs_from_rows, to_json, AFTER_JOB_COLUMNS,
};

/// How often an insert of a keyed job is retried when a concurrent transaction
/// inserted the same key and committed between our snapshot and our insert.
const UNIQUE_RACE_RETRIES: usize = 5;

/// First key of the advisory locks a batch takes on its unique keys (the
/// second is a hash of the schema and the key). Apart from the other locks'
/// classes. The bytes spell "grfu".
const UNIQUE_KEY_LOCK_CLASS: i32 = 0x6772_6675;

/// The state a new or requeued job starts in.
pub(crate) fn waiting_state(run_at: Timestamp, now: Timestamp) -> JobState {
    if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Available
    }
}

/// Inserts jobs inside the caller's transaction: the store's own, or an
/// application's ([`crate::enqueue_in`]). Consecutive jobs without a
/// `unique_key` go in one multi-row statement; keyed jobs go one at a time
/// because each may turn out to be a duplicate. Jobs with `depends_on` or
/// `depends_on_batches` are linked after all are in (several statements: a transaction's work).
pub(crate) async fn insert_jobs(
    client: &impl Conn,
    jobs: &[NewJob],
    now: Timestamp,
) -> Result<Vec<Inserted>> {
    lock_unique_keys(client, jobs).await?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut rest = jobs;
    while let Some(first) = rest.first() {
        if first.unique_key.is_some() {
            out.push(insert_keyed(client, first, now).await?);
            rest = &rest[1..];
        } else {
            let run = rest.iter().take_while(|j| j.unique_key.is_none()).count();
            let jobs = insert_unkeyed(client, &rest[..run], &vec![now; run], None).await?;
            out.extend(jobs.into_iter().map(created));
            rest = &rest[run..];
        }
    }
    dependencies::link(client, jobs, &mut out, now).await?;
    Ok(out)
}

/// Takes the transaction's advisory lock on each unique key of `jobs`, all
/// before any job is inserted and in one order every caller shares (by lock
/// key), so that two batches holding keys in common insert them one batch
/// after the other. Without it, each inserted its first shared key and then
/// waited on the other's uncommitted entry in the unique index for the next,
/// and PostgreSQL broke the cycle by failing one of them as a deadlock. The
/// jobs themselves still go in request order, so their ids follow it. A batch
/// with one key cannot close such a cycle and takes no lock.
///
/// The locks are taken in the select list after `ORDER BY`: PostgreSQL
/// evaluates a volatile output expression after sorting when the sort does
/// not use it (the SELECT reference, "SELECT List").
async fn lock_unique_keys(client: &impl Conn, jobs: &[NewJob]) -> Result<()> {
    const SQL: &str = "SELECT pg_advisory_xact_lock($1, lock_key)
        FROM (SELECT DISTINCT hashtext(current_schema() || E'\\n' || key) AS lock_key
              FROM unnest($2::text[]) AS key) AS keys
        ORDER BY lock_key";
    let mut keys: Vec<&str> = jobs
        .iter()
        .filter_map(|job| job.unique_key.as_deref())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() < 2 {
        return Ok(());
    }
    let stmt = client.statement(SQL).await?;
    client
        .rows(&stmt, &[&UNIQUE_KEY_LOCK_CLASS, &keys])
        .await
        .map(drop)
}

/// A job this call inserted (not one already holding its unique key).
pub(crate) fn created(job: Job) -> Inserted {
    Inserted { job, created: true }
}

/// Inserts jobs without a `unique_key` with one statement, each created at its
/// own entry in `nows` (jobs of several callers can share a statement, see
/// [`crate::group_insert`]). `unnest … WITH ORDINALITY` keeps their order, and
/// `ORDER BY ord` makes ids follow it, so the returned rows sorted by id line
/// up with `jobs`. Tags travel as one JSON array per job because PostgreSQL has
/// no arrays of arrays of varying length.
pub(crate) async fn insert_unkeyed(
    client: &impl Conn,
    jobs: &[NewJob],
    nows: &[Timestamp],
    batch: Option<BatchId>,
) -> Result<Vec<Job>> {
    const SQL: &str = concat!(
        "WITH input AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::smallint[],
                                 $5::text[], $6::timestamptz[], $7::integer[], $8::jsonb[],
                                 $9::bigint[], $10::timestamptz[], $11::jsonb[],
                                 $12::timestamptz[], $13::integer[], $14::text[],
                                 $15::timestamptz[], $16::text[], $17::text[], $18::text[])
                WITH ORDINALITY
                AS i(queue, kind, args, priority, state, run_at, max_attempts, tags,
                     timeout_ms, expires_at, backoff, created_at, args_bytes, schedule_id,
                     schedule_slot, partition, traceparent, tracestate, ord)
        )
        INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                          timeout_ms, expires_at, backoff, created_at, args_bytes, schedule_id,
                          schedule_slot, partition, traceparent, tracestate, batch_id)
        SELECT queue, kind, args, priority, state, run_at, max_attempts,
               ARRAY(SELECT t FROM jsonb_array_elements_text(tags) WITH ORDINALITY AS e(t, n)
                     ORDER BY n),
               timeout_ms, expires_at, backoff, created_at, args_bytes, schedule_id, schedule_slot,
               partition, traceparent, tracestate, $19::bigint
        FROM input
        ORDER BY ord
        RETURNING ",
        job_columns!()
    );
    let n = jobs.len();
    if nows.len() != n {
        return Err(StoreError::Backend(format!(
            "inserting {n} jobs with {} creation times",
            nows.len()
        )));
    }
    let mut queues = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut tags = Vec::with_capacity(n);
    let mut timeouts = Vec::with_capacity(n);
    let mut expires = Vec::with_capacity(n);
    let mut backoffs = Vec::with_capacity(n);
    let mut sizes = Vec::with_capacity(n);
    let mut schedule_ids = Vec::with_capacity(n);
    let mut schedule_slots = Vec::with_capacity(n);
    let mut partitions = Vec::with_capacity(n);
    let mut traceparents = Vec::with_capacity(n);
    let mut tracestates = Vec::with_capacity(n);
    for (job, &now) in jobs.iter().zip(nows) {
        let run_at = job.run_at.unwrap_or(now);
        queues.push(job.queue.as_str());
        kinds.push(job.kind.as_str());
        args.push(&job.args);
        priorities.push(job.priority);
        states.push(waiting_state(run_at, now).as_str());
        run_ats.push(run_at);
        max_attempts.push(job.max_attempts);
        tags.push(to_json(&job.tags)?);
        timeouts.push(job.timeout_ms);
        expires.push(job.expires_at);
        backoffs.push(job.backoff.as_ref().map(to_json).transpose()?);
        sizes.push(args_bytes(&job.args));
        schedule_ids.push(job.schedule.as_ref().map(|s| s.id.as_str()));
        schedule_slots.push(job.schedule.as_ref().and_then(|s| s.slot));
        partitions.push(job.partition.as_deref());
        traceparents.push(job.traceparent.as_deref());
        tracestates.push(job.tracestate.as_deref());
    }
    let stmt = client.statement(SQL).await?;
    let rows = client
        .rows(
            &stmt,
            &[
                &queues,
                &kinds,
                &args,
                &priorities,
                &states,
                &run_ats,
                &max_attempts,
                &tags,
                &timeouts,
                &expires,
                &backoffs,
                &nows,
                &sizes,
                &schedule_ids,
                &schedule_slots,
                &partitions,
                &traceparents,
                &tracestates,
                &batch.map(|b| b.0),
            ],
        )
        .await?;
    let mut inserted = jobs_from_rows(&rows)?;
    if inserted.len() != n {
        return Err(StoreError::Backend(format!(
            "inserting {n} jobs returned {} rows",
            inserted.len()
        )));
    }
    inserted.sort_by_key(|j| j.id);
    Ok(inserted)
}

/// Inserts one job with a `unique_key`, or returns the unfinished job that holds
/// the key. `ON CONFLICT … DO NOTHING` names the partial unique index, so a
/// concurrent insert of the same key waits for the other transaction instead of
/// failing; the second branch finds the holder (including one inserted earlier
/// in this same transaction).
async fn insert_keyed(client: &impl Conn, job: &NewJob, now: Timestamp) -> Result<Inserted> {
    const SQL: &str = concat!(
        "WITH inserted AS (
            INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                              unique_key, timeout_ms, expires_at, backoff, created_at, args_bytes,
                              schedule_id, schedule_slot, partition, traceparent, tracestate)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                    $18, $19)
            ON CONFLICT (unique_key)
                WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')
                DO NOTHING
            RETURNING *
        )
        SELECT ",
        job_columns!(),
        ", true FROM inserted AS jobs
        UNION ALL
        SELECT ",
        job_columns!(),
        ", false FROM jobs
        WHERE unique_key = $9
          AND state IN ('scheduled', 'available', 'running', 'retryable')
          AND NOT EXISTS (SELECT 1 FROM inserted)"
    );
    let run_at = job.run_at.unwrap_or(now);
    let state = waiting_state(run_at, now).as_str();
    let backoff = job.backoff.as_ref().map(Json);
    let size = args_bytes(&job.args);
    let schedule_id = job.schedule.as_ref().map(|s| s.id.as_str());
    let schedule_slot = job.schedule.as_ref().and_then(|s| s.slot);
    let stmt = client.statement(SQL).await?;
    for _ in 0..UNIQUE_RACE_RETRIES {
        let row = client
            .row_opt(
                &stmt,
                &[
                    &job.queue,
                    &job.kind,
                    &job.args,
                    &job.priority,
                    &state,
                    &run_at,
                    &job.max_attempts,
                    &job.tags,
                    &job.unique_key,
                    &job.timeout_ms,
                    &job.expires_at,
                    &backoff,
                    &now,
                    &size,
                    &schedule_id,
                    &schedule_slot,
                    &job.partition,
                    &job.traceparent,
                    &job.tracestate,
                ],
            )
            .await?;
        // No row: another transaction committed a job with this key after this
        // statement's snapshot was taken, so neither branch saw it. Again, with a
        // fresh snapshot.
        if let Some(row) = row {
            let created: bool = row.try_get(AFTER_JOB_COLUMNS).map_err(pg_error)?;
            return Ok(Inserted {
                job: job_from_row(&row)?,
                created,
            });
        }
    }
    Err(StoreError::Unavailable(format!(
        "unique_key {:?} kept changing hands; try again",
        job.unique_key.as_deref().unwrap_or_default()
    )))
}
