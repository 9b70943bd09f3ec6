//! What people browse and fix by hand: job lists with every filter, bulk
//! changes, throughput, and the rollup that keeps the dashboard's counters.
//!
//! A list walks one index in id order (the "driver") and checks any other
//! filter row by row, at most `scan_limit` rows per page. Drivers, best first:
//! a tag (`job_tags`), a schedule (`jobs_of_schedule`), a batch
//! (`batch_jobs`), an upstream job (its dependents, by the key of
//! `job_dependencies`), a queue or kind with a state (`jobs_queue_state`,
//! `jobs_kind_state`), a queue or kind alone (the same indexes, one ordered
//! range per state merged), a state alone (`jobs_queue_state`, one ordered
//! range per queue merged), or the primary key; running jobs, which those
//! indexes leave out, come from `jobs_leases`. Both stores answer the same
//! pages: each driver yields ids in the same order.

use std::time::Duration;

use deadpool_postgres::Pool;
use grafter_core::{JobId, JobState};
use grafter_store::{
    BulkAction, BulkOutcome, IndexedFilters, JobPage, JobsBulk, JobsList, MinuteThroughput, Order,
    Result, StoreError, ThroughputRange,
};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::error::pg_error;
use crate::jobs::{cancel_locked, invalid, job_lock, requeue};
use crate::row::{job_preview_from_row, list_columns};

/// How often each node folds counter deltas into the totals.
const ROLLUP_EVERY: Duration = Duration::from_secs(1);
/// How long per-minute throughput is kept.
const THROUGHPUT_KEPT: chrono::Duration = chrono::Duration::days(2);
/// First key of the advisory lock that keeps two nodes from rolling up at once
/// (the second is the schema's hash). The bytes spell "grfr".
const ROLLUP_LOCK_CLASS: i32 = 0x6772_6672;

type Param = Box<dyn ToSql + Sync + Send>;

/// SQL with `$n` placeholders and their values, built up in order.
#[derive(Default)]
struct Query {
    text: String,
    values: Vec<Param>,
}

impl Query {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> &mut Self {
        self.values.push(Box::new(value));
        let n = self.values.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| &**v as &(dyn ToSql + Sync))
            .collect()
    }
}

fn direction(order: Order) -> (&'static str, &'static str) {
    match order {
        Order::Desc => ("<", "DESC"),
        Order::Asc => (">", "ASC"),
    }
}

