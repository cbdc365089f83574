//! Ctrl-C (SIGINT), SIGTERM and SIGHUP as a stream of stop requests: the first asks a
//! command to stop gracefully, a second one (Ctrl-C or SIGTERM) forces it.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop requests a process receives once [`Interrupts::install`] has run.
#[derive(Debug)]
pub struct Interrupts {
    int: Signal,
    term: Signal,
    /// `None` when the process was started ignoring hangups (`nohup`): it keeps doing so.
    hup: Option<Signal>,
    /// A stop was asked for already.
    asked: bool,
}

impl Interrupts {
    /// Takes over Ctrl-C, SIGTERM and SIGHUP: from now on they no longer end the process
    /// by themselves, they wake [`Interrupts::next`]. SIGHUP is what a process started from
    /// an SSH session gets when the session closes: it stops gracefully, as on SIGTERM,
    /// instead of dying with its commands still running. Started with hangups ignored
    /// (`nohup hive worker run &`), it leaves them ignored: taking SIGHUP over would undo
    /// what `nohup` asked for, and stop the worker when the session closes.
    pub fn install() -> std::io::Result<Self> {
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: if hangup_ignored() {
                None
            } else {
                Some(signal(SignalKind::hangup())?)
            },
            asked: false,
        })
    }

    /// Waits for the next Ctrl-C or SIGTERM, or a SIGHUP while no stop was asked for yet.
    /// A hangup only ever asks for the graceful stop: a closing terminal sends it twice
    /// (the kernel to the foreground job, then the shell to each of its jobs), which must
    /// not count as the second request that forces the stop.
    pub async fn next(&mut self) {
        loop {
            tokio::select! {
                _ = self.int.recv() => break,
                _ = self.term.recv() => break,
                _ = hangup(&mut self.hup) => if !self.asked {
                    break;
                },
            }
        }
        self.asked = true;
    }
}

/// The next hangup, or never when they are left ignored.
async fn hangup(hup: &mut Option<Signal>) {
    match hup {
        Some(h) => {
            h.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Whether this process ignores SIGHUP, as `nohup` makes it: the `SigIgn` mask of
/// `/proc/self/status` (SIGHUP is signal 1, its lowest bit), read without the `sigaction`
/// call Rust code cannot make safely. Not ignored when the file cannot be read.
fn hangup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & 1 != 0)
}

#[cfg(test)]
mod tests {
    use super::Interrupts;
    use nix::sys::signal::{Signal, raise};
    use std::time::Duration;

    /// Signals go to the whole test process: the signal tests take turns.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    async fn woken(interrupts: &mut Interrupts) -> bool {
        tokio::time::timeout(Duration::from_millis(300), interrupts.next())
            .await
            .is_ok()
    }

    /// A hangup asks for the graceful stop (without a handler it would kill the process);
    /// more hangups do not force it, a SIGTERM does.
    #[tokio::test]
    async fn a_hangup_stops_gracefully_and_never_forces() {
        let _turn = SERIAL.lock().await;
        let mut interrupts = Interrupts::install().unwrap();
        raise(Signal::SIGHUP).unwrap();
        assert!(
            woken(&mut interrupts).await,
            "the first hangup asks for a stop"
        );
        raise(Signal::SIGHUP).unwrap();
        assert!(
            !woken(&mut interrupts).await,
            "a second hangup forces nothing"
        );
        raise(Signal::SIGTERM).unwrap();
        assert!(
            woken(&mut interrupts).await,
            "a SIGTERM after it forces the stop"
        );
    }
}
