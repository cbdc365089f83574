//! Tests of plan validation: every malformed DAG is rejected naming the offending ids.

use proptest::prelude::*;

use super::*;
use crate::DEFAULT_MAX_PAYLOAD_BYTES as LIMIT;

fn st(id: &str, deps: &[&str]) -> SubTask {
    SubTask::new(id, format!("do {id}"), "shell").depends_on(deps.iter().copied())
}

fn plan_error<T: std::fmt::Debug>(r: Result<T>) -> PlanError {
    match r {
        Err(Error::InvalidPlan(e)) => e,
        other => panic!("expected a plan error, got {other:?}"),
    }
}

fn plan_err(subtasks: &[SubTask]) -> PlanError {
    plan_error(validate_subtasks(subtasks, LIMIT))
}

#[test]
fn diamond_is_valid() {
    let diamond = [
        st("a", &[]),
        st("b", &["a"]),
        st("c", &["a"]),
        st("d", &["b", "c"]),
    ];
    assert!(validate_subtasks(&diamond, LIMIT).is_ok());
}

#[test]
fn each_malformation_is_named() {
    assert_eq!(plan_err(&[]), PlanError::Empty);
    assert_eq!(
        plan_err(&[st("a", &[]), st("a", &[])]),
        PlanError::DuplicateId("a".into())
    );
    assert_eq!(
        plan_err(&[st("a", &["a"])]),
        PlanError::SelfDependency("a".into())
    );
    assert_eq!(
        plan_err(&[st("a", &["zz"])]),
        PlanError::UnknownDependency {
            subtask: "a".into(),
            dependency: "zz".into()
        }
    );
    let e = plan_err(&[
        st("a", &["c"]),
        st("b", &["a"]),
        st("c", &["b"]),
        st("d", &[]),
    ]);
    let PlanError::Cycle(ids) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(ids.first(), ids.last());
    for id in ["a", "b", "c"] {
        assert!(ids.iter().any(|x| x == id), "{e}");
    }
    assert!(e.to_string().starts_with("dependency cycle: "));
    let mut blank = st("x", &[]);
    blank.title = " ".into();
    assert!(
        matches!(plan_err(&[blank]), PlanError::InvalidSubtask { subtask, .. } if subtask == "x")
    );
    // Ids and types are names an operator types and a database indexes: bounded, printable.
    for (bad, says) in [
        (st(&"x".repeat(201), &[]), "over the limit of 200"),
        (st("a\nb", &[]), "control characters"),
    ] {
        let e = plan_err(&[bad]);
        assert!(
            matches!(&e, PlanError::InvalidSubtask { reason, .. } if reason.contains(says)),
            "{e}"
        );
    }
    let mut typed = st("t", &[]);
    typed.task_type = "etl\t2".into();
    assert!(plan_err(&[typed]).to_string().contains("task_type"));
}

#[test]
fn a_subtask_built_in_code_carries_every_field_to_its_task() {
    let policy = crate::RetryPolicy::default();
    let built = SubTask::new("test", "Test", "shell")
        .description("runs the suite")
        .payload(serde_json::json!({"command": "make test"}))
        .priority(7)
        .max_retries(2)
        .retry_policy(policy)
        .timeout_secs(600)
        .delay_secs(30)
        .estimated_duration(120)
        .depends_on(["build"])
        .depends_on(["lint"]);
    assert_eq!(built.dependencies, ["lint"], "depends_on replaces");
    assert_eq!(built.estimated_duration, Some(120));
    let t = built.to_new_task(None);
    assert_eq!(
        (
            t.description.as_str(),
            t.priority,
            t.max_retries,
            t.retry_policy
        ),
        ("runs the suite", 7, Some(2), Some(policy))
    );
    assert_eq!((t.timeout_secs, t.delay_secs), (Some(600), 30));
    assert_eq!(t.payload, serde_json::json!({"command": "make test"}));
}

