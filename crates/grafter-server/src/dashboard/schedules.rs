//! Schedules (docs/schedules.md): the list (timing and zone, next and last
//! run with its job's state, paused, slots skipped), one schedule's page
//! (its definition, upcoming fire times, recent skips with their reasons,
//! its latest jobs), and pause, resume and trigger.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use grafter_core::{CatchUp, Job, JobState, Overlap, Schedule, SkippedSlots};
use grafter_store::{JobsList, Order, SKIPS_KEPT};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, count, csrf_field, path_segment, state_badge, time, time_or_dash, Tab};
use super::overview::urlencode;
use super::{
    checked_form, error_page, explain, html, redirect_with, store_error, Ctx, PageBody, PagePath,
    PageQuery,
};
use crate::state::AppState;

/// Schedules per page of the list.
const PAGE: usize = 50;
/// Fire times a schedule's page lists.
const UPCOMING: usize = 10;
/// Skip records a schedule's page lists.
const RECENT_SKIPS: usize = 20;
/// Jobs a schedule's page lists.
const RECENT_JOBS: usize = 20;

/// Where the list starts.
#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    /// Continue after this id.
    #[serde(default)]
    after: String,
}

/// One row of the list: the schedule, its last job's state (while that job
/// is kept) and the slots its kept skip records count.
struct Row {
    schedule: Schedule,
    last_job_state: Option<JobState>,
    skipped: u64,
}

async fn row(state: &AppState, schedule: Schedule) -> Result<Row, Response> {
    let last_job_state = match schedule.last_job_id {
        Some(id) => match state.store().job_get(id).await {
            Ok(job) => job.map(|job| job.state),
            Err(e) => return Err(store_error(e)),
        },
        None => None,
    };
    let skipped = match state
        .engine()
        .schedule_skips(&schedule.id, SKIPS_KEPT)
        .await
    {
        Ok(skips) => skips.iter().map(|s| s.count).sum(),
        Err(e) => return Err(store_error(e)),
    };
    Ok(Row {
        schedule,
        last_job_state,
        skipped,
    })
}

pub(super) async fn page(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    PageQuery(query): PageQuery<ListQuery>,
) -> Response {
    let after = Some(query.after.trim().to_owned()).filter(|a| !a.is_empty());
    let schedules = match state.engine().schedules_list(after.clone(), PAGE).await {
        Ok(schedules) => schedules,
        Err(e) => return store_error(e),
    };
    let next = (schedules.len() == PAGE)
        .then(|| schedules.last().map(|s| s.id.clone()))
        .flatten();
    let mut rows = Vec::with_capacity(schedules.len());
    for schedule in schedules {
        match row(&state, schedule).await {
            Ok(row) => rows.push(row),
            Err(response) => return response,
        }
    }
    html(layout::page(
        "Schedules",
        Tab::Schedules,
        &ctx,
        html! {
            h1 { "Schedules" }
            @if rows.is_empty() && after.is_none() {
                p.muted { "No schedules. Make one with " code { "PUT /v1/schedules/{id}" } ", "
                    code { "grafter schedules put" } " or a " code { "[schedules.ID]" } " table in the config file." }
            } @else {
                table.schedules {
                    thead { tr {
                        th { "Schedule" } th { "When" } th { "Zone" } th { "Status" } th { "Next run" }
                        th { "Last run" } th { "Last job" } th.num { "Skipped" } th {}
                    } }
                    tbody {
                        @for r in &rows {
                            @let s = &r.schedule;
                            tr data-schedule=(s.id) {
                                td { a href={ "/schedules/" (path_segment(&s.id)) } { (s.id) } }
                                td { (timing(s)) }
                                td { (s.spec.timezone) }
                                td { (status(s)) }
                                td { (time_or_dash(s.next_run_at)) }
                                td { (time_or_dash(s.last_run_at)) }
                                td { (last_job(s, r.last_job_state)) }
                                td.num title={ "slots not run, in the latest " (SKIPS_KEPT) " skip records" } {
                                    @if r.skipped > 0 { (count(r.skipped)) } @else { span.muted { "0" } }
                                }
                                td { (actions(s, &ctx)) }
                            }
                        }
                    }
                }
                @if let Some(next) = &next {
                    p { a href={ "/schedules?after=" (urlencode(next)) } { "Next page →" } }
                }
            }
        },
    ))
}

