//! `LatencyLane`: one extra forwarding queue for small packets, so that a
//! ping or a request beside a bulk stream does not wait behind the bulk
//! stream's queue (docs/benchmarks.md, "a real-time lane"). On by default
//! on both userspace backends where the kernel lets weft load it.
//!
//! eBPF socket-filter programs classify packets in both directions: the
//! kernel runs one as the TUN device's steering program
//! (`TUNSETSTEERINGEBPF`: the packet a pod sends, which TUN queue reads it)
//! and one as the UDP sockets' reuseport program (`SO_ATTACH_REUSEPORT_EBPF`:
//! the datagram a peer sends, which socket receives it); each returns the
//! queue: the TUN device takes it modulo its queues, the reuseport group as
//! the index of the socket in bind order, which is the queue's.
//!
//! The pods' program ([`program`]) sees the pod packet from its IP header
//! on. The lane (the last queue) takes every IPv4 or IPv6 packet of at most
//! [`SMALL`] bytes except a TCP segment without payload (a bulk flow's ACKs
//! stay with its data, where they do not crowd the lane). The rest goes to
//! the bulk queues by a hash of the addresses (and ports of TCP and UDP),
//! so that a flow keeps to one queue. A flow whose segments are sometimes
//! small (the tail of a write) can see those overtake its large ones: TCP
//! copes, at the cost of a duplicate ACK.
//!
//! On the udp backend the datagram's payload is the pod packet, so the
//! sockets run the same program. A WireGuard datagram is sealed: the
//! wireguard backend's sockets run [`wire_program`], which sends every
//! datagram that can hold at most a small packet (a data message of at most
//! 32 + [`SMALL`] bytes, handshakes, keepalives) to the lane and the rest
//! to a bulk queue by the receiver's session index. A bulk flow's lone ACKs
//! take the lane there; a batch the kernel coalesced (GRO) is large.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::sys;

/// Packets of at most this many bytes (IP header included) may take the
/// lane: a ping (84), a DNS query, a small request.
pub(crate) const SMALL: i32 = 256;

// eBPF opcodes (linux/bpf_common.h, linux/bpf.h).
const LD_ABS_B: u8 = 0x30;
const LD_ABS_H: u8 = 0x28;
const LD_ABS_W: u8 = 0x20;
const LD_IND_B: u8 = 0x50;
const LD_IND_W: u8 = 0x40;
const LDX_MEM_W: u8 = 0x61;
const MOV_X: u8 = 0xbf;
const MOV_K: u8 = 0xb7;
const ADD_X: u8 = 0x0f;
const SUB_X: u8 = 0x1f;
const XOR_X: u8 = 0xaf;
const AND_K: u8 = 0x57;
const LSH_K: u8 = 0x67;
const RSH_K: u8 = 0x77;
const MOD_K: u8 = 0x97;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JGT_K: u8 = 0x25;
const JA: u8 = 0x05;
const EXIT: u8 = 0x95;

/// Registers: r0 the loaded value and the result, r1 the context on entry,
/// r6 the context (what `LD_ABS` needs), r7 the flow hash, r8 the IPv4
/// header length, r9 the protocol and scratch.
const R0: u8 = 0;
const R1: u8 = 1;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;

