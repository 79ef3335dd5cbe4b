//! The wireguard backend's offload path: the udp backend's batching with
//! encryption in the middle, so that the cipher is the only extra cost per
//! byte.
//!
//! - TX: a TUN read returns a TCP/UDP super-packet split into MTU-sized
//!   packets (`tun-rs`); each is encrypted straight into one send buffer,
//!   and a run of equal-sized messages to one peer leaves in one UDP GSO
//!   send (equal packets give equal messages).
//! - RX: `recvmmsg` with UDP GRO returns batches of messages; each is
//!   decrypted into its own slot, and runs of one TCP flow's packets enter
//!   the TUN device as one super-packet (the udp backend's `write_run`).
//!
//! Handshake messages go to the handshake thread (`handshake`); one that
//! starts a session from the TX side is sent on its own.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use boringtun::noise::{Tunn, TunnResult};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tun_rs::{SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::handshake::{admit, no_session, Inbox, Replies};
use super::state::{lock, roamed, WgShared};
use crate::backend::userspace::io::{read_tun, recv_batch, send_one, write_runs, CHUNK};
use crate::backend::userspace::thread::{wait, ErrorLog, Step, StopSignal, Wake, MAX_PACKET, MAX_UDP_PAYLOAD};
use crate::forward::wg::{received, Received, WgDrop};

/// The largest data message that carries `len` bytes of packet: header
/// (16), the packet padded to 16 bytes (the protocol allows it; boringtun
/// does not pad), the tag (16).
pub(crate) fn max_message_len(len: usize) -> usize {
    16 + len.div_ceil(16) * 16 + 16
}

/// The type byte of a data message.
const DATA: u8 = 4;

/// TUN -> UDP on the offload path.
pub(crate) struct FastTx {
    slot: usize,
    original: Vec<u8>,
    area: Vec<u8>,
    sizes: [usize; IDEAL_BATCH_SIZE],
    /// Encrypted messages, back to back.
    out: Vec<u8>,
    scratch: Vec<u8>,
    max_segments: usize,
    /// Whether the last read was a super-packet (bulk, see `userspace::duty`).
    bulk: bool,
    reads: ErrorLog,
    sends: ErrorLog,
    sock: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
}

/// A run of messages for one peer in `FastTx::out`.
#[derive(Clone, Copy)]
struct Run {
    dest: SocketAddr,
    len: usize,
    seg: usize,
    count: usize,
    closed: bool,
}

impl FastTx {
    /// The TX path of the queue of `sock` (with its GSO state).
    pub(crate) fn new(sock: Arc<UdpSocket>, state: Arc<UdpSocketState>, mtu: usize) -> FastTx {
        let slot = mtu.max(576);
        FastTx {
            slot,
            original: vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            area: vec![0u8; slot * IDEAL_BATCH_SIZE],
            sizes: [0; IDEAL_BATCH_SIZE],
            out: vec![0u8; MAX_PACKET + 256],
            scratch: vec![0u8; MAX_PACKET + 256],
            max_segments: state.max_gso_segments().clamp(1, 64),
            bulk: false,
            reads: ErrorLog::new("reading from flannel-wg"),
            sends: ErrorLog::new("sending WireGuard datagrams"),
            sock,
            state,
        }
    }

    /// Whether the last read was a super-packet.
    pub(crate) fn bulk(&self) -> bool {
        self.bulk
    }

