//! `grafter bench` end to end, tiny: it runs every workload in both modes on a
//! throwaway database, prints its summary and a JSON line with every field,
//! and leaves nothing behind. Speed is never asserted here (docs/benchmarks.md
//! has the figures).

use std::process::{Command, Stdio};

use serde_json::Value;

const GRAFTER: &str = env!("CARGO_BIN_EXE_grafter");

/// Runs `grafter bench` with `args` and returns its JSON line.
fn bench(args: &[&str]) -> Value {
    bench_with_output(args).0
}

/// Runs `grafter bench` with `args` and returns its JSON line and whole output.
fn bench_with_output(args: &[&str]) -> (Value, String) {
    let output = Command::new(GRAFTER)
        .arg("bench")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run grafter bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "grafter bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("durability"),
        "the summary names the durability:\n{stdout}"
    );
    let last = stdout.lines().last().expect("some output");
    let line: Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is JSON ({e}): {last}"));
    let mut keys: Vec<&str> = line
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "database",
            "durability",
            "enqueue_per_s",
            "jobs",
            "jobs_per_s",
            "latency_p50_ms",
            "latency_p95_ms",
            "latency_p99_ms",
            "mode",
            "workload"
        ],
        "{last}"
    );
    assert!(
        last.starts_with(r#"{"mode":"#),
        "fields in the documented order: {last}"
    );
    (line, stdout.into_owned())
}

#[test]
fn burndown_in_process_on_a_new_sqlite_file_removes_it_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let url = format!("sqlite://{}", path.display());
    let line = bench(&[
        "--database",
        &url,
        "--jobs",
        "300",
        "--batch",
        "100",
        "--concurrency",
        "20",
    ]);
    assert_eq!(line["mode"], "inprocess");
    assert_eq!(line["database"], "sqlite");
    assert_eq!(line["workload"], "burndown");
    assert_eq!(line["jobs"], 300);
    assert!(line["jobs_per_s"].as_f64().unwrap() > 0.0);
    assert!(line["enqueue_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        line["durability"]
            .as_str()
            .unwrap()
            .contains("synchronous=FULL"),
        "{line}"
    );
    assert!(!path.exists(), "the benchmark database is removed");
}

#[test]
fn an_existing_database_file_is_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new(GRAFTER)
        .args([
            "bench",
            "--database",
            &format!("sqlite://{}", file.path().display()),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
    assert!(file.path().exists(), "the existing file is left alone");
}

#[test]
fn latency_samples_have_percentiles() {
    let line = bench(&[
        "--workload",
        "latency",
        "--jobs",
        "30",
        "--concurrency",
        "4",
    ]);
    assert_eq!(line["workload"], "latency");
    let (p50, p99) = (
        line["latency_p50_ms"].as_f64().unwrap(),
        line["latency_p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{line}");
}

#[test]
fn continuous_over_http_through_a_real_server() {
    let line = bench(&[
        "--mode",
        "http",
        "--workload",
        "continuous",
        "--duration",
        "1s",
        "--batch",
        "20",
        "--rate",
        "400",
        "--concurrency",
        "20",
    ]);
    assert_eq!(line["mode"], "http");
    assert_eq!(line["workload"], "continuous");
    assert!(line["jobs"].as_u64().unwrap() > 0, "jobs ran: {line}");
    assert!(line["latency_p50_ms"].as_f64().is_some(), "{line}");
}

#[test]
fn burndown_on_postgres_uses_a_schema_of_its_own_and_drops_it() {
    let url = std::env::var("GRAFTER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connected = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok::<_, tokio_postgres::Error>(client)
    });
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not reachable at {url} ({e}) and CI is set"
            );
            eprintln!("SKIPPING: PostgreSQL not reachable at {url}: {e}");
            return;
        }
    };
    let (line, stdout) = bench_with_output(&[
        "--database",
        &url,
        "--jobs",
        "300",
        "--batch",
        "100",
        "--concurrency",
        "20",
        "--mode",
        "http",
    ]);
    assert_eq!(line["database"], "postgres");
    assert!(
        line["durability"]
            .as_str()
            .unwrap()
            .contains("synchronous_commit=on"),
        "{line}"
    );
    let schema = stdout
        .split_whitespace()
        .find(|word| word.starts_with("grafter_bench_"))
        .expect("the summary names the schema");
    let left: i64 = runtime.block_on(async {
        client
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(left, 0, "schema {schema} is dropped");
}

#[test]
fn burndown_in_one_batch_counts_every_job_in_it() {
    for mode in ["inprocess", "http"] {
        let (line, output) = bench_with_output(&[
            "--mode",
            mode,
            "--in-batch",
            "--jobs",
            "300",
            "--batch",
            "100",
            "--concurrency",
            "20",
        ]);
        assert_eq!(line["jobs"], 300);
        assert!(
            output.contains("succeeded, 300 completed"),
            "the batch is checked and reported:\n{output}"
        );
    }
}
