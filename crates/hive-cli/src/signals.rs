//! Ctrl-C (SIGINT) and SIGTERM as a stream of stop requests: the first asks a command to
//! stop gracefully, a second one forces it.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop requests a process receives once [`Interrupts::install`] has run.
#[derive(Debug)]
pub struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    /// Takes over Ctrl-C and SIGTERM: from now on they no longer end the process by
    /// themselves, they wake [`Interrupts::next`].
    pub fn install() -> std::io::Result<Self> {
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
