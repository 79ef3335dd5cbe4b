//! Which peers each WireGuard device gets, and at which endpoint: pure, from
//! the peers and the backend's options, as flanneld chooses them.
//!
//! - `separate` (flanneld's default): `flannel-wg` reaches every peer's
//!   IPv4 subnet at `PublicIP:Port`; on a dual-stack network
//!   `flannel-wg-v6` reaches its IPv6 subnet at `[PublicIPv6]:PortV6`,
//!   with the key of `BackendV6Data` (else `BackendData`'s).
//! - `auto`, `ipv4`, `ipv6` (one device for both families on a dual-stack
//!   network): a peer's AllowedIPs are both its subnets; its endpoint is
//!   IPv4 (`ipv4`), IPv6 (`ipv6`; a peer without `PublicIPv6` is
//!   unreachable), or IPv6 when it has one and IPv4 otherwise (`auto`).
//!
//! A peer without a key (not a wireguard lease) or without an IPv4 subnet
//! and address is left out.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use ipnet::IpNet;
use weft_types::WireguardMode;

use crate::forward::wg::Key;
use crate::model::Peer;

/// A peer of one device, from its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TunnelPeer {
    pub(crate) key: Key,
    pub(crate) endpoint: SocketAddr,
    /// Its subnet of the device's family: its name in metrics and
    /// `/readyz`, and its AllowedIPs with `more`.
    pub(crate) subnet: IpNet,
    /// Its IPv6 subnet when one device carries both families (`Mode`
    /// `auto`, `ipv4`, `ipv6`).
    pub(crate) more: Option<IpNet>,
}

/// How this node's devices are laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) mode: WireguardMode,
    /// `ListenPort`: a peer's port when its lease names none.
    pub(crate) port: u16,
    /// `ListenPortV6`, the same for `flannel-wg-v6`.
    pub(crate) port6: u16,
    /// A dual-stack network.
    pub(crate) dual_stack: bool,
}

impl Layout {
    /// `flannel-wg-v6` exists: a dual-stack network in `separate` mode.
    pub(crate) fn separate_v6(&self) -> bool {
        self.dual_stack && self.mode == WireguardMode::Separate
    }

    /// One device carries both families.
    fn one_device(&self) -> bool {
        self.dual_stack && self.mode != WireguardMode::Separate
    }
}

/// The peers of each device.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// `flannel-wg`'s.
    pub(crate) v4: Vec<TunnelPeer>,
    /// `flannel-wg-v6`'s (none without that device).
    pub(crate) v6: Option<Vec<TunnelPeer>>,
    /// Peers that cannot be reached (`Mode` ipv6, no `PublicIPv6`).
    pub(crate) unreachable: Vec<IpNet>,
    /// Peers whose key `refuse` refused, with why.
    pub(crate) refused: Vec<(IpNet, &'static str)>,
}

