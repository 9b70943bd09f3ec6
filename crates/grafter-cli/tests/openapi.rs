//! The OpenAPI document is exact: schemathesis (from PyPI, pinned and
//! installed by .ci/run) reads `/openapi.json` of the real binary and runs
//! every check against it, on an open server and on one with a token (the
//! document differs: security, 401 and 429). Its settings and the few
//! failures it may drop, each with its reason, are in tests/schemathesis/.
//!
//! The run is bounded (examples per operation) and seeded, so CI is
//! reproducible; `GRAFTER_SCHEMATHESIS_EXAMPLES` and `GRAFTER_SCHEMATHESIS_SEED`
//! widen or vary it by hand.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{skip_or_fail, temp_dir, Server, FAST_CONFIG};

/// Test cases per operation and phase: broad enough to reach every status,
/// small enough for a few minutes on two busy cores.
const EXAMPLES: &str = "5";
/// The seed of CI's run.
const SEED: &str = "17";
/// The server's token, in the run with one.
const TOKEN: &str = "schemathesis-token-0123456789";

/// Whether `python3` has schemathesis; skips (or fails under CI) otherwise.
async fn schemathesis_installed() -> bool {
    let found = tokio::process::Command::new("python3")
        .args(["-c", "import schemathesis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success());
    if !found {
        skip_or_fail(
            "python3 lacks schemathesis (pip install --user schemathesis, as .ci/run does)",
        );
    }
    found
}

/// Runs schemathesis with every check against a server with `config` (plus a
/// one-second long-poll cap, so no case waits long), sending `token` if any,
/// and fails with its report unless it passes.
async fn run_schemathesis(config: &str, token: Option<&str>) {
    if !schemathesis_installed().await {
        return;
    }
    let dir = temp_dir();
    let config_path = dir.path().join("grafter.toml");
    std::fs::write(
        &config_path,
        format!("max_wait_ms = 200\n{config}\n{FAST_CONFIG}"),
    )
    .unwrap();
    let database = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let server = Server::start(dir.path(), &database, &config_path).await;

    let settings = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let examples = std::env::var("GRAFTER_SCHEMATHESIS_EXAMPLES").unwrap_or(EXAMPLES.into());
    let seed = std::env::var("GRAFTER_SCHEMATHESIS_SEED").unwrap_or(SEED.into());
    let mut command = tokio::process::Command::new("python3");
    command
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(settings.join("schemathesis.toml"))
        .args(["run", &server.url("/openapi.json"), "--checks", "all"])
        .args(["--max-examples", &examples, "--seed", &seed])
        .env("SCHEMATHESIS_HOOKS", settings.join("hooks.py"))
        // Hypothesis keeps files where it runs: not in the source tree.
        .current_dir(dir.path())
        .kill_on_drop(true);
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
        // `ignored_auth` sends wrong tokens on purpose, and after ten of them
        // the server refuses the address for a minute whatever it sends
        // (deliberate: tokens cannot be guessed at network speed;
        // crates/grafter-server/tests/throttle.rs), which would leave the rest
        // of the run only 429s. Requests without a token still meet
        // `missing_required_header`, which expects their 401.
        command.args(["--exclude-checks", "ignored_auth"]);
    }
    let output = command.output().await.expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found the document and the server apart ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // A run that tested nothing would pass too.
    assert!(
        generated(&report) > 100,
        "schemathesis tested (almost) nothing:\n{report}"
    );
}

/// How many test cases a report says were generated (`2412 generated, …`).
fn generated(report: &str) -> u64 {
    report
        .lines()
        .filter_map(|line| line.trim().split_once(" generated,"))
        .find_map(|(count, _)| count.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_document_of_an_open_server_is_exact() {
    run_schemathesis("", None).await;
}

#[tokio::test]
async fn the_document_of_a_server_with_a_token_is_exact() {
    run_schemathesis(&format!("token = \"{TOKEN}\""), Some(TOKEN)).await;
}
