//! What `grafter serve` and `grafter migrate` refuse to open, with the real
//! binary: a schema this build does not know (a later release's, or a
//! version no release has) on SQLite and PostgreSQL, a PostgreSQL schema not
//! yet migrated by a node told not to migrate, `sslmode=require` (there is
//! no TLS to give it), an in-memory SQLite database,
//! and a SQLite file another `grafter serve` is already serving; and that
//! `grafter migrate` migrates the database its config file names.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use common::{
    connect, free_port, grafter, http_client, id_of, output_text, run_cli, schema_setup,
    skip_or_fail, temp_dir, Server, FAST_CONFIG, PATIENCE,
};

/// `grafter serve --database <database> [--config <config>]` on a free port:
/// `Err` with its stderr when it exits (which must then be non-zero), or
/// the running child once `/livez` answers.
async fn serve(
    database: &str,
    config: Option<&Path>,
    cwd: &Path,
) -> Result<tokio::process::Child, String> {
    let port = free_port();
    let mut command = tokio::process::Command::from(grafter());
    command
        .args(["serve", "--database", database])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command.spawn().expect("spawn grafter serve");
    let http = http_client();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let output = child.wait_with_output().await.expect("its output");
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(!output.status.success(), "exited 0: {stderr}");
            return Err(stderr);
        }
        let livez = http
            .get(format!("http://127.0.0.1:{port}/livez"))
            .send()
            .await;
        if livez.is_ok_and(|r| r.status().is_success()) {
            return Ok(child);
        }
        assert!(Instant::now() < deadline, "neither started nor refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `grafter migrate --database <database> [--config <config>]`: whether it
/// succeeded, and its stdout and stderr together.
async fn migrate(database: &str, config: Option<&Path>, cwd: &Path) -> (bool, String) {
    let mut args = vec!["migrate", "--database", database];
    let config = config.map(|c| c.display().to_string());
    if let Some(config) = &config {
        args.extend(["--config", config]);
    }
    let out = run_cli(&args, cwd).await;
    let text = output_text(&out);
    (out.status.success(), text)
}

/// Runs SQL on a SQLite file behind Grafter's back (with Python's sqlite3,
/// as this crate has no SQLite driver of its own); `false` after
/// [`skip_or_fail`] when Python cannot run here.
fn sqlite_exec(path: &Path, sql: &str) -> bool {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.executescript(sys.argv[2])\n\
             c.commit()",
        ])
        .arg(path)
        .arg(sql)
        .output();
    match output {
        Ok(output) => {
            assert!(
                output.status.success(),
                "python3 sqlite3: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            true
        }
        Err(e) => {
            skip_or_fail(&format!("cannot run python3 ({e})"));
            false
        }
    }
}

/// The newest version `grafter migrate` records in a new SQLite file.
async fn latest_sqlite_version(cwd: &Path) -> i64 {
    let path = cwd.join("fresh.db");
    let (ok, text) = migrate(&format!("sqlite://{}", path.display()), None, cwd).await;
    assert!(ok, "{text}");
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             print(sqlite3.connect(sys.argv[1]).execute(\
             'SELECT max(version) FROM grafter_migrations').fetchone()[0])",
        ])
        .arg(&path)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a version")
}

#[tokio::test]
async fn a_sqlite_schema_this_build_does_not_know_is_refused_by_serve_and_migrate() {
    let dir = temp_dir();
    let cwd = dir.path();
    if !sqlite_exec(&cwd.join("probe.db"), "SELECT 1") {
        return;
    }
    let latest = latest_sqlite_version(cwd).await;
    for (version, expected) in [
        (
            99,
            format!(
                "the database's schema is at version 99, newer than this grafter's {latest} \
                 (a later release migrated it): upgrade grafter"
            ),
        ),
        (
            i64::MAX,
            format!("the database's schema is at version {}", i64::MAX),
        ),
        (
            -1,
            format!(
                "the database records schema version -1, which no grafter release has \
                 (this one knows 1 to {latest})"
            ),
        ),
    ] {
        let path = cwd.join(format!("v{version}.db"));
        let database = format!("sqlite://{}", path.display());
        let (ok, text) = migrate(&database, None, cwd).await;
        assert!(ok, "{text}");
        assert!(sqlite_exec(
            &path,
            &format!("INSERT INTO grafter_migrations VALUES ({version}, 0)")
        ));

        let (ok, text) = migrate(&database, None, cwd).await;
        assert!(!ok, "migrate accepted version {version}: {text}");
        assert!(
            text.contains(&format!("error: cannot migrate {database}: "))
                && text.contains(&expected),
            "{text}"
        );
        let refusal = serve(&database, None, cwd)
            .await
            .expect_err("serve refuses it");
        assert!(
            refusal.contains(&format!("error: cannot open database {database}: "))
                && refusal.contains(&expected),
            "{refusal}"
        );
    }
}

