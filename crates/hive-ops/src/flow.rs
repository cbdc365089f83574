//! Flow control: limits per task type or concurrency key, and pausing a task type. The
//! rules live in the database and every claim of every worker reads them, so a change holds
//! from the next claim on, without restarting anything.

use std::collections::{BTreeMap, BTreeSet};

use hive_models::{FlowEdit, FlowRule, Rate, Scope, TaskStatus, check_scope_name};
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
        let mut wanted = FlowRule::new(scope.clone(), self.store.now().await?);
        wanted.max_running = limits.max_running;
        wanted.rate = limits.rate;
        wanted.validate()?;
        self.check_known(&scope, allow_new).await?;
        let edit = FlowEdit::SetLimits {
            max_running: limits.max_running,
            rate: limits.rate,
        };
        self.edited(&scope, edit).await
    }

    /// Lifts a scope's limits (a paused type stays paused); false when it had none.
    pub async fn delete_limits(&self, scope: &Scope) -> Result<bool> {
        scope.validate()?;
        let (_, changed) = self
            .store
            .edit_flow_rule(scope, FlowEdit::LiftLimits)
            .await?;
        Ok(changed)
    }

    /// Stops claims of a task type (running tasks finish). Pausing a paused type is a
    /// no-op. An unknown type is refused unless `allow_new`, as for [`Ops::set_limits`].
    pub async fn pause_queue(&self, task_type: &str, allow_new: bool) -> Result<FlowRule> {
        check_scope_name("task_type", task_type)?;
        let scope = Scope::Type(task_type.to_owned());
        self.check_known(&scope, allow_new).await?;
        self.edited(&scope, FlowEdit::Pause).await
    }

    /// Lets workers claim a paused type again; false when it was not paused.
    pub async fn resume_queue(&self, task_type: &str) -> Result<bool> {
        check_scope_name("task_type", task_type)?;
        let scope = Scope::Type(task_type.to_owned());
        let (_, changed) = self.store.edit_flow_rule(&scope, FlowEdit::Resume).await?;
        Ok(changed)
    }

    /// Every stored rule: types first, then keys, by name.
    pub async fn list_flow_rules(&self) -> Result<Vec<FlowRule>> {
        Ok(self.store.list_flow_rules().await?)
    }

    /// Every task type with tasks queued or running, or with a rule: its counts, whether
    /// it is paused, and its limits.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let stats = self.store.queue_stats(None).await?;
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

    /// Refuses a task type nothing knows (a likely typo) unless `allow_new` or it has a
    /// rule already. Keys are made up freely.
    async fn check_known(&self, scope: &Scope, allow_new: bool) -> Result<()> {
        let Scope::Type(t) = scope else {
            return Ok(());
        };
        if allow_new {
            return Ok(());
        }
        let ruled = self
            .store
            .list_flow_rules()
            .await?
            .iter()
            .any(|r| &r.scope == scope);
        if ruled || self.known_types().await?.contains(t) {
            return Ok(());
        }
        Err(Error::UnknownTaskType {
            task_type: t.clone(),
        })
    }

    /// The rule after `edit`, which leaves one (a pause or limits).
    async fn edited(&self, scope: &Scope, edit: FlowEdit) -> Result<FlowRule> {
        match self.store.edit_flow_rule(scope, edit).await? {
            (Some(rule), _) => Ok(rule),
            (None, _) => Err(Error::Store(hive_store::Error::Corrupt {
                table: "flow_rules",
                reason: format!("an edit that sets a limit or a pause left no rule for {scope:?}"),
            })),
        }
    }

    /// Types some task, worker capability or schedule names.
    async fn known_types(&self) -> Result<BTreeSet<String>> {
        let mut known: BTreeSet<String> = self
            .queue_stats(None)
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
}
