//! What every page shares: the layout (navigation, the live-update script), status
//! colours, time formatting, error pages and the static assets shipped in the binary.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hive_client::models::{TaskStatus, Timestamp};
use maud::{DOCTYPE, Markup, html};

/// The colour a status is drawn in, on badges and DAG nodes alike.
pub fn status_color(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Completed | TaskStatus::Approved => "#2e7d32",
        TaskStatus::Failed | TaskStatus::Rejected => "#c62828",
        TaskStatus::Cancelled => "#9e9e9e",
        TaskStatus::InProgress | TaskStatus::Assigned => "#1565c0",
        TaskStatus::ReviewPending | TaskStatus::ReworkNeeded | TaskStatus::Escalated => "#6a1b9a",
        TaskStatus::Queued => "#f9a825",
    }
}

pub fn badge(status: TaskStatus) -> Markup {
    html! { span class={ "badge s-" (status.as_str()) } { (status.as_str()) } }
}

pub fn time(t: Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A duration in seconds, short.
pub fn secs(s: f64) -> String {
    match s {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

pub fn age(now: Timestamp, then: Timestamp) -> String {
    secs((now - then).num_milliseconds().max(0) as f64 / 1000.0)
}

/// The Pause (or, when `paused`, Resume) button of a row: a form posting to
/// `{actions}/{key}/pause` or `…/resume`, `key` percent-encoded.
pub fn pause_toggle(actions: &str, key: &str, paused: bool) -> Markup {
    let (verb, label) = if paused {
        ("resume", "Resume")
    } else {
        ("pause", "Pause")
    };
    // Rows move as queues drain and appear: the operator confirms which one they hit.
    html! {
        form class="inline" method="post"
            action={ (actions) "/" (crate::actions::urlencode(key)) "/" (verb) }
            data-confirm={ (label) " " (key) "?" } {
            button type="submit" class=(verb) { (label) }
        }
    }
}

/// A whole page. The part inside `main` is what the live script refreshes.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " — Hive" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                nav {
                    a href="/" { "Overview" }
                    a href="/tasks" { "Tasks" }
                    a href="/plans" { "Plans" }
                    a href="/workers" { "Workers" }
                    a href="/queues" { "Queues" }
                    a href="/schedules" { "Schedules" }
                    a href="/metrics" { "Metrics" }
                    span id="live" title="live updates" { "●" }
                }
                main id="main" data-live { h1 { (title) } (body) }
            }
        }
    }
}

/// An error as a page (or the status alone for the API).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        layout("Error", html! { p class="error" { (message) } }),
    )
        .into_response()
}

pub fn not_found(what: &str) -> Response {
    error_page(StatusCode::NOT_FOUND, &format!("{what} not found"))
}

/// An operation's error as a page, with the status its kind calls for
/// ([`crate::failure::classify`]).
pub fn op_error(e: &hive_client::ops::Error) -> Response {
    let (status, message) = crate::failure::classify(e);
    error_page(status, &message)
}

pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/app.js"),
    )
        .into_response()
}

pub async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/app.css"),
    )
        .into_response()
}
