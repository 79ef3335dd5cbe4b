//! Two in-memory WireGuard peers (boringtun's `Tunn`) and weft's tables
//! on each side: the handshake and data reach the right peer, and what
//! must not enter the TUN device is dropped with its reason.

use super::*;
use std::net::Ipv4Addr;

const A_NET: &str = "10.244.1.0/24";
const B_NET: &str = "10.244.2.0/24";
const B_NET6: &str = "fd10:244:0:2::/64";
/// The index node A gave node B, and the one B gave A.
const A_SIDE_INDEX_OF_B: u32 = 7;
const B_SIDE_INDEX_OF_A: u32 = 1;

fn secret(k: &Key) -> StaticSecret {
    StaticSecret::from(k.0)
}

fn public(k: &Key) -> PublicKey {
    PublicKey::from(k.public().0)
}

fn peer(key: &Key, net: &[&str], index: u32, last: u8) -> WgPeer {
    WgPeer {
        public_key: key.public(),
        endpoint: SocketAddr::from(([198, 18, 0, last], 51820)),
        allowed_ips: net.iter().map(|n| n.parse().unwrap()).collect(),
        index,
    }
}

/// An IPv4 packet (header and 8 bytes of payload) from `src` to `dst`.
fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0u8; 8]);
    p
}

/// What one received datagram gives: datagrams to send back, packets
/// for the TUN device.
type Outcome = (Vec<Vec<u8>>, Vec<Vec<u8>>);

struct Side {
    key: Key,
    table: PeerTable,
    tunn: Tunn,
}

impl Side {
    /// Classify and decapsulate one datagram; every datagram to send back
    /// and the packets for the TUN device, or the first drop.
    fn receive(&mut self, datagram: &[u8]) -> Result<Outcome, WgDrop> {
        let index = match self.table.classify(datagram, &secret(&self.key), &public(&self.key)) {
            Incoming::Peer(i) => i,
            Incoming::Drop(reason) => return Err(reason),
        };
        let (mut out, mut tunnel) = (Vec::new(), Vec::new());
        let mut input = datagram.to_vec();
        loop {
            let mut buf = vec![0u8; 2048];
            let result = self.tunn.decapsulate(Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9))), &input, &mut buf);
            match received(&self.table, index, &result) {
                Received::ToNetwork(n) => out.push(buf[..n].to_vec()),
                Received::ToTunnel(n) => {
                    tunnel.push(buf[..n].to_vec());
                    return Ok((out, tunnel));
                }
                Received::Nothing => return Ok((out, tunnel)),
                Received::Drop(reason) => return Err(reason),
            }
            // Repeated with an empty datagram for what is queued.
            input.clear();
        }
    }

    fn send(&mut self, pkt: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        match self.tunn.encapsulate(pkt, &mut buf) {
            TunnResult::WriteToNetwork(b) => b.to_vec(),
            other => panic!("encapsulate: {other:?}"),
        }
    }
}

/// Node A (10.244.1.0/24) and node B (10.244.2.0/24 and an IPv6 subnet),
/// each with the other in its table, handshake done.
fn pair() -> (Side, Side) {
    let (ka, kb) = (Key::generate(), Key::generate());
    let mut a = Side {
        table: PeerTable::new(vec![peer(&kb, &[B_NET, B_NET6], A_SIDE_INDEX_OF_B, 2)]),
        tunn: Tunn::new(secret(&ka), public(&kb), None, None, A_SIDE_INDEX_OF_B, None),
        key: ka,
    };
    let mut b = Side {
        table: PeerTable::new(vec![peer(&ka, &[A_NET], B_SIDE_INDEX_OF_A, 1)]),
        tunn: Tunn::new(secret(&kb), public(&ka), None, None, B_SIDE_INDEX_OF_A, None),
        key: kb,
    };
    // A's first packet starts the handshake; it waits in A's queue.
    let init = a.send(&ipv4([10, 244, 1, 5], [10, 244, 2, 9]));
    assert_eq!(init[0], 1, "a handshake initiation");
    let (responses, none) = b.receive(&init).expect("B accepts A's initiation");
    assert!(none.is_empty());
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0][0], 2, "a handshake response");
    let (queued, none) = a.receive(&responses[0]).expect("A accepts B's response");
    assert!(none.is_empty());
    // What A sends now: a keepalive and the queued packet, as data.
    let mut delivered = Vec::new();
    for d in &queued {
        assert_eq!(d[0], 4, "data messages");
        delivered.extend(b.receive(d).expect("B accepts A's data").1);
    }
    assert_eq!(delivered, vec![ipv4([10, 244, 1, 5], [10, 244, 2, 9])], "the queued packet arrives");
    (a, b)
}