#[test]
fn a_subtasks_concurrency_limit_needs_a_key_and_room() {
    let keyless = st("x", &[]).concurrency_limit(2);
    let e = plan_err(&[keyless]);
    assert!(
        matches!(&e, PlanError::InvalidSubtask { subtask, reason }
            if subtask == "x" && reason.contains("concurrency_limit")),
        "{e}"
    );
    let zero = st("y", &[]).concurrency_key("gpu").concurrency_limit(0);
    assert!(
        matches!(plan_err(&[zero]), PlanError::InvalidSubtask { subtask, .. } if subtask == "y")
    );
    let blank_key = st("z", &[]).concurrency_key(" ");
    assert!(
        matches!(plan_err(&[blank_key]), PlanError::InvalidSubtask { subtask, .. } if subtask == "z")
    );
    let fine = st("w", &[]).concurrency_key("gpu").concurrency_limit(3);
    assert!(validate_subtasks(std::slice::from_ref(&fine), 1 << 20).is_ok());
    let t = fine.to_new_task(None);
    assert_eq!(
        (t.concurrency_key.as_deref(), t.concurrency_limit),
        (Some("gpu"), Some(3))
    );
    // Plan files: the fields are optional, and a subtask without them reads as before.
    let read: SubTask = serde_json::from_str(
        r#"{"id": "a", "title": "A", "task_type": "t", "concurrency_key": "gpu"}"#,
    )
    .unwrap();
    assert_eq!(read.concurrency_key.as_deref(), Some("gpu"));
    let plain = serde_json::to_value(st("b", &[])).unwrap();
    assert!(plain.get("concurrency_key").is_none(), "{plain}");
}

#[test]
fn long_chain_does_not_overflow() {
    let chain: Vec<SubTask> = (0..100_000)
        .map(|i| {
            let deps: Vec<String> = if i == 0 {
                vec![]
            } else {
                vec![format!("n{}", i - 1)]
            };
            SubTask::new(format!("n{i}"), "t", "x").depends_on(deps)
        })
        .collect();
    assert!(validate_subtasks(&chain, LIMIT).is_ok());
}

#[test]
fn plan_counters_and_status() {
    let new = NewPlan::new("p", vec![st("a", &[]), st("b", &["a"])]);
    let mut plan = ExecutionPlan::from_new(PlanId::new(), new, chrono::Utc::now());
    assert_eq!(plan.get_dependencies("b"), ["a".to_string()]);
    assert!(plan.start_execution());
    assert!(!plan.start_execution());
    plan.increment_completed();
    assert_eq!(plan.get_progress_percentage(), 50.0);
    assert!(
        plan.add_dependency("a", "b").is_err(),
        "a cycle must be refused"
    );
    assert_eq!(plan.get_dependencies("a"), [] as [String; 0]);
    assert!(plan.complete());
    assert!(!plan.fail());
    assert!(plan.is_complete());
}

/// A random DAG: node i depends only on nodes with a smaller index.
fn dag() -> impl Strategy<Value = Vec<SubTask>> {
    (2usize..20).prop_flat_map(|n| {
        proptest::collection::vec(
            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            n,
        )
        .prop_map(move |deps| {
            deps.iter()
                .enumerate()
                .map(|(i, ds)| {
                    let mut d: Vec<String> = if i == 0 {
                        vec![]
                    } else {
                        ds.iter().map(|x| format!("s{}", x.index(i))).collect()
                    };
                    d.dedup();
                    SubTask::new(format!("s{i}"), "t", "x").depends_on(d)
                })
                .collect()
        })
    })
}

proptest! {
    #[test]
    fn random_dags_are_valid(nodes in dag()) {
        prop_assert!(validate_subtasks(&nodes, LIMIT).is_ok());
    }

    #[test]
    fn injected_back_edge_is_a_named_cycle(nodes in dag(), a in any::<prop::sample::Index>()) {
        // Make the first node depend on the last along a path that exists: chain everything.
        let mut nodes = nodes;
        let n = nodes.len();
        for (i, node) in nodes.iter_mut().enumerate().skip(1) {
            let prev = format!("s{}", i - 1);
            if !node.dependencies.contains(&prev) { node.dependencies.push(prev); }
        }
        let j = a.index(n - 1) + 1;
        nodes[0].dependencies.push(format!("s{j}"));
        let e = plan_err(&nodes);
        let is_cycle_through_s0 = matches!(&e, PlanError::Cycle(ids) if ids.contains(&"s0".to_string()));
        prop_assert!(is_cycle_through_s0, "{e}");
    }

    #[test]
    fn injected_faults_are_named(nodes in dag(), which in 0u8..3, a in any::<prop::sample::Index>()) {
        let mut nodes = nodes;
        let i = a.index(nodes.len());
        let id = nodes[i].id.clone();
        let expected = match which {
            0 => { nodes[i].dependencies.push(id.clone()); PlanError::SelfDependency(id) }
            1 => { nodes[i].dependencies.push("ghost".into());
                   PlanError::UnknownDependency { subtask: id, dependency: "ghost".into() } }
            _ => { let mut dup = nodes[i].clone(); dup.dependencies.clear(); nodes.push(dup);
                   PlanError::DuplicateId(id) }
        };
        prop_assert_eq!(plan_err(&nodes), expected);
    }
}

