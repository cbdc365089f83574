//! Latency between the worker hosts and the database: the same drain at 0, 2 and 20 ms of
//! round trip, then pickup latency (task created → its run started) with idle workers.
//!
//! The delay is netem on both ends of each worker host's link (half the round trip each
//! way) where the kernel has netem; otherwise a relay on the database host that holds
//! every chunk of each connection for half the round trip in each direction (the workers
//! connect through it at all three round trips, so the rows compare like with like).

use anyhow::Result;

use super::db::Window;
use super::fleet::WorkerOpts;
use super::measure::{Finished, Measure, PICKUP_SPACING};
use super::pg::PORT;
use super::relay::{RELAY_PORT, Relay};
use super::report::{Section, num};
use super::{Cluster, Measured, db::LoadDb, machine};
use crate::bench::report::quantile;

const RTTS_MS: [u32; 3] = [0, 2, 20];
const TASK_MS: u64 = 10;
/// Two processes on two hosts.
const PLACEMENT: [usize; 2] = [0, 1];

/// What one round trip's two measurements found.
struct At {
    tasks: u64,
    window: Window,
    drained: Finished,
    pickups: Vec<f64>,
    picked: Finished,
}

/// The drain and the pickups at one round trip, with workers connecting through `port`;
/// each on a database of its own, so the drain's commits are counted alone.
async fn at(c: &Cluster, rtt: u32, port: u16, opts: &WorkerOpts) -> Result<At> {
    let db = LoadDb::create(c, &format!("latency_{rtt}"), port).await?;
    let mut m = Measure::start(c, db, &PLACEMENT, opts).await?;
    let tasks = c.sizes.latency_tasks;
    let window = m.drain(tasks, TASK_MS).await?;
    let drained = m.finish().await?;
    let db = LoadDb::create(c, &format!("latency_{rtt}_pickup"), port).await?;
    let mut m = Measure::start(c, db, &PLACEMENT, opts).await?;
    let pickups = m.pickups(c.sizes.latency_pickups, TASK_MS).await?;
    let picked = m.finish().await?;
    Ok(At {
        tasks,
        window,
        drained,
        pickups,
        picked,
    })
}

/// Delays both directions of the used worker hosts' links by `one_way_ms` (0 removes it).
async fn delay_with_netem(c: &Cluster, one_way_ms: f64) -> Result<()> {
    for &h in &PLACEMENT {
        c.net.set_netem_delay(&c.net.hosts[h], one_way_ms).await?;
    }
    Ok(())
}

pub async fn run(c: &Cluster) -> Result<Measured> {
    let opts = WorkerOpts::default();
    let netem = c.net.has_netem().await;
    let via = if netem { "netem" } else { "relay" };
    let mut section = Section::new(
        "latency",
        &[
            "RTT ms",
            "delay by",
            "tasks",
            "drain s",
            "tasks/s",
            "vs 0 ms",
            "commits/s",
            "tasks/commit",
            "pickups",
            "pickup p50 ms",
            "pickup p99 ms",
        ],
    );
    let mut problems = Vec::new();
    let mut zero = None;
    for rtt in RTTS_MS {
        let one_way = f64::from(rtt) / 2.0;
        let measured = if netem {
            let delayed = delay_with_netem(c, one_way).await;
            let measured = match delayed {
                Ok(()) => at(c, rtt, PORT, &opts).await,
                Err(e) => Err(e),
            };
            // Undone whatever happened: the next scenarios share these links.
            delay_with_netem(c, 0.0).await?;
            measured
        } else {
            let relay = Relay::start(c, one_way).await?;
            let measured = at(c, rtt, RELAY_PORT, &opts).await;
            relay.stop().await?;
            measured
        };
        let At {
            tasks,
            window,
            drained,
            pickups,
            picked,
        } = measured?;
        let secs = window.secs().max(f64::EPSILON);
        let rate = tasks as f64 / secs;
        let base = *zero.get_or_insert(rate);
        section.row(vec![
            rtt.to_string(),
            via.to_owned(),
            tasks.to_string(),
            num(window.secs(), 2),
            num(rate, 0),
            format!("{:.2}×", rate / base),
            num(drained.commits as f64 / secs, 0),
            num(tasks as f64 / drained.commits.max(1) as f64, 2),
            pickups.len().to_string(),
            num(quantile(&pickups, 0.5), 1),
            num(quantile(&pickups, 0.99), 1),
        ]);
        println!(
            "  RTT {rtt} ms ({via}): {rate:.0} tasks/s, pickup p50 {:.1} ms",
            quantile(&pickups, 0.5)
        );
        let second_runs = |f: &Finished| f.tally.second_runs(f.stopped.stale());
        problems.extend(
            (drained.problems.iter())
                .chain(&picked.problems)
                .chain(&second_runs(&drained))
                .chain(&second_runs(&picked))
                .map(|p| format!("RTT {rtt} ms: {p}")),
        );
    }
    let how = if netem {
        "netem on both ends of each worker host's link, half the round trip each way"
    } else {
        "this kernel has no netem (`CONFIG_NET_SCH_NETEM`), so a relay on the database host \
         holds each chunk of every worker connection for half the round trip in each \
         direction; the workers connect through it in every row, 0 ms included"
    };
    section.note(format!(
        "2 processes × {} slots on 2 hosts, {TASK_MS} ms `sleep` tasks. Delay: {how}. \
         Commits as in the scaling table, for the drain alone. Pickup: from the task's \
         creation to its run's start (server clock), tasks created one at a time {} ms apart \
         on idle workers (a database and workers of their own). {}",
        opts.concurrency,
        PICKUP_SPACING.as_millis(),
        machine(c)
    ));
    Ok(Measured {
        sections: vec![section],
        problems,
    })
}
