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
//!   `ip route replace <peer subnet> via <peer public IP> dev <iface>` instead;
//! - on dual-stack networks the same again for IPv6, as flanneld does it:
//!   a second device `flannel-v6.<VNI>` (same VNI and port, `local <iface
//!   IPv6 addr>`, MTU = external MTU − 70, address `<v6 subnet
//!   network>/128`, `accept_ra` 0) whose MAC is published in
//!   `BackendV6Data`, and per peer its neighbour, FDB entry (to the peer's
//!   `PublicIPv6`) and `ip -6 route replace <peer v6 subnet> via <peer v6
//!   net addr> dev flannel-v6.1 onlink` (no nexthop objects for IPv6);
//! - on IPv6-only networks only the IPv6 device and entries.
//!
//! What it wants for the peers is [`plan`], pure; the face publishes it
//! and [`VxlanBackend::converge`] puts it in place bottom-up.
//!
//! An existing device with the same VNI, port, source and parent is reused
//! (so its MAC, published in the lease, survives restarts); one that differs
//! is recreated.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{info, warn};
use weft_types::{BackendKind, MacAddr, VxlanOptions};

use futures::future::BoxFuture;

use super::{owners_of_route, Backend, KernelBackend, Programming};
use crate::error::{chain, Error, Result};
use crate::kernel::{Link, Netlink, VxlanSpec};
use crate::model::{nexthop_id, vxlan6_device, vxlan_device, Desired, DualStack, Peer, RouteSpec};
use crate::report::{ObjectKind, Problem, Report};
use crate::sync::converge::{self, Pass};
use crate::sync::device;
use crate::sync::iface::ExternalInterface;

/// VXLAN over IPv4 adds 50 bytes: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub(crate) const VXLAN_OVERHEAD: u32 = 50;

/// VXLAN over IPv6 adds 70 bytes: the outer IPv6 header is 40.
pub(crate) const VXLAN6_OVERHEAD: u32 = 70;

/// One VXLAN device: `flannel.<VNI>` (IPv4) or `flannel-v6.<VNI>` (IPv6),
/// and what the last pass left on it.
struct Vtep {
    v6: bool,
    name: String,
    mac: MacAddr,
    /// The source address of the tunnel (the external interface's).
    local: IpAddr,
    mtu: u32,
    /// The device's address, once started: `<subnet>/32` or `<v6 subnet>/128`.
    addr: Option<IpNet>,
    /// The device's index as last seen (it changes when the device is recreated).
    index: Option<u32>,
    neigh: BTreeMap<IpAddr, MacAddr>,
    fdb: BTreeMap<MacAddr, IpAddr>,
}

pub(crate) struct VxlanBackend {
    nl: Netlink,
    opts: VxlanOptions,
    ext: ExternalInterface,
    networks: Vec<IpNet>,
    /// The IPv4 device (none on IPv6-only networks).
    v4: Option<Vtep>,
    /// The IPv6 device (dual-stack and IPv6-only networks).
    v6: Option<Vtep>,
    /// What the last pass left in place (both families).
    routes: BTreeMap<IpNet, RouteSpec>,
}

/// A stable, locally administered MAC for a node's VTEP, derived from its
/// public IP and VNI, so that a re-created device keeps the MAC its lease
/// already publishes.
pub(crate) fn derive_vtep_mac(public_ip: IpAddr, vni: u32) -> MacAddr {
    let ip = match public_ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    // FNV-1a over the inputs; any stable mix would do.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ip.into_iter().chain(vni.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    MacAddr([0x0e, b[0], b[1], b[2], b[3], b[4]])
}

impl Vtep {
    /// The device of one family, deciding its MAC: an existing VXLAN
    /// device with the same VNI keeps its MAC (peers know it from the
    /// lease), even if other settings make weft recreate it.
    async fn prepare(
        nl: &Netlink,
        name: String,
        local: IpAddr,
        public: IpAddr,
        mtu: u32,
        opts: &VxlanOptions,
    ) -> Result<Vtep> {
        let mut mac = derive_vtep_mac(public, opts.vni);
        if let Some(link) = nl.link_by_name(&name).await? {
            let Some(v) = &link.vxlan else { return Err(Error::NotVxlan { device: name }) };
            if let (Some(m), true) = (link.mac, v.vni == Some(opts.vni)) {
                mac = m;
            }
        }
        Ok(Vtep {
            v6: local.is_ipv6(),
            name,
            mac,
            local,
            mtu,
            addr: None,
            index: None,
            neigh: BTreeMap::new(),
            fdb: BTreeMap::new(),
        })
    }