/// Whether `cycle` is a real cycle of `nodes`: it closes on itself and each id depends on
/// the next.
fn is_real_cycle(nodes: &[SubTask], cycle: &[String]) -> bool {
    let deps = |id: &str| {
        nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.dependencies.clone())
            .unwrap_or_default()
    };
    cycle.len() >= 2
        && cycle.first() == cycle.last()
        && cycle.windows(2).all(|w| deps(&w[0]).contains(&w[1]))
}

/// What may be injected into a valid DAG.
#[derive(Debug, Clone)]
enum Fault {
    /// A dependency closing a cycle through these node positions (in DAG order).
    Cycle(Vec<prop::sample::Index>),
    SelfDependency(prop::sample::Index),
    UnknownDependency(prop::sample::Index, String),
    Duplicate(prop::sample::Index),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        prop::collection::vec(any::<prop::sample::Index>(), 2..5).prop_map(Fault::Cycle),
        any::<prop::sample::Index>().prop_map(Fault::SelfDependency),
        (any::<prop::sample::Index>(), "[a-z]{1,6}|\\PC{1,6}")
            .prop_map(|(i, ghost)| Fault::UnknownDependency(i, format!("ghost-{ghost}"))),
        any::<prop::sample::Index>().prop_map(Fault::Duplicate),
    ]
}

/// Injects a fault and returns the ids any error about it must name (one of them).
fn inject(nodes: &mut Vec<SubTask>, fault: &Fault) -> Vec<String> {
    let n = nodes.len();
    match fault {
        Fault::Cycle(picks) => {
            // Chain the picked nodes forwards (later depends on earlier, as in a DAG), then
            // close the loop with the first depending on the last.
            let mut at: Vec<usize> = picks.iter().map(|p| p.index(n)).collect();
            at.sort_unstable();
            at.dedup();
            if at.len() < 2 {
                at = vec![0, n - 1];
            }
            for w in at.windows(2) {
                let (earlier, later) = (nodes[w[0]].id.clone(), w[1]);
                if !nodes[later].dependencies.contains(&earlier) {
                    nodes[later].dependencies.push(earlier);
                }
            }
            let last = nodes[*at.last().unwrap()].id.clone();
            nodes[at[0]].dependencies.push(last);
            at.iter().map(|i| nodes[*i].id.clone()).collect()
        }
        Fault::SelfDependency(i) => {
            let i = i.index(n);
            let id = nodes[i].id.clone();
            nodes[i].dependencies.push(id.clone());
            vec![id]
        }
        Fault::UnknownDependency(i, ghost) => {
            let i = i.index(n);
            nodes[i].dependencies.push(ghost.clone());
            vec![nodes[i].id.clone(), ghost.clone()]
        }
        Fault::Duplicate(i) => {
            let mut dup = nodes[i.index(n)].clone();
            dup.dependencies.clear();
            let id = dup.id.clone();
            nodes.push(dup);
            vec![id]
        }
    }
}

