//! `/metrics` of the real binary, read by real parsers: the OpenMetrics
//! parser of Python's `prometheus_client` (which .ci/run installs) accepts a
//! scrape whose queue names hold quotes, backslashes, braces and other
//! exposition syntax, and reads every name back exactly; `promtool check
//! metrics` (Debian's `prometheus` package) passes the Prometheus text format.

mod common;

use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use common::{skip_or_fail, temp_dir, Server, FAST_CONFIG, PATIENCE};

/// Parses OpenMetrics text from stdin and prints every sample as JSON.
const PARSE_SCRAPE: &str = r#"
import json, sys
try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError as error:
    print(f"MISSING: {error}", file=sys.stderr)
    sys.exit(3)
samples = [
    {"name": s.name, "labels": s.labels, "value": s.value}
    for family in text_string_to_metric_families(sys.stdin.read())
    for s in family.samples
]
print(json.dumps(samples))
"#;

/// `scrape` fed to `program` with `args`, and what it answered; `None` when
/// the program cannot run here (after [`skip_or_fail`]).
async fn run_on_scrape(program: &str, args: &[&str], scrape: &str) -> Option<std::process::Output> {
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            skip_or_fail(&format!("cannot run {program} ({error})"));
            return None;
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(scrape.as_bytes()).await.unwrap();
    drop(stdin);
    Some(child.wait_with_output().await.unwrap())
}

/// The samples a scrape holds, as the Python parser reads them; `None` when
/// the parser cannot run here (after [`skip_or_fail`]).
async fn parse_with_python(scrape: &str) -> Option<Vec<Value>> {
    let output = run_on_scrape("python3", &["-c", PARSE_SCRAPE], scrape).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) && stderr.starts_with("MISSING:") {
        skip_or_fail(&format!(
            "python3 lacks prometheus_client ({})",
            stderr.trim()
        ));
        return None;
    }
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the scrape: {stderr}\n{scrape}"
    );
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

#[tokio::test]
async fn a_scrape_with_hostile_queue_names_parses_and_reads_them_back() {
    let dir = temp_dir();
    let config = dir.path().join("grafter.toml");
    std::fs::write(&config, FAST_CONFIG).unwrap();
    let database = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let server = Server::start(dir.path(), &database, &config).await;
    let names = [
        r#"q"uote\"#,
        r"a\\b",
        r"back\n-slash-n",
        r#"x",state="forged"#,
        "{} = , #",
        "# EOF",
        "Grüße ✓ 队列",
    ];
    for name in names {
        server.enqueue(json!({"kind": "k", "queue": name})).await;
    }
    let scrape = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let Some(samples) = parse_with_python(&scrape).await else {
        return;
    };
    let has = |name: &str, labels: Value| {
        samples
            .iter()
            .any(|s| s["name"] == name && s["labels"] == labels && s["value"] == 1.0)
    };
    for name in names {
        assert!(
            has("grafter_jobs", json!({"queue": name, "state": "available"})),
            "no jobs gauge read back for {name:?}: {scrape}"
        );
        assert!(
            has(
                "grafter_jobs_enqueued_total",
                json!({"queue": name, "kind": "k"})
            ),
            "no enqueued counter read back for {name:?}: {scrape}"
        );
    }
}

#[tokio::test]
async fn promtool_passes_a_scrape_that_counts_an_expired_lease() {
    let dir = temp_dir();
    let config = dir.path().join("grafter.toml");
    std::fs::write(&config, FAST_CONFIG).unwrap();
    let database = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let server = Server::start(dir.path(), &database, &config).await;
    server
        .enqueue(json!({"kind": "k", "queue": "lost \"one\""}))
        .await;
    // A worker that leases the job and is never heard of again.
    server.fetch("lost \"one\"", 1_000, 0).await.expect("a job");
    let scrape_as = |accept: &'static str| {
        let request = server
            .http
            .get(server.url("/metrics"))
            .header("accept", accept);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    let scrape = loop {
        let scrape = scrape_as("text/plain").await;
        if scrape
            .lines()
            .any(|l| l == "grafter_leases_expired_total 1")
        {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no expired lease counted:\n{scrape}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        scrape.contains("# TYPE grafter_leases_expired_total counter"),
        "{scrape}"
    );
    assert!(
        !scrape.contains("# EOF"),
        "the Prometheus text format, not OpenMetrics"
    );

    let Some(output) = run_on_scrape("promtool", &["check", "metrics"], &scrape).await else {
        return;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{scrape}"
    );
}
