//! The desired peer set, derived from the lease table: the bridge between
//! the control plane (leases) and the dataplane (peers). Pure.
//!
//! A lease is another node's word, and a broken or hostile node's word is
//! not programmed: a lease of another backend type, without its backend's
//! data, with a public address no peer can have (unspecified, loopback,
//! multicast, broadcast, link-local, this node's own) or with this node's
//! IPv6 subnet is left out, and said (once per lease, by the daemon). Of
//! two leases that claim one identity (a WireGuard key, a VTEP MAC) the
//! older is programmed, on every node alike, and the other is reported as
//! a fault of other nodes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use weft_dataplane::Peer;
use weft_subnet::Lease;
use weft_types::BackendKind;

/// What the leases are judged against: this node.
#[derive(Debug, Clone)]
pub(crate) struct Own {
    /// The own lease's name (its IPv4 subnet, or IPv6 on IPv6-only networks).
    pub(crate) subnet: IpNet,
    /// The own IPv6 subnet (dual-stack and IPv6-only networks).
    pub(crate) subnet6: Option<Ipv6Net>,
    /// The own public addresses.
    pub(crate) public: Vec<IpAddr>,
    /// The network carries IPv6 (a lease's IPv6 part is used).
    pub(crate) ipv6: bool,
    pub(crate) backend: BackendKind,
}

/// What the backend should program, and what it leaves out and why.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    pub(crate) peers: Vec<Peer>,
    /// Leases left out (or their IPv6 part), each with why: said once per
    /// lease.
    pub(crate) ignored: Vec<(IpNet, String)>,
    /// Leases left out because an older one claims their identity, one
    /// line each: a fault of other nodes.
    pub(crate) duplicates: Vec<String>,
}

/// Why no peer can be at `ip`, if none can.
fn unusable(ip: IpAddr, own: &Own) -> Option<&'static str> {
    if own.public.contains(&ip) {
        return Some("this node's own address");
    }
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                Some("unspecified")
            } else if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_multicast() {
                Some("a multicast address")
            } else if v4 == Ipv4Addr::BROADCAST {
                Some("the broadcast address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.to_ipv4_mapped().is_some() || v6 == Ipv6Addr::UNSPECIFIED {
                Some("an IPv4-mapped address")
            } else {
                None
            }
        }
    }
}

/// The peer `lease` stands for, or why it is left out.
fn peer_of(lease: &Lease, own: &Own) -> Result<Peer, String> {
    let backend = own.backend;
    if lease.attrs.backend() != Some(backend) {
        return Err(format!("backend type {:?}; this network runs {backend}", lease.attrs.backend_kind()));
    }
    if let Some(ip) = lease.attrs.public_ip {
        if let Some(why) = unusable(IpAddr::V4(ip), own) {
            return Err(format!("PublicIP {ip} is {why}"));
        }
    }
    let mut peer = Peer {
        subnet: lease.subnet,
        public_ip: lease.attrs.public_ip,
        vtep_mac: lease.attrs.vtep_mac(),
        subnet6: None,
        public_ipv6: None,
        vtep_mac6: None,
        wg_key: None,
        wg_port: None,
        wg_key6: None,
        wg_port6: None,
    };
    // The IPv6 part counts only on a network that carries IPv6.
    if own.ipv6 {
        if let Some(ip6) = lease.attrs.public_ipv6 {
            if let Some(why) = unusable(IpAddr::V6(ip6), own) {
                return Err(format!("PublicIPv6 {ip6} is {why}"));
            }
        }
        if lease.ipv6_subnet.is_some() && lease.ipv6_subnet == own.subnet6 {
            return Err(format!("its IPv6 subnet {} is this node's own", lease.ipv6_subnet.unwrap_or_default()));
        }
        peer.subnet6 = lease.ipv6_subnet;
        peer.public_ipv6 = lease.attrs.public_ipv6;
        peer.vtep_mac6 = lease.attrs.vtep_mac6();
        peer.wg_key6 = lease.attrs.wireguard_public_key6();
        peer.wg_port6 = lease.attrs.wireguard_port6();
    }
    // An IPv6-only network's lease has only the IPv6 device's MAC.
    let mac = if lease.subnet.is_some() { peer.vtep_mac } else { peer.vtep_mac6 };
    if backend == BackendKind::Vxlan && mac.is_none() {
        return Err("no valid VtepMAC".into());
    }
    if backend == BackendKind::Wireguard {
        peer.wg_key = Some(lease.attrs.wireguard_public_key().ok_or("no valid PublicKey")?);
        peer.wg_port = lease.attrs.wireguard_port();
    }
    Ok(peer)
}

