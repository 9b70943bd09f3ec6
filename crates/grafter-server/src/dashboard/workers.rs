//! Workers: who they are, where they run, what they take, how busy they are
//! and when they were last heard from.

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use chrono::{Duration, Utc};
use maud::html;

use super::layout::{self, time, Tab};
use super::{html, store_error, Ctx};
use crate::state::AppState;

pub(super) async fn page(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
) -> Response {
    let workers = match state.store().workers_list().await {
        Ok(workers) => workers,
        Err(e) => return store_error(e),
    };
    let now = Utc::now();
    let stale_after = Duration::milliseconds(
        i64::try_from(state.config().maintenance.worker_stale_ms).unwrap_or(i64::MAX),
    );
    html(layout::page(
        "Workers",
        Tab::Workers,
        &ctx,
        html! {
            h1 { "Workers" }
            @if workers.is_empty() {
                p.muted { "No worker has registered. Workers of the grafter library register themselves; others can with "
                    code { "PUT /v1/workers/{id}" } "." }
            } @else {
                table.workers {
                    thead { tr { th { "Worker" } th { "Host" } th.num { "PID" } th { "Queues" } th { "Kinds" }
                        th.num { "Running / concurrency" } th { "Started" } th { "Last heartbeat" } } }
                    tbody {
                        @for w in &workers {
                            @let r = &w.registration;
                            tr {
                                td { code { (r.id) } }
                                td { (r.host) }
                                td.num { (r.pid) }
                                td { (r.queues.join(", ")) }
                                td { @if r.kinds.is_empty() { span.muted { "any" } } @else { (r.kinds.join(", ")) } }
                                td.num { (w.running) " / " (r.concurrency) }
                                td { (time(w.started_at)) }
                                td { (time(w.last_seen_at)) @if now - w.last_seen_at > stale_after { " " span.badge.stale { "silent" } } }
                            }
                        }
                    }
                }
            }
        },
    ))
}
