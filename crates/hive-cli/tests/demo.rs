//! `hive demo` as a person at a terminal sees it (run under a pseudo-terminal by `script`):
//! a progress bar with a labelled elapsed time and ETA, at the rate the summary then
//! prints; and Ctrl-C reported as an interruption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `hive demo ARGS` in a fresh directory, with no database configured.
fn demo(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hive"));
    c.env_remove("HIVE_DATABASE_URL")
        .current_dir(dir)
        .arg("demo");
    c
}

/// Every `N.N tasks/s` in a text, in order.
fn rates(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[1].starts_with("tasks/s"))
        .map(|w| w[0].trim_start_matches('(').to_owned())
        .filter(|r| r.parse::<f64>().is_ok())
        .collect()
}

#[test]
fn the_bar_shows_elapsed_and_eta_at_the_summary_rate() {
    let dir = tempfile::tempdir().unwrap();
    let hive = env!("CARGO_BIN_EXE_hive");
    // `script` gives the demo a terminal, so the bar is drawn; everything it wrote to that
    // terminal comes back on script's stdout.
    let out = Command::new("script")
        .args([
            "-qefc",
            &format!("{hive} demo --subtasks 60 --workers 3"),
            "/dev/null",
        ])
        .env_remove("HIVE_DATABASE_URL")
        .current_dir(dir.path())
        .output()
        .expect("util-linux `script` runs commands under a pseudo-terminal");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("elapsed ") && screen.contains("ETA "),
        "{screen}"
    );
    // The summary follows the bar's last frame (on a terminal, the frame's padding wraps
    // the cursor to the next line).
    let at = screen.find("60 tasks in").expect("the summary");
    let (bar, summary) = screen.split_at(at);
    let summary = summary.lines().next().unwrap_or_default();
    let bar_rates = rates(bar);
    let summary_rates = rates(summary);
    assert_eq!(summary_rates.len(), 1, "{summary}");
    assert_eq!(
        bar_rates.last(),
        summary_rates.first(),
        "the bar's last rate is the summary's: {screen}"
    );
}

#[test]
fn ctrl_c_interrupts_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = demo(dir.path())
        .args(["--subtasks", "5000", "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("submitted plan"), "{first}");
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.starts_with("interrupted: "), "{rest}");
    assert!(rest.contains(" of 5000 tasks in "), "{rest}");
    assert!(rest.contains(": in_progress"), "{rest}");
}

/// Ctrl-C while a million subtasks are being submitted ends the demo there, not after the
/// submission.
#[test]
fn ctrl_c_while_submitting_ends_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let child = demo(dir.path())
        .args(["--subtasks", "1000000", "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(
        stdout.contains("interrupted before the demo's plan was submitted"),
        "{stdout}"
    );
}

#[test]
fn the_demo_reports_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = demo(dir.path())
        .args(["--subtasks", "8", "--workers", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(
        (report["completed"].as_u64(), report["total"].as_u64()),
        (Some(8), Some(8))
    );
    assert_eq!(report["interrupted"], false);
}

/// Sizes past what a demo is for are refused by name, before anything runs.
#[test]
fn sizes_out_of_range_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--subtasks", "0"),
        ("--subtasks", "4000000000"),
        ("--workers", "0"),
        ("--workers", "1000000"),
    ] {
        let out = demo(dir.path()).args([flag, value]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(value),
            "{flag} {value}: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
