//! Flow control: admission to a limited queue (called by the fetch in
//! `leasing.rs`), a queue's limits, and what they are using. The writer
//! thread runs every change, so admission needs no lock: nothing else
//! leases, completes or releases between its count and its leases.

use std::collections::HashMap;

use grafter_core::limits::PartitionBy;
use grafter_core::{JobId, LeasedJob, QueueLimits};
use grafter_store::admission::{Admission, Offer, STARTS_KEPT_PAST_WINDOW};
use grafter_store::{
    JobsFetch, LimitUsage, LimitUsageQuery, Limited, QueueInfo, QueueLimitsSet, Result, StoreError,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::backend;
use crate::leasing::{count_moved, lease_set, leased_from_row, Budget};
use crate::row::{duration_micros, micros, timestamp, to_json, JOB_COLUMNS};

/// A job's partition in SQL (`?9`, renumbered by each statement, is the JSON
/// path of an `args.` partition): the string there, nothing or null the
/// empty partition, to its first 255 characters (`MAX_PARTITION_CHARS`;
/// `substr` counts characters). A value other than a string is its JSON
/// text as stored (`->`): a number's text cast from SQLite's REAL would
/// keep 15 digits (0.3 and 0.30000000000000004 one partition) and lose
/// `-0.0`.
fn partition_sql(by: &PartitionBy) -> &'static str {
    match by {
        PartitionBy::Queue => "''",
        PartitionBy::Field => "coalesce(partition, '')",
        PartitionBy::Args(_) => {
            "substr(coalesce(CASE json_type(args, ?9) WHEN 'text' THEN json_extract(args, ?9)
                                                    WHEN 'null' THEN NULL
                                                    ELSE args -> ?9 END, ''), 1, 255)"
        }
    }
}

/// The JSON path of an `args.` partition (`$."a"."b"`); keys hold no quote.
fn json_path(by: &PartitionBy) -> String {
    match by {
        PartitionBy::Args(keys) => {
            let mut path = String::from("$");
            for key in keys {
                path.push_str(&format!(".\"{key}\""));
            }
            path
        }
        _ => "$".to_owned(),
    }
}

/// A queue's `paused` and limits, if it has a row.
fn settings(conn: &Connection, queue: &str) -> Result<(bool, Option<QueueLimits>)> {
    let row: Option<(bool, Option<String>)> = conn
        .prepare_cached("SELECT paused, limits FROM queues WHERE name = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([queue], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    let Some((paused, limits)) = row else {
        return Ok((false, None));
    };
    let limits = limits
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::Backend(format!("reading the limits of {queue:?}: {e}")))?;
    Ok((paused, limits))
}

/// Running jobs of `queue` per partition, read through `jobs_leases` (only
/// running jobs are in it: as many as the workers hold).
fn running(conn: &Connection, queue: &str, by: &PartitionBy) -> Result<HashMap<String, u64>> {
    let sql = format!(
        "SELECT {key}, count(*) FROM jobs INDEXED BY jobs_leases
         WHERE state = 'running' AND queue = ?1 GROUP BY 1",
        key = partition_sql(by).replace("?9", "?2")
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = if matches!(by, PartitionBy::Args(_)) {
        stmt.query_map(params![queue, json_path(by)], count_row)
    } else {
        stmt.query_map(params![queue], count_row)
    };
    rows.and_then(|rows| rows.collect::<rusqlite::Result<HashMap<_, _>>>())
        .map_err(backend)
}

/// The partition of job `id` of `queue` by the expression admission counts
/// by ([`partition_sql`] on its row); `None` if no such job is on `queue`.
fn partition_of_job(
    conn: &Connection,
    queue: &str,
    id: JobId,
    by: &PartitionBy,
) -> Result<Option<String>> {
    let sql = format!(
        "SELECT {key} FROM jobs WHERE id = ?1 AND queue = ?2",
        key = partition_sql(by).replace("?9", "?3")
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let row = if matches!(by, PartitionBy::Args(_)) {
        stmt.query_row(params![id.0, queue, json_path(by)], |row| row.get(0))
    } else {
        stmt.query_row(params![id.0, queue], |row| row.get(0))
    };
    row.optional().map_err(backend)
}

fn count_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, u64)> {
    Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64))
}

