//! What people browse and fix by hand: job lists with every filter, bulk
//! changes, and throughput. Reads run on a read connection; the bulk change on
//! the writer.
//!
//! A list walks one index in id order (the "driver") and checks any other
//! filter row by row, at most `scan_limit` rows per page. Drivers, best first:
//! a tag (`job_tags`), a schedule (`jobs_of_schedule`), a batch
//! (`jobs_of_batch`), an upstream job (its dependents, by the key of
//! `job_dependencies`), a queue or kind with a state (`jobs_queue_state`,
//! `jobs_kind_state`), a queue or kind alone (the same indexes, one ordered
//! range per state merged), a state alone (`jobs_queue_state`, one ordered
//! range per queue merged), or the primary key; running jobs, which those
//! indexes leave out, come from `jobs_leases`. Both stores answer the same
//! pages: each driver yields ids in the same order.

use grafter_core::{JobId, JobState};
use grafter_store::{
    BulkAction, BulkOutcome, IndexedFilters, JobCancel, JobPage, JobRetry, JobsBulk, JobsList,
    MinuteThroughput, Order, Result, StoreError, ThroughputRange,
};
use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, Connection};
use serde_json::Value;

use crate::jobs;
use crate::row::{job_preview_from_row, list_columns, micros, timestamp};

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// SQL with `?` placeholders and their values, built up in order.
#[derive(Default)]
struct Query {
    text: String,
    values: Vec<Sql>,
}

impl Query {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: impl Into<Sql>) -> &mut Self {
        self.values.push(value.into());
        self.text.push('?');
        self
    }
}

/// What a column of a range equals.
enum Cond {
    /// A value, bound as a parameter.
    Value(Sql),
    /// A state, written as a literal, and for any state but running also
    /// `state <> 'running'`: SQLite uses a partial index only for a query
    /// whose own terms show that it holds the rows asked for.
    State(JobState),
}

/// One ordered range of ids: `SELECT <id> FROM <from> WHERE <conds> [AND id
/// after] ORDER BY <id> <dir> LIMIT <limit>` (`-1`: no limit).
fn range(
    sql: &mut Query,
    id: &str,
    from: &str,
    conds: &[(&str, Cond)],
    params: &JobsList,
    limit: i64,
) {
    let (cmp, dir) = direction(params.order);
    sql.push(&format!("SELECT {id} AS id FROM {from} WHERE 1"));
    for (column, cond) in conds {
        match cond {
            Cond::Value(value) => sql.push(&format!(" AND {column} = ")).bind(value.clone()),
            Cond::State(JobState::Running) => sql.push(&format!(" AND {column} = 'running'")),
            Cond::State(state) => sql.push(&format!(
                " AND {column} = '{}' AND {column} <> 'running'",
                state.as_str()
            )),
        };
    }
    if let Some(after) = params.after {
        sql.push(&format!(" AND {id} {cmp} ")).bind(after.0);
    }
    sql.push(&format!(" ORDER BY {id} {dir} LIMIT "))
        .bind(limit);
}

/// The ids of jobs in `state`, and on the queue or of the kind `by` names, in
/// list order: an index range of (queue or kind, state, id), or for running
/// jobs, which those indexes leave out, all of them from `jobs_leases`.
fn state_range(
    sql: &mut Query,
    by: Option<&(&str, Sql)>,
    state: JobState,
    params: &JobsList,
    limit: i64,
) {
    let mut conds: Vec<(&str, Cond)> = by
        .map(|(column, value)| (*column, Cond::Value(value.clone())))
        .into_iter()
        .collect();
    conds.push(("state", Cond::State(state)));
    let from = match (state, by) {
        (JobState::Running, _) => "jobs INDEXED BY jobs_leases",
        (_, Some(("kind", _))) => "jobs INDEXED BY jobs_kind_state",
        (_, _) => "jobs INDEXED BY jobs_queue_state",
    };
    range(sql, "id", from, &conds, params, limit);
}

fn direction(order: Order) -> (&'static str, &'static str) {
    match order {
        Order::Desc => ("<", "DESC"),
        Order::Asc => (">", "ASC"),
    }
}

fn text(s: &str) -> Sql {
    Sql::Text(s.to_owned())
}

