//! Numbered migrations, applied in order on open, each in its own transaction.

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
];

/// Brings the schema up to date.
pub fn apply(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS grafter_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )?;
    for &(version, sql) in MIGRATIONS {
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
