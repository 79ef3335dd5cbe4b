//! How a forwarding thread lives and ends, for both userspace backends:
//! the stop signal and waiting on descriptors beside it, why a thread
//! ended ([`Exit`]), what one step found ([`Step`]), and a log that tells
//! transient errors from the persistent ones that end a thread.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

pub(crate) use super::sys::Wake;
use super::sys::{self, Doorbell};

/// Largest IPv4 datagram, and so the largest buffer any packet needs.
pub(crate) const MAX_PACKET: usize = 65535;
/// Largest UDP payload over IPv4 (65535 − 20 − 8): the most one GSO send carries.
pub(crate) const MAX_UDP_PAYLOAD: usize = 65507;
/// Consecutive failures of one operation after which a thread gives up and
/// lets the supervisor rebuild its queue (with backoff) instead of spinning.
const MAX_CONSECUTIVE_ERRORS: u32 = 1000;

/// Why a forwarding thread ended.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Told to stop.
    Stopped,
    /// A persistent error: the queue must be rebuilt.
    Failed(io::Error),
}

/// Errors after which a descriptor is of no more use: the TUN device was
/// deleted (`EBADFD`, `ENODEV`, `ENXIO`) or the descriptor is gone (`EBADF`,
/// `ENOTSOCK`).
pub(crate) fn is_fatal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBADFD | libc::ENODEV | libc::ENXIO | libc::EBADF | libc::ENOTSOCK))
}

/// Tells forwarding threads to stop; they wait on it beside their data
/// descriptor, so stopping never waits for traffic.
pub(crate) struct StopSignal {
    bell: Doorbell,
    fired: AtomicBool,
}

impl StopSignal {
    pub(crate) fn new() -> io::Result<StopSignal> {
        Ok(StopSignal { bell: Doorbell::new()?, fired: AtomicBool::new(false) })
    }

    /// Wake every waiting thread, now and later (never cleared).
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Relaxed);
        if let Err(e) = self.bell.ring() {
            warn!("could not signal the forwarding threads to stop: {e}");
        }
    }

    /// Whether [`fire`](Self::fire) was called (checked between batches, so
    /// a busy thread stops too).
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }
}

/// Wait until `fd` is ready for `events` (POLLIN/POLLOUT) or `stop` fires.
/// An error of the descriptor (POLLERR, POLLHUP) counts as ready: the next
/// read or write reports it.
pub(crate) fn wait(fd: i32, events: i16, stop: &StopSignal) -> io::Result<Wake> {
    wait_any(&[fd], events, stop, None)
}

/// Wait until one of `fds` (at most three) is ready for `events`, `stop`
/// fires, or `timeout` passes; a timeout counts as ready with nothing
/// marked (the caller looks and finds nothing), as in [`wait`]. See
/// [`sys::poll`].
pub(crate) fn wait_any(fds: &[i32], events: i16, stop: &StopSignal, timeout: Option<Duration>) -> io::Result<Wake> {
    sys::poll(fds, events, stop.bell.fd(), timeout)
}

/// Logs an I/O error at most every 10 s per thread, and says when the same
/// operation has failed so often in a row that the thread should end.
pub(crate) struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
    consecutive: u32,
}

/// What a forwarding step found.
#[derive(Debug)]
pub(crate) enum Step {
    Worked,
    /// Nothing to read: wait for the descriptor.
    Idle,
    /// A persistent error: the thread must end.
    Failed(io::Error),
}

impl ErrorLog {
    /// The step after a failed read: nothing to read (`WouldBlock`) is
    /// idle, an interrupted call is retried, anything else is noted and
    /// ends the thread when persistent.
    pub(crate) fn step_after(&mut self, e: io::Error) -> Step {
        match e.kind() {
            io::ErrorKind::WouldBlock => Step::Idle,
            io::ErrorKind::Interrupted => Step::Worked,
            _ => match self.note(e) {
                Ok(()) => Step::Worked,
                Err(e) => Step::Failed(e),
            },
        }
    }

    pub(crate) fn new(what: &'static str) -> ErrorLog {
        ErrorLog { what, last: None, suppressed: 0, consecutive: 0 }
    }

    /// Record an error; `Err` when the thread must end (a persistent error,
    /// or too many in a row).
    pub(crate) fn note(&mut self, e: io::Error) -> Result<(), io::Error> {
        self.consecutive += 1;
        if is_fatal(&e) || self.consecutive >= MAX_CONSECUTIVE_ERRORS {
            return Err(e);
        }
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(10) => self.suppressed += 1,
            _ => {
                warn!(suppressed = self.suppressed, "{} failed: {e}", self.what);
                self.last = Some(now);
                self.suppressed = 0;
            }
        }
        Ok(())
    }

    /// The operation succeeded.
    pub(crate) fn ok(&mut self) {
        self.consecutive = 0;
    }
}

/// Per-batch counters, added to the shared ones once per wake-up.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

pub(crate) fn add(counter: &AtomicU64, v: u64) {
    if v > 0 {
        counter.fetch_add(v, Ordering::Relaxed);
    }
}

/// Keeps a thread's exit from going unnoticed: wakes the reconciler when
/// dropped, whether the thread returned or panicked.
pub(crate) struct WakeOnExit(pub(crate) Arc<Notify>);

impl Drop for WakeOnExit {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}
