//! The host-gw backend: `ip route replace <peer subnet> via <peer public IP>
//! dev <external interface> proto 87` per peer (through a nexthop object
//! per peer where the kernel has them, see `kernel::nexthop`), and on
//! dual-stack networks `ip -6 route replace <peer v6 subnet> via <peer
//! PublicIPv6> dev <external interface> proto 87` (only those on IPv6-only
//! networks). Works when all nodes
//! share one L2 segment; the public IP must be an address of the external
//! interface. It owns no device: only the routes. What it wants is
//! [`plan`], pure.

use std::collections::BTreeMap;

use ipnet::IpNet;

use futures::future::BoxFuture;
use weft_types::BackendKind;

use super::{owners_of_route, Backend, KernelBackend, Programming};
use crate::error::{Error, Result};
use crate::kernel::Netlink;
use crate::model::{nexthop_id, Desired, DualStack, Peer, RouteSpec};
use crate::report::{ObjectKind, Report};
use crate::sync::converge::{self, Pass};
use crate::sync::iface::ExternalInterface;

pub(crate) struct HostGwBackend {
    nl: Netlink,
    ext: ExternalInterface,
    networks: Vec<IpNet>,
    /// Whether IPv6 routes are wanted (dual-stack network).
    v6: bool,
    /// What the last pass left in place.
    routes: BTreeMap<IpNet, RouteSpec>,
}

impl HostGwBackend {
    /// Check that host-gw can work here; changes nothing.
    pub(crate) fn prepare(nl: Netlink, ext: ExternalInterface, network: DualStack) -> Result<HostGwBackend> {
        if network.v4.is_some() {
            match ext.public_ip {
                Some(ip) if ext.addrs.iter().any(|a| a.addr() == ip) => {}
                Some(ip) => return Err(Error::HostGwPublicIpNotOnIface { ip: ip.into(), iface: ext.name.clone() }),
                None => return Err(Error::NoAddress { iface: ext.name.clone() }),
            }
        }
        if network.v6.is_some() {
            match ext.public_ipv6 {
                Some(ip6) if ext.addrs6.iter().any(|a| a.addr() == ip6) => {}
                Some(ip6) => return Err(Error::HostGwPublicIpNotOnIface { ip: ip6.into(), iface: ext.name.clone() }),
                None => return Err(Error::NoAddress6 { iface: ext.name.clone() }),
            }
        }
        Ok(HostGwBackend { nl, ext, networks: network.both(), v6: network.v6.is_some(), routes: BTreeMap::new() })
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    /// The routes for `peers`.
    pub(crate) async fn plan(&self, peers: &[Peer]) -> Desired {
        plan(peers, self.ext.index, self.v6, self.nl.use_nexthops().await)
    }

    /// Converge weft's routes to `desired`.
    pub(crate) async fn converge(&mut self, peers: &[Peer], desired: &Desired, report: &mut Report, pass: Pass) {
        let mut p = Programming::new(peers, desired);
        let result = converge::routes(&self.nl, &self.networks, &desired.routes, &self.routes, pass).await;
        if let Some(now) =
            p.record(report, ObjectKind::Route, &desired.routes, result, |dst| owners_of_route(peers, dst))
        {
            self.routes = now;
        }
        p.finish(report);
    }
}

/// One route per peer via its public IP out of interface `oif`, naming its
/// nexthop object with `nexthops`; with `v6`, one more to its IPv6 subnet
/// via its `PublicIPv6` (a peer without both has no IPv6 route: it is an
/// IPv4-only node). Pure.
pub(crate) fn plan(peers: &[Peer], oif: u32, v6: bool, nexthops: bool) -> Desired {
    let mut d = Desired::default();
    for p in peers {
        if let (Some(subnet), Some(ip)) = (p.subnet, p.public_ip) {
            let nhid = nexthops.then(|| nexthop_id(subnet));
            d.routes.insert(subnet.into(), RouteSpec { gateway: ip.into(), oif, onlink: false, nhid });
        }
        if let (true, Some(subnet6), Some(ip6)) = (v6, p.subnet6, p.public_ipv6) {
            d.routes.insert(subnet6.into(), RouteSpec { gateway: ip6.into(), oif, onlink: false, nhid: None });
        }
    }
    d.with_nexthops()
}

impl Backend for HostGwBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    fn mtu(&self) -> u32 {
        HostGwBackend::mtu(self)
    }

