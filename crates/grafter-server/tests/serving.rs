//! How `serve` treats connections, over real sockets on loopback and a real
//! SQLite file: clients that trickle headers or sit idle are disconnected
//! after the configured timeouts while others are served, one that owes a
//! body is answered 408 and disconnected, a long-poll or an event stream may
//! outlast the idle timeout, a declared body over the limit or an encoded
//! one is refused before it is read (and its answer is not lost to the
//! rest of the body arriving), a malformed chunked body is a body that
//! cannot be read (not bad JSON), a large answer read slowly is sent whole
//! past the idle timeout, and shutdown answers waiting long-polls and
//! returns without waiting for slow clients.
//!
//! Deadlines in these tests are generous upper bounds for a loaded machine;
//! nothing asserts on speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use grafter_server::{serve, HttpSettings, ServerConfig};
use grafter_sqlite::SqliteStore;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longer than any timeout a test sets, plus room for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(15);

/// Headers due within a second, idle connections kept as by default.
const ONE_SECOND_FOR_HEADERS: HttpSettings = HttpSettings {
    header_read_timeout_ms: 1_000,
    body_read_timeout_ms: 30_000,
    idle_timeout_ms: 60_000,
};

/// A body due within a second of its headers, the rest as by default.
const ONE_SECOND_FOR_A_BODY: HttpSettings = HttpSettings {
    header_read_timeout_ms: 10_000,
    body_read_timeout_ms: 1_000,
    idle_timeout_ms: 60_000,
};

/// A running server on a temp SQLite file; stopped on drop.
struct Grafter {
    address: std::net::SocketAddr,
    shutdown: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Grafter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(http: HttpSettings) -> Grafter {
    start_with(ServerConfig {
        http,
        ..Default::default()
    })
    .await
}

async fn start_with(config: ServerConfig) -> Grafter {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(serve(listener, Arc::new(store), config, shutdown.clone()));
    Grafter {
        address,
        shutdown,
        served,
        _dir: dir,
    }
}

impl Grafter {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.address).await.unwrap()
    }
}

/// Reads until the server closes the connection (end of file or a reset) and
/// answers what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The body of an answer `received` holds whole (its head and a body of
/// the length it declares), if it does.
fn whole_answer_body(received: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(received);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    (body.len() >= length).then(|| body.to_owned())
}