    /// Whether an existing device has every attribute weft configures that
    /// cannot be changed in place (`ip -d link show` shows them).
    fn compatible(&self, link: &Link, opts: &VxlanOptions, dev: u32) -> bool {
        let Some(v) = &link.vxlan else { return false };
        v.vni == Some(opts.vni)
            && v.port == Some(opts.port)
            && v.local == Some(self.local)
            && v.link == Some(dev)
            && v.gbp == opts.gbp
            && v.learning.unwrap_or(true) == opts.learning
            && link.mac == Some(self.mac)
    }

    fn spec(&self, opts: &VxlanOptions, dev: u32) -> VxlanSpec {
        VxlanSpec {
            name: self.name.clone(),
            vni: opts.vni,
            local: self.local,
            port: opts.port,
            dev,
            gbp: opts.gbp,
            learning: opts.learning,
            mac: self.mac,
            mtu: self.mtu,
        }
    }

    /// Make the device exist as configured, up, with its MTU and address;
    /// returns its index. A device whose VNI, port, source, parent,
    /// learning, GBP or MAC differ cannot be changed in place: it is
    /// deleted and created again.
    async fn ensure(&mut self, nl: &Netlink, opts: &VxlanOptions, dev: u32, report: &mut Report) -> Result<u32> {
        let Some(addr) = self.addr else { return Err(Error::Vanished { device: self.name.clone() }) };
        let known = self.index.is_some();
        let spec = self.spec(opts, dev);
        let mut fresh = false;
        let link = match nl.link_by_name(&self.name).await? {
            Some(link) if link.vxlan.is_none() => return Err(Error::NotVxlan { device: self.name.clone() }),
            Some(link) if self.compatible(&link, opts, dev) => {
                if !known {
                    info!(device = %self.name, mac = %self.mac, "reusing existing VXLAN device");
                }
                link
            }
            other => {
                if let Some(old) = other {
                    warn!(device = %self.name, "VXLAN device has other settings than configured; recreating it");
                    nl.delete_link(old.index).await?;
                } else if known {
                    warn!(device = %self.name, "VXLAN device is missing; recreating it");
                }
                if known {
                    report.repaired(ObjectKind::Device, 1);
                }
                nl.create_vxlan(&spec).await?;
                fresh = true;
                info!(device = %self.name, vni = opts.vni, mac = %self.mac, port = opts.port, "created VXLAN device");
                nl.link_by_name(&self.name).await?.ok_or_else(|| Error::Vanished { device: self.name.clone() })?
            }
        };
        if self.v6 && (fresh || !known) {
            // Router advertisements must not give the device addresses or
            // routes of their own (flanneld sets the same).
            let sysctl = format!("/proc/sys/net/ipv6/conf/{}/accept_ra", self.name);
            std::fs::write(&sysctl, "0").map_err(|e| Error::Sysctl { path: sysctl.clone(), source: e })?;
        }
        let same = known && self.index == Some(link.index);
        device::configure(nl, &link, spec.mtu, &[addr], same, "VXLAN device", report).await?;
        self.index = Some(link.index);
        Ok(link.index)
    }

