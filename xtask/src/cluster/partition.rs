//! Partition: three worker hosts drain; mid-drain host 1's link is cut at the switch (its
//! packets silently dropped both ways). Its runs' leases run out and the other hosts' reapers
//! take its tasks back; once they have, the link returns, and the late completions host 1
//! was holding reach the database and are rejected as stale. At the end every task must
//! have completed exactly once.

use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

use super::fleet::WorkerOpts;
use super::measure::Measure;
use super::pg::PORT;
use super::report::{Section, num};
use super::{Cluster, Measured, db::LoadDb, machine};

/// One process on each of three hosts; the first is cut.
const PLACEMENT: [usize; 3] = [0, 1, 2];
/// Bound on the cut host's worker coming back once its link does.
const REJOIN_WITHIN: Duration = Duration::from_secs(60);

pub async fn run(c: &Cluster) -> Result<Measured> {
    let opts = WorkerOpts {
        lease_secs: 3,
        heartbeat_ms: Some(1000),
        reap_interval_ms: Some(500),
        ..WorkerOpts::default()
    };
    let (tasks, ms) = (c.sizes.partition_tasks, c.sizes.partition_ms);
    let db = LoadDb::create(c, "partition", PORT).await?;
    let mut m = Measure::start(c, db, &PLACEMENT, &opts).await?;
    let victim_host = &c.net.hosts[PLACEMENT[0]];
    let victim = m.fleet.worker(0)?.name.clone();
    m.enqueue(tasks, ms).await?;
    m.wait_completed(tasks / 5, "a fifth of the drain").await?;

    let cut = m.db.now().await?;
    c.net.set_link(victim_host, false).await?;
    println!("  cut {}'s link", victim_host.name);
    let restored = async {
        // Its runs stay open until their leases run out and another host's reaper closes
        // them.
        let deadline = Instant::now() + Duration::from_secs(opts.lease_secs) + REJOIN_WITHIN;
        while m.db.running_runs_of(&victim).await? > 0 {
            m.fleet.check_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{victim}'s runs were not taken back within {REJOIN_WITHIN:?} of its lease \
                     ({} session(s) idle in a transaction)",
                    m.db.sessions().await?.idle_in_transaction
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let back = m.db.now().await?;
        c.net.set_link(victim_host, true).await?;
        Ok::<f64, anyhow::Error>(back)
    };
    let restored = restored.await;
    // Whatever happened above, the link comes back before anything else can fail.
    c.net.set_link(victim_host, true).await?;
    let taken_back = restored?;
    let link_up = m.db.now().await?;
    println!(
        "  its runs taken back {:.1} s after the cut; link restored",
        taken_back - cut
    );
    m.wait_all("the drain after the partition").await?;
    // The cut worker must be back in touch (its heartbeat newer than the link), so its
    // held outcomes have reached the database before it is stopped.
    let deadline = Instant::now() + REJOIN_WITHIN;
    while m.db.heartbeat_of(&victim).await?.unwrap_or_default() <= link_up {
        m.fleet.check_running()?;
        if Instant::now() >= deadline {
            bail!("{victim} did not heartbeat within {REJOIN_WITHIN:?} of its link's return");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = m.db.window().await?;
    let retaken = m.db.retaken().await?;
    let done = m.finish().await?;
    let stale = done.stopped.stale();
    let t = &done.tally;

    let mut problems = done.problems.clone();
    if t.lease_expired == 0 {
        problems.push(format!(
            "cutting {} stranded no run: nothing was taken back",
            victim_host.name
        ));
    }
    if stale == 0 {
        problems.push(format!(
            "no late completion from {} was rejected as stale",
            victim_host.name
        ));
    }
    let mut section = Section::new(
        "partition",
        &[
            "tasks",
            "cut at s",
            "link down s",
            "runs taken back",
            "back after s",
            "recovered after s",
            "stale rejected",
            "handler starts",
            "ran twice",
            "success runs",
            "lost",
            "doubled",
        ],
    );
    let (again, recovered) = retaken.map_or((f64::NAN, f64::NAN), |(a, d)| (a - cut, d - cut));
    section.row(vec![
        tasks.to_string(),
        num(cut - window.first_start, 1),
        num(link_up - cut, 1),
        t.lease_expired.to_string(),
        num(again, 1),
        num(recovered, 1),
        stale.to_string(),
        t.executions.to_string(),
        t.executed_again.to_string(),
        t.success_runs.to_string(),
        t.lost.to_string(),
        t.doubled.to_string(),
    ]);
    section.note(format!(
        "3 processes × {} slots on 3 hosts, {ms} ms `sleep` tasks, lease {} s, heartbeat \
         every {} ms, reaper every {} ms. Host 1's switch port is set down once a fifth of \
         the tasks completed and up again once none of its runs is open. Back after: the \
         cut to the first new run of a task taken back; recovered after: the cut to the \
         last of those tasks completing. Stale rejected: outcomes host 1's worker reported \
         after its link returned, refused because their runs had been closed (its `--json` \
         report). Handler starts come from the workers' `--exec-log`s; a task run twice \
         had its first run on the cut host. {}",
        opts.concurrency,
        opts.lease_secs,
        opts.heartbeat_ms.unwrap_or_default(),
        opts.reap_interval_ms.unwrap_or_default(),
        machine(c)
    ));
    println!(
        "  {} runs taken back, {stale} stale outcomes rejected, {} success runs for {} tasks",
        t.lease_expired, t.success_runs, t.tasks
    );
    Ok(Measured {
        sections: vec![section],
        problems,
    })
}
