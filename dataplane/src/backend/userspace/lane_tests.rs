//! The classifier run by the kernel itself: `BPF_PROG_TEST_RUN` (as the TUN
//! device runs it) and a real reuseport group on loopback (as the sockets
//! run it). Needs root (or `CAP_BPF`), as the daemon does: without it these
//! fail, they do not skip.

use std::net::UdpSocket;
use std::time::Duration;

use super::*;

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`, as far as it is used.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

impl Classifier {
    /// Run the program on `packet` (an IP packet) in the kernel, as the
    /// TUN device would: the queue it picks.
    pub(crate) fn test_run(&self, packet: &[u8]) -> io::Result<u32> {
        // The test run wants an Ethernet frame and strips its header.
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(if packet.first().map(|b| b >> 4) == Some(6) { &[0x86, 0xdd] } else { &[8, 0] });
        frame.extend_from_slice(packet);
        let mut attr = TestAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..TestAttr::default()
        };
        sys::bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(attr.retval)
    }
}

/// An IPv4 packet of `len` bytes with protocol `proto`; TCP gets a header
/// of 32 bytes (with timestamps), so `len` 52 is a pure ACK.
fn v4(proto: u8, len: usize, src: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&[10, 244, 2, 5]);
    if len >= 24 {
        p[20..22].copy_from_slice(&ports.0.to_be_bytes());
        p[22..24].copy_from_slice(&ports.1.to_be_bytes());
    }
    if proto == 6 && len >= 40 {
        p[32] = 8 << 4;
    }
    p
}

/// An IPv6 packet of `len` bytes (40 of them the header), next header
/// `proto`; TCP gets a header of 32 bytes, so `len` 72 is a pure ACK.
fn v6(proto: u8, len: usize, flow: u8) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = proto;
    p[7] = 64;
    p[8..24].copy_from_slice(&[0xfd, 0x10, 2, 0x44, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, flow]);
    p[24..40].copy_from_slice(&[0xfd, 0x10, 2, 0x44, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 9]);
    if proto == 6 && len >= 60 {
        p[40 + 12] = 8 << 4;
    }
    p
}

const A: [u8; 4] = [10, 244, 1, 5];

#[test]
fn small_packets_take_the_lane_and_bulk_and_acks_do_not() {
    let c = Classifier::load(1).expect("loading the classifier (needs root)");
    let lane = 1;
    let cases: &[(&str, Vec<u8>, u32)] = &[
        ("IPv4 ping", v4(1, 84, A, (0, 0)), lane),
        ("IPv4 TCP request of 100 bytes", v4(6, 152, A, (40000, 80)), lane),
        ("IPv4 TCP pure ACK", v4(6, 52, A, (40000, 80)), 0),
        ("IPv4 TCP segment of 1400 bytes", v4(6, 1452, A, (40000, 80)), 0),
        ("IPv4 TCP super-packet (as long as a test run takes)", v4(6, 3000, A, (40000, 80)), 0),
        ("IPv4 UDP query", v4(17, 80, A, (5353, 53)), lane),
        ("IPv4 UDP of 1000 bytes", v4(17, 1000, A, (5353, 53)), 0),
        ("IPv4 at the size limit", v4(17, SMALL as usize, A, (1, 2)), lane),
        ("IPv4 one byte over it", v4(17, SMALL as usize + 1, A, (1, 2)), 0),
        ("IPv6 ping", v6(58, 104, 1), lane),
        ("IPv6 TCP request", v6(6, 172, 1), lane),
        ("IPv6 TCP pure ACK", v6(6, 72, 1), 0),
        ("IPv6 TCP segment", v6(6, 1440, 1), 0),
        ("not IP", vec![0u8; 60], 0),
        ("IPv4 cut short", v4(6, 30, A, (1, 2))[..30].to_vec(), 0),
    ];
    for (what, packet, want) in cases {
        assert_eq!(c.test_run(packet).unwrap_or_else(|e| panic!("{what}: {e}")), *want, "{what}");
    }
}

#[test]
fn bulk_flows_spread_over_the_bulk_queues_and_each_keeps_to_one() {
    let c = Classifier::load(3).expect("loading the classifier (needs root)");
    let mut seen = std::collections::BTreeSet::new();
    for port in 40000..40064u16 {
        let first = c.test_run(&v4(6, 1452, A, (port, 80))).unwrap();
        assert!(first < 3, "a bulk packet goes to a bulk queue, not the lane (3): {first}");
        assert_eq!(c.test_run(&v4(6, 52, A, (port, 80))).unwrap(), first, "a flow's ACKs go with its data");
        assert_eq!(c.test_run(&v4(6, 3000, A, (port, 80))).unwrap(), first, "one flow, one queue");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "64 flows use all three bulk queues: {seen:?}");
    assert_eq!(c.test_run(&v4(1, 84, A, (0, 0))).unwrap(), 3, "the lane is the last queue");
}

#[test]
fn a_reuseport_group_gives_small_datagrams_to_the_lane_socket() {
    let c = Classifier::load(1).expect("loading the classifier (needs root)");
    let sent = [
        ("ping", v4(1, 84, A, (0, 0)), true),
        ("bulk segment", v4(6, 1452, A, (40000, 80)), false),
        ("pure ACK", v4(6, 52, A, (40000, 80)), false),
        ("request", v4(6, 152, A, (40000, 80)), true),
    ];
    assert_group_delivers(|bulk| c.steer_sockets(bulk), &sent);
}

/// A reuseport group of two sockets on loopback (bulk, then lane) with
/// `steer` attached: each of `sent` reaches the lane socket when marked so,
/// else the bulk one, and only that one.
fn assert_group_delivers(steer: impl Fn(&UdpSocket) -> io::Result<()>, sent: &[(&str, Vec<u8>, bool)]) {
    let bulk = super::super::socket::bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
    let addr = bulk.local_addr().unwrap();
    let lane = super::super::socket::bind(addr, true).unwrap();
    steer(&bulk).expect("attaching to the reuseport group");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (what, packet, to_lane) in sent {
        peer.send_to(packet, addr).unwrap();
        let (got, other) = if *to_lane { (&lane, &bulk) } else { (&bulk, &lane) };
        let mut buf = [0u8; 2048];
        let n = recv_within(got, &mut buf, Duration::from_secs(2)).unwrap_or_else(|| panic!("{what}: not received"));
        assert_eq!(&buf[..n], &packet[..], "{what}");
        assert!(other.recv(&mut buf).is_err(), "{what}: only one socket gets it");
    }
}

/// Receive on the non-blocking `sock` within `deadline`.
fn recv_within(sock: &UdpSocket, buf: &mut [u8], deadline: Duration) -> Option<usize> {
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        match sock.recv(buf) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("recv: {e}"),
        }
    }
    None
}

/// A WireGuard data message sealing an inner packet of `inner` bytes
/// (padded to 16) for receiver index `receiver`.
fn wg_data(inner: usize, receiver: u32) -> Vec<u8> {
    let mut m = vec![0u8; 32 + inner.div_ceil(16) * 16];
    m[0] = 4;
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m
}

/// A WireGuard handshake message of type `kind` and `len` bytes.
fn wg_handshake(kind: u8, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    m[0] = kind;
    m
}

#[test]
fn wireguard_datagrams_that_hold_a_small_packet_take_the_lane() {
    let c = Classifier::load_program(&wire_program(3)).expect("loading the classifier (needs root)");
    let lane = 3;
    let small: &[(&str, Vec<u8>)] = &[
        ("handshake initiation", wg_handshake(1, 148)),
        ("handshake response", wg_handshake(2, 92)),
        ("cookie reply", wg_handshake(3, 64)),
        ("keepalive", wg_data(0, 7)),
        ("an IPv4 ping", wg_data(84, 7)),
        ("an IPv6 ping", wg_data(104, 7)),
        ("a packet at the size limit", wg_data(SMALL as usize, 7)),
    ];
    for (what, m) in small {
        assert_eq!(c.test_run(m).unwrap_or_else(|e| panic!("{what}: {e}")), lane, "{what}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for receiver in 0..64u32 {
        let first = c.test_run(&wg_data(1420, receiver)).unwrap();
        assert!(first < lane, "a full-size message goes to a bulk queue: {first}");
        assert_eq!(c.test_run(&wg_data(SMALL as usize + 1, receiver)).unwrap(), first, "one session, one queue");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "64 sessions use all three bulk queues: {seen:?}");
}

#[test]
fn a_wireguard_reuseport_group_gives_small_messages_to_the_lane_socket() {
    let lane = Lane::load(1, Wire::WireGuard).expect("loading the classifiers (needs root)");
    let sent = [
        ("ping", wg_data(84, 9), true),
        ("bulk segment", wg_data(1420, 9), false),
        ("handshake initiation", wg_handshake(1, 148), true),
    ];
    assert_group_delivers(|bulk| lane.steer_sockets(bulk), &sent);
}
