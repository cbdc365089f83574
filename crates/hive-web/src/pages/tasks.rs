//! The Tasks page: filters (status, type, plan, worker), search by id or title, keyset
//! pages (newest first, "older" follows the cursor), and the bulk requeue of failures.

use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use hive_client::models::{PlanId, TaskId, TaskStatus, WorkerId};
use hive_client::store::TaskPageParams;
use maud::html;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::actions::urlencode;
use crate::view::{badge, layout, op_error, time};

/// Rows per page unless `limit` says otherwise.
pub const PAGE: u32 = 50;

/// The filters, as the page's query string and the forms' fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Filter {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, rename = "type")]
    pub task_type: Option<String>,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub worker: Option<String>,
    /// A task id (opens the task) or text in titles.
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub fn parse_task(s: &str) -> Result<TaskId, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a task id (a UUID)"))
}

pub fn parse_plan(s: &str) -> Result<PlanId, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a plan id (a UUID)"))
}

impl Filter {
    /// The store's page parameters, or a message naming the bad value.
    pub fn params(&self) -> Result<TaskPageParams, String> {
        Ok(TaskPageParams {
            status: given(&self.status)
                .map(|s| s.parse::<TaskStatus>().map_err(|e| e.to_string()))
                .transpose()?,
            task_type: given(&self.task_type).map(str::to_owned),
            plan_id: given(&self.plan).map(parse_plan).transpose()?,
            worker: given(&self.worker).map(|w| WorkerId(w.to_owned())),
            title_contains: given(&self.q).map(str::to_owned),
            before: given(&self.before).map(parse_task).transpose()?,
            limit: self.limit.unwrap_or(PAGE),
        })
    }

    /// The filters as a query string, with `before` as the cursor.
    pub fn query_string(&self, before: Option<TaskId>) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("status", &self.status),
            ("type", &self.task_type),
            ("plan", &self.plan),
            ("worker", &self.worker),
            ("q", &self.q),
        ] {
            if let Some(v) = given(v) {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        }
        if let Some(b) = before {
            parts.push(format!("before={b}"));
        }
        parts.join("&")
    }

    /// The next page's query: the same filters and page size, older than `last`.
    pub fn older(&self, last: TaskId) -> String {
        let query = self.query_string(Some(last));
        match self.limit {
            Some(limit) => format!("{query}&limit={limit}"),
            None => query,
        }
    }
}

pub async fn list(State(s): State<AppState>, Query(f): Query<Filter>) -> Response {
    // A search that is a task id opens that task.
    if let Some(id) = given(&f.q).and_then(|q| parse_task(q).ok()) {
        return Redirect::to(&format!("/tasks/{id}")).into_response();
    }
    let params = match f.params() {
        Ok(p) => p,
        Err(m) => return crate::view::error_page(axum::http::StatusCode::BAD_REQUEST, &m),
    };
    let started = Instant::now();
    let page = match s.client.page_tasks(&params).await {
        Ok(p) => p,
        Err(e) => return op_error(&e),
    };
    let took = started.elapsed();
    let next = (page.len() == params.limit as usize)
        .then(|| page.last().map(|t| t.id))
        .flatten();
    let statuses = [
        "queued",
        "assigned",
        "in_progress",
        "review_pending",
        "approved",
        "rejected",
        "rework_needed",
        "escalated",
        "completed",
        "failed",
        "cancelled",
    ];
    let chosen = given(&f.status).unwrap_or_default();
    layout(
        "Tasks",
        html! {
            form class="filters" method="get" action="/tasks" {
                select name="status" {
                    option value="" { "any status" }
                    @for st in statuses {
                        option value=(st) selected[st == chosen] { (st) }
                    }
                }
                input name="type" placeholder="type" value=[given(&f.task_type)];
                input name="plan" placeholder="plan id" value=[given(&f.plan)];
                input name="worker" placeholder="worker" value=[given(&f.worker)];
                input name="q" placeholder="id or title" value=[given(&f.q)];
                button type="submit" { "Filter" }
            }
            form class="inline" method="post" action="/actions/requeue-failed"
                data-confirm="Requeue every failed task matching these filters (at most 1000)?" {
                @for (k, v) in [("type", &f.task_type), ("plan", &f.plan), ("worker", &f.worker), ("q", &f.q)] {
                    @if let Some(v) = given(v) { input type="hidden" name=(k) value=(v); }
                }
                button type="submit" id="requeue-failed" { "Requeue failed tasks matching the filters" }
            }
            p class="timing" data-ms=(took.as_secs_f64() * 1000.0) {
                (page.len()) " tasks, read in " (format!("{:.1}", took.as_secs_f64() * 1000.0)) " ms"
            }
            table id="tasks" {
                tr { th { "id" } th { "title" } th { "type" } th { "status" } th { "priority" }
                     th { "attempts" } th { "worker" } th { "plan" } th { "updated" } }
                @for t in &page {
                    tr {
                        td { a href={ "/tasks/" (t.id) } { (t.id.to_string()[..8]) "…" } }
                        td class="title" { (t.title) }
                        td { (t.task_type) }
                        td { (badge(t.status)) }
                        td { (t.priority) }
                        td { (t.attempts) }
                        td { @if let Some(w) = &t.assigned_worker { (w.0) } }
                        td { @if let Some(p) = t.plan_id { a href={ "/plans/" (p) } { "plan" } } }
                        td { (time(t.updated_at)) }
                    }
                }
            }
            @if let Some(n) = next {
                p { a id="older" href={ "/tasks?" (f.older(n)) } { "Older →" } }
            }
        },
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Older →" keeps the filters and the page size it was asked with.
    #[test]
    fn the_next_page_keeps_the_filters_and_the_page_size() {
        let f = Filter {
            status: Some("failed".into()),
            limit: Some(10),
            ..Filter::default()
        };
        let last = TaskId::new();
        assert_eq!(
            f.older(last),
            format!("status=failed&before={last}&limit=10")
        );
        let default_size = Filter::default();
        assert_eq!(default_size.older(last), format!("before={last}"));
    }
}