pub(super) async fn show(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    PagePath(id): PagePath<String>,
) -> Response {
    let engine = state.engine();
    let schedule = match engine.schedule_get(&id).await {
        Ok(schedule) => schedule,
        Err(grafter_engine::Error::NotFound(_)) => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("There is no schedule {id:?}. It may have been deleted."),
            )
        }
        Err(e) => return store_error(e),
    };
    let upcoming = if schedule.next_run_at.is_some() {
        match engine.schedule_preview(&id, UPCOMING).await {
            Ok(slots) => slots,
            Err(e) => return store_error(e),
        }
    } else {
        Vec::new()
    };
    let skips = match engine.schedule_skips(&id, RECENT_SKIPS).await {
        Ok(skips) => skips,
        Err(e) => return store_error(e),
    };
    let jobs = match state
        .store()
        .jobs_list(JobsList {
            schedule: Some(id.clone()),
            limit: RECENT_JOBS,
            order: Order::Desc,
            ..JobsList::default()
        })
        .await
    {
        Ok(page) => page.jobs,
        Err(e) => return store_error(e),
    };
    let last_job_state = schedule
        .last_job_id
        .and_then(|last| jobs.iter().find(|j| j.id == last))
        .map(|j| j.state);
    let spec = &schedule.spec;
    html(layout::page(
        &format!("Schedule {id}"),
        Tab::Schedules,
        &ctx,
        html! {
            h1 { "Schedule " code { (schedule.id) } " " (status(&schedule)) }
            (actions(&schedule, &ctx))
            section.columns {
                div {
                    h2 { "Upcoming" }
                    @if schedule.paused { p.muted { "Paused: these are the times it would fire if resumed." } }
                    @if upcoming.is_empty() { p.muted { "None: the schedule has ended." } }
                    @else { ol.upcoming { @for t in &upcoming { li { (time(*t)) } } } }
                    h2 { "Recent skips" }
                    (skipped(&skips))
                }
                div {
                    h2 { "Definition" }
                    dl.details {
                        dt { "When" } dd { (timing(&schedule)) }
                        dt { "Time zone" } dd { (spec.timezone) }
                        dt { "Job" } dd { code { (spec.job.kind) } " on queue "
                            a href={ "/jobs?queue=" (urlencode(&spec.job.queue)) } { (spec.job.queue) } }
                        dt { "Catch-up" } dd { (catch_up(&schedule)) }
                        dt { "Overlap" } dd { (overlap(spec.overlap)) }
                        dt { "Starts" } dd { (time_or_dash(spec.start_at)) }
                        dt { "Ends" } dd { (time_or_dash(spec.end_at)) }
                        dt { "Next run" } dd { (time_or_dash(schedule.next_run_at)) }
                        dt { "Last slot" } dd { (time_or_dash(schedule.last_slot)) }
                        dt { "Last run" } dd { (time_or_dash(schedule.last_run_at)) }
                        dt { "Last job" } dd { (last_job(&schedule, last_job_state)) }
                        dt { "Made by" } dd { (schedule.source.as_str())
                            @if schedule.source == grafter_core::ScheduleSource::Config { span.muted { " (the config file manages it)" } } }
                        dt { "Updated" } dd { (time(schedule.updated_at)) " (version " (schedule.version) ")" }
                    }
                }
            }
            h2 { "Latest jobs" }
            (recent_jobs(&jobs))
            p { a href={ "/jobs?schedule=" (urlencode(&schedule.id)) } { "All jobs of this schedule →" } }
        },
    ))
}

/// Pause, resume, trigger: each a POST with the CSRF field.
pub(super) async fn act(
    State(state): State<AppState>,
    PagePath((id, action)): PagePath<(String, String)>,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> Response {
    if let Err(refused) = checked_form(&state, &headers, &body) {
        return *refused;
    }
    let back = format!("/schedules/{}", path_segment(&id));
    let engine = state.engine();
    let done = match action.as_str() {
        "pause" => engine.schedule_pause(&id, true).await.map(|_| {
            format!("Paused schedule {id}: it fires nothing until you resume it.")
        }),
        "resume" => engine.schedule_pause(&id, false).await.map(|_| {
            format!(
                "Resumed schedule {id}: slots that came while it was paused are skipped; it goes on from now."
            )
        }),
        "trigger" => engine
            .schedule_trigger(&id)
            .await
            .map(|job| format!("Triggered schedule {id}: job #{} enqueued.", job.id)),
        _ => return error_page(StatusCode::NOT_FOUND, "No such action."),
    };
    match done {
        Ok(message) => redirect_with(&back, true, &message),
        Err(grafter_engine::Error::NotFound(_)) => redirect_with(
            "/schedules",
            false,
            &format!("There is no schedule {id:?}. It may have been deleted."),
        ),
        Err(e) => redirect_with(&back, false, &format!("Nothing changed: {}.", explain(e))),
    }
}

/// The cron expression, or the interval.
fn timing(s: &Schedule) -> Markup {
    html! {
        @if let Some(cron) = &s.spec.cron { code { (cron) } }
        @else if let Some(every) = s.spec.every_ms { "every " (interval(every)) }
    }
}

/// An interval in the largest unit that divides it.
fn interval(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{} d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{} s", ms / 1_000),
        ms => format!("{ms} ms"),
    }
}

