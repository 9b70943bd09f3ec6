//! Queues: the list, with each queue's settings, job counts and oldest
//! available job, and the settings, pause and push target.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use grafter_core::{JobState, PushTarget, QueueLimits};
use grafter_store::{QueueInfo, QueueLimitsSet, QueuePause, QueuePush, Result};
use tokio_postgres::types::Json;

use crate::db::Db;
use crate::error::pg_error;

impl Db {
    pub(crate) async fn queues_list(&self) -> Result<Vec<QueueInfo>> {
        queue_infos(&self.client().await?, None).await
    }

    pub(crate) async fn queue_set_paused(&self, params: &QueuePause) -> Result<QueueInfo> {
        const UPSERT: &str = "
            INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE
                SET paused = excluded.paused, updated_at = excluded.updated_at";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(UPSERT).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&params.queue, &params.paused, &params.now])
            .await
            .map_err(pg_error)?;
        let info = queue_info(&tx, &params.queue).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(info)
    }

    /// Sets or clears the push target, keeping the queue's other settings.
    pub(crate) async fn queue_set_push(&self, params: &QueuePush) -> Result<QueueInfo> {
        const UPSERT: &str = "
            INSERT INTO queues (name, paused, push, updated_at) VALUES ($1, false, $2, $3)
            ON CONFLICT (name) DO UPDATE
                SET push = excluded.push, updated_at = excluded.updated_at";
        let push = params.push.as_ref().map(Json);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(UPSERT).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&params.queue, &push, &params.now])
            .await
            .map_err(pg_error)?;
        let info = queue_info(&tx, &params.queue).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(info)
    }

    /// Sets or clears the limits, keeping the queue's other settings, and
    /// records the change in [`Db::limited`] once it has committed.
    pub(crate) async fn queue_set_limits(&self, params: &QueueLimitsSet) -> Result<QueueInfo> {
        const UPSERT: &str = "
            INSERT INTO queues (name, paused, limits, updated_at) VALUES ($1, false, $2, $3)
            ON CONFLICT (name) DO UPDATE
                SET limits = excluded.limits, updated_at = excluded.updated_at";
        let limits = params.limits.as_ref().map(Json);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(UPSERT).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&params.queue, &limits, &params.now])
            .await
            .map_err(pg_error)?;
        let info = queue_info(&tx, &params.queue).await?;
        tx.commit().await.map_err(pg_error)?;
        self.limited.set(&params.queue, params.limits.is_some());
        self.seen(&params.queue, params.limits.as_ref());
        Ok(info)
    }
}

/// Every queue with settings or jobs (or only `only`): settings, job counts per
/// state, and the `run_at` of the longest-waiting available job. Separate
/// statements for one queue, so that each can use the queue's indexes.
async fn queue_infos(client: &impl GenericClient, only: Option<&str>) -> Result<Vec<QueueInfo>> {
    const SETTINGS_ALL: &str = "SELECT name, paused, push, limits FROM queues";
    const SETTINGS_ONE: &str = "SELECT name, paused, push, limits FROM queues WHERE name = $1";
    // Kept by triggers (migration 0004): the totals plus the deltas not yet
    // rolled into them, so the jobs table is never counted.
    const COUNTS_ALL: &str = "
        SELECT queue, state, sum(n)::bigint FROM (
            SELECT queue, state, n FROM job_counts
            UNION ALL SELECT queue, state, n FROM job_count_deltas) AS c
        GROUP BY queue, state HAVING sum(n) > 0";
    const COUNTS_ONE: &str = "
        SELECT queue, state, sum(n)::bigint FROM (
            SELECT queue, state, n FROM job_counts WHERE queue = $1
            UNION ALL SELECT queue, state, n FROM job_count_deltas WHERE queue = $1) AS c
        GROUP BY queue, state HAVING sum(n) > 0";
    // The fetch index is (queue, priority, run_at): the oldest available job is
    // the oldest of each priority's first entry. Skipping from one priority to
    // the next reads a few index entries, however many jobs wait.
    const OLDEST: &str = "
        WITH RECURSIVE p(priority) AS (
            SELECT min(priority) FROM jobs WHERE state = 'available' AND queue = $1
            UNION ALL
            SELECT (SELECT min(priority) FROM jobs
                    WHERE state = 'available' AND queue = $1 AND priority > p.priority)
            FROM p WHERE p.priority IS NOT NULL)
        SELECT min((SELECT min(run_at) FROM jobs
                    WHERE state = 'available' AND queue = $1 AND priority = p.priority))
        FROM p WHERE p.priority IS NOT NULL";
    let query = |all: &'static str, one: &'static str| async move {
        let rows = match only {
            None => {
                let stmt = client.prepare_cached(all).await.map_err(pg_error)?;
                client.query(&stmt, &[]).await
            }
            Some(queue) => {
                let stmt = client.prepare_cached(one).await.map_err(pg_error)?;
                client.query(&stmt, &[&queue]).await
            }
        };
        rows.map_err(pg_error)
    };
    let mut queues: BTreeMap<String, QueueInfo> = BTreeMap::new();
    for row in query(SETTINGS_ALL, SETTINGS_ONE).await? {
        let name: String = row.try_get(0).map_err(pg_error)?;
        let mut info = QueueInfo::empty(name.clone(), row.try_get(1).map_err(pg_error)?);
        let push: Option<Json<PushTarget>> = row.try_get(2).map_err(pg_error)?;
        info.push = push.map(|Json(p)| p);
        let limits: Option<Json<QueueLimits>> = row.try_get(3).map_err(pg_error)?;
        info.limits = limits.map(|Json(l)| l);
        queues.insert(name, info);
    }
    for row in query(COUNTS_ALL, COUNTS_ONE).await? {
        let queue: String = row.try_get(0).map_err(pg_error)?;
        let state: String = row.try_get(1).map_err(pg_error)?;
        let count: i64 = row.try_get(2).map_err(pg_error)?;
        let Ok(state) = state.parse::<JobState>() else {
            continue;
        };
        queues
            .entry(queue.clone())
            .or_insert_with(|| QueueInfo::empty(queue, false))
            .counts
            .insert(state, count.max(0) as u64);
    }
    let stmt = client.prepare_cached(OLDEST).await.map_err(pg_error)?;
    for info in queues
        .values_mut()
        .filter(|q| q.counts[&JobState::Available] > 0)
    {
        let row = client
            .query_one(&stmt, &[&info.name])
            .await
            .map_err(pg_error)?;
        info.oldest_available_at = row.try_get(0).map_err(pg_error)?;
    }
    Ok(queues.into_values().collect())
}

/// One queue's [`QueueInfo`]; an unknown queue is empty and not paused.
pub(crate) async fn queue_info(client: &impl GenericClient, name: &str) -> Result<QueueInfo> {
    Ok(queue_infos(client, Some(name))
        .await?
        .pop()
        .unwrap_or_else(|| QueueInfo::empty(name.to_owned(), false)))
}