/// Starts of `queue` per partition within the window ending at `now`:
/// (count, the N-th newest start where N is the rate's count).
fn started(
    conn: &Connection,
    queue: &str,
    cut: i64,
    count: i64,
) -> Result<HashMap<String, (u64, Option<i64>)>> {
    conn.prepare_cached(
        "SELECT partition, count(*),
                (SELECT s2.started_at FROM queue_starts AS s2
                 WHERE s2.queue = ?1 AND s2.partition = s.partition AND s2.started_at > ?2
                 ORDER BY s2.started_at DESC LIMIT 1 OFFSET ?3 - 1)
         FROM queue_starts AS s WHERE queue = ?1 AND started_at > ?2 GROUP BY partition",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![queue, cut, count], |row| {
            Ok((
                row.get::<_, String>(0)?,
                (row.get::<_, i64>(1)?.max(0) as u64, row.get(2)?),
            ))
        })
        .and_then(|rows| rows.collect())
    })
    .map_err(backend)
}

/// Leases jobs of one limited queue within its limits; `None` when it turns
/// out to have none (removed meanwhile), `Some(empty)` when it is paused.
pub(crate) fn admit(
    conn: &Connection,
    params: &JobsFetch,
    queue: &str,
    budget: &Budget,
    limited: &Limited,
) -> Result<Option<Vec<LeasedJob>>> {
    let (paused, limits) = settings(conn, queue)?;
    let Some(limits) = limits else {
        limited.set(queue, false);
        return Ok(None);
    };
    if paused {
        return Ok(Some(Vec::new()));
    }
    let now = micros(params.now);
    let by = limits.partition_by();
    let path = json_path(&by);
    let running = running(conn, queue, &by)?;
    let mut started_now = HashMap::new();
    let mut oldest_start = None;
    if let Some(rate) = limits.rate {
        let cut = now.saturating_sub(rate.period_ms.saturating_mul(1000));
        let kept = STARTS_KEPT_PAST_WINDOW.as_micros() as i64;
        conn.prepare_cached("DELETE FROM queue_starts WHERE queue = ?1 AND started_at <= ?2")
            .and_then(|mut stmt| stmt.execute(params![queue, cut.saturating_sub(kept)]))
            .map_err(backend)?;
        for (partition, (n, _)) in started(conn, queue, cut, rate.count)? {
            started_now.insert(partition, n);
        }
        oldest_start = conn
            .prepare_cached(
                "SELECT min(started_at) FROM queue_starts WHERE queue = ?1 AND started_at > ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![queue, cut], |row| row.get::<_, Option<i64>>(0))
            })
            .map_err(backend)?;
    }
    let mut admission = Admission::new(
        limits.clone(),
        &running,
        &started_now,
        (budget.max, budget.bytes, budget.first_free),
        params.running_limit,
    );
    // Candidates in hand-out order, outside the partitions already full and
    // the jobs already taken: a walk of jobs_fetch.
    let look = format!(
        "SELECT id, {key}, octet_length(args) FROM jobs
         WHERE state = 'available' AND queue = ?1 AND (expires_at IS NULL OR expires_at > ?2)
           AND {key} NOT IN (SELECT value FROM json_each(?3))
           AND id NOT IN (SELECT value FROM json_each(?4))
         ORDER BY priority, run_at, id
         LIMIT ?5",
        key = partition_sql(&by).replace("?9", "?6")
    );
    let mut stmt = conn.prepare_cached(&look).map_err(backend)?;
    loop {
        let asked = admission.wanted();
        if asked == 0 {
            break;
        }
        let full = to_json(&admission.full())?;
        let taken = to_json(&admission.taken_ids())?;
        let mut values: Vec<rusqlite::types::Value> = vec![
            queue.to_owned().into(),
            now.into(),
            full.into(),
            taken.into(),
            (asked as i64).into(),
        ];
        if matches!(by, PartitionBy::Args(_)) {
            values.push(path.clone().into());
        }
        let candidates = stmt
            .query_map(rusqlite::params_from_iter(values), |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?.max(0) as u64,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(backend)?;
        let got = candidates.len();
        for (id, partition, size) in candidates {
            if admission.offer(id, &partition, size) == Offer::Done {
                break;
            }
        }
        if !admission.look_again(got, asked) {
            break;
        }
    }
    let leased = lease(conn, params, admission.taken_ids())?;
    if let Some(rate) = limits.rate {
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO queue_starts (queue, partition, started_at) VALUES (?1, ?2, ?3)",
            )
            .map_err(backend)?;
        for (_, partition) in admission.taken() {
            insert
                .execute(params![queue, partition, now])
                .map_err(backend)?;
        }
        let reopens = admission.rate_full().then(|| {
            let oldest = oldest_start.unwrap_or(now).min(now);
            timestamp(oldest.saturating_add(rate.period_ms.saturating_mul(1000)))
        });
        limited.set_reopens_at(queue, reopens);
    }
    Ok(Some(leased))
}

