//! The line for a free handler: claims may outnumber handlers (see [`super::slots::Slots`]),
//! and one dispatcher decides which waiting claim a handler that frees up starts next.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::pace::{BUFFER_WAIT, Pace};

/// How long a claim that holds no share of a limit may wait before those that do no
/// longer go ahead of it. The prefetch buffer is sized so that its claims wait about
/// [`BUFFER_WAIT`]: the first of a full buffer has waited about that long already, so a
/// bound of that would rarely let a limited claim pass.
const OVERTAKEN_AT_MOST: Duration = BUFFER_WAIT.saturating_mul(4);

/// What a claimed task waits for before its handler starts: its turn at a free handler,
/// unless the worker stops first. Turns are handed out by one dispatcher in claim order,
/// which is queue order, except that a claim holding a share of a limit (`Claim::limited`)
/// goes ahead of waiting claims that hold none, unless the first of those has waited
/// [`OVERTAKEN_AT_MOST`]. A limited claim counts as running from its claim, so a wait in
/// the prefetch buffer would keep its limit's other tasks from starting on any worker. A
/// claim that stops waiting gives its turn's handler back. Also where handlers record how
/// long they took.
#[derive(Clone)]
pub(super) struct Gate {
    limited: mpsc::UnboundedSender<Waiting>,
    plain: mpsc::UnboundedSender<(Instant, Waiting)>,
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
    pub(super) pace: Pace,
}

type Waiting = oneshot::Sender<OwnedSemaphorePermit>;

/// A claim's place in line for a handler.
pub(super) type Turn = oneshot::Receiver<OwnedSemaphorePermit>;

impl Gate {
    /// A gate for `concurrency` handlers; its dispatcher ends with the last clone.
    pub(super) fn new(
        concurrency: u32,
        stop: tokio::sync::watch::Receiver<bool>,
        pace: Pace,
    ) -> Gate {
        let handlers = Arc::new(Semaphore::new(concurrency as usize));
        let (limited, limited_line) = mpsc::unbounded_channel();
        let (plain, plain_line) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(handlers, limited_line, plain_line));
        Gate {
            limited,
            plain,
            stop,
            pace,
        }
    }

    /// Queues a claim for a handler; called in claim order.
    pub(super) fn turn(&self, limited: bool) -> Turn {
        let (tx, rx) = oneshot::channel();
        let _ = if limited {
            self.limited.send(tx).is_ok()
        } else {
            self.plain.send((Instant::now(), tx)).is_ok()
        };
        rx
    }
}

/// Hands each handler that frees up to the next claim in line (see [`Gate`]); ends when
/// both lines are closed and empty.
async fn dispatch(
    handlers: Arc<Semaphore>,
    mut limited: mpsc::UnboundedReceiver<Waiting>,
    mut plain: mpsc::UnboundedReceiver<(Instant, Waiting)>,
) {
    // The first plain claim, taken out of its line to see how long it has waited.
    let mut head: Option<(Instant, Waiting)> = None;
    loop {
        // A free handler first, then the claim it goes to: whoever is first in line once
        // it is free, so a limited claim that arrived meanwhile is not passed over.
        let Ok(free) = handlers.clone().acquire_owned().await else {
            return;
        };
        let waiting = match head.take().or_else(|| plain.try_recv().ok()) {
            Some((since, w)) if since.elapsed() >= OVERTAKEN_AT_MOST => w,
            Some(first) => match limited.try_recv() {
                Ok(w) => {
                    head = Some(first);
                    w
                }
                Err(_) => first.1,
            },
            None => tokio::select! {
                biased;
                Some(w) = limited.recv() => w,
                Some((_, w)) = plain.recv() => w,
                else => return,
            },
        };
        // A claim that stopped waiting dropped its end: the handler stays free.
        let _ = waiting.send(free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(concurrency: u32) -> Gate {
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        Gate::new(concurrency, stopped, Pace::default())
    }

    /// Which of the turns has its handler, in the order given.
    fn served(turns: &mut [Turn]) -> Vec<bool> {
        turns
            .iter_mut()
            .map(|t| !matches!(t.try_recv(), Err(oneshot::error::TryRecvError::Empty)))
            .collect()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_claim_starts_before_plain_ones_that_waited_less() {
        let gate = gate(1);
        let busy = gate.turn(false).await.unwrap();
        let mut turns = vec![gate.turn(false), gate.turn(false), gate.turn(true)];
        settle().await;
        assert_eq!(
            served(&mut turns),
            [false, false, false],
            "the handler is busy"
        );
        drop(busy);
        settle().await;
        assert_eq!(
            served(&mut turns),
            [false, false, true],
            "the limited claim first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_plain_claim_is_passed_over_for_a_bounded_time() {
        let gate = gate(1);
        let busy = gate.turn(false).await.unwrap();
        let mut first = gate.turn(false);
        settle().await;
        tokio::time::advance(OVERTAKEN_AT_MOST).await;
        let mut limited = gate.turn(true);
        drop(busy);
        settle().await;
        assert!(first.try_recv().is_ok(), "it waited long enough: its turn");
        assert!(limited.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_that_stopped_waiting_leaves_the_handler_free() {
        let gate = gate(1);
        let busy = gate.turn(false).await.unwrap();
        let gone = gate.turn(true);
        let mut next = gate.turn(false);
        drop(gone);
        drop(busy);
        settle().await;
        assert!(next.try_recv().is_ok());
    }
}
