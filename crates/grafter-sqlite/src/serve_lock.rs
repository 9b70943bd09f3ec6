//! The lock that makes one `grafter serve` the owner of a SQLite file.
//!
//! One process owns the file: its writer wakes its own long-polls and event
//! streams after each commit, and its count of limited queues is exact
//! because it makes every change. A second server on the same file would
//! work beside the first without hearing of its commits (a long-poll on one
//! waits out its `wait_ms` while the other enqueues). So `grafter serve`
//! takes this lock first and refuses to start without it.
//!
//! It is an advisory `flock` on the database file itself, so every name of
//! the file (a symbolic link, a hard link, a relative path) meets the same
//! lock. SQLite's own locks are `fcntl` locks, which Linux keeps apart from
//! `flock` ones, so the two never meet; but closing any descriptor of the
//! file releases this process's `fcntl` locks on it, so the lock's
//! descriptor must stay open while a store of the file is open in the
//! process (`grafter serve` holds it to the end). The operating system drops
//! the lock with the process, so a `kill -9` never leaves it stale. Nothing
//! else takes it: `grafter migrate`, the benchmark and a Rust application's
//! in-process store open the file beside a server as before (SQLite keeps
//! that safe).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Held by the one `grafter serve` of a SQLite file; released when dropped
/// (see the module's note on when that may be) or when the process ends.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
    path: PathBuf,
}

impl ServeLock {
    /// Takes the lock of the database at `database` without waiting,
    /// creating the (empty) file if it does not exist yet, as SQLite would.
    /// Fails with [`io::ErrorKind::WouldBlock`] and a message naming the
    /// file when another open of it holds the lock; with the file system's
    /// error when the file cannot be opened.
    pub fn acquire(database: &Path) -> io::Result<ServeLock> {
        let cannot = |e: io::Error| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", database.display()))
        };
        // Read access is all a lock needs; the file is created (through a
        // symbolic link, at its target) only when missing.
        let file = match File::open(database) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(database)
                .and_then(|_| File::open(database))
                .map_err(cannot)?,
            opened => opened.map_err(cannot)?,
        };
        let path = database
            .canonicalize()
            .unwrap_or_else(|_| database.to_owned());
        // `flock(LOCK_EX | LOCK_NB)` on Linux: per open file description.
        match file.try_lock() {
            Ok(()) => Ok(ServeLock { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another grafter serve is serving {}: one server owns a SQLite file; \
                     stop it first, or use PostgreSQL to run several",
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(io::Error::new(
                e.kind(),
                format!("cannot lock {}: {e}", path.display()),
            )),
        }
    }

    /// The database file, its symbolic links resolved.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
