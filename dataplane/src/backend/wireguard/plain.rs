//! The wireguard backend's plain path, for a kernel that refuses TUN
//! offloads: one packet per system call each way.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use boringtun::noise::{Tunn, TunnResult};
use tun_rs::SyncDevice;

use super::handshake::{admit, no_session, Inbox, Replies};
use super::state::{lock, roamed, WgShared};
use crate::backend::userspace::io::send_one;
use crate::backend::userspace::thread::{wait, ErrorLog, Exit, Step, StopSignal, Wake};
use crate::forward::wg::{received, Received, WgDrop};

/// Largest packet or datagram, and what encryption adds at most.
const MAX_PACKET: usize = 65535;
const OVERHEAD: usize = 148;

/// Read from `fd` with `read` until a packet comes (`Some`), the stop
/// signal fires or a persistent error (`Err` with how the thread ends).
fn next<T>(
    fd: i32,
    errors: &mut ErrorLog,
    stop: &StopSignal,
    mut read: impl FnMut() -> io::Result<T>,
) -> Result<T, Exit> {
    loop {
        if stop.fired() {
            return Err(Exit::Stopped);
        }
        match read() {
            Ok(r) => {
                errors.ok();
                return Ok(r);
            }
            Err(e) => match errors.step_after(e) {
                Step::Worked => {}
                Step::Idle => match wait(fd, libc::POLLIN, stop) {
                    Ok(Wake::Ready(_)) => {}
                    Ok(Wake::Stop) => return Err(Exit::Stopped),
                    Err(e) => return Err(Exit::Failed(e)),
                },
                Step::Failed(e) => return Err(Exit::Failed(e)),
            },
        }
    }
}

/// TUN -> UDP: encrypt each packet for the peer whose AllowedIPs hold its
/// destination.
pub(crate) fn tx(dev: &SyncDevice, sock: &UdpSocket, shared: &WgShared, stop: &StopSignal) -> Exit {
    let mut pkt = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET + OVERHEAD];
    let mut reads = ErrorLog::new("reading from flannel-wg");
    let mut sends = ErrorLog::new("sending WireGuard datagrams");
    loop {
        let n = match next(dev.as_raw_fd(), &mut reads, stop, || dev.recv(&mut pkt)) {
            Ok(n) => n,
            Err(exit) => return exit,
        };
        let packet = &pkt[..n];
        let Some(dst) = Tunn::dst_address(packet) else {
            shared.stats.drop(WgDrop::NotIp);
            continue;
        };
        let set = shared.peers.load();
        let Some(peer) = set.table.route(dst) else {
            shared.stats.drop(WgDrop::NoRoute);
            continue;
        };
        let Some(state) = set.states.get(&peer.index) else { continue };
        let mut session = lock(&state.session);
        let endpoint = session.endpoint;
        let result = session.tunn(&shared.maker).encapsulate(packet, &mut out);
        drop(session);
        match result {
            TunnResult::WriteToNetwork(b) => {
                shared.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                shared.stats.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                send_one(sock, b, endpoint, &mut sends);
            }
            // Queued until the handshake completes (it has been sent).
            TunnResult::Done => {}
            TunnResult::Err(e) => shared.stats.drop(WgDrop::from_error(&e)),
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
        }
    }
}

/// UDP -> TUN: handshake messages to the handshake thread, data to its
/// peer's session; what decrypts and passes the AllowedIPs check enters
/// the TUN device.
pub(crate) fn rx(dev: &SyncDevice, sock: &UdpSocket, shared: &WgShared, inbox: &Inbox, stop: &StopSignal) -> Exit {
    let mut dg = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET + OVERHEAD];
    let mut reads = ErrorLog::new("receiving WireGuard datagrams");
    let mut sends = ErrorLog::new("sending WireGuard datagrams");
    let mut cookie = [0u8; 64];
    let mut writes = ErrorLog::new("writing to flannel-wg");
    loop {
        let (n, from) = match next(sock.as_raw_fd(), &mut reads, stop, || sock.recv_from(&mut dg)) {
            Ok(r) => r,
            Err(exit) => return exit,
        };
        let datagram = &dg[..n];
        let set = shared.peers.load();
        let mut replies = Replies { sock, buf: &mut cookie, sends: &mut sends };
        let Some((index, state)) = admit(datagram, from, &set, shared, inbox, &mut replies) else { continue };
        let verdict = {
            let mut session = lock(&state.session);
            // A resting peer has no session to open data with.
            let Some(tunn) = session.tunn_for(datagram[0], &shared.maker) else {
                drop(session);
                shared.stats.drop(WgDrop::NoSession);
                no_session(datagram, from, &set, inbox);
                continue;
            };
            let result = tunn.decapsulate(Some(from.ip()), datagram, &mut out);
            if let Some(was) = session.roam(datagram[0], from, &result) {
                roamed(shared, &state.subnet, was, from);
            }
            received(&set.table, index, &result)
        };
        match verdict {
            Received::ToTunnel(len) => {
                shared.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                shared.stats.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                match dev.send(&out[..len]) {
                    Ok(_) => writes.ok(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        if let Err(e) = writes.note(e) {
                            return Exit::Failed(e);
                        }
                    }
                }
            }
            Received::ToNetwork(len) => send_one(sock, &out[..len], from, &mut sends),
            Received::Nothing => {}
            Received::Drop(reason) => {
                shared.stats.drop(reason);
                if reason == WgDrop::NoSession {
                    no_session(datagram, from, &set, inbox);
                }
            }
        }
    }
}
