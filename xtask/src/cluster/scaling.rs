//! Scaling: 10 ms `sleep` tasks drained by 1, 2, 4 and 8 worker processes of 8 slots each,
//! spread over up to four hosts; throughput, speed-up over one process, efficiency (the
//! speed-up over the number of processes), and the server's commit rate, which shows when
//! commits rather than slots cap the drain.

use anyhow::Result;

use super::fleet::WorkerOpts;
use super::measure::Measure;
use super::pg::PORT;
use super::report::{Section, num};
use super::{Cluster, Measured, db::LoadDb, machine};

const PROCESSES: [usize; 4] = [1, 2, 4, 8];
const TASK_MS: u64 = 10;

pub async fn run(c: &Cluster) -> Result<Measured> {
    let opts = WorkerOpts::default();
    let mut section = Section::new(
        "scaling",
        &[
            "processes",
            "hosts",
            "tasks",
            "drain s",
            "tasks/s",
            "slot bound",
            "speed-up",
            "efficiency",
            "commits/s",
            "tasks/commit",
            "server CPU",
            "workers CPU",
            "sessions",
        ],
    );
    let mut problems = Vec::new();
    let mut one_process = None;
    for processes in PROCESSES {
        let hosts = processes.min(c.net.hosts.len());
        // Round-robin: 8 processes are two per host.
        let placement: Vec<usize> = (0..processes).map(|i| i % hosts).collect();
        let tasks = c.sizes.scaling_per_process * processes as u64;
        let db = LoadDb::create(c, &format!("scaling_{processes}"), PORT).await?;
        let mut m = Measure::start(c, db, &placement, &opts).await?;
        let window = m.drain(tasks, TASK_MS).await?;
        let cpu = m.cpu(c)?;
        let sessions = m.db.sessions().await?.workers;
        let done = m.finish().await?;
        let secs = window.secs();
        let rate = tasks as f64 / secs.max(f64::EPSILON);
        let base = *one_process.get_or_insert(rate);
        let speedup = rate / base;
        let slots = processes as f64 * f64::from(opts.concurrency);
        // Each slot finishes at most one 10 ms task per 10 ms.
        let bound = slots * 1000.0 / TASK_MS as f64;
        let per_sec = |v: f64| v / secs.max(f64::EPSILON);
        section.row(vec![
            processes.to_string(),
            hosts.to_string(),
            tasks.to_string(),
            num(secs, 2),
            num(rate, 0),
            num(bound, 0),
            format!("{speedup:.2}×"),
            format!("{:.0}%", 100.0 * speedup / processes as f64),
            num(per_sec(done.commits as f64), 0),
            num(tasks as f64 / done.commits.max(1) as f64, 2),
            num(per_sec(cpu.db), 2),
            num(per_sec(cpu.workers), 2),
            sessions.to_string(),
        ]);
        println!(
            "  {processes} process(es) on {hosts} host(s): {tasks} tasks in {secs:.2} s, \
             {rate:.0}/s"
        );
        problems.extend(
            (done.problems.iter())
                .chain(&done.tally.second_runs(done.stopped.stale()))
                .map(|p| format!("{processes} process(es): {p}")),
        );
    }
    section.note(format!(
        "{TASK_MS} ms `sleep` tasks, {} slots per process, lease {} s; processes placed \
         round-robin on the worker hosts. Drain time: first run start to last success, in \
         the server's clock. Slot bound: slots × 1000 / {TASK_MS}. Commits: \
         `pg_stat_database.xact_commit` while the workers ran (the harness's own left out) \
         over the drain time; tasks/commit is how many outcomes an average commit carried \
         (heartbeats and empty claims count as commits too). CPU: the cores the database \
         host's processes (the server) and the worker hosts' processes used, CPU seconds \
         over the drain time. Sessions: the workers' connections to the server at the end \
         of the drain (pools and listeners). {}",
        opts.concurrency,
        opts.lease_secs,
        machine(c)
    ));
    Ok(Measured {
        sections: vec![section],
        problems,
    })
}
