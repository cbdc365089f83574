//! The Overview: tasks per status and per type, runs finished per minute over the last
//! hour as a chart (with throughput and failure rate), the ready queue's age per type,
//! and the workers alive.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hive_client::models::TaskStatus;
use hive_client::store::QueueStats;
use maud::{Markup, html};

use crate::AppState;
use crate::view::{age, badge, layout, op_error};

/// Bars of runs closed per minute (successes over failures), the last 60 minutes.
fn chart(stats: &QueueStats) -> Markup {
    const W: f64 = 8.0;
    const H: f64 = 100.0;
    let start = stats.now - chrono::TimeDelta::minutes(60);
    let peak = stats
        .finished
        .iter()
        .map(|m| m.succeeded + m.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" width=(60.0 * W + 40.0) height=(H + 20.0) {
            @for m in &stats.finished {
                @let slot = ((m.minute - start).num_seconds() as f64 / 60.0).clamp(0.0, 59.0);
                @let ok = m.succeeded as f64 / peak * H;
                @let bad = m.failed as f64 / peak * H;
                rect class="ok" x=(slot * W) y=(H - ok) width=(W - 1.0) height=(ok) {
                    title { (m.succeeded) " succeeded" }
                }
                rect class="bad" x=(slot * W) y=(H - ok - bad) width=(W - 1.0) height=(bad) {
                    title { (m.failed) " failed" }
                }
            }
            text x="0" y=(H + 14.0) { "−60 min" }
            text x=(60.0 * W - 20.0) y=(H + 14.0) { "now" }
            text x=(60.0 * W + 4.0) y="10" { (peak) "/min" }
        }
    }
}

pub async fn page(State(s): State<AppState>) -> Response {
    let since = chrono::Utc::now() - chrono::TimeDelta::minutes(60);
    let stats = match s.client.queue_stats(Some(since)).await {
        Ok(st) => st,
        Err(e) => return op_error(&e),
    };
    let alive = match s.client.get_active_workers(None).await {
        Ok(w) => w.len(),
        Err(e) => return op_error(&e),
    };
    let mut by_status: BTreeMap<&str, (TaskStatus, u64)> = BTreeMap::new();
    let mut by_type: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for c in &stats.counts {
        by_status
            .entry(c.status.as_str())
            .or_insert((c.status, 0))
            .1 += c.count;
        *by_type
            .entry(c.task_type.as_str())
            .or_default()
            .entry(c.status.as_str())
            .or_default() += c.count;
    }
    let (ok, bad) = stats
        .finished
        .iter()
        .fold((0, 0), |(o, b), m| (o + m.succeeded, b + m.failed));
    let rate = if ok + bad == 0 {
        0.0
    } else {
        bad as f64 * 100.0 / (ok + bad) as f64
    };
    let statuses: Vec<&str> = by_status.keys().copied().collect();
    layout(
        "Overview",
        html! {
            div class="cards" {
                div class="card" id="workers-alive" { b { (alive) } "workers alive" }
                div class="card" id="throughput" { b { (ok + bad) } "runs finished in the last hour" }
                div class="card" id="failure-rate" { b { (format!("{rate:.1}%")) } "failure rate" }
                @for (name, (st, n)) in &by_status {
                    div class="card" data-status=(name) { b { (n) } (badge(*st)) }
                }
            }
            h2 { "Runs finished per minute, last hour" }
            (chart(&stats))
            h2 { "Tasks per type" }
            table id="by-type" {
                tr { th { "type" } @for st in &statuses { th { (st) } } th { "oldest ready" } }
                @for (ty, counts) in &by_type {
                    tr {
                        td { a href={ "/tasks?type=" (crate::actions::urlencode(ty)) } { (ty) } }
                        @for st in &statuses { td { (counts.get(st).copied().unwrap_or(0)) } }
                        td { @if let Some(o) = stats.oldest_ready.iter().find(|o| o.task_type == *ty) {
                            (age(stats.now, o.since))
                        } }
                    }
                }
            }
        },
    )
    .into_response()
}