/// One instruction; a jump names its target label.
enum Op {
    Insn { code: u8, dst: u8, src: u8, off: i16, imm: i32 },
    Jump { code: u8, dst: u8, imm: i32, to: &'static str },
    Label(&'static str),
}

fn op(code: u8, dst: u8, src: u8, imm: i32) -> Op {
    Op::Insn { code, dst, src, off: 0, imm }
}

fn jump(code: u8, dst: u8, imm: i32, to: &'static str) -> Op {
    Op::Jump { code, dst, imm, to }
}

/// The classifier for `bulk` bulk queues (the lane is queue `bulk`), as
/// eBPF instructions of 8 bytes each.
pub(crate) fn program(bulk: u32) -> Vec<u64> {
    let bulk = bulk.max(1) as i32;
    let mut ops = vec![
        op(MOV_X, R6, R1, 0),
        op(MOV_K, R7, 0, 0),
        op(LD_ABS_B, 0, 0, 0),
        op(RSH_K, R0, 0, 4),
        jump(JEQ_K, R0, 4, "v4"),
        jump(JEQ_K, R0, 6, "v6"),
        jump(JA, 0, 0, "bulk"),
        // IPv4: r8 = header length, r7 = source ^ destination.
        Op::Label("v4"),
        op(LD_ABS_B, 0, 0, 0),
        op(AND_K, R0, 0, 0x0f),
        op(LSH_K, R0, 0, 2),
        op(MOV_X, R8, R0, 0),
        op(LD_ABS_W, 0, 0, 12),
        op(XOR_X, R7, R0, 0),
        op(LD_ABS_W, 0, 0, 16),
        op(XOR_X, R7, R0, 0),
        op(LD_ABS_B, 0, 0, 9),
    ];
    ops.extend(ports_and_size(op(LD_IND_W, 0, R8, 0), ["v4ports", "v4size"]));
    // TCP: payload = total length - IP header - TCP header.
    ops.extend([op(LD_IND_B, 0, R8, 12), op(RSH_K, R0, 0, 4), op(LSH_K, R0, 0, 2), op(ADD_X, R0, R8, 0)]);
    ops.extend(no_payload_to_bulk(2));
    // IPv6 (no extension headers: anything else is not TCP here).
    ops.push(Op::Label("v6"));
    for off in (8..40).step_by(4) {
        ops.push(op(LD_ABS_W, 0, 0, off));
        ops.push(op(XOR_X, R7, R0, 0));
    }
    ops.push(op(LD_ABS_B, 0, 0, 6));
    ops.extend(ports_and_size(op(LD_ABS_W, 0, 0, 40), ["v6ports", "v6size"]));
    // TCP: payload = payload length - TCP header.
    ops.extend([op(LD_ABS_B, 0, 0, 52), op(RSH_K, R0, 0, 4), op(LSH_K, R0, 0, 2)]);
    ops.extend(no_payload_to_bulk(4));
    ops.push(Op::Label("bulk"));
    ops.extend(bulk_or_lane(bulk));
    assemble(&ops)
}

/// The programs' end, after the `bulk` label: a bulk queue by the hash in
/// r7 folded to 16 bits; and at the `lane` label, the lane (queue `bulk`).
fn bulk_or_lane(bulk: i32) -> [Op; 12] {
    [
        op(MOV_X, R0, R7, 0),
        op(RSH_K, R0, 0, 16),
        op(XOR_X, R7, R0, 0),
        op(MOV_X, R0, R7, 0),
        op(RSH_K, R0, 0, 8),
        op(XOR_X, R0, R7, 0),
        op(AND_K, R0, 0, 0xffff),
        op(MOD_K, R0, 0, bulk),
        op(EXIT, 0, 0, 0),
        Op::Label("lane"),
        op(MOV_K, R0, 0, bulk),
        op(EXIT, 0, 0, 0),
    ]
}

/// The wireguard backend's socket classifier for `bulk` bulk queues: a
/// datagram of at most 32 + [`SMALL`] bytes (WireGuard's 16-byte header and
/// 16-byte tag around a small packet padded to 16, or any handshake
/// message) to the lane, the rest to a bulk queue by its receiver index
/// (bytes 4 to 8: one session, one queue).
pub(crate) fn wire_program(bulk: u32) -> Vec<u64> {
    let bulk = bulk.max(1) as i32;
    let mut ops = vec![
        op(MOV_X, R6, R1, 0),
        op(LDX_MEM_W, R0, R6, 0),
        jump(JGT_K, R0, 32 + SMALL, "bulk"),
        jump(JA, 0, 0, "lane"),
        Op::Label("bulk"),
        op(LD_ABS_W, 0, 0, 4),
        op(MOV_X, R7, R0, 0),
    ];
    ops.extend(bulk_or_lane(bulk));
    assemble(&ops)
}

/// With the protocol in r0: keep it in r9, hash the ports of TCP and UDP
/// (`load_ports` puts them in r0), send what is not small to a bulk queue
/// and what is small but not TCP to the lane. `labels`: this family's two.
fn ports_and_size(load_ports: Op, labels: [&'static str; 2]) -> [Op; 10] {
    let [ports, size] = labels;
    [
        op(MOV_X, R9, R0, 0),
        jump(JEQ_K, R9, 6, ports),
        jump(JNE_K, R9, 17, size),
        Op::Label(ports),
        load_ports,
        op(XOR_X, R7, R0, 0),
        Op::Label(size),
        op(LDX_MEM_W, R0, R6, 0),
        jump(JGT_K, R0, SMALL, "bulk"),
        jump(JNE_K, R9, 6, "lane"),
    ]
}

/// With the headers' length in r0: a TCP segment whose length field (a
/// 16-bit word at `len_at`) holds no more than the headers goes to a bulk
/// queue, one with payload to the lane.
fn no_payload_to_bulk(len_at: i32) -> [Op; 5] {
    [
        op(MOV_X, R9, R0, 0),
        op(LD_ABS_H, 0, 0, len_at),
        op(SUB_X, R0, R9, 0),
        jump(JEQ_K, R0, 0, "bulk"),
        jump(JA, 0, 0, "lane"),
    ]
}

/// Resolve the labels and encode.
fn assemble(ops: &[Op]) -> Vec<u64> {
    let mut at = std::collections::HashMap::new();
    let mut n = 0i32;
    for o in ops {
        match o {
            Op::Label(l) => {
                at.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let encode = |code: u8, dst: u8, src: u8, off: i16, imm: i32| {
        u64::from(code) | u64::from(dst | (src << 4)) << 8 | u64::from(off as u16) << 16 | u64::from(imm as u32) << 32
    };
    let mut out = Vec::new();
    for o in ops {
        match *o {
            Op::Label(_) => {}
            Op::Insn { code, dst, src, off, imm } => out.push(encode(code, dst, src, off, imm)),
            Op::Jump { code, dst, imm, to } => {
                let here = out.len() as i32;
                let off = at[to] - here - 1;
                out.push(encode(code, dst, 0, off as i16, imm));
            }
        }
    }
    out
}

// bpf(2) commands and the program type.
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `union bpf_attr` for `BPF_PROG_LOAD`, as far as it is used.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    /// Named so that it is zero: as padding it would be left undefined,
    /// and the kernel refuses unknown flags.
    prog_flags: u32,
}

/// What the UDP sockets carry, which decides their classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// The pod packet as it is (the udp backend): the pods' program.
    Plain,
    /// WireGuard messages: [`wire_program`].
    WireGuard,
}

/// One loaded classifier.
pub(crate) struct Classifier {
    fd: OwnedFd,
}

impl Classifier {
    /// Load the pods' classifier for `bulk` bulk queues.
    pub(crate) fn load(bulk: u32) -> io::Result<Classifier> {
        Classifier::load_program(&program(bulk))
    }

    /// Load `insns`; the verifier's log is in the error if it refuses.
    fn load_program(insns: &[u64]) -> io::Result<Classifier> {
        let license = c"GPL";
        let mut log = vec![0u8; 256 << 10];
        let mut attr = LoadAttr {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            ..LoadAttr::default()
        };
        // `insns`, `license` and `log` outlive the call.
        match sys::bpf_load(&mut attr) {
            Ok(fd) => Ok(Classifier { fd }),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                Err(io::Error::new(e.kind(), format!("loading the eBPF classifier: {e}; verifier: {}", text.trim())))
            }
        }
    }

    /// Make it the TUN device's steering program (through any of its queues).
    pub(crate) fn steer_tun(&self, tun: &impl AsRawFd) -> io::Result<()> {
        set_tun_steering(tun, self.fd.as_raw_fd())
    }

    /// Make it the reuseport program of `sock`'s group.
    pub(crate) fn steer_sockets(&self, sock: &impl AsRawFd) -> io::Result<()> {
        const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
        sys::set_socket_int(sock, SO_ATTACH_REUSEPORT_EBPF, self.fd.as_raw_fd())
    }
}

/// The lane's classifiers: the pods' (the TUN device) and, where the
/// sockets carry something else, the wire's.
pub(crate) struct Lane {
    pods: Classifier,
    wire: Option<Classifier>,
}

impl Lane {
    /// Load the classifiers for `bulk` bulk queues and sockets carrying
    /// `wire`; a refusal is logged once and there is no lane (forwarding
    /// goes on as with `"LatencyLane": false`, on the bulk queues alone).
    pub(crate) fn load(bulk: usize, wire: Wire) -> Option<Lane> {
        let loaded = Classifier::load(bulk as u32).and_then(|pods| {
            let wire = match wire {
                Wire::Plain => None,
                Wire::WireGuard => Some(Classifier::load_program(&wire_program(bulk as u32))?),
            };
            Ok(Lane { pods, wire })
        });
        match loaded {
            Ok(lane) => Some(lane),
            Err(e) => {
                tracing::warn!(
                    "LatencyLane: {e}; forwarding without the lane, as with \"LatencyLane\": false. Loading it needs CAP_BPF (or CAP_SYS_ADMIN), which the packaged unit grants: check a drop-in that takes it away (systemctl cat weft), or set \"LatencyLane\": false in the network config"
                );
                None
            }
        }
    }

    /// Make the pods' classifier the TUN device's steering program.
    pub(crate) fn steer_tun(&self, tun: &impl AsRawFd) -> io::Result<()> {
        self.pods.steer_tun(tun)
    }

    /// Attach the wire's classifier to `sock`'s reuseport group.
    pub(crate) fn steer_sockets(&self, sock: &impl AsRawFd) -> io::Result<()> {
        self.wire.as_ref().unwrap_or(&self.pods).steer_sockets(sock)
    }
}

/// `TUNSETSTEERINGEBPF` with `prog` (-1: none, the kernel's own steering).
pub(crate) fn set_tun_steering(tun: &impl AsRawFd, prog: RawFd) -> io::Result<()> {
    sys::set_tun_steering(tun, prog)
}

#[cfg(test)]
#[path = "lane_tests.rs"]
mod tests;
