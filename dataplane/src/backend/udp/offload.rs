//! The offload path, as two halves that each handle one wake-up's worth of
//! packets without blocking: [`TxPath`] (TUN -> UDP) and [`RxPath`]
//! (UDP -> TUN). `workers` runs them on threads.
//!
//! - TX: TUN reads return up to 64 KB TCP/UDP super-packets that `tun-rs`
//!   splits into MTU-sized slots of one area. Full-size segments then lie
//!   back to back, so when a read goes to one peer it leaves in one UDP GSO
//!   send straight from the area; anything else is gathered per peer.
//! - RX: `recvmmsg` with UDP GRO returns batches of datagrams; runs of one
//!   TCP flow's segments, within a datagram or across the datagrams of a
//!   batch, enter the TUN device as one super-packet written straight from
//!   the receive buffer (see `coalesce`).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tun_rs::{SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::icmp::Icmp;
use super::shared::Shared;
use crate::backend::userspace::io::{read_tun, recv_batch, write_runs, CHUNK};
use crate::backend::userspace::thread::{
    add, wait, ErrorLog, Step, StopSignal, Tally, Wake, MAX_PACKET, MAX_UDP_PAYLOAD,
};
use crate::forward::decide::{inbound, outbound, Outbound};
use crate::forward::packet::DropReason;
use crate::forward::stats::Stats;

/// TUN -> UDP, with buffers owned by the forwarding thread.
pub(crate) struct TxPath {
    slot: usize,
    original: Vec<u8>,
    area: Vec<u8>,
    sizes: [usize; IDEAL_BATCH_SIZE],
    peers: [Option<SocketAddr>; IDEAL_BATCH_SIZE],
    batch: GsoBatch,
    max_segments: usize,
    fast_segments: usize,
    icmp: Icmp,
    read_errors: ErrorLog,
    out: Sender,
    /// Whether the last read was a super-packet (bulk, see `duty`).
    pub(crate) bulk: bool,
}

/// The sending half of a queue, owned by its TX path: the socket and its
/// GSO state, the addresses to send from, the error log and what the
/// current step sent.
struct Sender {
    sock: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    /// See [`Shared::send_from`].
    send_from: Option<(Option<Ipv4Addr>, Ipv6Addr)>,
    stats: Arc<Stats>,
    errors: ErrorLog,
    tally: Tally,
}

impl TxPath {
    /// The TX path of the queue of `sock` (with its GSO state).
    pub(crate) fn new(sock: Arc<UdpSocket>, state: Arc<UdpSocketState>, shared: &Shared, mtu: usize) -> TxPath {
        let slot = mtu.max(576);
        let max_segments = state.max_gso_segments().clamp(1, 64);
        let out = Sender {
            sock,
            state,
            send_from: shared.send_from,
            stats: shared.stats.clone(),
            errors: ErrorLog::new("udp backend: sending UDP"),
            tally: Tally::default(),
        };
        TxPath {
            slot,
            original: vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            area: vec![0u8; slot * IDEAL_BATCH_SIZE],
            sizes: [0; IDEAL_BATCH_SIZE],
            peers: [None; IDEAL_BATCH_SIZE],
            batch: GsoBatch::new(),
            max_segments,
            // Also bounded by the UDP payload limit.
            fast_segments: max_segments.min(MAX_UDP_PAYLOAD / slot).max(1),
            icmp: Icmp::new(),
            read_errors: ErrorLog::new("udp backend: reading from the TUN device"),
            out,
            bulk: false,
        }
    }

    /// Read one batch from the (non-blocking) TUN device and send it.
    pub(crate) fn step(&mut self, dev: &SyncDevice, shared: &Shared, stop: &StopSignal) -> Step {
        let slot = self.slot;
        let n = match read_tun(dev, &mut self.original, &mut self.area, slot, &mut self.sizes) {
            Ok(n) => n,
            Err(e) => {
                if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                    shared.stats.count_drop(DropReason::IoError);
                }
                return self.read_errors.step_after(e);
            }
        };
        self.read_errors.ok();
        self.bulk = n > 1;
        let snap = shared.table.load();
        self.out.tally = Tally::default();
        for i in 0..n {
            let pkt = &mut self.area[i * slot..i * slot + self.sizes[i]];
            self.peers[i] = match outbound(pkt, &snap) {
                Outbound::Send(peer) => Some(peer),
                Outbound::Reply(kind, reason) => {
                    shared.stats.count_drop(reason);
                    self.icmp.send(dev, shared, kind, pkt);
                    None
                }
                Outbound::Drop(reason) => {
                    shared.stats.count_drop(reason);
                    None
                }
            };
        }

