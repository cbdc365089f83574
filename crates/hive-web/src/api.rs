//! The JSON API under `/api/`: the same data as the pages, in the shapes the CLI prints
//! with `--json` (the CLI builds its `status` and `plan status` output with the types
//! defined here, so the two cannot drift).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hive_client::models::{ExecutionPlan, PlanHeader, PlanId, PlanStatus, TaskStatus};
use hive_client::ops::{
    PLAN_TRIAGE_ORDER, PlanResults, PlanSummary, SubtaskResult, TriagedSubtask,
};
use hive_client::store::StatusCounts;
use serde::Serialize;

use crate::AppState;
use crate::actions;
use crate::extract::{ApiPath, ApiQuery};
use crate::pages::tasks::{Filter, parse_plan, parse_task};

/// `hive status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub tasks: StatusCounts,
    pub active_workers: usize,
    pub plans_in_progress: u64,
}

impl StatusJson {
    pub async fn read(client: &hive_client::Client) -> hive_client::ops::Result<StatusJson> {
        Ok(StatusJson {
            tasks: client.status_counts().await?,
            active_workers: client.get_active_workers(None).await?.len(),
            plans_in_progress: client.count_plans(Some(PlanStatus::InProgress)).await?,
        })
    }
}

/// `hive plan status --json`.
#[derive(Debug, Serialize)]
pub struct PlanStatusJson {
    pub plan: ExecutionPlan,
    pub progress_percent: f64,
    pub task_counts: StatusCounts,
    pub subtasks: Vec<SubtaskResult>,
}

impl PlanStatusJson {
    pub fn new(summary: PlanSummary, results: PlanResults) -> PlanStatusJson {
        PlanStatusJson {
            plan: summary.plan,
            progress_percent: summary.progress_percent,
            task_counts: summary.task_counts,
            subtasks: results.subtasks,
        }
    }

    pub async fn read(
        client: &hive_client::Client,
        id: hive_client::PlanId,
    ) -> hive_client::ops::Result<Option<PlanStatusJson>> {
        let (Some(summary), Some(results)) = (
            client.plan_summary(id).await?,
            client.plan_results(id).await?,
        ) else {
            return Ok(None);
        };
        Ok(Some(PlanStatusJson::new(summary, results)))
    }
}

/// `hive plan status --json` with `--status` or `--limit`, and `GET /api/plans/{id}` with
/// `?status=` or `?limit=`: some of a plan's subtasks, in the statuses asked for (by
/// default [`PLAN_TRIAGE_ORDER`]: failed and running first), read a bounded page at a time
/// however large the plan.
#[derive(Debug, Serialize)]
pub struct PlanSubtasksJson {
    pub plan: PlanHeader,
    /// Each subtask's task row, with its latest run's `started_at`, `duration_secs` and
    /// `progress` beside the row's fields.
    pub subtasks: Vec<TriagedSubtask>,
    /// More subtasks of those statuses than `limit`.
    pub more: bool,
}

impl PlanSubtasksJson {
    /// Up to `limit` subtasks of `plan` in `statuses` (all, in triage order, when empty).
    pub async fn read(
        client: &hive_client::Client,
        plan: PlanHeader,
        statuses: &[TaskStatus],
        limit: u32,
    ) -> hive_client::ops::Result<PlanSubtasksJson> {
        let order = if statuses.is_empty() {
            &PLAN_TRIAGE_ORDER[..]
        } else {
            statuses
        };
        // One row more than asked for tells whether more match.
        let mut subtasks = client
            .plan_subtasks_with_timing(&plan, order, limit.saturating_add(1))
            .await?;
        let more = subtasks.len() > limit as usize;
        subtasks.truncate(limit as usize);
        Ok(PlanSubtasksJson {
            plan,
            subtasks,
            more,
        })
    }
}

