//! Opening a file: one whose schema this build does not know is refused
//! untouched, and the serve lock lets one server own a file.

use std::io::ErrorKind;
use std::path::Path;

use grafter_sqlite::{ServeLock, SqliteStore};
use grafter_store::StoreError;

/// Every row of `grafter_migrations`, as (version, applied_at).
fn migrations(path: &Path) -> Vec<(i64, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT version, applied_at FROM grafter_migrations ORDER BY version")
        .unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Migrates a new database at `path`; returns this build's newest version.
async fn migrated(path: &Path) -> i64 {
    drop(SqliteStore::open(path).await.unwrap());
    migrations(path).last().unwrap().0
}

/// Records `version` as applied, behind the store's back.
fn record(path: &Path, version: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO grafter_migrations (version, applied_at) VALUES (?1, 0)",
        [version],
    )
    .unwrap();
}

async fn refusal(path: &Path) -> String {
    match SqliteStore::open(path).await {
        Ok(_) => panic!("{} opened", path.display()),
        Err(StoreError::Invalid(message)) => message,
        Err(other) => panic!("refused, but not as Invalid: {other:?}"),
    }
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    for (name, newer) in [("next.db", 0), ("far.db", 99), ("max.db", i64::MAX)] {
        let path = dir.path().join(name);
        let latest = migrated(&path).await;
        // 0 stands for the very next version; the others are further on.
        let newer = if newer == 0 { latest + 1 } else { newer };
        record(&path, newer);
        let before = migrations(&path);

        let message = refusal(&path).await;
        let expected = format!(
            "the database's schema is at version {newer}, newer than this grafter's {latest}"
        );
        assert!(message.contains(&expected), "{message}");
        assert!(message.contains("upgrade grafter"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert_eq!(migrations(&path), before, "nothing recorded or removed");
    }
}

#[tokio::test]
async fn a_version_no_release_has_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, junk) in [("zero.db", 0), ("minus.db", -1), ("min.db", i64::MIN)] {
        let path = dir.path().join(name);
        let latest = migrated(&path).await;
        record(&path, junk);
        let before = migrations(&path);
        let message = refusal(&path).await;
        let expected = format!(
            "the database records schema version {junk}, which no grafter release has \
             (this one knows 1 to {latest})"
        );
        assert!(message.contains(&expected), "{message}");
        assert_eq!(migrations(&path), before);
    }
}

/// A database an older release left, short of this build's migrations, is
/// still brought up to date; one this build wrote opens again as it is.
#[tokio::test]
async fn known_versions_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    drop(SqliteStore::open(&path).await.unwrap());
    let all = migrations(&path);
    drop(SqliteStore::open(&path).await.unwrap());
    assert_eq!(migrations(&path), all, "reopened as it was");
    assert_eq!(
        all.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (1..=all.len() as i64).collect::<Vec<_>>(),
        "versions 1 to the latest, each once"
    );
}

/// One lock per file, whatever names it: the path given, a relative one,
/// a symbolic link (dangling too: the file is created at its target) and a
/// hard link; released on drop.
#[test]
fn one_serve_lock_per_file_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    // The database need not exist yet: serve takes the lock before opening.
    let first = ServeLock::acquire(&path).unwrap();
    assert_eq!(first.path(), path.canonicalize().unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "created empty");

    // Another open file description is refused, as another process is.
    let refused = ServeLock::acquire(&path).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::WouldBlock);
    let message = refused.to_string();
    assert!(
        message.contains(&format!(
            "another grafter serve is serving {}",
            path.canonicalize().unwrap().display()
        )),
        "{message}"
    );

    #[cfg(unix)]
    {
        let symlink = dir.path().join("link.db");
        std::os::unix::fs::symlink(&path, &symlink).unwrap();
        let hard = dir.path().join("hard.db");
        std::fs::hard_link(&path, &hard).unwrap();
        let relative = dir.path().join(".").join("g.db");
        for name in [&symlink, &hard, &relative] {
            let refused = ServeLock::acquire(name).unwrap_err();
            assert_eq!(refused.kind(), ErrorKind::WouldBlock, "{name:?}: {refused}");
        }
    }

    drop(first);
    let again = ServeLock::acquire(&path).expect("free once released");
    drop(again);

    // A link to a file that does not exist yet locks the file it will be.
    #[cfg(unix)]
    {
        let target = dir.path().join("later.db");
        let dangling = dir.path().join("dangling.db");
        std::os::unix::fs::symlink(&target, &dangling).unwrap();
        let _held = ServeLock::acquire(&dangling).unwrap();
        assert!(target.exists(), "created at the link's target");
        let refused = ServeLock::acquire(&target).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::WouldBlock, "{refused}");
    }

    // A directory that does not exist is named.
    let error = ServeLock::acquire(&dir.path().join("missing/g.db")).unwrap_err();
    assert!(error.to_string().contains("missing/g.db"), "{error}");
}

/// The lock is no obstacle to anyone else opening the file: `grafter
/// migrate`, the benchmark and an application's in-process store open it
/// beside a server.
#[tokio::test]
async fn the_serve_lock_blocks_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let _lock = ServeLock::acquire(&path).unwrap();
    let store = SqliteStore::open(&path)
        .await
        .expect("opens beside the lock");
    drop(store);
    drop(SqliteStore::open(&path).await.expect("and again"));
}
