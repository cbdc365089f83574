//! Queues: each task type's queued and running tasks, its limits, and whether it is paused,
//! with a button to pause or resume it (what `hive queue list|pause|resume` does).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::AppState;
use crate::view::{layout, op_error, pause_toggle};

pub async fn page(State(s): State<AppState>) -> Response {
    let queues = match s.client.list_queues().await {
        Ok(q) => q,
        Err(e) => return op_error(&e),
    };
    layout(
        "Queues",
        html! {
            @if queues.is_empty() {
                p { "No task type has tasks, workers or limits yet." }
            } @else {
                table id="queues" {
                    tr { th { "type" } th { "queued" } th { "running" } th { "at most running" }
                         th { "rate" } th { "state" } th {} }
                    @for q in &queues {
                        tr data-type=(q.task_type) {
                            td class="type" { (q.task_type) }
                            td class="queued" { (q.queued) }
                            td class="running" { (q.running) }
                            td { @if let Some(n) = q.max_running { (n) } @else { "–" } }
                            td { @if let Some(r) = &q.rate { (r) } @else { "–" } }
                            td class="state" { @if q.paused { "paused" } @else { "active" } }
                            td { (pause_toggle("/actions/queues", &q.task_type, q.paused)) }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}
