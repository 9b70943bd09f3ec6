//! Numbered migrations, applied in order on open, each in its own transaction.

use grafter_store::StoreError;
use rusqlite::Connection;

/// (version, SQL). Append only: a released migration never changes.
const MIGRATIONS: &[(i64, &str)] = &[
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
        include_str!("../migrations/0006_fewer_index_entries.sql"),
    ),
    (
        7,
        include_str!("../migrations/0007_hot_moves_counted_by_their_statements.sql"),
    ),
    (
        8,
        include_str!("../migrations/0008_job_ids_never_reused.sql"),
    ),
    (9, include_str!("../migrations/0009_schedules.sql")),
    (10, include_str!("../migrations/0010_limits.sql")),
    (11, include_str!("../migrations/0011_jobs_of_schedule.sql")),
    (12, include_str!("../migrations/0012_job_events.sql")),
    (13, include_str!("../migrations/0013_batches.sql")),
    (14, include_str!("../migrations/0014_tokens_audit.sql")),
    (15, include_str!("../migrations/0015_trace_context.sql")),
    (16, include_str!("../migrations/0016_dependencies.sql")),
    (17, include_str!("../migrations/0017_batch_events.sql")),
    (
        18,
        include_str!("../migrations/0018_batch_counts_per_statement.sql"),
    ),
    (
        19,
        include_str!("../migrations/0019_batch_dependencies.sql"),
    ),
    (20, include_str!("../migrations/0020_dependency_depth.sql")),
    (
        21,
        include_str!("../migrations/0021_cancelled_batch_never_succeeds.sql"),
    ),
    (
        22,
        include_str!("../migrations/0022_counts_add_up_in_any_trigger_order.sql"),
    ),
];

/// The newest migration this build knows.
pub const LATEST: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Brings the schema up to date. Refuses (`Invalid`, changing nothing) a
/// database that records a migration this build does not know: one a later
/// release applied, or a version no release has.
pub fn apply(conn: &mut Connection) -> grafter_store::Result<()> {
    let sqlite = |e: rusqlite::Error| StoreError::Backend(format!("migrating: {e}"));
    create_table(conn).map_err(sqlite)?;
    refuse_unknown(conn)?;
    apply_up_to(conn, i64::MAX).map_err(sqlite)
}

/// The newest migration applied.
pub fn schema_version(conn: &Connection) -> grafter_store::Result<i64> {
    conn.query_row(
        "SELECT coalesce(max(version), 0) FROM grafter_migrations",
        [],
        |row| row.get(0),
    )
    .map_err(crate::error::backend)
}

fn create_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS grafter_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )
}

/// Fails if `grafter_migrations` records a version this build does not
/// know ([`grafter_store::schema::refuse_unknown_versions`]).
fn refuse_unknown(conn: &Connection) -> grafter_store::Result<()> {
    let recorded = conn
        .prepare("SELECT version FROM grafter_migrations")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()
        })
        .map_err(|e| StoreError::Backend(format!("reading grafter_migrations: {e}")))?;
    grafter_store::schema::refuse_unknown_versions(recorded, LATEST)
}