    /// Read one batch from the TUN device, encrypt and send it.
    pub(crate) fn step(&mut self, dev: &SyncDevice, shared: &WgShared, stop: &StopSignal) -> Step {
        let (sock, state) = (&*self.sock, &*self.state);
        let slot = self.slot;
        let n = match read_tun(dev, &mut self.original, &mut self.area, slot, &mut self.sizes) {
            Ok(n) => n,
            Err(e) => return self.reads.step_after(e),
        };
        self.reads.ok();
        self.bulk = n > 1;
        let set = shared.peers.load();
        let mut run: Option<Run> = None;
        let (mut packets, mut bytes) = (0u64, 0u64);
        for i in 0..n {
            let pkt = &self.area[i * slot..i * slot + self.sizes[i]];
            let Some(dst) = Tunn::dst_address(pkt) else {
                shared.stats.drop(WgDrop::NotIp);
                continue;
            };
            let Some(peer) = set.table.route(dst) else {
                shared.stats.drop(WgDrop::NoRoute);
                continue;
            };
            let Some(peer_state) = set.states.get(&peer.index) else { continue };
            // Room for the message at its largest (padded to 16 bytes;
            // boringtun does not pad, so it is 32 bytes more than the packet).
            let room = run.as_ref().is_some_and(|r| {
                !r.closed && r.count < self.max_segments && r.len + max_message_len(pkt.len()) <= MAX_UDP_PAYLOAD
            });
            if !room {
                if let Some(r) = run.take() {
                    flush(&self.out, &mut self.sends, sock, state, stop, &r);
                }
            }
            let at = run.as_ref().map_or(0, |r| r.len);
            // The endpoint is read under the lock the message is sealed in,
            // so a roam never splits them.
            let mut session = lock(&peer_state.session);
            let dest = session.endpoint;
            let result = session.tunn(&shared.maker).encapsulate(pkt, &mut self.out[at..]);
            drop(session);
            match result {
                TunnResult::WriteToNetwork(m) if m.first() == Some(&DATA) => {
                    let len = m.len();
                    packets += 1;
                    bytes += pkt.len() as u64;
                    match &mut run {
                        Some(r) if r.dest == dest && len <= r.seg => {
                            r.len += len;
                            r.count += 1;
                            // A shorter message must be the last of a GSO send.
                            r.closed |= len < r.seg;
                        }
                        // Longer than the run's messages, or for another
                        // endpoint: it starts the next run.
                        Some(r) => {
                            let done = Run { len: r.len, ..*r };
                            flush(&self.out, &mut self.sends, sock, state, stop, &done);
                            self.out.copy_within(at..at + len, 0);
                            run = Some(Run { dest, len, seg: len, count: 1, closed: false });
                        }
                        None => run = Some(Run { dest, len, seg: len, count: 1, closed: false }),
                    }
                }
                // No session yet: the packet is queued and this is the
                // handshake that starts one, sent on its own.
                TunnResult::WriteToNetwork(m) => {
                    let len = m.len();
                    self.scratch[..len].copy_from_slice(&self.out[at..at + len]);
                    send_one(sock, &self.scratch[..len], dest, &mut self.sends);
                }
                TunnResult::Done => {}
                TunnResult::Err(e) => shared.stats.drop(WgDrop::from_error(&e)),
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
        if let Some(r) = run.take() {
            flush(&self.out, &mut self.sends, sock, state, stop, &r);
        }
        shared.stats.tx_packets.fetch_add(packets, Ordering::Relaxed);
        shared.stats.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        Step::Worked
    }
}

/// One GSO send of a run, waiting while the socket's buffer is full.
fn flush(out: &[u8], sends: &mut ErrorLog, sock: &UdpSocket, state: &UdpSocketState, stop: &StopSignal, r: &Run) {
    let transmit = Transmit {
        destination: r.dest,
        ecn: None,
        contents: &out[..r.len],
        segment_size: (r.count > 1).then_some(r.seg),
        src_ip: None,
    };
    loop {
        match state.try_send(sock.into(), &transmit) {
            Ok(()) => {
                sends.ok();
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match wait(sock.as_raw_fd(), libc::POLLOUT, stop) {
                Ok(Wake::Ready(_)) => continue,
                _ => return,
            },
            Err(e) => {
                let _ = sends.note(e);
                return;
            }
        }
    }
}

/// UDP -> TUN on the offload path.
pub(crate) struct FastRx {
    rx: Vec<u8>,
    metas: [RecvMeta; BATCH_SIZE],
    /// Decrypted packets, one slot each.
    plain: Vec<u8>,
    slot: usize,
    /// Where the decrypted packets of one batch lie in `plain`.
    segs: Vec<(usize, usize)>,
    /// A reply being sent (what a data message's decryption answers).
    reply: Vec<u8>,
    /// Whether the last batch held a datagram of several GRO segments
    /// (bulk, see `userspace::duty`).
    bulk: bool,
    recvs: ErrorLog,
    sends: ErrorLog,
    writes: ErrorLog,
    /// A cookie reply being sent (under handshake load).
    cookie: [u8; 64],
    sock: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
}

/// Decrypted packets per batch, at most: a GRO read holds up to 64
/// segments per datagram.
const MAX_SEGMENTS: usize = 64 * BATCH_SIZE;

impl FastRx {
    /// The RX path of the queue of `sock` (with its GRO state).
    pub(crate) fn new(sock: Arc<UdpSocket>, state: Arc<UdpSocketState>, mtu: usize) -> FastRx {
        // A slot holds the largest packet a peer with our MTU sends; a
        // larger one is decrypted in a slot of its own at the end.
        let slot = (mtu + 64).max(2048);
        FastRx {
            rx: vec![0u8; CHUNK * BATCH_SIZE],
            metas: [RecvMeta::default(); BATCH_SIZE],
            plain: vec![0u8; slot * MAX_SEGMENTS + MAX_PACKET + 256],
            slot,
            segs: Vec::with_capacity(MAX_SEGMENTS),
            reply: vec![0u8; MAX_PACKET + 256],
            bulk: false,
            recvs: ErrorLog::new("receiving WireGuard datagrams"),
            sends: ErrorLog::new("sending WireGuard datagrams"),
            writes: ErrorLog::new("writing to flannel-wg"),
            cookie: [0; 64],
            sock,
            state,
        }
    }

    /// Whether the last batch was bulk.
    pub(crate) fn bulk(&self) -> bool {
        self.bulk
    }

    /// Receive one batch without blocking, decrypt it and write what is
    /// admitted into the TUN device.
    pub(crate) fn step(&mut self, dev: &SyncDevice, shared: &WgShared, inbox: &Inbox) -> Step {
        let (sock, state) = (&*self.sock, &*self.state);
        let n = match recv_batch(sock, state, &mut self.rx, &mut self.metas) {
            Ok(n) => n,
            Err(e) => return self.recvs.step_after(e),
        };
        self.recvs.ok();
        self.segs.clear();
        self.bulk = false;
        let set = shared.peers.load();
        for i in 0..n {
            let meta = self.metas[i];
            let from = meta.addr;
            let base = i * CHUNK;
            let len = meta.len.min(CHUNK);
            let stride = if meta.stride == 0 { len.max(1) } else { meta.stride };
            self.bulk |= stride < len;
            for at in (0..len).step_by(stride) {
                let dg = &self.rx[base + at..base + (at + stride).min(len)];
                let mut replies = Replies { sock, buf: &mut self.cookie, sends: &mut self.sends };
                let Some((index, peer)) = admit(dg, from, &set, shared, inbox, &mut replies) else { continue };
                // A packet larger than a slot (a peer with a larger MTU)
                // goes in the spare space after the slots.
                let k = self.segs.len();
                let start =
                    if dg.len() <= self.slot && k < MAX_SEGMENTS { k * self.slot } else { self.slot * MAX_SEGMENTS };
                if start == self.slot * MAX_SEGMENTS {
                    write_all(&mut self.segs, &self.plain, &mut self.writes, dev, shared);
                }
                let verdict = {
                    let mut session = lock(&peer.session);
                    // A resting peer has no session to open data with.
                    let Some(tunn) = session.tunn_for(dg[0], &shared.maker) else {
                        drop(session);
                        shared.stats.drop(WgDrop::NoSession);
                        no_session(dg, from, &set, inbox);
                        continue;
                    };
                    let result = tunn.decapsulate(Some(from.ip()), dg, &mut self.plain[start..]);
                    if let Some(was) = session.roam(dg[0], from, &result) {
                        roamed(shared, &peer.subnet, was, from);
                    }
                    received(&set.table, index, &result)
                };
                match verdict {
                    Received::ToTunnel(len) => {
                        self.segs.push((start, len));
                        if start == self.slot * MAX_SEGMENTS {
                            write_all(&mut self.segs, &self.plain, &mut self.writes, dev, shared);
                        }
                    }
                    Received::ToNetwork(len) => {
                        self.reply[..len].copy_from_slice(&self.plain[start..start + len]);
                        send_one(sock, &self.reply[..len], from, &mut self.sends);
                    }
                    Received::Nothing => {}
                    Received::Drop(reason) => {
                        shared.stats.drop(reason);
                        if reason == WgDrop::NoSession {
                            no_session(dg, from, &set, inbox);
                        }
                    }
                }
            }
        }
        write_all(&mut self.segs, &self.plain, &mut self.writes, dev, shared);
        Step::Worked
    }
}

/// Write the decrypted packets gathered so far (`segs` in `plain`), runs
/// of one TCP flow as one super-packet each.
fn write_all(
    segs_at: &mut Vec<(usize, usize)>,
    plain: &[u8],
    writes: &mut ErrorLog,
    dev: &SyncDevice,
    shared: &WgShared,
) {
    if segs_at.is_empty() {
        return;
    }
    let written = write_runs(dev, plain, segs_at, writes);
    for _ in 0..written.dropped {
        shared.stats.drop(WgDrop::Other);
    }
    shared.stats.rx_packets.fetch_add(written.packets, Ordering::Relaxed);
    shared.stats.rx_bytes.fetch_add(written.bytes, Ordering::Relaxed);
    segs_at.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_message_is_the_packet_padded_to_16_bytes_and_32_more() {
        assert_eq!(max_message_len(0), 32, "a keepalive");
        assert_eq!(max_message_len(1), 48);
        assert_eq!(max_message_len(16), 48);
        assert_eq!(max_message_len(1420), 16 + 1424 + 16);
    }
}
