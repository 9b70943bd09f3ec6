//! Push queues with the real binary: `kill -9` of the server in the middle of
//! pushes loses no job, and the verification snippets of docs/push.md (Python,
//! JavaScript, Ruby), run exactly as documented, accept what a real `grafter
//! serve` sends (both signature schemes, two secrets) and reject tampered
//! requests.
//!
//! Every wait is a poll with a generous deadline; nothing asserts on speed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use common::{id_of, skip_or_fail, temp_dir, Server, FAST_CONFIG, PATIENCE};

/// Starts a server on `dir/jobs.db` with [`FAST_CONFIG`] plus `queues`
/// (TOML), allowed to push to the receivers on loopback.
async fn start(dir: &Path, queues: &str) -> Server {
    let config = dir.join("grafter.toml");
    let allow = "[push]\nallow_private = true\n";
    std::fs::write(&config, format!("{FAST_CONFIG}\n{allow}\n{queues}")).expect("write config");
    let database = format!("sqlite://{}", dir.join("jobs.db").display());
    Server::start(dir, &database, &config).await
}

/// Polls a job until it is finished.
async fn wait_finished(server: &Server, id: i64) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let job = server.job(id).await;
        if ["completed", "dead", "cancelled", "expired"]
            .contains(&job["state"].as_str().unwrap_or(""))
        {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not finish within {PATIENCE:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request as a receiver saw it: lower-case header names.
type Seen = (BTreeMap<String, String>, Vec<u8>);

/// A loopback HTTP/1.1 receiver that leaves the first `hold` requests
/// unanswered (an app still busy with them) and answers the rest 200.
#[derive(Clone)]
struct HoldingReceiver {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HoldingReceiver {
    async fn start(hold: usize) -> HoldingReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = HoldingReceiver {
            url: format!("http://{}/jobs", listener.local_addr().unwrap()),
            seen: Arc::default(),
        };
        let seen = receiver.seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, seen.clone(), hold));
            }
        });
        receiver
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, requests: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.seen.lock().unwrap().len() < requests {
            assert!(
                Instant::now() < deadline,
                "the receiver did not get {requests} requests"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads requests off one (keep-alive) connection.
async fn serve_connection(stream: tokio::net::TcpStream, seen: Arc<Mutex<Vec<Seen>>>, hold: usize) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let length = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let number = {
            let mut seen = seen.lock().unwrap();
            seen.push((headers, body));
            seen.len()
        };
        if number <= hold {
            // Busy with it until the caller goes away.
            let _ = stream.read(&mut [0; 1]).await;
            return;
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn kill_9_during_pushes_loses_nothing_each_job_is_pushed_again_after_its_lease() {
    let receiver = HoldingReceiver::start(3).await;
    let queues = format!(
        "[queues.crash.push]\nurl = \"{}\"\nsecret = \"kill-nine-secret-0123\"\ntimeout_ms = 3000\nconcurrency = 3\n",
        receiver.url
    );
    let dir = temp_dir();
    let mut server = start(dir.path(), &queues).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(id_of(
            &server
                .enqueue(json!({"kind": "sync", "queue": "crash", "args": {"n": n}}))
                .await,
        ));
    }
    // All three are with the app, unanswered, when the server dies.
    receiver.wait_for(3).await;
    server.kill9();

    let server = start(dir.path(), &queues).await;
    for &id in &ids {
        let job = wait_finished(&server, id).await;
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["attempt"], 2, "{job}");
        assert_eq!(job["result"], json!({"ok": true}));
        let errors = job["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{job}");
        assert_eq!(errors[0]["error"], "lease expired");
        assert_eq!(errors[0]["attempt"], 1);
    }
    let seen = receiver.seen();
    assert_eq!(seen.len(), 6, "each job pushed twice, no more");
    for &id in &ids {
        let attempts: Vec<&str> = seen
            .iter()
            .filter(|(headers, _)| headers["grafter-job-id"] == id.to_string())
            .map(|(headers, _)| headers["grafter-attempt"].as_str())
            .collect();
        assert_eq!(attempts, ["1", "2"], "job {id}");
    }
}

/// The first fenced code block tagged `lang` in `doc`.
fn snippet<'a>(doc: &'a str, lang: &str) -> &'a str {
    let start = doc
        .find(&format!("\n```{lang}\n"))
        .unwrap_or_else(|| panic!("docs/push.md has no {lang} block"));
    let code = &doc[start + lang.len() + 5..];
    &code[..code.find("\n```").expect("the block ends")]
}

#[tokio::test]
async fn the_documented_snippets_accept_grafters_requests_and_reject_tampered_ones() {
    // A Standard Webhooks secret (its key is the base64 after `whsec_`) and
    // a plain one (its key is its own bytes).
    const NEW: &str = "whsec_dGhlLW5ldy1wdXNoLWtleS0wMDQy";
    const OLD: &str = "the-old-push-secret-42";
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/push.md"))
        .unwrap();
    let harnesses = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/push_receivers");
    let dir = temp_dir();
    let mut receivers = Vec::new();
    let mut queues = String::new();
    for (lang, program, extension) in [
        ("python", "python3", "py"),
        ("javascript", "node", "js"),
        ("ruby", "ruby", "rb"),
    ] {
        let file = dir.path().join(format!("snippet.{extension}"));
        std::fs::write(&file, snippet(&doc, lang)).unwrap();
        // Grafter is mid-rotation and signs with both secrets, in both
        // schemes: the receiver checks each signature with its own secret,
        // so this also checks the snippets read every signature.
        let spawned = tokio::process::Command::new(program)
            .arg(format!("{harnesses}/receiver.{extension}"))
            .arg(&file)
            .args([NEW, OLD])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                skip_or_fail(&format!(
                    "cannot run {program} for the {lang} snippet ({error})"
                ));
                continue;
            }
        };
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(PATIENCE, stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("the {lang} receiver did not start"))
            .unwrap()
            .unwrap_or_else(|| panic!("the {lang} receiver exited"));
        queues.push_str(&format!(
            "[queues.{lang}.push]\nurl = \"http://127.0.0.1:{port}/jobs\"\nsecret = \"{NEW}\"\nold_secrets = [\"{OLD}\"]\nsigning = \"both\"\n\n"
        ));
        receivers.push((lang, child));
    }
    let server = start(dir.path(), &queues).await;
    // Non-ASCII arguments: the raw body is signed as bytes, not as text.
    let args = json!({"greeting": "Grüße ✓", "to": "ada@example.com"});
    let mut jobs = Vec::new();
    for (lang, _) in &receivers {
        let job = server
            .enqueue(json!({"kind": "send_email", "queue": lang, "args": args, "max_attempts": 1}))
            .await;
        jobs.push((lang, id_of(&job)));
    }
    for (lang, id) in jobs {
        let job = wait_finished(&server, id).await;
        assert_eq!(job["state"], "completed", "{lang}: {job}");
        assert_eq!(
            job["result"],
            json!({"lang": lang, "verified": true, "args": args}),
            "{lang}"
        );
    }
}
