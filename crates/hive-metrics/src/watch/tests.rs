//! The classification of closed runs, and how they are counted.
#![allow(clippy::unwrap_used)]

use hive_client::models::{Run, RunId, RunStatus, TaskId, WorkerId};

use super::{Closed, classify};

fn run(status: RunStatus, error: Option<&str>) -> Run {
    let now = chrono::Utc::now();
    Run {
        id: RunId::new(),
        task_id: TaskId::new(),
        worker_id: WorkerId("w".into()),
        run_number: 1,
        status,
        phase: "start".into(),
        started_at: now,
        completed_at: Some(now),
        lease_expires_at: None,
        result_data: None,
        error_message: error.map(str::to_owned),
        output_log: None,
        transcript: None,
        created_at: now,
        updated_at: now,
        progress: None,
    }
}

#[test]
fn closed_runs_are_classified_by_status_and_error() {
    assert_eq!(classify(&run(RunStatus::Success, None)), Closed::Completed);
    assert_eq!(
        classify(&run(RunStatus::Failure, Some("boom"))),
        Closed::Failed
    );
    assert_eq!(
        classify(&run(RunStatus::Failure, Some("timed out connecting to S3"))),
        Closed::Failed,
        "a handler's own error, whatever its words"
    );
    assert_eq!(
        classify(&run(
            RunStatus::Timeout,
            Some("timed out after 1s; the handler stopped")
        )),
        Closed::TimedOut
    );
    assert_eq!(
        classify(&run(RunStatus::Timeout, Some(Run::LEASE_EXPIRED))),
        Closed::Stale
    );
    assert_eq!(
        classify(&run(RunStatus::Timeout, Some(Run::WORKER_RESTARTED))),
        Closed::Stale,
        "ended by its worker's next process, as the reaper would have"
    );
    assert_eq!(classify(&run(RunStatus::Timeout, None)), Closed::TimedOut);
    assert_eq!(classify(&run(RunStatus::Cancelled, None)), Closed::Ignored);
}

/// The counters and the histogram a scrape shows, summed: (closed runs, duration samples).
fn closed_and_timed(text: &str) -> (f64, f64) {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sum = |pred: &dyn Fn(&str) -> bool| {
        scrape
            .samples
            .iter()
            .filter(|s| pred(&s.metric))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum::<f64>()
    };
    (
        sum(&|m| m == "hive_runs_completed_total" || m == "hive_runs_failed_total"),
        sum(&|m| m == "hive_run_duration_seconds_count"),
    )
}

#[test]
fn every_scrape_shows_one_duration_per_counted_run() {
    // The registry gathers in an order fixed per instance and differing between them, so
    // several instances make it near certain one reads the histogram before the counters.
    for _ in 0..8 {
        let metrics = crate::Metrics::new().unwrap();
        let counting = metrics.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..3_000 {
                let kind = if i % 3 == 0 {
                    Closed::Failed
                } else {
                    Closed::Completed
                };
                counting.count(kind, Some(("alpha".to_owned(), 0.001)));
            }
        });
        let mut scrapes = 0;
        while !writer.is_finished() && scrapes < 10_000 {
            let (closed, timed) = closed_and_timed(&metrics.render().unwrap());
            assert_eq!(closed, timed, "scrape {scrapes}");
            scrapes += 1;
        }
        writer.join().unwrap();
        let (closed, timed) = closed_and_timed(&metrics.render().unwrap());
        assert_eq!((closed, timed), (3_000.0, 3_000.0));
    }
}
