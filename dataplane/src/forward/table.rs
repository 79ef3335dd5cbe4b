//! The route table of the udp backend: remote subnets to peers, by
//! longest-prefix match, plus who may send what: datagrams are accepted
//! only from a leaseholder's public IP and the backend's port, carrying
//! packets whose source is inside that leaseholder's subnet. On dual-stack
//! networks the peers' IPv6 subnets are routed the same way: to the peer's
//! `PublicIPv6` when this node sends over an IPv6 underlay too and the peer
//! has one, else to its IPv4 public address. Pod IPv4 always travels to
//! the IPv4 public address (flanneld's wire format). On IPv6-only networks
//! every peer is reached at its `PublicIPv6`.
//!
//! The control plane builds a new [`Snapshot`] and swaps it in; forwarding
//! threads load the current one per batch without taking a lock
//! (`arc-swap`), so lease changes never stall forwarding.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::Peer;

/// What one leaseholder may send from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Senders {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
}

/// Longest prefix first, as lookups walk them.
fn by_longest<K, V>(lens: HashMap<u8, HashMap<K, V>>) -> Vec<(u8, HashMap<K, V>)> {
    let mut by_len: Vec<_> = lens.into_iter().collect();
    by_len.sort_by_key(|b| std::cmp::Reverse(b.0));
    by_len
}

/// One immutable version of the table.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (prefix length, network -> peer), longest prefix first.
    by_len: Vec<(u8, HashMap<u32, SocketAddrV4>)>,
    /// The same for the peers' IPv6 subnets.
    by_len6: Vec<(u8, HashMap<u128, SocketAddr>)>,
    /// Public IPs (both families) of current leases, each with its
    /// subnets: the only senders accepted, and what they may send from.
    sources: HashMap<IpAddr, Senders>,
    /// The port every peer sends from (the backend's port).
    port: u16,
}

impl Snapshot {
    /// Build from the peer set; every peer is reached at `public_ip:port`.
    pub fn new(peers: &[Peer], port: u16) -> Snapshot {
        Snapshot::build(peers, port, false)
    }

    /// Build from the peer set. With `underlay6` (this node sends over
    /// IPv6 too), a peer's IPv6 subnet is reached at `[PublicIPv6]:port`
    /// when it has one.
    pub fn build(peers: &[Peer], port: u16, underlay6: bool) -> Snapshot {
        let mut lens: HashMap<u8, HashMap<u32, SocketAddrV4>> = HashMap::new();
        let mut lens6: HashMap<u8, HashMap<u128, SocketAddr>> = HashMap::new();
        let mut sources: HashMap<IpAddr, Senders> = HashMap::new();
        for p in peers {
            let mut senders = Senders::default();
            let to4 = p.public_ip.map(|ip| SocketAddrV4::new(ip, port));
            if let (Some(subnet), Some(to)) = (p.subnet, to4) {
                lens.entry(subnet.prefix_len()).or_default().insert(u32::from(subnet.network()), to);
                senders.v4.push(subnet);
            }
            if let Some(s6) = p.subnet6 {
                let to6 = match (p.public_ipv6.filter(|_| underlay6), to4) {
                    (Some(ip6), _) => SocketAddr::V6(SocketAddrV6::new(ip6, port, 0, 0)),
                    (None, Some(to)) => SocketAddr::V4(to),
                    // An IPv6-only peer is always reached over IPv6.
                    (None, None) => continue,
                };
                lens6.entry(s6.prefix_len()).or_default().insert(u128::from(s6.network()), to6);
                senders.v6.push(s6);
            }
            // A leaseholder may send from either of its public addresses.
            let publics = [p.public_ip.map(IpAddr::V4), p.public_ipv6.map(IpAddr::V6)];
            for ip in publics.into_iter().flatten() {
                let entry = sources.entry(ip).or_default();
                entry.v4.extend(&senders.v4);
                entry.v6.extend(&senders.v6);
            }
        }
        Snapshot { by_len: by_longest(lens), by_len6: by_longest(lens6), sources, port }
    }

    /// Whether any peer has an IPv6 subnet (the network is dual-stack).
    pub fn has_v6(&self) -> bool {
        !self.by_len6.is_empty()
    }