/// Appends the driver's ordered ids, at most `limit` of them (`-1`: all).
fn driver(conn: &Connection, sql: &mut Query, params: &JobsList, limit: i64) -> Result<()> {
    let (_, dir) = direction(params.order);
    if let Some(tag) = &params.tag {
        range(
            sql,
            "job_id",
            "job_tags",
            &[("tag", Cond::Value(text(tag)))],
            params,
            limit,
        );
        return Ok(());
    }
    if let Some(schedule) = &params.schedule {
        range(
            sql,
            "id",
            "jobs INDEXED BY jobs_of_schedule",
            &[("schedule_id", Cond::Value(text(schedule)))],
            params,
            limit,
        );
        return Ok(());
    }
    if let Some(batch) = params.batch {
        range(
            sql,
            "id",
            "jobs INDEXED BY jobs_of_batch",
            &[("batch_id", Cond::Value(Sql::Integer(batch.0)))],
            params,
            limit,
        );
        return Ok(());
    }
    if let Some(upstream) = params.depends_on {
        range(
            sql,
            "job_id",
            "job_dependencies",
            &[("depends_on", Cond::Value(Sql::Integer(upstream.0)))],
            params,
            limit,
        );
        return Ok(());
    }
    let by = match (&params.queue, &params.kind) {
        (Some(queue), _) => Some(("queue", text(queue))),
        (None, Some(kind)) => Some(("kind", text(kind))),
        (None, None) => None,
    };
    match (by, params.state) {
        (None, Some(state)) if state != JobState::Running => {
            let ids = state_ids(conn, params, state, limit)?;
            sql.push("SELECT value AS id FROM json_each(")
                .bind(serde_json::to_string(&ids).map_err(|e| StoreError::Backend(e.to_string()))?)
                .push(")");
        }
        (by, Some(state)) => state_range(sql, by.as_ref(), state, params, limit),
        (Some(by), None) => {
            // One ordered range per state, merged: each stops after `limit`
            // rows, so none reads the whole queue.
            sql.push("SELECT id FROM (");
            for (i, state) in JobState::ALL.into_iter().enumerate() {
                if i > 0 {
                    sql.push(" UNION ALL ");
                }
                sql.push("SELECT id FROM (");
                state_range(sql, Some(&by), state, params, limit);
                sql.push(")");
            }
            sql.push(&format!(") ORDER BY id {dir} LIMIT ")).bind(limit);
        }
        (None, None) => range(sql, "id", "jobs", &[], params, limit),
    }
    Ok(())
}

/// The ids of jobs in `state` (not running), at most `limit`, in list order: a
/// state alone has no index of its own (it would cost one more entry on every
/// change of every job), so one ordered range of (queue, state, id) is read per
/// queue that has had jobs, and the ranges merged here. Here rather than in one
/// statement: a compound SELECT has at most 500 parts, and queues are not
/// bounded.
fn state_ids(
    conn: &Connection,
    params: &JobsList,
    state: JobState,
    limit: i64,
) -> Result<Vec<i64>> {
    let queues: Vec<String> = conn
        .prepare_cached("SELECT DISTINCT queue FROM job_counts")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(backend)?;
    let mut ids = Vec::new();
    for queue in queues {
        let mut sql = Query::default();
        state_range(
            &mut sql,
            Some(&("queue", text(&queue))),
            state,
            params,
            limit,
        );
        let mut stmt = conn.prepare_cached(&sql.text).map_err(backend)?;
        let rows = stmt
            .query_map(params_from_iter(sql.values), |row| row.get::<_, i64>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(backend)?;
        ids.extend(rows);
    }
    match params.order {
        Order::Desc => ids.sort_unstable_by(|a, b| b.cmp(a)),
        Order::Asc => ids.sort_unstable(),
    }
    if let Ok(limit) = usize::try_from(limit) {
        ids.truncate(limit);
    }
    Ok(ids)
}

/// `AND …` for every filter the driver does not answer. The unary `+` keeps
/// SQLite from using another index for them instead of walking the driver's
/// ids in order (which is what bounds the scan and stops it at a full page).
fn residual(sql: &mut Query, params: &JobsList, driven: &IndexedFilters) -> Result<bool> {
    let mut any = false;
    if let (Some(state), false) = (params.state, driven.state) {
        sql.push(" AND +state = ").bind(text(state.as_str()));
        any = true;
    }
    if let (Some(queue), false) = (&params.queue, driven.queue) {
        sql.push(" AND +queue = ").bind(text(queue));
        any = true;
    }
    if let (Some(kind), false) = (&params.kind, driven.kind) {
        sql.push(" AND +kind = ").bind(text(kind));
        any = true;
    }
    if let (Some(schedule), false) = (&params.schedule, driven.schedule) {
        sql.push(" AND +schedule_id = ").bind(text(schedule));
        any = true;
    }
    if let (Some(batch), false) = (params.batch, driven.batch) {
        sql.push(" AND +batch_id = ").bind(Sql::Integer(batch.0));
        any = true;
    }
    if let (Some(upstream), false) = (params.depends_on, driven.depends_on) {
        sql.push(" AND EXISTS (SELECT 1 FROM job_dependencies WHERE depends_on = ")
            .bind(Sql::Integer(upstream.0))
            .push(" AND job_id = jobs.id)");
        any = true;
    }
    if let Some(args) = &params.args {
        args.validate()?;
        let path = format!(
            "${}",
            args.path
                .iter()
                .map(|k| format!(".\"{k}\""))
                .collect::<String>()
        );
        // json_extract answers SQL values (true is 1), so the JSON type is
        // checked too; integers and reals are both numbers.
        let (value, types): (Sql, &[&str]) = match &args.value {
            Value::Null => (Sql::Null, &["null"]),
            Value::Bool(true) => (Sql::Integer(1), &["true"]),
            Value::Bool(false) => (Sql::Integer(0), &["false"]),
            Value::String(s) => (text(s), &["text"]),
            Value::Number(n) => match n.as_i64() {
                Some(i) => (Sql::Integer(i), &["integer", "real"]),
                None => (
                    Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
                    &["integer", "real"],
                ),
            },
            Value::Array(_) | Value::Object(_) => unreachable!("validated as a scalar"),
        };
        if value != Sql::Null {
            sql.push(" AND json_extract(args, ")
                .bind(path.clone())
                .push(") = ")
                .bind(value);
        }
        sql.push(" AND json_type(args, ").bind(path).push(") IN (");
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(text(t));
        }
        sql.push(")");
        any = true;
    }
    Ok(any)
}

