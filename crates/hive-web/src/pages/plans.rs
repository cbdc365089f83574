//! Plans: the list with progress, and a plan's page with its DAG drawn in layers.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use hive_client::models::PlanHeader;
use hive_client::ops::{PLAN_TRIAGE_ORDER, TriagedSubtask};
use hive_client::{PlanStatus, TaskStatus};

use crate::AppState;
use crate::api::{PLANS_MAX_LIMIT, PlanListQuery, PlanStatusJson, list_plans};
use crate::pages::tasks::parse_plan;
use crate::view::{layout, not_found, op_error, time};

/// The newest plans (`?limit=`, 200 by default), of one status with `?status=`, as
/// `GET /api/plans` lists them.
pub async fn list(State(s): State<AppState>, Query(q): Query<PlanListQuery>) -> Response {
    let (status, limit) = match q.parts() {
        Ok(p) => p,
        Err(m) => return crate::view::error_page(axum::http::StatusCode::BAD_REQUEST, &m),
    };
    let (plans, more) = match list_plans(&s.client, status, limit).await {
        Ok(p) => p,
        Err(e) => return op_error(&e),
    };
    let chosen = status.map_or("", PlanStatus::as_str);
    layout(
        "Plans",
        html! {
            form class="filters" method="get" action="/plans" {
                select name="status" {
                    option value="" { "any status" }
                    @for st in PlanStatus::ALL {
                        option value=(st.as_str()) selected[st.as_str() == chosen] { (st.as_str()) }
                    }
                }
                input type="hidden" name="limit" value=(limit);
                button type="submit" { "Filter" }
            }
            @if more {
                p id="plans-more" {
                    "The newest " (limit) " plans are shown; more match. "
                    @if limit < PLANS_MAX_LIMIT {
                        a href={ "/plans?status=" (chosen) "&limit=" (PLANS_MAX_LIMIT) } {
                            "Show " (PLANS_MAX_LIMIT)
                        }
                    } @else {
                        "Filter by status, or use " code { "hive plan list" } "."
                    }
                }
            }
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

/// Subtasks the page of a larger plan lists (the tasks page pages through the rest).
const LARGE_ROWS: u32 = 200;

pub async fn page(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_plan(&id) {
        Ok(id) => id,
        Err(m) => return crate::view::error_page(axum::http::StatusCode::BAD_REQUEST, &m),
    };
    // The header first: one row, whatever the plan's size, and it says which page to build.
    let header = match s.client.plan_header(id).await {
        Ok(Some(h)) => h,
        Ok(None) => return not_found("plan"),
        Err(e) => return op_error(&e),
    };
    if header.total_subtasks as usize > DRAWN_AT_MOST {
        return match s
            .client
            .plan_subtasks_with_timing(&header, &PLAN_TRIAGE_ORDER, LARGE_ROWS)
            .await
        {
            Ok(rows) => large_page(&header, &rows).into_response(),
            Err(e) => op_error(&e),
        };
    }
    let plan = match PlanStatusJson::read(&s.client, id).await {
        Ok(Some(p)) => p,
        Ok(None) => return not_found("plan"),
        Err(e) => return op_error(&e),
    };
    let p = plan.plan.header();
    layout(
        &p.title,
        html! {
            (heading(&p))
            div class="dag-wrap" {
                (crate::dag::svg(&plan.subtasks))
                div id="node-details" { "Hover over or click a node for its details." }
            }
            h2 { "Subtasks" }
            table {
                tr { th { "subtask" } th { "status" } th { "attempts" } th { "duration" } th { "depends on" } th { "worker" } th { "error" } }
                @for st in &plan.subtasks {
                    tr {
                        td { a href={ "/tasks/" (st.task_id) } { (st.subtask_id) } }
                        td { (crate::view::badge(st.status)) }
                        td { (st.attempts) }
                        td class="duration" { @if let Some(d) = st.duration_secs { (crate::view::secs(d)) } }
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

/// The status line and the action a plan's status allows.
fn heading(p: &PlanHeader) -> Markup {
    html! {
        p { "status " b id="plan-status" { (p.status.as_str()) } " — "
            (format!("{:.1}", p.get_progress_percentage())) "% (" (p.completed_subtasks) " of "
            (p.total_subtasks) " completed, " (p.failed_subtasks) " failed, "
            (p.cancelled_subtasks) " cancelled)" }
        @if let Some(key) = &p.idempotency_key {
            p { "idempotency key " code id="plan-key" { (key) } }
        }
        @if p.counters().check_retry().is_ok() {
            form class="inline" method="post" action={ "/actions/plans/" (p.id) "/retry" }
                data-confirm="Run this plan's failed and cancelled subtasks again?" {
                button type="submit" id="retry-plan" { "Retry plan" }
            }
        }
        @if let Some((confirm, label)) = cancel_button(p) {
            form class="inline" method="post" action={ "/actions/plans/" (p.id) "/cancel" }
                data-confirm=(confirm) {
                button type="submit" id="cancel-plan" { (label) }
            }
        }
    }
}

/// The cancel button's question and label: a running plan is cancelled; a failed one with
/// subtasks still open (what did not depend on the failure runs on) has those cancelled.
fn cancel_button(p: &PlanHeader) -> Option<(&'static str, &'static str)> {
    let open = p.total_subtasks > p.completed_subtasks + p.failed_subtasks + p.cancelled_subtasks;
    match p.status {
        PlanStatus::Failed if open => Some((
            "Cancel this failed plan's unfinished tasks?",
            "Cancel open subtasks",
        )),
        s if !s.is_terminal() => {
            Some(("Cancel this plan and its unfinished tasks?", "Cancel plan"))
        }
        _ => None,
    }
}

/// The page of a plan too large to draw: reading and drawing all of it again on every change
/// would keep the database and the browser busy, so it shows the subtasks an operator looks
/// for first, links to the tasks page for all of them, and follows changes every few
/// seconds.
fn large_page(p: &PlanHeader, rows: &[TriagedSubtask]) -> Markup {
    let all = |status: TaskStatus| format!("/tasks?plan={}&status={}", p.id, status.as_str());
    layout(
        &p.title,
        html! {
            (heading(p))
            p id="plan-too-large" data-refresh-ms=(LARGE_REFRESH_MS) {
                "The graph of " (p.total_subtasks) " subtasks is not drawn (it is drawn up to "
                (DRAWN_AT_MOST) "). The table shows " (rows.len()) " of them, failed and running "
                "first; " code { "hive plan status " (p.id) " --all" } " lists every one."
            }
            p id="plan-statuses" {
                "Every subtask, on the tasks page: "
                @for (i, status) in PLAN_TRIAGE_ORDER.iter().enumerate() {
                    @if i > 0 { " · " }
                    a href=(all(*status)) { (status.as_str()) }
                }
            }
            h2 { "Subtasks" }
            table {
                tr { th { "subtask" } th { "status" } th { "attempts" } th { "duration" } th { "depends on" } th { "waits for" } th { "worker" } th { "error" } }
                @for row in rows {
                    @let t = &row.task;
                    tr {
                        td { a href={ "/tasks/" (t.id) } { (t.plan_subtask_id.as_deref().unwrap_or("")) } }
                        td { (crate::view::badge(t.status)) }
                        td { (t.attempts) }
                        td class="duration" { @if let Some(d) = row.timing.duration_secs { (crate::view::secs(d)) } }
                        td { (depends_on(&row.depends_on)) }
                        td { @if t.pending_dependencies > 0 {
                            (t.pending_dependencies) " of " (t.dependencies.len())
                        } }
                        td { @if let Some(w) = &t.assigned_worker { (w.0) } }
                        td class="error" { @if let Some(e) = t.current_error() { (e) } }
                    }
                }
            }
        },
    )
}

/// Dependencies shown in a row of a large plan: a join may wait for thousands, so the cell
/// names the first few and counts the rest (the task's page lists them all).
fn depends_on(ids: &[String]) -> String {
    const NAMED: usize = 5;
    match ids.len() {
        n if n <= NAMED => ids.join(", "),
        n => format!("{} and {} more", ids[..NAMED].join(", "), n - NAMED),
    }
}

#[cfg(test)]
mod tests {
    use super::{PlanHeader, PlanStatus, cancel_button, depends_on, heading};

    #[test]
    fn a_rows_dependencies_are_named_up_to_five_then_counted() {
        let ids = |n: usize| (0..n).map(|i| format!("s{i}")).collect::<Vec<_>>();
        assert_eq!(depends_on(&[]), "");
        assert_eq!(depends_on(&ids(5)), "s0, s1, s2, s3, s4");
        assert_eq!(depends_on(&ids(500)), "s0, s1, s2, s3, s4 and 495 more");
    }

    #[test]
    fn a_failed_plan_offers_to_cancel_only_while_subtasks_are_open() {
        let header = |status, completed, failed, cancelled| PlanHeader {
            id: hive_client::PlanId::new(),
            title: "p".into(),
            description: String::new(),
            parent_task_id: None,
            status,
            total_subtasks: 3,
            completed_subtasks: completed,
            failed_subtasks: failed,
            cancelled_subtasks: cancelled,
            materialized: true,
            metadata: serde_json::json!({}),
            idempotency_key: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        let label = |p: PlanHeader| cancel_button(&p).map(|(_, label)| label);
        assert_eq!(
            label(header(PlanStatus::InProgress, 1, 0, 0)),
            Some("Cancel plan")
        );
        assert_eq!(
            label(header(PlanStatus::Failed, 1, 1, 0)),
            Some("Cancel open subtasks")
        );
        assert_eq!(
            label(header(PlanStatus::Failed, 1, 1, 1)),
            None,
            "nothing open"
        );
        assert_eq!(label(header(PlanStatus::Completed, 3, 0, 0)), None);
        let mut keyed = header(PlanStatus::Pending, 0, 0, 0);
        assert!(!heading(&keyed).into_string().contains("plan-key"));
        keyed.idempotency_key = Some("<b>nightly</b>".into());
        assert!(
            heading(&keyed)
                .into_string()
                .contains(r#"<code id="plan-key">&lt;b&gt;nightly&lt;/b&gt;</code>"#),
            "the key is shown, as text"
        );
    }
}
