//! The lock that makes one `grafter serve` the owner of a SQLite file.
//!
//! One process owns the file: its writer wakes its own long-polls and event
//! streams after each commit, and its count of limited queues is exact
//! because it makes every change. A second server on the same file would
//! work beside the first without hearing of its commits (a long-poll on one
//! waits out its `wait_ms` while the other enqueues). So `grafter serve`
//! takes this lock first and refuses to start without it.
//!
//! It is an advisory lock (`flock` on Unix) on a sidecar file,
//! `<database>-serve.lock`, never on the database: SQLite's own locks are
//! `fcntl` locks on the database, which any other lock taken on that file
//! by this process could release. The operating system drops the lock with
//! the process, so a `kill -9` never leaves it stale. Nothing else takes
//! it: `grafter migrate`, the benchmark and a Rust application's in-process
//! store open the file beside a server as before (SQLite keeps that safe).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// How often a lock file that a stopping server removed under us is
/// opened again before giving up.
const ATTEMPTS: usize = 5;

/// Held by the one `grafter serve` of a SQLite file; released (and its file
/// removed) on drop, or by the operating system when the process ends.
#[derive(Debug)]
pub struct ServeLock {
    file: File,
    path: PathBuf,
}

impl ServeLock {
    /// Takes the lock of the database at `database` (which need not exist
    /// yet) without waiting. Fails with [`io::ErrorKind::WouldBlock`], and a
    /// message naming the file, the lock file and the holder's process id,
    /// when another process holds it; with the file system's error when the
    /// lock file cannot be created.
    pub fn acquire(database: &Path) -> io::Result<ServeLock> {
        let database = canonical(database)?;
        let mut name = database.file_name().unwrap_or_default().to_owned();
        name.push("-serve.lock");
        let path = database.with_file_name(name);
        for _ in 0..ATTEMPTS {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open the lock file {}: {e}", path.display()),
                    )
                })?;
            // `flock(LOCK_EX | LOCK_NB)` on Linux: per open file, and it dies
            // with the process, so a `kill -9` leaves no stale lock.
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim().parse::<u32>() {
                        Ok(pid) => format!(" (pid {pid})"),
                        Err(_) => String::new(),
                    };
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "another grafter serve{holder} is serving {} (lock file {}): \
                             one server owns a SQLite file; stop it first, or use PostgreSQL \
                             to run several",
                            database.display(),
                            path.display()
                        ),
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot lock {}: {e}", path.display()),
                    ))
                }
            }
            // A server that stopped removes its lock file: if it did so after
            // this opened it, the lock is on a file no one else will open.
            if !still_at(&file, &path) {
                continue;
            }
            // Who holds it, for the message of whoever is refused.
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            return Ok(ServeLock { file, path });
        }
        Err(io::Error::other(format!(
            "cannot lock {}: it was removed {ATTEMPTS} times while being locked",
            path.display()
        )))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ServeLock {
    fn drop(&mut self) {
        // Removed while still locked, so whoever opened it meanwhile finds
        // it gone once it has the lock, and opens the path again.
        if still_at(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The database's path with symbolic links resolved, so two names of one
/// file share a lock: the file's own if it exists, else its directory's.
fn canonical(database: &Path) -> io::Result<PathBuf> {
    if let Ok(path) = database.canonicalize() {
        return Ok(path);
    }
    let name = database.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", database.display()),
        )
    })?;
    let dir = match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = dir.canonicalize().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot find the directory of {}: {e}", database.display()),
        )
    })?;
    Ok(dir.join(name))
}

/// Whether `path` still names the file `file` has open.
#[cfg(unix)]
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Elsewhere a file that is open cannot be removed: it is still there.
#[cfg(not(unix))]
fn still_at(_file: &File, _path: &Path) -> bool {
    true
}