/// The plan for `peers`; a peer whose key `refuse` says why not to use is
/// left out and listed.
pub(crate) fn plan(peers: &[Peer], layout: &Layout, mut refuse: impl FnMut(&Key) -> Option<&'static str>) -> Plan {
    let mut refused: Vec<(IpNet, &'static str)> = Vec::new();
    let mut usable = |p: &Peer, key: [u8; 32]| -> Option<Key> {
        let key = Key(key);
        match refuse(&key) {
            None => Some(key),
            Some(why) => {
                if !refused.iter().any(|(id, _)| *id == p.id()) {
                    refused.push((p.id(), why));
                }
                None
            }
        }
    };
    let one_device = layout.one_device();
    let mode = layout.mode;
    let unreachable = peers
        .iter()
        .filter(|p| mode == WireguardMode::Ipv6 && p.wg_key.is_some() && p.public_ipv6.is_none())
        .map(Peer::id)
        .collect();
    let v4 = peers
        .iter()
        .filter_map(|p| {
            let port = p.wg_port.unwrap_or(layout.port);
            let v4 = SocketAddr::V4(SocketAddrV4::new(p.public_ip?, port));
            let v6 = p.public_ipv6.map(|ip| SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)));
            let endpoint = match mode {
                WireguardMode::Separate | WireguardMode::Ipv4 => v4,
                WireguardMode::Auto => v6.filter(|_| one_device).unwrap_or(v4),
                WireguardMode::Ipv6 => v6?,
            };
            Some(TunnelPeer {
                key: usable(p, p.wg_key?)?,
                endpoint,
                subnet: IpNet::V4(p.subnet?),
                more: p.subnet6.filter(|_| one_device).map(IpNet::V6),
            })
        })
        .collect();
    let v6 = layout.separate_v6().then(|| {
        peers
            .iter()
            .filter_map(|p| {
                Some(TunnelPeer {
                    key: usable(p, p.wg_key6.or(p.wg_key)?)?,
                    endpoint: SocketAddr::V6(SocketAddrV6::new(
                        p.public_ipv6?,
                        p.wg_port6.unwrap_or(layout.port6),
                        0,
                        0,
                    )),
                    subnet: IpNet::V6(p.subnet6?),
                    more: None,
                })
            })
            .collect()
    });
    Plan { v4, v6, unreachable, refused }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn peer(n: u8, v6: bool, key6: bool, port: Option<u16>) -> Peer {
        let mut p = Peer::v4(format!("10.244.{n}.0/24").parse().unwrap(), Ipv4Addr::new(198, 18, 0, n), None);
        p.wg_key = Some([n; 32]);
        p.wg_port = port;
        if v6 {
            p.subnet6 = Some(format!("fd00:{n}::/64").parse().unwrap());
            p.public_ipv6 = Some(format!("fd18::{n}").parse::<Ipv6Addr>().unwrap());
        }
        if key6 {
            p.wg_key6 = Some([n + 100; 32]);
            p.wg_port6 = Some(7000);
        }
        p
    }

    fn layout(mode: WireguardMode, dual_stack: bool) -> Layout {
        Layout { mode, port: 51820, port6: 51821, dual_stack }
    }

    fn ends(peers: &[TunnelPeer]) -> Vec<String> {
        peers.iter().map(|p| format!("{} {} {:?}", p.subnet, p.endpoint, p.more.map(|m| m.to_string()))).collect()
    }

    #[test]
    fn endpoints_and_allowed_ips_by_mode() {
        let peers = [peer(2, true, false, None), peer(3, false, false, Some(6000))];
        // (mode, dual-stack, flannel-wg's peers, flannel-wg-v6's)
        type Case = (WireguardMode, bool, &'static [&'static str], Option<&'static [&'static str]>);
        let cases: [Case; 5] = [
            (
                WireguardMode::Separate,
                false,
                &["10.244.2.0/24 198.18.0.2:51820 None", "10.244.3.0/24 198.18.0.3:6000 None"],
                None,
            ),
            (
                WireguardMode::Separate,
                true,
                &["10.244.2.0/24 198.18.0.2:51820 None", "10.244.3.0/24 198.18.0.3:6000 None"],
                Some(&["fd00:2::/64 [fd18::2]:51821 None"]),
            ),
            (
                WireguardMode::Auto,
                true,
                &["10.244.2.0/24 [fd18::2]:51820 Some(\"fd00:2::/64\")", "10.244.3.0/24 198.18.0.3:6000 None"],
                None,
            ),
            (
                WireguardMode::Ipv4,
                true,
                &["10.244.2.0/24 198.18.0.2:51820 Some(\"fd00:2::/64\")", "10.244.3.0/24 198.18.0.3:6000 None"],
                None,
            ),
            (WireguardMode::Ipv6, true, &["10.244.2.0/24 [fd18::2]:51820 Some(\"fd00:2::/64\")"], None),
        ];
        for (mode, dual, want4, want6) in cases {
            let p = plan(&peers, &layout(mode, dual), |_| None);
            assert_eq!(ends(&p.v4), want4, "{mode:?} dual-stack {dual}");
            assert_eq!(p.v6.as_deref().map(ends), want6.map(|w| w.iter().map(|s| s.to_string()).collect()), "{mode:?}");
        }
    }

    #[test]
    fn mode_ipv6_names_the_peers_it_cannot_reach() {
        let peers = [peer(2, true, false, None), peer(3, false, false, None)];
        let p = plan(&peers, &layout(WireguardMode::Ipv6, true), |_| None);
        assert_eq!(p.unreachable, vec![peers[1].id()]);
        assert!(plan(&peers, &layout(WireguardMode::Auto, true), |_| None).unreachable.is_empty());
    }

    #[test]
    fn the_v6_device_takes_the_v6_key_and_port_when_the_lease_has_them() {
        let peers = [peer(2, true, true, None)];
        let p = plan(&peers, &layout(WireguardMode::Separate, true), |_| None);
        let v6 = &p.v6.unwrap()[0];
        assert_eq!((v6.key, v6.endpoint.port()), (Key([102; 32]), 7000));
        assert_eq!(p.v4[0].key, Key([2; 32]), "flannel-wg keeps BackendData's key");
    }

    #[test]
    fn a_refused_key_leaves_its_peer_out_of_both_devices_named_once() {
        let peers = [peer(2, true, false, None), peer(3, true, false, None)];
        let weak = Key([3; 32]);
        let p = plan(&peers, &layout(WireguardMode::Separate, true), |k| (*k == weak).then_some("weak"));
        assert_eq!(ends(&p.v4), ["10.244.2.0/24 198.18.0.2:51820 None"]);
        assert_eq!(p.v6.as_deref().map(ends), Some(vec!["fd00:2::/64 [fd18::2]:51821 None".to_string()]));
        assert_eq!(p.refused, vec![(peers[1].id(), "weak")]);
    }

    #[test]
    fn peers_without_a_key_or_an_address_are_left_out() {
        let mut no_key = peer(2, false, false, None);
        no_key.wg_key = None;
        let v6_only = Peer::v6("fd00:4::/64".parse().unwrap(), "fd18::4".parse().unwrap(), None);
        let p = plan(&[no_key, v6_only], &layout(WireguardMode::Separate, true), |_| None);
        assert_eq!(p, Plan { v4: vec![], v6: Some(vec![]), unreachable: vec![], refused: vec![] });
    }
}
