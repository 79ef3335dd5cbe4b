//! The batched reads and writes both userspace backends' offload paths
//! make: one TUN read split into packets (`tun-rs`), one `recvmmsg` with
//! UDP GRO (`quinn-udp`), and one `writev` of a run of packets into the
//! TUN device as a super-packet (see `forward::coalesce`).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use tun_rs::{SyncDevice, IDEAL_BATCH_SIZE};

use super::sys;
use super::thread::{ErrorLog, MAX_PACKET};
use crate::forward::coalesce::{runs, super_header, Segments, Spans, MAX_HEADER, MAX_RUN, VNET_HDR_LEN};

// The pure coalescing code writes virtio-net headers of its own length.
const _: () = assert!(VNET_HDR_LEN == tun_rs::VIRTIO_NET_HDR_LEN);

/// One read of the TUN device: a packet, or a super-packet split into
/// packets of at most `slot` bytes laid out in `area` at `slot` strides
/// (`original` holds what the read returned); their sizes in `sizes`.
pub(crate) fn read_tun(
    dev: &SyncDevice,
    original: &mut [u8],
    area: &mut [u8],
    slot: usize,
    sizes: &mut [usize; IDEAL_BATCH_SIZE],
) -> io::Result<usize> {
    let mut chunks = area.chunks_mut(slot);
    let mut slots: [&mut [u8]; IDEAL_BATCH_SIZE] = std::array::from_fn(|_| chunks.next().unwrap_or_default());
    dev.recv_multiple(original, &mut slots, sizes, 0)
}

/// The largest datagram GRO hands over in one piece: the stride of the
/// receive buffers.
pub(crate) const CHUNK: usize = MAX_PACKET + 1;

/// One `recvmmsg` (with GRO) into `rx`, [`CHUNK`] bytes per datagram; the
/// datagrams' lengths, strides and sources in `metas`.
pub(crate) fn recv_batch(
    sock: &UdpSocket,
    state: &UdpSocketState,
    rx: &mut [u8],
    metas: &mut [RecvMeta; BATCH_SIZE],
) -> io::Result<usize> {
    let mut chunks = rx.chunks_mut(CHUNK);
    let mut iovs: [IoSliceMut; BATCH_SIZE] =
        std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
    state.recv(sock.into(), &mut iovs, metas)
}

/// One datagram into `buf` (GRO off: the plain path), with its length,
/// source, destination and interface in the returned metadata.
pub(crate) fn recv_one(sock: &UdpSocket, state: &UdpSocketState, buf: &mut [u8]) -> io::Result<RecvMeta> {
    let mut meta = [RecvMeta::default()];
    state.recv(sock.into(), &mut [IoSliceMut::new(buf)], &mut meta)?;
    Ok(meta[0])
}

/// The virtio-net header of a packet written as it is.
const PLAIN_VNET: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Write one run into the TUN device with one `writev`: a packet as it
/// came, or a TCP super-packet whose payloads are read from where they lie.
pub(crate) fn write_run(dev: &SyncDevice, run: &[&[u8]]) -> io::Result<()> {
    let mut header = [0u8; MAX_HEADER];
    let mut iov = [IoSlice::new(&[]); 1 + MAX_RUN];
    let slice = IoSlice::new;
    let count = if run.len() == 1 {
        iov[0] = slice(&PLAIN_VNET);
        iov[1] = slice(run[0]);
        2
    } else {
        let len = super_header(run, &mut header);
        let hdr = len - VNET_HDR_LEN;
        iov[0] = slice(&header[..len]);
        for (i, seg) in run.iter().enumerate() {
            iov[1 + i] = slice(&seg[hdr..]);
        }
        1 + run.len()
    };
    sys::writev(dev.as_raw_fd(), &iov[..count]).map(|_| ())
}

/// Send one datagram; a failure is logged (rate-limited), never fatal: a
/// peer's ICMP errors show up as send errors on the shared socket.
pub(crate) fn send_one(sock: &UdpSocket, buf: &[u8], to: SocketAddr, errors: &mut ErrorLog) {
    match sock.send_to(buf, to) {
        Ok(_) => errors.ok(),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => {
            let _ = errors.note(e);
        }
    }
}

/// What [`write_runs`] wrote and lost.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    /// Packets of failed writes.
    pub(crate) dropped: u64,
    /// A persistent error that stopped the writing (the thread should end).
    pub(crate) fatal: Option<io::Error>,
}

/// Write the packets at `spans` of `buf` into the TUN device, runs of one
/// TCP flow as one super-packet each (see `forward::coalesce`), from where
/// they lie: nothing is copied or allocated. Failures are noted in
/// `errors`; a persistent one stops the writing.
pub(crate) fn write_runs(dev: &SyncDevice, buf: &[u8], spans: &[(usize, usize)], errors: &mut ErrorLog) -> Written {
    let segs = Spans { buf, spans };
    let mut out = Written::default();
    let mut run: [&[u8]; MAX_RUN] = [&[]; MAX_RUN];
    for (first, count) in runs(&segs) {
        for (k, slot) in run.iter_mut().take(count).enumerate() {
            *slot = segs.seg(first + k);
        }
        let run = &run[..count];
        match write_run(dev, run) {
            Ok(()) => {
                errors.ok();
                out.packets += count as u64;
                out.bytes += run.iter().map(|s| s.len() as u64).sum::<u64>();
            }
            Err(e) => {
                out.dropped += count as u64;
                if let Err(e) = errors.note(e) {
                    out.fatal = Some(e);
                    return out;
                }
            }
        }
    }
    out
}
