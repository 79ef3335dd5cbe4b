//! The plain path (`Offload: false`): one packet per syscall each way, the
//! baseline the benchmark compares the offload path against. Same step
//! shape as [`super::offload`]: each call handles one packet without blocking,
//! and the same arrival check (the external interface, the public address).

use std::net::UdpSocket;

use quinn_udp::UdpSocketState;
use tun_rs::SyncDevice;

use super::icmp::Icmp;
use super::shared::Shared;
use crate::backend::userspace::io::recv_one;
use crate::backend::userspace::thread::{add, ErrorLog, Step, MAX_PACKET};
use crate::forward::decide::{inbound, outbound, Outbound};
use crate::forward::packet::DropReason;

/// TUN -> UDP, one packet per step.
pub(crate) struct PlainTx {
    buf: Vec<u8>,
    icmp: Icmp,
    read_errors: ErrorLog,
    send_errors: ErrorLog,
}

impl PlainTx {
    pub(crate) fn new() -> PlainTx {
        PlainTx {
            buf: vec![0u8; MAX_PACKET],
            icmp: Icmp::new(),
            read_errors: ErrorLog::new("udp backend: reading from the TUN device"),
            send_errors: ErrorLog::new("udp backend: sending UDP"),
        }
    }

    pub(crate) fn step(&mut self, dev: &SyncDevice, sock: &UdpSocket, shared: &Shared) -> Step {
        let n = match dev.recv(&mut self.buf) {
            Ok(n) => n,
            Err(e) => return self.read_errors.step_after(e),
        };
        self.read_errors.ok();
        let snap = shared.table.load();
        let pkt = &mut self.buf[..n];
        let peer = match outbound(pkt, &snap) {
            Outbound::Send(peer) => peer,
            Outbound::Reply(kind, reason) => {
                shared.stats.count_drop(reason);
                self.icmp.send(dev, shared, kind, pkt);
                return Step::Worked;
            }
            Outbound::Drop(reason) => {
                shared.stats.count_drop(reason);
                return Step::Worked;
            }
        };
        match sock.send_to(pkt, peer) {
            Ok(_) => {
                self.send_errors.ok();
                add(&shared.stats.tx_packets, 1);
                add(&shared.stats.tx_bytes, n as u64);
            }
            Err(e) => {
                // Never fatal: a peer's ICMP errors show up here.
                let _ = self.send_errors.note(e);
                shared.stats.count_drop(DropReason::IoError);
            }
        }
        Step::Worked
    }
}

/// UDP -> TUN, one datagram per step.
pub(crate) struct PlainRx {
    buf: Vec<u8>,
    recv_errors: ErrorLog,
    write_errors: ErrorLog,
}

impl PlainRx {
    pub(crate) fn new() -> PlainRx {
        PlainRx {
            buf: vec![0u8; MAX_PACKET + 1],
            recv_errors: ErrorLog::new("udp backend: receiving UDP"),
            write_errors: ErrorLog::new("udp backend: writing to the TUN device"),
        }
    }

    pub(crate) fn step(&mut self, dev: &SyncDevice, sock: &UdpSocket, state: &UdpSocketState, shared: &Shared) -> Step {
        let meta = match recv_one(sock, state, &mut self.buf) {
            Ok(m) => m,
            Err(e) => return self.recv_errors.step_after(e),
        };
        self.recv_errors.ok();
        if !shared.arrival.admits(meta.interface_index, meta.dst_ip) {
            shared.stats.count_drop(DropReason::WrongPath);
            return Step::Worked;
        }
        let n = meta.len.min(self.buf.len());
        let snap = shared.table.load();
        if let Err(reason) = inbound(&self.buf[..n], &meta.addr, &snap, &shared.local) {
            shared.stats.count_drop(reason);
            return Step::Worked;
        }
        match dev.send(&self.buf[..n]) {
            Ok(_) => {
                self.write_errors.ok();
                add(&shared.stats.rx_packets, 1);
                add(&shared.stats.rx_bytes, n as u64);
                Step::Worked
            }
            Err(e) => {
                shared.stats.count_drop(DropReason::IoError);
                match self.write_errors.note(e) {
                    Ok(()) => Step::Worked,
                    Err(e) => Step::Failed(e),
                }
            }
        }
    }
}
