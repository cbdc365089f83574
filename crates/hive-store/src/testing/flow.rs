//! Conformance cases for flow control: running caps per type and per key, rates, paused
//! types, and the rules' storage. Limits hold within one claim, across claims, and in the
//! claim that follows a finish.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_models::{FlowRule, NewTask, Rate, Scope, TaskId};

use super::fixtures::{claim_params, node, plan, set_status, success};
use super::notifications::wait_for;
use crate::{Claim, ClaimParams, Store, TaskFilter};

type S = Arc<dyn Store>;

async fn rule(s: &S, scope: Scope, edit: impl FnOnce(&mut FlowRule)) {
    let mut r = FlowRule::new(scope, s.now().await.unwrap());
    edit(&mut r);
    s.put_flow_rule(&r).await.unwrap();
}

async fn add(s: &S, tasks: Vec<NewTask>) -> Vec<TaskId> {
    s.insert_tasks(tasks).await.unwrap().ids
}

fn of_type(t: &str, n: usize) -> Vec<NewTask> {
    (0..n)
        .map(|i| NewTask::new(format!("{t}-{i}"), t))
        .collect()
}

fn keyed(key: &str, n: usize, limit: Option<u32>) -> Vec<NewTask> {
    (0..n)
        .map(|i| {
            let mut t = NewTask::new(format!("{key}-{i}"), "job").concurrency_key(key);
            t.concurrency_limit = limit;
            t
        })
        .collect()
}

fn ids(claims: &[Claim]) -> Vec<TaskId> {
    claims.iter().map(|c| c.task.id).collect()
}

async fn claim(s: &S, limit: u32) -> Vec<Claim> {
    s.claim_tasks(&claim_params("w", limit)).await.unwrap()
}

pub async fn flow_rules_are_stored_listed_and_deleted(s: S) {
    rule(&s, Scope::Type("email".into()), |r| {
        r.max_running = Some(3);
        r.rate = Some(Rate::parse("60/1m").unwrap());
    })
    .await;
    rule(&s, Scope::Key("acct-1".into()), |r| r.paused = true).await;
    rule(&s, Scope::Type("email".into()), |r| r.max_running = Some(4)).await;
    let rules = s.list_flow_rules().await.unwrap();
    let shown: Vec<(Scope, Option<u32>, Option<Rate>, bool)> = rules
        .iter()
        .map(|r| (r.scope.clone(), r.max_running, r.rate, r.paused))
        .collect();
    assert_eq!(
        shown,
        [
            (Scope::Type("email".into()), Some(4), None, false),
            (Scope::Key("acct-1".into()), None, None, true),
        ],
        "types first, a put replaces the whole rule"
    );
    assert!(
        s.delete_flow_rule(&Scope::Key("acct-1".into()))
            .await
            .unwrap()
    );
    assert!(
        !s.delete_flow_rule(&Scope::Key("acct-1".into()))
            .await
            .unwrap()
    );
    assert_eq!(s.list_flow_rules().await.unwrap().len(), 1);
}

pub async fn a_type_runs_at_most_its_limit_and_others_pass(s: S) {
    rule(&s, Scope::Type("api".into()), |r| r.max_running = Some(2)).await;
    let api = add(&s, of_type("api", 5)).await;
    let other = add(&s, of_type("other", 2)).await;
    let first = claim(&s, 10).await;
    let mut want: Vec<TaskId> = api[..2].to_vec();
    want.extend(&other);
    let mut got = ids(&first);
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "two api tasks in queue order, and every other task"
    );
    assert!(
        claim(&s, 10).await.is_empty(),
        "the limit holds across claims"
    );
    let done = first.iter().find(|c| c.task.id == api[0]).unwrap();
    let p = claim_params("w", 10);
    let (_, refill) = s
        .finish_and_claim(&[success(done.run.id)], &p)
        .await
        .unwrap();
    assert_eq!(ids(&refill), [api[2]], "a finish frees exactly one place");
    assert!(claim(&s, 10).await.is_empty());
}