    /// The peer whose IPv6 subnet holds `dst`, by longest prefix.
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<SocketAddr> {
        let d = u128::from(dst);
        for (len, nets) in &self.by_len6 {
            let mask = if *len == 0 { 0 } else { u128::MAX << (128 - u32::from(*len)) };
            if let Some(peer) = nets.get(&(d & mask)) {
                return Some(*peer);
            }
        }
        None
    }

    /// The peer whose subnet holds `dst`, by longest prefix.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<SocketAddrV4> {
        let d = u32::from(dst);
        for (len, nets) in &self.by_len {
            let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
            if let Some(peer) = nets.get(&(d & mask)) {
                return Some(*peer);
            }
        }
        None
    }

    /// The subnets leased to the sender `src`, if it is a leaseholder
    /// sending from the backend's port (`None`: not accepted).
    pub fn sender_subnets(&self, src: &SocketAddr) -> Option<&Senders> {
        let ip = match src {
            SocketAddr::V4(v4) => IpAddr::V4(*v4.ip()),
            SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().map_or(IpAddr::V6(*v6.ip()), IpAddr::V4),
        };
        let port = src.port();
        if port != self.port {
            return None;
        }
        self.sources.get(&ip)
    }

    /// How many routes the snapshot holds (both families).
    pub fn len(&self) -> usize {
        self.by_len.iter().map(|(_, m)| m.len()).sum::<usize>()
            + self.by_len6.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every route (both families), for inspection.
    pub fn routes(&self) -> Vec<(ipnet::IpNet, SocketAddr)> {
        let mut out = Vec::new();
        for (len, nets) in &self.by_len {
            for (net, peer) in nets {
                if let Ok(n) = Ipv4Net::new(Ipv4Addr::from(*net), *len) {
                    out.push((n.into(), SocketAddr::V4(*peer)));
                }
            }
        }
        for (len, nets) in &self.by_len6 {
            for (net, peer) in nets {
                if let Ok(n) = Ipv6Net::new(Ipv6Addr::from(*net), *len) {
                    out.push((n.into(), *peer));
                }
            }
        }
        out.sort();
        out
    }
}

/// The shared, swappable table.
#[derive(Debug, Default)]
pub struct RouteTable {
    current: ArcSwap<Snapshot>,
}

