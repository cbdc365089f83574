//! The output logs `hive task runs` prints under its table: what each run's command wrote.

use hive_client::Run;

use crate::output::{self, outln};

/// Prints each run's output log under a line naming the run, escaped for the terminal line
/// by line; runs without output are left out.
pub fn print(runs: &[Run]) {
    for r in runs {
        let Some(log) = r.output_log.as_deref().filter(|l| !l.is_empty()) else {
            continue;
        };
        outln!("\n--- run {} ({}) output ---", r.run_number, r.status);
        for line in log.lines() {
            outln!("{}", output::escape_log_line(line));
        }
    }
}
