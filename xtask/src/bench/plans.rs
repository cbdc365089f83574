//! The plan shapes the benchmark drains, and their runs: every plan is submitted (and
//! materialized) untimed, then drained by the same workers as the flat drain, so the
//! ratio of the two rates is the cost of the DAG's bookkeeping alone.

use std::time::Instant;

use anyhow::{Result, bail};
use hive_client::{Client, NewPlan, SubTask};
use indicatif::ProgressBar;

use super::hive::{self, Drained, Until};

fn plan_of(title: String, subtasks: Vec<SubTask>) -> NewPlan {
    NewPlan::new(title, subtasks)
}

/// One plan of `chains` independent chains of `length` subtasks each.
pub fn chains(chains: u64, length: u64) -> NewPlan {
    let mut subtasks = Vec::with_capacity((chains * length) as usize);
    for c in 0..chains {
        for i in 0..length {
            let mut st = SubTask::new(format!("c{c}-{i}"), format!("chain {c} step {i}"), "bench");
            if i > 0 {
                st = st.depends_on([format!("c{c}-{}", i - 1)]);
            }
            subtasks.push(st);
        }
    }
    plan_of(format!("{chains} chains of {length}"), subtasks)
}

/// One root, `width` subtasks that each depend on it, and one join that depends on them all.
pub fn wide(width: u64) -> NewPlan {
    let mut subtasks = Vec::with_capacity(width as usize + 2);
    subtasks.push(SubTask::new("root", "root", "bench"));
    let middle: Vec<String> = (0..width).map(|i| format!("m{i}")).collect();
    for id in &middle {
        subtasks.push(SubTask::new(id, id, "bench").depends_on(["root"]));
    }
    subtasks.push(SubTask::new("join", "join", "bench").depends_on(middle));
    plan_of(format!("1 → {width} → 1"), subtasks)
}

/// `n` subtasks in layers of `width`; each after the first layer depends on the subtask
/// below it and its right neighbour's (the shape of `hive demo`, at any size).
pub fn layered(n: u64, width: u64) -> NewPlan {
    let subtasks = (0..n)
        .map(|i| {
            let (layer, pos) = (i / width, i % width);
            let mut deps = Vec::new();
            if layer > 0 {
                let below = (layer - 1) * width + pos;
                deps.push(format!("s{below}"));
                if pos + 1 < width {
                    deps.push(format!("s{}", below + 1));
                }
            }
            SubTask::new(format!("s{i}"), format!("layer {layer}"), "bench").depends_on(deps)
        })
        .collect();
    plan_of(format!("{n} subtasks in layers of {width}"), subtasks)
}

/// Submits every plan untimed, then drains them all; the time is the drain's alone.
pub async fn drain(
    client: &Client,
    plans: Vec<NewPlan>,
    workers: u32,
    concurrency: u32,
    pb: &ProgressBar,
) -> Result<Drained> {
    let n: u64 = plans.iter().map(|p| p.subtasks.len() as u64).sum();
    for p in plans {
        client.submit_plan(p).await?;
    }
    pb.set_length(n);
    let d = hive::drain(client, workers, concurrency, Until::Idle, pb).await?;
    if d.handled != n {
        bail!("plan drain: handled {} subtasks, expected {n}", d.handled);
    }
    Ok(d)
}

/// Seconds to submit (validate, store and materialize) one plan.
pub async fn submit(client: &Client, plan: NewPlan) -> Result<f64> {
    let start = Instant::now();
    client.submit_plan(plan).await?;
    Ok(start.elapsed().as_secs_f64())
}