/// Reads one answer to a request on a kept-alive connection: its head and a
/// body of the length it declares.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        if whole_answer_body(&received).is_some() {
            return String::from_utf8_lossy(&received).into_owned();
        }
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test]
async fn a_client_trickling_headers_is_disconnected_while_others_are_served() {
    let grafter = start(ONE_SECOND_FOR_HEADERS).await;
    let mut slow = grafter.connect().await;
    let started = Instant::now();
    slow.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
    let (mut reader, mut writer) = slow.split();
    let trickle = async {
        // One header line every 300 ms: each line is progress, but the
        // headers as a whole are late.
        for n in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let line = format!("X-Slow-{n}: still coming\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    };
    let closed = async {
        let mut buffer = [0; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    let others = async {
        // Meanwhile another client is served as usual.
        let health = reqwest::get(grafter.url("/livez")).await.unwrap();
        assert_eq!(health.status(), 200);
    };
    let (_, closed_after, ()) = tokio::time::timeout(PATIENCE, async {
        tokio::join!(
            async {
                tokio::select! {
                    () = trickle => {}
                    () = tokio::time::sleep(PATIENCE) => {}
                }
            },
            closed,
            others
        )
    })
    .await
    .expect("the trickling client was never disconnected");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed before its headers were late: {closed_after:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let grafter = start(ONE_SECOND_FOR_HEADERS).await;
    let mut silent = grafter.connect().await;
    let answer = tokio::time::timeout(PATIENCE, read_until_closed(&mut silent))
        .await
        .expect("a silent new connection was never closed");
    assert_eq!(answer, "", "nothing is answered to a request never made");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_long_poll_outlasts_the_timeout() {
    let grafter = start(HttpSettings {
        header_read_timeout_ms: 1_000,
        body_read_timeout_ms: 1_000,
        idle_timeout_ms: 1_500,
    })
    .await;
    let mut idle = grafter.connect().await;
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answered = Instant::now();
    // Kept alive: a second request on the same connection, within the idle time.
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answer(&mut idle).await.starts_with("HTTP/1.1 200"));
    let rest = tokio::time::timeout(PATIENCE, read_until_closed(&mut idle))
        .await
        .expect("an idle keep-alive connection was never closed");
    assert_eq!(rest, "");
    assert!(
        answered.elapsed() >= Duration::from_millis(1_400),
        "closed before it was idle for the timeout: {:?}",
        answered.elapsed()
    );

    // A fetch that waits longer than both timeouts is answered, not cut off.
    let client = reqwest::Client::new();
    let waited = Instant::now();
    let fetch = client
        .post(grafter.url("/v1/fetch"))
        .json(&json!({"queues": ["empty"], "wait_ms": 3_000, "worker_id": "w"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fetch.status(), 200);
    assert_eq!(fetch.json::<Value>().await.unwrap(), json!({"jobs": []}));
    assert!(waited.elapsed() >= Duration::from_millis(2_900));
}

/// The status line and the JSON body of an answer read whole.
fn status_and_json(answer: &str) -> (&str, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {answer:?}"));
    let status = head.lines().next().unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, body)
}

#[tokio::test]
async fn a_client_owing_a_body_is_answered_408_and_disconnected_while_others_are_served() {
    let grafter = start(ONE_SECOND_FOR_A_BODY).await;
    // The API's JSON and the dashboard's forms: every route reads its body
    // under the same deadline.
    let heads = [
        "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n",
        "POST /queues/q/pause HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n",
    ];
    for head in heads {
        let mut owing = grafter.connect().await;
        let request = format!("{head}Content-Length: 100\r\n\r\n{{\"kind\":");
        owing.write_all(request.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (answer, ()) = tokio::time::timeout(PATIENCE, async {
            tokio::join!(read_until_closed(&mut owing), async {
                // Meanwhile another client is served as usual.
                let health = reqwest::get(grafter.url("/livez")).await.unwrap();
                assert_eq!(health.status(), 200);
            })
        })
        .await
        .unwrap_or_else(|_| panic!("a client owing a body was never disconnected: {head}"));
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "closed before its body was late: {:?}",
            started.elapsed()
        );
        // Told why, then disconnected (read_until_closed returned).
        let (status, body) = status_and_json(&answer);
        assert_eq!(status, "HTTP/1.1 408 Request Timeout", "{head}{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{answer}"
        );
        assert_eq!(body["error"]["code"], "request_timeout", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("1000 ms"), "{message}");
    }
    // A body that arrives in time is read and answered.
    let job = reqwest::Client::new()
        .post(grafter.url("/v1/jobs"))
        .json(&json!({"kind": "export"}))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 201);
}

#[tokio::test]
async fn an_event_stream_outlasts_the_idle_timeout_and_still_delivers() {
    let grafter = start(HttpSettings {
        header_read_timeout_ms: 1_000,
        body_read_timeout_ms: 1_000,
        idle_timeout_ms: 1_000,
    })
    .await;
    let client = reqwest::Client::new();
    let job: Value = client
        .post(grafter.url("/v1/jobs"))
        .json(&json!({"kind": "export"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_i64().unwrap();
    let mut stream = client
        .get(grafter.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut received = String::new();
    while !received.contains("event: snapshot") {
        let chunk = tokio::time::timeout(PATIENCE, stream.chunk())
            .await
            .expect("a snapshot")
            .unwrap()
            .expect("the stream open until its snapshot");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Twice the idle timeout with nothing to send: the stream is being
    // answered, not idle.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let cancelled = client
        .post(grafter.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    while !received.contains("event: end") {
        let chunk = tokio::time::timeout(PATIENCE, stream.chunk())
            .await
            .expect("the job's end")
            .expect("the stream was cut")
            .unwrap_or_else(|| panic!("the stream closed before its end: {received}"));
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.contains("\"cancelled\""), "{received}");
}

#[tokio::test]
async fn a_declared_body_over_the_limit_answers_413_before_it_is_sent() {
    let grafter = start(HttpSettings::default()).await;
    let mut client = grafter.connect().await;
    client
        .write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 99999999999\r\n\r\n{\"kind\":",
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_answer(&mut client))
        .await
        .expect("no answer while the body was still owed");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
}

/// Sends a request whose body of `body_bytes` arrives in two parts, the
/// second after the server has had time to answer from the first, and reads
/// until the server closes: what the client read, and whether the whole
/// body was taken.
async fn answer_to_a_body_sent_late(
    grafter: &Grafter,
    request_line: &str,
    body_bytes: usize,
) -> (String, bool) {
    const FIRST_PART: usize = 64 * 1024;
    let mut client = grafter.connect().await;
    let head = format!(
        "{request_line}\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {body_bytes}\r\n\r\n"
    );
    let body = vec![b' '; body_bytes];
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body[..FIRST_PART]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rest_sent = client.write_all(&body[FIRST_PART..]).await.is_ok();
    let answer = tokio::time::timeout(PATIENCE, read_until_closed(&mut client))
        .await
        .expect("the connection was not closed");
    (answer, rest_sent)
}

#[tokio::test]
async fn an_answer_given_before_its_body_arrived_is_not_lost_to_the_rest_of_the_body() {
    let grafter = start(HttpSettings::default()).await;
    // Refused from its headers: a body over the limit.
    let (answer, rest_sent) =
        answer_to_a_body_sent_late(&grafter, "POST /v1/jobs HTTP/1.1", 2 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(whole_answer_body(answer.as_bytes()).is_some(), "{answer:?}");
    assert!(rest_sent, "the rest of the body was refused by a reset");
    // A route that takes no body answers without reading one under the limit.
    let (answer, rest_sent) = answer_to_a_body_sent_late(
        &grafter,
        "POST /v1/queues/default/pause HTTP/1.1",
        512 << 10,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(whole_answer_body(answer.as_bytes()).is_some(), "{answer:?}");
    assert!(rest_sent, "the rest of the body was refused by a reset");
}

#[tokio::test]
async fn an_encoded_body_answers_415_before_it_is_read() {
    let grafter = start(HttpSettings::default()).await;
    let client = reqwest::Client::new();
    // gzip of {"kind":"k"}, and a plain body that only says it is compressed:
    // neither is read as JSON.
    let gzipped: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xab, 0x56, 0xca, 0xce, 0xcc,
        0x4b, 0x51, 0xb2, 0x52, 0xca, 0x56, 0xaa, 0x05, 0x00, 0x4b, 0xcb, 0xe8, 0xf5, 0x0c, 0x00,
        0x00, 0x00,
    ];
    for (encoding, body) in [
        ("gzip", gzipped),
        ("gzip", br#"{"kind":"k"}"#.as_slice()),
        ("identity, br", br#"{"kind":"k"}"#.as_slice()),
    ] {
        let answer = client
            .post(grafter.url("/v1/jobs"))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 415, "{encoding}");
        assert_eq!(answer.headers()["accept-encoding"], "identity");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unsupported_encoding", "{error}");
        let coding = encoding.rsplit(", ").next().unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("'{coding}'")), "{message}");
    }
    // The dashboard's forms are refused alike.
    let form = client
        .post(grafter.url("/queues/q/pause"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-encoding", "deflate")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    // `identity` is no encoding; a request without a body has nothing encoded.
    let plain = client
        .post(grafter.url("/v1/jobs"))
        .header("content-encoding", "Identity")
        .json(&json!({"kind": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 201);
    let bodiless = client
        .get(grafter.url("/v1/queues"))
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(bodiless.status(), 200);
    // Only the plain job was stored.
    let page: Value = client
        .get(grafter.url("/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_unreadable_not_invalid_json() {
    let grafter = start(HttpSettings::default()).await;
    let mut client = grafter.connect().await;
    client
        .write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\nzz\r\n{\"kind\":\"k\"}\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_until_closed(&mut client))
        .await
        .expect("no answer to a malformed chunked body");
    let (status, body) = status_and_json(&answer);
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{answer}");
    assert_eq!(body["error"]["code"], "invalid_body", "{body}");
    // A dashboard form's is answered with the dashboard's error page.
    let mut client = grafter.connect().await;
    client
        .write_all(
            b"POST /queues/q/pause HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\
              Transfer-Encoding: chunked\r\n\r\nzz\r\nx=1\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_until_closed(&mut client))
        .await
        .expect("no answer to a malformed chunked form");
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{answer}"
    );
    // Bad JSON sent whole is still bad JSON.
    let bad = reqwest::Client::new()
        .post(grafter.url("/v1/jobs"))
        .body("{\"kind\":")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_json"
    );
}

/// A client still sending its request when the server stops (its headers or
/// its body trickling in) holds the shutdown up for a moment at most, not
/// for its whole header or body timeout (a minute here).
#[tokio::test]
async fn shutdown_does_not_wait_for_a_request_still_arriving() {
    let minute = HttpSettings {
        header_read_timeout_ms: 60_000,
        body_read_timeout_ms: 60_000,
        ..HttpSettings::default()
    };
    let mut grafter = start(minute).await;
    let mut body_owed = grafter.connect().await;
    body_owed
        .write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 50\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut headers_owed = grafter.connect().await;
    headers_owed
        .write_all(b"GET /livez HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    grafter.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), &mut grafter.served)
        .await
        .expect("serve waited for the requests still arriving")
        .unwrap()
        .unwrap();
    read_until_closed(&mut body_owed).await;
    read_until_closed(&mut headers_owed).await;
}

#[tokio::test]
async fn shutdown_answers_a_waiting_long_poll_and_closes_idle_connections() {
    let mut grafter = start(HttpSettings::default()).await;
    let mut idle = grafter.connect().await;
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut idle).await;
    let client = reqwest::Client::new();
    let fetch = client
        .post(grafter.url("/v1/fetch"))
        .json(&json!({"queues": ["empty"], "wait_ms": 20_000, "worker_id": "w"}))
        .send();
    let shutdown = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        grafter.shutdown.cancel();
    };
    let (fetch, ()) = tokio::time::timeout(PATIENCE, async { tokio::join!(fetch, shutdown) })
        .await
        .expect("the long-poll was not answered at shutdown");
    assert_eq!(fetch.unwrap().status(), 200);
    tokio::time::timeout(PATIENCE, read_until_closed(&mut idle))
        .await
        .expect("an idle connection was kept open through shutdown");
    tokio::time::timeout(PATIENCE, &mut grafter.served)
        .await
        .expect("serve did not return after shutdown")
        .unwrap()
        .unwrap();
}

/// A fetch of ten jobs of 900 KB each (about 9 MB, more than the server's
/// socket can hold at once), asked for on a connection whose receive buffer
/// is small.
async fn ask_for_a_large_answer(grafter: &Grafter) -> TcpStream {
    let client = reqwest::Client::new();
    let text = "a".repeat(900_000);
    for _ in 0..10 {
        let enqueued = client
            .post(grafter.url("/v1/jobs"))
            .json(&json!({"kind": "big", "args": {"text": text}}))
            .send()
            .await
            .unwrap();
        assert_eq!(enqueued.status(), 201);
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(grafter.address).await.unwrap();
    let body = json!({"queues": ["default"], "max": 10, "worker_id": "w"}).to_string();
    let request = format!(
        "POST /v1/fetch HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A large answer read slowly arrives whole, though reading it takes longer
/// than the idle timeout: the connection is not idle while the socket still
/// takes bytes of an answer.
#[tokio::test]
async fn a_large_answer_read_slowly_outlasts_the_idle_timeout() {
    let grafter = start_with(ServerConfig {
        http: HttpSettings {
            idle_timeout_ms: 1_000,
            ..HttpSettings::default()
        },
        fetch_max_bytes: 64 << 20,
        ..Default::default()
    })
    .await;
    let mut stream = ask_for_a_large_answer(&grafter).await;
    let mut received = Vec::new();
    let mut buffer = vec![0; 16 * 1024];
    let mut since_pause = 0;
    let answer = loop {
        let n = stream.read(&mut buffer).await.unwrap_or(0);
        received.extend_from_slice(&buffer[..n]);
        if let Some(body) = whole_answer_body(&received) {
            break body;
        }
        assert!(n > 0, "closed after {} bytes of the answer", received.len());
        // About 3 MB a second: three seconds for the whole answer. (The
        // socket takes more only once half its buffer is free, about every
        // 2 MB here: well within the idle timeout.)
        since_pause += n;
        if since_pause >= 128 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    };
    let fetched: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(fetched["jobs"].as_array().unwrap().len(), 10);
}

/// A client that stops reading a large answer does not hold the shutdown
/// up for the idle timeout (a minute here).
#[tokio::test]
async fn shutdown_does_not_wait_a_minute_for_a_client_that_stopped_reading() {
    let mut grafter = start_with(ServerConfig {
        fetch_max_bytes: 64 << 20,
        ..Default::default()
    })
    .await;
    let mut stream = ask_for_a_large_answer(&grafter).await;
    let mut head = [0; 1024];
    assert!(stream.read(&mut head).await.unwrap() > 0, "no answer began");
    grafter.shutdown.cancel();
    tokio::time::timeout(PATIENCE, &mut grafter.served)
        .await
        .expect("serve waited for a client that stopped reading")
        .unwrap()
        .unwrap();
}