        // Fast path: full-size segments for one peer, contiguous in the area.
        let uniform = n > 1
            && self.peers[0].is_some()
            && (1..n).all(|i| self.peers[i] == self.peers[0])
            && self.sizes[..n - 1].iter().all(|s| *s == slot);
        if let (true, Some(dest)) = (uniform, self.peers[0]) {
            let mut first = 0;
            while first < n {
                let last = (first + self.fast_segments).min(n);
                let bytes = (last - 1 - first) * slot + self.sizes[last - 1];
                let contents = &self.area[first * slot..first * slot + bytes];
                let gso = Gso { dest, contents, seg: slot, count: last - first };
                self.out.send(gso, stop);
                first = last;
            }
        } else {
            for i in 0..n {
                let Some(peer) = self.peers[i] else { continue };
                let pkt = &self.area[i * slot..i * slot + self.sizes[i]];
                if !self.batch.fits(peer, pkt.len(), self.max_segments) {
                    self.batch.flush(&mut self.out, stop);
                }
                self.batch.push(peer, pkt);
            }
            self.batch.flush(&mut self.out, stop);
        }
        add(&shared.stats.tx_packets, self.out.tally.packets);
        add(&shared.stats.tx_bytes, self.out.tally.bytes);
        Step::Worked
    }
}

/// UDP -> TUN, with buffers owned by the forwarding thread.
pub(crate) struct RxPath {
    rx: Vec<u8>,
    metas: [RecvMeta; BATCH_SIZE],
    /// Where the valid segments of one datagram lie in `rx`.
    segs: Vec<(usize, usize)>,
    recv_errors: ErrorLog,
    write_errors: ErrorLog,
    /// Whether the last batch held a datagram of several GRO segments
    /// (bulk, see `duty`).
    pub(crate) bulk: bool,
}

impl RxPath {
    pub(crate) fn new() -> RxPath {
        RxPath {
            rx: vec![0u8; CHUNK * BATCH_SIZE],
            metas: [RecvMeta::default(); BATCH_SIZE],
            segs: Vec::with_capacity(64),
            recv_errors: ErrorLog::new("udp backend: receiving UDP"),
            write_errors: ErrorLog::new("udp backend: writing to the TUN device"),
            bulk: false,
        }
    }

    /// Receive one batch of datagrams without blocking and write what is
    /// valid into the TUN device, runs of one TCP flow as one write each
    /// (see `coalesce`).
    pub(crate) fn step(&mut self, dev: &SyncDevice, sock: &UdpSocket, state: &UdpSocketState, shared: &Shared) -> Step {
        let n = match recv_batch(sock, state, &mut self.rx, &mut self.metas) {
            Ok(n) => n,
            Err(e) => return self.recv_errors.step_after(e),
        };
        self.recv_errors.ok();
        let snap = shared.table.load();
        // The valid segments of every datagram of the batch, in order: a
        // flow's run may continue from one datagram into the next (a TUN
        // super-packet larger than one UDP GSO send arrives as two).
        self.segs.clear();
        self.bulk = false;
        for i in 0..n {
            let meta = &self.metas[i];
            let base = i * CHUNK;
            let len = meta.len.min(CHUNK);
            let stride = if meta.stride == 0 { len.max(1) } else { meta.stride };
            self.bulk |= stride < len;
            if !shared.arrival.admits(meta.interface_index, meta.dst_ip) {
                for _ in (0..len.max(1)).step_by(stride) {
                    shared.stats.count_drop(DropReason::WrongPath);
                }
                continue;
            }
            if len == 0 {
                if let Err(reason) = inbound(&[], &meta.addr, &snap, &shared.local) {
                    shared.stats.count_drop(reason);
                }
                continue;
            }
            for at in (0..len).step_by(stride) {
                let seg = &self.rx[base + at..base + (at + stride).min(len)];
                match inbound(seg, &meta.addr, &snap, &shared.local) {
                    Ok(()) => self.segs.push((base + at, seg.len())),
                    Err(reason) => shared.stats.count_drop(reason),
                }
            }
        }
        let written = write_runs(dev, &self.rx, &self.segs, &mut self.write_errors);
        for _ in 0..written.dropped {
            shared.stats.count_drop(DropReason::IoError);
        }
        add(&shared.stats.rx_packets, written.packets);
        add(&shared.stats.rx_bytes, written.bytes);
        if let Some(e) = written.fatal {
            return Step::Failed(e);
        }
        Step::Worked
    }
}