/// A claim's limit counts the tasks a rule admits and the others together.
pub async fn a_claim_takes_at_most_its_limit_of_ruled_and_other_tasks(s: S) {
    rule(&s, Scope::Type("api".into()), |r| r.max_running = Some(2)).await;
    add(&s, of_type("api", 3)).await;
    add(&s, of_type("other", 3)).await;
    let first = claim(&s, 3).await;
    assert_eq!(first.len(), 3, "the limit, no more");
    let api = |claims: &[Claim]| claims.iter().filter(|c| c.task.task_type == "api").count();
    assert!(api(&first) <= 2);
    let rest = claim(&s, 10).await;
    assert_eq!(api(&first) + api(&rest), 2, "the rule's two");
    assert_eq!(
        first.len() + rest.len(),
        5,
        "the rule's two and every other task"
    );
}

/// A claim says which of its tasks hold a share of a limit: those of a ruled type or with a
/// concurrency key, in a plain claim and in the one after a finish.
pub async fn a_claim_marks_the_tasks_that_count_against_a_limit(s: S) {
    rule(&s, Scope::Type("api".into()), |r| r.max_running = Some(5)).await;
    let api = add(&s, of_type("api", 2)).await;
    let other = add(&s, of_type("other", 2)).await;
    let key = add(&s, keyed("acct-1", 1, Some(3))).await;
    let marks = |claims: &[Claim]| {
        let mut got: Vec<(TaskId, bool)> = claims.iter().map(|c| (c.task.id, c.limited)).collect();
        got.sort();
        got
    };
    let sorted = |mut v: Vec<(TaskId, bool)>| {
        v.sort();
        v
    };
    let first = claim(&s, 10).await;
    let want = sorted(vec![
        (api[0], true),
        (api[1], true),
        (other[0], false),
        (other[1], false),
        (key[0], true),
    ]);
    assert_eq!(marks(&first), want, "ruled type and key: limited");
    let api2 = add(&s, of_type("api", 1)).await;
    let other2 = add(&s, of_type("other", 1)).await;
    let (_, refill) = s
        .finish_and_claim(&[success(first[0].run.id)], &claim_params("w", 10))
        .await
        .unwrap();
    let want = sorted(vec![(api2[0], true), (other2[0], false)]);
    assert_eq!(marks(&refill), want, "in the claim after a finish too");
}

pub async fn a_concurrency_key_is_serial_unless_it_says_otherwise(s: S) {
    let a = add(&s, keyed("acct-a", 3, None)).await;
    let b = add(&s, keyed("acct-b", 3, Some(2))).await;
    let plain = add(&s, of_type("job", 1)).await;
    let got = ids(&claim(&s, 10).await);
    assert_eq!(
        got.len(),
        4,
        "one of a, two of b, the plain task: {got:?} (a {a:?}, b {b:?})"
    );
    assert!(got.contains(&a[0]) && got.contains(&b[0]) && got.contains(&b[1]));
    assert!(got.contains(&plain[0]));
    assert!(claim(&s, 10).await.is_empty());
    // A stored rule for a key takes precedence over the tasks' own limit.
    rule(&s, Scope::Key("acct-a".into()), |r| r.max_running = Some(2)).await;
    assert_eq!(ids(&claim(&s, 10).await), [a[1]]);
    rule(&s, Scope::Key("acct-b".into()), |r| r.paused = true).await;
    assert!(
        claim(&s, 10).await.is_empty(),
        "a paused key is not claimed"
    );
}

/// Each task of a key is judged by its own limit: a task allowing five is claimed while a
/// serial task ahead of it waits for the key's running task.
pub async fn a_task_allowing_more_is_not_held_behind_a_serial_task_of_its_key(s: S) {
    let first = add(&s, keyed("acct", 1, Some(5))).await;
    assert_eq!(ids(&claim(&s, 10).await), first);
    let serial = add(&s, keyed("acct", 1, None)).await;
    let roomy = add(&s, keyed("acct", 1, Some(5))).await;
    assert_eq!(
        ids(&claim(&s, 10).await),
        roomy,
        "the serial task {serial:?} waits; the one allowing five runs"
    );
}