fn as_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub fn jobs_list(conn: &Connection, params: &JobsList) -> Result<JobPage> {
    // One snapshot for the driver's reads, the page and the scan count.
    let snapshot = conn.unchecked_transaction().map_err(backend)?;
    let page = page(conn, params)?;
    snapshot.finish().map_err(backend)?;
    Ok(page)
}

fn page(conn: &Connection, params: &JobsList) -> Result<JobPage> {
    let (_, dir) = direction(params.order);
    let wanted = as_limit(params.limit.saturating_add(1));
    let scan = params.scan_limit.map_or(-1, as_limit);
    let checked = residual(&mut Query::default(), params, &params.indexed_filters())?;

    let mut sql = Query::default();
    sql.push(&format!(
        "SELECT {} FROM jobs WHERE id IN (",
        list_columns()
    ));
    // Without row-by-row checks, the first `wanted` ids are the page.
    driver(conn, &mut sql, params, if checked { scan } else { wanted })?;
    sql.push(")");
    residual(&mut sql, params, &params.indexed_filters())?;
    sql.push(&format!(" ORDER BY id {dir} LIMIT ")).bind(wanted);
    let jobs = conn
        .prepare_cached(&sql.text)
        .and_then(|mut stmt| {
            stmt.query_map(params_from_iter(sql.values), job_preview_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    let page = JobPage::from_rows(jobs, params.limit);
    if page.next.is_some() || !checked || scan < 0 {
        return Ok(page);
    }
    // Short page: go on from the last row the scan looked at, if it stopped
    // because of the limit rather than the end of the index.
    let edge = match params.order {
        Order::Desc => "min(id)",
        Order::Asc => "max(id)",
    };
    let mut sql = Query::default();
    sql.push(&format!("SELECT count(*), {edge} FROM ("));
    driver(conn, &mut sql, params, scan)?;
    sql.push(")");
    let (scanned, last): (i64, Option<i64>) = conn
        .prepare_cached(&sql.text)
        .and_then(|mut stmt| {
            stmt.query_row(params_from_iter(sql.values), |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
        })
        .map_err(backend)?;
    let next = if scanned >= scan {
        last.map(JobId)
    } else {
        None
    };
    Ok(JobPage {
        jobs: page.jobs,
        next,
    })
}

pub fn jobs_bulk(conn: &Connection, params: &JobsBulk) -> Result<BulkOutcome> {
    let mut outcome = BulkOutcome::default();
    for &id in &params.ids {
        if let Some(only) = params.only_state {
            match jobs::job_get(conn, id)? {
                Some(job) if job.state == only => {}
                _ => {
                    outcome.skipped += 1;
                    continue;
                }
            }
        }
        let done = match params.action {
            BulkAction::Retry => jobs::job_retry(
                conn,
                &JobRetry {
                    id,
                    args: None,
                    now: params.now,
                },
            )
            .map(drop),
            BulkAction::Cancel => jobs::job_cancel(
                conn,
                &JobCancel {
                    id,
                    now: params.now,
                },
            )
            .map(drop),
            BulkAction::Delete => jobs::job_delete(conn, id),
        };
        match done {
            Ok(()) => outcome.changed += 1,
            Err(StoreError::NotFound(_) | StoreError::InvalidState { .. }) => outcome.skipped += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(outcome)
}

pub fn throughput_list(
    conn: &Connection,
    params: &ThroughputRange,
) -> Result<Vec<MinuteThroughput>> {
    let since = micros(params.since);
    let since = since - since.rem_euclid(60_000_000);
    conn.prepare_cached(
        "SELECT minute, completed, failed FROM job_throughput
         WHERE minute >= ?1 AND minute < ?2 AND (completed > 0 OR failed > 0) ORDER BY minute",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![since, micros(params.until)], |row| {
            Ok(MinuteThroughput {
                minute: timestamp(row.get(0)?),
                completed: row.get::<_, i64>(1)?.max(0) as u64,
                failed: row.get::<_, i64>(2)?.max(0) as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .map_err(backend)
}
