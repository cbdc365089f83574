//! One store under test: the names given to the ids it minted, and its observable state
//! (snapshots and notifications) written with those names.

use std::collections::HashMap;
use std::sync::Arc;

use hive_models::{Json, NewPlan, NewTask, PlanId, RetryPolicy, RunId, SubTask, TaskId};
use serde_json::json;
use tokio::sync::broadcast;

use crate::{
    Claim, Error, FinishReport, Finished, Notification, Outcome, RunOutcome, Store, TaskFilter,
    WorkerFilter,
};

use super::ops::*;

/// One store under test, with the names given to the ids it minted.
pub(super) struct Side {
    pub(super) store: Arc<dyn Store>,
    /// Task ids in creation order, with their names.
    pub(super) tasks: Vec<(TaskId, String)>,
    pub(super) plans: Vec<(PlanId, String)>,
    pub(super) runs: Vec<(RunId, String)>,
    /// Every id (as text) → its name, for normalizing whatever mentions ids.
    pub(super) names: HashMap<String, String>,
    /// Runs that were running at the last snapshot, by name.
    pub(super) running: Vec<RunId>,
    pub(super) plain_tasks: usize,
    pub(super) rx: Option<broadcast::Receiver<Notification>>,
}

impl Side {
    pub(super) async fn new(store: Arc<dyn Store>, notifications: bool) -> Side {
        let rx = if notifications {
            store.subscribe().await.ok()
        } else {
            None
        };
        Side {
            store,
            tasks: Vec::new(),
            plans: Vec::new(),
            runs: Vec::new(),
            names: HashMap::new(),
            running: Vec::new(),
            plain_tasks: 0,
            rx,
        }
    }

    pub(super) fn name_task(&mut self, id: TaskId, name: String) {
        self.names.insert(id.to_string(), name.clone());
        self.tasks.push((id, name));
    }

    pub(super) fn name_run(&mut self, id: RunId, name: String) {
        if self.names.insert(id.to_string(), name.clone()).is_none() {
            self.runs.push((id, name));
        }
    }

    pub(super) fn task(&self, i: Pick) -> Option<TaskId> {
        (!self.tasks.is_empty()).then(|| self.tasks[i.of(self.tasks.len())].0)
    }

    pub(super) fn plan(&self, i: Pick) -> Option<PlanId> {
        (!self.plans.is_empty()).then(|| self.plans[i.of(self.plans.len())].0)
    }

    /// The picked run; a running pick falls back to any run when none is running.
    pub(super) fn run(&self, pick: RunPick) -> Option<RunId> {
        let all = || self.runs.iter().map(|(r, _)| *r).collect::<Vec<_>>();
        let (list, i) = match pick {
            RunPick::Running(i) if !self.running.is_empty() => (self.running.clone(), i),
            RunPick::Running(i) | RunPick::Any(i) => (all(), i),
        };
        (!list.is_empty()).then(|| list[i.of(list.len())])
    }

    /// Text with every known id replaced by its name.
    /// [`Self::text`] of each id.
    pub(super) fn texts<I: ToString>(&self, ids: impl Iterator<Item = I>) -> Vec<String> {
        ids.map(|id| self.text(&id.to_string())).collect()
    }

    pub(super) fn text(&self, s: &str) -> String {
        let mut out = s.to_owned();
        if out.contains('-') {
            for (id, name) in &self.names {
                if out.contains(id.as_str()) {
                    out = out.replace(id.as_str(), name);
                }
            }
        }
        out
    }

