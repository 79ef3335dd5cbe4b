//! The per-packet decisions of the udp backend, pure: what to do with a
//! packet read from the TUN device, and whether a datagram from a peer may
//! enter it. The forwarding threads do the I/O the decision asks for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::packet::{check_inbound, decrement_ttl, dst_of, DropReason, IcmpError, Ttl};
use super::packet6;
use super::table::Snapshot;
use crate::model::DualStack;

/// What to do with one outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Send it (TTL already decremented) to this peer.
    Send(SocketAddr),
    /// Drop it and answer the sender with this ICMP error.
    Reply(IcmpError, DropReason),
    /// Drop it silently.
    Drop(DropReason),
}

/// Decide for one packet from the TUN device. Decrements its TTL (hop
/// limit) when it is to be forwarded. IPv6 packets are routed by the
/// peers' IPv6 subnets, which only dual-stack networks have.
pub fn outbound(pkt: &mut [u8], snap: &Snapshot) -> Outbound {
    if let Some(dst6) = packet6::dst_of(pkt) {
        return match snap.lookup6(dst6) {
            None if !snap.has_v6() => Outbound::Drop(DropReason::NotIpv4Outbound),
            None => Outbound::Reply(IcmpError::NetUnreachable, DropReason::NoRoute),
            Some(_) if !packet6::decrement_hop_limit(pkt) => {
                Outbound::Reply(IcmpError::TimeExceeded, DropReason::TtlExceeded)
            }
            Some(peer) => Outbound::Send(peer),
        };
    }
    let Some(dst) = dst_of(pkt) else {
        return Outbound::Drop(DropReason::NotIpv4Outbound);
    };
    let Some(peer) = snap.lookup(dst) else {
        return Outbound::Reply(IcmpError::NetUnreachable, DropReason::NoRoute);
    };
    if decrement_ttl(pkt) == Ttl::Expired {
        return Outbound::Reply(IcmpError::TimeExceeded, DropReason::TtlExceeded);
    }
    Outbound::Send(SocketAddr::V4(peer))
}

/// Whether a datagram from `from` may be written into the TUN device: the
/// sender must hold a lease and send from the backend's port, the packet
/// The only way a datagram from a peer may arrive: on the external
/// interface, addressed to one of the node's public addresses. Anything
/// else (a pod sending to the port through `cni0`, a local process over
/// loopback, a datagram to another local address) is not from the
/// underlay, whatever source it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The external interface's index.
    pub iface: u32,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Arrival {
    /// Whether a datagram that came in on interface `iface` addressed to
    /// `dst` (as the kernel reports them: `IP_PKTINFO`) came the right
    /// way. Unknown (the kernel said nothing) is not the right way.
    pub fn admits(&self, iface: Option<u32>, dst: Option<IpAddr>) -> bool {
        iface == Some(self.iface)
            && match dst.map(|d| d.to_canonical()) {
                Some(IpAddr::V4(d)) => self.v4 == Some(d),
                Some(IpAddr::V6(d)) => self.v6 == Some(d),
                None => false,
            }
    }
}

