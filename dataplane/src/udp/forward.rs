//! The forwarding threads of the udp backend, two per queue (TUN -> UDP
//! and UDP -> TUN), and what they share: the route table, the counters,
//! ICMP errors, rate-limited error logs. Each thread owns its buffers
//! (allocated once), sleeps in a blocking read or `poll(2)`, and reads the
//! route table through a lock-free snapshot per batch.
//!
//! - offload path: the halves in [`super::offload`], batched both ways.
//! - plain path (`Offload: false`): one packet per syscall each way, the
//!   baseline the benchmark compares against.
//!
//! One thread per queue for both directions, with or without a spin window
//! before sleeping, measured slower on a 2-core machine (see
//! docs/benchmarks.md), so the directions stay on separate threads.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use quinn_udp::UdpSocketState;
use tracing::warn;
use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

use super::offload::{RxPath, Step, TxPath};
use super::packet::{build_icmp_error, check_inbound, decrement_ttl, dst_of, DropReason, IcmpError, Ttl};
use super::stats::Stats;
use super::table::RouteTable;

/// Largest IPv4 datagram, and so the largest buffer any packet needs.
pub(crate) const MAX_PACKET: usize = 65535;
/// Largest UDP payload over IPv4 (65535 − 20 − 8): the most one GSO send carries.
pub(crate) const MAX_UDP_PAYLOAD: usize = 65507;

/// What every forwarding thread shares.
#[derive(Clone)]
pub struct Shared {
    pub table: Arc<RouteTable>,
    pub stats: Arc<Stats>,
    /// This node's subnet: the only destination accepted from peers.
    pub local: Ipv4Net,
    /// Source address of the ICMP errors weft sends (the TUN address).
    pub icmp_from: Ipv4Addr,
    /// Whether the TUN device carries virtio-net headers (offload on).
    pub vnet_hdr: bool,
}

/// Logs an I/O error at most every 10 s per thread.
pub(crate) struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    pub(crate) fn new(what: &'static str) -> ErrorLog {
        ErrorLog { what, last: None, suppressed: 0 }
    }

    pub(crate) fn note(&mut self, e: &io::Error) {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(10) => self.suppressed += 1,
            _ => {
                warn!(suppressed = self.suppressed, "udp backend: {} failed: {e}", self.what);
                self.last = Some(now);
                self.suppressed = 0;
            }
        }
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

    fn send(&mut self, dev: &SyncDevice, shared: &Shared, kind: IcmpError, original: &[u8]) {
        if !self.limit.allow() {
            return;
        }
        let hdr = if shared.vnet_hdr { VIRTIO_NET_HDR_LEN } else { 0 };
        // A zeroed virtio-net header means: no GSO, checksums complete.
        self.buf[..hdr].fill(0);
        if let Some(n) = build_icmp_error(kind, shared.icmp_from, original, &mut self.buf[hdr..]) {
            if dev.send(&self.buf[..hdr + n]).is_ok() {
                shared.stats.icmp_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Wait until `fd` is ready for `events` (POLLIN/POLLOUT).
pub(crate) fn wait_fd(fd: i32, events: i16) {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: `p` is a valid pollfd that outlives the call; nfds is 1.
    unsafe {
        libc::poll(&mut p, 1, 1000);
    }
}

/// Per-batch counters, added to the shared ones once per wake-up.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

/// What to do with one outbound packet: the peer to send it to, or `None`
/// when it was dropped (and answered with ICMP where due).
pub(crate) fn route_outbound(
    pkt: &mut [u8],
    snap: &super::table::Snapshot,
    dev: &SyncDevice,
    shared: &Shared,
    icmp: &mut Icmp,
) -> Option<SocketAddrV4> {
    let Some(dst) = dst_of(pkt) else {
        shared.stats.count_drop(DropReason::NotIpv4Outbound);
        return None;
    };
    let Some(peer) = snap.lookup(dst) else {
        shared.stats.count_drop(DropReason::NoRoute);
        icmp.send(dev, shared, IcmpError::NetUnreachable, pkt);
        return None;
    };
    if decrement_ttl(pkt) == Ttl::Expired {
        shared.stats.count_drop(DropReason::TtlExceeded);
        icmp.send(dev, shared, IcmpError::TimeExceeded, pkt);
        return None;
    }
    Some(peer)
}

pub(crate) fn add(counter: &std::sync::atomic::AtomicU64, v: u64) {
    if v > 0 {
        counter.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The TUN -> UDP thread of a queue (blocking TUN reads).
pub fn run_tx(dev: Arc<SyncDevice>, sock: Arc<UdpSocket>, state: Arc<UdpSocketState>, shared: Shared, mtu: usize) {
    let mut tx = TxPath::new(&state, mtu);
    loop {
        if tx.step(&dev, &sock, &state, &shared) == Step::Idle {
            wait_fd(dev.as_raw_fd(), libc::POLLIN);
        }
    }
}

/// The UDP -> TUN thread of a queue (waits in `poll`, reads in batches).
pub fn run_rx(dev: Arc<SyncDevice>, sock: Arc<UdpSocket>, state: Arc<UdpSocketState>, shared: Shared) {
    let mut rx = RxPath::new();
    loop {
        if rx.step(&dev, &sock, &state, &shared) == Step::Idle {
            wait_fd(sock.as_raw_fd(), libc::POLLIN);
        }
    }
}

/// TUN -> UDP, one packet per syscall.
pub fn tun_to_udp_plain(dev: Arc<SyncDevice>, sock: Arc<UdpSocket>, shared: Shared) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut icmp = Icmp::new();
    let mut errors = ErrorLog::new("forwarding TUN -> UDP");
    loop {
        let n = match dev.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                errors.note(&e);
                continue;
            }
        };
        let snap = shared.table.load();
        let pkt = &mut buf[..n];
        let Some(peer) = route_outbound(pkt, &snap, &dev, &shared, &mut icmp) else {
            continue;
        };
        match sock.send_to(pkt, peer) {
            Ok(_) => {
                add(&shared.stats.tx_packets, 1);
                add(&shared.stats.tx_bytes, n as u64);
            }
            Err(e) => {
                errors.note(&e);
                shared.stats.count_drop(DropReason::IoError);
            }
        }
    }
}

/// UDP -> TUN, one packet per syscall.
pub fn udp_to_tun_plain(dev: Arc<SyncDevice>, sock: Arc<UdpSocket>, shared: Shared) {
    let mut buf = vec![0u8; MAX_PACKET + 1];
    let mut errors = ErrorLog::new("forwarding UDP -> TUN");
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                errors.note(&e);
                continue;
            }
        };
        let snap = shared.table.load();
        if !snap.accepts_from(&from) {
            shared.stats.count_drop(DropReason::UnknownSource);
            continue;
        }
        if let Err(reason) = check_inbound(&buf[..n], &shared.local) {
            shared.stats.count_drop(reason);
            continue;
        }
        match dev.send(&buf[..n]) {
            Ok(_) => {
                add(&shared.stats.rx_packets, 1);
                add(&shared.stats.rx_bytes, n as u64);
            }
            Err(e) => {
                errors.note(&e);
                shared.stats.count_drop(DropReason::IoError);
            }
        }
    }
}