fn status(s: &Schedule) -> Markup {
    html! {
        @if s.paused { span.badge.paused { "paused" } }
        @else if s.next_run_at.is_none() { span.badge { "ended" } }
        @else { span.badge.active { "active" } }
    }
}

/// The last run's job, linked, with its state while it is kept.
fn last_job(s: &Schedule, state: Option<JobState>) -> Markup {
    html! {
        @match (s.last_job_id, state) {
            (Some(id), Some(state)) => { a href={ "/jobs/" (id) } { "#" (id) } " " (state_badge(state)) }
            (Some(id), None) => { "#" (id) " " span.muted { "(no longer kept)" } }
            (None, _) => { span.muted { "—" } }
        }
    }
}

fn catch_up(s: &Schedule) -> String {
    match s.spec.catch_up {
        CatchUp::Skip => "skip missed slots".to_owned(),
        CatchUp::Latest => "run the latest missed slot".to_owned(),
        CatchUp::All => format!(
            "run missed slots up to {} late, at most {}",
            layout::age(chrono::Duration::milliseconds(
                i64::try_from(s.spec.catch_up_window_ms).unwrap_or(i64::MAX)
            )),
            s.spec.catch_up_max
        ),
    }
}

fn overlap(overlap: Overlap) -> &'static str {
    match overlap {
        Overlap::Allow => "run even if the previous run is unfinished",
        Overlap::Skip => "skip a slot while the previous run is unfinished",
        Overlap::CancelPrevious => "cancel an unfinished previous run",
    }
}

/// The schedule's buttons; none for a caller who may not change schedules.
fn actions(s: &Schedule, ctx: &Ctx) -> Markup {
    if !ctx.can_manage {
        return html! {};
    }
    let form = |action: &str, label: &str, confirm: Option<String>| {
        html! {
            form method="post" action={ "/schedules/" (path_segment(&s.id)) "/" (action) } {
                (csrf_field(ctx))
                button type="submit" data-confirm=[confirm] { (label) }
            }
        }
    };
    html! {
        div.actions {
            @if s.paused { (form("resume", "Resume", None)) }
            @else { (form("pause", "Pause", Some(format!("Pause schedule {}? Its slots are skipped until you resume it.", s.id)))) }
            (form("trigger", "Trigger now", Some(format!("Enqueue a run of schedule {} now?", s.id))))
        }
    }
}

fn skipped(skips: &[SkippedSlots]) -> Markup {
    html! {
        @if skips.is_empty() { p.muted { "No slot was skipped." } }
        @else {
            table.skips {
                thead { tr { th { "From slot" } th { "To slot" } th.num { "Slots" } th { "Reason" } th { "Decided" } } }
                tbody {
                    @for skip in skips {
                        tr {
                            td { (time(skip.first_slot)) }
                            td { (time(skip.last_slot)) }
                            td.num { (count(skip.count)) }
                            td { code { (skip.reason.as_str()) } }
                            td { (time(skip.recorded_at)) }
                        }
                    }
                }
            }
        }
    }
}

fn recent_jobs(jobs: &[Job]) -> Markup {
    html! {
        @if jobs.is_empty() { p.muted { "No job of this schedule is kept." } }
        @else {
            table.jobs {
                thead { tr { th { "Job" } th { "State" } th { "Slot" } th { "Enqueued" } th.num { "Attempt" } } }
                tbody {
                    @for job in jobs {
                        tr data-job=(job.id) {
                            td { a href={ "/jobs/" (job.id) } { "#" (job.id) } }
                            td { (state_badge(job.state)) }
                            td { @match job.schedule.as_ref().and_then(|s| s.slot) {
                                Some(slot) => (time(slot)),
                                None => span.muted { "triggered" },
                            } }
                            td { (time(job.created_at)) }
                            td.num { (job.attempt) " / " (job.max_attempts) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interval;

    #[test]
    fn intervals_read_in_their_largest_unit() {
        assert_eq!(interval(1_000), "1 s");
        assert_eq!(interval(90_000), "90 s");
        assert_eq!(interval(60_000), "1 min");
        assert_eq!(interval(7_200_000), "2 h");
        assert_eq!(interval(86_400_000), "1 d");
        assert_eq!(interval(1_500), "1500 ms");
    }
}