#[test]
fn handshake_and_data_reach_the_peer_of_the_key_and_index() {
    let (mut a, mut b) = pair();
    let pkt = ipv4([10, 244, 1, 6], [10, 244, 2, 10]);
    let data = a.send(&pkt);
    assert_eq!(b.table.classify(&data, &secret(&b.key), &public(&b.key)), Incoming::Peer(B_SIDE_INDEX_OF_A));
    assert_eq!(b.receive(&data).unwrap().1, vec![pkt]);
}

#[test]
fn tampered_replayed_and_spoofed_packets_are_dropped_with_their_reason() {
    let (mut a, mut b) = pair();
    let data = a.send(&ipv4([10, 244, 1, 6], [10, 244, 2, 10]));
    assert!(b.receive(&data).is_ok());
    assert_eq!(b.receive(&data).unwrap_err(), WgDrop::Replay, "the same datagram again");

    let mut tampered = a.send(&ipv4([10, 244, 1, 6], [10, 244, 2, 10]));
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(b.receive(&tampered).unwrap_err(), WgDrop::Authentication);

    // Authentic, but from an address A holds no lease for.
    let spoofed = a.send(&ipv4([10, 244, 3, 6], [10, 244, 2, 10]));
    assert_eq!(b.receive(&spoofed).unwrap_err(), WgDrop::SpoofedSource);

    // A receiver index B never gave out.
    let mut stray = a.send(&ipv4([10, 244, 1, 6], [10, 244, 2, 10]));
    stray[4..8].copy_from_slice(&(99u32 << 8).to_le_bytes());
    assert_eq!(b.receive(&stray).unwrap_err(), WgDrop::UnknownPeer);

    assert_eq!(b.receive(b"not wireguard").unwrap_err(), WgDrop::Malformed);
    assert_eq!(b.receive(&[]).unwrap_err(), WgDrop::Malformed);
}

#[test]
fn a_handshake_from_a_key_without_a_lease_is_refused() {
    let (_a, b) = pair();
    let stranger = Key::generate();
    let mut tunn = Tunn::new(secret(&stranger), public(&b.key), None, None, 3, None);
    let mut buf = vec![0u8; 2048];
    let init = match tunn.encapsulate(&ipv4([10, 244, 1, 5], [10, 244, 2, 9]), &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("{other:?}"),
    };
    assert_eq!(b.table.classify(&init, &secret(&b.key), &public(&b.key)), Incoming::Drop(WgDrop::UnknownPeer));
    // An initiation for another node's key cannot be opened at all.
    let other = Key::generate();
    assert_eq!(b.table.classify(&init, &secret(&other), &public(&other)), Incoming::Drop(WgDrop::Authentication));
}