    /// Converge this device's FDB and neighbour entries to `desired`'s of
    /// its family.
    async fn converge(
        &mut self,
        nl: &Netlink,
        peers: &[Peer],
        desired: &Desired,
        p: &mut Programming<'_>,
        report: &mut Report,
        pass: Pass,
    ) {
        let Some(index) = self.index else { return };
        let (neigh, fdb) = desired.family(self.v6);
        let done = converge::fdb(nl, index, &fdb, &self.fdb, pass).await;
        let v6 = self.v6;
        let of_mac = |mac: &MacAddr| {
            peers
                .iter()
                .filter(|p| if v6 { p.vtep_mac6 == Some(*mac) } else { p.vtep_mac == Some(*mac) })
                .map(Peer::id)
                .collect()
        };
        if let Some(now) = p.record(report, ObjectKind::Fdb, &fdb, done, of_mac) {
            self.fdb = now;
        }
        let done = converge::neighbours(nl, index, v6, &neigh, &self.neigh, pass).await;
        let of_ip = |ip: &IpAddr| {
            peers
                .iter()
                .filter(|p| match ip {
                    IpAddr::V4(a) => p.subnet.is_some_and(|s| s.network() == *a),
                    IpAddr::V6(a) => p.subnet6.is_some_and(|s| s.network() == *a),
                })
                .map(Peer::id)
                .collect()
        };
        if let Some(now) = p.record(report, ObjectKind::Neighbour, &neigh, done, of_ip) {
            self.neigh = now;
        }
    }
}

impl VxlanBackend {
    /// Look at the host, change nothing: decide the devices' names and
    /// MACs. `network`: the IPv4 device is wanted; `network6`: the IPv6
    /// device is wanted (dual-stack or IPv6-only network).
    pub(crate) async fn prepare(
        nl: Netlink,
        opts: VxlanOptions,
        ext: ExternalInterface,
        network: DualStack,
    ) -> Result<VxlanBackend> {
        let v4 = match network.v4 {
            None => None,
            Some(_) => {
                let (Some(local), Some(public)) = (ext.addr, ext.public_ip) else {
                    return Err(Error::NoAddress { iface: ext.name.clone() });
                };
                let mtu4 = opts.mtu.unwrap_or(ext.mtu.saturating_sub(VXLAN_OVERHEAD));
                Some(Vtep::prepare(&nl, vxlan_device(opts.vni), local.addr().into(), public.into(), mtu4, &opts).await?)
            }
        };
        let v6 = match network.v6 {
            None => None,
            Some(_) => {
                let (Some(local), Some(public)) = (ext.addr6, ext.public_ipv6) else {
                    return Err(Error::NoAddress6 { iface: ext.name.clone() });
                };
                let mtu6 = opts.mtu.unwrap_or(ext.mtu.saturating_sub(VXLAN6_OVERHEAD));
                Some(Vtep::prepare(&nl, vxlan6_device(opts.vni), local.into(), public.into(), mtu6, &opts).await?)
            }
        };
        Ok(VxlanBackend { nl, opts, networks: network.both(), ext, v4, v6, routes: BTreeMap::new() })
    }

    /// `{"VNI": 1, "VtepMAC": "..."}`, as flanneld publishes it (none on
    /// IPv6-only networks).
    pub(crate) fn backend_data(&self) -> Option<serde_json::Value> {
        let v4 = self.v4.as_ref()?;
        Some(serde_json::json!({"VNI": self.opts.vni, "VtepMAC": v4.mac.to_string()}))
    }

    /// `BackendV6Data`: the same for the IPv6 device (dual-stack and
    /// IPv6-only networks).
    pub(crate) fn backend_v6_data(&self) -> Option<serde_json::Value> {
        let v6 = self.v6.as_ref()?;
        Some(serde_json::json!({"VNI": self.opts.vni, "VtepMAC": v6.mac.to_string()}))
    }

    /// The MTU pods should use: the smallest of the devices', so that pod
    /// packets of both families fit without fragmentation.
    pub(crate) fn mtu(&self) -> u32 {
        self.vteps().map(|v| v.mtu).min().unwrap_or(self.ext.mtu)
    }

    fn vteps(&self) -> impl Iterator<Item = &Vtep> {
        self.v4.iter().chain(self.v6.as_ref())
    }

    /// The devices and their indexes as last seen.
    pub(crate) fn devices(&self) -> Vec<(String, Option<u32>)> {
        self.vteps().map(|v| (v.name.clone(), v.index)).collect()
    }

