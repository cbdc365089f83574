//! `cargo xtask soak`: the reliability tests at full size, one backend at a time.
//!
//! The same tests run in every `cargo test` at reduced sizes; `HIVE_SOAK=1` makes
//! `hive_store::testing::size` pick the full ones. Per-backend tests live in modules named
//! after their backend, so the test filter `sqlite::` selects the SQLite ones.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

/// The Postgres server used when neither `--postgres-url` nor `HIVE_TEST_POSTGRES_URL` names one.
const DEFAULT_POSTGRES_URL: &str = "postgres://root@127.0.0.1:5432/test";

#[derive(Args)]
pub struct SoakArgs {
    /// Which backend's tests to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    backend: Which,
    /// The Postgres server for the Postgres pass (default: HIVE_TEST_POSTGRES_URL, else the
    /// local server).
    #[arg(long, env = "HIVE_TEST_POSTGRES_URL")]
    postgres_url: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Memory,
    Sqlite,
    Postgres,
    All,
}

impl Which {
    fn backends(self) -> Vec<&'static str> {
        match self {
            Which::Memory => vec!["memory"],
            Which::Sqlite => vec!["sqlite"],
            Which::Postgres => vec!["postgres"],
            Which::All => vec!["memory", "sqlite", "postgres"],
        }
    }
}

struct Pass {
    backend: &'static str,
    ok: bool,
    secs: f64,
    tests: usize,
    figures: Vec<String>,
}

pub fn run(args: SoakArgs) -> Result<()> {
    let postgres_url = args
        .postgres_url
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned());
    let backends = args.backend.backends();
    if backends.contains(&"postgres") {
        check_postgres(&postgres_url)?;
    }
    println!("soak: building the tests (release)");
    let status = Command::new(cargo())
        .args(["test", "--release", "--workspace", "--no-run", "--quiet"])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("the tests did not build");
    }
    let mut passes = Vec::new();
    for backend in backends {
        passes.push(run_pass(backend, &postgres_url)?);
    }
    println!("\nsoak summary");
    for p in &passes {
        println!(
            "  {:<8} {} {:>4} tests in {:>7.1} s",
            p.backend,
            if p.ok { "passed" } else { "FAILED" },
            p.tests,
            p.secs
        );
        for f in &p.figures {
            println!("           {f}");
        }
    }
    if passes.iter().any(|p| !p.ok) {
        bail!("soak failed");
    }
    if passes.iter().any(|p| p.tests == 0) {
        bail!("a soak pass ran no test: the test modules must be named after their backend");
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Fails before building anything when the Postgres pass could only fail.
fn check_postgres(url: &str) -> Result<()> {
    let shown = hive_store::DatabaseUrl::new(url).redacted();
    let runtime = tokio::runtime::Runtime::new()?;
    // A bare connection: checking the server must not create anything in it.
    runtime
        .block_on(async {
            use sqlx::Connection;
            sqlx::postgres::PgConnection::connect(url)
                .await?
                .close()
                .await
        })
        .with_context(|| format!("the Postgres soak needs a server; {shown} is unreachable"))?;
    Ok(())
}

/// Runs one backend's tests one at a time (each full-size test brings its own concurrency),
/// echoing their output and keeping the figures they report.
fn run_pass(backend: &'static str, postgres_url: &str) -> Result<Pass> {
    println!("\nsoak: {backend}");
    let started = Instant::now();
    let mut cmd = Command::new(cargo());
    cmd.args(["test", "--release", "--workspace", "--quiet", "--"])
        .arg(format!("{backend}::"))
        .args(["--test-threads=1", "--nocapture"])
        .env("HIVE_SOAK", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if backend == "postgres" {
        cmd.env("HIVE_TEST_POSTGRES_URL", postgres_url);
    } else {
        cmd.env_remove("HIVE_TEST_POSTGRES_URL");
    }
    let mut child = cmd.spawn().context("running cargo test")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let echo_err = std::thread::spawn(move || scan(BufReader::new(stderr), true, backend));
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (mut figures, tests) = scan(BufReader::new(stdout), false, backend);
    let (err_figures, _) = echo_err.join().unwrap_or_default();
    figures.extend(err_figures);
    let status = child.wait()?;
    Ok(Pass {
        backend,
        ok: status.success(),
        secs: started.elapsed().as_secs_f64(),
        tests,
        figures,
    })
}

/// Echoes a test run's output, returning its figure lines and how many tests passed.
fn scan(reader: impl BufRead, to_stderr: bool, backend: &str) -> (Vec<String>, usize) {
    let mut figures = Vec::new();
    let mut passed = 0;
    for line in reader.lines().map_while(|l| l.ok()) {
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        if is_figure(&line, backend) {
            figures.push(line.clone());
        }
        if let Some(n) = passed_count(&line) {
            passed += n;
        }
    }
    let _ = std::io::stdout().flush();
    (figures, passed)
}

/// A measurement a test reported: `sqlite: 8 workers … in 26.39s` or
/// `RECOVERY sqlite: SIGKILL to completed in 3.03s …` (a capitalized tag, then the backend).
fn is_figure(line: &str, backend: &str) -> bool {
    let rest = match line.split_once(' ') {
        Some((tag, rest)) if !tag.is_empty() && tag.chars().all(|c| c.is_ascii_uppercase()) => rest,
        _ => line,
    };
    rest.strip_prefix(backend)
        .is_some_and(|r| r.starts_with(": ") || r.starts_with(' '))
}

/// `test result: ok. 3 passed; 0 failed; …` → 3.
fn passed_count(line: &str) -> Option<usize> {
    let rest = line.strip_prefix("test result: ")?;
    let passed = rest.split("; ").find_map(|p| {
        p.rsplit_once(' ')
            .filter(|(_, w)| *w == "passed")
            .map(|(n, _)| n)
    })?;
    passed.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{is_figure, passed_count};

    #[test]
    fn recognises_figures() {
        assert!(is_figure(
            "sqlite: 8 workers × 8 drained 160000 tasks in 26.39s",
            "sqlite"
        ));
        assert!(is_figure(
            "RECOVERY sqlite: SIGKILL to completed in 3.03s",
            "sqlite"
        ));
        assert!(is_figure("DRAIN postgres: 20000 shell tasks", "postgres"));
        assert!(!is_figure("test sqlite::x ... ok", "sqlite"));
        assert!(!is_figure("sqlite::random_plans: seed 5", "sqlite"));
        assert!(!is_figure("memory: 3 tasks", "sqlite"));
    }

    #[test]
    fn reads_the_passed_count() {
        assert_eq!(
            passed_count("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured"),
            Some(3)
        );
        assert_eq!(
            passed_count("test result: FAILED. 0 passed; 2 failed; 0 ignored"),
            Some(0)
        );
        assert_eq!(passed_count("running 3 tests"), None);
    }
}
