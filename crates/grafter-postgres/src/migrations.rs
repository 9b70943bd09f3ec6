//! Numbered migrations, applied in order in one transaction under an advisory
//! lock, so that several nodes starting at once neither race nor half-apply.

use deadpool_postgres::Object;
use grafter_store::Result;
use tokio_postgres::types::ToSql;

use crate::error::pg_error_in;
use crate::Schema;

/// (version, SQL). Append only: a released migration never changes.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_jobs.sql")),
    (2, include_str!("../migrations/0002_workers.sql")),
    (
        3,
        include_str!("../migrations/0003_push_leaders_pruning.sql"),
    ),
    (4, include_str!("../migrations/0004_dashboard.sql")),
    (
        5,
        include_str!("../migrations/0005_lean_partial_indexes.sql"),
    ),
    (
        6,
        include_str!("../migrations/0006_counts_trigger_hash_join.sql"),
    ),
    (
        7,
        include_str!("../migrations/0007_fewer_index_entries.sql"),
    ),
    (
        8,
        include_str!("../migrations/0008_throughput_only_after_running.sql"),
    ),
    (9, include_str!("../migrations/0009_args_bytes.sql")),
    (10, include_str!("../migrations/0010_enqueue_function.sql")),
    (11, include_str!("../migrations/0011_schedules.sql")),
    (12, include_str!("../migrations/0012_limits.sql")),
    (13, include_str!("../migrations/0013_jobs_of_schedule.sql")),
    (14, include_str!("../migrations/0014_job_events.sql")),
    (15, include_str!("../migrations/0015_batches.sql")),
    (16, include_str!("../migrations/0016_tokens_audit.sql")),
    (17, include_str!("../migrations/0017_trace_context.sql")),
    (18, include_str!("../migrations/0018_dependencies.sql")),
    (19, include_str!("../migrations/0019_batch_events.sql")),
    (20, include_str!("../migrations/0020_batch_burn_down.sql")),
    (
        21,
        include_str!("../migrations/0021_batch_and_sql_dependencies.sql"),
    ),
    (
        22,
        include_str!("../migrations/0022_counts_by_the_moving_statement.sql"),
    ),
    (23, include_str!("../migrations/0023_dependency_depth.sql")),
    (
        24,
        include_str!("../migrations/0024_cancelled_batch_never_succeeds.sql"),
    ),
    (
        25,
        include_str!("../migrations/0025_sql_link_marks_each_upstream_once.sql"),
    ),
    (
        26,
        include_str!("../migrations/0026_queue_names_not_dot_segments.sql"),
    ),
    (
        27,
        include_str!("../migrations/0027_sql_link_locks_upstreams_in_id_order.sql"),
    ),
    (
        28,
        include_str!("../migrations/0028_args_nested_at_most_124_deep.sql"),
    ),
];

/// The newest migration this build knows.
const LATEST: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// First key of the advisory lock (the second is the schema's hash), so the lock
/// does not collide with an application's own advisory locks by accident.
/// The bytes spell "grft".
const LOCK_CLASS: i32 = 0x6772_6674;

/// Brings `schema` up to date; returns the versions applied by this call.
pub(crate) async fn apply(client: &mut Object, schema: &Schema) -> Result<Vec<i32>> {
    let context = |doing: &'static str| move |e| pg_error_in(doing, e);
    let tx = client
        .transaction()
        .await
        .map_err(context("starting the migration"))?;
    // Held until commit. Other nodes block here (however long a migration
    // takes: no `LOCK_TIMEOUT`), then find every version applied. The schema
    // is part of the key: migrating one schema does not hold up another.
    tx.batch_execute("SET LOCAL lock_timeout = 0")
        .await
        .map_err(context("lifting the lock timeout"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[
            &LOCK_CLASS as &(dyn ToSql + Sync),
            &schema.name().unwrap_or(""),
        ],
    )
    .await
    .map_err(context("taking the migration lock"))?;
    if let Some(quoted) = schema.quoted() {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted}; SET LOCAL search_path TO {quoted}"
        ))
        .await
        .map_err(context("creating the schema"))?;
    }
    // The enqueue function (migration 10) notifies the channel the nodes
    // listen on, which only the configuration can tell.
    tx.execute(
        "SELECT set_config('grafter.notify_channel', $1, true)",
        &[&schema.channel()],
    )
    .await
    .map_err(context("setting the notification channel"))?;
    // Migration 14's trigger notifies the channel of live events.
    tx.execute(
        "SELECT set_config('grafter.events_channel', $1, true)",
        &[&schema.events_channel()],
    )
    .await
    .map_err(context("setting the events channel"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS grafter_migrations (
            version    integer     PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(context("creating grafter_migrations"))?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM grafter_migrations", &[])
        .await
        .map_err(context("reading grafter_migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    // Under the lock, so a newer node's migration is either all seen or not
    // begun: an older node never applies its migrations beside it.
    refuse_unknown(&done)?;
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(context("applying a migration"))?;
        tx.execute(
            "INSERT INTO grafter_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(context("recording a migration"))?;
        tracing::info!(
            version,
            schema = schema.name(),
            "applied PostgreSQL migration"
        );
        applied.push(version);
    }
    tx.commit()
        .await
        .map_err(context("committing migrations"))?;
    Ok(applied)
}

/// The migrations this build knows that the store's schema has not applied
/// (all of them when it has no `grafter_migrations` yet); fails when the
/// schema records a migration this build does not know. For a node that
/// does not migrate on connect.
pub(crate) async fn pending(client: &Object) -> Result<Vec<i32>> {
    let context = |doing: &'static str| move |e| pg_error_in(doing, e);
    let rows = client
        .query("SELECT version FROM grafter_migrations", &[])
        .await;
    let done: Vec<i32> = match rows {
        Ok(rows) => rows.iter().map(|row| row.get(0)).collect(),
        // Not created yet: not migrated at all.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) => return Err(context("reading grafter_migrations")(e)),
    };
    refuse_unknown(&done)?;
    Ok(MIGRATIONS
        .iter()
        .map(|&(version, _)| version)
        .filter(|version| !done.contains(version))
        .collect())
}

/// Fails if `done` holds a version this build does not know
/// ([`grafter_store::schema::refuse_unknown_versions`]).
fn refuse_unknown(done: &[i32]) -> Result<()> {
    grafter_store::schema::refuse_unknown_versions(
        done.iter().map(|&v| i64::from(v)),
        i64::from(LATEST),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `refuse_unknown_versions` takes for granted: the versions are 1
    /// to `LATEST`, each once, so any outside that range is unknown.
    #[test]
    fn versions_run_from_one_without_gaps() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, (1..=LATEST).collect::<Vec<_>>());
    }
}
