//! The Task page: fields, payload, output, every run (worker, start, end, duration,
//! status, error, log, progress), dependencies and dependents as links, and the actions.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::AppState;
use crate::pages::tasks::parse_task;
use crate::view::{badge, layout, not_found, op_error, secs, time};

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Dependents (in queue order) and dependencies listed on a task's page: a plan's join may
/// wait for 100,000 subtasks, and the page is sent again on every change.
const DEPENDENTS_SHOWN: u32 = 100;

pub async fn page(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_task(&id) {
        Ok(id) => id,
        Err(m) => return crate::view::error_page(axum::http::StatusCode::BAD_REQUEST, &m),
    };
    let task = match s.client.get_task(id).await {
        Ok(Some(t)) => t,
        Ok(None) => return not_found("task"),
        Err(e) => return op_error(&e),
    };
    let runs = match s.client.list_runs(id).await {
        Ok(r) => r,
        Err(e) => return op_error(&e),
    };
    // A plan's root may have 100,000 dependents: the page lists the first ones only.
    let filter = hive_client::store::TaskFilter {
        depending_on: Some(id),
        limit: Some(DEPENDENTS_SHOWN + 1),
        ..Default::default()
    };
    let mut dependents: Vec<(hive_client::TaskId, String)> =
        match s.client.list_tasks(&filter).await {
            Ok(found) => found
                .into_iter()
                .map(|t| (t.id, t.plan_subtask_id.unwrap_or(t.title)))
                .collect(),
            Err(e) => return op_error(&e),
        };
    let more_dependents = dependents.len() > DEPENDENTS_SHOWN as usize;
    dependents.truncate(DEPENDENTS_SHOWN as usize);
    layout(
        &task.title,
        html! {
            p { (badge(task.status)) " " code { (task.id) } }
            dl {
                dt { "type" } dd { (task.task_type) }
                dt { "priority" } dd { (task.priority) }
                dt { "attempts" } dd { (task.attempts) " of " (task.max_retries + 1) }
                dt { "worker" } dd { @if let Some(w) = &task.assigned_worker { (w.0) } @else { "—" } }
                dt { "plan" } dd { @if let Some(p) = task.plan_id { a href={ "/plans/" (p) } { (p) } } @else { "—" } }
                dt { "created" } dd { (time(task.created_at)) }
                dt { "updated" } dd { (time(task.updated_at)) }
                @if !task.description.is_empty() { dt { "description" } dd { (task.description) } }
                @if let Some(e) = &task.last_error { dt { "last error" } dd class="error" { (e) } }
            }
            div class="actions" {
                // Only where the action is allowed: never a task a worker holds.
                @if task.status.check_retry().is_ok() {
                    form class="inline" method="post" action={ "/actions/tasks/" (task.id) "/requeue" } {
                        button type="submit" id="requeue" { "Requeue" }
                    }
                }
                " "
                // Nothing leaves a finished status: a Cancel there could only fail.
                @if !task.status.is_terminal() {
                    form class="inline" method="post" action={ "/actions/tasks/" (task.id) "/cancel" }
                        data-confirm="Cancel this task and its dependents?" {
                        input name="reason" placeholder="reason";
                        button type="submit" id="cancel" { "Cancel" }
                    }
                }
            }
            h2 { "Dependencies" }
            ul { @for d in task.dependencies.iter().take(DEPENDENTS_SHOWN as usize) {
                li { a href={ "/tasks/" (d) } { (d) } }
            } }
            @if task.dependencies.len() > DEPENDENTS_SHOWN as usize {
                p class="more" {
                    "The first " (DEPENDENTS_SHOWN) " of " (task.dependencies.len()) " are shown"
                    @if let Some(p) = task.plan_id { "; the rest are on " a href={ "/plans/" (p) } { "the plan's page" } }
                    "."
                }
            }
            h2 { "Dependents" }
            ul { @for (d, name) in &dependents { li { a href={ "/tasks/" (d) } { (name) } } } }
            @if more_dependents {
                p class="more" {
                    "The first " (DEPENDENTS_SHOWN) " are shown"
                    @if let Some(p) = task.plan_id { "; the rest are on " a href={ "/plans/" (p) } { "the plan's page" } }
                    "."
                }
            }
            h2 { "Payload" }
            pre id="payload" { (pretty(&task.payload)) }
            h2 { "Output" }
            pre id="output" { @if let Some(r) = &task.result { (pretty(r)) } @else { "—" } }
            h2 { "Runs" }
            table id="runs" {
                tr { th { "#" } th { "worker" } th { "status" } th { "started" } th { "ended" }
                     th { "duration" } th { "progress" } th { "error" } th { "log" } }
                @for r in &runs {
                    tr {
                        td { (r.run_number) }
                        td { (r.worker_id.0) }
                        td { (r.status.as_str()) }
                        td { (time(r.started_at)) }
                        td { @if let Some(e) = r.completed_at { (time(e)) } }
                        td { @if let Some(e) = r.completed_at {
                            (secs((e - r.started_at).num_milliseconds().max(0) as f64 / 1000.0))
                        } }
                        td { @if let Some(p) = &r.progress {
                            progress max="1" value=(p.fraction) {} " " (format!("{:.0}%", p.fraction * 100.0))
                            @if let Some(m) = &p.message { " " (m) }
                        } }
                        td class="error" { @if let Some(e) = &r.error_message { (e) } }
                        td { @if let Some(l) = &r.output_log { pre { (l) } } }
                    }
                }
            }
        },
    )
    .into_response()
}