    /// Create or reuse the devices and give them the subnets' addresses.
    pub(crate) async fn start(&mut self, subnets: DualStack) -> Result<()> {
        let (subnet, subnet6) = (subnets.v4, subnets.v6);
        if let Some(v4) = &mut self.v4 {
            let Some(s4) = subnet else { return Err(Error::Vanished { device: v4.name.clone() }) };
            v4.addr = Some(IpNet::V4(Ipv4Net::new(s4.network(), 32).expect("/32 is a valid prefix")));
            v4.ensure(&self.nl, &self.opts, self.ext.index, &mut Report::default()).await?;
        }
        if let Some(v6) = &mut self.v6 {
            let Some(s6) = subnet6 else { return Err(Error::Vanished { device: v6.name.clone() }) };
            v6.addr = Some(IpNet::V6(Ipv6Net::new(s6.network(), 128).expect("/128 is a valid prefix")));
            v6.ensure(&self.nl, &self.opts, self.ext.index, &mut Report::default()).await?;
        }
        Ok(())
    }

    /// The first half of a pass: check the devices (recreating them if
    /// needed) and plan the peers' entries on them. `None` when a device
    /// cannot be put right (the problem is in `report`). A device created
    /// in this pass has none of what the last pass left on the old one, so
    /// the pass returned reads the kernel.
    pub(crate) async fn check_and_plan(
        &mut self,
        peers: &[Peer],
        report: &mut Report,
        pass: Pass,
    ) -> Option<(Desired, Pass)> {
        if self.vteps().any(|v| v.addr.is_none()) {
            report.problem(Problem::NotStarted { backend: BackendKind::Vxlan });
            return None;
        }
        let mut pass = pass;
        let mut devs = Devices { v4: None, v6: None };
        for vtep in self.v4.iter_mut().chain(self.v6.as_mut()) {
            let before = vtep.index;
            match vtep.ensure(&self.nl, &self.opts, self.ext.index, report).await {
                Ok(i) => {
                    if before != Some(i) {
                        pass = Pass::Full;
                    }
                    *(if vtep.v6 { &mut devs.v6 } else { &mut devs.v4 }) = Some(i);
                }
                Err(e) => {
                    report.problem(Problem::Device { name: vtep.name.clone(), error: chain(&e) });
                    return None;
                }
            }
        }
        let nexthops = self.nl.use_nexthops().await;
        Some((plan(peers, devs, &self.ext, self.opts.direct_routing, nexthops), pass))
    }

    /// The second half: converge FDB, neighbour and route entries to
    /// `desired`, bottom-up (FDB, neighbour, route) so that a route never
    /// points at an unprogrammed peer; stale routes go first in `routes`.
    pub(crate) async fn converge(&mut self, peers: &[Peer], desired: &Desired, report: &mut Report, pass: Pass) {
        if self.vteps().any(|v| v.index.is_none()) {
            // check_and_plan found the devices first; without them nothing is programmed.
            report.problem(Problem::NotStarted { backend: BackendKind::Vxlan });
            return;
        }
        let mut p = Programming::new(peers, desired);
        for vtep in self.v4.iter_mut().chain(self.v6.as_mut()) {
            vtep.converge(&self.nl, peers, desired, &mut p, report, pass).await;
        }
        let routes = converge::routes(&self.nl, &self.networks, &desired.routes, &self.routes, pass).await;
        if let Some(now) =
            p.record(report, ObjectKind::Route, &desired.routes, routes, |dst| owners_of_route(peers, dst))
        {
            self.routes = now;
        }
        p.finish(report);
    }
}

/// The indexes of the VXLAN devices: the IPv4 one (none on IPv6-only
/// networks) and the IPv6 one (dual-stack and IPv6-only networks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Devices {
    pub(crate) v4: Option<u32>,
    pub(crate) v6: Option<u32>,
}

