//! What a `shell` command writes to stdout and stderr: read as it comes, its first and last
//! bytes kept for the run's log (and stdout's end for the output), each line also written to
//! the worker's log with `--log-output`, and never waited for past [`PIPES_GRACE`] once the
//! command's processes were killed.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// At most this much of a command's stdout and stderr each is kept as the run's log: its
/// first and last halves, with a line saying how much was left out between them (the end
/// of a failing command's output is usually where it says why).
pub const MAX_LOG_BYTES: usize = 1024 * 1024;

/// How long a command's pipes may stay open once its processes were killed. Only a process
/// that left the group and removed its `HIVE_RUN_ID` can still hold them then, and the
/// task must not wait for it: after this, what was read is what is kept.
pub const PIPES_GRACE: Duration = Duration::from_secs(2);

/// A forwarded line longer than this is cut: a log line, not a file dump.
const FORWARDED_LINE_MAX: usize = 4096;

/// Writes a command's output to the worker's log a line at a time, as it comes.
struct Forward {
    task: hive_client::TaskId,
    stream: &'static str,
    /// The start of a line whose end has not come yet (at most [`FORWARDED_LINE_MAX`]).
    partial: Vec<u8>,
    /// The partial line was cut: the rest of it is dropped.
    cut: bool,
}

impl Forward {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.take(&bytes[..end]);
            self.emit();
            bytes = &bytes[end + 1..];
        }
        self.take(bytes);
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = FORWARDED_LINE_MAX.saturating_sub(self.partial.len());
        self.cut |= bytes.len() > room;
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.partial);
        let line = crate::output::escape_log_line(text.trim_end_matches('\r'));
        let cut = if self.cut { " …" } else { "" };
        tracing::info!(
            target: "hive::output",
            task_id = %self.task,
            stream = self.stream,
            "{line}{cut}"
        );
        self.partial.clear();
        self.cut = false;
    }

    /// What is left when the pipe ends: a last line without its newline.
    fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }
}

/// What a command wrote to one pipe: its first bytes and its last, and how many in all.
#[derive(Debug, Default)]
pub struct Captured {
    head: Vec<u8>,
    /// The last bytes (at most `tail_max`, kept up to twice that between trims).
    tail: Vec<u8>,
    tail_max: usize,
    pub total: usize,
    /// Reading stopped at [`PIPES_GRACE`], the pipe still open.
    pub held_open: bool,
}

impl Captured {
    pub fn new(tail_max: usize) -> Captured {
        Captured {
            // The log's whole text while it fits, and its last half after.
            tail_max: tail_max.max(MAX_LOG_BYTES),
            ..Captured::default()
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let room = (MAX_LOG_BYTES / 2).saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * self.tail_max {
            self.tail.drain(..self.tail.len() - self.tail_max);
        }
        self.total += bytes.len();
    }

    /// The last bytes written, at most `tail_max`, and whether anything came before them.
    pub fn end(&self) -> (&[u8], bool) {
        let kept = &self.tail[self.tail.len().saturating_sub(self.tail_max)..];
        (kept, kept.len() < self.total)
    }

    /// The run's log: everything when it fits in [`MAX_LOG_BYTES`], else the first and last
    /// halves with what was left out between them counted.
    pub fn log(&self) -> String {
        let (end, _) = self.end();
        if self.total <= MAX_LOG_BYTES && end.len() == self.total {
            return String::from_utf8_lossy(end).into_owned();
        }
        let last = &end[end.len().saturating_sub(MAX_LOG_BYTES / 2)..];
        let left_out = self.total.saturating_sub(self.head.len() + last.len());
        format!(
            "{}\n[{left_out} bytes not kept]\n{}",
            String::from_utf8_lossy(&self.head),
            String::from_utf8_lossy(last)
        )
    }
}

/// Reads a pipe to its end, keeping its first bytes and its last `tail_max`, or until
/// `stop` says to stop (or its sender is gone).
async fn collect(
    pipe: Option<impl AsyncRead + Unpin>,
    tail_max: usize,
    mut forward: Option<Forward>,
    mut stop: watch::Receiver<bool>,
) -> Captured {
    let mut kept = Captured::new(tail_max);
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    loop {
        // Looked at on every read too: a pipe always ready (a process that left the group
        // writing on) would otherwise keep the biased select from ever seeing the stop, or
        // the readers' owner gone (its handler dropped) without sending it.
        if *stop.borrow() || stop.has_changed().is_err() {
            kept.held_open = true;
            break;
        }
        tokio::select! {
            biased;
            read = pipe.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.push(&buf[..n]);
                    if let Some(f) = forward.as_mut() {
                        f.push(&buf[..n]);
                    }
                }
            },
            _ = stop.changed() => {
                kept.held_open = *stop.borrow();
                break;
            }
        }
    }
    if let Some(f) = forward.as_mut() {
        f.finish();
    }
    kept
}

/// The readers of a command's stdout and stderr.
pub struct Pipes {
    stdout: tokio::task::JoinHandle<Captured>,
    stderr: tokio::task::JoinHandle<Captured>,
    stop: watch::Sender<bool>,
}

impl Pipes {
    /// Starts reading `child`'s stdout (keeping its last `tail_max` bytes, at least a log's
    /// worth) and stderr; each line also goes to the worker's log when `forward` names the
    /// task.
    pub fn read(
        child: &mut tokio::process::Child,
        tail_max: usize,
        forward: Option<hive_client::TaskId>,
    ) -> Pipes {
        let (stop, stopped) = watch::channel(false);
        let forward = |stream| {
            forward.map(|task| Forward {
                task,
                stream,
                partial: Vec::new(),
                cut: false,
            })
        };
        let stdout = tokio::spawn(collect(
            child.stdout.take(),
            tail_max,
            forward("stdout"),
            stopped.clone(),
        ));
        let stderr = tokio::spawn(collect(child.stderr.take(), 0, forward("stderr"), stopped));
        Pipes {
            stdout,
            stderr,
            stop,
        }
    }

    /// What the command wrote to stdout and stderr, once both pipes reach their end, or
    /// [`PIPES_GRACE`] after this is called (its processes killed), whichever comes first.
    pub async fn drain(self) -> (Captured, Captured) {
        let both = async {
            (
                self.stdout.await.unwrap_or_default(),
                self.stderr.await.unwrap_or_default(),
            )
        };
        tokio::pin!(both);
        if let Ok(both) = tokio::time::timeout(PIPES_GRACE, &mut both).await {
            return both;
        }
        tracing::warn!(
            "a process a command started still holds its output open after the command ended, \
             outside its process group and without its HIVE_RUN_ID; not waiting for it"
        );
        let _ = self.stop.send(true);
        both.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe that is always ready (a process that left the group, writing on) still
    /// stops being read once told: the task is not held by it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipe_always_ready_stops_being_read_when_told() {
        let (stop, stopped) = watch::channel(false);
        let reading = tokio::spawn(collect(Some(tokio::io::repeat(b'x')), 1024, None, stopped));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        let kept = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("the reader stopped within 10 s of being told")
            .unwrap();
        assert!(kept.held_open);
        assert!(kept.total > 0);
    }

    /// The same when the readers' owner is dropped (its handler dropped past its grace)
    /// without telling them to stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipe_always_ready_stops_being_read_when_its_owner_is_gone() {
        let (stop, stopped) = watch::channel(false);
        let reading = tokio::spawn(collect(Some(tokio::io::repeat(b'x')), 1024, None, stopped));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stop);
        let kept = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("the reader stopped within 10 s of its owner going")
            .unwrap();
        assert!(kept.total > 0);
    }
}
