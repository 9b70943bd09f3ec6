//! Batches (docs/batches.md): the list (newest first: state, counts,
//! progress) and one batch's page (its counts per state, progress,
//! callbacks, a link to its jobs). The batch's status part refreshes itself
//! while the batch is unfinished (`/batches/{id}/live`), as the batch's event
//! stream tells of each change, and shows the final state when it ends.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use grafter_core::{Batch, BatchId, BatchState, NewJob};
use grafter_store::BatchesList;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, count, time, time_or_dash, Tab};
use super::overview::urlencode;
use super::{error_page, html, store_error, stream_url, Ctx, PagePath, PageQuery};
use crate::state::AppState;

/// Batches per page of the list.
const PAGE: usize = 50;

/// Where the list starts.
#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    /// Continue below this id.
    #[serde(default)]
    before: String,
}

pub(super) async fn page(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    PageQuery(query): PageQuery<ListQuery>,
) -> Response {
    let before = match query.before.trim() {
        "" => None,
        raw => match raw.parse() {
            Ok(id) => Some(BatchId(id)),
            Err(_) => return error_page(StatusCode::BAD_REQUEST, "That page link is broken."),
        },
    };
    let batches = match state
        .store()
        .batches_list(BatchesList {
            before,
            limit: PAGE,
        })
        .await
    {
        Ok(batches) => batches,
        Err(e) => return store_error(e),
    };
    let older = (batches.len() == PAGE)
        .then(|| batches.last().map(|b| b.id))
        .flatten();
    html(layout::page(
        "Batches",
        Tab::Batches,
        &ctx,
        html! {
            h1 { "Batches" }
            @if batches.is_empty() {
                p.muted { "No batches. Create one with " code { "POST /v1/batches" } " (docs/batches.md)." }
            } @else {
                table.batches {
                    thead { tr { th { "Batch" } th { "State" } th { "Progress" } th { "Jobs" }
                        th { "Completed" } th { "Dead" } th { "Cancelled" } th { "Expired" }
                        th { "Pending" } th { "Created" } th { "Finished" } } }
                    tbody {
                        @for b in &batches {
                            tr data-batch=(b.id) {
                                td { a href={ "/batches/" (b.id) } { "#" (b.id) } }
                                td { (batch_badge(b)) }
                                td { (progress_bar(b)) }
                                td { (count(b.counts.total.max(0) as u64)) }
                                td { (count(b.counts.completed.max(0) as u64)) }
                                td { (count(b.counts.dead.max(0) as u64)) }
                                td { (count(b.counts.cancelled.max(0) as u64)) }
                                td { (count(b.counts.expired.max(0) as u64)) }
                                td { (count(b.counts.pending.max(0) as u64)) }
                                td { (time(b.created_at)) }
                                td { (time_or_dash(b.finished_at)) }
                            }
                        }
                    }
                }
                @if let Some(id) = older {
                    p { a href={ "/batches?before=" (id) } { "Older batches →" } }
                }
            }
        },
    ))
}

async fn load(state: &AppState, raw: &str) -> Result<Batch, Response> {
    let id = raw
        .parse()
        .map(BatchId)
        .map_err(|_| error_page(StatusCode::NOT_FOUND, "A batch id is a number."))?;
    match state.store().batch_get(id).await {
        Ok(Some(batch)) => Ok(batch),
        Ok(None) => Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("There is no batch {id}. It may have been pruned."),
        )),
        Err(e) => Err(store_error(e)),
    }
}

pub(super) async fn show(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    PagePath(id): PagePath<String>,
) -> Response {
    let batch = match load(&state, &id).await {
        Ok(batch) => batch,
        Err(response) => return response,
    };
    let events = batch.finished_at.is_none().then(|| {
        stream_url(
            &state,
            &ctx,
            &format!("/v1/batches/{}/events", batch.id),
            Vec::new(),
            vec![batch.id.0],
        )
    });
    html(layout::page(
        &format!("Batch {}", batch.id),
        Tab::Batches,
        &ctx,
        html! {
            h1 { "Batch #" (batch.id) }
            p { a href={ "/jobs?batch=" (batch.id) } { "Its jobs →" } }
            div data-live={ "/batches/" (batch.id) "/live" } data-interval="2000"
                data-events=[events] { (status(&batch)) }
            h2 { "Details" }
            dl.details {
                dt { "Created" } dd { (time(batch.created_at)) }
            }
        },
    ))
}

