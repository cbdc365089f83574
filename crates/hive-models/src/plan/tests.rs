//! Tests of plan validation: every malformed DAG is rejected naming the offending ids.

use proptest::prelude::*;

use super::*;
use crate::DEFAULT_MAX_PAYLOAD_BYTES as LIMIT;

fn st(id: &str, deps: &[&str]) -> SubTask {
    SubTask::new(id, format!("do {id}"), "shell").depends_on(deps.iter().copied())
}

fn plan_err(subtasks: &[SubTask]) -> PlanError {
    match validate_subtasks(subtasks, LIMIT) {
        Err(Error::InvalidPlan(e)) => e,
        other => panic!("expected a plan error, got {other:?}"),
    }
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
    let new = NewPlan {
        title: "p".into(),
        description: String::new(),
        parent_task_id: None,
        subtasks: vec![st("a", &[]), st("b", &["a"])],
    };
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