/// The checks on one datagram from a peer (after [`Arrival::admits`]): it
/// must be a well-formed IPv4 packet for this node's subnet (or, on
/// dual-stack networks, an IPv6 packet for its IPv6 subnet), and its
/// source must be inside a subnet leased to the sender (flanneld accepts
/// anything; a leaseholder must not be able to inject packets in another
/// node's name, or a host-local source through `accept_local`).
pub fn inbound(seg: &[u8], from: &SocketAddr, snap: &Snapshot, local: &DualStack) -> Result<(), DropReason> {
    let Some(senders) = snap.sender_subnets(from) else {
        return Err(DropReason::UnknownSource);
    };
    if let (Some(local6), Some(6)) = (&local.v6, seg.first().map(|b| b >> 4)) {
        let src = packet6::check_inbound(seg, local6)?;
        if !senders.v6.iter().any(|n| n.contains(&src)) {
            return Err(DropReason::SpoofedSource);
        }
        return Ok(());
    }
    let Some(local4) = &local.v4 else {
        return Err(match seg.first().map(|b| b >> 4) {
            Some(4) => DropReason::NotForThisNode,
            _ => DropReason::NotIpv4,
        });
    };
    check_inbound(seg, local4)?;
    // check_inbound verified a whole IPv4 header.
    let src = std::net::Ipv4Addr::new(seg[12], seg[13], seg[14], seg[15]);
    if !senders.v4.iter().any(|n| n.contains(&src)) {
        return Err(DropReason::SpoofedSource);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ipnet::Ipv4Net;

    use super::*;

    #[test]
    fn only_the_external_interface_and_a_public_address_admit() {
        let a = Arrival { iface: 2, v4: Some(Ipv4Addr::new(198, 18, 0, 2)), v6: Some("fd18::2".parse().unwrap()) };
        let v4: IpAddr = Ipv4Addr::new(198, 18, 0, 2).into();
        let mapped: IpAddr = "::ffff:198.18.0.2".parse::<Ipv6Addr>().unwrap().into();
        // (interface, destination, admitted)
        let cases = [
            (Some(2), Some(v4), true),
            (Some(2), Some(mapped), true),
            (Some(2), Some("fd18::2".parse().unwrap()), true),
            (Some(5), Some(v4), false),                                    // through cni0
            (Some(1), Some(Ipv4Addr::LOCALHOST.into()), false),            // loopback
            (Some(2), Some(Ipv4Addr::new(198, 18, 0, 9).into()), false),   // another address
            (Some(2), Some(Ipv4Addr::new(198, 18, 0, 255).into()), false), // broadcast
            (None, Some(v4), false),
            (Some(2), None, false),
        ];
        for (iface, dst, want) in cases {
            assert_eq!(a.admits(iface, dst), want, "{iface:?} {dst:?}");
        }
        let v4_only = Arrival { v6: None, ..a };
        assert!(!v4_only.admits(Some(2), Some("fd18::2".parse().unwrap())));
    }
    use crate::forward::packet::checksum;
    use crate::Peer;
    use std::net::SocketAddrV4;

    fn packet(dst: [u8; 4], ttl: u8) -> Vec<u8> {
        packet_from([10, 244, 2, 7], dst, ttl)
    }

    fn packet_from(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, ttl, 17, 0, 0, src[0], src[1], src[2], src[3]];
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0u8; 8]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn outbound_decisions() {
        let peer = Peer::v4("10.244.2.0/24".parse().unwrap(), [198, 18, 0, 2].into(), None);
        let snap = Snapshot::new(&[peer], 8285);
        let to_peer: SocketAddr = "198.18.0.2:8285".parse().unwrap();
        let mut p = packet([10, 244, 2, 5], 64);
        assert_eq!(outbound(&mut p, &snap), Outbound::Send(to_peer));
        assert_eq!(p[8], 63, "TTL decremented");
        assert_eq!(
            outbound(&mut packet([10, 244, 9, 5], 64), &snap),
            Outbound::Reply(IcmpError::NetUnreachable, DropReason::NoRoute)
        );
        assert_eq!(
            outbound(&mut packet([10, 244, 2, 5], 1), &snap),
            Outbound::Reply(IcmpError::TimeExceeded, DropReason::TtlExceeded)
        );
        let mut v6 = vec![0x60u8; 40];
        assert_eq!(outbound(&mut v6, &snap), Outbound::Drop(DropReason::NotIpv4Outbound));

        let local: DualStack = "10.244.1.0/24".parse::<Ipv4Net>().unwrap().into();
        let from_peer = to_peer;
        let stranger = SocketAddr::V4(SocketAddrV4::new([198, 18, 0, 9].into(), 8285));
        assert_eq!(inbound(&packet([10, 244, 1, 2], 63), &from_peer, &snap, &local), Ok(()));
        assert_eq!(inbound(&packet([10, 244, 1, 2], 63), &stranger, &snap, &local), Err(DropReason::UnknownSource));
        assert_eq!(inbound(&packet([10, 244, 3, 2], 63), &from_peer, &snap, &local), Err(DropReason::NotForThisNode));
        let other_port = SocketAddr::V4(SocketAddrV4::new([198, 18, 0, 2].into(), 40000));
        assert_eq!(inbound(&packet([10, 244, 1, 2], 63), &other_port, &snap, &local), Err(DropReason::UnknownSource));
        // The peer leases 10.244.2.0/24: packets from anywhere else are spoofed.
        for src in [[10, 244, 3, 7], [10, 244, 1, 9], [198, 18, 0, 2], [127, 0, 0, 1]] {
            let p = packet_from(src, [10, 244, 1, 2], 63);
            assert_eq!(inbound(&p, &from_peer, &snap, &local), Err(DropReason::SpoofedSource), "{src:?}");
        }
    }

    #[test]
    fn ipv6_decisions_on_a_dual_stack_network() {
        use crate::forward::packet6::tests::packet6;
        let mut peer = Peer::v4("10.244.2.0/24".parse().unwrap(), [198, 18, 0, 2].into(), None);
        peer.subnet6 = Some("fd10:244:0:2::/64".parse().unwrap());
        let snap = Snapshot::new(&[peer], 8285);
        let to_peer: SocketAddr = "198.18.0.2:8285".parse().unwrap();
        let mut p = packet6("fd10:244:0:1::2", "fd10:244:0:2::5", 64, 60);
        assert_eq!(outbound(&mut p, &snap), Outbound::Send(to_peer));
        assert_eq!(p[7], 63, "hop limit decremented");
        let mut nowhere = packet6("fd10:244:0:1::2", "fd10:244:0:9::5", 64, 60);
        assert_eq!(outbound(&mut nowhere, &snap), Outbound::Reply(IcmpError::NetUnreachable, DropReason::NoRoute));
        let mut last_hop = packet6("fd10:244:0:1::2", "fd10:244:0:2::5", 1, 60);
        assert_eq!(outbound(&mut last_hop, &snap), Outbound::Reply(IcmpError::TimeExceeded, DropReason::TtlExceeded));

        let local =
            DualStack { v4: Some("10.244.1.0/24".parse().unwrap()), v6: Some("fd10:244:0:1::/64".parse().unwrap()) };
        let from_peer = to_peer;
        let good = packet6("fd10:244:0:2::5", "fd10:244:0:1::2", 63, 60);
        assert_eq!(inbound(&good, &from_peer, &snap, &local), Ok(()));
        // Sources outside the sender's IPv6 subnet are spoofed; so is its IPv4 peer's v6 on a v4-only local.
        for src in ["fd10:244:0:3::5", "fd10:244:0:1::9", "::1", "fd00:198:18::2"] {
            let p = packet6(src, "fd10:244:0:1::2", 63, 60);
            assert_eq!(inbound(&p, &from_peer, &snap, &local), Err(DropReason::SpoofedSource), "{src}");
        }
        let elsewhere = packet6("fd10:244:0:2::5", "fd10:244:0:7::2", 63, 60);
        assert_eq!(inbound(&elsewhere, &from_peer, &snap, &local), Err(DropReason::NotForThisNode));
        // On an IPv4-only node an IPv6 datagram is what it always was: not IPv4.
        let v4_only: DualStack = local.v4.unwrap().into();
        assert_eq!(inbound(&good, &from_peer, &snap, &v4_only), Err(DropReason::NotIpv4));
        let v4_snap = Snapshot::new(&[Peer::v4("10.244.2.0/24".parse().unwrap(), [198, 18, 0, 2].into(), None)], 8285);
        let mut p = packet6("fd10:244:0:1::2", "fd10:244:0:2::5", 64, 60);
        assert_eq!(outbound(&mut p, &v4_snap), Outbound::Drop(DropReason::NotIpv4Outbound));
    }
}
