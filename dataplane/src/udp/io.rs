//! What the forwarding threads share and the I/O helpers they use: the
//! route table and counters ([`Shared`]), waiting on a descriptor or the stop
//! signal, ICMP errors written back into the TUN device, and a log that
//! tells transient errors from the persistent ones that end a thread.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::Notify;
use tracing::warn;
use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

use super::packet::{build_icmp_error, IcmpError};
use super::stats::Stats;
use super::table::RouteTable;

/// Largest IPv4 datagram, and so the largest buffer any packet needs.
pub(crate) const MAX_PACKET: usize = 65535;
/// Largest UDP payload over IPv4 (65535 − 20 − 8): the most one GSO send carries.
pub(crate) const MAX_UDP_PAYLOAD: usize = 65507;
/// Consecutive failures of one operation after which a thread gives up and
/// lets the supervisor rebuild its queue (with backoff) instead of spinning.
const MAX_CONSECUTIVE_ERRORS: u32 = 1000;

/// What every forwarding thread shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) table: Arc<RouteTable>,
    pub(crate) stats: Arc<Stats>,
    /// This node's subnet: the only destination accepted from peers.
    pub(crate) local: Ipv4Net,
    /// Source address of the ICMP errors weft sends (the TUN address).
    pub(crate) icmp_from: Ipv4Addr,
    /// Whether the TUN device carries virtio-net headers (offload on).
    pub(crate) vnet_hdr: bool,
}

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

/// A non-blocking eventfd: rung by one thread, it wakes another out of
/// `poll` until cleared.
pub(crate) struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    pub(crate) fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd(2) takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Doorbell { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Make the descriptor readable. Fails only when the counter is near
    /// overflow, that is, rung already.
    pub(crate) fn ring(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let rc = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if rc != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reset it after a wake-up.
    pub(crate) fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN when not rung.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
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
}

impl StopSignal {
    /// Whether [`fire`](Self::fire) was called (checked between batches, so
    /// a busy thread stops too).
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }
}

/// What a wait ended with.
#[derive(Debug)]
pub(crate) enum Wake {
    /// Bit `i` set: the `i`-th descriptor waited on is ready (all clear
    /// after a timeout).
    Ready(u8),
    Stop,
}

/// Wait until `fd` is ready for `events` (POLLIN/POLLOUT) or `stop` fires.
/// An error of the descriptor (POLLERR, POLLHUP) counts as ready: the next
/// read or write reports it.
pub(crate) fn wait(fd: i32, events: i16, stop: &StopSignal) -> io::Result<Wake> {
    wait_any(&[fd], events, stop, None)
}

/// Wait until one of `fds` (at most three) is ready for `events`, `stop`
/// fires, or `timeout` passes; a timeout counts as ready with nothing
/// marked (the caller looks and finds nothing), as in [`wait`]. Bit `i` of
/// the ready mask is `fds[i]`; a negative descriptor is skipped, as
/// poll(2) skips it, and never marked.
pub(crate) fn wait_any(fds: &[i32], events: i16, stop: &StopSignal, timeout: Option<Duration>) -> io::Result<Wake> {
    let mut polled = [libc::pollfd { fd: stop.bell.fd(), events: libc::POLLIN, revents: 0 }; 4];
    let n = fds.len().min(3);
    for (p, fd) in polled[1..].iter_mut().zip(&fds[..n]) {
        *p = libc::pollfd { fd: *fd, events, revents: 0 };
    }
    let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int);
    loop {
        // SAFETY: `polled` is a valid array of pollfds that outlives the
        // call, and its first `n + 1` are initialised.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), (n + 1) as libc::nfds_t, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if polled[0].revents != 0 {
            return Ok(Wake::Stop);
        }
        if polled[1..=n].iter().any(|p| p.revents & libc::POLLNVAL != 0) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let ready = polled[1..=n].iter().enumerate().filter(|(_, p)| p.revents != 0).fold(0u8, |m, (i, _)| m | 1 << i);
        return Ok(Wake::Ready(ready));
    }
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
                warn!(suppressed = self.suppressed, "udp backend: {} failed: {e}", self.what);
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

/// Token bucket for ICMP errors: at most 100 per second per thread.
struct IcmpLimit {
    tokens: f64,
    last: Instant,
}

impl IcmpLimit {
    fn new() -> IcmpLimit {
        IcmpLimit { tokens: 100.0, last: Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * 100.0).min(100.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Sends ICMP errors back into the TUN device.
pub(crate) struct Icmp {
    limit: IcmpLimit,
    buf: Vec<u8>,
}

impl Icmp {
    pub(crate) fn new() -> Icmp {
        Icmp { limit: IcmpLimit::new(), buf: vec![0u8; VIRTIO_NET_HDR_LEN + 128] }
    }

    pub(crate) fn send(&mut self, dev: &SyncDevice, shared: &Shared, kind: IcmpError, original: &[u8]) {
        if !self.limit.allow() {
            return;
        }
        let hdr = if shared.vnet_hdr { VIRTIO_NET_HDR_LEN } else { 0 };
        // A zeroed virtio-net header means: no GSO, checksums complete.
        self.buf[..hdr].fill(0);
        if let Some(n) = build_icmp_error(kind, shared.icmp_from, original, &mut self.buf[hdr..]) {
            if dev.send(&self.buf[..hdr + n]).is_ok() {
                shared.stats.icmp_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
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