proptest! {
    /// Any mix of injected faults is rejected, and the error names ids that really are at
    /// fault: a reported cycle is a real cycle, a self-dependency depends on itself, an
    /// unknown dependency is unknown, a duplicate is duplicated.
    #[test]
    fn any_injected_faults_are_rejected_naming_real_offenders(
        nodes in dag(),
        faults in prop::collection::vec(fault(), 1..4),
        shuffle in any::<prop::sample::Index>(),
    ) {
        let mut nodes = nodes;
        let mut offenders = Vec::new();
        for f in &faults {
            offenders.extend(inject(&mut nodes, f));
        }
        // The order subtasks are listed in must not matter.
        let k = shuffle.index(nodes.len());
        nodes.rotate_left(k);
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let e = plan_err(&nodes);
        match &e {
            PlanError::Cycle(cycle) => prop_assert!(is_real_cycle(&nodes, cycle), "{}", e),
            PlanError::SelfDependency(id) => {
                let node = nodes.iter().find(|n| &n.id == id);
                prop_assert!(node.is_some_and(|n| n.dependencies.contains(id)), "{}", e);
            }
            PlanError::UnknownDependency { subtask, dependency } => {
                prop_assert!(!ids.contains(dependency), "{}", e);
                let node = nodes.iter().find(|n| &n.id == subtask);
                prop_assert!(node.is_some_and(|n| n.dependencies.contains(dependency)), "{}", e);
            }
            PlanError::DuplicateId(id) => {
                prop_assert!(ids.iter().filter(|x| *x == id).count() > 1, "{}", e);
            }
            other => prop_assert!(false, "unexpected error {:?}", other),
        }
        let named = e.to_string();
        prop_assert!(offenders.iter().any(|id| named.contains(id.as_str())), "{} names none of {:?}", named, offenders);
    }

    /// Validation does not depend on the order subtasks are listed in.
    #[test]
    fn valid_dags_stay_valid_in_any_order(nodes in dag(), shuffle in any::<prop::sample::Index>()) {
        let mut nodes = nodes;
        let k = shuffle.index(nodes.len());
        nodes.rotate_left(k);
        nodes.reverse();
        prop_assert!(validate_subtasks(&nodes, LIMIT).is_ok());
    }

    /// A NUL in any string of a subtask, or in the plan's own title or description, is
    /// refused naming the subtask and the field.
    #[test]
    fn nul_in_a_plan_is_refused_naming_where(nodes in dag(), which in 0usize..6, at in any::<prop::sample::Index>()) {
        let i = at.index(nodes.len());
        let id = nodes[i].id.clone();
        let mut plan = NewPlan::new("p", nodes);
        prop_assert!(plan.validate(LIMIT).is_ok());
        let node = &mut plan.subtasks[i];
        let field = match which {
            0 => { node.title.push('\0'); "title" }
            1 => { node.description.push('\0'); "description" }
            2 => { node.payload = serde_json::json!({"k": "v\0"}); "payload" }
            3 => { node.dependencies.push("a\0b".into()); "dependencies" }
            4 => { plan.description.push('\0'); "description" }
            _ => { plan.title.push('\0'); "title" }
        };
        let e = plan.validate(LIMIT).unwrap_err();
        let shown = e.to_string();
        prop_assert!(shown.contains("NUL") && shown.contains(&format!("`{field}")), "{}", shown);
        if which < 4 {
            let names_subtask = matches!(&e, Error::InvalidPlan(PlanError::InvalidSubtask { subtask, .. }) if *subtask == id);
            prop_assert!(names_subtask, "{}", shown);
        }
    }
}

#[test]
fn tasks_are_created_a_layer_at_a_time() {
    // Two chains listed one after the other are created side by side.
    let chains = [
        st("a0", &[]),
        st("a1", &["a0"]),
        st("a2", &["a1"]),
        st("b0", &[]),
        st("b1", &["b0"]),
    ];
    let ids: Vec<&str> = in_layers(&chains)
        .into_iter()
        .map(|i| chains[i].id.as_str())
        .collect();
    assert_eq!(ids, ["a0", "b0", "a1", "b1", "a2"]);
    // A join waits for its deepest dependency; listed order holds within a layer.
    let diamond = [
        st("join", &["left", "deep"]),
        st("deep", &["left"]),
        st("left", &[]),
    ];
    assert_eq!(in_layers(&diamond), [2, 1, 0]);
    // Invalid input (a cycle) still yields every index once instead of looping.
    let cycle = [st("x", &["y"]), st("y", &["x"])];
    let mut order = in_layers(&cycle);
    order.sort();
    assert_eq!(order, [0, 1]);
}

#[test]
fn task_ids_are_minted_in_creation_order() {
    let chains: Vec<SubTask> = (0..3)
        .flat_map(|c| {
            (0..50).map(move |i| {
                let deps = if i == 0 {
                    vec![]
                } else {
                    vec![format!("c{c}-{}", i - 1)]
                };
                st(
                    &format!("c{c}-{i}"),
                    &deps.iter().map(String::as_str).collect::<Vec<_>>(),
                )
            })
        })
        .collect();
    let (order, ids) = tasks_in_layers(&chains);
    let created: Vec<&str> = order.iter().map(|s| s.id.as_str()).collect();
    let layered: Vec<&str> = in_layers(&chains)
        .into_iter()
        .map(|i| chains[i].id.as_str())
        .collect();
    assert_eq!(created, layered);
    assert_eq!(ids.len(), chains.len());
    let minted: Vec<TaskId> = created.iter().map(|id| ids[id]).collect();
    assert!(
        minted.windows(2).all(|w| w[0] < w[1]),
        "ids follow the creation order, so one layer's tasks sort together"
    );
}

