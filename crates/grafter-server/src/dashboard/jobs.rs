//! The job list: filters (state, queue, kind, tag, schedule, batch, a value inside
//! args), a jump to an id, newest or oldest first, keyset pages, and bulk
//! retry, cancel and delete of selected rows or of every dead job a filter
//! matches.

use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use grafter_core::{CutField, Job, JobId, JobState};
use grafter_store::{BulkAction, BulkOutcome, JobsBulk, JobsList, Order};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, clip, count, csrf_field, state_badge, time, time_or_dash, Tab};
use super::{
    checked_form, explain, html, redirect_with, store_error, Ctx, FormData, PageBody, PageQuery,
};
use crate::filters::{id_filter, name_filter, parse_args, SCAN_LIMIT};
use crate::state::AppState;

/// Rows per page.
const PAGE: usize = 50;
/// How long one "all matching" bulk request works before it reports back.
const BULK_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// The list's filters, as the form and links carry them.
#[derive(Deserialize, Default, Clone)]
pub(super) struct Filter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    tag: String,
    /// The schedule that made the jobs.
    #[serde(default)]
    schedule: String,
    /// The batch the jobs are in (its id).
    #[serde(default)]
    batch: String,
    /// The job the jobs depend on (its id): its dependents.
    #[serde(default)]
    depends_on: String,
    /// `path=value`, e.g. `user.id=42`.
    #[serde(default)]
    args: String,
    /// A job id to jump to.
    #[serde(default)]
    id: String,
    /// `asc` for oldest first.
    #[serde(default)]
    order: String,
    /// Continue after this id.
    #[serde(default)]
    cursor: String,
}

impl Filter {
    fn from_form(form: &FormData) -> Self {
        let get = |n: &str| form.get(n).unwrap_or_default().to_owned();
        Filter {
            state: get("state"),
            queue: get("queue"),
            kind: get("kind"),
            tag: get("tag"),
            schedule: get("schedule"),
            batch: get("batch"),
            depends_on: get("depends_on"),
            args: get("args"),
            id: String::new(),
            order: get("order"),
            cursor: String::new(),
        }
    }

    /// The store's filter, or what is wrong with the input.
    fn to_list(&self, limit: usize) -> Result<JobsList, String> {
        let some = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let state = some(&self.state)
            .map(|s| s.parse::<JobState>().map_err(|e| e.to_string()))
            .transpose()?;
        let id =
            |value: &str, message: &str| id_filter(value.trim()).map_err(|_| message.to_owned());
        let after = id(&self.cursor, "that page link is broken")?.map(JobId);
        Ok(JobsList {
            state,
            queue: name_filter("queue", self.queue.trim()).map_err(|e| e.to_string())?,
            kind: name_filter("kind", self.kind.trim()).map_err(|e| e.to_string())?,
            tag: name_filter("tag", self.tag.trim()).map_err(|e| e.to_string())?,
            schedule: name_filter("schedule", self.schedule.trim()).map_err(|e| e.to_string())?,
            batch: id(&self.batch, "a batch id is a number")?.map(grafter_core::BatchId),
            depends_on: id(&self.depends_on, "a job id is a number")?.map(JobId),
            args: some(&self.args).map(|a| parse_args(&a)).transpose()?,
            limit,
            after,
            order: if self.order == "asc" {
                Order::Asc
            } else {
                Order::Desc
            },
            scan_limit: Some(SCAN_LIMIT),
        })
    }

    /// The query string of this filter (without the cursor), for links.
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("state", &self.state),
            ("queue", &self.queue),
            ("kind", &self.kind),
            ("tag", &self.tag),
            ("schedule", &self.schedule),
            ("batch", &self.batch),
            ("depends_on", &self.depends_on),
            ("args", &self.args),
            ("order", &self.order),
        ] {
            if !v.trim().is_empty() {
                q.append_pair(k, v.trim());
            }
        }
        q.finish()
    }

    fn hidden_fields(&self) -> Markup {
        html! {
            @for (k, v) in [("state", &self.state), ("queue", &self.queue), ("kind", &self.kind),
                            ("tag", &self.tag), ("schedule", &self.schedule), ("batch", &self.batch),
                            ("depends_on", &self.depends_on), ("args", &self.args), ("order", &self.order)] {
                input type="hidden" name=(k) value=(v);
            }
        }
    }
}