/// A busy key's backlog longer than a claim reads in queue order (600 tasks, past the SQL
/// backends' bound of 512) hides no key behind it:
/// the claim then walks the keys, judging each by its rule (paused, rate, running cap) or
/// its head's own limit, and takes what has room in queue order, with the plain queue.
pub async fn a_busy_keys_backlog_hides_no_key_behind_it(s: S) {
    let busy: Vec<NewTask> = keyed("busy", 600, None)
        .into_iter()
        .map(|t| t.priority(5))
        .collect();
    let busy = add(&s, busy).await;
    assert_eq!(
        ids(&claim(&s, 1).await),
        [busy[0]],
        "the busy key's first task runs"
    );
    rule(&s, Scope::Key("paused".into()), |r| r.paused = true).await;
    rule(&s, Scope::Key("metered".into()), |r| {
        r.rate = Some(Rate::parse("1/1h").unwrap());
        r.max_running = Some(5);
    })
    .await;
    let paused = add(&s, keyed("paused", 2, None)).await;
    let pair = add(&s, keyed("pair", 3, Some(2))).await;
    let metered = add(&s, keyed("metered", 2, None)).await;
    let solo = add(&s, keyed("solo", 2, None)).await;
    let plain = add(&s, of_type("job", 1)).await;
    let got = claim(&s, 10).await;
    assert_eq!(
        ids(&got),
        [pair[0], pair[1], metered[0], solo[0], plain[0]],
        "every key with room behind the backlog, in queue order (paused {paused:?})"
    );
    assert!(claim(&s, 10).await.is_empty(), "every key is full now");
    let solo_run = got.iter().find(|c| c.task.id == solo[0]).unwrap().run.id;
    s.finish_runs(&[success(solo_run)]).await.unwrap();
    assert_eq!(
        ids(&claim(&s, 10).await),
        [solo[1]],
        "the finish frees the key's next"
    );
}

/// A key with room for one task and a backlog longer than a claim reads in queue order
/// fills one place, not the claim's window: the keys behind it are reached in the same
/// claim.
pub async fn a_key_with_room_for_one_hides_no_key_behind_its_backlog(s: S) {
    let deep: Vec<NewTask> = keyed("deep", 600, None)
        .into_iter()
        .map(|t| t.priority(5))
        .collect();
    let deep = add(&s, deep).await;
    let other = add(&s, keyed("other", 2, None)).await;
    let plain = add(&s, of_type("job", 1)).await;
    assert_eq!(
        ids(&claim(&s, 10).await),
        [deep[0], other[0], plain[0]],
        "one of each key, then the plain queue"
    );
}

/// A plan's subtasks carry their concurrency key into their tasks: two subtasks of one key
/// never run at once, the plan's other subtasks pass, and finishing one lets the next in.
pub async fn a_plans_subtasks_share_their_concurrency_key(s: S) {
    let pid = s
        .insert_plan(plan(vec![
            node("gpu-1", &[]).concurrency_key("gpu"),
            node("gpu-2", &[]).concurrency_key("gpu"),
            node("cpu", &[]),
            node("pair-1", &[])
                .concurrency_key("pair")
                .concurrency_limit(2),
            node("pair-2", &[])
                .concurrency_key("pair")
                .concurrency_limit(2),
        ]))
        .await
        .unwrap();
    s.materialize_plan(pid).await.unwrap().unwrap();
    let tasks = s.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
    let gpu: Vec<TaskId> = tasks
        .iter()
        .filter(|t| t.concurrency_key.as_deref() == Some("gpu"))
        .map(|t| t.id)
        .collect();
    assert_eq!(gpu.len(), 2, "both gpu subtasks keep their key: {tasks:?}");
    assert!(
        tasks
            .iter()
            .filter(|t| t.concurrency_key.as_deref() == Some("pair"))
            .all(|t| t.concurrency_limit == Some(2))
    );
    let first = claim(&s, 10).await;
    let got = ids(&first);
    assert_eq!(got.len(), 4, "one gpu, cpu and both pair subtasks: {got:?}");
    assert_eq!(got.iter().filter(|t| gpu.contains(t)).count(), 1);
    let running = first.iter().find(|c| gpu.contains(&c.task.id)).unwrap();
    let (_, next) = s
        .finish_and_claim(&[success(running.run.id)], &claim_params("w", 10))
        .await
        .unwrap();
    let other = gpu.iter().find(|t| **t != running.task.id).unwrap();
    assert_eq!(
        ids(&next),
        [*other],
        "the freed place goes to the other gpu subtask"
    );
}