/// Leases the jobs `ids` (available, chosen under the writer).
fn lease(conn: &Connection, params: &JobsFetch, ids: Vec<i64>) -> Result<Vec<LeasedJob>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let now = micros(params.now);
    let lease_until = now.saturating_add(duration_micros(params.lease_duration));
    let sql = format!(
        "UPDATE jobs SET {set}
         WHERE id IN (SELECT value FROM json_each(?4)) AND state = 'available'
         RETURNING {JOB_COLUMNS}, lease",
        set = lease_set()
    );
    let leased = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_map(
                params![
                    lease_until,
                    now,
                    params.worker_id,
                    to_json(&ids).unwrap_or_default()
                ],
                leased_from_row,
            )
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        })
        .map_err(backend)?;
    count_moved(
        conn,
        leased.iter().map(|l| l.job.queue.as_str()),
        grafter_core::JobState::Available,
        grafter_core::JobState::Running,
    )?;
    Ok(leased)
}

/// Sets or removes a queue's limits. The caller records the change in
/// [`Limited`] once it has committed.
pub fn queue_set_limits(conn: &Connection, params: &QueueLimitsSet) -> Result<QueueInfo> {
    let limits = params.limits.as_ref().map(to_json).transpose()?;
    conn.prepare_cached(
        "INSERT INTO queues (name, paused, limits, updated_at) VALUES (?1, 0, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at",
    )
    .and_then(|mut stmt| stmt.execute(params![params.queue, limits, micros(params.now)]))
    .map_err(backend)?;
    crate::queues::queue_info(conn, &params.queue)
}

/// The names of the queues with limits.
pub fn limited_names(conn: &Connection) -> Result<Vec<String>> {
    conn.prepare_cached("SELECT name FROM queues WHERE limits IS NOT NULL")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))
                .and_then(|rows| rows.collect())
        })
        .map_err(backend)
}

pub fn queue_limit_usage(conn: &Connection, params: &LimitUsageQuery) -> Result<LimitUsage> {
    let (paused, limits) = settings(conn, &params.queue)?;
    let Some(limits) = limits else {
        return Ok(LimitUsage {
            paused,
            ..LimitUsage::default()
        });
    };
    let by = limits.partition_by();
    let job_partition = match params.job {
        Some(id) => partition_of_job(conn, &params.queue, id, &by)?,
        None => None,
    };
    let running = running(conn, &params.queue, &by)?;
    let started = match limits.rate {
        Some(rate) => {
            let now = micros(params.now);
            let cut = now.saturating_sub(rate.period_ms.saturating_mul(1000));
            started(conn, &params.queue, cut, rate.count)?
                .into_iter()
                .map(|(partition, (n, nth))| (partition, (n, nth.map(timestamp))))
                .collect()
        }
        None => HashMap::new(),
    };
    Ok(LimitUsage {
        job_partition,
        ..LimitUsage::of(paused, limits, running, started)
    })
}
