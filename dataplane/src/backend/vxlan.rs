//! The vxlan backend: the kernel forwards; weft programs it.
//!
//! - device `flannel.<VNI>`: `ip link add flannel.1 type vxlan id 1 local
//!   <iface addr> dev <iface> dstport 8472 nolearning`, MTU = external MTU
//!   − 50, address `<subnet network>/32`;
//! - per peer: `ip neigh replace <peer net addr> lladdr <peer VTEP MAC> dev
//!   flannel.1 nud permanent`, `bridge fdb replace <peer VTEP MAC> dev
//!   flannel.1 dst <peer public IP> self permanent`, and `ip route replace
//!   <peer subnet> via <peer net addr> dev flannel.1 onlink proto 87`
//!   (through a nexthop object per peer where the kernel has them, see
//!   `kernel::nexthop`);
//! - with `DirectRouting`, a peer on the external interface's own subnet gets
//!   `ip route replace <peer subnet> via <peer public IP> dev <iface>` instead.
//!
//! What it wants for the peers is [`plan`], pure; the face publishes it
//! and [`VxlanBackend::converge`] puts it in place bottom-up.
//!
//! An existing device with the same VNI, port, source and parent is reused
//! (so its MAC, published in the lease, survives restarts); one that differs
//! is recreated.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::{info, warn};
use weft_types::{BackendKind, MacAddr, VxlanOptions};

use super::Programming;
use crate::error::{chain, Error, Result};
use crate::kernel::{Link, Netlink, VxlanSpec};
use crate::model::{nexthop_id, vxlan_device, Desired, Peer, RouteSpec};
use crate::report::{ObjectKind, Problem, Report};
use crate::sync::converge::{self, Pass};
use crate::sync::device;
use crate::sync::iface::ExternalInterface;

/// VXLAN over IPv4 adds 50 bytes: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub(crate) const VXLAN_OVERHEAD: u32 = 50;

pub(crate) struct VxlanBackend {
    nl: Netlink,
    opts: VxlanOptions,
    ext: ExternalInterface,
    network: Ipv4Net,
    name: String,
    mac: MacAddr,
    /// The node's subnet, once started.
    subnet: Option<Ipv4Net>,
    /// The device's index as last seen (it changes when the device is recreated).
    index: Option<u32>,
    /// What the last pass left in place, to tell repairs from changes.
    routes: BTreeMap<Ipv4Net, RouteSpec>,
    neigh: BTreeMap<Ipv4Addr, MacAddr>,
    fdb: BTreeMap<MacAddr, Ipv4Addr>,
}

/// A stable, locally administered MAC for a node's VTEP, derived from its
/// public IP and VNI, so that a re-created device keeps the MAC its lease
/// already publishes.
pub(crate) fn derive_vtep_mac(public_ip: Ipv4Addr, vni: u32) -> MacAddr {
    // FNV-1a over the inputs; any stable mix would do.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in public_ip.octets().into_iter().chain(vni.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    MacAddr([0x0e, b[0], b[1], b[2], b[3], b[4]])
}

impl VxlanBackend {
    /// Look at the host, change nothing: decide the device's name and MAC.
    /// An existing VXLAN device with the same VNI keeps its MAC (peers know
    /// it from the lease), even if other settings make weft recreate it.
    pub(crate) async fn prepare(
        nl: Netlink,
        opts: VxlanOptions,
        ext: ExternalInterface,
        network: Ipv4Net,
    ) -> Result<VxlanBackend> {
        let name = vxlan_device(opts.vni);
        let mut mac = derive_vtep_mac(ext.public_ip, opts.vni);
        if let Some(link) = nl.link_by_name(&name).await? {
            let Some(v) = &link.vxlan else { return Err(Error::NotVxlan { device: name }) };
            if let (Some(m), true) = (link.mac, v.vni == Some(opts.vni)) {
                mac = m;
            }
        }
        Ok(VxlanBackend {
            nl,
            opts,
            ext,
            network,
            name,
            mac,
            subnet: None,
            index: None,
            routes: BTreeMap::new(),
            neigh: BTreeMap::new(),
            fdb: BTreeMap::new(),
        })
    }

