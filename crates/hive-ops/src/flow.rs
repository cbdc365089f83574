//! Flow control: limits per task type or concurrency key, and pausing a task type. The
//! rules live in the database and every claim of every worker reads them, so a change holds
//! from the next claim on, without restarting anything.

use std::collections::{BTreeMap, BTreeSet};

use hive_models::{FlowRule, Rate, Scope, TaskStatus, check_scope_name};
use hive_store::{Store, WorkerFilter};
use serde::Serialize;

use crate::{Error, Ops, Result};

/// A scope's limits; `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// At most this many of the scope's tasks run at once, across every worker.
    pub max_running: Option<u32>,
    /// At most this many of the scope's tasks start per period, across every worker.
    pub rate: Option<Rate>,
}

/// One task type as `hive queue list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueInfo {
    pub task_type: String,
    pub queued: u64,
    pub running: u64,
    pub paused: bool,
    pub max_running: Option<u32>,
    pub rate: Option<Rate>,
}

impl<S: Store + ?Sized> Ops<S> {
    /// Sets a type's or key's limits, replacing the ones it had and keeping a pause. A task
    /// type no task, worker or schedule uses is refused as a likely typo unless `allow_new`.
    pub async fn set_limits(
        &self,
        scope: Scope,
        limits: Limits,
        allow_new: bool,
    ) -> Result<FlowRule> {
        scope.validate()?;
        if limits.max_running.is_none() && limits.rate.is_none() {
            return Err(Error::Invalid(hive_models::Error::InvalidField {
                field: "limits".into(),
                reason: "give a concurrency limit, a rate, or both (delete the limit to lift \
                         it)"
                .into(),
            }));
        }
        let mut rule = self.rule_or_new(&scope, allow_new).await?;
        rule.max_running = limits.max_running;
        rule.rate = limits.rate;
        self.store_rule(rule).await
    }

    /// Lifts a scope's limits (a paused type stays paused); false when it had none.
    pub async fn delete_limits(&self, scope: &Scope) -> Result<bool> {
        scope.validate()?;
        let Some(mut rule) = self.rule(scope).await? else {
            return Ok(false);
        };
        if rule.max_running.is_none() && rule.rate.is_none() {
            return Ok(false);
        }
        rule.max_running = None;
        rule.rate = None;
        self.store_rule(rule).await?;
        Ok(true)
    }

    /// Stops claims of a task type (running tasks finish). Pausing a paused type is a
    /// no-op. An unknown type is refused unless `allow_new`, as for [`Ops::set_limits`].
    pub async fn pause_queue(&self, task_type: &str, allow_new: bool) -> Result<FlowRule> {
        check_scope_name("task_type", task_type)?;
        let mut rule = self
            .rule_or_new(&Scope::Type(task_type.to_owned()), allow_new)
            .await?;
        rule.paused = true;
        self.store_rule(rule).await
    }

    /// Lets workers claim a paused type again; false when it was not paused.
    pub async fn resume_queue(&self, task_type: &str) -> Result<bool> {
        check_scope_name("task_type", task_type)?;
        let Some(mut rule) = self.rule(&Scope::Type(task_type.to_owned())).await? else {
            return Ok(false);
        };
        if !rule.paused {
            return Ok(false);
        }
        rule.paused = false;
        self.store_rule(rule).await?;
        Ok(true)
    }

    /// Every stored rule: types first, then keys, by name.
    pub async fn list_flow_rules(&self) -> Result<Vec<FlowRule>> {
        Ok(self.store.list_flow_rules().await?)
    }

    /// Every task type with tasks queued or running, or with a rule: its counts, whether
    /// it is paused, and its limits.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let now = self.store.now().await?;
        let stats = self.store.queue_stats(now).await?;
        let mut queues: BTreeMap<String, QueueInfo> = BTreeMap::new();
        let entry = |queues: &mut BTreeMap<String, QueueInfo>, t: &str| {
            queues
                .entry(t.to_owned())
                .or_insert_with(|| QueueInfo {
                    task_type: t.to_owned(),
                    queued: 0,
                    running: 0,
                    paused: false,
                    max_running: None,
                    rate: None,
                })
                .clone()
        };
        for c in &stats.counts {
            let mut q = entry(&mut queues, &c.task_type);
            match c.status {
                TaskStatus::Queued => q.queued += c.count,
                TaskStatus::InProgress => q.running += c.count,
                _ => {}
            }
            queues.insert(q.task_type.clone(), q);
        }
        for r in self.store.list_flow_rules().await? {
            if let Scope::Type(t) = &r.scope {
                let mut q = entry(&mut queues, t);
                q.paused = r.paused;
                q.max_running = r.max_running;
                q.rate = r.rate;
                queues.insert(t.clone(), q);
            }
        }
        Ok(queues.into_values().collect())
    }

    async fn rule(&self, scope: &Scope) -> Result<Option<FlowRule>> {
        let rules = self.store.list_flow_rules().await?;
        Ok(rules.into_iter().find(|r| &r.scope == scope))
    }

    async fn rule_or_new(&self, scope: &Scope, allow_new: bool) -> Result<FlowRule> {
        if let Some(rule) = self.rule(scope).await? {
            return Ok(rule);
        }
        if let Scope::Type(t) = scope
            && !allow_new
            && !self.known_types().await?.contains(t)
        {
            return Err(Error::UnknownTaskType {
                task_type: t.clone(),
            });
        }
        Ok(FlowRule::new(scope.clone(), self.store.now().await?))
    }

    /// Types some task, worker capability or schedule names.
    async fn known_types(&self) -> Result<BTreeSet<String>> {
        let now = self.store.now().await?;
        let mut known: BTreeSet<String> = self
            .store
            .queue_stats(now)
            .await?
            .counts
            .into_iter()
            .map(|c| c.task_type)
            .collect();
        for w in self.store.list_workers(&WorkerFilter::default()).await? {
            known.extend(w.capabilities);
        }
        for s in self.store.list_schedules().await? {
            known.extend(s.creates.task_types().into_iter().map(str::to_owned));
        }
        Ok(known)
    }

    /// Stores a rule with the store's time, or deletes it when it says nothing.
    async fn store_rule(&self, mut rule: FlowRule) -> Result<FlowRule> {
        rule.validate()?;
        rule.updated_at = self.store.now().await?;
        if rule.is_empty() {
            self.store.delete_flow_rule(&rule.scope).await?;
        } else {
            self.store.put_flow_rule(&rule).await?;
        }
        Ok(rule)
    }
}