impl RouteTable {
    pub fn new() -> Arc<RouteTable> {
        Arc::new(RouteTable::default())
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replace the snapshot; readers see the new one on their next load.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(net: &str, ip: [u8; 4]) -> Peer {
        Peer::v4(net.parse().unwrap(), Ipv4Addr::from(ip), None)
    }

    #[test]
    fn longest_prefix_wins() {
        let s = Snapshot::new(
            &[
                peer("10.244.2.0/24", [198, 18, 0, 2]),
                peer("10.244.2.128/25", [198, 18, 0, 3]),
                peer("10.0.0.0/8", [198, 18, 0, 4]),
            ],
            8285,
        );
        let at = |a: [u8; 4]| s.lookup(Ipv4Addr::from(a)).map(|p| p.ip().octets()[3]);
        assert_eq!(at([10, 244, 2, 1]), Some(2));
        assert_eq!(at([10, 244, 2, 200]), Some(3));
        assert_eq!(at([10, 9, 9, 9]), Some(4));
        assert_eq!(at([192, 168, 0, 1]), None);
        assert_eq!(s.lookup(Ipv4Addr::new(10, 244, 2, 1)).unwrap().port(), 8285);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn sources_are_the_public_ips_of_leases() {
        let s = Snapshot::new(&[peer("10.244.2.0/24", [198, 18, 0, 2])], 8285);
        assert!(s.sender_subnets(&"198.18.0.2:8285".parse().unwrap()).is_some());
        assert!(s.sender_subnets(&"198.18.0.2:40000".parse().unwrap()).is_none(), "only from the backend's port");
        assert!(s.sender_subnets(&"198.18.0.9:8285".parse().unwrap()).is_none());
        assert!(s.sender_subnets(&"[::ffff:198.18.0.2]:8285".parse().unwrap()).is_some());
    }

    #[test]
    fn ipv6_subnets_route_to_the_peer_and_are_what_it_may_send_from() {
        let mut p = peer("10.244.2.0/24", [198, 18, 0, 2]);
        p.subnet6 = Some("fd10:244:0:2::/64".parse().unwrap());
        let s = Snapshot::new(&[p, peer("10.244.3.0/24", [198, 18, 0, 3])], 8285);
        let at = |a: &str| s.lookup6(a.parse().unwrap());
        assert_eq!(at("fd10:244:0:2::9"), Some("198.18.0.2:8285".parse().unwrap()));
        assert_eq!(at("fd10:244:0:3::9"), None, "the IPv4-only peer has no IPv6 route");
        assert_eq!(s.len(), 3);
        let senders = s.sender_subnets(&"198.18.0.2:8285".parse().unwrap()).unwrap();
        assert_eq!(senders.v6, vec!["fd10:244:0:2::/64".parse::<Ipv6Net>().unwrap()]);
        assert!(s.sender_subnets(&"198.18.0.3:8285".parse().unwrap()).unwrap().v6.is_empty());
    }

    #[test]
    fn over_an_ipv6_underlay_ipv6_goes_to_the_public_ipv6_where_the_peer_has_one() {
        let mut both = peer("10.244.2.0/24", [198, 18, 0, 2]);
        both.subnet6 = Some("fd10:244:0:2::/64".parse().unwrap());
        both.public_ipv6 = Some("fd00:198:18::2".parse().unwrap());
        let mut v4_underlay = peer("10.244.3.0/24", [198, 18, 0, 3]);
        v4_underlay.subnet6 = Some("fd10:244:0:3::/64".parse().unwrap());
        let peers = [both, v4_underlay];
        let s = Snapshot::build(&peers, 8285, true);
        assert_eq!(s.lookup6("fd10:244:0:2::9".parse().unwrap()), Some("[fd00:198:18::2]:8285".parse().unwrap()));
        assert_eq!(s.lookup6("fd10:244:0:3::9".parse().unwrap()), Some("198.18.0.3:8285".parse().unwrap()));
        assert_eq!(
            s.lookup("10.244.2.9".parse().unwrap()),
            Some("198.18.0.2:8285".parse().unwrap()),
            "IPv4 stays on IPv4"
        );
        // Either public address of a leaseholder is accepted, with its subnets.
        let from6 = s.sender_subnets(&"[fd00:198:18::2]:8285".parse().unwrap()).unwrap();
        assert_eq!(from6.v4, vec!["10.244.2.0/24".parse::<Ipv4Net>().unwrap()]);
        assert!(s.sender_subnets(&"[fd00:198:18::2]:9".parse().unwrap()).is_none());
        assert!(s.sender_subnets(&"[fd00:198:18::7]:8285".parse().unwrap()).is_none());
        // Without an IPv6 underlay on this node, everything goes over IPv4.
        let s = Snapshot::build(&peers, 8285, false);
        assert_eq!(s.lookup6("fd10:244:0:2::9".parse().unwrap()), Some("198.18.0.2:8285".parse().unwrap()));
    }

    #[test]
    fn ipv6_only_peers_are_reached_and_accepted_on_their_public_ipv6() {
        let p = Peer::v6("fd10:244:0:2::/64".parse().unwrap(), "fd00:198:18::2".parse().unwrap(), None);
        let s = Snapshot::build(&[p], 8285, true);
        assert_eq!(s.lookup6("fd10:244:0:2::9".parse().unwrap()), Some("[fd00:198:18::2]:8285".parse().unwrap()));
        assert_eq!(s.lookup("10.244.2.9".parse().unwrap()), None);
        assert_eq!(s.len(), 1);
        let from = s.sender_subnets(&"[fd00:198:18::2]:8285".parse().unwrap()).unwrap();
        assert_eq!((from.v4.len(), from.v6.len()), (0, 1));
    }

    #[test]
    fn swaps_are_seen_by_readers() {
        let t = RouteTable::new();
        assert!(t.load().lookup(Ipv4Addr::new(10, 244, 2, 1)).is_none());
        t.store(Snapshot::new(&[peer("10.244.2.0/24", [198, 18, 0, 2])], 8285));
        assert!(t.load().lookup(Ipv4Addr::new(10, 244, 2, 1)).is_some());
    }
}
