//! The host-gw backend: `ip route replace <peer subnet> via <peer public IP>
//! dev <external interface> proto 87` per peer (through a nexthop object
//! per peer where the kernel has them, see `kernel::nexthop`). Works when
//! all nodes share one L2 segment; the public IP must be an address of the
//! external interface. It owns no device: only the routes. What it wants
//! is [`plan`], pure.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::Programming;
use crate::error::{Error, Result};
use crate::kernel::Netlink;
use crate::model::{nexthop_id, Desired, Peer, RouteSpec};
use crate::report::{ObjectKind, Report};
use crate::sync::converge::{self, Pass};
use crate::sync::iface::ExternalInterface;

pub(crate) struct HostGwBackend {
    nl: Netlink,
    ext: ExternalInterface,
    network: Ipv4Net,
    /// What the last pass left in place.
    routes: BTreeMap<Ipv4Net, RouteSpec>,
}

impl HostGwBackend {
    /// Check that host-gw can work here; changes nothing.
    pub(crate) fn prepare(nl: Netlink, ext: ExternalInterface, network: Ipv4Net) -> Result<HostGwBackend> {
        if !ext.addrs.iter().any(|a| a.addr() == ext.public_ip) {
            return Err(Error::HostGwPublicIpNotOnIface { ip: ext.public_ip, iface: ext.name.clone() });
        }
        Ok(HostGwBackend { nl, ext, network, routes: BTreeMap::new() })
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    /// The routes for `peers`.
    pub(crate) async fn plan(&self, peers: &[Peer]) -> Desired {
        plan(peers, self.ext.index, self.nl.use_nexthops().await)
    }

    /// Converge weft's routes to `desired`.
    pub(crate) async fn converge(&mut self, peers: &[Peer], desired: &Desired, report: &mut Report, pass: Pass) {
        let mut p = Programming::new(peers, desired);
        let result = converge::routes(&self.nl, self.network, &desired.routes, &self.routes, pass).await;
        if let Some(now) = p.record(report, ObjectKind::Route, &desired.routes, result, |dst| vec![*dst]) {
            self.routes = now;
        }
        p.finish(report);
    }
}

/// One route per peer via its public IP out of interface `oif`, naming its
/// nexthop object with `nexthops`. Pure.
pub(crate) fn plan(peers: &[Peer], oif: u32, nexthops: bool) -> Desired {
    let routes = peers
        .iter()
        .map(|p| {
            let nhid = nexthops.then(|| nexthop_id(p.subnet));
            (p.subnet, RouteSpec { gateway: p.public_ip, oif, onlink: false, nhid })
        })
        .collect();
    Desired { routes, ..Desired::default() }.with_nexthops()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn plan_table() {
        let peers = [
            Peer { subnet: "10.244.2.0/24".parse().unwrap(), public_ip: Ipv4Addr::new(198, 18, 0, 2), vtep_mac: None },
            Peer { subnet: "10.244.3.0/24".parse().unwrap(), public_ip: Ipv4Addr::new(198, 18, 0, 3), vtep_mac: None },
        ];
        // (nexthops, expected nhid of the first)
        for (nexthops, nhid) in [(false, None), (true, Some(u32::from(Ipv4Addr::new(10, 244, 2, 0))))] {
            let d = plan(&peers, 4, nexthops);
            assert_eq!(d.routes.len(), 2);
            let r = d.routes[&peers[0].subnet];
            assert_eq!(r, RouteSpec { gateway: Ipv4Addr::new(198, 18, 0, 2), oif: 4, onlink: false, nhid });
            assert_eq!(d.nexthops.len(), if nexthops { 2 } else { 0 });
            assert!(d.neigh.is_empty() && d.fdb.is_empty() && d.unplanned.is_empty());
        }
        assert!(plan(&[], 4, true).routes.is_empty());
    }
}