pub(super) async fn page(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    PageQuery(filter): PageQuery<Filter>,
) -> Response {
    let id = filter.id.trim().trim_start_matches('#');
    if !id.is_empty() {
        return match id.parse::<i64>() {
            Ok(id) => match state.store().job_get(JobId(id)).await {
                Ok(Some(_)) => Redirect::to(&format!("/jobs/{id}")).into_response(),
                Ok(None) => redirect_with(
                    &format!("/jobs?{}", filter.query()),
                    false,
                    &format!("There is no job {id}."),
                ),
                Err(e) => store_error(e),
            },
            Err(_) => redirect_with("/jobs", false, "A job id is a number."),
        };
    }
    let (queues, page, problem) = {
        let queues = match state.store().queues_list().await {
            Ok(q) => q,
            Err(e) => return store_error(e),
        };
        match filter.to_list(PAGE) {
            Ok(list) => match state.store().jobs_list(list).await {
                Ok(page) => (queues, Some(page), None),
                Err(grafter_store::StoreError::Invalid(m)) => (queues, None, Some(m)),
                Err(e) => return store_error(e),
            },
            Err(problem) => (queues, None, Some(problem)),
        }
    };
    let mut per_state = std::collections::BTreeMap::<JobState, u64>::new();
    for q in queues
        .iter()
        .filter(|q| filter.queue.trim().is_empty() || q.name == filter.queue.trim())
    {
        for (s, n) in &q.counts {
            *per_state.entry(*s).or_default() += n;
        }
    }
    let tab_link = |s: Option<JobState>| {
        let f = Filter {
            state: s.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            ..filter.clone()
        };
        format!("/jobs?{}", f.query())
    };
    let dead = filter.state == "dead";
    html(layout::page(
        "Jobs",
        Tab::Jobs,
        &ctx,
        html! {
            h1 { "Jobs" }
            nav.states {
                a href=(tab_link(None)) class=[filter.state.is_empty().then_some("current")] { "all" }
                @for s in JobState::ALL {
                    a href=(tab_link(Some(s))) class=[(filter.state == s.as_str()).then_some("current")] {
                        (s.as_str()) " " span.muted { (count(per_state.get(&s).copied().unwrap_or(0))) }
                    }
                }
            }
            form.filters method="get" action="/jobs" {
                input type="hidden" name="state" value=(filter.state);
                label { "Queue " input list="queue-names" name="queue" value=(filter.queue) placeholder="any"; }
                datalist id="queue-names" { @for q in &queues { option value=(q.name) {} } }
                label { "Kind " input name="kind" value=(filter.kind) placeholder="any"; }
                label { "Tag " input name="tag" value=(filter.tag) placeholder="any"; }
                label { "Schedule " input name="schedule" value=(filter.schedule) placeholder="any"; }
                label { "Batch " input name="batch" value=(filter.batch) placeholder="any" size="8"; }
                label { "Depends on job " input name="depends_on" value=(filter.depends_on) placeholder="any" size="8"; }
                label { "Args " input name="args" value=(filter.args) placeholder="user.id=42"; }
                label { "Order "
                    select name="order" {
                        option value="desc" selected[filter.order != "asc"] { "newest first" }
                        option value="asc" selected[filter.order == "asc"] { "oldest first" }
                    }
                }
                button type="submit" { "Filter" }
                a href="/jobs" { "clear" }
            }
            form.jump method="get" action="/jobs" {
                label { "Job id " input name="id" inputmode="numeric" placeholder="12345" size="8"; }
                button type="submit" { "Open" }
            }
            @if let Some(problem) = &problem { p.flash.error role="alert" { (problem) } }
            @if let Some(page) = &page {
                @if !ctx.can_manage { (table(&page.jobs, false)) }
                @else {
                form.bulk method="post" action="/jobs/bulk" {
                    (csrf_field(&ctx))
                    (filter.hidden_fields())
                    div.actions {
                        "Selected: "
                        button type="submit" name="action" value="retry" data-confirm="Retry the selected jobs?" { "Retry" }
                        button type="submit" name="action" value="cancel" data-confirm="Cancel the selected jobs?" { "Cancel" }
                        button.danger type="submit" name="action" value="delete" data-confirm="Delete the selected jobs for good?" { "Delete" }
                    }
                    (table(&page.jobs, true))
                }
                }
                @if page.jobs.is_empty() {
                    p.muted { @if page.next.is_some() { "No match among the " (count(SCAN_LIMIT as u64)) " jobs looked at for this page." } @else { "No jobs match." } }
                } @else if page.jobs.len() < PAGE && page.next.is_some() {
                    p.muted { "This page looked at " (count(SCAN_LIMIT as u64)) " jobs and found " (page.jobs.len()) "; more may follow." }
                }
                nav.pages {
                    @if !filter.cursor.is_empty() { a href={ "/jobs?" (filter.query()) } { "« First page" } }
                    @if let Some(next) = page.next { a.next href={ "/jobs?" (filter.query()) "&cursor=" (next) } { "Next page »" } }
                }
                @if dead && ctx.can_manage {
                    form.all method="post" action="/jobs/bulk" {
                        (csrf_field(&ctx))
                        (filter.hidden_fields())
                        input type="hidden" name="all" value="1";
                        "Every dead job matching this filter: "
                        button type="submit" name="action" value="retry" data-confirm="Retry EVERY dead job matching this filter?" { "Retry all" }
                        button.danger type="submit" name="action" value="delete" data-confirm="Delete EVERY dead job matching this filter, for good?" { "Delete all" }
                    }
                }
            }
        },
    ))
}

