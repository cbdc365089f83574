//! What an operator changes: requeue a task, requeue every failed task matching a filter
//! (bounded), cancel a task, cancel a plan, retry a failed or cancelled plan, pause or
//! resume a task type's queue, pause, resume or run by hand a schedule. Each is one function; the `/api/` route answers with JSON
//! and the `/actions/` route (a page's form) redirects back.

use axum::Form;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::AppState;
use crate::extract::{ApiJson, ApiPath};
use crate::pages::tasks::{Filter, parse_plan, parse_task};

/// The most tasks one bulk requeue touches: a request never runs unbounded.
pub const BULK_MAX: u32 = 1000;

/// An action's result, or why it failed (status and message).
type Outcome = Result<serde_json::Value, (StatusCode, String)>;

fn op(e: hive_client::ops::Error) -> (StatusCode, String) {
    crate::failure::classify(&e)
}

fn bad(m: String) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, m)
}

fn not_found(kind: &str, id: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::NOT_FOUND, format!("{kind} `{id}` not found"))
}

/// An operator's retry (`hive task retry`): refused for a queued task and for one a worker
/// holds, which would otherwise run twice, its worker never told.
async fn requeue(s: &AppState, id: &str) -> Outcome {
    let id = parse_task(id).map_err(bad)?;
    if !s.client.retry_task(id).await.map_err(op)? {
        return Err(not_found("task", id));
    }
    Ok(serde_json::json!({ "task_id": id, "requeued": true }))
}

async fn cancel(s: &AppState, id: &str, reason: Option<&str>) -> Outcome {
    let id = parse_task(id).map_err(bad)?;
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    let cancelled = s
        .client
        .cancel_task(id, Some(reason.unwrap_or("cancelled from the dashboard")))
        .await
        .map_err(op)?;
    if !cancelled {
        return Err(not_found("task", id));
    }
    Ok(serde_json::json!({ "task_id": id, "cancelled": true }))
}

async fn cancel_plan(s: &AppState, id: &str) -> Outcome {
    let id = parse_plan(id).map_err(bad)?;
    let cancelled = s.client.cancel_plan(id).await.map_err(op)?;
    if !cancelled && s.client.plan_header(id).await.map_err(op)?.is_none() {
        return Err(not_found("plan", id));
    }
    Ok(serde_json::json!({ "plan_id": id, "cancelled": cancelled }))
}

async fn retry_plan(s: &AppState, id: &str) -> Outcome {
    let id = parse_plan(id).map_err(bad)?;
    let requeued = s.client.retry_plan(id).await.map_err(op)?;
    Ok(serde_json::json!({ "plan_id": id, "requeued": requeued }))
}

/// Requeues failed tasks matching the filter, at most `limit` (default and cap
/// [`BULK_MAX`]); a filter naming another status is refused rather than ignored.
async fn requeue_failed(s: &AppState, f: &Filter) -> Outcome {
    let params = f.params().map_err(bad)?;
    if let Some(other) = params
        .status
        .filter(|st| *st != hive_client::TaskStatus::Failed)
    {
        return Err(bad(format!(
            "`status`: only failed tasks are requeued in bulk, not {other} ones"
        )));
    }
    let max = f.limit.map_or(BULK_MAX, |l| l.min(BULK_MAX));
    if max == 0 {
        return Err(bad("`limit`: must be at least 1".into()));
    }
    let ids = s.client.requeue_failed(&params, max).await.map_err(op)?;
    Ok(serde_json::json!({ "requeued": ids.len(), "task_ids": ids, "max": max }))
}

/// Pauses (`pause`) or resumes a task type's queue. Only a type in use can be paused here:
/// a typo must not create a rule (the CLI's `--new-type` is for that).
async fn pause_or_resume(s: &AppState, task_type: &str, pause: bool) -> Outcome {
    if pause {
        let rule = s.client.pause_queue(task_type, false).await.map_err(op)?;
        return Ok(serde_json::json!({ "task_type": task_type, "paused": rule.paused }));
    }
    let resumed = s.client.resume_queue(task_type).await.map_err(op)?;
    Ok(serde_json::json!({ "task_type": task_type, "paused": false, "resumed": resumed }))
}

/// Pauses (`pause`) or resumes a schedule; an unknown name is not found.
async fn pause_or_resume_schedule(s: &AppState, name: &str, pause: bool) -> Outcome {
    let found = if pause {
        s.client.pause_schedule(name).await
    } else {
        s.client.resume_schedule(name).await
    }
    .map_err(op)?;
    if !found {
        return Err((
            StatusCode::NOT_FOUND,
            format!("schedule `{name}` not found"),
        ));
    }
    Ok(serde_json::json!({ "name": name, "enabled": !pause }))
}

/// Runs a schedule by hand now, once per `key`; an unknown name is not found.
async fn trigger_schedule(s: &AppState, name: &str, key: Option<&str>) -> Outcome {
    let made = s.client.trigger_schedule(name, key).await.map_err(op)?;
    let (kind, id) = match made {
        hive_client::ops::Triggered::Task(id) => ("task", id.to_string()),
        hive_client::ops::Triggered::Plan(id) => ("plan", id.to_string()),
    };
    Ok(serde_json::json!({ "name": name, "kind": kind, "id": id }))
}

