//! The forwarding threads of the udp backend. Each thread owns its
//! buffers (allocated once), blocks in batched syscalls, and reads the
//! route table through a lock-free snapshot per batch.
//!
//! - offload path: TUN reads return up to 64 KB TCP/UDP super-packets that
//!   `tun-rs` splits into MTU-sized packets; packets for one peer leave in
//!   one `sendmsg` with UDP GSO (`quinn-udp`). Datagrams arrive in
//!   `recvmmsg` batches with UDP GRO, and inner TCP packets are coalesced
//!   again into large TUN writes (`tun-rs` GRO table).
//! - plain path (`Offload: false`): one packet per syscall each way, the
//!   baseline the benchmark compares against.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tracing::warn;
use tun_rs::{GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::packet::{build_icmp_error, check_inbound, decrement_ttl, dst_of, DropReason, IcmpError, Ttl};
use super::stats::Stats;
use super::table::RouteTable;

/// Largest IPv4 datagram, and so the largest buffer any packet needs.
const MAX_PACKET: usize = 65535;
/// Largest UDP payload over IPv4 (65535 − 20 − 8): the most one GSO send carries.
const MAX_UDP_PAYLOAD: usize = 65507;

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
struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn new(what: &'static str) -> ErrorLog {
        ErrorLog { what, last: None, suppressed: 0 }
    }

    fn note(&mut self, e: &io::Error) {
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
struct Icmp {
    limit: IcmpLimit,
    buf: Vec<u8>,
}

impl Icmp {
    fn new() -> Icmp {
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
fn wait_fd(fd: i32, events: i16) {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: `p` is a valid pollfd that outlives the call; nfds is 1.
    unsafe {
        libc::poll(&mut p, 1, 1000);
    }
}

/// Per-batch counters, added to the shared ones once per wake-up.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
}

/// A run of packets to one peer, laid out back to back for one GSO send.
struct GsoBatch {
    buf: Vec<u8>,
    len: usize,
    count: usize,
    seg: usize,
    dest: Option<SocketAddrV4>,
    closed: bool,
}

impl GsoBatch {
    fn new() -> GsoBatch {
        GsoBatch { buf: vec![0u8; MAX_PACKET], len: 0, count: 0, seg: 0, dest: None, closed: false }
    }

    /// Whether `pkt` for `dest` can join the batch.
    fn fits(&self, dest: SocketAddrV4, pkt: usize, max_segments: usize) -> bool {
        self.count == 0
            || (self.dest == Some(dest)
                && !self.closed
                && pkt <= self.seg
                && self.count < max_segments
                && self.len + pkt <= MAX_UDP_PAYLOAD)
    }

    fn push(&mut self, dest: SocketAddrV4, pkt: &[u8]) {
        if self.count == 0 {
            self.dest = Some(dest);
            self.seg = pkt.len();
        }
        self.buf[self.len..self.len + pkt.len()].copy_from_slice(pkt);
        self.len += pkt.len();
        self.count += 1;
        // A shorter packet must be the last segment of a GSO send.
        if pkt.len() < self.seg {
            self.closed = true;
        }
    }

    fn flush(
        &mut self,
        sock: &UdpSocket,
        state: &UdpSocketState,
        shared: &Shared,
        errors: &mut ErrorLog,
        tally: &mut Tally,
    ) {
        if let (Some(dest), true) = (self.dest, self.count > 0) {
            send_gso(sock, state, shared, errors, tally, dest, &self.buf[..self.len], self.seg, self.count);
        }
        self.len = 0;
        self.count = 0;
        self.dest = None;
        self.closed = false;
    }
}

/// What to do with one outbound packet: the peer to send it to, or `None`
/// when it was dropped (and answered with ICMP where due).
fn route_outbound(
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

fn add(counter: &std::sync::atomic::AtomicU64, v: u64) {
    if v > 0 {
        counter.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
    }
}

/// TUN -> UDP with offloads: GSO split on read, UDP GSO on send.
///
/// Packets are split into fixed slots of `mtu` bytes in one area. A TCP
/// super-packet splits into full-size segments that then lie back to back,
/// so when a whole read goes to one peer it leaves in one GSO send straight
/// from the area, without another copy; anything else is gathered into a
/// [`GsoBatch`] per peer.
pub fn tun_to_udp_offload(
    dev: Arc<SyncDevice>,
    sock: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    shared: Shared,
    mtu: usize,
) {
    let slot = mtu.max(576);
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET];
    let mut area = vec![0u8; slot * IDEAL_BATCH_SIZE];
    let mut sizes = [0usize; IDEAL_BATCH_SIZE];
    let mut peers: [Option<SocketAddrV4>; IDEAL_BATCH_SIZE] = [None; IDEAL_BATCH_SIZE];
    let mut batch = GsoBatch::new();
    let max_segments = state.max_gso_segments().clamp(1, 64);
    // Segments per send on the fast path, also bounded by the UDP payload limit.
    let fast_segments = max_segments.min(MAX_UDP_PAYLOAD / slot).max(1);
    let mut icmp = Icmp::new();
    let mut errors = ErrorLog::new("reading from the TUN device");
    let mut send_errors = ErrorLog::new("sending UDP");
    loop {
        let read = {
            let mut chunks = area.chunks_mut(slot);
            let mut slots: [&mut [u8]; IDEAL_BATCH_SIZE] = std::array::from_fn(|_| chunks.next().unwrap_or_default());
            dev.recv_multiple(&mut original, &mut slots, &mut sizes, 0)
        };
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                errors.note(&e);
                shared.stats.count_drop(DropReason::IoError);
                continue;
            }
        };
        let snap = shared.table.load();
        let mut tally = Tally::default();
        for i in 0..n {
            let pkt = &mut area[i * slot..i * slot + sizes[i]];
            peers[i] = route_outbound(pkt, &snap, &dev, &shared, &mut icmp);
        }
        // Fast path: full-size segments for one peer, contiguous in the area.
        let uniform = n > 1
            && peers[0].is_some()
            && (1..n).all(|i| peers[i] == peers[0])
            && sizes[..n - 1].iter().all(|s| *s == slot);
        if let (true, Some(dest)) = (uniform, peers[0]) {
            let mut first = 0;
            while first < n {
                let last = (first + fast_segments).min(n);
                let bytes = (last - 1 - first) * slot + sizes[last - 1];
                let contents = &area[first * slot..first * slot + bytes];
                send_gso(&sock, &state, &shared, &mut send_errors, &mut tally, dest, contents, slot, last - first);
                first = last;
            }
        } else {
            for i in 0..n {
                let Some(peer) = peers[i] else { continue };
                let pkt = &area[i * slot..i * slot + sizes[i]];
                if !batch.fits(peer, pkt.len(), max_segments) {
                    batch.flush(&sock, &state, &shared, &mut send_errors, &mut tally);
                }
                batch.push(peer, pkt);
            }
            batch.flush(&sock, &state, &shared, &mut send_errors, &mut tally);
        }
        add(&shared.stats.tx_packets, tally.packets);
        add(&shared.stats.tx_bytes, tally.bytes);
    }
}

/// One UDP send of `count` segments of `seg` bytes (the last may be shorter).
#[allow(clippy::too_many_arguments)]
fn send_gso(
    sock: &UdpSocket,
    state: &UdpSocketState,
    shared: &Shared,
    errors: &mut ErrorLog,
    tally: &mut Tally,
    dest: SocketAddrV4,
    contents: &[u8],
    seg: usize,
    count: usize,
) {
    let transmit = Transmit {
        destination: SocketAddr::V4(dest),
        ecn: None,
        contents,
        segment_size: (count > 1).then_some(seg),
        src_ip: None,
    };
    loop {
        match state.try_send(sock.into(), &transmit) {
            Ok(()) => {
                tally.packets += count as u64;
                tally.bytes += contents.len() as u64;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(sock.as_raw_fd(), libc::POLLOUT),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                errors.note(&e);
                for _ in 0..count {
                    shared.stats.count_drop(DropReason::IoError);
                }
                return;
            }
        }
    }
}

/// UDP -> TUN with offloads: recvmmsg with UDP GRO, coalesced TUN writes.
pub fn udp_to_tun_offload(dev: Arc<SyncDevice>, sock: Arc<UdpSocket>, state: Arc<UdpSocketState>, shared: Shared) {
    const CHUNK: usize = MAX_PACKET + 1;
    let mut rx = vec![0u8; CHUNK * BATCH_SIZE];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    let mut out: Vec<Vec<u8>> =
        (0..IDEAL_BATCH_SIZE).map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + MAX_PACKET)).collect();
    let mut gro = GROTable::default();
    let mut errors = ErrorLog::new("receiving UDP");
    let mut write_errors = ErrorLog::new("writing to the TUN device");
    loop {
        let n = {
            let mut chunks = rx.chunks_mut(CHUNK);
            let mut iovs: [IoSliceMut; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match state.recv((&*sock).into(), &mut iovs, &mut metas) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(sock.as_raw_fd(), libc::POLLIN);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    errors.note(&e);
                    continue;
                }
            }
        };
        let snap = shared.table.load();
        let mut count = 0;
        let mut tally = Tally::default();
        for (i, meta) in metas[..n].iter().enumerate() {
            let data = &rx[i * CHUNK..i * CHUNK + meta.len.min(CHUNK)];
            let stride = if meta.stride == 0 { data.len().max(1) } else { meta.stride };
            if data.is_empty() {
                shared.stats.count_drop(if snap.accepts_from(&meta.addr) {
                    DropReason::TooShort
                } else {
                    DropReason::UnknownSource
                });
                continue;
            }
            if !snap.accepts_from(&meta.addr) {
                for _ in data.chunks(stride) {
                    shared.stats.count_drop(DropReason::UnknownSource);
                }
                continue;
            }
            for seg in data.chunks(stride) {
                if let Err(reason) = check_inbound(seg, &shared.local) {
                    shared.stats.count_drop(reason);
                    continue;
                }
                let o = &mut out[count];
                o.clear();
                o.resize(VIRTIO_NET_HDR_LEN, 0);
                o.extend_from_slice(seg);
                tally.packets += 1;
                tally.bytes += seg.len() as u64;
                count += 1;
                if count == out.len() {
                    write_batch(&dev, &mut gro, &mut out[..count], &shared, &mut write_errors);
                    count = 0;
                }
            }
        }
        if count > 0 {
            write_batch(&dev, &mut gro, &mut out[..count], &shared, &mut write_errors);
        }
        add(&shared.stats.rx_packets, tally.packets);
        add(&shared.stats.rx_bytes, tally.bytes);
    }
}

fn write_batch(dev: &SyncDevice, gro: &mut GROTable, bufs: &mut [Vec<u8>], shared: &Shared, errors: &mut ErrorLog) {
    if let Err(e) = dev.send_multiple(gro, bufs, VIRTIO_NET_HDR_LEN) {
        errors.note(&e);
        shared.stats.count_drop(DropReason::IoError);
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