/// What a column of a range equals.
enum Cond {
    /// A value, bound as a parameter.
    Value(String),
    /// A number, bound as a parameter.
    Number(i64),
    /// A column of an enclosing query (the queue of a per-queue range).
    Column(&'static str),
    /// A state, written as a literal so the planner can tell which partial
    /// index holds it (running jobs are only in `jobs_leases`).
    State(JobState),
}

/// One ordered range of ids: `SELECT <id> FROM <from> WHERE <conds> [AND id
/// after] ORDER BY <id> <dir> LIMIT <limit>` (no limit when `limit` is `None`).
fn range(
    sql: &mut Query,
    id: &str,
    from: &str,
    conds: &[(&str, Cond)],
    params: &JobsList,
    limit: Option<i64>,
) {
    let (cmp, dir) = direction(params.order);
    sql.push(&format!("SELECT {id} AS id FROM {from} WHERE true"));
    for (column, cond) in conds {
        match cond {
            Cond::Value(value) => sql.push(&format!(" AND {column} = ")).bind(value.clone()),
            Cond::Number(value) => sql.push(&format!(" AND {column} = ")).bind(*value),
            Cond::Column(other) => sql.push(&format!(" AND {column} = {other}")),
            Cond::State(state) => sql.push(&format!(" AND {column} = '{}'", state.as_str())),
        };
    }
    if let Some(after) = params.after {
        sql.push(&format!(" AND {id} {cmp} ")).bind(after.0);
    }
    order_and_limit(sql, id, dir, limit);
}

/// ` ORDER BY <id> <dir> [LIMIT <limit>]`: the end of a range and of a merge.
fn order_and_limit(sql: &mut Query, id: &str, dir: &str, limit: Option<i64>) {
    sql.push(&format!(" ORDER BY {id} {dir}"));
    if let Some(limit) = limit {
        sql.push(" LIMIT ").bind(limit);
    }
}

/// Appends the driver's ordered ids, at most `limit` of them (`None`: all).
fn driver(sql: &mut Query, params: &JobsList, limit: Option<i64>) {
    let (_, dir) = direction(params.order);
    if let Some(tag) = &params.tag {
        range(
            sql,
            "job_id",
            "job_tags",
            &[("tag", Cond::Value(tag.clone()))],
            params,
            limit,
        );
        return;
    }
    if let Some(schedule) = &params.schedule {
        range(
            sql,
            "id",
            "jobs",
            &[("schedule_id", Cond::Value(schedule.clone()))],
            params,
            limit,
        );
        return;
    }
    if let Some(batch) = params.batch {
        range(
            sql,
            "job_id",
            "batch_jobs",
            &[("batch_id", Cond::Number(batch.0))],
            params,
            limit,
        );
        return;
    }
    if let Some(upstream) = params.depends_on {
        range(
            sql,
            "job_id",
            "job_dependencies",
            &[("depends_on", Cond::Number(upstream.0))],
            params,
            limit,
        );
        return;
    }
    let by = match (&params.queue, &params.kind) {
        (Some(queue), _) => Some(("queue", queue.clone())),
        (None, Some(kind)) => Some(("kind", kind.clone())),
        (None, None) => None,
    };
    match (by, params.state) {
        (None, Some(state)) if state != JobState::Running => {
            // One ordered range of (queue, state, id) per queue that has had
            // jobs, merged as lists by queue merge their states (below): a
            // state alone has no index of its own (it would cost one more
            // entry on every change of every job).
            sql.push(
                "SELECT per_queue.id FROM (SELECT queue FROM job_counts \
                 UNION SELECT queue FROM job_count_deltas) AS q CROSS JOIN LATERAL (",
            );
            range(
                sql,
                "id",
                "jobs",
                &[
                    ("queue", Cond::Column("q.queue")),
                    ("state", Cond::State(state)),
                ],
                params,
                limit,
            );
            sql.push(") AS per_queue");
            order_and_limit(sql, "per_queue.id", dir, limit);
        }
        (by, Some(state)) => {
            // Running jobs are read from `jobs_leases` (all of them, a few at
            // most), the others from (column, state, id).
            let conds: Vec<_> = by
                .map(|(column, value)| (column, Cond::Value(value)))
                .into_iter()
                .chain([("state", Cond::State(state))])
                .collect();
            range(sql, "id", "jobs", &conds, params, limit);
        }
        (Some((column, value)), None) => {
            // One ordered range per state of the (column, state, id) index,
            // merged: each stops after `limit` rows, so none reads a whole queue.
            sql.push("SELECT id FROM (");
            for (i, s) in JobState::ALL.into_iter().enumerate() {
                if i > 0 {
                    sql.push(" UNION ALL ");
                }
                sql.push("(");
                range(
                    sql,
                    "id",
                    "jobs",
                    &[
                        (column, Cond::Value(value.clone())),
                        ("state", Cond::State(s)),
                    ],
                    params,
                    limit,
                );
                sql.push(")");
            }
            sql.push(") AS merged");
            order_and_limit(sql, "id", dir, limit);
        }
        (None, None) => range(sql, "id", "jobs", &[], params, limit),
    }
}

/// `AND …` for every filter the driver does not answer; whether there was any.
fn residual(sql: &mut Query, params: &JobsList, driven: &IndexedFilters) -> Result<bool> {
    let mut any = false;
    if let (Some(state), false) = (params.state, driven.state) {
        sql.push(" AND state = ").bind(state.as_str().to_owned());
        any = true;
    }
    if let (Some(queue), false) = (&params.queue, driven.queue) {
        sql.push(" AND queue = ").bind(queue.clone());
        any = true;
    }
    if let (Some(kind), false) = (&params.kind, driven.kind) {
        sql.push(" AND kind = ").bind(kind.clone());
        any = true;
    }
    if let (Some(schedule), false) = (&params.schedule, driven.schedule) {
        sql.push(" AND schedule_id = ").bind(schedule.clone());
        any = true;
    }
    if let (Some(batch), false) = (params.batch, driven.batch) {
        sql.push(" AND batch_id = ").bind(batch.0);
        any = true;
    }
    if let (Some(upstream), false) = (params.depends_on, driven.depends_on) {
        sql.push(" AND EXISTS (SELECT 1 FROM job_dependencies WHERE depends_on = ")
            .bind(upstream.0)
            .push(" AND job_id = jobs.id)");
        any = true;
    }
    if let Some(args) = &params.args {
        args.validate()?;
        // Containment of {"a": {"b": value}}: the value at a.b, numbers by value.
        sql.push(" AND args @> ")
            .bind(args.document())
            .push("::jsonb");
        any = true;
    }
    Ok(any)
}

fn as_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Db {
    pub(crate) async fn jobs_list(&self, params: &JobsList) -> Result<JobPage> {
        let (_, dir) = direction(params.order);
        let wanted = as_limit(params.limit.saturating_add(1));
        let scan = params.scan_limit.map(as_limit);
        let checked = residual(&mut Query::default(), params, &params.indexed_filters())?;

        // The driver's ids, in order, each looked up by key: the LATERAL
        // subquery's LIMIT keeps the planner from turning this into a scan of
        // the whole table when it guesses the other filters are rare.
        let mut sql = Query::default();
        sql.push(&format!("SELECT {} FROM (", list_columns()));
        // Without row-by-row checks, the first `wanted` ids are the page.
        driver(&mut sql, params, if checked { scan } else { Some(wanted) });
        sql.push(") AS cand CROSS JOIN LATERAL (SELECT * FROM jobs WHERE jobs.id = cand.id LIMIT 1) AS jobs WHERE true");
        residual(&mut sql, params, &params.indexed_filters())?;
        sql.push(&format!(" ORDER BY cand.id {dir} LIMIT "))
            .bind(wanted);

        let client = self.client().await?;
        // A bounded set of shapes (filters present × order), so caching each is fine.
        let stmt = client.prepare_cached(&sql.text).await.map_err(pg_error)?;
        let rows = client.query(&stmt, &sql.params()).await.map_err(pg_error)?;
        let jobs = rows
            .iter()
            .map(job_preview_from_row)
            .collect::<Result<Vec<_>>>()?;
        let page = JobPage::from_rows(jobs, params.limit);
        let Some(scan) = scan.filter(|_| checked && page.next.is_none()) else {
            return Ok(page);
        };
        // Short page: go on from the last row the scan looked at, if it stopped
        // because of the limit rather than the end of the index.
        let edge = match params.order {
            Order::Desc => "min(id)",
            Order::Asc => "max(id)",
        };
        let mut sql = Query::default();
        sql.push(&format!("SELECT count(*), {edge} FROM ("));
        driver(&mut sql, params, Some(scan));
        sql.push(") AS scanned");
        let stmt = client.prepare_cached(&sql.text).await.map_err(pg_error)?;
        let row = client
            .query_one(&stmt, &sql.params())
            .await
            .map_err(pg_error)?;
        let scanned: i64 = row.try_get(0).map_err(pg_error)?;
        let last: Option<i64> = row.try_get(1).map_err(pg_error)?;
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

    /// One transaction; each job is locked (in id order, so two bulk changes
    /// never deadlock) and changed inside its own savepoint, so a job the rules
    /// refuse is skipped without undoing the others.
    pub(crate) async fn jobs_bulk(&self, params: &JobsBulk) -> Result<BulkOutcome> {
        const DELETE: &str = "DELETE FROM jobs WHERE id = $1";
        let mut ids = params.ids.clone();
        ids.sort_unstable();
        ids.dedup();
        let mut client = self.client().await?;
        let mut tx = client.transaction().await.map_err(pg_error)?;
        let mut outcome = BulkOutcome::default();
        for id in ids {
            let item = tx.transaction().await.map_err(pg_error)?;
            let done = async {
                let (job, _) = job_lock(&item, id).await?;
                if params.only_state.is_some_and(|only| job.state != only) {
                    return Err(invalid(&job, "not in the state the bulk change is for"));
                }
                match params.action {
                    BulkAction::Retry => requeue(&item, &job, params.now, params.now, None)
                        .await
                        .map(drop),
                    BulkAction::Cancel => cancel_locked(&item, &job, params.now).await.map(drop),
                    BulkAction::Delete => {
                        let stmt = item.prepare_cached(DELETE).await.map_err(pg_error)?;
                        item.execute(&stmt, &[&id.0])
                            .await
                            .map_err(pg_error)
                            .map(drop)
                    }
                }
            }
            .await;
            match done {
                Ok(()) => {
                    item.commit().await.map_err(pg_error)?;
                    outcome.changed += 1;
                }
                Err(StoreError::NotFound(_) | StoreError::InvalidState { .. }) => {
                    item.rollback().await.map_err(pg_error)?;
                    outcome.skipped += 1;
                }
                Err(e) => return Err(e),
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(outcome)
    }

    pub(crate) async fn throughput_list(
        &self,
        params: &ThroughputRange,
    ) -> Result<Vec<MinuteThroughput>> {
        const SQL: &str = "
            SELECT minute, sum(completed)::bigint, sum(failed)::bigint FROM (
                SELECT minute, completed, failed FROM job_throughput
                WHERE minute >= date_trunc('minute', $1 AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND minute < $2
                UNION ALL
                SELECT minute, completed, failed FROM job_throughput_deltas
                WHERE minute >= date_trunc('minute', $1 AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND minute < $2
            ) AS t
            GROUP BY minute
            HAVING sum(completed) > 0 OR sum(failed) > 0
            ORDER BY minute";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&params.since, &params.until])
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let completed: i64 = row.try_get(1).map_err(pg_error)?;
                let failed: i64 = row.try_get(2).map_err(pg_error)?;
                Ok(MinuteThroughput {
                    minute: row.try_get(0).map_err(pg_error)?,
                    completed: completed.max(0) as u64,
                    failed: failed.max(0) as u64,
                })
            })
            .collect()
    }
}

/// Folds the counter and throughput deltas into their totals, and forgets
/// throughput older than two days. Exact at every moment: readers add the
/// deltas, and a delta moves into the totals in the same commit that deletes
/// it. Skipped when another node is at it.
async fn rollup(pool: &Pool, lock_scope: &str) -> Result<()> {
    const COUNTS: &str = "
        WITH moved AS (DELETE FROM job_count_deltas RETURNING queue, state, n)
        INSERT INTO job_counts (queue, state, n)
        SELECT queue, state, sum(n) FROM moved GROUP BY queue, state
        ON CONFLICT (queue, state) DO UPDATE SET n = job_counts.n + excluded.n";
    const THROUGHPUT: &str = "
        WITH moved AS (DELETE FROM job_throughput_deltas RETURNING minute, completed, failed)
        INSERT INTO job_throughput (minute, completed, failed)
        SELECT minute, sum(completed), sum(failed) FROM moved GROUP BY minute
        ON CONFLICT (minute) DO UPDATE
            SET completed = job_throughput.completed + excluded.completed,
                failed = job_throughput.failed + excluded.failed";
    const FORGET: &str = "DELETE FROM job_throughput WHERE minute < $1";
    let mut client = pool.get().await.map_err(crate::error::pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let lock = tx
        .prepare_cached("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
        .await
        .map_err(pg_error)?;
    let locked: bool = tx
        .query_one(&lock, &[&ROLLUP_LOCK_CLASS, &lock_scope])
        .await
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)?;
    if !locked {
        return Ok(());
    }
    for sql in [COUNTS, THROUGHPUT] {
        let stmt = tx.prepare_cached(sql).await.map_err(pg_error)?;
        tx.execute(&stmt, &[]).await.map_err(pg_error)?;
    }
    let stmt = tx.prepare_cached(FORGET).await.map_err(pg_error)?;
    tx.execute(&stmt, &[&(chrono::Utc::now() - THROUGHPUT_KEPT)])
        .await
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)
}

/// Starts the rollup task; it ends when `cancel` fires.
pub(crate) fn spawn_rollup(pool: Pool, lock_scope: String, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ROLLUP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = rollup(&pool, &lock_scope).await {
                // Readers add the deltas themselves, so a missed rollup only
                // leaves a little more for the next one.
                tracing::debug!(%error, "counter rollup failed; trying again");
            }
        }
    });
}