/// A manual run's request: the key that makes a repeat of it create nothing new (the
/// page puts one in each rendered form, so a double click or a resubmission runs once).
#[derive(Debug, Deserialize)]
pub struct TriggerForm {
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn json(o: Outcome) -> Response {
    match o {
        Ok(v) => Json(v).into_response(),
        Err((status, m)) => crate::api::error(status, m),
    }
}

fn back(o: Outcome, to: String) -> Response {
    match o {
        Ok(_) => Redirect::to(&to).into_response(),
        Err((status, m)) => crate::view::error_page(status, &m),
    }
}

#[derive(Debug, Deserialize)]
pub struct CancelForm {
    #[serde(default)]
    reason: Option<String>,
}

pub async fn requeue_api(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Response {
    json(requeue(&s, &id).await)
}

pub async fn requeue_form(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let to = format!("/tasks/{}", urlencode(&id));
    back(requeue(&s, &id).await, to)
}

pub async fn cancel_api(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Option<ApiJson<CancelForm>>,
) -> Response {
    let reason = body.and_then(|b| b.0.reason);
    json(cancel(&s, &id, reason.as_deref()).await)
}

pub async fn cancel_form(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Form(f): Form<CancelForm>,
) -> Response {
    let to = format!("/tasks/{}", urlencode(&id));
    back(cancel(&s, &id, f.reason.as_deref()).await, to)
}

pub async fn cancel_plan_api(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Response {
    json(cancel_plan(&s, &id).await)
}

pub async fn cancel_plan_form(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let to = format!("/plans/{}", urlencode(&id));
    back(cancel_plan(&s, &id).await, to)
}

pub async fn retry_plan_api(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Response {
    json(retry_plan(&s, &id).await)
}

pub async fn retry_plan_form(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let to = format!("/plans/{}", urlencode(&id));
    back(retry_plan(&s, &id).await, to)
}

pub async fn requeue_failed_api(
    State(s): State<AppState>,
    ApiJson(f): ApiJson<Filter>,
) -> Response {
    json(requeue_failed(&s, &f).await)
}

pub async fn requeue_failed_form(State(s): State<AppState>, Form(f): Form<Filter>) -> Response {
    let to = format!("/tasks?{}", f.query_string(None));
    back(requeue_failed(&s, &f).await, to)
}

pub async fn pause_queue_api(State(s): State<AppState>, ApiPath(t): ApiPath<String>) -> Response {
    json(pause_or_resume(&s, &t, true).await)
}

pub async fn resume_queue_api(State(s): State<AppState>, ApiPath(t): ApiPath<String>) -> Response {
    json(pause_or_resume(&s, &t, false).await)
}

pub async fn pause_queue_form(State(s): State<AppState>, Path(t): Path<String>) -> Response {
    back(pause_or_resume(&s, &t, true).await, "/queues".into())
}

pub async fn resume_queue_form(State(s): State<AppState>, Path(t): Path<String>) -> Response {
    back(pause_or_resume(&s, &t, false).await, "/queues".into())
}

pub async fn pause_schedule_api(
    State(s): State<AppState>,
    ApiPath(n): ApiPath<String>,
) -> Response {
    json(pause_or_resume_schedule(&s, &n, true).await)
}

pub async fn resume_schedule_api(
    State(s): State<AppState>,
    ApiPath(n): ApiPath<String>,
) -> Response {
    json(pause_or_resume_schedule(&s, &n, false).await)
}

pub async fn pause_schedule_form(State(s): State<AppState>, Path(n): Path<String>) -> Response {
    back(
        pause_or_resume_schedule(&s, &n, true).await,
        "/schedules".into(),
    )
}

pub async fn resume_schedule_form(State(s): State<AppState>, Path(n): Path<String>) -> Response {
    back(
        pause_or_resume_schedule(&s, &n, false).await,
        "/schedules".into(),
    )
}

pub async fn trigger_schedule_api(
    State(s): State<AppState>,
    ApiPath(n): ApiPath<String>,
    body: Option<ApiJson<TriggerForm>>,
) -> Response {
    let key = body.and_then(|b| b.0.idempotency_key);
    json(trigger_schedule(&s, &n, key.as_deref()).await)
}

/// Runs the schedule by hand, then shows what it created.
pub async fn trigger_schedule_form(
    State(s): State<AppState>,
    Path(n): Path<String>,
    form: Result<Form<TriggerForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    // A bare POST (no form body) runs it without a key, as the API does.
    let key = form.ok().and_then(|Form(f)| f.idempotency_key);
    let key = key.as_deref().filter(|k| !k.trim().is_empty());
    let made = trigger_schedule(&s, &n, key).await;
    let to = match &made {
        Ok(v) => format!(
            "/{}s/{}",
            v["kind"].as_str().unwrap_or("task"),
            v["id"].as_str().unwrap_or_default()
        ),
        Err(_) => "/schedules".into(),
    };
    back(made, to)
}

/// Percent-encodes a path segment or query value (everything but unreserved characters).
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}