#[test]
fn a_chain_of_100_000_is_layered_without_deep_recursion() {
    let chain: Vec<SubTask> = (0..100_000)
        .map(|i| {
            let deps = if i == 0 {
                vec![]
            } else {
                vec![format!("s{}", i - 1)]
            };
            SubTask::new(format!("s{i}"), "t", "x").depends_on(deps)
        })
        .collect();
    let reversed: Vec<SubTask> = chain.iter().rev().cloned().collect();
    let order = in_layers(&reversed);
    assert_eq!(order[0], 99_999);
    assert_eq!(order[99_999], 0);
}

fn grow_err(existing: &[SubTask], spawner: &str, added: Vec<SubTask>) -> PlanError {
    plan_error(grow(existing, spawner, added, LIMIT))
}

#[test]
fn growth_rewires_the_spawners_dependents_to_the_new_sinks() {
    let plan = [
        st("split", &[]),
        st("summary", &["split"]),
        st("other", &[]),
    ];
    let added = vec![
        st("c2", &["c1"]),
        st("c1", &["split"]),
        st("c3", &["split", "other"]),
    ];
    let g = grow(&plan, "split", added, LIMIT).unwrap();
    let order: Vec<&str> = g.added.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(order, ["c1", "c3", "c2"], "created a layer at a time");
    assert_eq!(g.sinks, ["c2", "c3"]);
    assert_eq!(g.rewired, ["summary"]);
}

/// `split` spawned `a` and `b` (after `a`); `a` spawned `x`, which re-wired `b` to wait
/// for it too. `split` run again spawns `a` and `b` as before: kept as the plan holds them,
/// not refused as duplicates (which would fail `split`, and its plan, for good).
#[test]
fn a_spawn_made_again_keeps_what_a_later_spawn_rewired() {
    let plan = [
        st("split", &[]),
        st("a", &["split"]),
        st("b", &["split", "a", "x"]),
        st("x", &["a"]),
    ];
    let again = vec![st("a", &["split"]), st("b", &["split", "a"])];
    let g = grow(&plan, "split", again, LIMIT).unwrap();
    assert!(g.added.is_empty() && g.rewired.is_empty(), "{g:?}");
    // Waiting for less than it was spawned with is another definition: a duplicate.
    let e = grow(&plan, "split", vec![st("b", &["a"])], LIMIT).unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
}

/// A spawner run again spawns what it spawned before: what the plan holds, defined the
/// same, is kept; a new subtask is added beside it; the same id defined otherwise is
/// still a duplicate.
#[test]
fn a_spawn_made_again_keeps_what_the_plan_holds() {
    let plan = [
        st("split", &[]),
        st("summary", &["split", "c1"]),
        st("c1", &["split"]),
    ];
    let g = grow(&plan, "split", vec![st("c1", &["split"])], LIMIT).unwrap();
    assert!(g.added.is_empty() && g.sinks.is_empty(), "{g:?}");
    let g = grow(
        &plan,
        "split",
        vec![st("c1", &["split"]), st("c2", &["split"])],
        LIMIT,
    )
    .unwrap();
    let added: Vec<&str> = g.added.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(added, ["c2"]);
    // What it spawned before runs beside what it spawns now, not after it: only the join
    // waits for the new sink.
    assert_eq!(g.rewired, ["summary"]);
    // Spawned anew depending on the sibling it spawned before: no cycle through `c1`.
    let g = grow(
        &plan,
        "split",
        vec![st("c1", &["split"]), st("c2", &["split", "c1"])],
        LIMIT,
    )
    .unwrap();
    assert_eq!(
        (g.sinks.as_slice(), g.rewired.as_slice()),
        (&["c2".to_owned()][..], &["summary".to_owned()][..])
    );
    assert_eq!(
        grow_err(&plan, "split", vec![st("c1", &[])]),
        PlanError::DuplicateId("c1".into())
    );
}

