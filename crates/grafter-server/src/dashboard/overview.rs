//! The overview: jobs per state and per queue, throughput over the last hour
//! and day, how long each queue's oldest job has waited, and live workers.
//! The body refreshes itself every few seconds (`/overview/live`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use chrono::{Duration, Utc};
use grafter_core::JobState;
use grafter_store::ThroughputRange;
use maud::{html, Markup};

use super::chart;
use super::layout::{self, age, count, state_badge, time, Tab};
use super::{html, store_error, Ctx};
use crate::state::AppState;

pub(super) async fn page(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
) -> Response {
    match body(&state).await {
        Ok(body) => html(layout::page(
            "Overview",
            Tab::Overview,
            &ctx,
            html! {
                h1 { "Overview" }
                div data-live="/overview/live" data-interval="3000" { (body) }
            },
        )),
        Err(e) => store_error(e),
    }
}

/// The overview's body alone, for the page's own refresh.
pub(super) async fn live(State(state): State<AppState>) -> Response {
    match body(&state).await {
        Ok(body) => html(body),
        Err(e) => store_error(e),
    }
}

async fn body(state: &AppState) -> grafter_store::Result<Markup> {
    let now = Utc::now();
    let store = state.store();
    let (queues, throughput, workers) = tokio::try_join!(
        store.queues_list(),
        store.throughput_list(ThroughputRange {
            since: now - Duration::hours(24),
            until: now + Duration::minutes(1)
        }),
        store.workers_list(),
    )?;
    let mut totals: BTreeMap<JobState, u64> = JobState::ALL.into_iter().map(|s| (s, 0)).collect();
    for q in &queues {
        for (s, n) in &q.counts {
            *totals.entry(*s).or_default() += n;
        }
    }
    let minutes = chart::buckets(&throughput, now, Duration::minutes(1), 60);
    let hours = chart::buckets(&throughput, now, Duration::hours(1), 24);
    let stale_after = Duration::milliseconds(
        i64::try_from(state.config().maintenance.worker_stale_ms).unwrap_or(i64::MAX),
    );
    Ok(html! {
        section.counts {
            @for (s, n) in &totals {
                a.count href={ "/jobs?state=" (s.as_str()) } data-state=(s.as_str()) {
                    span.n { (count(*n)) }
                    (state_badge(*s))
                }
            }
        }
        section.charts {
            (chart::render("Last hour, per minute", &minutes, "minute", "60 min"))
            (chart::render("Last day, per hour", &hours, "hour", "24 h"))
        }
        section {
            h2 { "Queues" }
            @if queues.is_empty() {
                p.muted { "No jobs yet. Enqueue one with " code { "POST /v1/jobs" } " or " code { "grafter enqueue" } "." }
            } @else {
                table.queues {
                    thead { tr { th { "Queue" } th.num { "Available" } th.num { "Running" } th.num { "Scheduled" }
                        th.num { "Retryable" } th.num { "Dead" } th { "Oldest available waits" } th { "" } } }
                    tbody {
                        @for q in &queues {
                            tr data-queue=(q.name) {
                                td { a href={ "/jobs?queue=" (urlencode(&q.name)) } { (q.name) } }
                                @for s in [JobState::Available, JobState::Running, JobState::Scheduled, JobState::Retryable, JobState::Dead] {
                                    td.num { a href={ "/jobs?queue=" (urlencode(&q.name)) "&state=" (s.as_str()) } { (count(q.counts.get(&s).copied().unwrap_or(0))) } }
                                }
                                td {
                                    @if let Some(t) = q.oldest_available_at { (age(now - t)) " (since " (time(t)) ")" }
                                    @else { span.muted { "—" } }
                                }
                                td { @if q.paused { span.badge.paused { "paused" } } }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Workers (" (workers.len()) ")" }
            @if workers.is_empty() {
                p.muted { "No worker has registered. Workers of the grafter library (and any that call " code { "PUT /v1/workers/{id}" } ") show here." }
            } @else {
                table.workers {
                    thead { tr { th { "Worker" } th { "Host" } th { "Queues" } th.num { "Running" } th { "Last heartbeat" } } }
                    tbody {
                        @for w in &workers {
                            tr {
                                td { code { (w.registration.id) } }
                                td { (w.registration.host) }
                                td { (w.registration.queues.join(", ")) }
                                td.num { (w.running) " / " (w.registration.concurrency) }
                                td { (time(w.last_seen_at)) @if now - w.last_seen_at > stale_after { " " span.badge.stale { "silent" } } }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// Percent-encodes a query value.
pub(super) fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