/// Applies the migrations up to and including `last`: all of them on open;
/// fewer in tests, to make a database as an older release left it.
fn apply_up_to(conn: &mut Connection, last: i64) -> rusqlite::Result<()> {
    create_table(conn)?;
    for &(version, sql) in MIGRATIONS
        .iter()
        .take_while(|(version, _)| *version <= last)
    {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let applied: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM grafter_migrations WHERE version = ?1)",
            [version],
            |row| row.get(0),
        )?;
        if !applied {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO grafter_migrations (version, applied_at) VALUES (?1, ?2)",
                [version, chrono::Utc::now().timestamp_micros()],
            )?;
            tracing::info!(version, "applied SQLite migration");
        }
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `refuse_unknown_versions` takes for granted: the versions are 1
    /// to `LATEST`, each once, so any outside that range is unknown.
    #[test]
    fn versions_run_from_one_without_gaps() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, (1..=LATEST).collect::<Vec<_>>());
    }

    /// The indexes and triggers on `jobs`, each as (type, name, SQL with its
    /// white space folded).
    fn jobs_schema(conn: &Connection) -> Vec<(String, String, String)> {
        let mut stmt = conn
            .prepare(
                "SELECT type, name, sql FROM sqlite_master
                 WHERE tbl_name = 'jobs' AND type IN ('index', 'trigger') AND sql IS NOT NULL
                 ORDER BY type, name",
            )
            .unwrap();
        stmt.query_map([], |row| {
            let sql: String = row.get(2)?;
            Ok((
                row.get(0)?,
                row.get(1)?,
                sql.split_whitespace().collect::<Vec<_>>().join(" "),
            ))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    /// Every row of a table, as text, in a stable order.
    fn dump(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .unwrap();
        let columns = stmt.column_count();
        stmt.query_map([], |row| {
            (0..columns)
                .map(|i| {
                    row.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(|values| values.join("|"))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    fn insert_job(conn: &Connection, queue: &str, tags: &str) -> i64 {
        conn.query_row(
            "INSERT INTO jobs (queue, kind, args, state, run_at, max_attempts, tags, created_at)
             VALUES (?1, 'k', '{}', 'available', 1, 25, ?2, 1) RETURNING id",
            [queue, tags],
            |row| row.get(0),
        )
        .unwrap()
    }

    /// A database as release 7 left it, upgraded: its jobs, counters, tag rows,
    /// indexes and triggers come through unchanged, and ids go on from the
    /// largest one in the table and are never handed out again.
    #[test]
    fn the_upgrade_to_never_reused_ids_keeps_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("grafter.db")).unwrap();
        apply_up_to(&mut conn, 7).unwrap();
        for (queue, tags) in [("a", r#"["x"]"#), ("a", "[]"), ("b", r#"["x","y"]"#)] {
            insert_job(&conn, queue, tags);
        }
        let deleted = insert_job(&conn, "b", r#"["z"]"#);
        conn.execute("DELETE FROM jobs WHERE id = ?1", [deleted])
            .unwrap();
        conn.execute("UPDATE jobs SET state = 'dead' WHERE id = 1", [])
            .unwrap();
        let schema = jobs_schema(&conn);
        let before: Vec<Vec<String>> = ["jobs", "job_counts", "job_tags"]
            .iter()
            .map(|table| dump(&conn, table))
            .collect();

        // Up to migration 8, the upgrade this case is about (later ones add
        // columns, which the dump would show).
        apply_up_to(&mut conn, 8).unwrap();

        assert_eq!(jobs_schema(&conn), schema, "indexes and triggers as before");
        let after: Vec<Vec<String>> = ["jobs", "job_counts", "job_tags"]
            .iter()
            .map(|table| dump(&conn, table))
            .collect();
        assert_eq!(after, before, "rows, counters and tags as before");
        let table: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(table.contains("AUTOINCREMENT"), "{table}");

        // The id deleted before the upgrade was recorded nowhere, so ids go on
        // from the largest one left; after the upgrade none comes twice.
        let next = insert_job(&conn, "b", r#"["z"]"#);
        assert_eq!(next, deleted);
        conn.execute("DELETE FROM jobs WHERE id = ?1", [next])
            .unwrap();
        assert_eq!(insert_job(&conn, "b", "[]"), next + 1);
        // The triggers still keep the counters and tag rows.
        let b_available: i64 = conn
            .query_row(
                "SELECT n FROM job_counts WHERE queue = 'b' AND state = 'available'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(b_available, 2);
        let z_tags: i64 = conn
            .query_row("SELECT count(*) FROM job_tags WHERE tag = 'z'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(z_tags, 0);
    }

    /// Counts per queue and state as the triggers keep them (without the
    /// zeros a job moving on leaves behind) and as the jobs table has them.
    fn counts_kept_and_counted(conn: &Connection) -> (Vec<String>, Vec<String>) {
        let read = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |row| {
                Ok(format!(
                    "{}|{}|{}",
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
        };
        (
            read("SELECT queue, state, n FROM job_counts WHERE n <> 0 ORDER BY 1, 2"),
            read("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state ORDER BY 1, 2"),
        )
    }

    /// A cancelled dependent in `queue`, its upstream unfinished, made
    /// available by hand: a trigger moves it on to pending.
    fn retry_a_waiting_dependent(conn: &Connection, queue: &str) {
        let upstream = insert_job(conn, "upstreams", "[]");
        let dependent: i64 = conn
            .query_row(
                "INSERT INTO jobs (queue, kind, args, state, run_at, max_attempts, tags, created_at,
                                   finished_at, deps_left)
                 VALUES (?1, 'k', '{}', 'cancelled', 1, 25, '[]', 1, 1, 1) RETURNING id",
                [queue],
                |row| row.get(0),
            )
            .unwrap();
        conn.execute(
            "UPDATE jobs SET has_dependents = 1 WHERE id = ?1",
            [upstream],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO job_dependencies (depends_on, job_id) VALUES (?1, ?2)",
            [upstream, dependent],
        )
        .unwrap();
        conn.execute(
            "UPDATE jobs SET state = 'available', finished_at = NULL WHERE id = ?1",
            [dependent],
        )
        .unwrap();
        let state: String = conn
            .query_row("SELECT state FROM jobs WHERE id = ?1", [dependent], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(state, "pending");
    }

    /// Counts that drifted under the trigger order before migration 22 (a
    /// retried dependent counted as available and pending at once, in a
    /// queue without available jobs) are counted again by the upgrade, and
    /// the same move keeps them exact after it.
    #[test]
    fn the_upgrade_recounts_drifted_queue_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("grafter.db")).unwrap();
        // As on the writer connection: the dependency triggers call it (to
        // wake waiters, of whom there are none here) and nest.
        conn.create_scalar_function(
            "grafter_released",
            1,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8,
            |_| Ok(true),
        )
        .unwrap();
        conn.pragma_update(None, "recursive_triggers", "ON")
            .unwrap();
        apply_up_to(&mut conn, 21).unwrap();
        retry_a_waiting_dependent(&conn, "before");
        let (kept, counted) = counts_kept_and_counted(&conn);
        assert_ne!(kept, counted, "drifted before the upgrade");

        apply_up_to(&mut conn, 22).unwrap();
        let (kept, counted) = counts_kept_and_counted(&conn);
        assert_eq!(kept, counted, "counted again by the upgrade");
        retry_a_waiting_dependent(&conn, "after");
        let (kept, counted) = counts_kept_and_counted(&conn);
        assert_eq!(kept, counted, "and kept exact after it");
    }
}