/// The status part alone, for the page's own refresh. Tells the script to
/// stop asking once the batch has finished.
pub(super) async fn live(
    State(state): State<AppState>,
    PagePath(id): PagePath<String>,
) -> Response {
    match load(&state, &id).await {
        Ok(batch) => html(status(&batch)),
        Err(response) => response,
    }
}

fn status(batch: &Batch) -> Markup {
    let c = &batch.counts;
    let link = |job_state: &str| format!("/jobs?batch={}&state={job_state}", batch.id);
    html! {
        section.status data-live-done[batch.finished_at.is_some()] {
            p {
                (batch_badge(batch))
                @if batch.open { " " span.badge.active { "open for more jobs" } } @else { " sealed" }
                @match batch.finished_at {
                    Some(finished) => { " · finished " (time(finished)) }
                    None if batch.state == BatchState::Cancelled => { " · its running jobs are asked to stop" }
                    None => {}
                }
            }
            (progress_bar(batch))
            section.counts {
                (count_box("Jobs", c.total, format!("/jobs?batch={}", batch.id)))
                (count_box("Pending", c.pending, format!("/jobs?batch={}", batch.id)))
                (count_box("Completed", c.completed, link("completed")))
                (count_box("Dead", c.dead, link("dead")))
                (count_box("Cancelled", c.cancelled, link("cancelled")))
                (count_box("Expired", c.expired, link("expired")))
            }
            h2 { "Callbacks" }
            (callbacks(batch))
        }
    }
}

fn count_box(label: &str, n: i64, href: String) -> Markup {
    html! {
        a.count href=(href) data-count=(label.to_lowercase()) {
            span.muted { (label) } strong { (count(n.max(0) as u64)) }
        }
    }
}

fn callbacks(batch: &Batch) -> Markup {
    let named: [(&str, Option<&NewJob>, &str); 3] = [
        (
            "on_success",
            batch.callbacks.on_success.as_ref(),
            "when every job completed",
        ),
        (
            "on_complete",
            batch.callbacks.on_complete.as_ref(),
            "when every job finished",
        ),
        (
            "on_failure",
            batch.callbacks.on_failure.as_ref(),
            "when the first job ends dead",
        ),
    ];
    if named.iter().all(|(_, job, _)| job.is_none()) {
        return html! { p.muted { "None." } };
    }
    html! {
        table.callbacks {
            thead { tr { th { "Callback" } th { "Runs" } th { "Kind" } th { "Queue" } th { "Enqueued" } } }
            tbody {
                @for (name, job, when) in named {
                    @if let Some(job) = job {
                        tr {
                            td { code { (name) } }
                            td.muted { (when) }
                            td { code { (job.kind) } }
                            td { a href={ "/jobs?queue=" (urlencode(&job.queue)) } { (job.queue) } }
                            td { @if batch.callbacks_enqueued.iter().any(|n| n == name) { "yes" } @else { span.muted { "not yet" } } }
                        }
                    }
                }
            }
        }
    }
}

/// A batch state as a coloured label.
pub(super) fn batch_badge(batch: &Batch) -> Markup {
    let class = match batch.state {
        BatchState::Running => "state-running",
        BatchState::Succeeded => "state-completed",
        BatchState::CompletedWithFailures => "state-dead",
        BatchState::Cancelled => "state-cancelled",
    };
    html! { span class={ "badge " (class) } data-batch-state=(batch.state.as_str()) { (batch.state.as_str()) } }
}

fn progress_bar(batch: &Batch) -> Markup {
    let percent = format!("{:.0}%", batch.progress * 100.0);
    html! {
        div.progress {
            progress max="1" value=(batch.progress) data-batch-progress=(batch.progress) { (percent) }
            span { (percent) }
        }
    }
}