/// The jobs, with a box to select each for the bulk form when `selectable`.
fn table(jobs: &[Job], selectable: bool) -> Markup {
    html! {
        table.jobs {
            thead {
                tr {
                    @if selectable { th { input type="checkbox" data-select-all title="Select all on this page"; } }
                    th { "Id" } th { "State" } th { "Queue" } th { "Kind" } th { "Args" } th.num { "Attempt" }
                    th { "Run at / finished" } th { "Last error" }
                }
            }
            tbody {
                @for job in jobs {
                    tr data-job=(job.id) {
                        @if selectable { td { input type="checkbox" name="ids" value=(job.id) aria-label={ "Select job " (job.id) }; } }
                        td { a href={ "/jobs/" (job.id) } { "#" (job.id) } }
                        td { (state_badge(job.state)) }
                        td { (job.queue) }
                        td { (job.kind) }
                        td.args { code { (clip(&args_text(job), 80)) } }
                        td.num { (job.attempt) "/" (job.max_attempts) }
                        td { @if job.state.is_finished() { (time_or_dash(job.finished_at)) } @else { (time(job.run_at)) } }
                        td.error { @if let Some(e) = job.errors.last() { (clip(&e.error, 100)) } }
                    }
                }
            }
        }
    }
}

/// A listed job's args as JSON text. The store lists long args cut to the
/// start of their text (a string), so a page never holds whole args.
fn args_text(job: &Job) -> String {
    match &job.args {
        serde_json::Value::String(start) if job.cut.contains(&CutField::Args) => {
            format!("{start}…")
        }
        args => args.to_string(),
    }
}

/// Bulk retry, cancel or delete: of the selected rows, or (`all`) of every
/// dead job the filter matches, a thousand at a time for up to ten seconds.
pub(super) async fn bulk(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> Response {
    let form = match checked_form(&state, &headers, &body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    let filter = Filter::from_form(&form);
    let back = format!("/jobs?{}", filter.query());
    let (action, verb) = match form.get("action") {
        Some("retry") => (BulkAction::Retry, "Retried"),
        Some("cancel") => (BulkAction::Cancel, "Cancelled"),
        Some("delete") => (BulkAction::Delete, "Deleted"),
        _ => return redirect_with(&back, false, "Choose retry, cancel or delete."),
    };
    if form.get("all") == Some("1") {
        if filter.state != "dead" || action == BulkAction::Cancel {
            return redirect_with(
                &back,
                false,
                "“All matching” retries or deletes dead jobs only.",
            );
        }
        let mut list = match filter.to_list(JobsBulk::MAX_IDS) {
            Ok(list) => list,
            Err(problem) => return redirect_with(&back, false, &problem),
        };
        let started = Instant::now();
        let mut total = BulkOutcome::default();
        loop {
            let page = match state.store().jobs_list(list.clone()).await {
                Ok(page) => page,
                Err(e) => {
                    return redirect_with(
                        &back,
                        false,
                        &format!("Stopped after {} jobs: {}", total.changed, explain(e)),
                    )
                }
            };
            let ids: Vec<JobId> = page.jobs.iter().map(|j| j.id).collect();
            if !ids.is_empty() {
                let bulk = state.engine().bulk(ids, action, Some(JobState::Dead)).await;
                match bulk {
                    Ok(o) => {
                        total.changed += o.changed;
                        total.skipped += o.skipped;
                    }
                    Err(e) => {
                        return redirect_with(
                            &back,
                            false,
                            &format!("Stopped after {} jobs: {}", total.changed, explain(e)),
                        )
                    }
                }
            }
            match page.next {
                Some(next) if started.elapsed() < BULK_BUDGET => list.after = Some(next),
                Some(_) => {
                    let text = format!(
                        "{verb} {} dead jobs; more remain — press the button again to go on.",
                        count(total.changed)
                    );
                    return redirect_with(&back, true, &text);
                }
                None => break,
            }
        }
        return redirect_with(
            &back,
            true,
            &format!(
                "{verb} {} dead jobs matching the filter.",
                count(total.changed)
            ),
        );
    }
    let ids: Vec<JobId> = form
        .all("ids")
        .filter_map(|id| id.parse().ok())
        .map(JobId)
        .collect();
    if ids.is_empty() {
        return redirect_with(&back, false, "Select some jobs first.");
    }
    match state.engine().bulk(ids, action, None).await {
        Ok(o) if o.skipped == 0 => {
            redirect_with(&back, true, &format!("{verb} {} jobs.", o.changed))
        }
        Ok(o) => redirect_with(
            &back,
            o.changed > 0,
            &format!(
                "{verb} {} jobs; {} skipped (gone, or in a state that does not allow it).",
                o.changed, o.skipped
            ),
        ),
        Err(e) => redirect_with(&back, false, &format!("Nothing changed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_links_keep_only_what_is_set() {
        let f = Filter {
            state: "dead".into(),
            queue: "mail & more".into(),
            ..Default::default()
        };
        assert_eq!(f.query(), "state=dead&queue=mail+%26+more");
    }
}
