//! The dashboard through `router()` without a socket, on a real SQLite file:
//! every page renders, changes need a POST with the CSRF token, job data is
//! escaped, the security headers are there, and a server token guards it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use chrono::{Datelike, Utc};
use grafter_core::{JobId, JobState, NewJob, Upstream};
use grafter_server::{router, AppState, ServerConfig};
use grafter_sqlite::SqliteStore;
use grafter_store::{JobFail, JobsFetch, JobsInsert, Store};
use http_body_util::BodyExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Dash {
    app: Router,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(|v| v.split(';').next().unwrap_or_default().to_owned())
    }

    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

async fn dash_with(config: ServerConfig) -> Dash {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("grafter.db"))
            .await
            .unwrap(),
    );
    let state = AppState::new(store.clone(), config, CancellationToken::new());
    Dash {
        app: router(state),
        store,
        _dir: dir,
    }
}

/// The server token of the tests that set one.
const TOKEN: &str = "s3cret-token-0123456789";

/// A well-formed `grafter_csrf` nonce for a test browser to carry.
const NONCE: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

impl Dash {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn get_with_cookie(&self, uri: &str, cookie: &str) -> Answer {
        self.send(
            Request::get(uri)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// The CSRF token the forms of `uri` carry for a browser sending `cookie`.
    async fn csrf_token(&self, uri: &str, cookie: &str) -> String {
        let page = self.get_with_cookie(uri, cookie).await;
        page.body
            .split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF field on {uri}: {}", page.body))
            .to_owned()
    }

    /// A form POST carrying `cookie` and the fields.
    async fn post(&self, uri: &str, cookie: &str, fields: &[(&str, &str)]) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, cookie)
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    async fn enqueue(&self, job: NewJob) -> JobId {
        let inserted = self
            .store
            .jobs_insert_many(JobsInsert {
                jobs: vec![job],
                now: Utc::now(),
            })
            .await
            .unwrap();
        inserted[0].job.id
    }

    /// Runs the next job of `queue` and fails it for good with `error`.
    async fn kill_next(&self, queue: &str, error: &str) -> JobId {
        let leased = self
            .store
            .jobs_fetch(JobsFetch {
                queues: vec![queue.into()],
                max: 1,
                lease_duration: std::time::Duration::from_secs(30),
                worker_id: Some("worker-<b>1</b>".into()),
                running_limit: None,
                max_bytes: usize::MAX,
                now: Utc::now(),
            })
            .await
            .unwrap()
            .remove(0);
        let fail = JobFail {
            id: leased.job.id,
            lease: leased.lease,
            error: error.into(),
            retry: false,
            retry_at: None,
            backoff: Default::default(),
            now: Utc::now(),
        };
        self.store.job_fail(fail).await.unwrap();
        leased.job.id
    }

    async fn state_of(&self, id: JobId) -> JobState {
        self.store.job_get(id).await.unwrap().unwrap().state
    }
}

fn assert_secure_headers(answer: &Answer) {
    let csp = answer
        .headers
        .get(header::CONTENT_SECURITY_POLICY)
        .expect("a CSP header")
        .to_str()
        .unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        answer.headers.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(),
        "nosniff"
    );
    assert_eq!(answer.headers.get(header::X_FRAME_OPTIONS).unwrap(), "DENY");
}

