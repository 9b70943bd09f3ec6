//! Queues: depth, how long the oldest job has waited, paused or not (with the
//! buttons to change it), its limits, and the push target if any — never its
//! secrets.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use chrono::Utc;
use grafter_core::JobState;
use maud::html;

use super::layout::{self, age, count, csrf_field, path_segment, time, Tab};
use super::overview::urlencode;
use super::{
    checked_form, error_page, explain, html, redirect_with, store_error, Ctx, PageBody, PagePath,
};
use crate::state::AppState;

pub(super) async fn page(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
) -> Response {
    let queues = match state.store().queues_list().await {
        Ok(queues) => queues,
        Err(e) => return store_error(e),
    };
    let now = Utc::now();
    html(layout::page(
        "Queues",
        Tab::Queues,
        &ctx,
        html! {
            h1 { "Queues" }
            @if queues.is_empty() { p.muted { "No queues yet: a queue appears with its first job." } }
            @else {
                table.queues {
                    thead { tr {
                        th { "Queue" } th { "Status" } th.num { "Depth (available)" } th.num { "Scheduled" } th.num { "Retryable" }
                        th.num { "Running" } th.num { "Dead" } th { "Oldest available waits" } th { "Limits" } th { "Push target" } th {}
                    } }
                    tbody {
                        @for q in &queues {
                            @let n = |s: JobState| count(q.counts.get(&s).copied().unwrap_or(0));
                            tr data-queue=(q.name) {
                                td { a href={ "/jobs?queue=" (urlencode(&q.name)) } { (q.name) } }
                                td { @if q.paused { span.badge.paused { "paused" } } @else { span.badge.active { "active" } } }
                                td.num { (n(JobState::Available)) }
                                td.num { (n(JobState::Scheduled)) }
                                td.num { (n(JobState::Retryable)) }
                                td.num { (n(JobState::Running)) }
                                td.num { a href={ "/jobs?state=dead&queue=" (urlencode(&q.name)) } { (n(JobState::Dead)) } }
                                td { @if let Some(t) = q.oldest_available_at { (age(now - t)) " (since " (time(t)) ")" } @else { span.muted { "—" } } }
                                td.limits {
                                    @if let Some(l) = &q.limits {
                                        @if let Some(n) = l.concurrency { (n) " at once" br; }
                                        @if let Some(r) = l.rate { (r.count) " per " (r.period_ms) " ms" br; }
                                        @if let Some(by) = &l.partition_by { span.muted { "per " code { (by) } } }
                                    } @else { span.muted { "none" } }
                                }
                                td {
                                    @if let Some(p) = &q.push {
                                        code { (p.redacted_url()) } br;
                                        span.muted { "up to " (p.concurrency) " at once, " (p.timeout_ms) " ms timeout, signed" }
                                    } @else { span.muted { "pull (workers fetch)" } }
                                }
                                td {
                                    @if ctx.can_change_queues {
                                    form method="post" action={ "/queues/" (path_segment(&q.name)) "/" (if q.paused { "resume" } else { "pause" }) } {
                                        (csrf_field(&ctx))
                                        @if q.paused {
                                            button type="submit" { "Resume" }
                                        } @else {
                                            button type="submit" data-confirm={ "Pause queue " (q.name) "? Running jobs go on; no new ones start." } { "Pause" }
                                        }
                                    }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

pub(super) async fn act(
    State(state): State<AppState>,
    PagePath((name, action)): PagePath<(String, String)>,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> Response {
    if let Err(refused) = checked_form(&state, &headers, &body) {
        return *refused;
    }
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return error_page(StatusCode::NOT_FOUND, "No such action."),
    };
    match state.engine().queue_pause(&name, paused).await {
        Ok(_) if paused => redirect_with(
            "/queues",
            true,
            &format!("Paused queue {name}: no new jobs start until you resume it."),
        ),
        Ok(_) => redirect_with("/queues", true, &format!("Resumed queue {name}.")),
        Err(e) => redirect_with(
            "/queues",
            false,
            &format!("Nothing changed: {}.", explain(e)),
        ),
    }
}