    /// Whether an existing device has every attribute weft configures that
    /// cannot be changed in place (`ip -d link show` shows them).
    fn compatible(&self, link: &Link) -> bool {
        let Some(v) = &link.vxlan else { return false };
        v.vni == Some(self.opts.vni)
            && v.port == Some(self.opts.port)
            && v.local == Some(self.ext.addr.addr())
            && v.link == Some(self.ext.index)
            && v.gbp == self.opts.gbp
            && v.learning.unwrap_or(true) == self.opts.learning
            && link.mac == Some(self.mac)
    }

    /// `{"VNI": 1, "VtepMAC": "..."}`, as flanneld publishes it.
    pub(crate) fn backend_data(&self) -> serde_json::Value {
        serde_json::json!({"VNI": self.opts.vni, "VtepMAC": self.mac.to_string()})
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.opts.mtu.unwrap_or(self.ext.mtu.saturating_sub(VXLAN_OVERHEAD))
    }

    pub(crate) fn device(&self) -> (&str, Option<u32>) {
        (&self.name, self.index)
    }

    fn spec(&self) -> VxlanSpec {
        VxlanSpec {
            name: self.name.clone(),
            vni: self.opts.vni,
            local: self.ext.addr.addr(),
            port: self.opts.port,
            dev: self.ext.index,
            gbp: self.opts.gbp,
            learning: self.opts.learning,
            mac: self.mac,
            mtu: self.mtu(),
        }
    }

    /// Create or reuse the device and give it the subnet's address.
    pub(crate) async fn start(&mut self, subnet: Ipv4Net) -> Result<()> {
        self.subnet = Some(subnet);
        self.ensure_device(subnet, &mut Report::default()).await.map(|_| ())
    }

    /// Make the device exist as configured, up, with its MTU and address;
    /// returns its index. A device whose VNI, port, source, parent,
    /// learning, GBP or MAC differ cannot be changed in place: it is
    /// deleted and created again.
    async fn ensure_device(&mut self, subnet: Ipv4Net, report: &mut Report) -> Result<u32> {
        let known = self.index.is_some();
        let spec = self.spec();
        let link = match self.nl.link_by_name(&self.name).await? {
            Some(link) if link.vxlan.is_none() => return Err(Error::NotVxlan { device: self.name.clone() }),
            Some(link) if self.compatible(&link) => {
                if !known {
                    info!(device = %self.name, mac = %self.mac, "reusing existing VXLAN device");
                }
                link
            }
            other => {
                if let Some(old) = other {
                    warn!(device = %self.name, "VXLAN device has other settings than configured; recreating it");
                    self.nl.delete_link(old.index).await?;
                } else if known {
                    warn!(device = %self.name, "VXLAN device is missing; recreating it");
                }
                if known {
                    report.repaired(ObjectKind::Device, 1);
                }
                self.nl.create_vxlan(&spec).await?;
                info!(device = %self.name, vni = self.opts.vni, mac = %self.mac, port = self.opts.port, "created VXLAN device");
                self.nl.link_by_name(&self.name).await?.ok_or_else(|| Error::Vanished { device: self.name.clone() })?
            }
        };
        let want = Ipv4Net::new(subnet.network(), 32).expect("/32 is a valid prefix");
        let same = known && self.index == Some(link.index);
        device::configure(&self.nl, &link, spec.mtu, want, same, "VXLAN device", report).await?;
        self.index = Some(link.index);
        Ok(link.index)
    }

