//! One job: its args, state timeline, every attempt, progress and result,
//! what it depends on (`job_dependencies`), and
//! what can be done to it (retry, run now, cancel, delete, reschedule, edit
//! the args and retry). The status part refreshes itself while the job is
//! unfinished (`/jobs/{id}/live`), as the job's event stream tells of each
//! change.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use grafter_core::{Job, JobId, JobState};
use grafter_engine::When;
use grafter_store::JobsList;
use maud::{html, Markup};
use serde_json::Value;

use super::job_dependencies;
use super::layout::{self, csrf_field, state_badge, time, time_or_dash, Tab};
use super::{
    checked_form, error_page, explain, html, redirect_with, store_error, stream_url, Ctx, PageBody,
    PagePath,
};
use crate::state::AppState;

fn parse_id(raw: &str) -> Option<JobId> {
    raw.parse().ok().map(JobId)
}

async fn load(state: &AppState, raw: &str) -> Result<Job, Response> {
    let id =
        parse_id(raw).ok_or_else(|| error_page(StatusCode::NOT_FOUND, "A job id is a number."))?;
    match state.store().job_get(id).await {
        Ok(Some(job)) => Ok(job),
        Ok(None) => Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("There is no job {id}. It may have been deleted or pruned."),
        )),
        Err(e) => Err(store_error(e)),
    }
}

/// How many of a job's dependents its page lists (the rest: a link).
const DEPENDENTS_SHOWN: usize = 20;

