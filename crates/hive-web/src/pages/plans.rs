//! Plans: the list with progress, and a plan's page with its DAG drawn in layers.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::html;

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
    layout(
        &p.title,
        html! {
            p { "status " b id="plan-status" { (p.status.as_str()) } " — "
                (format!("{:.1}", plan.progress_percent)) "% (" (p.completed_subtasks) " of "
                (p.total_subtasks) " completed, " (p.failed_subtasks) " failed, "
                (p.cancelled_subtasks) " cancelled)" }
            form class="inline" method="post" action={ "/actions/plans/" (p.id) "/cancel" }
                data-confirm="Cancel this plan and its unfinished tasks?" {
                button type="submit" id="cancel-plan" { "Cancel plan" }
            }
            div class="dag-wrap" {
                (crate::dag::svg(&plan.subtasks))
                div id="node-details" { "Hover over or click a node for its details." }
            }
            h2 { "Subtasks" }
            table {
                tr { th { "subtask" } th { "status" } th { "depends on" } th { "worker" } th { "error" } }
                @for st in &plan.subtasks {
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