/// The query of `GET /api/plans/{id}`: without either field, every subtask (of a plan of
/// at most [`PLAN_API_MAX_LIMIT`]).
#[derive(Debug, Default, serde::Deserialize)]
struct PlanQuery {
    /// Statuses, comma-separated.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// The most subtasks one `GET /api/plans/{id}` returns: the most `?limit=` takes, and the
/// largest plan answered whole without it (a larger one would be read and serialized in
/// memory as one response, however large).
pub(crate) const PLAN_API_MAX_LIMIT: u32 = 10_000;

/// Subtasks `GET /api/plans/{id}?status=` returns without `limit`.
const PLAN_API_DEFAULT_LIMIT: u32 = 200;

impl PlanQuery {
    /// The statuses and limit asked for, `None` when neither was, or a message naming the
    /// bad value.
    fn parts(&self) -> Result<Option<(Vec<TaskStatus>, u32)>, String> {
        let statuses = self
            .status
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if statuses.is_none() && self.limit.is_none() {
            return Ok(None);
        }
        let statuses = statuses
            .map(|s| {
                s.split(',')
                    .map(|one| one.trim().parse::<TaskStatus>().map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let limit = self.limit.unwrap_or(PLAN_API_DEFAULT_LIMIT);
        if limit == 0 || limit > PLAN_API_MAX_LIMIT {
            return Err(format!(
                "limit {limit} is out of range; expected 1 to {PLAN_API_MAX_LIMIT}"
            ));
        }
        Ok(Some((statuses, limit)))
    }
}

/// An API error: a status and `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// An operation's error, with the status its kind calls for ([`crate::failure::classify`]).
pub(crate) fn op_error(e: &hive_client::ops::Error) -> Response {
    let (status, message) = crate::failure::classify(e);
    error(status, message)
}

fn found<T: Serialize>(value: hive_client::ops::Result<Option<T>>, what: &str) -> Response {
    match value {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("{what} not found")),
        Err(e) => op_error(&e),
    }
}

async fn status(State(s): State<AppState>) -> Response {
    found(StatusJson::read(&s.client).await.map(Some), "status")
}

/// `hive task list --json`: an array of tasks. The next page's cursor, when there may be
/// one, is in the `hive-next-before` header.
async fn tasks(State(s): State<AppState>, ApiQuery(f): ApiQuery<Filter>) -> Response {
    let params = match f.params() {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    match s.client.page_tasks(&params).await {
        Ok(page) => {
            let next = (page.len() == params.limit as usize)
                .then(|| page.last().map(|t| t.id.to_string()))
                .flatten();
            let mut r = Json(page).into_response();
            if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
                r.headers_mut()
                    .insert(HeaderName::from_static("hive-next-before"), v);
            }
            r
        }
        Err(e) => op_error(&e),
    }
}

async fn task(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Response {
    match parse_task(&id) {
        Ok(id) => found(s.client.get_task(id).await, "task"),
        Err(m) => error(StatusCode::BAD_REQUEST, m),
    }
}

/// A task's runs, oldest first; 404 for an unknown task (not an empty list, which a task
/// never claimed has).
async fn runs(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Response {
    let id = match parse_task(&id) {
        Ok(id) => id,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let runs = async {
        let runs = s.client.list_runs(id).await?;
        if runs.is_empty() && s.client.get_task(id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(runs))
    };
    found(runs.await, "task")
}

/// The query of `GET /api/plans` and of the Plans page: one status, and how many of the
/// newest plans.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct PlanListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// Plans listed unless `?limit=` says otherwise.
pub(crate) const PLANS_DEFAULT_LIMIT: u32 = 200;

/// The most plans one list shows: each is one row, but a list is read whole.
pub(crate) const PLANS_MAX_LIMIT: u32 = 1_000;

impl PlanListQuery {
    /// The status (none: any) and limit asked for, or a message naming the bad value.
    pub(crate) fn parts(&self) -> Result<(Option<PlanStatus>, u32), String> {
        let status = self
            .status
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<PlanStatus>().map_err(|e| e.to_string()))
            .transpose()?;
        let limit = self.limit.unwrap_or(PLANS_DEFAULT_LIMIT);
        if limit == 0 || limit > PLANS_MAX_LIMIT {
            return Err(format!(
                "limit {limit} is out of range; expected 1 to {PLANS_MAX_LIMIT}"
            ));
        }
        Ok((status, limit))
    }
}

/// The newest `limit` plans (of `status`, when given), and whether more match.
pub(crate) async fn list_plans(
    client: &hive_client::Client,
    status: Option<PlanStatus>,
    limit: u32,
) -> hive_client::ops::Result<(Vec<PlanHeader>, bool)> {
    // One row more than asked for tells whether more match.
    let mut plans = client
        .list_plan_headers(status, Some(limit.saturating_add(1)))
        .await?;
    let more = plans.len() > limit as usize;
    plans.truncate(limit as usize);
    Ok((plans, more))
}

/// `hive plan list --json`: an array of the newest plans (`?limit=`, 200 by default), of
/// one status with `?status=`. When more match, the `hive-more` header says `true`.
async fn plans(State(s): State<AppState>, ApiQuery(q): ApiQuery<PlanListQuery>) -> Response {
    let (status, limit) = match q.parts() {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    match list_plans(&s.client, status, limit).await {
        Ok((plans, more)) => {
            let mut r = Json(plans).into_response();
            if more {
                r.headers_mut().insert(
                    HeaderName::from_static("hive-more"),
                    HeaderValue::from_static("true"),
                );
            }
            r
        }
        Err(e) => op_error(&e),
    }
}

/// Why a plan is not answered whole: it names the plan, its size and how to ask for part.
fn too_large_to_answer_whole(plan: &PlanHeader) -> String {
    format!(
        "plan `{}` has {} subtasks, more than one response holds ({PLAN_API_MAX_LIMIT}); ask \
         for part of it with `?status=failed,in_progress` and/or `?limit=N` (at most \
         {PLAN_API_MAX_LIMIT})",
        plan.id, plan.total_subtasks
    )
}

/// `hive plan status --json`: the whole plan (up to [`PLAN_API_MAX_LIMIT`] subtasks), or
/// with `?status=a,b` or `?limit=N` some of its subtasks ([`PlanSubtasksJson`]).
async fn plan(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PlanQuery>,
) -> Response {
    let (id, part): (PlanId, _) = match parse_plan(&id).and_then(|id| Ok((id, q.parts()?))) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    // The header first: one row, whatever the plan's size, and it says whether the plan
    // fits in one answer.
    let header = match s.client.plan_header(id).await {
        Ok(Some(h)) => h,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("plan `{id}` not found")),
        Err(e) => return op_error(&e),
    };
    let Some((statuses, limit)) = part else {
        if header.total_subtasks > PLAN_API_MAX_LIMIT {
            return error(StatusCode::BAD_REQUEST, too_large_to_answer_whole(&header));
        }
        return found(PlanStatusJson::read(&s.client, id).await, "plan");
    };
    found(
        PlanSubtasksJson::read(&s.client, header, &statuses, limit)
            .await
            .map(Some),
        "plan",
    )
}

async fn workers(State(s): State<AppState>) -> Response {
    found(s.client.list_workers(None).await.map(Some), "workers")
}

async fn queues(State(s): State<AppState>) -> Response {
    found(s.client.list_queues().await.map(Some), "queues")
}

/// `hive schedule list --json`: every schedule, by name, with its last slot's work.
async fn schedules(State(s): State<AppState>) -> Response {
    found(s.client.list_schedule_views().await.map(Some), "schedules")
}

async fn stats(State(s): State<AppState>) -> Response {
    let since = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    found(s.client.queue_stats(Some(since)).await.map(Some), "stats")
}

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/status", get(status))
        .route("/api/stats", get(stats))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/tasks/{id}/runs", get(runs))
        .route("/api/tasks/{id}/requeue", post(actions::requeue_api))
        .route("/api/tasks/{id}/cancel", post(actions::cancel_api))
        .route("/api/plans", get(plans))
        .route("/api/plans/{id}", get(plan))
        .route("/api/plans/{id}/cancel", post(actions::cancel_plan_api))
        .route("/api/plans/{id}/retry", post(actions::retry_plan_api))
        .route("/api/requeue-failed", post(actions::requeue_failed_api))
        .route("/api/workers", get(workers))
        .route("/api/queues", get(queues))
        .route(
            "/api/queues/{task_type}/pause",
            post(actions::pause_queue_api),
        )
        .route(
            "/api/queues/{task_type}/resume",
            post(actions::resume_queue_api),
        )
        .route("/api/schedules", get(schedules))
        .route(
            "/api/schedules/{name}/pause",
            post(actions::pause_schedule_api),
        )
        .route(
            "/api/schedules/{name}/resume",
            post(actions::resume_schedule_api),
        )
        .route(
            "/api/schedules/{name}/trigger",
            post(actions::trigger_schedule_api),
        )
}

#[cfg(test)]
mod tests;
