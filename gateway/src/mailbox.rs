//! Instructions between the parts of one session: what a stopped pump says, and each
//! pump's inbox.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::Poll;

/// A close frame the gateway itself sends: code and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseMsg {
    /// RFC 6455 close code.
    pub code: u16,
    /// One-line reason (at most 123 bytes).
    pub reason: &'static str,
}

/// What a stopped pump sends its destination before ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWith {
    /// Nothing: the destination already knows or is gone.
    Nothing,
    /// The close this pump sends when its own source is lost.
    LostSource,
    /// A specific close.
    Close(CloseMsg),
}

/// Instructions from the session (or the other pump) to a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Send a keepalive ping to your destination (the other pump's silent source).
    Ping,
    /// Stop forwarding, send this to your destination, and end.
    Stop(StopWith),
}

/// A pump's inbox: instructions from the session or the other pump.
///
/// Both pumps and the session run in one task, so an instruction needs no channel: the
/// sender sets a flag, and the task polls the pump again (the session does so right
/// after sending; the other pump wakes the task, see [`wake_task`]). Checking the inbox
/// costs one atomic load per frame.
#[derive(Debug, Default)]
pub struct Mailbox {
    flags: AtomicU8,
    stop: Mutex<Option<StopWith>>,
}

const PING: u8 = 1;
const STOP: u8 = 2;
/// Not an instruction to act on now: it stays set, and the pump reads it with
/// [`Mailbox::shutting_down`].
const SHUTTING_DOWN: u8 = 4;
/// Not an instruction either: the pump's destination took bytes since the other pump last
/// looked ([`Mailbox::take_delivered`]).
const DELIVERED: u8 = 8;
/// Not an instruction either: the pump is waiting for its destination to take a batch
/// ([`Mailbox::is_flushing`]).
const FLUSHING: u8 = 16;

impl Mailbox {
    /// Asks the pump to stop; the first instruction wins.
    pub fn stop(&self, how: StopWith) {
        if let Ok(mut s) = self.stop.lock() {
            s.get_or_insert(how);
        }
        self.flags.fetch_or(STOP, Ordering::Release);
    }

    /// Tells the pump the gateway is shutting down: when its source's close comes, the
    /// destination is sent the gateway's shutdown close in its place.
    pub fn shut_down(&self) {
        self.flags.fetch_or(SHUTTING_DOWN, Ordering::Release);
    }

    /// Whether [`Mailbox::shut_down`] was called.
    pub(crate) fn shutting_down(&self) -> bool {
        self.flags.load(Ordering::Acquire) & SHUTTING_DOWN != 0
    }

    /// Notes that the pump's destination took bytes: a side that reads what it is sent is
    /// not idle, even when a keepalive ping waits behind a backlog toward it. One load
    /// per flush, and a write once per keepalive period.
    pub(crate) fn delivered(&self) {
        if self.flags.load(Ordering::Relaxed) & DELIVERED == 0 {
            self.flags.fetch_or(DELIVERED, Ordering::Relaxed);
        }
    }

    /// Notes that the pump waits for its destination to take a batch (`true`), or is done
    /// waiting: with [`Mailbox::take_delivered`], what tells the other pump that its
    /// source, though sending, reads nothing.
    pub(crate) fn flushing(&self, waiting: bool) {
        if waiting {
            self.flags.fetch_or(FLUSHING, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!FLUSHING, Ordering::Relaxed);
        }
    }

    /// Whether the pump is waiting for its destination to take a batch.
    pub(crate) fn is_flushing(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & FLUSHING != 0
    }

    /// Whether the pump's destination took bytes since the last call.
    pub(crate) fn take_delivered(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & DELIVERED != 0
            && self.flags.fetch_and(!DELIVERED, Ordering::Relaxed) & DELIVERED != 0
    }

    /// Asks the pump to send a keepalive ping to its destination.
    pub fn ping(&self) {
        self.flags.fetch_or(PING, Ordering::Release);
    }

    /// The next instruction, if any (a stop before a ping).
    pub(crate) fn take(&self) -> Option<Control> {
        let flags = self.flags.load(Ordering::Acquire) & (PING | STOP);
        if flags == 0 {
            return None;
        }
        if flags & STOP != 0 {
            let how = self
                .stop
                .lock()
                .ok()
                .and_then(|s| *s)
                .unwrap_or(StopWith::Nothing);
            return Some(Control::Stop(how));
        }
        self.flags.fetch_and(!PING, Ordering::AcqRel);
        Some(Control::Ping)
    }

    /// Resolves when an instruction is there. Registers no waker: senders live in the
    /// same task and make sure it is polled again.
    pub(crate) async fn next(&self) -> Control {
        std::future::poll_fn(|_| match self.take() {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        })
        .await
    }
}

/// Makes the runtime poll the current task again (so a pump in the same task sees a
/// flag just set in its [`Mailbox`]).
pub async fn wake_task() {
    std::future::poll_fn(|cx| {
        cx.waker().wake_by_ref();
        Poll::Ready(())
    })
    .await
}