#[tokio::test]
async fn every_page_renders_with_security_headers() {
    let dash = dash_with(ServerConfig::default()).await;
    let mut job = NewJob::new("send_email", json!({"to": "ada@example.com"}));
    job.tags = vec!["vip".into()];
    let id = dash.enqueue(job).await;
    let dead = dash.kill_next("default", "SMTP said no").await;
    assert_eq!(id, dead);
    for uri in [
        "/".to_owned(),
        "/overview/live".into(),
        "/jobs".into(),
        "/jobs?state=dead".into(),
        "/jobs?tag=vip&order=asc".into(),
        "/jobs?args=to%3Dada%40example.com".into(),
        "/jobs?queue=default&kind=send_email".into(),
        format!("/jobs/{id}"),
        format!("/jobs/{id}/live"),
        "/queues".into(),
        "/schedules".into(),
        "/batches".into(),
        "/workers".into(),
    ] {
        let answer = dash.get(&uri).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.body);
        assert_secure_headers(&answer);
        assert!(
            answer.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{uri}"
        );
        let cookie = answer
            .set_cookie("grafter_csrf")
            .expect("a CSRF cookie for a new browser");
        assert_eq!(cookie.len(), "grafter_csrf=".len() + 64);
    }
    let overview = dash.get("/").await.body;
    assert!(
        overview.contains(r#"data-state="dead""#) && overview.contains("Last hour, per minute")
    );
    let dead_list = dash.get("/jobs?state=dead").await.body;
    assert!(
        dead_list.contains(&format!(r#"data-job="{id}""#)),
        "{dead_list}"
    );
    assert!(
        dead_list.contains("Retry all"),
        "all-matching actions for dead jobs"
    );
    let job_page = dash.get(&format!("/jobs/{id}")).await.body;
    assert!(job_page.contains("SMTP said no") && job_page.contains("attempt 1 failed"));
    for asset in ["/assets/app.css", "/assets/app.js"] {
        assert_eq!(dash.get(asset).await.status, StatusCode::OK, "{asset}");
    }
    // A browser that has its cookie keeps it.
    let again = dash
        .get_with_cookie("/", &format!("grafter_csrf={NONCE}"))
        .await;
    assert!(again.set_cookie("grafter_csrf").is_none());
}

#[tokio::test]
async fn changes_without_the_csrf_token_are_refused() {
    let dash = dash_with(ServerConfig::default()).await;
    dash.enqueue(NewJob::new("k", json!({}))).await;
    let id = dash.kill_next("default", "x").await;
    let uri = format!("/jobs/{id}/retry");
    let cookie = format!("grafter_csrf={NONCE}");
    let csrf = dash.csrf_token("/jobs", &cookie).await;
    let other = "cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34cd34";
    let other_cookie = format!("grafter_csrf={other}");

    for (cookie, fields) in [
        ("", vec![("csrf", csrf.as_str())]), // no cookie (another site's form)
        (cookie.as_str(), vec![]),           // no token in the form
        (cookie.as_str(), vec![("csrf", other)]), // a token that is not this browser's
        // A cookie and a field that match, as a sibling site can plant them,
        // but that the server never issued.
        (cookie.as_str(), vec![("csrf", NONCE)]),
        (other_cookie.as_str(), vec![("csrf", other)]),
        // This browser's token with another browser's cookie.
        (other_cookie.as_str(), vec![("csrf", csrf.as_str())]),
    ] {
        let answer = dash.post(&uri, cookie, &fields).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{cookie:?} {fields:?}"
        );
        assert!(answer.body.contains("CSRF"));
        assert_eq!(dash.state_of(id).await, JobState::Dead, "nothing changed");
    }
    for uri in ["/jobs/bulk", "/queues/default/pause", "/logout"] {
        assert_eq!(
            dash.post(uri, &cookie, &[("csrf", other)]).await.status,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
    }
    assert!(!dash.store.queues_list().await.unwrap()[0].paused);
    // Changes are POSTs only: a GET of an action path changes nothing.
    assert_eq!(dash.get(&uri).await.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(dash.state_of(id).await, JobState::Dead);

    let answer = dash.post(&uri, &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location(), format!("/jobs/{id}"));
    assert_eq!(dash.state_of(id).await, JobState::Available);
    // The confirmation shows once on the next page.
    let flash = answer
        .set_cookie("grafter_flash")
        .expect("a message for the next page");
    let next = dash
        .get_with_cookie(answer.location(), &format!("{cookie}; {flash}"))
        .await;
    assert!(next.body.contains("Retried"), "{}", next.body);
    assert!(next
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.to_str().unwrap().starts_with("grafter_flash=;")));
}

#[tokio::test]
async fn job_data_shows_as_text_never_as_markup() {
    let dash = dash_with(ServerConfig::default()).await;
    let mut job = NewJob::new(
        "<script>kind()</script>",
        json!({"html": "<script>alert('args')</script>"}),
    );
    job.queue = "q<i>1</i>".into();
    job.tags = vec!["<b>tag</b>".into()];
    dash.enqueue(job).await;
    let id = dash
        .kill_next("q<i>1</i>", "<img src=x onerror=alert('error')>")
        .await;
    for uri in [
        format!("/jobs/{id}"),
        "/jobs".into(),
        "/jobs?state=dead".into(),
        "/".into(),
        "/queues".into(),
    ] {
        let body = dash.get(&uri).await.body;
        for raw in [
            "<script>alert",
            "<script>kind",
            "<img src=x",
            "<i>1</i>",
            "<b>tag</b>",
            "<b>1</b>",
        ] {
            assert!(!body.contains(raw), "{uri} shows {raw} unescaped");
        }
    }
    let page = dash.get(&format!("/jobs/{id}")).await.body;
    assert!(
        page.contains("&lt;script&gt;alert(&#39;args&#39;)&lt;/script&gt;")
            || page.contains("&lt;script&gt;alert('args')&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("&lt;img src=x onerror=alert("), "{page}");
    assert!(page.contains("worker-&lt;b&gt;1&lt;/b&gt;"));
    // No inline script at all: the only script is our own file.
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains(r#"<script src="/assets/app.js" defer>"#));
}

/// The jobs page shows the start of each job's args as JSON text. The store
/// lists large args cut to the start of their text (the page no longer holds
/// fifty whole jobs of 1 MB args in memory); that start shows as it is, not
/// as a quoted string.
#[tokio::test]
async fn the_job_list_shows_a_bounded_start_of_large_args() {
    let dash = dash_with(ServerConfig::default()).await;
    for _ in 0..50 {
        let args = json!({"blob": format!("start{}", "x".repeat(1_000_000))});
        dash.enqueue(NewJob::new("big", args)).await;
    }
    let page = dash.get("/jobs").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body.matches("data-job=").count(), 50);
    assert!(
        page.body.contains("{&quot;blob&quot;:&quot;startxxx"),
        "{}",
        page.body
    );
    assert!(page.body.len() < 200 * 1024, "{} bytes", page.body.len());
}

#[tokio::test]
async fn actions_answer_with_a_visible_outcome() {
    let dash = dash_with(ServerConfig::default()).await;
    let cookie = format!("grafter_csrf={NONCE}");
    let csrf = dash.csrf_token("/jobs", &cookie).await;
    let csrf = csrf.as_str();
    let mut dead = Vec::new();
    for _ in 0..3 {
        dash.enqueue(NewJob::new("k", json!({}))).await;
        dead.push(dash.kill_next("default", "boom").await);
    }
    let waiting = dash.enqueue(NewJob::new("k", json!({"n": 1}))).await;
    let flash_of = |a: &Answer| {
        let raw = a.set_cookie("grafter_flash").unwrap_or_default();
        form_urlencoded::parse(raw.replacen("grafter_flash=", "f=", 1).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };

    // An invalid change says why and changes nothing.
    let running_free = dash
        .post(
            &format!("/jobs/{}/edit-retry", dead[0]),
            &cookie,
            &[("csrf", csrf), ("args", "{not json")],
        )
        .await;
    assert!(
        flash_of(&running_free).starts_with("error|The args are not valid JSON"),
        "{}",
        flash_of(&running_free)
    );
    let edited = dash
        .post(
            &format!("/jobs/{}/edit-retry", dead[0]),
            &cookie,
            &[("csrf", csrf), ("args", r#"{"fixed": true}"#)],
        )
        .await;
    assert!(
        flash_of(&edited).starts_with("ok|"),
        "{}",
        flash_of(&edited)
    );
    assert_eq!(
        dash.store.job_get(dead[0]).await.unwrap().unwrap().args,
        json!({"fixed": true})
    );

    let rescheduled = dash
        .post(
            &format!("/jobs/{}/reschedule", dead[1]),
            &cookie,
            &[
                ("csrf", csrf),
                ("when", "2099-01-02T03:04"),
                ("tz_offset", "-60"),
            ],
        )
        .await;
    assert_eq!(
        flash_of(&rescheduled),
        "ok|Rescheduled to 2099-01-02 02:04 UTC."
    );
    assert_eq!(dash.state_of(dead[1]).await, JobState::Scheduled);
    // A year the time field takes but no run time can be: said, not a 500.
    for (when, tz_offset) in [("+262142-12-31T23:59", "1440"), ("+10000-01-01T00:00", "0")] {
        let extreme = dash
            .post(
                &format!("/jobs/{}/reschedule", dead[1]),
                &cookie,
                &[("csrf", csrf), ("when", when), ("tz_offset", tz_offset)],
            )
            .await;
        assert_eq!(
            extreme.status,
            StatusCode::SEE_OTHER,
            "{when}: {}",
            extreme.body
        );
        assert_eq!(
            flash_of(&extreme),
            "error|Pick a date between the years 1 and 9999.",
            "{when}"
        );
    }
    assert_eq!(
        dash.store
            .job_get(dead[1])
            .await
            .unwrap()
            .unwrap()
            .run_at
            .year(),
        2099,
        "nothing changed"
    );
    let run_now = dash
        .post(
            &format!("/jobs/{}/run-now", dead[1]),
            &cookie,
            &[("csrf", csrf)],
        )
        .await;
    assert!(flash_of(&run_now).starts_with("ok|"));
    assert_eq!(dash.state_of(dead[1]).await, JobState::Available);

    // Bulk over selected rows: one is not cancellable any more.
    let bulk = dash
        .post(
            "/jobs/bulk",
            &cookie,
            &[
                ("csrf", csrf),
                ("action", "cancel"),
                ("ids", &waiting.to_string()),
                ("ids", &dead[2].to_string()),
            ],
        )
        .await;
    assert_eq!(bulk.status, StatusCode::SEE_OTHER);
    assert!(
        flash_of(&bulk).contains("Cancelled 1 jobs; 1 skipped"),
        "{}",
        flash_of(&bulk)
    );

    // Every dead job matching a filter.
    let all = dash
        .post(
            "/jobs/bulk",
            &cookie,
            &[
                ("csrf", csrf),
                ("action", "retry"),
                ("all", "1"),
                ("state", "dead"),
            ],
        )
        .await;
    assert_eq!(
        flash_of(&all),
        "ok|Retried 1 dead jobs matching the filter."
    );
    assert_eq!(dash.state_of(dead[2]).await, JobState::Available);
    let not_dead = dash
        .post(
            "/jobs/bulk",
            &cookie,
            &[
                ("csrf", csrf),
                ("action", "delete"),
                ("all", "1"),
                ("state", "available"),
            ],
        )
        .await;
    assert!(flash_of(&not_dead).starts_with("error|"));

    let paused = dash
        .post("/queues/default/pause", &cookie, &[("csrf", csrf)])
        .await;
    assert!(flash_of(&paused).starts_with("ok|Paused queue default"));
    assert!(dash.store.queues_list().await.unwrap()[0].paused);
    let deleted = dash
        .post(
            &format!("/jobs/{waiting}/delete"),
            &cookie,
            &[("csrf", csrf)],
        )
        .await;
    assert_eq!(deleted.location(), "/jobs");
    assert!(dash.store.job_get(waiting).await.unwrap().is_none());
    let gone = dash
        .post(
            &format!("/jobs/{waiting}/cancel"),
            &cookie,
            &[("csrf", csrf)],
        )
        .await;
    assert!(
        flash_of(&gone).starts_with("error|Nothing changed: job"),
        "{}",
        flash_of(&gone)
    );
    assert_eq!(
        dash.get(&format!("/jobs/{waiting}")).await.status,
        StatusCode::NOT_FOUND
    );
    // A jump to an id, and a bad filter, say what happened.
    assert_eq!(
        dash.get(&format!("/jobs?id={}", dead[0])).await.location(),
        format!("/jobs/{}", dead[0])
    );
    assert!(dash
        .get("/jobs?args=nonsense")
        .await
        .body
        .contains("search args as path=value"));
}

/// A dashboard with [`TOKEN`], and a browser not logged in: its cookie and
/// the CSRF token of its login form.
async fn with_token_logged_out() -> (Dash, String, String) {
    let dash = dash_with(ServerConfig {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    let cookie = format!("grafter_csrf={NONCE}");
    let csrf = dash.csrf_token("/login", &cookie).await;
    (dash, cookie, csrf)
}

#[tokio::test]
async fn a_server_token_guards_the_dashboard() {
    let (dash, cookie, csrf) = with_token_logged_out().await;
    let csrf = csrf.as_str();
    let page = dash.get("/jobs?state=dead").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/login?next=%2Fjobs%3Fstate%3Ddead");
    assert_eq!(dash.get("/login").await.status, StatusCode::OK);
    // The login page's browser asks for the icon too: no 404 in its console.
    let icon = dash.get("/favicon.ico").await;
    assert_eq!(icon.status, StatusCode::OK);
    assert_eq!(icon.headers[header::CONTENT_TYPE], "image/x-icon");
    assert!(icon.body.len() > 100, "an icon, not an empty answer");
    assert_eq!(
        dash.post("/queues/default/pause", &cookie, &[("csrf", csrf)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let wrong = dash
        .post(
            "/login",
            &cookie,
            &[("csrf", csrf), ("token", "guess"), ("next", "/queues")],
        )
        .await;
    assert!(wrong.set_cookie("grafter_session").is_none());
    assert!(wrong.location().starts_with("/login"));
    let forged = dash
        .post("/login", &cookie, &[("csrf", "nope"), ("token", TOKEN)])
        .await;
    assert_eq!(
        forged.status,
        StatusCode::FORBIDDEN,
        "login forms carry the CSRF token too"
    );

    let login = dash
        .post(
            "/login",
            &cookie,
            &[("csrf", csrf), ("token", TOKEN), ("next", "/queues")],
        )
        .await;
    assert_eq!(login.location(), "/queues");
    let session = login
        .set_cookie("grafter_session")
        .expect("a session cookie");
    let set = login
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(set.iter().any(|c| c.starts_with("grafter_session=")
        && c.contains("HttpOnly")
        && c.contains("SameSite=Strict")));
    let logged_in = format!("{cookie}; {session}");
    assert_eq!(
        dash.get_with_cookie("/queues", &logged_in).await.status,
        StatusCode::OK
    );
    // Forms are bound to the session: the token from before logging in is
    // refused under it, the session's own is taken.
    assert_eq!(
        dash.post("/queues/default/pause", &logged_in, &[("csrf", csrf)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let session_csrf = dash.csrf_token("/jobs", &logged_in).await;
    let paused = dash
        .post(
            "/queues/default/pause",
            &logged_in,
            &[("csrf", &session_csrf)],
        )
        .await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER);
    assert!(dash.store.queues_list().await.unwrap()[0].paused);
    // Another node with the same token takes this node's forms and session.
    let other_node = dash_with(ServerConfig {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    let resumed = other_node
        .post(
            "/queues/default/resume",
            &logged_in,
            &[("csrf", &session_csrf)],
        )
        .await;
    assert_eq!(resumed.status, StatusCode::SEE_OTHER, "{}", resumed.body);
    // The token as a bearer header works as well (scripts, curl).
    let bearer = dash
        .send(
            Request::get("/workers")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(bearer.status, StatusCode::OK);
    // The API keeps its own rule.
    assert_eq!(
        dash.get("/v1/queues").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn after_login_only_paths_on_this_site_are_followed() {
    let (dash, cookie, csrf) = with_token_logged_out().await;
    let csrf = csrf.as_str();
    // Each is what the server sees once the form or query is decoded: a
    // browser drops the tab or newline of `/\t/evil.example` (sent as
    // `/%09/evil.example`) and goes to another host.
    for hostile in [
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "https://evil.example/",
        "\r\nSet-Cookie: grafter_session=forged",
        "/\r\nSet-Cookie: grafter_session=forged",
        "javascript:alert(1)",
        "",
    ] {
        let login = dash
            .post(
                "/login",
                &cookie,
                &[("csrf", csrf), ("token", TOKEN), ("next", hostile)],
            )
            .await;
        assert_eq!(
            login.status,
            StatusCode::SEE_OTHER,
            "{hostile:?}: {}",
            login.body
        );
        assert_eq!(login.location(), "/", "{hostile:?}");
        let encoded: String = form_urlencoded::byte_serialize(hostile.as_bytes()).collect();
        let page = dash.get(&format!("/login?next={encoded}")).await;
        assert_eq!(page.status, StatusCode::OK, "{hostile:?}");
        assert!(
            page.body.contains(r#"name="next" value="/""#),
            "{hostile:?}: {}",
            page.body
        );
    }
    let home = dash
        .post(
            "/login",
            &cookie,
            &[
                ("csrf", csrf),
                ("token", TOKEN),
                ("next", "/jobs?state=dead"),
            ],
        )
        .await;
    assert_eq!(home.location(), "/jobs?state=dead");
}

#[tokio::test]
async fn unknown_paths_are_html_outside_the_api_and_json_inside() {
    let dash = dash_with(ServerConfig::default()).await;
    let page = dash.get("/nothing/here").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("<html"));
    let api = dash
        .send(
            Request::builder()
                .method(Method::GET)
                .uri("/v1/nothing")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(api.status, StatusCode::NOT_FOUND);
    assert!(api.body.contains(r#""code":"not_found""#), "{}", api.body);
    assert_eq!(dash.get("/jobs/999999").await.status, StatusCode::NOT_FOUND);
}

/// What the router answers before any handler (a wrong method, a body over
/// the limit, an encoded body) is a page outside `/v1`, JSON inside.
#[tokio::test]
async fn refusals_before_any_handler_answer_html_pages_outside_the_api() {
    let dash = dash_with(ServerConfig {
        body_limit_bytes: 1024,
        ..Default::default()
    })
    .await;
    // Declared: refused before it is read.
    let oversized = |uri: &str| {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::CONTENT_LENGTH, 2048)
            .body(Body::from("x".repeat(2048)))
            .unwrap()
    };
    let gzipped = |uri: &str| {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from("token=x"))
            .unwrap()
    };
    let wrong_method = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    for (page, api, status) in [
        (
            wrong_method("/jobs/1/retry"),
            Request::put("/v1/jobs").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            oversized("/queues/q/pause"),
            oversized("/v1/jobs"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            gzipped("/login"),
            gzipped("/v1/jobs"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let page = dash.send(page).await;
        assert_eq!(page.status, status, "{}", page.body);
        assert!(page.body.contains("<html"), "{status}: {}", page.body);
        assert_eq!(
            page.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8",
            "{status}"
        );
        assert_secure_headers(&page);
        let api = dash.send(api).await;
        assert_eq!(api.status, status, "{}", api.body);
        assert_eq!(api.headers[header::CONTENT_TYPE], "application/json");
        assert!(api.body.starts_with(r#"{"error":"#), "{}", api.body);
    }
    // An encoded body is refused with the coding it may use, page or not.
    let page = dash.send(gzipped("/login")).await;
    assert_eq!(page.headers[header::ACCEPT_ENCODING], "identity");
}

#[tokio::test]
async fn unreadable_paths_and_queries_answer_html_pages_with_the_security_headers() {
    let dash = dash_with(ServerConfig::default()).await;
    let page = dash.get("/jobs").await;
    let cookie = page.set_cookie("grafter_csrf").unwrap();
    for (uri, status) in [
        ("/queues/%FF/pause", StatusCode::NOT_FOUND),
        ("/schedules/%FF/pause", StatusCode::NOT_FOUND),
        ("/jobs/1/%FF", StatusCode::NOT_FOUND),
    ] {
        let answer = dash.post(uri, &cookie, &[]).await;
        assert_eq!(answer.status, status, "{uri}: {}", answer.body);
        assert!(answer.body.contains("<html"), "{uri}: {}", answer.body);
        assert_secure_headers(&answer);
    }
    for (uri, status) in [
        ("/schedules/%FF", StatusCode::NOT_FOUND),
        ("/batches/%FF", StatusCode::NOT_FOUND),
        ("/jobs?state=dead&state=completed", StatusCode::BAD_REQUEST),
        ("/schedules?after=a&after=b", StatusCode::BAD_REQUEST),
        ("/nope", StatusCode::NOT_FOUND),
    ] {
        let answer = dash.get(uri).await;
        assert_eq!(answer.status, status, "{uri}: {}", answer.body);
        assert!(answer.body.contains("<html"), "{uri}: {}", answer.body);
        assert_secure_headers(&answer);
    }
}

/// The queues page shows each queue's limits; a job held back by one says so
/// on its page, naming the partition, escaped like all job data.
#[tokio::test]
async fn limits_and_what_holds_a_job_show() {
    let dash = dash_with(ServerConfig::default()).await;
    let limits: grafter_core::QueueLimits =
        serde_json::from_value(json!({"concurrency": 1, "partition_by": "args.who"})).unwrap();
    dash.store
        .queue_set_limits(grafter_store::QueueLimitsSet {
            queue: "q".into(),
            limits: Some(limits),
            now: Utc::now(),
        })
        .await
        .unwrap();
    let job = || {
        let mut job = NewJob::new("k", json!({"who": "<b>acme</b>"}));
        job.queue = "q".into();
        job
    };
    dash.enqueue(job()).await;
    let waiting = dash.enqueue(job()).await;
    let running = dash
        .store
        .jobs_fetch(JobsFetch {
            queues: vec!["q".into()],
            max: 5,
            lease_duration: std::time::Duration::from_secs(30),
            worker_id: None,
            running_limit: None,
            max_bytes: usize::MAX,
            now: Utc::now(),
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    let queues = dash.get("/queues").await.body;
    assert!(
        queues.contains("1 at once") && queues.contains("args.who"),
        "{queues}"
    );
    let page = dash.get(&format!("/jobs/{waiting}")).await.body;
    assert!(page.contains(r#"data-held="concurrency""#), "{page}");
    assert!(
        page.contains("1 of 1 in use") && page.contains("&lt;b&gt;acme"),
        "{page}"
    );
    let page = dash.get(&format!("/jobs/{}", running[0].job.id)).await.body;
    assert!(!page.contains("data-held"), "a running job is not held");
}

/// The schedules' pages: the list with timing, zone, last job and skipped
/// slots; a schedule's page with its upcoming times, skips and reasons, and
/// latest jobs; pause, resume and trigger as CSRF-checked POSTs.
#[tokio::test]
async fn schedules_show_their_runs_and_skips_and_act_through_forms() {
    use grafter_core::{ScheduleSource, ScheduleSpec};
    use grafter_engine::{Clock, Engine, EngineConfig};

    let dash = dash_with(ServerConfig::default()).await;
    // Fired on a clock of its own: 00:00 runs, then after a gap 00:10 runs
    // and the nine minutes between are skipped (catch_up skip).
    let start: chrono::DateTime<Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let clock = Clock::manual(start);
    let engine = Engine::new(dash.store.clone(), EngineConfig::default()).with_clock(clock.clone());
    let mut spec = ScheduleSpec::every(60_000, NewJob::new("tick", json!({})));
    spec.timezone = "Asia/Tokyo".into();
    engine
        .schedule_put("tick", spec, ScheduleSource::Api)
        .await
        .unwrap();
    engine.schedules_fire_due(100).await.unwrap();
    clock.set(start + chrono::Duration::minutes(10));
    engine.schedules_fire_due(100).await.unwrap();
    let plain = dash.enqueue(NewJob::new("tick", json!({}))).await;

    let list = dash.get("/schedules").await;
    assert_eq!(list.status, StatusCode::OK);
    let row = list
        .body
        .split(r#"data-schedule="tick""#)
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for tick: {}", list.body));
    for want in ["every 1 min", "Asia/Tokyo", "active", ">9<", "available"] {
        assert!(row.contains(want), "{want} in {row}");
    }

    let page = dash.get("/schedules/tick").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        page.body.matches("<li><time").count(),
        10,
        "ten upcoming times"
    );
    assert!(page.body.contains("<code>missed</code>"), "{}", page.body);
    assert!(
        page.body.contains("2025-06-01 00:01:00 UTC"),
        "the first skipped slot"
    );
    assert_eq!(page.body.matches("data-job=").count(), 2, "the two runs");
    assert!(!page.body.contains(&format!(r#"data-job="{plain}""#)));
    assert!(page.body.contains(r#"href="/jobs?schedule=tick""#));
    let all = dash.get("/jobs?schedule=tick").await;
    assert_eq!(all.body.matches("data-job=").count(), 2, "{}", all.body);
    assert_secure_headers(&page);

    let cookie = format!("grafter_csrf={NONCE}");
    let csrf = dash.csrf_token("/schedules/tick", &cookie).await;
    let flash_of = |a: &Answer| {
        let raw = a.set_cookie("grafter_flash").unwrap_or_default();
        form_urlencoded::parse(raw.replacen("grafter_flash=", "f=", 1).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    for action in ["pause", "trigger"] {
        let refused = dash
            .post(
                &format!("/schedules/tick/{action}"),
                &cookie,
                &[("csrf", NONCE)],
            )
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{action}");
    }
    assert_eq!(
        dash.get("/schedules/tick/pause").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let schedule = engine.schedule_get("tick").await.unwrap();
    assert!(!schedule.paused);
    let last_job = schedule.last_job_id;

    let paused = dash
        .post("/schedules/tick/pause", &cookie, &[("csrf", &csrf)])
        .await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER);
    assert_eq!(paused.location(), "/schedules/tick");
    assert!(
        flash_of(&paused).starts_with("ok|Paused schedule tick"),
        "{}",
        flash_of(&paused)
    );
    assert!(engine.schedule_get("tick").await.unwrap().paused);
    assert!(dash
        .get("/schedules/tick")
        .await
        .body
        .contains(r#"action="/schedules/tick/resume""#));

    let triggered = dash
        .post("/schedules/tick/trigger", &cookie, &[("csrf", &csrf)])
        .await;
    let message = flash_of(&triggered);
    assert!(
        message.starts_with("ok|Triggered schedule tick: job #"),
        "{message}"
    );
    let schedule = engine.schedule_get("tick").await.unwrap();
    assert_ne!(
        schedule.last_job_id, last_job,
        "the trigger is the last run"
    );
    let id = schedule.last_job_id.unwrap();
    assert!(message.contains(&format!("#{id} ")), "{message}");
    let job = dash.store.job_get(id).await.unwrap().unwrap();
    assert_eq!(job.schedule.unwrap().slot, None);
    let page = dash.get("/schedules/tick").await.body;
    assert!(page.contains(&format!(r#"data-job="{id}""#)) && page.contains("triggered"));

    let resumed = dash
        .post("/schedules/tick/resume", &cookie, &[("csrf", &csrf)])
        .await;
    assert!(flash_of(&resumed).starts_with("ok|Resumed schedule tick"));
    assert!(!engine.schedule_get("tick").await.unwrap().paused);

    let gone = dash
        .post("/schedules/nope/trigger", &cookie, &[("csrf", &csrf)])
        .await;
    assert_eq!(gone.location(), "/schedules");
    assert!(
        flash_of(&gone).starts_with("error|There is no schedule"),
        "{}",
        flash_of(&gone)
    );
    assert_eq!(
        dash.get("/schedules/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        dash.post("/schedules/tick/explode", &cookie, &[("csrf", &csrf)])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

impl Dash {
    /// Calls the API with the server token; the JSON answer.
    async fn api(&self, method: &str, uri: &str, body: serde_json::Value) -> serde_json::Value {
        let answer = self
            .send(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await;
        assert!(answer.status.is_success(), "{uri}: {}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    }

    /// A browser logged in with `secret`: its cookies, and its forms' CSRF token.
    async fn log_in(&self, secret: &str) -> (String, String) {
        let cookie = format!("grafter_csrf={NONCE}");
        let csrf = self.csrf_token("/login", &cookie).await;
        let login = self
            .post("/login", &cookie, &[("csrf", &csrf), ("token", secret)])
            .await;
        let session = login
            .set_cookie("grafter_session")
            .unwrap_or_else(|| panic!("no session: {}", login.location()));
        let logged_in = format!("{cookie}; {session}");
        let csrf = self.csrf_token("/login", &logged_in).await;
        (logged_in, csrf)
    }
}

#[tokio::test]
async fn a_stored_token_session_has_that_tokens_powers_until_revoked() {
    let (dash, _, _) = with_token_logged_out().await;
    let id = dash.enqueue(NewJob::new("k", json!({}))).await;
    let reader = dash
        .api(
            "POST",
            "/v1/tokens",
            json!({"name": "viewer", "scopes": ["read"]}),
        )
        .await;
    let (viewer, viewer_csrf) = dash.log_in(reader["token"].as_str().unwrap()).await;
    let queues = dash.get_with_cookie("/queues", &viewer).await;
    assert_eq!(queues.status, StatusCode::OK);
    assert!(!queues.body.contains("/default/pause"), "{}", queues.body);
    let job = dash.get_with_cookie(&format!("/jobs/{id}"), &viewer).await;
    assert_eq!(job.status, StatusCode::OK);
    assert!(
        !job.body.contains(&format!("/jobs/{id}/cancel")),
        "{}",
        job.body
    );
    let jobs = dash.get_with_cookie("/jobs", &viewer).await;
    assert!(!jobs.body.contains("/jobs/bulk"), "{}", jobs.body);
    let refused = dash
        .post("/queues/default/pause", &viewer, &[("csrf", &viewer_csrf)])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(!dash.store.queues_list().await.unwrap()[0].paused);

    let operator = dash
        .api(
            "POST",
            "/v1/tokens",
            json!({"name": "on call", "scopes": ["operator"]}),
        )
        .await;
    let (on_call, on_call_csrf) = dash.log_in(operator["token"].as_str().unwrap()).await;
    assert!(dash
        .get_with_cookie("/queues", &on_call)
        .await
        .body
        .contains("/default/pause"));
    let paused = dash
        .post(
            "/queues/default/pause",
            &on_call,
            &[("csrf", &on_call_csrf)],
        )
        .await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER);
    assert!(dash.store.queues_list().await.unwrap()[0].paused);
    let audit = dash
        .api("GET", "/v1/audit?limit=1", serde_json::Value::Null)
        .await;
    let entry = &audit["entries"][0];
    assert_eq!(entry["action"], "queue.pause", "{audit}");
    assert_eq!(entry["actor"], "on call");
    assert_eq!(entry["token_id"], operator["id"]);
    assert_eq!(entry["target"], "/queues/default/pause");

    dash.api(
        "DELETE",
        &format!("/v1/tokens/{}", reader["id"].as_str().unwrap()),
        serde_json::Value::Null,
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let page = dash.get_with_cookie("/queues", &viewer).await;
        if page.status == StatusCode::SEE_OTHER {
            assert!(page.location().starts_with("/login"), "{}", page.location());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked session still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn batch_pages_show_counts_callbacks_and_a_stream_until_finished() {
    let dash = dash_with(ServerConfig::default()).await;
    assert!(dash.get("/batches").await.body.contains("No batches."));
    let part = |i: i64| NewJob {
        queue: "parts".into(),
        ..NewJob::new("part", json!({ "i": i }))
    };
    let on_complete = NewJob::new("<b>notify</b>", json!({}));
    let created = dash
        .store
        .batch_create(grafter_store::BatchCreate {
            jobs: vec![part(1), part(2)],
            open: false,
            callbacks: grafter_core::BatchCallbacks {
                on_complete: Some(on_complete),
                ..Default::default()
            },
            now: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let id = created.batch.id;
    let list = dash.get("/batches").await.body;
    assert!(list.contains(&format!(r#"data-batch="{id}""#)), "{list}");
    let page = dash.get(&format!("/batches/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains(&format!("/v1/batches/{id}/events?access_token=gst1.")),
        "an unfinished batch's page follows its stream: {}",
        page.body
    );
    assert!(page.body.contains(&format!(r#"href="/jobs?batch={id}""#)));
    assert!(
        page.body.contains("&lt;b&gt;notify&lt;/b&gt;"),
        "callbacks are text"
    );
    assert!(page.body.contains("not yet"));
    let live = dash.get(&format!("/batches/{id}/live")).await.body;
    assert!(!live.contains("data-live-done"), "{live}");
    let job = created.jobs[0].id;
    assert!(dash
        .get(&format!("/jobs/{job}"))
        .await
        .body
        .contains(&format!(r#"href="/batches/{id}""#)));
    let of_batch = dash.get(&format!("/jobs?batch={id}")).await.body;
    assert_eq!(of_batch.matches("data-job=").count(), 2, "{of_batch}");

    // Finished, it shows its end and opens no stream.
    for _ in 0..2 {
        dash.kill_next("parts", "no").await;
    }
    let page = dash.get(&format!("/batches/{id}")).await.body;
    assert!(page.contains("completed_with_failures"), "{page}");
    assert!(!page.contains("/events?access_token="), "{page}");
    assert!(dash
        .get(&format!("/batches/{id}/live"))
        .await
        .body
        .contains("data-live-done"));

    for (uri, status) in [
        (format!("/batches/{}", id.0 + 1000), StatusCode::NOT_FOUND),
        ("/batches/nope".to_owned(), StatusCode::NOT_FOUND),
        ("/batches?before=nope".to_owned(), StatusCode::BAD_REQUEST),
        ("/jobs?batch=nope".to_owned(), StatusCode::OK),
    ] {
        let answer = dash.get(&uri).await;
        assert_eq!(answer.status, status, "{uri}: {}", answer.body);
    }
    assert!(dash
        .get("/jobs?batch=nope")
        .await
        .body
        .contains("a batch id is a number"));
}

#[tokio::test]
async fn a_job_page_shows_its_upstream_jobs_and_what_it_waits_for() {
    let dash = dash_with(ServerConfig::default()).await;
    let now = chrono::Utc::now();
    let job = |queue: &str, kind: &str| NewJob {
        queue: queue.into(),
        max_attempts: 1,
        ..NewJob::new(kind, json!({}))
    };
    let inserted = |jobs| {
        let store = dash.store.clone();
        async move {
            store
                .jobs_insert_many(grafter_store::JobsInsert { jobs, now })
                .await
                .unwrap()
        }
    };
    let ups = inserted(vec![job("first", "<i>extract</i>"), job("second", "load")]).await;
    let (first, second) = (ups[0].job.id, ups[1].job.id);
    let dependent = inserted(vec![NewJob {
        depends_on: vec![Upstream::Job(first), Upstream::Job(second)],
        ..job("after", "report")
    }])
    .await[0]
        .job
        .id;
    let page = dash.get(&format!("/jobs/{dependent}")).await.body;
    assert!(page.contains("waits for its dependencies"), "{page}");
    // Each upstream's page lists it among its dependents, and the list of
    // jobs filters by upstream.
    let upstream_page = dash.get(&format!("/jobs/{first}")).await.body;
    assert!(
        upstream_page.contains(&format!(r#"data-dependent-job="{dependent}""#)),
        "{upstream_page}"
    );
    assert!(
        !upstream_page.contains("data-all-dependents"),
        "{upstream_page}"
    );
    let listed = dash.get(&format!("/jobs?depends_on={second}")).await.body;
    assert!(
        listed.contains(&format!(r#"href="/jobs/{dependent}""#)),
        "{listed}"
    );
    assert!(
        !listed.contains(&format!(r#"href="/jobs/{first}""#)),
        "{listed}"
    );
    assert!(dash
        .get("/jobs?depends_on=nope")
        .await
        .body
        .contains("a job id is a number"));
    // Its dependencies move it, not a new run time: no reschedule form.
    let reschedule = format!(r#"action="/jobs/{dependent}/reschedule""#);
    assert!(!page.contains(&reschedule), "{page}");
    for up in [first, second] {
        assert!(
            page.contains(&format!(r#"data-upstream-job="{up}""#))
                && page.contains(&format!(r#"data-waits-for-job="{up}""#))
                && page.contains(&format!(r#"href="/jobs/{up}""#)),
            "{page}"
        );
    }
    assert!(
        page.contains("&lt;i&gt;extract&lt;/i&gt;"),
        "kinds are text"
    );
    // Its upstream dead, it is cancelled: the rows stay, the note goes.
    dash.kill_next("first", "no").await;
    let page = dash.get(&format!("/jobs/{dependent}")).await.body;
    assert!(page.contains(r#"badge state-dead"#), "{page}");
    assert!(page.contains(r#"badge state-cancelled"#), "{page}");
    assert!(!page.contains("data-waiting-for"), "{page}");
    assert!(
        page.contains(&reschedule),
        "a cancelled job may run again later: {page}"
    );
    // A job without dependencies has no section.
    assert!(!dash
        .get(&format!("/jobs/{second}"))
        .await
        .body
        .contains("data-dependencies"));
}