    /// The first half of a pass: check the device (recreating it if
    /// needed) and plan the peers' entries on it. `None` when the device
    /// cannot be put right (the problem is in `report`). A device created
    /// in this pass has none of what the last pass left on the old one, so
    /// the pass returned reads the kernel.
    pub(crate) async fn check_and_plan(
        &mut self,
        peers: &[Peer],
        report: &mut Report,
        pass: Pass,
    ) -> Option<(Desired, Pass)> {
        let Some(subnet) = self.subnet else {
            report.problem(Problem::NotStarted { backend: BackendKind::Vxlan });
            return None;
        };
        let before = self.index;
        let index = match self.ensure_device(subnet, report).await {
            Ok(i) => i,
            Err(e) => {
                report.problem(Problem::Device { name: self.name.clone(), error: chain(&e) });
                return None;
            }
        };
        let pass = if before == Some(index) { pass } else { Pass::Full };
        let nexthops = self.nl.use_nexthops().await;
        Some((plan(peers, index, &self.ext, self.opts.direct_routing, nexthops), pass))
    }

    /// The second half: converge FDB, neighbour and route entries to
    /// `desired`, bottom-up (FDB, neighbour, route) so that a route never
    /// points at an unprogrammed peer; stale routes go first in `routes`.
    pub(crate) async fn converge(&mut self, peers: &[Peer], desired: &Desired, report: &mut Report, pass: Pass) {
        let Some(index) = self.index else {
            // check_and_plan found the device first; without it nothing is programmed.
            report.problem(Problem::NotStarted { backend: BackendKind::Vxlan });
            return;
        };
        let mut p = Programming::new(peers, desired);
        let fdb = converge::fdb(&self.nl, index, &desired.fdb, &self.fdb, pass).await;
        let of_mac = |mac: &MacAddr| peers.iter().filter(|p| p.vtep_mac == Some(*mac)).map(|p| p.subnet).collect();
        if let Some(now) = p.record(report, ObjectKind::Fdb, &desired.fdb, fdb, of_mac) {
            self.fdb = now;
        }
        let neigh = converge::neighbours(&self.nl, index, &desired.neigh, &self.neigh, pass).await;
        let of_ip = |ip: &Ipv4Addr| peers.iter().filter(|p| p.subnet.network() == *ip).map(|p| p.subnet).collect();
        if let Some(now) = p.record(report, ObjectKind::Neighbour, &desired.neigh, neigh, of_ip) {
            self.neigh = now;
        }
        let routes = converge::routes(&self.nl, self.network, &desired.routes, &self.routes, pass).await;
        if let Some(now) = p.record(report, ObjectKind::Route, &desired.routes, routes, |dst| vec![*dst]) {
            self.routes = now;
        }
        p.finish(report);
    }
}

