//! Workers: role, status, capabilities, heartbeat age and the runs each holds now.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hive_client::models::{Task, TaskStatus};
use hive_client::store::TaskFilter;
use maud::html;

use crate::AppState;
use crate::view::{age, layout, op_error};

/// Runs linked per worker; the rest are counted. A worker with hundreds of slots would
/// otherwise make a row of hundreds of links.
const RUNS_SHOWN: usize = 20;

pub async fn page(State(s): State<AppState>) -> Response {
    let workers = match s.client.list_workers(None).await {
        Ok(w) => w,
        Err(e) => return op_error(&e),
    };
    // Every running task in one read (not one per worker), grouped by the worker holding
    // it; heartbeat ages on the database's clock, which stamps them.
    let in_progress = TaskFilter {
        status: Some(TaskStatus::InProgress),
        ..TaskFilter::default()
    };
    let running = s.client.list_tasks(&in_progress);
    let now = async { Ok(s.client.store().now().await?) };
    let (running, now) = match tokio::try_join!(running, now) {
        Ok((running, now)) => (running, now),
        Err(e) => return op_error(&e),
    };
    let mut held: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in &running {
        if let Some(w) = &t.assigned_worker {
            held.entry(w.as_str()).or_default().push(t);
        }
    }
    layout(
        "Workers",
        html! {
            table id="workers" {
                tr { th { "worker" } th { "role" } th { "status" } th { "capabilities" }
                     th { "heartbeat" } th { "running" } }
                @for w in &workers {
                    @let tasks = held.get(w.id.as_str()).map(Vec::as_slice).unwrap_or_default();
                    tr {
                        td { (w.id.0) }
                        td { (w.role) }
                        td { (w.status.as_str()) @if let Some(r) = &w.status_reason { " (" (r) ")" } }
                        td { (w.capabilities.join(", ")) }
                        td { (age(now, w.last_heartbeat)) " ago" }
                        td {
                            @for t in tasks.iter().take(RUNS_SHOWN) {
                                a href={ "/tasks/" (t.id) } { (t.id.to_string()[..8]) "… attempt " (t.attempts) } " "
                            }
                            @if tasks.len() > RUNS_SHOWN { "and " (tasks.len() - RUNS_SHOWN) " more" }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}
