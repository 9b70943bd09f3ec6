//! The job page's dependencies (docs/dependencies.md): the upstream jobs and
//! the batches a job waits for, each linked with its state, and for a
//! pending job, which of them it is still waiting for; and the jobs that
//! wait for it.

use grafter_core::{Job, JobState};
use grafter_store::{Dependencies, JobPage};
use maud::{html, Markup};

use super::batches::batch_badge;
use super::layout::{state_badge, time_or_dash};

/// Nothing for a job without dependencies.
pub(super) fn section(job: &Job, deps: &Dependencies) -> Markup {
    if deps.jobs.is_empty() && deps.batches.is_empty() {
        return html! {};
    }
    let waiting_jobs: Vec<&Job> = deps
        .jobs
        .iter()
        .filter(|up| !up.state.is_finished())
        .collect();
    let waiting_batches: Vec<_> = deps
        .batches
        .iter()
        .filter(|b| b.finished_at.is_none())
        .collect();
    html! {
        section.dependencies data-dependencies {
            h2 { "Dependencies" }
            @if job.state == JobState::Pending {
                p.waiting data-waiting-for {
                    strong { "Waiting for: " }
                    @for up in &waiting_jobs {
                        a href={ "/jobs/" (up.id) } data-waits-for-job=(up.id) { "job #" (up.id) }
                        " (" (up.state.as_str()) ") "
                    }
                    @for b in &waiting_batches {
                        a href={ "/batches/" (b.id) } data-waits-for-batch=(b.id) { "batch #" (b.id) }
                        " (" (b.counts.pending) " of " (b.counts.total) " jobs unfinished) "
                    }
                }
            }
            table {
                thead { tr { th { "Upstream" } th { "What" } th { "State" } th { "Finished" } } }
                tbody {
                    @for up in &deps.jobs {
                        tr data-upstream-job=(up.id) {
                            td { a href={ "/jobs/" (up.id) } { "job #" (up.id) } }
                            td { code { (up.kind) } }
                            td { (state_badge(up.state)) }
                            td { (time_or_dash(up.finished_at)) }
                        }
                    }
                    @for b in &deps.batches {
                        tr data-upstream-batch=(b.id) {
                            td { a href={ "/batches/" (b.id) } { "batch #" (b.id) } }
                            td.muted { (b.counts.completed) " of " (b.counts.total) " completed" }
                            td { (batch_badge(b)) }
                            td { (time_or_dash(b.finished_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// The first jobs that depend on `job`, linked with their states, and a link
/// to the list of them all when there are more; nothing when none does.
pub(super) fn dependents(job: &Job, first: &JobPage) -> Markup {
    if first.jobs.is_empty() {
        return html! {};
    }
    html! {
        section.dependents data-dependents {
            h2 { "Dependents" }
            table {
                thead { tr { th { "Job" } th { "What" } th { "State" } } }
                tbody {
                    @for down in &first.jobs {
                        tr data-dependent-job=(down.id) {
                            td { a href={ "/jobs/" (down.id) } { "job #" (down.id) } }
                            td { code { (down.kind) } }
                            td { (state_badge(down.state)) }
                        }
                    }
                }
            }
            @if first.next.is_some() {
                p { a href={ "/jobs?depends_on=" (job.id) } data-all-dependents { "All jobs that depend on this one" } }
            }
        }
    }
}
