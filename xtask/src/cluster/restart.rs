//! Database restart: two worker hosts drain; a third of the way through, the cluster's
//! server restarts (`pg_ctl restart -m fast`: sessions cut, open transactions rolled back).
//! The workers must reconnect, finish the drain with nothing lost or doubled, and listen
//! again: they poll only every 10 s here, so tasks created one at a time afterwards are
//! picked up quickly only if their LISTEN came back.

use std::time::Duration;

use anyhow::{Result, bail};

use super::fleet::WorkerOpts;
use super::measure::Measure;
use super::pg::PORT;
use super::report::{Section, num};
use super::{Cluster, Measured, db::LoadDb, machine};
use crate::bench::report::quantile;

const PLACEMENT: [usize; 2] = [0, 1];
const TASK_MS: u64 = 10;
/// The workers' poll: a pickup faster than a tenth of it was woken by a notification.
const POLL_MS: u64 = 10_000;
/// Pickups sampled after the restart.
const PICKUPS: u64 = 10;

pub async fn run(c: &Cluster) -> Result<Measured> {
    let opts = WorkerOpts {
        poll_ms: Some(POLL_MS),
        ..WorkerOpts::default()
    };
    let tasks = c.sizes.restart_tasks;
    let db = LoadDb::create(c, "restart", PORT).await?;
    let mut m = Measure::start(c, db, &PLACEMENT, &opts).await?;
    m.enqueue(tasks, TASK_MS).await?;
    m.wait_completed(tasks / 3, "a third of the drain").await?;
    let before = m.db.now().await?;
    let down = c.pg.restart().await?;
    println!("  restarted the server in {:.2} s", down.as_secs_f64());
    // The harness's own connections died with the server too.
    m.db.reconnect(Duration::from_secs(30)).await?;
    let after = m.db.now().await?;
    m.wait_all("the drain to resume after the restart").await?;
    let completions = m.db.completions().await?;
    // Completions go on for a moment after `before` (the shutdown takes effect later), so
    // the outage is the longest pause from the last completion before it on.
    let from = completions.iter().rposition(|&t| t <= before);
    let gap = from.and_then(|i| {
        completions[i..]
            .windows(2)
            .map(|w| (w[0], w[1]))
            .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
    });
    let Some((last_before, first_after)) = gap else {
        bail!(
            "the drain did not straddle the restart ({} completions): make it longer",
            completions.len()
        );
    };
    let window = m.db.window().await?;
    let pickups = m.pickups(PICKUPS, TASK_MS).await?;
    let done = m.finish().await?;
    let t = &done.tally;

    let mut problems = done.problems.clone();
    // No pickup measured would read as a quick one.
    if pickups.len() as u64 != PICKUPS {
        problems.push(format!(
            "{} pickup(s) measured of the {PICKUPS} tasks created after the restart",
            pickups.len()
        ));
    }
    let p50 = quantile(&pickups, 0.5);
    if p50 > POLL_MS as f64 / 10.0 {
        problems.push(format!(
            "pickups after the restart took {p50:.0} ms (p50) with a {POLL_MS} ms poll: the \
             workers did not listen again"
        ));
    }
    let mut section = Section::new(
        "restart",
        &[
            "tasks",
            "restart at s",
            "pg_ctl restart s",
            "resume gap s",
            "drain s",
            "pickup p50 after ms",
            "success runs",
            "handler starts",
            "lost",
            "doubled",
        ],
    );
    section.row(vec![
        t.tasks.to_string(),
        num(before - window.first_start, 1),
        num(down.as_secs_f64(), 2),
        num(first_after - last_before, 2),
        num(window.secs(), 2),
        num(p50, 1),
        t.success_runs.to_string(),
        t.executions.to_string(),
        t.lost.to_string(),
        t.doubled.to_string(),
    ]);
    section.note(format!(
        "2 processes × {} slots on 2 hosts, {TASK_MS} ms `sleep` tasks, workers polling every \
         {} s. The server restarts once a third of the tasks completed. Resume gap: the longest \
         pause between two completions from the restart on (server clock); the server \
         answered again {:.2} s after the restart began. Pickup after: {PICKUPS} tasks created one at \
         a time once the drain ended; faster than the poll only through LISTEN/NOTIFY. {}",
        opts.concurrency,
        POLL_MS / 1000,
        after - before,
        machine(c)
    ));
    println!(
        "  resumed after a {:.2} s gap; pickup p50 after the restart {p50:.1} ms",
        first_after - last_before
    );
    Ok(Measured {
        sections: vec![section],
        problems,
    })
}