#[test]
fn packets_are_routed_by_allowed_ips_longest_prefix_first() {
    let (k1, k2) = (Key::generate(), Key::generate());
    let t = PeerTable::new(vec![
        peer(&k1, &["10.244.0.0/16", "fd10:244::/56"], 1, 1),
        peer(&k2, &["10.244.2.0/24", "fd10:244:0:2::/64"], 2, 2),
    ]);
    let at = |a: &str| t.route(a.parse().unwrap()).map(|p| p.index);
    assert_eq!(at("10.244.2.7"), Some(2));
    assert_eq!(at("10.244.9.7"), Some(1));
    assert_eq!(at("10.245.0.1"), None);
    assert_eq!(at("fd10:244:0:2::7"), Some(2));
    assert_eq!(at("fd10:244:0:9::7"), Some(1));
    assert_eq!(at("fd11::1"), None);
    assert_eq!(t.by_key(&k2.public()).map(|p| p.endpoint.to_string()).as_deref(), Some("198.18.0.2:51820"));
    assert_eq!(t.admit(2, "10.244.2.1".parse().unwrap()), Ok(()));
    assert_eq!(t.admit(2, "10.244.3.1".parse().unwrap()), Err(WgDrop::SpoofedSource));
    assert_eq!(t.admit(5, "10.244.2.1".parse().unwrap()), Err(WgDrop::UnknownPeer));
}

#[test]
fn keys_are_base64_of_32_bytes_and_never_printed_whole() {
    let k = Key::generate();
    let text = k.to_base64();
    assert_eq!(text.len(), 44);
    assert_eq!(text.parse::<Key>().unwrap(), k);
    assert_ne!(k.public(), k);
    assert_eq!(k.public(), text.parse::<Key>().unwrap().public(), "the public key follows from the private one");
    for (bad, says) in [("not base64!", "not base64"), ("AAAA", "3 bytes"), ("", "0 bytes")] {
        let e = bad.parse::<Key>().unwrap_err().to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
    let shown = format!("{k:?}");
    assert!(!shown.contains(&text) && shown.len() < 20, "{shown}");
}

#[test]
fn indexes_are_stable_per_key_and_reused_only_after_it_is_gone() {
    let mut ix = Indexes::default();
    let (k1, k2, k3) = (Key::generate(), Key::generate(), Key::generate());
    let i1 = ix.of(k1).unwrap();
    let i2 = ix.of(k2).unwrap();
    assert_ne!(i1, i2);
    assert_ne!(i1, 0);
    assert_eq!(ix.of(k1), Some(i1), "the same key keeps its index");
    ix.retain(&[k2].into_iter().collect());
    let i3 = ix.of(k3).unwrap();
    assert_ne!(i3, i2, "a live key's index is never given out twice");
    assert_ne!(ix.of(k1).unwrap(), i2);
}

#[test]
fn every_drop_reason_has_its_own_label() {
    let labels: std::collections::HashSet<_> = WgDrop::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), WgDrop::ALL.len());
}

/// Data without a session finds its peer by the lease's endpoint; the
/// first of two peers sharing one endpoint keeps it.
#[test]
fn a_peer_is_found_by_its_lease_endpoint() {
    let (k1, k2, k3) = (Key::generate(), Key::generate(), Key::generate());
    let t = PeerTable::new(vec![peer(&k1, &["10.244.1.0/24"], 7, 1), peer(&k2, &["10.244.2.0/24"], 8, 2)]);
    assert_eq!(t.at_endpoint(SocketAddr::from(([198, 18, 0, 1], 51820))), Some(7));
    assert_eq!(t.at_endpoint(SocketAddr::from(([198, 18, 0, 2], 51820))), Some(8));
    assert_eq!(t.at_endpoint(SocketAddr::from(([198, 18, 0, 2], 51821))), None, "another port");
    assert_eq!(t.at_endpoint(SocketAddr::from(([198, 18, 0, 9], 51820))), None);
    let shared = PeerTable::new(vec![peer(&k1, &["10.244.1.0/24"], 7, 1), peer(&k3, &["10.244.3.0/24"], 9, 1)]);
    assert_eq!(shared.at_endpoint(SocketAddr::from(([198, 18, 0, 1], 51820))), Some(7));
}
