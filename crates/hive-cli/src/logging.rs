//! Logging to stderr that can neither panic nor stall the process.
//!
//! A worker must keep working when its stderr goes away (a closed pipe, `| head`) or stops
//! draining (a full pipe nobody reads). tracing-subscriber reports a failed write with
//! `eprintln!`, which panics on a closed stderr; the panic would then happen on whatever
//! thread logged, including a database connection's. So events are handed to a background
//! thread through a bounded, lossy queue (a full queue drops lines instead of blocking the
//! caller), and that thread writes through [`QuietStderr`], which swallows write errors.

use std::io::{self, IsTerminal, Write};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// Stderr whose write errors are dropped: a log line that cannot be written is lost, and
/// nothing else happens.
#[derive(Debug, Clone, Copy)]
pub struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Installs the global subscriber (`HIVE_LOG`, default `warn`); keep the guard until exit
/// so queued lines are flushed. `default` is the filter used when `HIVE_LOG` is unset.
pub fn init(default: &str) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("hive-log")
        .finish(QuietStderr);
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("HIVE_LOG").unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour codes only for a person at a terminal, not in files and pipes.
        .with_ansi(io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
    guard
}

/// Writes a line to stderr, ignoring a closed or broken stderr.
pub fn eprint_line(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{line}");
}
