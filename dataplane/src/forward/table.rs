//! The route table of the udp backend: remote subnets to peers, by
//! longest-prefix match, plus who may send what: datagrams are accepted
//! only from a leaseholder's public IP and the backend's port, carrying
//! packets whose source is inside that leaseholder's subnet.
//!
//! The control plane builds a new [`Snapshot`] and swaps it in; forwarding
//! threads load the current one per batch without taking a lock
//! (`arc-swap`), so lease changes never stall forwarding.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;

use crate::model::Peer;

/// One immutable version of the table.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (prefix length, network -> peer), longest prefix first.
    by_len: Vec<(u8, HashMap<u32, SocketAddrV4>)>,
    /// Public IPs of current leases, each with its subnets: the only
    /// senders accepted, and what they may send from.
    sources: HashMap<Ipv4Addr, Vec<Ipv4Net>>,
    /// The port every peer sends from (the backend's port).
    port: u16,
}

impl Snapshot {
    /// Build from the peer set; every peer is reached at `public_ip:port`.
    pub fn new(peers: &[Peer], port: u16) -> Snapshot {
        let mut lens: HashMap<u8, HashMap<u32, SocketAddrV4>> = HashMap::new();
        let mut sources: HashMap<Ipv4Addr, Vec<Ipv4Net>> = HashMap::new();
        for p in peers {
            lens.entry(p.subnet.prefix_len())
                .or_default()
                .insert(u32::from(p.subnet.network()), SocketAddrV4::new(p.public_ip, port));
            sources.entry(p.public_ip).or_default().push(p.subnet);
        }
        let mut by_len: Vec<_> = lens.into_iter().collect();
        by_len.sort_by_key(|b| std::cmp::Reverse(b.0));
        Snapshot { by_len, sources, port }
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
    pub fn sender_subnets(&self, src: &SocketAddr) -> Option<&[Ipv4Net]> {
        let (ip, port) = match src {
            SocketAddr::V4(v4) => (*v4.ip(), v4.port()),
            SocketAddr::V6(v6) => (v6.ip().to_ipv4_mapped()?, v6.port()),
        };
        if port != self.port {
            return None;
        }
        self.sources.get(&ip).map(Vec::as_slice)
    }

    /// How many routes the snapshot holds.
    pub fn len(&self) -> usize {
        self.by_len.iter().map(|(_, m)| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every route, for inspection.
    pub fn routes(&self) -> Vec<(Ipv4Net, SocketAddrV4)> {
        let mut out = Vec::new();
        for (len, nets) in &self.by_len {
            for (net, peer) in nets {
                if let Ok(n) = Ipv4Net::new(Ipv4Addr::from(*net), *len) {
                    out.push((n, *peer));
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
    fn swaps_are_seen_by_readers() {
        let t = RouteTable::new();
        assert!(t.load().lookup(Ipv4Addr::new(10, 244, 2, 1)).is_none());
        t.store(Snapshot::new(&[peer("10.244.2.0/24", [198, 18, 0, 2])], 8285));
        assert!(t.load().lookup(Ipv4Addr::new(10, 244, 2, 1)).is_some());
    }
}
