//! Workers: role, status, capabilities, heartbeat age and the runs each holds now.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hive_client::models::{Run, Worker, WorkerId};
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
    // Heartbeat ages on the database's clock, which stamps them.
    let now = match s.client.store().now().await {
        Ok(now) => now,
        Err(e) => return op_error(&hive_client::ops::Error::from(e)),
    };
    // Every worker's runs in one light read (no payloads); an offline one's too, which may
    // still hold runs whose long leases have not run out.
    let ids: Vec<WorkerId> = workers.iter().map(|w| w.id.clone()).collect();
    let mut running: HashMap<WorkerId, Vec<Run>> = HashMap::new();
    match s.client.running_runs_of(&ids).await {
        Ok(runs) => {
            for r in runs {
                running.entry(r.worker_id.clone()).or_default().push(r);
            }
        }
        Err(e) => return op_error(&e),
    }
    let rows: Vec<(Worker, Vec<Run>)> = workers
        .into_iter()
        .map(|w| {
            let runs = running.remove(&w.id).unwrap_or_default();
            (w, runs)
        })
        .collect();
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
                        td {
                            @for r in running.iter().take(RUNS_SHOWN) {
                                a href={ "/tasks/" (r.task_id) } { "run " (r.run_number) " of " (r.task_id.to_string()[..8]) "…" } " "
                            }
                            @if running.len() > RUNS_SHOWN { "and " (running.len() - RUNS_SHOWN) " more" }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}
