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
//!   [`crate::nexthop`]);
//! - with `DirectRouting`, a peer on the external interface's own subnet gets
//!   `ip route replace <peer subnet> via <peer public IP> dev <iface>` instead.
//!
//! An existing device with the same VNI, port, source and parent is reused
//! (so its MAC, published in the lease, survives restarts); one that differs
//! is recreated.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use tracing::{info, warn};
use weft_types::{MacAddr, VxlanOptions};

use crate::converge::{self, Pass};
use crate::error::{chain, Error, Result};
use crate::events::{Interest, Picture};
use crate::iface::ExternalInterface;
use crate::netlink::{Link, Netlink, RouteSpec, VxlanSpec};
use crate::nexthop;
use crate::peer::Peer;
use crate::report::{ObjectKind, Report};

/// VXLAN over IPv4 adds 50 bytes: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

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
    /// Where the event watch learns what this backend puts in place.
    interest: Arc<RwLock<Interest>>,
}

/// A stable, locally administered MAC for a node's VTEP, derived from its
/// public IP and VNI, so that a re-created device keeps the MAC its lease
/// already publishes.
pub fn derive_vtep_mac(public_ip: Ipv4Addr, vni: u32) -> MacAddr {
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
        interest: Arc<RwLock<Interest>>,
    ) -> Result<VxlanBackend> {
        let name = format!("flannel.{}", opts.vni);
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
            interest,
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
        if !link.up || link.mtu != spec.mtu {
            if known && self.index == Some(link.index) {
                warn!(device = %self.name, up = link.up, mtu = link.mtu, "VXLAN device was set down or its MTU changed; restoring it");
                report.repaired(ObjectKind::Device, 1);
            }
            self.nl.set_up_with_mtu(link.index, spec.mtu).await?;
        }
        let want = Ipv4Net::new(subnet.network(), 32).expect("/32 is a valid prefix");
        if self.nl.ensure_only_address(link.index, want).await? && known && self.index == Some(link.index) {
            warn!(device = %self.name, address = %want, "VXLAN device lost its address; restoring it");
            report.repaired(ObjectKind::Address, 1);
        }
        self.index = Some(link.index);
        Ok(link.index)
    }

    /// Check the device, then converge FDB, neighbour and route entries to
    /// `peers`, recording what was repaired and what is not in place.
    pub(crate) async fn reconcile(&mut self, peers: &[Peer], report: &mut Report, pass: Pass) {
        report.peers_desired = peers.len();
        let Some(subnet) = self.subnet else {
            report.problem("vxlan backend not started");
            return;
        };
        let before = self.index;
        let index = match self.ensure_device(subnet, report).await {
            Ok(i) => i,
            Err(e) => {
                report.problem(format!("{} missing or wrong, repairing: {}", self.name, chain(&e)));
                return;
            }
        };
        // A device created in this pass has none of what the last pass
        // left on the old one: read the kernel.
        let pass = if before == Some(index) { pass } else { Pass::Full };
        let mut routes = BTreeMap::new();
        let mut neigh = BTreeMap::new();
        let mut fdb = BTreeMap::new();
        let nexthops = self.nl.use_nexthops().await;
        for p in peers {
            let nhid = nexthops.then(|| nexthop::id_for(p.subnet));
            let Some(mac) = p.vtep_mac else { continue };
            let direct = self.opts.direct_routing && self.ext.addrs.iter().any(|a| a.contains(&p.public_ip));
            if direct {
                routes.insert(p.subnet, RouteSpec { gateway: p.public_ip, oif: self.ext.index, onlink: false, nhid });
            } else {
                neigh.insert(p.subnet.network(), mac);
                fdb.insert(mac, p.public_ip);
                routes.insert(p.subnet, RouteSpec { gateway: p.subnet.network(), oif: index, onlink: true, nhid });
            }
        }
        if let Ok(mut i) = self.interest.write() {
            i.picture = Some(Picture::of(&routes, &neigh, &fdb));
        }
        // Add paths bottom-up (FDB, neighbour, route) so a route never points
        // at an unprogrammed peer; stale routes go first in `routes`.
        let mut failed: BTreeSet<Ipv4Net> = BTreeSet::new();
        let mut first_error: Option<String> = None;
        let mut note = |subnets: Vec<Ipv4Net>, e: &Error, failed: &mut BTreeSet<Ipv4Net>| {
            first_error.get_or_insert_with(|| chain(e));
            failed.extend(subnets);
        };
        let all: Vec<Ipv4Net> = peers.iter().map(|p| p.subnet).collect();
        match converge::fdb(&self.nl, index, &fdb, &self.fdb, pass).await {
            Ok(o) => {
                report.changes += o.changes;
                report.repaired(ObjectKind::Fdb, o.repairs);
                for (mac, e) in &o.failed {
                    let of_mac = peers.iter().filter(|p| p.vtep_mac == Some(*mac)).map(|p| p.subnet).collect();
                    note(of_mac, e, &mut failed);
                }
                self.fdb = o.programmed(&fdb);
            }
            Err(e) => note(all.clone(), &e, &mut failed),
        }
        match converge::neighbours(&self.nl, index, &neigh, &self.neigh, pass).await {
            Ok(o) => {
                report.changes += o.changes;
                report.repaired(ObjectKind::Neighbour, o.repairs);
                for (ip, e) in &o.failed {
                    let of_ip = peers.iter().filter(|p| p.subnet.network() == *ip).map(|p| p.subnet).collect();
                    note(of_ip, e, &mut failed);
                }
                self.neigh = o.programmed(&neigh);
            }
            Err(e) => note(all.clone(), &e, &mut failed),
        }
        match converge::routes(&self.nl, self.network, &routes, &self.routes, pass).await {
            Ok(o) => {
                report.changes += o.changes;
                report.repaired(ObjectKind::Route, o.repairs);
                for (dst, e) in &o.failed {
                    note(vec![*dst], e, &mut failed);
                }
                self.routes = o.programmed(&routes);
            }
            Err(e) => note(all, &e, &mut failed),
        }
        let failed = failed.into_iter().filter(|s| peers.iter().any(|p| p.subnet == *s)).count();
        report.peers_programmed = peers.len() - failed;
        if let Some(first) = first_error {
            report.problem(format!("{failed} of {} peers not programmed, retrying: {first}", peers.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_stable_and_locally_administered() {
        let a = derive_vtep_mac(Ipv4Addr::new(198, 18, 0, 1), 1);
        assert_eq!(a, derive_vtep_mac(Ipv4Addr::new(198, 18, 0, 1), 1));
        assert_ne!(a, derive_vtep_mac(Ipv4Addr::new(198, 18, 0, 2), 1));
        assert_ne!(a, derive_vtep_mac(Ipv4Addr::new(198, 18, 0, 1), 2));
        assert_eq!(a.0[0] & 0b11, 0b10, "unicast, locally administered");
    }
}