/// What the vxlan backend wants for `peers`, on devices `dev`: per peer a
/// permanent neighbour (its subnet address -> its VTEP MAC), an FDB entry
/// (MAC -> public IP) and a route via the subnet address onlink; with
/// `direct_routing`, a peer on one of the external interface's subnets
/// gets a route via its public IP on that interface instead, and needs no
/// MAC. A peer that needs a MAC and has none is left out. With `nexthops`,
/// each IPv4 route names its nexthop object. With an IPv6 device, the
/// same for each peer's IPv6 subnet, VTEP MAC and `PublicIPv6` (a peer
/// without them is an IPv4-only node: it gets no IPv6 entries). Pure.
pub(crate) fn plan(
    peers: &[Peer],
    dev: Devices,
    ext: &ExternalInterface,
    direct_routing: bool,
    nexthops: bool,
) -> Desired {
    let mut d = Desired::default();
    for p in peers {
        if let (Some(dev4), Some(subnet), Some(ip)) = (dev.v4, p.subnet, p.public_ip) {
            let nhid = nexthops.then(|| nexthop_id(subnet));
            let direct = direct_routing && ext.addrs.iter().any(|a| a.contains(&ip));
            if direct {
                d.routes.insert(subnet.into(), RouteSpec { gateway: ip.into(), oif: ext.index, onlink: false, nhid });
            } else if let Some(mac) = p.vtep_mac {
                d.neigh.insert(subnet.network().into(), mac);
                d.fdb.insert(mac, ip.into());
                d.routes.insert(
                    subnet.into(),
                    RouteSpec { gateway: subnet.network().into(), oif: dev4, onlink: true, nhid },
                );
            } else {
                d.unplanned.push((p.id(), "no VTEP MAC in its lease"));
                continue;
            }
        }
        let (Some(dev6), Some(subnet6), Some(ip6)) = (dev.v6, p.subnet6, p.public_ipv6) else { continue };
        let direct6 = direct_routing && ext.addrs6.iter().any(|a| a.contains(&ip6));
        if direct6 {
            d.routes
                .insert(subnet6.into(), RouteSpec { gateway: ip6.into(), oif: ext.index, onlink: false, nhid: None });
        } else if let Some(mac6) = p.vtep_mac6 {
            let gw6: Ipv6Addr = subnet6.network();
            d.neigh.insert(gw6.into(), mac6);
            d.fdb.insert(mac6, ip6.into());
            d.routes.insert(subnet6.into(), RouteSpec { gateway: gw6.into(), oif: dev6, onlink: true, nhid: None });
        } else {
            d.unplanned.push((p.id(), "no IPv6 VTEP MAC in its lease (BackendV6Data)"));
        }
    }
    d.with_nexthops()
}

impl Backend for VxlanBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }

    fn mtu(&self) -> u32 {
        VxlanBackend::mtu(self)
    }

    fn backend_data(&self) -> Option<serde_json::Value> {
        VxlanBackend::backend_data(self)
    }

    fn backend_v6_data(&self) -> Option<serde_json::Value> {
        VxlanBackend::backend_v6_data(self)
    }

    fn devices(&self) -> Vec<(String, Option<u32>)> {
        VxlanBackend::devices(self)
    }

    fn start(&mut self, subnets: DualStack) -> BoxFuture<'_, Result<()>> {
        Box::pin(VxlanBackend::start(self, subnets))
    }
}

