//! `hive plan wait` and `hive task wait`: block until the work is finished, and say how it
//! ended in the exit status, for scripts that submit work and go on with its result.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::output;

/// The exit status of a wait that ran out of time, as `timeout(1)` has it.
pub const TIMED_OUT: u8 = 124;

/// The exit status of a wait that could not wait (an unknown id, a database that does not
/// answer), as `timeout(1)` keeps 125 for its own failures: a script that reruns failed
/// work on 1 must not rerun it on a typo.
pub const COULD_NOT_WAIT: u8 = 125;

/// Runs a wait, its own failure said as every command's (one line) but exiting
/// [`COULD_NOT_WAIT`].
pub async fn run(
    as_json: bool,
    wait: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    match wait.await {
        Ok(code) => Ok(code),
        Err(e) => {
            output::error(as_json, &format!("{e:#}").replace('\n', " "));
            Ok(ExitCode::from(COULD_NOT_WAIT))
        }
    }
}

#[derive(Args)]
pub struct WaitArgs {
    /// The id.
    pub id: String,
    /// Give up after this long (seconds, or an age: 90, 15m, 1h30m); without it, wait as
    /// long as it takes.
    #[arg(long, value_name = "TIME", value_parser = crate::args::parse_duration)]
    pub timeout: Option<Duration>,
}

/// How the waited-for work stands: its status when finished, else that it is still in it
/// after the time given.
pub fn how(status: impl std::fmt::Display, finished: bool, timeout: Option<Duration>) -> String {
    if finished {
        status.to_string()
    } else {
        format!("still {status} after {:?}", timeout.unwrap_or_default())
    }
}

/// How a wait ended, said on stdout (`value` with `--json`) and in the exit status: 0 when
/// the work completed, 1 when it failed or was cancelled, [`TIMED_OUT`] when it is not
/// finished yet.
pub fn ended(
    as_json: bool,
    value: &serde_json::Value,
    finished: bool,
    completed: bool,
    text: std::fmt::Arguments<'_>,
) -> anyhow::Result<ExitCode> {
    let code: u8 = match (finished, completed) {
        (true, true) => 0,
        (true, false) => 1,
        (false, _) => TIMED_OUT,
    };
    // The status is the answer: a reader gone before the line (`| head -0`, a closed
    // pipe under `set -o pipefail`) must not turn a failed plan into a success.
    output::exit_on_closed_stdout(code);
    output::report(as_json, value, text)?;
    Ok(ExitCode::from(code))
}
