//! The vxlan backend: the kernel forwards; weft programs it.
//!
//! - device `flannel.<VNI>`: `ip link add flannel.1 type vxlan id 1 local
//!   <iface addr> dev <iface> dstport 8472 nolearning`, MTU = external MTU
//!   − 50, address `<subnet network>/32`;
//! - per peer: `ip neigh replace <peer net addr> lladdr <peer VTEP MAC> dev
//!   flannel.1 nud permanent`, `bridge fdb replace <peer VTEP MAC> dev
//!   flannel.1 dst <peer public IP> self permanent`, and `ip route replace
//!   <peer subnet> via <peer net addr> dev flannel.1 onlink proto 87`;
//! - with `DirectRouting`, a peer on the external interface's own subnet gets
//!   `ip route replace <peer subnet> via <peer public IP> dev <iface>` instead.
//!
//! An existing device with the same VNI, port, source and parent is reused
//! (so its MAC, published in the lease, survives restarts); one that differs
//! is recreated.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::{info, warn};
use weft_subnet::config::VxlanOptions;
use weft_subnet::MacAddr;

use crate::converge::{self, Failures};
use crate::error::{Error, Result};
use crate::iface::ExternalInterface;
use crate::netlink::{Netlink, RouteSpec, VxlanSpec};
use crate::peer::Peer;

/// VXLAN over IPv4 adds 50 bytes: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

pub struct VxlanBackend {
    nl: Netlink,
    opts: VxlanOptions,
    ext: ExternalInterface,
    network: Ipv4Net,
    name: String,
    mac: MacAddr,
    index: Option<u32>,
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
    pub async fn prepare(
        nl: Netlink,
        opts: VxlanOptions,
        ext: ExternalInterface,
        network: Ipv4Net,
    ) -> Result<VxlanBackend> {
        let name = format!("flannel.{}", opts.vni);
        let mut mac = derive_vtep_mac(ext.public_ip, opts.vni);
        if let Some(link) = nl.link_by_name(&name).await? {
            if link.vxlan.is_none() {
                return Err(Error::NotVxlan { device: name });
            }
            if Self::compatible(&opts, &ext, &link) {
                if let Some(m) = link.mac {
                    mac = m;
                }
            }
        }
        Ok(VxlanBackend { nl, opts, ext, network, name, mac, index: None })
    }

    fn compatible(opts: &VxlanOptions, ext: &ExternalInterface, link: &crate::netlink::Link) -> bool {
        let Some(v) = &link.vxlan else { return false };
        v.vni == Some(opts.vni)
            && v.port == Some(opts.port)
            && v.local == Some(ext.addr.addr())
            && v.link == Some(ext.index)
            && v.gbp == opts.gbp
    }

    /// `{"VNI": 1, "VtepMAC": "..."}`, as flanneld publishes it.
    pub fn backend_data(&self) -> serde_json::Value {
        serde_json::json!({"VNI": self.opts.vni, "VtepMAC": self.mac.to_string()})
    }

    pub fn mtu(&self) -> u32 {
        self.opts.mtu.unwrap_or(self.ext.mtu.saturating_sub(VXLAN_OVERHEAD))
    }

    pub fn device(&self) -> &str {
        &self.name
    }

    /// Create or reuse the device and give it the subnet's address.
    pub async fn setup(&mut self, subnet: Ipv4Net) -> Result<()> {
        let spec = VxlanSpec {
            name: self.name.clone(),
            vni: self.opts.vni,
            local: self.ext.addr.addr(),
            port: self.opts.port,
            dev: self.ext.index,
            gbp: self.opts.gbp,
            learning: self.opts.learning,
            mac: self.mac,
            mtu: self.mtu(),
        };
        let existing = self.nl.link_by_name(&self.name).await?;
        let link = match existing {
            Some(link) if Self::compatible(&self.opts, &self.ext, &link) => {
                info!(device = %self.name, mac = %self.mac, "reusing existing VXLAN device");
                link
            }
            other => {
                if let Some(old) = other {
                    warn!(device = %self.name, "existing VXLAN device has other settings; recreating it");
                    self.nl.delete_link(old.index).await?;
                }
                self.nl.create_vxlan(&spec).await?;
                info!(device = %self.name, vni = self.opts.vni, mac = %self.mac, port = self.opts.port, "created VXLAN device");
                self.nl.link_by_name(&self.name).await?.ok_or_else(|| Error::Netlink {
                    op: format!("ip link show {}", self.name),
                    detail: "device vanished after creation".into(),
                })?
            }
        };
        self.nl.set_up_with_mtu(link.index, spec.mtu).await?;
        let want = Ipv4Net::new(subnet.network(), 32).expect("/32 is valid");
        for (idx, addr) in self.nl.addresses().await? {
            if idx == link.index && addr != want {
                self.nl.delete_address(link.index, addr).await?;
            }
        }
        self.nl.replace_address(link.index, want).await?;
        self.index = Some(link.index);
        Ok(())
    }

    /// Converge FDB, neighbour and route entries to `peers`.
    pub async fn reconcile(&mut self, peers: &[Peer]) -> Result<usize> {
        let Some(index) = self.index else {
            return Err(Error::Unsupported { backend: "vxlan", reason: "reconcile before setup".into() });
        };
        let mut routes = BTreeMap::new();
        let mut neigh = BTreeMap::new();
        let mut fdb = BTreeMap::new();
        for p in peers {
            let Some(mac) = p.vtep_mac else { continue };
            let direct = self.opts.direct_routing && self.ext.addrs.iter().any(|a| a.contains(&p.public_ip));
            if direct {
                routes.insert(p.subnet, RouteSpec { gateway: p.public_ip, oif: self.ext.index, onlink: false });
            } else {
                neigh.insert(p.subnet.network(), mac);
                fdb.insert(mac, p.public_ip);
                routes.insert(p.subnet, RouteSpec { gateway: p.subnet.network(), oif: index, onlink: true });
            }
        }
        let mut failures = Failures::default();
        // Add paths bottom-up (FDB, neighbour, route) so a route never points
        // at an unprogrammed peer; stale routes go first in `routes`.
        let mut changes = converge::fdb(&self.nl, index, &fdb, &mut failures).await?;
        changes += converge::neighbours(&self.nl, index, &neigh, &mut failures).await?;
        changes += converge::routes(&self.nl, self.network, &routes, &mut failures).await?;
        if let Some(first) = failures.0.first() {
            return Err(Error::PeersFailed { count: failures.0.len(), total: peers.len(), first: first.clone() });
        }
        Ok(changes)
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