impl KernelBackend for VxlanBackend {
    fn check_and_plan<'a>(
        &'a mut self,
        peers: &'a [Peer],
        report: &'a mut Report,
        pass: Pass,
    ) -> BoxFuture<'a, Option<(Desired, Pass)>> {
        Box::pin(VxlanBackend::check_and_plan(self, peers, report, pass))
    }

    fn converge<'a>(
        &'a mut self,
        peers: &'a [Peer],
        desired: &'a Desired,
        report: &'a mut Report,
        pass: Pass,
    ) -> BoxFuture<'a, ()> {
        Box::pin(VxlanBackend::converge(self, peers, desired, report, pass))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ext() -> ExternalInterface {
        ExternalInterface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addr: Some("198.18.0.1/24".parse().unwrap()),
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            addrs: vec!["198.18.0.1/24".parse().unwrap()],
            addr6: Some("fd00:198:18::1".parse().unwrap()),
            public_ipv6: Some("fd00:198:18::1".parse().unwrap()),
            addrs6: vec!["fd00:198:18::1/64".parse().unwrap()],
            local_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            local_ipv6: Some("fd00:198:18::1".parse().unwrap()),
        }
    }

    fn peer(subnet: &str, ip: [u8; 4], mac: Option<&str>) -> Peer {
        Peer::v4(subnet.parse().unwrap(), Ipv4Addr::from(ip), mac.map(|m| m.parse().unwrap()))
    }

    const V4_ONLY: Devices = Devices { v4: Some(9), v6: None };

    #[test]
    fn plan_table() {
        let mac = "0e:00:00:00:00:02";
        let near = peer("10.244.2.0/24", [198, 18, 0, 2], Some(mac));
        let far = peer("10.244.3.0/24", [198, 19, 0, 3], Some("0e:00:00:00:00:03"));
        let no_mac_near = peer("10.244.4.0/24", [198, 18, 0, 4], None);
        let no_mac_far = peer("10.244.5.0/24", [198, 19, 0, 5], None);
        let peers = [near.clone(), far.clone(), no_mac_near.clone(), no_mac_far.clone()];
        let via_vtep =
            |p: &Peer, nhid| RouteSpec { gateway: p.subnet.unwrap().network().into(), oif: 9, onlink: true, nhid };
        let direct = |p: &Peer| RouteSpec { gateway: p.public_ip.unwrap().into(), oif: 2, onlink: false, nhid: None };

        // (direct routing, nexthops, routes, neighbours, unplanned)
        type Case = (bool, bool, Vec<(Ipv4Net, RouteSpec)>, usize, Vec<Ipv4Net>);
        let cases: Vec<Case> = vec![
            (
                false,
                false,
                vec![(near.subnet.unwrap(), via_vtep(&near, None)), (far.subnet.unwrap(), via_vtep(&far, None))],
                2,
                vec![no_mac_near.subnet.unwrap(), no_mac_far.subnet.unwrap()],
            ),
            (
                false,
                true,
                vec![
                    (near.subnet.unwrap(), via_vtep(&near, Some(nexthop_id(near.subnet.unwrap())))),
                    (far.subnet.unwrap(), via_vtep(&far, Some(nexthop_id(far.subnet.unwrap())))),
                ],
                2,
                vec![no_mac_near.subnet.unwrap(), no_mac_far.subnet.unwrap()],
            ),
            (
                // A peer on the interface's subnet is routed directly and
                // needs no MAC; one beyond it still goes through the VTEP.
                true,
                false,
                vec![
                    (near.subnet.unwrap(), direct(&near)),
                    (far.subnet.unwrap(), via_vtep(&far, None)),
                    (no_mac_near.subnet.unwrap(), direct(&no_mac_near)),
                ],
                1,
                vec![no_mac_far.subnet.unwrap()],
            ),
        ];
        for (direct_routing, nexthops, routes, neigh, unplanned) in cases {
            let d = plan(&peers, V4_ONLY, &ext(), direct_routing, nexthops);
            let case = format!("direct {direct_routing} nexthops {nexthops}");
            assert_eq!(d.routes, routes.into_iter().map(|(k, v)| (IpNet::V4(k), v)).collect(), "{case}");
            assert_eq!(d.neigh.len(), neigh, "{case}");
            assert_eq!(d.fdb.len(), neigh, "{case}: an FDB entry per neighbour");
            let unplanned: Vec<IpNet> = unplanned.into_iter().map(IpNet::V4).collect();
            assert_eq!(d.unplanned.iter().map(|(s, _)| *s).collect::<Vec<_>>(), unplanned, "{case}");
            assert_eq!(d.nexthops.len(), if nexthops { d.routes.len() } else { 0 }, "{case}");
        }
        let d = plan(&peers, V4_ONLY, &ext(), false, false);
        assert_eq!(d.neigh.get(&IpAddr::V4(near.subnet.unwrap().network())), near.vtep_mac.as_ref());
        assert_eq!(d.fdb.get(&near.vtep_mac.unwrap()), Some(&IpAddr::V4(near.public_ip.unwrap())));
    }

    #[test]
    fn dual_stack_plan_adds_the_ipv6_device_entries() {
        let mut dual = peer("10.244.2.0/24", [198, 18, 0, 2], Some("0e:00:00:00:00:02"));
        dual.subnet6 = Some("fd10:244:0:2::/64".parse().unwrap());
        dual.public_ipv6 = Some("fd00:198:18::2".parse().unwrap());
        dual.vtep_mac6 = Some("0e:00:00:00:06:02".parse().unwrap());
        let mut no_mac6 = peer("10.244.3.0/24", [198, 18, 0, 3], Some("0e:00:00:00:00:03"));
        no_mac6.subnet6 = Some("fd10:244:0:3::/64".parse().unwrap());
        no_mac6.public_ipv6 = Some("fd00:198:18::3".parse().unwrap());
        let v4_only = peer("10.244.4.0/24", [198, 18, 0, 4], Some("0e:00:00:00:00:04"));
        let peers = [dual.clone(), no_mac6.clone(), v4_only.clone()];
        let devs = Devices { v4: Some(9), v6: Some(10) };

        let d = plan(&peers, devs, &ext(), false, true);
        let s6 = dual.subnet6.unwrap();
        let gw6 = IpAddr::V6(s6.network());
        assert_eq!(d.routes[&IpNet::V6(s6)], RouteSpec { gateway: gw6, oif: 10, onlink: true, nhid: None });
        assert_eq!(d.neigh[&gw6], dual.vtep_mac6.unwrap());
        assert_eq!(d.fdb[&dual.vtep_mac6.unwrap()], IpAddr::V6(dual.public_ipv6.unwrap()));
        assert_eq!(d.routes.len(), 4, "three IPv4 routes and the dual peer's IPv6 one");
        assert_eq!(d.nexthops.len(), 3, "nexthop objects for IPv4 only");
        assert_eq!(d.unplanned, vec![(no_mac6.id(), "no IPv6 VTEP MAC in its lease (BackendV6Data)")]);
        let (neigh6, fdb6) = d.family(true);
        assert_eq!((neigh6.len(), fdb6.len()), (1, 1), "the IPv6 device gets only IPv6 entries");
        let (neigh4, fdb4) = d.family(false);
        assert_eq!((neigh4.len(), fdb4.len()), (3, 3));

        // DirectRouting over IPv6: a peer on the interface's IPv6 subnet.
        let d = plan(&peers, devs, &ext(), true, false);
        assert_eq!(
            d.routes[&IpNet::V6(s6)],
            RouteSpec { gateway: dual.public_ipv6.unwrap().into(), oif: 2, onlink: false, nhid: None }
        );
        // Without the IPv6 device nothing IPv6 is planned.
        assert!(plan(&peers, V4_ONLY, &ext(), false, false).routes.keys().all(|k| matches!(k, IpNet::V4(_))));
    }

    #[test]
    fn vtep_mac_is_stable_and_locally_administered() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = derive_vtep_mac(ip("198.18.0.1"), 1);
        assert_eq!(a, derive_vtep_mac(ip("198.18.0.1"), 1));
        assert_ne!(a, derive_vtep_mac(ip("198.18.0.2"), 1));
        assert_ne!(a, derive_vtep_mac(ip("198.18.0.1"), 2));
        assert_ne!(a, derive_vtep_mac(ip("fd00:198:18::1"), 1));
        assert_eq!(a.0[0] & 0b11, 0b10, "unicast, locally administered");
    }

    #[test]
    fn ipv6_only_plan_has_only_the_ipv6_device_entries() {
        let mac6: MacAddr = "0e:00:00:00:06:02".parse().unwrap();
        let p = Peer::v6("fd10:244:0:2::/64".parse().unwrap(), "fd00:198:18::2".parse().unwrap(), Some(mac6));
        let no_mac = Peer::v6("fd10:244:0:3::/64".parse().unwrap(), "fd00:198:18::3".parse().unwrap(), None);
        let mut ext = ext();
        (ext.addr, ext.public_ip, ext.addrs) = (None, None, Vec::new());
        let d = plan(&[p.clone(), no_mac.clone()], Devices { v4: None, v6: Some(10) }, &ext, false, true);
        let gw6 = IpAddr::V6(p.subnet6.unwrap().network());
        assert_eq!(
            d.routes.into_iter().collect::<Vec<_>>(),
            [(p.id(), RouteSpec { gateway: gw6, oif: 10, onlink: true, nhid: None })]
        );
        assert_eq!(d.neigh.into_iter().collect::<Vec<_>>(), [(gw6, mac6)]);
        assert_eq!(d.fdb.into_iter().collect::<Vec<_>>(), [(mac6, IpAddr::V6(p.public_ipv6.unwrap()))]);
        assert!(d.nexthops.is_empty());
        assert_eq!(d.unplanned, vec![(no_mac.id(), "no IPv6 VTEP MAC in its lease (BackendV6Data)")]);
    }
}