/// What a peer claims as its own alone: its WireGuard key, its VTEP MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Identity {
    Key([u8; 32]),
    Mac(weft_types::MacAddr),
}

/// The identities `peer` claims (no allocation: this runs for every lease
/// on every pass).
fn identities(peer: &Peer) -> impl Iterator<Item = Identity> {
    let key = peer.wg_key.map(Identity::Key);
    key.into_iter().chain([peer.vtep_mac, peer.vtep_mac6].into_iter().flatten().map(Identity::Mac))
}

/// The peers this node's backend should program, from the full lease
/// table (see the module doc).
pub(crate) fn desired_peers<'a>(leases: impl IntoIterator<Item = &'a Lease>, own: &Own) -> Desired {
    let mut found: Vec<(i64, IpNet, Peer)> = Vec::new();
    let mut ignored = Vec::new();
    for lease in leases {
        if lease.id() == own.subnet {
            continue;
        }
        match peer_of(lease, own) {
            Ok(peer) => found.push((lease.create_revision, lease.id(), peer)),
            Err(why) => ignored.push((lease.id(), why)),
        }
    }
    // Oldest first (then by subnet): the same order on every node.
    found.sort_by_key(|a| (a.0, a.1));
    let mut holder: HashMap<Identity, IpNet> = HashMap::with_capacity(found.len());
    let mut duplicates = Vec::new();
    let mut peers = Vec::with_capacity(found.len());
    'leases: for (_, id, peer) in found {
        for claim in identities(&peer) {
            if let Some(first) = holder.get(&claim) {
                let what = match claim {
                    Identity::Key(_) => {
                        format!("the wireguard lease of {id} has the PublicKey of {first}'s (a copied key file?)")
                    }
                    Identity::Mac(mac) => format!("the lease of {id} has the VtepMAC {mac} of {first}'s"),
                };
                duplicates.push(format!("{what}: only {first}, the older, is reached"));
                continue 'leases;
            }
        }
        for claim in identities(&peer) {
            holder.insert(claim, id);
        }
        peers.push(peer);
    }
    peers.sort();
    Desired { peers, ignored, duplicates }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_subnet::LeaseAttrs;

    /// This node: `subnet`, at 198.18.0.1, on a network with IPv6.
    fn own(subnet: IpNet, backend: BackendKind) -> Own {
        Own { subnet, subnet6: None, public: vec!["198.18.0.1".parse().unwrap()], ipv6: true, backend }
    }

    fn lease(subnet: &str, ip: &str, kind: &str, mac: Option<&str>) -> Lease {
        Lease {
            subnet: Some(subnet.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: Some(ip.parse().unwrap()),
                public_ipv6: None,
                backend_type: kind.into(),
                backend_data: mac.map(|m| serde_json::json!({"VNI": 1, "VtepMAC": m}).into()),
                backend_v6_data: None,
                node_id: None,
            },
            etcd_lease: 0,
            mod_revision: 0,
            create_revision: 0,
            ttl: None,
        }
    }

    #[test]
    fn own_other_type_and_macless_leases_are_left_out() {
        let leases = [
            lease("10.244.1.0/24", "198.18.0.1", "vxlan", Some("0e:00:00:00:00:01")),
            lease("10.244.2.0/24", "198.18.0.2", "vxlan", Some("0e:00:00:00:00:02")),
            lease("10.244.3.0/24", "198.18.0.3", "udp", None),
            lease("10.244.4.0/24", "198.18.0.4", "vxlan", None),
            lease("10.244.5.0/24", "198.18.0.5", "vxlan", Some("garbage")),
        ];
        let peers = desired_peers(&leases, &own("10.244.1.0/24".parse().unwrap(), BackendKind::Vxlan)).peers;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].id().to_string(), "10.244.2.0/24");
        assert_eq!(peers[0].vtep_mac.unwrap().to_string(), "0e:00:00:00:00:02");

        let hostgw = [lease("10.244.7.0/24", "198.18.0.7", "host-gw", None)];
        let peers = desired_peers(&hostgw, &own("10.244.1.0/24".parse().unwrap(), BackendKind::HostGw)).peers;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].vtep_mac, None);
        assert_eq!((peers[0].subnet6, peers[0].public_ipv6), (None, None));
    }

    #[test]
    fn dual_stack_leases_give_ipv6_peers() {
        let mut dual = lease("10.244.2.0/24", "198.18.0.2", "vxlan", Some("0e:00:00:00:00:02"));
        dual.ipv6_subnet = Some("fd10:244:0:2::/64".parse().unwrap());
        dual.attrs.public_ipv6 = Some("fd00:198:18::2".parse().unwrap());
        dual.attrs.backend_v6_data = Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:00:00:00:06:02"}).into());
        let peers = desired_peers(&[dual], &own("10.244.1.0/24".parse().unwrap(), BackendKind::Vxlan)).peers;
        assert_eq!(peers[0].subnet6.unwrap().to_string(), "fd10:244:0:2::/64");
        assert_eq!(peers[0].public_ipv6.unwrap().to_string(), "fd00:198:18::2");
        assert_eq!(peers[0].vtep_mac6.unwrap().to_string(), "0e:00:00:00:06:02");
    }

    #[test]
    fn ipv6_only_leases_are_named_by_their_ipv6_subnet() {
        let only6 = |n: u8, mac6: Option<&str>| {
            let mut l = lease("10.244.0.0/24", "198.18.0.1", "vxlan", None);
            l.subnet = None;
            l.attrs.public_ip = None;
            l.ipv6_subnet = Some(format!("fd10:244:0:{n}::/64").parse().unwrap());
            l.attrs.public_ipv6 = Some(format!("fd00:198:18::{n}").parse().unwrap());
            l.attrs.backend_v6_data = mac6.map(|m| serde_json::json!({"VNI": 1, "VtepMAC": m}).into());
            l
        };
        let leases = [only6(1, Some("0e:00:00:00:06:01")), only6(2, Some("0e:00:00:00:06:02")), only6(3, None)];
        let mine: IpNet = "fd10:244:0:1::/64".parse().unwrap();
        let peers = desired_peers(&leases, &own(mine, BackendKind::Vxlan)).peers;
        assert_eq!(peers.len(), 1, "own lease and the one without an IPv6 VTEP MAC are left out");
        assert_eq!(peers[0].id().to_string(), "fd10:244:0:2::/64");
        assert_eq!((peers[0].subnet, peers[0].public_ip), (None, None));
        assert_eq!(peers[0].vtep_mac6.unwrap().to_string(), "0e:00:00:00:06:02");
    }

    #[test]
    fn of_two_wireguard_leases_with_one_key_the_older_is_programmed_and_the_other_named() {
        let wg = |subnet: &str, ip: &str, key: &str, rev: i64| {
            let mut l = lease(subnet, ip, "wireguard", None);
            l.attrs.backend_data = Some(serde_json::json!({"PublicKey": key, "Port": 51820}).into());
            l.create_revision = rev;
            l
        };
        let (a, b) = ("YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=", "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI=");
        let leases = [
            wg("10.244.3.0/24", "198.18.0.3", a, 20),
            wg("10.244.2.0/24", "198.18.0.2", a, 10),
            wg("10.244.4.0/24", "198.18.0.4", b, 30),
            wg("10.244.5.0/24", "198.18.0.5", a, 10),
        ];
        let mine: IpNet = "10.244.1.0/24".parse().unwrap();
        let desired = desired_peers(&leases, &own(mine, BackendKind::Wireguard));
        let ids: Vec<String> = desired.peers.iter().map(|p| p.id().to_string()).collect();
        assert_eq!(ids, ["10.244.2.0/24", "10.244.4.0/24"]);
        assert_eq!(desired.duplicates.len(), 2, "{:?}", desired.duplicates);
        assert!(desired.duplicates[0]
            .starts_with("the wireguard lease of 10.244.5.0/24 has the PublicKey of 10.244.2.0/24's"));
        assert!(desired.duplicates[1]
            .starts_with("the wireguard lease of 10.244.3.0/24 has the PublicKey of 10.244.2.0/24's"));
        // The same on any node: the order of the leases does not matter.
        let mut reversed = leases.clone();
        reversed.reverse();
        let again = desired_peers(&reversed, &own(mine, BackendKind::Wireguard));
        assert_eq!(again.peers, desired.peers);
        assert_eq!(again.duplicates, desired.duplicates);
    }

    #[test]
    fn leases_with_addresses_no_peer_can_have_are_left_out_with_why() {
        let table = [
            ("0.0.0.0", "PublicIP 0.0.0.0 is unspecified"),
            ("127.0.0.1", "PublicIP 127.0.0.1 is a loopback address"),
            ("224.0.0.1", "PublicIP 224.0.0.1 is a multicast address"),
            ("255.255.255.255", "PublicIP 255.255.255.255 is the broadcast address"),
            ("169.254.1.1", "PublicIP 169.254.1.1 is a link-local address"),
            ("198.18.0.1", "PublicIP 198.18.0.1 is this node's own address"),
        ];
        for (ip, why) in table {
            let leases = [lease("10.244.9.0/24", ip, "host-gw", None)];
            let d = desired_peers(&leases, &own("10.244.1.0/24".parse().unwrap(), BackendKind::HostGw));
            assert!(d.peers.is_empty(), "{ip}");
            assert_eq!(d.ignored, [("10.244.9.0/24".parse().unwrap(), why.to_string())], "{ip}");
        }
        let wrong_type = [lease("10.244.3.0/24", "198.18.0.3", "udp", None)];
        let d = desired_peers(&wrong_type, &own("10.244.1.0/24".parse().unwrap(), BackendKind::Vxlan));
        assert_eq!(d.ignored[0].1, "backend type \"udp\"; this network runs vxlan");
    }

    #[test]
    fn the_ipv6_part_counts_only_on_a_network_with_ipv6_and_never_with_the_own_subnet() {
        let mut dual = lease("10.244.2.0/24", "198.18.0.2", "udp", None);
        dual.ipv6_subnet = Some("fd10:244:0:2::/64".parse().unwrap());
        dual.attrs.public_ipv6 = Some("fd00:198:18::2".parse().unwrap());
        let mut v4_only = own("10.244.1.0/24".parse().unwrap(), BackendKind::Udp);
        v4_only.ipv6 = false;
        let d = desired_peers(std::slice::from_ref(&dual), &v4_only);
        assert_eq!((d.peers[0].subnet6, d.peers[0].public_ipv6), (None, None), "ignored on an IPv4-only network");
        let mut same6 = own("10.244.1.0/24".parse().unwrap(), BackendKind::Udp);
        same6.subnet6 = Some("fd10:244:0:2::/64".parse().unwrap());
        let d = desired_peers(std::slice::from_ref(&dual), &same6);
        assert!(d.peers.is_empty());
        assert_eq!(d.ignored[0].1, "its IPv6 subnet fd10:244:0:2::/64 is this node's own");
        dual.attrs.public_ipv6 = Some("ff02::1".parse().unwrap());
        let d = desired_peers(std::slice::from_ref(&dual), &own("10.244.1.0/24".parse().unwrap(), BackendKind::Udp));
        assert_eq!(d.ignored[0].1, "PublicIPv6 ff02::1 is a multicast address");
    }

    #[test]
    fn of_two_vxlan_leases_with_one_vtep_mac_the_older_is_programmed() {
        let mut a = lease("10.244.2.0/24", "198.18.0.2", "vxlan", Some("0e:00:00:00:00:02"));
        let mut b = lease("10.244.3.0/24", "198.18.0.3", "vxlan", Some("0e:00:00:00:00:02"));
        (a.create_revision, b.create_revision) = (9, 5);
        let d = desired_peers(&[a, b], &own("10.244.1.0/24".parse().unwrap(), BackendKind::Vxlan));
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[0].id().to_string(), "10.244.3.0/24");
        assert_eq!(
            d.duplicates,
            ["the lease of 10.244.2.0/24 has the VtepMAC 0e:00:00:00:00:02 of 10.244.3.0/24's: only 10.244.3.0/24, the older, is reached"]
        );
    }
}