    /// A JSON value with ids replaced by names and timestamps by whether they are set.
    pub(super) fn normalize(&self, v: &Json) -> Json {
        const TIMES: [&str; 9] = [
            "created_at",
            "updated_at",
            "started_at",
            "completed_at",
            "lease_expires_at",
            "last_heartbeat",
            "registered_at",
            "run_at",
            "due_date",
        ];
        match v {
            Json::String(s) => Json::String(self.text(s)),
            Json::Array(a) => Json::Array(a.iter().map(|x| self.normalize(x)).collect()),
            Json::Object(o) => Json::Object(
                o.iter()
                    .map(|(k, x)| {
                        let x = if TIMES.contains(&k.as_str()) {
                            Json::from(if x.is_null() { "unset" } else { "set" })
                        } else {
                            self.normalize(x)
                        };
                        (self.text(k), x)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    pub(super) fn show<T: serde::Serialize>(&self, v: &T) -> String {
        let v = serde_json::to_value(v).unwrap_or_else(|e| json!(format!("unserializable: {e}")));
        self.normalize(&v).to_string()
    }

    pub(super) fn error(&self, e: &Error) -> String {
        format!("error: {}", self.text(&e.to_string()))
    }

    pub(super) fn sorted_names<I: IntoIterator<Item = T>, T: ToString>(
        &self,
        ids: I,
    ) -> Vec<String> {
        let mut v: Vec<String> = ids.into_iter().map(|i| self.text(&i.to_string())).collect();
        v.sort();
        v
    }

    /// The notifications since the last call, normalized and sorted (the order within one
    /// transaction is not part of the contract).
    pub(super) fn notes(&mut self) -> String {
        let Some(rx) = self.rx.as_mut() else {
            return String::new();
        };
        let mut raw = Vec::new();
        while let Ok(n) = rx.try_recv() {
            raw.push(n);
        }
        let mut notes: Vec<String> = raw
            .iter()
            .map(|n| {
                let mut v = serde_json::to_value(n).unwrap_or(Json::Null);
                if let Some(o) = v.as_object_mut() {
                    o.remove("origin");
                }
                self.normalize(&v).to_string()
            })
            .collect();
        notes.sort();
        notes.join("\n")
    }

    /// Everything a caller can observe, one line per row, with ids as names.
    pub(super) async fn snapshot(&mut self) -> String {
        let s = self.store.clone();
        let mut out = Vec::new();
        let tasks = match s.list_tasks(&TaskFilter::default()).await {
            Ok(t) => t,
            Err(e) => return self.error(&e),
        };
        self.running.clear();
        for t in &tasks {
            out.push(format!("task {}", self.show(t)));
            match s.list_runs(t.id).await {
                Ok(runs) => {
                    for r in runs {
                        if r.is_running() {
                            self.running.push(r.id);
                        }
                        out.push(format!("  run {}", self.show(&r)));
                    }
                }
                Err(e) => out.push(self.error(&e)),
            }
        }
        // Give the running runs a stable order for picks: by name.
        let mut running: Vec<(String, RunId)> = self
            .running
            .iter()
            .map(|r| (self.text(&r.to_string()), *r))
            .collect();
        running.sort();
        self.running = running.into_iter().map(|(_, r)| r).collect();
        match s.count_tasks(None).await {
            Ok(c) => out.push(format!("counts {c:?}")),
            Err(e) => out.push(self.error(&e)),
        }
        match s.list_plans(None, None).await {
            Ok(plans) => {
                for p in plans {
                    out.push(format!("plan {}", self.show(&p)));
                    match s.count_tasks(Some(p.id)).await {
                        Ok(c) => out.push(format!("  counts {c:?}")),
                        Err(e) => out.push(self.error(&e)),
                    }
                }
            }
            Err(e) => out.push(self.error(&e)),
        }
        match s.list_workers(&WorkerFilter::default()).await {
            Ok(workers) => out.extend(workers.iter().map(|w| format!("worker {}", self.show(w)))),
            Err(e) => out.push(self.error(&e)),
        }
        out.join("\n")
    }

    /// Outcomes for the picked runs (a pick with no run to name is skipped).
    pub(super) fn outcomes(&self, picks: &[(RunPick, End)]) -> Vec<RunOutcome> {
        let mut outcomes = Vec::new();
        for (k, (pick, end)) in picks.iter().enumerate() {
            let Some(run_id) = self.run(*pick) else {
                continue;
            };
            let outcome = match end {
                End::Success => Outcome::success(Some(json!({ "step": k, "ok": true }))),
                End::FailureRetry => Outcome::Failure {
                    error: format!("error {k}"),
                    retry: Some(RetryPolicy::IMMEDIATE),
                },
                End::FailureFinal => Outcome::Failure {
                    error: format!("fatal {k}"),
                    retry: None,
                },
                End::GiveBack => Outcome::GiveBack {
                    reason: format!("cut off {k}"),
                },
            };
            outcomes.push(RunOutcome {
                run_id,
                outcome,
                output_log: (k % 2 == 0).then(|| format!("log {k}")),
                waited: std::time::Duration::ZERO,
            });
        }
        outcomes
    }

    pub(super) fn show_reports(&self, reports: &[FinishReport]) -> Vec<String> {
        reports
            .iter()
            .map(|r| {
                let finished = match r.finished {
                    Finished::Retrying { .. } => "retrying".to_owned(),
                    ref f => format!("{f:?}"),
                };
                format!(
                    "{} task={} {finished} plan={} cancelled={:?} plan_now={:?}",
                    self.text(&r.run_id.to_string()),
                    self.text(&format!("{:?}", r.task_id.map(|t| t.to_string()))),
                    self.text(&format!("{:?}", r.plan_id.map(|p| p.to_string()))),
                    self.sorted_names(&r.cancelled_dependents),
                    r.plan_transition,
                )
            })
            .collect()
    }

    /// Names the claims' runs and shows each claim, checking it hands out exactly the rows
    /// it stored.
    pub(super) async fn show_claims(&mut self, claims: &[Claim]) -> Vec<String> {
        let mut shown = Vec::new();
        for c in claims {
            let name = format!("{}#{}", self.text(&c.task.id.to_string()), c.run.run_number);
            self.name_run(c.run.id, name);
            let stored_task = self.store.get_task(c.task.id).await.ok().flatten();
            let stored_run = self.store.get_run(c.run.id).await.ok().flatten();
            let as_stored =
                stored_task.as_ref() == Some(&c.task) && stored_run.as_ref() == Some(&c.run);
            shown.push(format!(
                "{} {} as_stored={as_stored}",
                self.show(&c.task),
                self.show(&c.run)
            ));
        }
        shown
    }

    pub(super) fn new_task(&self, spec: &TaskSpec, position: usize) -> NewTask {
        let now = chrono::Utc::now();
        let mut t = NewTask::new(format!("task {position}"), TASK_TYPES[spec.task_type])
            .priority(spec.priority)
            .max_retries(spec.max_retries)
            .payload(json!({ "n": position }));
        t.run_at = match spec.delay {
            Delay::None => None,
            Delay::Past => Some(now - chrono::Duration::hours(1)),
            Delay::Future => Some(now + chrono::Duration::hours(1)),
        };
        t.idempotency_key = spec.key.map(|k| KEYS[k].to_owned());
        t
    }

    pub(super) fn names_of(&self, ids: &[TaskId]) -> Vec<String> {
        ids.iter().map(|i| self.text(&i.to_string())).collect()
    }

    pub(super) async fn materialize(&mut self, id: PlanId) -> String {
        match self.store.materialize_plan(id).await {
            Ok(created) => self.name_plan_tasks(id, created).await,
            Err(e) => self.error(&e),
        }
    }

    /// Names the tasks plan `id` has just created; what the step that created them reports.
    pub(super) async fn name_plan_tasks(&mut self, id: PlanId, created: Option<u64>) -> String {
        let filter = TaskFilter::in_plan(id);
        let tasks = match self.store.list_tasks(&filter).await {
            Ok(t) => t,
            Err(e) => return self.error(&e),
        };
        let plan = self.text(&id.to_string());
        // Name the new tasks by plan and subtask id, in subtask order, so names do not
        // depend on the order a backend lists or creates them in.
        let mut new: Vec<(String, TaskId)> = tasks
            .iter()
            .filter(|t| !self.names.contains_key(&t.id.to_string()))
            .map(|t| {
                let sub = t.plan_subtask_id.clone().unwrap_or_else(|| "?".into());
                (format!("{plan}.{sub}"), t.id)
            })
            .collect();
        new.sort();
        for (name, tid) in new {
            self.name_task(tid, name);
        }
        format!("materialized {created:?}")
    }
}

/// A valid plan: node `i` may depend only on nodes before it, so there is no cycle.
pub(super) fn new_plan(k: usize, nodes: &[NodeSpec]) -> NewPlan {
    let subtasks = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut deps: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                n.depends_on
                    .iter()
                    .map(|d| format!("n{}", d.of(i)))
                    .collect()
            };
            deps.sort();
            deps.dedup();
            let mut st = SubTask::new(
                format!("n{i}"),
                format!("plan {k} node {i}"),
                TASK_TYPES[n.task_type],
            )
            .depends_on(deps);
            st.priority = n.priority;
            st.max_retries = Some(n.max_retries);
            st.payload = json!({ "plan": k, "node": i });
            st
        })
        .collect();
    NewPlan::new(format!("plan {k}"), subtasks)
        .description(format!("generated plan {k}"))
        .metadata(json!({ "plan": k }))
}
