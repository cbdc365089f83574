//! `HIVE_PROGRESS`: a file a running `shell` command reports its progress in, one report a
//! line: a fraction from 0 to 1, then an optional message (`echo "0.42 copying files" >
//! "$HIVE_PROGRESS"`, or `>>`). While the command runs the worker reads the file's last line
//! whenever it changes and stores it on the run, as a handler's `ctx.progress` does (at most
//! one write a second); `hive task get`, `task runs`, `plan status` and the dashboard show it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hive_client::TaskContext;

/// How often the file is looked at while the command runs.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Only the end of the file is read: a report's message is at most 1000 bytes.
const TAIL_BYTES: u64 = 4096;

/// What [`ProgressFile::watch`] returns: nothing, ever.
pub enum Never {}

/// The report in `text`: its last line that is not blank, as a fraction and a message
/// (empty for none); `None` when there is no such line (a file just truncated to be
/// written again).
pub fn parse(text: &str) -> Result<Option<(f64, String)>, String> {
    let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let (fraction, message) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let parsed = fraction
        .parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| {
            format!(
                "`{}` is not a fraction from 0 to 1; write a line such as `0.42 copying files`",
                fraction.escape_debug()
            )
        })?;
    Ok(Some((parsed, message.trim().to_owned())))
}

/// The progress file of one run, and what its reports came to.
pub struct ProgressFile {
    path: PathBuf,
    /// The file's length and time of change when last read.
    seen: Option<(u64, SystemTime)>,
    /// The first report refused (not a fraction, a message too long), for the run's log;
    /// later ones are still read.
    refused: Option<String>,
}

impl ProgressFile {
    pub fn new(path: PathBuf) -> ProgressFile {
        ProgressFile {
            path,
            seen: None,
            refused: None,
        }
    }

    /// Stores the file's report on `ctx`'s run whenever the file changes, for as long as it
    /// is polled.
    pub async fn watch(&mut self, ctx: &TaskContext) -> Never {
        let mut every = tokio::time::interval(LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.look(ctx, false);
        }
    }

    /// Reads the file's report (unless it is unchanged and `always` is false) and stores
    /// it on the run; the last look, after the command ended, is `always`.
    pub fn look(&mut self, ctx: &TaskContext, always: bool) {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return;
        };
        let stamp = (
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        if self.seen == Some(stamp) && !always {
            return;
        }
        self.seen = Some(stamp);
        let report =
            tail(&self.path)
                .and_then(|text| parse(&text))
                .and_then(|report| match report {
                    Some((fraction, message)) => {
                        ctx.progress(fraction, message).map_err(|e| e.to_string())
                    }
                    None => Ok(()),
                });
        if let (Err(e), None) = (report, &self.refused) {
            tracing::warn!(task_id = %ctx.task.id, "a HIVE_PROGRESS report was refused: {e}");
            self.refused = Some(format!("[HIVE_PROGRESS report refused: {e}]"));
        }
    }

    /// The note for the run's log if a report was refused.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }
}

/// The last [`TAIL_BYTES`] of the file, as text (a character cut at the start is replaced).
/// Anything but a regular file is refused unread (a FIFO would block the worker's thread).
fn tail(path: &Path) -> Result<String, String> {
    let unreadable = |e: std::io::Error| format!("cannot read it: {e}");
    let Some((mut f, meta)) = crate::leftfile::open_regular(path, "HIVE_PROGRESS")? else {
        return Ok(String::new());
    };
    f.seek(SeekFrom::Start(meta.len().saturating_sub(TAIL_BYTES)))
        .map_err(unreadable)?;
    let mut bytes = Vec::new();
    f.take(TAIL_BYTES)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::{parse, tail};

    /// A FIFO made where the progress file goes is refused at once: the worker looks at
    /// the file once more after the command ended, when no writer is left to open it.
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("progress");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(tail(&fifo));
        });
        let refused = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("tail returned instead of waiting for a writer")
            .unwrap_err();
        assert_eq!(
            refused,
            "the HIVE_PROGRESS file is not a regular file (it is a FIFO); write the file itself"
        );
        assert_eq!(tail(&dir.path().join("none")).unwrap(), "");
        std::fs::write(dir.path().join("p"), "0.5 half\n").unwrap();
        assert_eq!(tail(&dir.path().join("p")).unwrap(), "0.5 half\n");
    }

    #[test]
    fn the_last_line_is_the_report() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("\n  \n").unwrap(), None);
        assert_eq!(parse("0.5").unwrap(), Some((0.5, String::new())));
        assert_eq!(
            parse("0.1 starting\n0.42  copying  files \n\n").unwrap(),
            Some((0.42, "copying  files".to_owned()))
        );
        assert_eq!(parse("1\tdone").unwrap(), Some((1.0, "done".to_owned())));
        for bad in ["42% copying", "1.5 over", "-0.1", "NaN", "half done"] {
            let refused = parse(bad).unwrap_err();
            assert!(
                refused.contains("is not a fraction from 0 to 1"),
                "{refused}"
            );
        }
    }
}
