//! Plans: the list with progress, and a plan's page with its DAG drawn in layers.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::html;

use hive_client::ops::SubtaskResult;
use hive_client::{PlanStatus, TaskStatus};

use crate::AppState;
use crate::api::PlanStatusJson;
use crate::pages::tasks::parse_plan;
use crate::view::{layout, not_found, op_error, time};

pub async fn list(State(s): State<AppState>) -> Response {
    let plans = match s.client.list_plan_headers(None, Some(200)).await {
        Ok(p) => p,
        Err(e) => return op_error(&e),
    };
    layout(
        "Plans",
        html! {
            table id="plans" {
                tr { th { "title" } th { "status" } th { "progress" } th { "created" } }
                @for p in &plans {
                    @let done = p.completed_subtasks + p.failed_subtasks + p.cancelled_subtasks;
                    tr {
                        td { a href={ "/plans/" (p.id) } { (p.title) } }
                        td { (p.status.as_str()) }
                        td { progress max=(p.total_subtasks.max(1)) value=(p.completed_subtasks) {}
                             " " (p.completed_subtasks) "/" (p.total_subtasks)
                             @if done > p.completed_subtasks { " (" (p.failed_subtasks) " failed, " (p.cancelled_subtasks) " cancelled)" } }
                        td { (time(p.created_at)) }
                    }
                }
            }
        },
    )
    .into_response()
}

/// A plan page draws its graph and lists every subtask up to this many subtasks.
const DRAWN_AT_MOST: usize = 1_000;

/// How often the page of a larger plan follows changes.
const LARGE_REFRESH_MS: u32 = 5_000;

/// The subtasks a plan's table shows: all of them up to [`DRAWN_AT_MOST`]; beyond, that
/// many, those an operator looks for first (failed, running, waiting, then finished), each
/// group in plan order.
fn shown(subtasks: &[SubtaskResult]) -> Vec<&SubtaskResult> {
    let mut rows: Vec<&SubtaskResult> = subtasks.iter().collect();
    if rows.len() > DRAWN_AT_MOST {
        rows.sort_by_key(|s| match s.status {
            TaskStatus::Failed | TaskStatus::Rejected => 0,
            TaskStatus::InProgress | TaskStatus::Assigned => 1,
            s if !s.is_terminal() => 2,
            _ => 3,
        });
        rows.truncate(DRAWN_AT_MOST);
    }
    rows
}

pub async fn page(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_plan(&id) {
        Ok(id) => id,
        Err(m) => return crate::view::error_page(axum::http::StatusCode::BAD_REQUEST, &m),
    };
    let plan = match PlanStatusJson::read(&s.client, id).await {
        Ok(Some(p)) => p,
        Ok(None) => return not_found("plan"),
        Err(e) => return op_error(&e),
    };
    let p = &plan.plan;
    let large = plan.subtasks.len() > DRAWN_AT_MOST;
    let rows = shown(&plan.subtasks);
    layout(
        &p.title,
        html! {
            p { "status " b id="plan-status" { (p.status.as_str()) } " — "
                (format!("{:.1}", plan.progress_percent)) "% (" (p.completed_subtasks) " of "
                (p.total_subtasks) " completed, " (p.failed_subtasks) " failed, "
                (p.cancelled_subtasks) " cancelled)" }
            @if matches!(p.status, PlanStatus::Failed | PlanStatus::Cancelled) {
                form class="inline" method="post" action={ "/actions/plans/" (p.id) "/retry" }
                    data-confirm="Run this plan's failed and cancelled subtasks again?" {
                    button type="submit" id="retry-plan" { "Retry plan" }
                }
            } @else if !p.status.is_terminal() {
                form class="inline" method="post" action={ "/actions/plans/" (p.id) "/cancel" }
                    data-confirm="Cancel this plan and its unfinished tasks?" {
                    button type="submit" id="cancel-plan" { "Cancel plan" }
                }
            }
            @if large {
                // Reading and drawing it again on every change would keep the database and
                // the browser busy: such a page follows changes every few seconds instead.
                p id="plan-too-large" data-refresh-ms=(LARGE_REFRESH_MS) {
                    "The graph of " (plan.subtasks.len()) " subtasks is not drawn (it is drawn up to "
                    (DRAWN_AT_MOST) "). The table shows " (rows.len()) " of them, failed and running "
                    "first; " code { "hive plan status " (p.id) } " lists every one."
                }
            } @else {
                div class="dag-wrap" {
                    (crate::dag::svg(&plan.subtasks))
                    div id="node-details" { "Hover over or click a node for its details." }
                }
            }
            h2 { "Subtasks" }
            table {
                tr { th { "subtask" } th { "status" } th { "depends on" } th { "worker" } th { "error" } }
                @for st in rows {
                    tr {
                        td { a href={ "/tasks/" (st.task_id) } { (st.subtask_id) } }
                        td { (crate::view::badge(st.status)) }
                        td { (st.dependencies.join(", ")) }
                        td { @if let Some(w) = &st.worker { (w.0) } }
                        td class="error" { @if let Some(e) = &st.error { (e) } }
                    }
                }
            }
        },
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subtask(i: usize, status: TaskStatus) -> SubtaskResult {
        SubtaskResult {
            subtask_id: format!("s{i}"),
            task_id: hive_client::TaskId::new(),
            status,
            dependencies: Vec::new(),
            attempts: 0,
            worker: None,
            started_at: None,
            duration_secs: None,
            output: None,
            error: None,
            progress: None,
        }
    }

    #[test]
    fn a_large_plans_table_shows_failed_then_running_then_waiting_subtasks_first() {
        let small: Vec<_> = (0..DRAWN_AT_MOST)
            .map(|i| subtask(i, TaskStatus::Completed))
            .collect();
        assert_eq!(
            shown(&small).len(),
            DRAWN_AT_MOST,
            "every subtask, in plan order"
        );

        let mut large: Vec<_> = (0..DRAWN_AT_MOST + 500)
            .map(|i| subtask(i, TaskStatus::Completed))
            .collect();
        large[1_400].status = TaskStatus::Queued;
        large[1_300].status = TaskStatus::InProgress;
        large[1_200].status = TaskStatus::Failed;
        large[10].status = TaskStatus::Failed;
        let rows = shown(&large);
        assert_eq!(rows.len(), DRAWN_AT_MOST);
        let first: Vec<&str> = rows[..4].iter().map(|s| s.subtask_id.as_str()).collect();
        assert_eq!(first, ["s10", "s1200", "s1300", "s1400"]);
        assert_eq!(
            rows[4].subtask_id, "s0",
            "then the finished ones in plan order"
        );
    }
}