/// What the vxlan backend wants for `peers`, on device `dev`: per peer a
/// permanent neighbour (its subnet address -> its VTEP MAC), an FDB entry
/// (MAC -> public IP) and a route via the subnet address onlink; with
/// `direct_routing`, a peer on one of the external interface's subnets
/// gets a route via its public IP on that interface instead, and needs no
/// MAC. A peer that needs a MAC and has none is left out. With `nexthops`,
/// each route names its nexthop object. Pure.
pub(crate) fn plan(peers: &[Peer], dev: u32, ext: &ExternalInterface, direct_routing: bool, nexthops: bool) -> Desired {
    let mut d = Desired::default();
    for p in peers {
        let nhid = nexthops.then(|| nexthop_id(p.subnet));
        let direct = direct_routing && ext.addrs.iter().any(|a| a.contains(&p.public_ip));
        if direct {
            d.routes.insert(p.subnet, RouteSpec { gateway: p.public_ip, oif: ext.index, onlink: false, nhid });
            continue;
        }
        let Some(mac) = p.vtep_mac else {
            d.unplanned.push((p.subnet, "no VTEP MAC in its lease"));
            continue;
        };
        d.neigh.insert(p.subnet.network(), mac);
        d.fdb.insert(mac, p.public_ip);
        d.routes.insert(p.subnet, RouteSpec { gateway: p.subnet.network(), oif: dev, onlink: true, nhid });
    }
    d.with_nexthops()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext() -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addr: "198.18.0.1/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(198, 18, 0, 1),
            addrs: vec!["198.18.0.1/24".parse().unwrap()],
        }
    }

    fn peer(subnet: &str, ip: [u8; 4], mac: Option<&str>) -> Peer {
        Peer {
            subnet: subnet.parse().unwrap(),
            public_ip: Ipv4Addr::from(ip),
            vtep_mac: mac.map(|m| m.parse().unwrap()),
        }
    }

    #[test]
    fn plan_table() {
        let mac = "0e:00:00:00:00:02";
        let near = peer("10.244.2.0/24", [198, 18, 0, 2], Some(mac));
        let far = peer("10.244.3.0/24", [198, 19, 0, 3], Some("0e:00:00:00:00:03"));
        let no_mac_near = peer("10.244.4.0/24", [198, 18, 0, 4], None);
        let no_mac_far = peer("10.244.5.0/24", [198, 19, 0, 5], None);
        let peers = [near.clone(), far.clone(), no_mac_near.clone(), no_mac_far.clone()];
        let via_vtep = |p: &Peer, nhid| RouteSpec { gateway: p.subnet.network(), oif: 9, onlink: true, nhid };
        let direct = |p: &Peer| RouteSpec { gateway: p.public_ip, oif: 2, onlink: false, nhid: None };

        // (direct routing, nexthops, routes, neighbours, unplanned)
        type Case = (bool, bool, Vec<(Ipv4Net, RouteSpec)>, usize, Vec<Ipv4Net>);
        let cases: Vec<Case> = vec![
            (
                false,
                false,
                vec![(near.subnet, via_vtep(&near, None)), (far.subnet, via_vtep(&far, None))],
                2,
                vec![no_mac_near.subnet, no_mac_far.subnet],
            ),
            (
                false,
                true,
                vec![
                    (near.subnet, via_vtep(&near, Some(nexthop_id(near.subnet)))),
                    (far.subnet, via_vtep(&far, Some(nexthop_id(far.subnet)))),
                ],
                2,
                vec![no_mac_near.subnet, no_mac_far.subnet],
            ),
            (
                // A peer on the interface's subnet is routed directly and
                // needs no MAC; one beyond it still goes through the VTEP.
                true,
                false,
                vec![
                    (near.subnet, direct(&near)),
                    (far.subnet, via_vtep(&far, None)),
                    (no_mac_near.subnet, direct(&no_mac_near)),
                ],
                1,
                vec![no_mac_far.subnet],
            ),
        ];
        for (direct_routing, nexthops, routes, neigh, unplanned) in cases {
            let d = plan(&peers, 9, &ext(), direct_routing, nexthops);
            let case = format!("direct {direct_routing} nexthops {nexthops}");
            assert_eq!(d.routes, routes.into_iter().collect(), "{case}");
            assert_eq!(d.neigh.len(), neigh, "{case}");
            assert_eq!(d.fdb.len(), neigh, "{case}: an FDB entry per neighbour");
            assert_eq!(d.unplanned.iter().map(|(s, _)| *s).collect::<Vec<_>>(), unplanned, "{case}");
            assert_eq!(d.nexthops.len(), if nexthops { d.routes.len() } else { 0 }, "{case}");
        }
        let d = plan(&peers, 9, &ext(), false, false);
        assert_eq!(d.neigh.get(&near.subnet.network()), near.vtep_mac.as_ref());
        assert_eq!(d.fdb.get(&near.vtep_mac.unwrap()), Some(&near.public_ip));
    }

    #[test]
    fn vtep_mac_is_stable_and_locally_administered() {
        let a = derive_vtep_mac(Ipv4Addr::new(198, 18, 0, 1), 1);
        assert_eq!(a, derive_vtep_mac(Ipv4Addr::new(198, 18, 0, 1), 1));
        assert_ne!(a, derive_vtep_mac(Ipv4Addr::new(198, 18, 0, 2), 1));
        assert_ne!(a, derive_vtep_mac(Ipv4Addr::new(198, 18, 0, 1), 2));
        assert_eq!(a.0[0] & 0b11, 0b10, "unicast, locally administered");
    }
}
