//! Applying one generated operation to a store, its result written with names.

use std::collections::BTreeMap;
use std::time::Duration;

use hive_models::{ExecutionPlan, NewTask, PlanStatus, RetryPolicy, RunId, TaskId, WorkerStatus};
use serde_json::json;

use crate::{
    PruneParams, ReapParams, StatusChange, TaskFilter, TasksInserted, WorkerFilter,
    WorkerRegistration, WorkerStatusChange,
};

use super::ops::*;
use super::side::*;

impl Side {
    /// Applies one operation and describes its result with names.
    pub(super) async fn apply(&mut self, op: &Op) -> String {
        let s = self.store.clone();
        match op {
            Op::Insert(specs) => {
                let tasks: Vec<NewTask> = specs
                    .iter()
                    .enumerate()
                    .map(|(k, spec)| self.new_task(spec, self.plain_tasks + k))
                    .collect();
                match s.insert_tasks(tasks).await {
                    Ok(TasksInserted { ids, new_tasks }) => {
                        for id in &ids {
                            if !self.names.contains_key(&id.to_string()) {
                                let name = format!("t{}", self.plain_tasks);
                                self.plain_tasks += 1;
                                self.name_task(*id, name);
                            }
                        }
                        format!("inserted {:?} ({new_tasks} new)", self.names_of(&ids))
                    }
                    Err(e) => self.error(&e),
                }
            }
            Op::Claim(claim) => match s.claim_tasks(&claim.params()).await {
                Ok(claims) => format!("claimed {:#?}", self.show_claims(&claims).await),
                Err(e) => self.error(&e),
            },
            Op::Finish(picks) => {
                let outcomes = self.outcomes(picks);
                match s.finish_runs(&outcomes).await {
                    Ok(reports) => format!("finished {:#?}", self.show_reports(&reports)),
                    Err(e) => self.error(&e),
                }
            }
            Op::FinishAndClaim(picks, claim) => {
                let outcomes = self.outcomes(picks);
                match s.finish_and_claim(&outcomes, &claim.params()).await {
                    Ok((reports, claims)) => format!(
                        "finished {:#?} claimed {:#?}",
                        self.show_reports(&reports),
                        self.show_claims(&claims).await
                    ),
                    Err(e) => self.error(&e),
                }
            }
            Op::ExtendLease { run, expired_lease } => {
                let Some(run_id) = self.run(*run) else {
                    return "no run".into();
                };
                let lease = if *expired_lease {
                    EXPIRED_LEASE
                } else {
                    LONG_LEASE
                };
                match s.extend_lease(run_id, lease).await {
                    Ok(_) => "extended".into(),
                    Err(e) => self.error(&e),
                }
            }
            Op::Release(picks) => {
                let ids: Vec<RunId> = picks.iter().filter_map(|p| self.run(*p)).collect();
                match s.release_runs(&ids).await {
                    Ok(tasks) => format!("released {:?}", self.sorted_names(&tasks)),
                    Err(e) => self.error(&e),
                }
            }
            Op::SetStatus {
                task,
                status,
                metadata,
                requeue,
            } => {
                let Some(id) = self.task(*task) else {
                    return "no task".into();
                };
                let change = StatusChange {
                    status: *status,
                    metadata: metadata.map(|m| json!({ format!("k{}", m % 4): m })),
                    requeue: *requeue,
                    // Every other change with metadata also gives a reason.
                    reason: metadata
                        .filter(|m| m % 2 == 0)
                        .map(|m| format!("reason {m}")),
                };
                match s.set_task_status(id, change).await {
                    Ok(Some(ch)) => format!(
                        "changed from {} to {} cancelled={:?} plan={}",
                        ch.previous,
                        self.show(&ch.task),
                        self.sorted_names(&ch.cancelled_dependents),
                        self.text(&format!(
                            "{:?}",
                            ch.plan_transition.map(|(p, st)| (p.to_string(), st))
                        )),
                    ),
                    Ok(None) => "unknown task".into(),
                    Err(e) => self.error(&e),
                }
            }
            Op::Delete(task) => {
                let Some(id) = self.task(*task) else {
                    return "no task".into();
                };
                match s.delete_task(id).await {
                    Ok(deleted) => format!("deleted {deleted}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::Prune { statuses, limit } => {
                let params = PruneParams {
                    older_than: Duration::ZERO,
                    statuses: statuses.clone(),
                    limit: *limit,
                };
                match s.prune_tasks(&params).await {
                    Ok(n) => format!("pruned {n}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::Reap { limit } => {
                let params = ReapParams {
                    // Long enough that no worker goes offline by the clock during a test.
                    heartbeat_timeout: Duration::from_secs(3600),
                    retry: RetryPolicy::IMMEDIATE,
                    limit: *limit,
                };
                match s.reap(&params).await {
                    Ok(r) => format!(
                        "reaped requeued={:?} failed={:?} offline={:?} plans={:?}",
                        self.sorted_names(r.requeued.iter().map(|(t, r)| format!("{t} {r}"))),
                        self.sorted_names(&r.failed),
                        r.offline_workers,
                        self.sorted_names(
                            r.plan_transitions.iter().map(|(p, st)| format!("{p} {st}"))
                        ),
                    ),
                    Err(e) => self.error(&e),
                }
            }
            Op::Register {
                worker,
                role,
                capabilities,
            } => {
                let registration = WorkerRegistration {
                    id: worker_id(*worker),
                    role: format!("role{role}"),
                    capabilities: capabilities
                        .iter()
                        .map(|c| TASK_TYPES[*c].to_owned())
                        .collect(),
                    metadata: json!({ "registered_as": role }),
                };
                match s.register_worker(&registration).await {
                    Ok(w) => format!("registered {}", self.show(&w)),
                    Err(e) => self.error(&e),
                }
            }
            Op::Heartbeat { worker, status } => {
                // An `error` comes with the reason for it; other statuses clear it.
                let change = status.map(|st| WorkerStatusChange {
                    status: st,
                    reason: (st == WorkerStatus::Error).then(|| format!("{st} on {worker}")),
                });
                match s.heartbeat(&worker_id(*worker), change).await {
                    Ok(r) => format!("heartbeat {r:?}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::Unregister(worker) => match s.unregister_worker(&worker_id(*worker)).await {
                Ok(r) => format!(
                    "unregistered {:?}",
                    r.map(|tasks| self.sorted_names(&tasks))
                ),
                Err(e) => self.error(&e),
            },
            Op::InsertPlan { nodes, materialize } => {
                let k = self.plans.len();
                let plan = new_plan(k, nodes);
                // Materialized at once means submitted: stored and materialized in one step.
                let stored = if *materialize {
                    s.submit_plan(plan).await.map(|(id, n)| (id, Some(n)))
                } else {
                    s.insert_plan(plan).await.map(|id| (id, None))
                };
                let (id, created) = match stored {
                    Ok(stored) => stored,
                    Err(e) => return self.error(&e),
                };
                let name = format!("p{k}");
                self.names.insert(id.to_string(), name.clone());
                self.plans.push((id, name));
                match created {
                    Some(n) => self.name_plan_tasks(id, Some(n)).await,
                    None => "inserted plan".into(),
                }
            }
            Op::Materialize(plan) => match self.plan(*plan) {
                Some(id) => self.materialize(id).await,
                None => "no plan".into(),
            },
            Op::CancelPlan(plan) => {
                let Some(id) = self.plan(*plan) else {
                    return "no plan".into();
                };
                match s.cancel_plan(id).await {
                    Ok(r) => format!("cancelled {:?}", r.map(|tasks| self.sorted_names(&tasks))),
                    Err(e) => self.error(&e),
                }
            }
            Op::RetryPlan(plan) => {
                let Some(id) = self.plan(*plan) else {
                    return "no plan".into();
                };
                match s.retry_plan(id).await {
                    Ok(r) => format!("retried {:?}", r.map(|tasks| self.sorted_names(&tasks))),
                    Err(e) => self.error(&e),
                }
            }
            Op::PrunePlans => {
                let params = crate::PlanPruneParams {
                    older_than: Duration::ZERO,
                    statuses: vec![
                        PlanStatus::Completed,
                        PlanStatus::Failed,
                        PlanStatus::Cancelled,
                    ],
                    limit: 1000,
                };
                match s.prune_plans(&params).await {
                    Ok(n) => format!("pruned {n:?}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::RequeuePlan(plan) => {
                let Some(id) = self.plan(*plan) else {
                    return "no plan".into();
                };
                let plan_name = self.text(&id.to_string());
                let prefix = format!("{plan_name}.");
                let mut tasks: Vec<(String, TaskId)> = self
                    .tasks
                    .iter()
                    .filter(|(_, n)| n.starts_with(&prefix))
                    .map(|(t, n)| (n.clone(), *t))
                    .collect();
                tasks.sort();
                let mut out = Vec::new();
                for (name, task) in tasks {
                    let change = StatusChange::requeue();
                    out.push(match s.set_task_status(task, change).await {
                        Ok(Some(ch)) => format!(
                            "{name}: {} -> queued, pending {}",
                            ch.previous, ch.task.pending_dependencies
                        ),
                        Ok(None) => format!("{name}: unknown"),
                        Err(e) => format!("{name}: {}", self.error(&e)),
                    });
                }
                format!("requeued plan {out:#?}")
            }
            Op::TransitionPlan { plan, from, to } => {
                let Some(id) = self.plan(*plan) else {
                    return "no plan".into();
                };
                match s.transition_plan(id, *from, *to).await {
                    Ok(changed) => format!("transitioned {changed}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::ListTasks {
                status,
                task_type,
                plan,
                ready_only,
                limit,
            } => {
                let filter = TaskFilter {
                    status: *status,
                    task_type: task_type.map(|t| TASK_TYPES[t].to_owned()),
                    plan_id: plan.and_then(|p| self.plan(p)),
                    ready_only: *ready_only,
                    updated_not_after: None,
                    depending_on: None,
                    limit: *limit,
                };
                match s.list_tasks(&filter).await {
                    Ok(tasks) => format!("listed {:?}", self.texts(tasks.iter().map(|t| t.id))),
                    Err(e) => self.error(&e),
                }
            }
            Op::DependenciesMet(picks) => {
                let ids: Vec<TaskId> = picks.iter().filter_map(|p| self.task(*p)).collect();
                match s.dependencies_met(&ids).await {
                    Ok(met) => {
                        let met: BTreeMap<String, bool> = met
                            .into_iter()
                            .map(|(t, m)| (self.text(&t.to_string()), m))
                            .collect();
                        format!("met {met:?}")
                    }
                    Err(e) => self.error(&e),
                }
            }
            Op::ListPlans { status, limit } => match s.list_plans(*status, *limit).await {
                Ok(plans) => {
                    let headers = s.list_plan_headers(*status, *limit).await;
                    let mut agree = headers.is_ok_and(|h| {
                        h == plans.iter().map(ExecutionPlan::header).collect::<Vec<_>>()
                    });
                    for p in &plans {
                        let one = s.get_plan_header(p.id).await;
                        agree &= one.is_ok_and(|h| h == Some(p.header()));
                    }
                    let ids = self.texts(plans.iter().map(|p| p.id));
                    format!("plans {ids:?}, headers the same: {agree}")
                }
                Err(e) => self.error(&e),
            },
            Op::ListWorkers { role, alive } => {
                let filter = WorkerFilter {
                    role: role.map(|r| format!("role{r}")),
                    alive_within: alive.then_some(Duration::from_secs(3600)),
                };
                match s.list_workers(&filter).await {
                    Ok(w) => format!(
                        "workers {:?}",
                        w.iter().map(|w| w.id.to_string()).collect::<Vec<_>>()
                    ),
                    Err(e) => self.error(&e),
                }
            }
        }
    }
}
