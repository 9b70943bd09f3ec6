//! The Ruby gem's minitest suite (`clients/ruby/test`), run against the
//! `grafter` binary built for these tests: client, worker, ActiveJob adapter
//! and push endpoint, each against real `grafter serve` processes that the
//! suite starts itself. Without Ruby (or Debian's ruby-activejob, puma,
//! ruby-minitest) the test skips loudly, and fails under CI.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::skip_or_fail;

/// The suite takes about 10 s; this only bounds a hang.
const SUITE_DEADLINE: Duration = Duration::from_secs(240);

fn gem_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/ruby")
}

/// What the suite loads besides the gem, from Debian's packages.
const LIBRARIES: &str =
    r#"require "minitest"; require "active_job"; require "puma"; require "rack""#;

#[test]
fn ruby_gem_minitest_suite_passes() {
    match Command::new("ruby").args(["-e", LIBRARIES]).output() {
        Err(e) => return skip_or_fail(&format!("ruby is not installed ({e})")),
        Ok(out) if !out.status.success() => {
            return skip_or_fail(&format!(
                "ruby lacks the libraries the gem's tests use (ruby-minitest, ruby-activejob, puma): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(_) => {}
    }

    let mut command = Command::new("ruby");
    command
        .args(["-Ilib", "-Itest", "test/run.rb"])
        .current_dir(gem_dir())
        .env("GRAFTER_BIN", env!("CARGO_BIN_EXE_grafter"))
        .env_remove("GRAFTER_URL")
        .env_remove("GRAFTER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: on a hang the suite and the servers it
        // started are killed together.
        .process_group(0);
    let mut child = command.spawn().expect("spawn ruby");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + SUITE_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ruby") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    println!("{out}");
    eprintln!("{err}");
    match status {
        None => panic!(
            "the Ruby suite did not finish within {SUITE_DEADLINE:?}; its output:\n{out}\n{err}"
        ),
        Some(status) => assert!(
            status.success(),
            "the Ruby suite failed ({status}):\n{out}\n{err}"
        ),
    }
    assert!(
        out.contains(" 0 failures, 0 errors"),
        "the Ruby suite did not report a clean run:\n{out}"
    );
}
