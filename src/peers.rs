//! The desired peer set, derived from the lease table: the bridge between
//! the control plane (leases) and the dataplane (peers). Pure.

use std::collections::HashMap;

use ipnet::IpNet;
use tracing::warn;
use weft_dataplane::Peer;
use weft_subnet::Lease;
use weft_types::BackendKind;

/// The peers a backend of type `backend` should program, from the full
/// lease table: every lease but our own, of the same backend type (leases of
/// another type are skipped with a warning, as flanneld does), and for
/// vxlan only those that publish a VTEP MAC, for wireguard only those that
/// publish a public key.
///
/// Two wireguard leases with one `PublicKey` (a copied key file, a golden
/// image) cannot both be reached: a key names one peer. The older lease
/// (lower create revision, then lower subnet) is programmed, on every
/// node alike; each other one is left out and named in `duplicates`.
pub(crate) fn desired_peers<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    own_subnet: IpNet,
    backend: BackendKind,
) -> Desired {
    let mut found: Vec<(i64, IpNet, Peer)> = Vec::new();
    for lease in leases {
        if lease.id() == own_subnet {
            continue;
        }
        if lease.attrs.backend() != Some(backend) {
            warn!(
                subnet = %lease.id(),
                "ignoring lease of backend type {:?}; this network runs {backend}",
                lease.attrs.backend_kind()
            );
            continue;
        }
        let vtep_mac = lease.attrs.vtep_mac();
        // An IPv6-only network's lease has only the IPv6 device's MAC.
        let mac = if lease.subnet.is_some() { vtep_mac } else { lease.attrs.vtep_mac6() };
        if backend == BackendKind::Vxlan && mac.is_none() {
            warn!(subnet = %lease.id(), "ignoring vxlan lease without a valid VtepMAC");
            continue;
        }
        let (wg_key6, wg_port6) = (lease.attrs.wireguard_public_key6(), lease.attrs.wireguard_port6());
        let (wg_key, wg_port) = match backend {
            BackendKind::Wireguard => match lease.attrs.wireguard_public_key() {
                Some(key) => (Some(key), lease.attrs.wireguard_port()),
                None => {
                    warn!(subnet = %lease.id(), "ignoring wireguard lease without a valid PublicKey");
                    continue;
                }
            },
            _ => (None, None),
        };
        found.push((
            lease.create_revision,
            lease.id(),
            Peer {
                subnet: lease.subnet,
                public_ip: lease.attrs.public_ip,
                vtep_mac,
                subnet6: lease.ipv6_subnet,
                public_ipv6: lease.attrs.public_ipv6,
                vtep_mac6: lease.attrs.vtep_mac6(),
                wg_key,
                wg_port,
                wg_key6,
                wg_port6,
            },
        ));
    }
    found.sort_by_key(|a| (a.0, a.1));
    let mut holder: HashMap<[u8; 32], IpNet> = HashMap::new();
    let mut duplicates = Vec::new();
    let mut peers = Vec::with_capacity(found.len());
    for (_, id, peer) in found {
        if let Some(key) = peer.wg_key {
            if let Some(first) = holder.get(&key) {
                duplicates.push(format!(
                    "the wireguard lease of {id} has the PublicKey of {first}'s (a copied key file?): only {first}, the older, is reached"
                ));
                continue;
            }
            holder.insert(key, id);
        }
        peers.push(peer);
    }
    peers.sort();
    Desired { peers, duplicates }
}

/// What the backend should program, and what it leaves out and why.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    pub(crate) peers: Vec<Peer>,
    /// Leases left out because another holds their key, one line each.
    pub(crate) duplicates: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_subnet::LeaseAttrs;

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
        let peers = desired_peers(&leases, "10.244.1.0/24".parse().unwrap(), BackendKind::Vxlan).peers;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].id().to_string(), "10.244.2.0/24");
        assert_eq!(peers[0].vtep_mac.unwrap().to_string(), "0e:00:00:00:00:02");

        let hostgw = [lease("10.244.7.0/24", "198.18.0.7", "host-gw", None)];
        let peers = desired_peers(&hostgw, "10.244.1.0/24".parse().unwrap(), BackendKind::HostGw).peers;
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
        let peers = desired_peers(&[dual], "10.244.1.0/24".parse().unwrap(), BackendKind::Vxlan).peers;
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
        let own: IpNet = "fd10:244:0:1::/64".parse().unwrap();
        let peers = desired_peers(&leases, own, BackendKind::Vxlan).peers;
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
        let own: IpNet = "10.244.1.0/24".parse().unwrap();
        let desired = desired_peers(&leases, own, BackendKind::Wireguard);
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
        let again = desired_peers(&reversed, own, BackendKind::Wireguard);
        assert_eq!(again.peers, desired.peers);
        assert_eq!(again.duplicates, desired.duplicates);
    }
}