pub(super) async fn page(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    PagePath(id): PagePath<String>,
) -> Response {
    let job = match load(&state, &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    // Why an available job is not starting (a pause or a limit); a failed
    // look only leaves the note out.
    let held = state.engine().held(&job).await.ok().flatten();
    // What it waits for; a failed read only leaves the section out.
    let dependencies = state
        .store()
        .job_dependencies(job.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    // The first jobs that wait for it; a failed read leaves them out.
    let dependents = match state
        .store()
        .jobs_list(JobsList {
            depends_on: Some(job.id),
            limit: DEPENDENTS_SHOWN,
            ..JobsList::default()
        })
        .await
    {
        Ok(first) => job_dependencies::dependents(&job, &first),
        Err(_) => html! {},
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let editable = !matches!(job.state, JobState::Running | JobState::Completed);
    html(layout::page(
        &format!("Job {}", job.id),
        Tab::Jobs,
        &ctx,
        html! {
            h1 { "Job #" (job.id) " " code { (job.kind) } }
            div data-live={ "/jobs/" (job.id) "/live" } data-interval="2000"
                data-events=[(!job.state.is_finished()).then(|| events_url(&state, &ctx, job.id))] { (status(&job)) }
            @if let Some(held) = &held {
                p.held data-held=(held.reason.as_str()) {
                    strong { "Held back: " } (held.message)
                }
            }
            (actions(&job, &ctx))
            (job_dependencies::section(&job, &dependencies))
            (dependents)
            section.columns {
                div {
                    h2 { "Args" }
                    pre.json { (pretty(&job.args)) }
                    @if editable && ctx.can_manage {
                        details.edit {
                            summary { "Edit the args and retry" }
                            form method="post" action={ "/jobs/" (job.id) "/edit-retry" } {
                                (csrf_field(&ctx))
                                textarea name="args" rows="10" spellcheck="false" { (pretty(&job.args)) }
                                button type="submit" data-confirm="Save these args and run the job again now?" { "Save and retry" }
                            }
                        }
                    }
                    h2 { "Result" }
                    @match &job.result {
                        Some(result) => pre.json { (pretty(result)) }
                        None => p.muted { "None yet." }
                    }
                }
                div {
                    h2 { "Timeline" }
                    (timeline(&job))
                    h2 { "Details" }
                    dl.details {
                        dt { "Queue" } dd { a href={ "/jobs?queue=" (super::overview::urlencode(&job.queue)) } { (job.queue) } }
                        @if let Some(batch) = job.batch_id {
                            dt { "Batch" } dd { a href={ "/batches/" (batch) } data-batch-link { "#" (batch) } }
                        }
                        dt { "Priority" } dd { (job.priority) " (lower runs first)" }
                        dt { "Tags" } dd { @if job.tags.is_empty() { span.muted { "none" } } @for t in &job.tags {
                            a.tag href={ "/jobs?tag=" (super::overview::urlencode(t)) } { (t) } " " } }
                        dt { "Partition" } dd { @if let Some(p) = &job.partition { code { (p) } } @else { span.muted { "none" } } }
                        dt { "Unique key" } dd { @if let Some(k) = &job.unique_key { code { (k) } } @else { span.muted { "none" } } }
                        dt { "Timeout" } dd { @if let Some(t) = job.timeout_ms { (t) " ms" } @else { span.muted { "none" } } }
                        dt { "Expires" } dd { (time_or_dash(job.expires_at)) }
                        dt { "Backoff" } dd { @if let Some(b) = &job.backoff { code { (serde_json::to_string(b).unwrap_or_default()) } } @else { span.muted { "the server's" } } }
                    }
                }
            }
            h2 { "Attempts" }
            (attempts(&job))
        },
    ))
}

/// The job's event stream, with a token for it.
fn events_url(state: &AppState, ctx: &Ctx, id: JobId) -> String {
    stream_url(
        state,
        ctx,
        &format!("/v1/jobs/{id}/events"),
        vec![id],
        Vec::new(),
    )
}

/// The status part alone, for the page's own refresh. Tells the script to
/// stop asking once the job is finished.
pub(super) async fn live(
    State(state): State<AppState>,
    PagePath(id): PagePath<String>,
) -> Response {
    match load(&state, &id).await {
        Ok(job) => html(status(&job)),
        Err(response) => response,
    }
}

fn status(job: &Job) -> Markup {
    html! {
        section.status data-live-done[job.state.is_finished()] {
            p {
                (state_badge(job.state))
                " attempt " strong { (job.attempt) } " of " (job.max_attempts)
                @if job.cancel_requested && job.state == JobState::Running { " " span.badge.paused { "cancel requested" } }
                @match job.state {
                    JobState::Scheduled | JobState::Retryable => { " · runs at " (time(job.run_at)) }
                    JobState::Available => { " · waiting since " (time(job.run_at)) }
                    JobState::Pending => { " · waits for its dependencies" }
                    JobState::Running => {
                        " · started " (time_or_dash(job.attempted_at))
                        @if let Some(w) = &job.worker_id { " by " code { (w) } }
                        @if let Some(l) = job.lease_expires_at { " · lease until " (time(l)) }
                    }
                    _ => { " · finished " (time_or_dash(job.finished_at)) }
                }
            }
            @if let Some(p) = &job.progress {
                div.progress {
                    progress max="1" value=(p.fraction) { (format!("{:.0}%", p.fraction * 100.0)) }
                    span { (format!("{:.0}%", p.fraction * 100.0)) }
                    @if let Some(m) = &p.message { " " span.message { (m) } }
                }
            }
        }
    }
}

/// The job's buttons; none for a caller who may not change jobs.
fn actions(job: &Job, ctx: &Ctx) -> Markup {
    if !ctx.can_manage {
        return html! {};
    }
    let form = |action: &str, label: &str, confirm: Option<&str>, class: Option<&str>| {
        html! {
            form method="post" action={ "/jobs/" (job.id) "/" (action) } {
                (csrf_field(ctx))
                button type="submit" class=[class] data-confirm=[confirm] { (label) }
            }
        }
    };
    let waiting = matches!(job.state, JobState::Scheduled | JobState::Retryable);
    let retryable = matches!(
        job.state,
        JobState::Dead | JobState::Cancelled | JobState::Expired
    );
    let now_local = Utc::now().format("%Y-%m-%dT%H:%M").to_string();
    html! {
        section.actions {
            @if retryable { (form("retry", "Retry", None, None)) }
            @if waiting { (form("run-now", "Run now", None, None)) }
            @if !job.state.is_finished() {
                (form("cancel", if job.state == JobState::Running { "Ask to cancel" } else { "Cancel" }, Some("Cancel this job?"), None))
            }
            (form("delete", "Delete", Some("Delete this job for good?"), Some("danger")))
            // A running job is moved by its worker, a pending one by its
            // dependencies, and a completed one stands: the store refuses to
            // reschedule them.
            @if !matches!(job.state, JobState::Running | JobState::Pending | JobState::Completed) {
                form.reschedule method="post" action={ "/jobs/" (job.id) "/reschedule" } {
                    (csrf_field(ctx))
                    label { "Run at " input type="datetime-local" name="when" value=(now_local) min="0001-01-01T00:00" max="9999-12-31T23:59" required; }
                    input type="hidden" name="tz_offset" value="0";
                    button type="submit" { "Reschedule" }
                }
            }
        }
    }
}

/// The job's life in order, from what it records: enqueued, each failed
/// attempt, the latest start, and where it is now.
fn timeline(job: &Job) -> Markup {
    // (time, order among events at the same time, what, detail)
    let mut events: Vec<(DateTime<Utc>, u8, String, Option<&str>)> =
        vec![(job.created_at, 0, "enqueued".into(), None)];
    if let Some(at) = job.attempted_at {
        events.push((at, 1, format!("attempt {} started", job.attempt), None));
    }
    for e in &job.errors {
        events.push((
            e.at,
            2,
            format!("attempt {} failed", e.attempt),
            Some(&e.error),
        ));
    }
    match job.state {
        JobState::Scheduled | JobState::Retryable => events.push((
            job.run_at,
            3,
            format!("{} until this time", job.state),
            None,
        )),
        JobState::Available => events.push((job.run_at, 3, "available".into(), None)),
        _ => {}
    }
    if let Some(at) = job.finished_at {
        events.push((at, 4, job.state.to_string(), None));
    }
    events.sort_by_key(|(at, rank, ..)| (*at, *rank));
    html! {
        ol.timeline {
            @for (at, _, what, detail) in &events {
                li { (time(*at)) " — " strong { (what) } @if let Some(d) = detail { ": " span.error { (d) } } }
            }
        }
    }
}

/// Every attempt: the failed ones from `errors`, and the latest when it did
/// not fail (running, completed, or ended otherwise).
fn attempts(job: &Job) -> Markup {
    let latest_failed = job.errors.last().is_some_and(|e| e.attempt == job.attempt);
    html! {
        @if job.attempt == 0 {
            p.muted { "Not run yet." }
        } @else {
            table.attempts {
                thead { tr { th.num { "#" } th { "Outcome" } th { "Error" } th { "Worker" } th { "When" } } }
                tbody {
                    @for e in &job.errors {
                        tr.failed { td.num { (e.attempt) } td { "failed" } td.error { pre { (e.error) } }
                            td { @if let Some(w) = &e.worker_id { code { (w) } } } td { (time(e.at)) } }
                    }
                    @if !latest_failed {
                        tr { td.num { (job.attempt) } td { (job.state) } td {}
                            td { @if let Some(w) = &job.worker_id { code { (w) } } }
                            td { (time_or_dash(job.finished_at.or(job.attempted_at))) } }
                    }
                }
            }
        }
    }
}

/// A time picked in the browser (`datetime-local`) and the browser's offset
/// from UTC in minutes as JavaScript reports it (UTC minus local).
/// The run time a reschedule form picked: `when` in the browser's local time,
/// `tz_offset` minutes from it to UTC (JavaScript's `getTimezoneOffset`).
/// Only years 1 to 9999 are taken, what RFC 3339 and so the API can write:
/// the time field accepts years up to ±262143, where the offset alone
/// overflows.
fn picked_time(when: &str, tz_offset: &str) -> Result<DateTime<Utc>, &'static str> {
    let pick = "Pick a date and time to run the job.";
    let local = NaiveDateTime::parse_from_str(when.trim(), "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(when.trim(), "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| pick)?;
    let offset: i64 = tz_offset
        .trim()
        .parse()
        .ok()
        .filter(|m: &i64| m.abs() <= 24 * 60)
        .ok_or(pick)?;
    local
        .and_utc()
        .checked_add_signed(chrono::Duration::minutes(offset))
        .filter(|at| (1..=9999).contains(&at.year()))
        .ok_or("Pick a date between the years 1 and 9999.")
}

pub(super) async fn act(
    State(state): State<AppState>,
    PagePath((raw, action)): PagePath<(String, String)>,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> Response {
    let form = match checked_form(&state, &headers, &body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    let Some(id) = parse_id(&raw) else {
        return error_page(StatusCode::NOT_FOUND, "A job id is a number.");
    };
    let back = format!("/jobs/{id}");
    let engine = state.engine();
    let done = match action.as_str() {
        "retry" | "run-now" => engine.retry(id, None).await.map(|_| {
            if action == "retry" {
                "Retried: the job is available to run now."
            } else {
                "The job is available to run now."
            }
        }),
        "cancel" => engine.cancel(id).await.map(|job| {
            if job.state == JobState::Running {
                "Cancel requested: the worker will stop the job at its next heartbeat."
            } else {
                "Cancelled."
            }
        }),
        "delete" => match engine.delete(id).await {
            Ok(()) => return redirect_with("/jobs", true, &format!("Deleted job {id}.")),
            Err(e) => Err(e),
        },
        "reschedule" => {
            let run_at = match picked_time(
                form.get("when").unwrap_or_default(),
                form.get("tz_offset").unwrap_or("0"),
            ) {
                Ok(run_at) => run_at,
                Err(message) => return redirect_with(&back, false, message),
            };
            match engine.reschedule(id, When::At(run_at)).await {
                Ok(_) => {
                    let at = run_at.format("%Y-%m-%d %H:%M UTC");
                    return redirect_with(&back, true, &format!("Rescheduled to {at}."));
                }
                Err(e) => Err(e),
            }
        }
        "edit-retry" => {
            let args: Value = match serde_json::from_str(form.get("args").unwrap_or_default()) {
                Ok(args) => args,
                Err(e) => {
                    return redirect_with(
                        &back,
                        false,
                        &format!("The args are not valid JSON: {e}. Nothing changed."),
                    )
                }
            };
            engine
                .retry(id, Some(args))
                .await
                .map(|_| "Saved the new args; the job is available to run now.")
        }
        _ => return error_page(StatusCode::NOT_FOUND, "No such action."),
    };
    match done {
        Ok(message) => redirect_with(&back, true, message),
        Err(e) => redirect_with(&back, false, &format!("Nothing changed: {}.", explain(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_times_use_the_browsers_offset() {
        // Berlin in winter: JavaScript says -60 (UTC is an hour behind).
        let t = picked_time("2030-01-02T10:30", "-60").unwrap();
        assert_eq!(t.to_rfc3339(), "2030-01-02T09:30:00+00:00");
        assert_eq!(
            picked_time("2030-01-02T10:30", "0").unwrap().to_rfc3339(),
            "2030-01-02T10:30:00+00:00"
        );
        assert!(picked_time("tomorrow", "0").is_err());
        assert!(picked_time("2030-01-02T10:30", "99999").is_err());
    }

    #[test]
    fn picked_times_beyond_what_the_api_can_write_are_refused() {
        for (when, tz_offset) in [
            ("+262142-12-31T23:59", "1440"),
            ("-262143-01-01T00:00", "-1440"),
            ("+10000-01-01T00:00", "0"),
            ("0000-12-31T23:59", "0"),
            ("0001-01-01T00:30", "-60"),
        ] {
            assert_eq!(
                picked_time(when, tz_offset),
                Err("Pick a date between the years 1 and 9999."),
                "{when} {tz_offset}"
            );
        }
        assert!(picked_time("9999-12-31T23:59", "0").is_ok());
        assert!(picked_time("0001-01-01T00:00", "0").is_ok());
    }
}