#[test]
fn growth_is_rejected_naming_the_problem() {
    let plan = [st("split", &[]), st("summary", &["split"])];
    assert_eq!(
        grow_err(&plan, "split", vec![st("summary", &[])]),
        PlanError::DuplicateId("summary".into())
    );
    assert_eq!(
        grow_err(&plan, "split", vec![st("x", &[]), st("x", &[])]),
        PlanError::DuplicateId("x".into())
    );
    assert_eq!(
        grow_err(&plan, "split", vec![st("x", &["nope"])]),
        PlanError::UnknownDependency {
            subtask: "x".into(),
            dependency: "nope".into()
        }
    );
    // Depending on the spawner's dependent would make that dependent wait for itself.
    assert!(matches!(
        grow_err(&plan, "split", vec![st("x", &["summary"])]),
        PlanError::Cycle(_)
    ));
    assert!(matches!(
        grow_err(&plan, "ghost", vec![st("x", &[])]),
        PlanError::InvalidSubtask { .. }
    ));
}

fn plan_of(subtasks: Vec<SubTask>) -> ExecutionPlan {
    ExecutionPlan::from_new(
        PlanId::new(),
        NewPlan::new("p", subtasks),
        chrono::Utc::now(),
    )
}

#[test]
fn the_graph_reads_both_ways() {
    let plan = plan_of(vec![
        st("a", &[]),
        st("b", &["a"]),
        st("c", &["a"]),
        st("d", &["b", "c"]),
    ]);
    assert_eq!(plan.get_dependencies("d"), ["b", "c"]);
    assert_eq!(plan.get_dependents("a"), ["b", "c"]);
    assert_eq!(plan.get_dependents("d"), Vec::<&str>::new());
    assert!(plan.get_dependents("ghost").is_empty() && plan.get_dependencies("ghost").is_empty());
    assert_eq!(plan.roots(), ["a"]);
    assert_eq!(plan.sinks(), ["d"]);
    assert_eq!(plan.dependents_graph()["b"], ["d"]);
}

#[test]
fn plan_metadata_defaults_to_an_empty_object_and_must_be_one() {
    let json = r#"{"title": "p", "subtasks": [{"id": "a", "title": "A", "task_type": "x"}]}"#;
    let new: NewPlan = serde_json::from_str(json).unwrap();
    assert_eq!(new.metadata, serde_json::json!({}));
    let tagged = new.clone().metadata(serde_json::json!({"ticket": "OPS-1"}));
    assert!(tagged.validate(LIMIT).is_ok());
    let plan = ExecutionPlan::from_new(PlanId::new(), tagged, chrono::Utc::now());
    assert_eq!(plan.metadata["ticket"], "OPS-1");
    for (bad, kind) in [
        (serde_json::json!([1]), "an array"),
        (serde_json::json!("x"), "a string"),
        (serde_json::Value::Null, "null"),
    ] {
        let e = new.clone().metadata(bad).validate(LIMIT).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid `metadata`: must be a JSON object, not {kind}")
        );
    }
    let nul = new.metadata(serde_json::json!({"k": "a\u{0}b"}));
    assert!(nul.validate(LIMIT).unwrap_err().to_string().contains("NUL"));
}

proptest! {
    /// Dependents are exactly the inverse of dependencies, whichever accessor reads them;
    /// roots wait for nothing and sinks are waited for by nothing.
    #[test]
    fn dependents_invert_dependencies(nodes in dag()) {
        let plan = plan_of(nodes);
        let inverse = plan.dependents_graph();
        for a in &plan.subtask_ids {
            let dependents = plan.get_dependents(a);
            prop_assert_eq!(&dependents, &inverse[a.as_str()]);
            for b in &plan.subtask_ids {
                let b_waits_for_a = plan.get_dependencies(b).contains(a);
                prop_assert_eq!(dependents.contains(&b.as_str()), b_waits_for_a);
            }
            prop_assert_eq!(plan.roots().contains(&a.as_str()), plan.get_dependencies(a).is_empty());
            prop_assert_eq!(plan.sinks().contains(&a.as_str()), dependents.is_empty());
        }
    }
}

/// A plan file may leave a subtask's title out: its task is then titled by its id; a title
/// given as spaces is still a mistake.
#[test]
fn a_subtask_without_a_title_is_titled_by_its_id() {
    let json = r#"{"title": "p", "subtasks": [
        {"id": "split", "task_type": "x"},
        {"id": "sum", "title": "Add up", "task_type": "x", "dependencies": ["split"]}]}"#;
    let plan: NewPlan = serde_json::from_str(json).unwrap();
    plan.validate(1 << 20).unwrap();
    assert_eq!(plan.subtasks[0].to_new_task(None).title, "split");
    assert_eq!(plan.subtasks[1].to_new_task(None).title, "Add up");
}
