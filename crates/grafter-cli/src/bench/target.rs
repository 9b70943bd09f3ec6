//! What a benchmark runs against: a database of its own (a new SQLite file, or
//! a fresh PostgreSQL schema) that is removed afterwards, and, in HTTP mode, a
//! real `grafter serve` child process on a loopback port.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grafter_postgres::{PostgresConfig, PostgresStore};
use grafter_sqlite::SqliteStore;
use grafter_store::Store;
use tempfile::TempDir;
use tokio_postgres::NoTls;

use crate::Failure;

/// The benchmark's own database.
pub struct Target {
    backend: Backend,
    /// How durable commits are, as the database reports it.
    pub durability: String,
}

enum Backend {
    /// A new file; `_dir` is the temporary directory holding it, if we made one.
    Sqlite {
        path: PathBuf,
        _dir: Option<TempDir>,
    },
    /// A fresh schema in the database at `url`.
    Postgres { url: String, schema: String },
}

/// The SQLite files a database may leave beside it.
fn sqlite_files(path: &std::path::Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

impl Target {
    /// Sets up a database of the benchmark's own for `database` (default: a
    /// SQLite file in a temporary directory) and reads its durability settings.
    pub async fn prepare(database: Option<&str>) -> Result<Target, Failure> {
        let backend = match database {
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("grafter-bench-")
                    .tempdir()?;
                Backend::Sqlite {
                    path: dir.path().join("bench.db"),
                    _dir: Some(dir),
                }
            }
            Some(url) if url.starts_with("sqlite:") => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                if path.is_empty() {
                    return Err(Failure::Message(format!(
                        "{url}: name a file, e.g. sqlite:///tmp/bench.db"
                    )));
                }
                let path = PathBuf::from(path);
                if sqlite_files(&path).iter().any(|p| p.exists()) {
                    return Err(Failure::Message(format!(
                        "{} already exists: the benchmark writes and then deletes its database, \
                         so it only runs on a new file",
                        path.display()
                    )));
                }
                Backend::Sqlite { path, _dir: None }
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let schema = format!(
                    "grafter_bench_{}_{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                );
                Backend::Postgres {
                    url: url.to_owned(),
                    schema,
                }
            }
            Some(url) => {
                return Err(Failure::Message(format!(
                    "unsupported database URL '{url}': use sqlite://PATH or postgres://…"
                )))
            }
        };
        let mut target = Target {
            backend,
            durability: String::new(),
        };
        // Creates the file or schema (and runs migrations), then reads back the
        // settings the product's connections run with.
        target.durability = match &target.backend {
            Backend::Sqlite { path, .. } => {
                let store = SqliteStore::open(path).await?;
                format!("SQLite {}", store.durability().await?)
            }
            Backend::Postgres { url, .. } => {
                drop(target.open_store().await?);
                let client = admin(url).await?;
                let mut settings = Vec::new();
                for name in ["synchronous_commit", "fsync", "full_page_writes"] {
                    let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
                    settings.push(format!("{name}={}", row.get::<_, String>(0)));
                }
                format!("PostgreSQL {}", settings.join(", "))
            }
        };
        Ok(target)
    }

    /// Where the benchmark's jobs live, for the summary.
    pub fn place(&self) -> String {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                format!("SQLite file {} (removed afterwards)", path.display())
            }
            Backend::Postgres { schema, .. } => {
                format!("PostgreSQL schema {schema} (dropped afterwards)")
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// Whether the settings are the product's defaults (SQLite
    /// `synchronous=FULL`, PostgreSQL `synchronous_commit=on` with `fsync=on`).
    pub fn durability_is_default(&self) -> bool {
        match self.backend {
            Backend::Sqlite { .. } => self.durability.contains("synchronous=FULL"),
            Backend::Postgres { .. } => {
                self.durability.contains("synchronous_commit=on")
                    && self.durability.contains("fsync=on")
            }
        }
    }

    /// Opens a store on the benchmark's database, with the product's defaults.
    pub async fn open_store(&self) -> Result<Arc<dyn Store>, Failure> {
        Ok(match &self.backend {
            Backend::Sqlite { path, .. } => Arc::new(SqliteStore::open(path).await?),
            Backend::Postgres { url, schema } => {
                let mut config = PostgresConfig::new(url.clone());
                config.schema = Some(schema.clone());
                Arc::new(PostgresStore::connect(config).await?)
            }
        })
    }

    /// Starts `grafter serve` (this very binary) on the benchmark's database.
    pub async fn serve(&self) -> Result<Server, Failure> {
        Server::start(self).await
    }

    /// Removes the benchmark's database: the SQLite files, or the schema.
    pub async fn remove(self) {
        match self.backend {
            Backend::Sqlite { path, _dir } => {
                for file in sqlite_files(&path) {
                    let _ = std::fs::remove_file(file);
                }
            }
            Backend::Postgres { url, schema } => {
                let dropped = async {
                    let client = admin(&url).await?;
                    client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await?;
                    Ok::<_, Failure>(())
                };
                if let Err(Failure::Message(e)) = dropped.await {
                    eprintln!("warning: could not drop the benchmark schema {schema}: {e}");
                }
            }
        }
    }
}

/// A plain connection for setting up and tearing down.
async fn admin(url: &str) -> Result<tokio_postgres::Client, Failure> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A `grafter serve` child process, killed if dropped.
pub struct Server {
    child: tokio::process::Child,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    _config: Option<tempfile::NamedTempFile>,
}

impl Server {
    async fn start(target: &Target) -> Result<Server, Failure> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        let mut config = None;
        match &target.backend {
            Backend::Sqlite { path, .. } => {
                command
                    .arg("--database")
                    .arg(format!("sqlite://{}", path.display()));
            }
            Backend::Postgres { url, schema } => {
                let mut file = tempfile::Builder::new()
                    .prefix("grafter-bench-")
                    .suffix(".toml")
                    .tempfile()?;
                std::io::Write::write_all(
                    &mut file,
                    format!("[postgres]\nschema = \"{schema}\"\n").as_bytes(),
                )?;
                command
                    .arg("--database")
                    .arg(url)
                    .arg("--config")
                    .arg(file.path());
                config = Some(file);
            }
        }
        for name in [
            "GRAFTER_CONFIG",
            "GRAFTER_TOKEN",
            "GRAFTER_LISTEN",
            "GRAFTER_DATABASE_URL",
        ] {
            command.env_remove(name);
        }
        command
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn()?;
        let server = Server {
            child,
            url,
            _config: config,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&self) -> Result<(), Failure> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(answer) = http.get(format!("{}/readyz", self.url)).send().await {
                if answer.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(Failure::Message(
                    "grafter serve did not become ready within 30 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The server process's resident memory, in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.child
            .id()
            .and_then(|pid| rss_of(&format!("/proc/{pid}/status")))
    }

    /// Stops the server with SIGTERM (its graceful shutdown), or SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Resident memory from a `/proc/…/status` file, in bytes.
pub fn rss_of(status_file: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