/// A run of packets to one peer, laid out back to back for one GSO send.
struct GsoBatch {
    buf: Vec<u8>,
    len: usize,
    count: usize,
    seg: usize,
    dest: Option<SocketAddr>,
    closed: bool,
}

impl GsoBatch {
    fn new() -> GsoBatch {
        GsoBatch { buf: vec![0u8; MAX_PACKET], len: 0, count: 0, seg: 0, dest: None, closed: false }
    }

    /// Whether `pkt` bytes for `dest` can join the batch.
    fn fits(&self, dest: SocketAddr, pkt: usize, max_segments: usize) -> bool {
        self.count == 0
            || (self.dest == Some(dest)
                && !self.closed
                && pkt <= self.seg
                && self.count < max_segments
                && self.len + pkt <= MAX_UDP_PAYLOAD)
    }

    fn push(&mut self, dest: SocketAddr, pkt: &[u8]) {
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

    fn flush(&mut self, out: &mut Sender, stop: &StopSignal) {
        if let (Some(dest), true) = (self.dest, self.count > 0) {
            let gso = Gso { dest, contents: &self.buf[..self.len], seg: self.seg, count: self.count };
            out.send(gso, stop);
        }
        self.len = 0;
        self.count = 0;
        self.dest = None;
        self.closed = false;
    }
}

/// One UDP send: `count` segments of `seg` bytes (the last may be shorter).
struct Gso<'a> {
    dest: SocketAddr,
    contents: &'a [u8],
    seg: usize,
    count: usize,
}

impl Sender {
    /// Send one GSO batch, waiting while the socket's buffer is full. Send
    /// errors are counted and logged but never end the thread: a peer's
    /// ICMP errors show up as send errors on the shared socket.
    fn send(&mut self, gso: Gso<'_>, stop: &StopSignal) {
        let transmit = Transmit {
            destination: gso.dest,
            ecn: None,
            contents: gso.contents,
            segment_size: (gso.count > 1).then_some(gso.seg),
            // A socket bound to [::] sends from the public address of the
            // destination's family, which is what the peer accepts.
            src_ip: self
                .send_from
                .and_then(|(v4, v6)| if gso.dest.is_ipv4() { v4.map(Into::into) } else { Some(v6.into()) }),
        };
        loop {
            let e = match self.state.try_send((&*self.sock).into(), &transmit) {
                Ok(()) => {
                    self.errors.ok();
                    self.tally.packets += gso.count as u64;
                    self.tally.bytes += gso.contents.len() as u64;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match wait(self.sock.as_raw_fd(), libc::POLLOUT, stop) {
                        Ok(Wake::Ready(_)) => continue,
                        Ok(Wake::Stop) => e,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            let _ = self.errors.note(e);
            for _ in 0..gso.count {
                self.stats.count_drop(DropReason::IoError);
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, n], 8285))
    }

    #[test]
    fn gso_batches_stop_at_the_udp_payload_limit_and_at_short_segments() {
        let mut b = GsoBatch::new();
        let pkt = vec![0u8; 1472];
        let mut n = 0;
        while b.fits(dest(2), pkt.len(), 64) {
            b.push(dest(2), &pkt);
            n += 1;
        }
        assert_eq!(n, MAX_UDP_PAYLOAD / 1472, "44 segments of 1472 bytes fit in one datagram burst");
        assert!(b.len <= MAX_UDP_PAYLOAD);

        let mut b = GsoBatch::new();
        b.push(dest(2), &pkt);
        assert!(!b.fits(dest(3), 1472, 64), "another peer starts a new batch");
        assert!(!b.fits(dest(2), 1500, 64), "a bigger packet cannot follow");
        b.push(dest(2), &pkt[..100]);
        assert!(!b.fits(dest(2), 100, 64), "nothing follows a short last segment");
        assert!(!GsoBatch { count: 64, ..GsoBatch::new() }.fits(dest(2), 10, 64), "segment cap");
    }
}