/// A keyed subtask its dependency's finish frees is admitted by the claim in the same
/// step, with no rule stored and no keyed task ready before the finish.
pub async fn a_keyed_dependent_is_claimed_in_the_step_that_frees_it(s: S) {
    let pid = s
        .insert_plan(plan(vec![
            node("first", &[]),
            node("then", &["first"]).concurrency_key("gpu"),
        ]))
        .await
        .unwrap();
    s.materialize_plan(pid).await.unwrap().unwrap();
    let first = claim(&s, 10).await;
    assert_eq!(first.len(), 1);
    let (_, next) = s
        .finish_and_claim(&[success(first[0].run.id)], &claim_params("w", 10))
        .await
        .unwrap();
    assert_eq!(next.len(), 1, "the freed keyed subtask is claimed at once");
    assert_eq!(next[0].task.concurrency_key.as_deref(), Some("gpu"));
    // And its key holds: a second task of the key waits while it runs.
    add(&s, keyed("gpu", 1, None)).await;
    assert!(claim(&s, 10).await.is_empty(), "one gpu task at a time");
}

pub async fn a_rate_counts_starts_in_its_window(s: S) {
    rule(&s, Scope::Type("mail".into()), |r| {
        r.rate = Some(Rate {
            max: 3,
            per: Duration::from_secs(3600),
        })
    })
    .await;
    let mail = add(&s, of_type("mail", 5)).await;
    let first = claim(&s, 10).await;
    assert_eq!(ids(&first), mail[..3]);
    let p = claim_params("w", 10);
    let runs: Vec<_> = first.iter().map(|c| success(c.run.id)).collect();
    let (_, more) = s.finish_and_claim(&runs, &p).await.unwrap();
    assert!(
        more.is_empty(),
        "finished tasks still count as starts in the window"
    );
    // A short window lets the next starts in once it passed.
    rule(&s, Scope::Type("mail".into()), |r| {
        r.rate = Some(Rate {
            max: 1,
            per: Duration::from_millis(300),
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(ids(&claim(&s, 10).await), [mail[3]]);
    assert!(claim(&s, 10).await.is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(ids(&claim(&s, 10).await), [mail[4]]);
}

/// A claim given back before its handler started leaves its rate windows (type and key)
/// again, one start per run given back, even among runs claimed at the same instant; a
/// run given back after its handler started still counts, as does a run already given
/// back.
pub async fn a_claim_given_back_unstarted_leaves_its_rate_window(s: S) {
    let hour = Rate {
        max: 3,
        per: Duration::from_secs(3600),
    };
    rule(&s, Scope::Type("mail".into()), |r| r.rate = Some(hour)).await;
    rule(&s, Scope::Key("acct".into()), |r| {
        r.rate = Some(hour);
        r.max_running = Some(10);
    })
    .await;
    let mail: Vec<NewTask> = (0..6)
        .map(|i| NewTask::new(format!("mail-{i}"), "mail").concurrency_key("acct"))
        .collect();
    let mail = add(&s, mail).await;
    let first = claim(&s, 10).await;
    assert_eq!(ids(&first), mail[..3], "three starts fill both windows");
    let runs: Vec<_> = first.iter().map(|c| c.run.id).collect();
    assert_eq!(
        s.release_unstarted(&runs[..2]).await.unwrap(),
        mail[..2],
        "given back in the order asked"
    );
    assert!(
        s.release_unstarted(&runs[..2]).await.unwrap().is_empty(),
        "a run given back is stale"
    );
    let again = claim(&s, 10).await;
    assert_eq!(
        ids(&again),
        mail[..2],
        "two starts left both windows, no more, and the queue's order holds"
    );
    let held = [runs[2], again[0].run.id];
    assert_eq!(s.release_runs(&held).await.unwrap().len(), 2);
    assert!(
        claim(&s, 10).await.is_empty(),
        "runs given back after their handlers started still count"
    );
    assert!(
        s.release_unstarted(&held).await.unwrap().is_empty(),
        "a stale run forgets no start"
    );
    assert!(claim(&s, 10).await.is_empty());
}

/// Resuming (a rule's change) is announced, so idle workers claim at once rather than at
/// their next poll; deleting a rule that is not there is not.
pub async fn a_paused_type_is_not_claimed_until_resumed(s: S) {
    let mut rx = s.subscribe().await.unwrap();
    let store_changed = |n: &crate::Notification| {
        (n.change == crate::Change::StoreChanged && n.origin == s.origin()).then_some(())
    };
    rule(&s, Scope::Type("batch".into()), |r| r.paused = true).await;
    wait_for(&mut rx, store_changed)
        .await
        .expect("a rule stored is announced");
    let batch = add(&s, of_type("batch", 2)).await;
    let other = add(&s, of_type("other", 1)).await;
    assert_eq!(ids(&claim(&s, 10).await), other);
    let only_batch = ClaimParams {
        task_types: vec!["batch".into()],
        ..claim_params("w", 10)
    };
    assert!(s.claim_tasks(&only_batch).await.unwrap().is_empty());
    assert!(
        s.delete_flow_rule(&Scope::Type("batch".into()))
            .await
            .unwrap()
    );
    wait_for(&mut rx, store_changed)
        .await
        .expect("a rule deleted is announced");
    assert_eq!(ids(&s.claim_tasks(&only_batch).await.unwrap()), batch);
    let edit = hive_models::FlowEdit::Resume;
    assert!(
        !s.edit_flow_rule(&Scope::Type("batch".into()), edit)
            .await
            .unwrap()
            .1
    );
    assert!(
        !s.delete_flow_rule(&Scope::Type("batch".into()))
            .await
            .unwrap()
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), wait_for(&mut rx, store_changed));
    assert!(
        !matches!(quiet.await, Ok(Ok(_))),
        "no change, nothing announced"
    );
}

pub async fn a_keys_rate_and_running_cap_hold_together(s: S) {
    rule(&s, Scope::Key("acct".into()), |r| {
        r.max_running = Some(3);
        r.rate = Some(Rate {
            max: 2,
            per: Duration::from_secs(3600),
        });
    })
    .await;
    let acct = add(&s, keyed("acct", 4, None)).await;
    let other = add(&s, keyed("other", 1, None)).await;
    let first = claim(&s, 10).await;
    let mut got = ids(&first);
    got.sort();
    let mut want = vec![acct[0], acct[1], other[0]];
    want.sort();
    assert_eq!(
        got, want,
        "two starts of `acct` in the window, the rule's cap over its own"
    );
    let runs: Vec<_> = first.iter().map(|c| success(c.run.id)).collect();
    let (_, more) = s
        .finish_and_claim(&runs, &claim_params("w", 10))
        .await
        .unwrap();
    assert!(more.is_empty(), "the window still holds two starts");
    assert!(
        s.delete_flow_rule(&Scope::Key("acct".into()))
            .await
            .unwrap()
    );
    assert_eq!(
        ids(&claim(&s, 10).await),
        [acct[2]],
        "without the rule the key is serial again"
    );
}

/// A limited task waits its turn in the queue: a claim smaller than what is ready takes
/// the queue's head, plain or limited, in priority then submission order.
pub async fn a_limited_task_does_not_jump_the_queue(s: S) {
    rule(&s, Scope::Type("api".into()), |r| r.max_running = Some(10)).await;
    let mut low = NewTask::new("keyed, low", "job").concurrency_key("acct-1");
    low.priority = 0;
    let low = add(&s, vec![low]).await;
    let mut urgent = NewTask::new("plain, urgent", "job");
    urgent.priority = 100;
    let urgent = add(&s, vec![urgent]).await;
    assert_eq!(
        ids(&claim(&s, 1).await),
        urgent,
        "the urgent plain task first"
    );
    assert_eq!(ids(&claim(&s, 1).await), low);
    let api = add(&s, of_type("api", 2)).await;
    let plain = add(&s, of_type("job", 2)).await;
    let keyed_later = add(&s, keyed("acct-2", 1, None)).await;
    let mut first = ids(&claim(&s, 3).await);
    first.sort();
    let mut want = vec![api[0], api[1], plain[0]];
    want.sort();
    assert_eq!(first, want, "the three oldest, whatever their rules");
    let mut rest = ids(&claim(&s, 3).await);
    rest.sort();
    let mut want = vec![plain[1], keyed_later[0]];
    want.sort();
    assert_eq!(rest, want);
    // A dependent freed by the finish before the claim competes in queue order too.
    for c in s.claim_tasks(&claim_params("w", 10)).await.unwrap() {
        s.finish_runs(&[success(c.run.id)]).await.unwrap();
    }
    add(&s, of_type("api", 1)).await;
    let mut then = node("then", &["first"]);
    then.priority = 10;
    let pid = s
        .insert_plan(plan(vec![node("first", &[]), then]))
        .await
        .unwrap();
    s.materialize_plan(pid).await.unwrap().unwrap();
    let mut only_plans = claim_params("w", 1);
    only_plans.task_types = vec!["test".into()];
    let first = s.claim_tasks(&only_plans).await.unwrap();
    assert_eq!(first.len(), 1);
    let (_, next) = s
        .finish_and_claim(&[success(first[0].run.id)], &claim_params("w", 1))
        .await
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|c| c.task.plan_subtask_id.as_deref())
            .collect::<Vec<_>>(),
        [Some("then")],
        "the freed urgent subtask, not the older api task"
    );
}

/// A task moved to `in_progress` by hand (an agent working on it outside any worker) holds
/// its key's place until it leaves that status, on every backend.
pub async fn a_task_moved_in_progress_by_hand_holds_its_keys_place(s: S) {
    let tasks = add(&s, keyed("acct", 2, None)).await;
    set_status(&*s, tasks[0], hive_models::TaskStatus::InProgress).await;
    assert!(
        claim(&s, 10).await.is_empty(),
        "the key's one place is taken"
    );
    set_status(&*s, tasks[0], hive_models::TaskStatus::Completed).await;
    assert_eq!(ids(&claim(&s, 10).await), [tasks[1]]);
}

/// Edits apply to the rule as stored: a pause survives new limits and lifted ones, a rule
/// that says nothing any more goes, and edits racing on one scope keep each other's fields.
pub async fn flow_edits_apply_to_the_stored_rule_atomically(s: S) {
    use hive_models::FlowEdit;
    let scope = Scope::Type("mail".into());
    let limits = |n: u32| FlowEdit::SetLimits {
        max_running: Some(n),
        rate: None,
    };
    assert_eq!(
        s.edit_flow_rule(&scope, FlowEdit::LiftLimits)
            .await
            .unwrap(),
        (None, false),
        "nothing to lift"
    );
    let (paused, changed) = s.edit_flow_rule(&scope, FlowEdit::Pause).await.unwrap();
    assert!(changed && paused.unwrap().paused);
    let (rule, _) = s.edit_flow_rule(&scope, limits(3)).await.unwrap();
    let rule = rule.unwrap();
    assert!(rule.paused, "limits keep the pause");
    assert_eq!(rule.max_running, Some(3));
    let (rule, changed) = s
        .edit_flow_rule(&scope, FlowEdit::LiftLimits)
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(
        rule.as_ref().map(|r| (r.paused, r.max_running)),
        Some((true, None))
    );
    let (rule, changed) = s.edit_flow_rule(&scope, FlowEdit::Resume).await.unwrap();
    assert!(changed && rule.is_none(), "a rule saying nothing goes");
    assert!(s.list_flow_rules().await.unwrap().is_empty());
    let (_, changed) = s.edit_flow_rule(&scope, FlowEdit::Resume).await.unwrap();
    assert!(!changed, "resuming what runs changes nothing");

    let edits: Vec<_> = (0..16u32)
        .map(|i| {
            let s = s.clone();
            let scope = scope.clone();
            let edit = if i % 2 == 0 {
                FlowEdit::Pause
            } else {
                limits(i)
            };
            tokio::spawn(async move { s.edit_flow_rule(&scope, edit).await.unwrap() })
        })
        .collect();
    for e in edits {
        e.await.unwrap();
    }
    let rules = s.list_flow_rules().await.unwrap();
    assert_eq!(rules.len(), 1);
    assert!(
        rules[0].paused && rules[0].max_running.is_some(),
        "every edit kept the others' fields: {rules:?}"
    );
}