    /// host-gw owns no device.
    fn devices(&self) -> Vec<(String, Option<u32>)> {
        Vec::new()
    }

    /// Nothing depends on the node's subnets but the rules (the face's).
    fn start(&mut self, _: DualStack) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl KernelBackend for HostGwBackend {
    /// host-gw has no device to check: the plan, and the pass as asked.
    fn check_and_plan<'a>(
        &'a mut self,
        peers: &'a [Peer],
        _: &'a mut Report,
        pass: Pass,
    ) -> BoxFuture<'a, Option<(Desired, Pass)>> {
        Box::pin(async move { Some((HostGwBackend::plan(self, peers).await, pass)) })
    }

    fn converge<'a>(
        &'a mut self,
        peers: &'a [Peer],
        desired: &'a Desired,
        report: &'a mut Report,
        pass: Pass,
    ) -> BoxFuture<'a, ()> {
        Box::pin(HostGwBackend::converge(self, peers, desired, report, pass))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn plan_table() {
        let mut dual = Peer::v4("10.244.2.0/24".parse().unwrap(), Ipv4Addr::new(198, 18, 0, 2), None);
        dual.subnet6 = Some("fd10:244:0:2::/64".parse().unwrap());
        dual.public_ipv6 = Some("fd00:198:18::2".parse().unwrap());
        let peers = [dual.clone(), Peer::v4("10.244.3.0/24".parse().unwrap(), Ipv4Addr::new(198, 18, 0, 3), None)];
        // (nexthops, expected nhid of the first)
        for (nexthops, nhid) in [(false, None), (true, Some(u32::from(Ipv4Addr::new(10, 244, 2, 0))))] {
            let d = plan(&peers, 4, false, nexthops);
            assert_eq!(d.routes.len(), 2);
            let r = d.routes[&peers[0].id()];
            assert_eq!(r, RouteSpec { gateway: Ipv4Addr::new(198, 18, 0, 2).into(), oif: 4, onlink: false, nhid });
            assert_eq!(d.nexthops.len(), if nexthops { 2 } else { 0 });
            assert!(d.neigh.is_empty() && d.fdb.is_empty() && d.unplanned.is_empty());
        }
        assert!(plan(&[], 4, true, true).routes.is_empty());

        // Dual-stack: the dual peer also gets its IPv6 route, without a
        // nexthop object; the IPv4-only peer gets none.
        let d = plan(&peers, 4, true, true);
        assert_eq!(d.routes.len(), 3);
        let r6 = d.routes[&IpNet::V6(dual.subnet6.unwrap())];
        assert_eq!(r6, RouteSpec { gateway: dual.public_ipv6.unwrap().into(), oif: 4, onlink: false, nhid: None });
        assert_eq!(d.nexthops.len(), 2);

        // IPv6-only: one IPv6 route per peer, no nexthop objects.
        let only6 = Peer::v6("fd10:244:0:5::/64".parse().unwrap(), "fd00:198:18::5".parse().unwrap(), None);
        let d = plan(std::slice::from_ref(&only6), 4, true, true);
        let want = RouteSpec { gateway: only6.public_ipv6.unwrap().into(), oif: 4, onlink: false, nhid: None };
        assert_eq!(d.routes.into_iter().collect::<Vec<_>>(), [(only6.id(), want)]);
        assert!(d.nexthops.is_empty());
    }
}
