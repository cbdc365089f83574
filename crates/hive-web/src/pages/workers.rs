//! Workers: role, status, capabilities, heartbeat age and the runs each holds now.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::AppState;
use crate::view::{age, layout, op_error};

pub async fn page(State(s): State<AppState>) -> Response {
    let workers = match s.client.list_workers(None).await {
        Ok(w) => w,
        Err(e) => return op_error(&e),
    };
    let now = chrono::Utc::now();
    let mut rows = Vec::with_capacity(workers.len());
    for w in workers {
        let running = match s.client.running_runs(&w.id).await {
            Ok(r) => r,
            Err(e) => return op_error(&e),
        };
        rows.push((w, running));
    }
    layout(
        "Workers",
        html! {
            table id="workers" {
                tr { th { "worker" } th { "role" } th { "status" } th { "capabilities" }
                     th { "heartbeat" } th { "running" } }
                @for (w, running) in &rows {
                    tr {
                        td { (w.id.0) }
                        td { (w.role) }
                        td { (w.status.as_str()) @if let Some(r) = &w.status_reason { " (" (r) ")" } }
                        td { (w.capabilities.join(", ")) }
                        td { (age(now, w.last_heartbeat)) " ago" }
                        td { @for r in running {
                            a href={ "/tasks/" (r.task_id) } { "run " (r.run_number) " of " (r.task_id.to_string()[..8]) "…" } " "
                        } }
                    }
                }
            }
        },
    )
    .into_response()
}
