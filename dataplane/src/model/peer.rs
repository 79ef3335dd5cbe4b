//! A peer: another node, as the backends need to know it. The daemon
//! derives the desired peer set from the leases.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_types::MacAddr;

/// Another node, as a backend needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The peer's IPv4 subnet (none on IPv6-only networks).
    pub subnet: Option<Ipv4Net>,
    /// The peer's `PublicIP` (none on IPv6-only networks).
    pub public_ip: Option<Ipv4Addr>,
    /// The peer's VTEP MAC (vxlan only).
    pub vtep_mac: Option<MacAddr>,
    /// The peer's IPv6 subnet, on dual-stack networks.
    pub subnet6: Option<Ipv6Net>,
    /// The peer's IPv6 public address (`PublicIPv6`).
    pub public_ipv6: Option<Ipv6Addr>,
    /// The MAC of the peer's IPv6 VTEP (`BackendV6Data.VtepMAC`, vxlan only).
    pub vtep_mac6: Option<MacAddr>,
    /// The peer's WireGuard public key (`BackendData.PublicKey`, wireguard only).
    pub wg_key: Option<[u8; 32]>,
    /// The peer's WireGuard port (`BackendData.Port`; flanneld before 0.26
    /// writes none, and then listens on this node's own port).
    pub wg_port: Option<u16>,
    /// The same from `BackendV6Data`, for the IPv6 device (`flannel-wg-v6`).
    pub wg_key6: Option<[u8; 32]>,
    pub wg_port6: Option<u16>,
}

impl Peer {
    /// An IPv4-only peer.
    pub fn v4(subnet: Ipv4Net, public_ip: Ipv4Addr, vtep_mac: Option<MacAddr>) -> Peer {
        Peer {
            subnet: Some(subnet),
            public_ip: Some(public_ip),
            vtep_mac,
            subnet6: None,
            public_ipv6: None,
            vtep_mac6: None,
            wg_key: None,
            wg_port: None,
            wg_key6: None,
            wg_port6: None,
        }
    }

    /// A peer of an IPv6-only network.
    pub fn v6(subnet6: Ipv6Net, public_ipv6: Ipv6Addr, vtep_mac6: Option<MacAddr>) -> Peer {
        Peer {
            subnet: None,
            public_ip: None,
            vtep_mac: None,
            subnet6: Some(subnet6),
            public_ipv6: Some(public_ipv6),
            vtep_mac6,
            wg_key: None,
            wg_port: None,
            wg_key6: None,
            wg_port6: None,
        }
    }

    /// The subnet that names the peer (its lease): the IPv4 subnet, or the
    /// IPv6 subnet on IPv6-only networks.
    pub fn id(&self) -> IpNet {
        match (self.subnet, self.subnet6) {
            (Some(v4), _) => IpNet::V4(v4),
            (None, Some(v6)) => IpNet::V6(v6),
            (None, None) => IpNet::V4(Ipv4Net::default()),
        }
    }
}