#[tokio::test]
async fn a_node_told_not_to_migrate_refuses_an_unmigrated_schema_until_migrate_runs_on_the_files_database(
) {
    let Some(setup) = schema_setup().await else {
        return;
    };
    let cwd = setup.dir.path();
    // The deploy the README describes: the database in the file, nodes
    // that do not migrate, `grafter migrate` run first.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let deploy = cwd.join("deploy.toml");
    std::fs::write(
        &deploy,
        format!("database = \"{}\"\n{text}migrate = false\n", setup.url),
    )
    .unwrap();
    let refusal = serve(&setup.url, Some(&deploy), cwd)
        .await
        .expect_err("an unmigrated schema is refused");
    assert!(
        refusal.contains("lacks migrations") && refusal.contains("run `grafter migrate`"),
        "{refusal}"
    );
    let deploy_arg = deploy.display().to_string();
    let out = run_cli(&["migrate", "--config", &deploy_arg], cwd).await;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("applied migrations"), "{text}");
    assert!(
        !cwd.join("grafter.db").exists(),
        "the file's database was migrated, not a SQLite file beside it"
    );
    let mut server = serve(&setup.url, Some(&deploy), cwd)
        .await
        .expect("serves once migrated");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn sslmode_require_is_refused_saying_there_is_no_tls() {
    let Some(setup) = schema_setup().await else {
        return;
    };
    let separator = if setup.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}sslmode=require", setup.url);
    let refusal = serve(&url, Some(&setup.config), setup.dir.path())
        .await
        .expect_err("no TLS to give it");
    assert!(
        refusal.contains("sslmode=require") && refusal.contains("without TLS"),
        "{refusal}"
    );
}

#[tokio::test]
async fn an_in_memory_sqlite_database_is_refused() {
    let dir = temp_dir();
    let refusal = serve("sqlite://:memory:", None, dir.path())
        .await
        .expect_err("nothing could be served from it");
    assert!(
        refusal.contains("in-memory database") && refusal.contains("sqlite://PATH"),
        "{refusal}"
    );
}

#[tokio::test]
async fn a_postgres_schema_this_build_does_not_know_is_refused_by_serve_and_migrate() {
    let Some(setup) = schema_setup().await else {
        return;
    };
    let cwd = setup.dir.path();
    let config = setup.config.as_path();
    // The same, for a node that does not migrate on start.
    let no_migrate = cwd.join("no-migrate.toml");
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(&no_migrate, format!("{text}migrate = false\n")).unwrap();
    let (ok, text) = migrate(&setup.url, Some(config), cwd).await;
    assert!(ok, "{text}");
    let client = connect(&setup.url).await.unwrap();
    let table = format!("\"{}\".grafter_migrations", setup.schema.name);
    let latest: i32 = client
        .query_one(&format!("SELECT max(version) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);

    for (version, expected) in [
        (
            999,
            format!(
                "the database's schema is at version 999, newer than this grafter's {latest} \
                 (a later release migrated it): upgrade grafter"
            ),
        ),
        (
            -1,
            format!(
                "the database records schema version -1, which no grafter release has \
                 (this one knows 1 to {latest})"
            ),
        ),
    ] {
        client
            .execute(
                &format!("INSERT INTO {table} (version) VALUES ($1)"),
                &[&version],
            )
            .await
            .unwrap();
        let (ok, text) = migrate(&setup.url, Some(config), cwd).await;
        assert!(!ok, "migrate accepted version {version}: {text}");
        assert!(text.contains(&expected), "{text}");
        for config in [config, &no_migrate] {
            let refusal = serve(&setup.url, Some(config), cwd)
                .await
                .expect_err("serve refuses it");
            assert!(
                refusal.contains("error: cannot open database") && refusal.contains(&expected),
                "{}: {refusal}",
                config.display()
            );
        }
        client
            .execute(
                &format!("DELETE FROM {table} WHERE version = $1"),
                &[&version],
            )
            .await
            .unwrap();
    }
    // Known versions only again: it serves.
    let mut server = serve(&setup.url, Some(config), cwd)
        .await
        .expect("serves its own schema");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn a_second_serve_on_one_sqlite_file_is_refused_and_a_killed_one_leaves_no_lock() {
    let dir = temp_dir();
    let cwd = dir.path();
    let config = cwd.join("grafter.toml");
    std::fs::write(&config, FAST_CONFIG).unwrap();
    let path = cwd.join("jobs.db");
    let database = format!("sqlite://{}", path.display());
    let mut first = Server::start(cwd, &database, &config).await;

    // By the same name, a relative one, a symbolic and a hard link.
    std::os::unix::fs::symlink(&path, cwd.join("alias.db")).unwrap();
    std::fs::hard_link(&path, cwd.join("hard.db")).unwrap();
    for name in [
        database.clone(),
        "sqlite:jobs.db".to_owned(),
        "sqlite://alias.db".to_owned(),
        "sqlite://hard.db".to_owned(),
    ] {
        let refusal = serve(&name, Some(&config), cwd)
            .await
            .expect_err("a second serve on the file is refused");
        assert!(
            refusal.contains("error: another grafter serve is serving"),
            "{name}: {refusal}"
        );
    }
    // A `file:` URI names no file the lock could be sure of: refused.
    let refusal = serve("sqlite:file:jobs.db", Some(&config), cwd)
        .await
        .expect_err("a file: URI is refused");
    assert!(refusal.contains("sqlite://PATH"), "{refusal}");

    // The lock holds up no one else who opens the file.
    let (ok, text) = migrate(&database, None, cwd).await;
    assert!(ok && text.contains("schema is up to date"), "{text}");
    let id = id_of(&first.enqueue(json!({"kind": "k", "queue": "q"})).await);

    // `kill -9` leaves no stale lock: the next server starts on the file.
    first.kill9();
    let mut second = Server::start(cwd, &database, &config).await;
    assert_eq!(second.job(id).await["state"], "available");

    // Nor does a clean stop.
    let pid = second.pid().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(term.success());
    let status = second
        .wait_exit(PATIENCE)
        .await
        .expect("stopped on SIGTERM");
    assert!(status.success(), "{}", second.log_text());
    let mut third = serve(&database, Some(&config), cwd)
        .await
        .expect("serves again");
    third.kill().await.unwrap();
}
