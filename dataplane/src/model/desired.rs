//! [`Desired`]: what a kernel backend wants installed, computed by its pure
//! `plan` from the peers. The face publishes it to the kernel watch (an
//! event that agrees with it is weft's own change coming back) and the
//! backend converges the host to it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use weft_types::MacAddr;

/// A route weft installs, keyed by its destination (of either family; the
/// gateway is of the same family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteSpec {
    pub(crate) gateway: IpAddr,
    pub(crate) oif: u32,
    pub(crate) onlink: bool,
    /// The nexthop object carrying gateway, device and onlink, when the
    /// kernel has them (`kernel::nexthop`); IPv4 routes only.
    pub(crate) nhid: Option<u32>,
}

impl RouteSpec {
    /// The part a nexthop object holds (IPv4 routes: weft makes no IPv6
    /// nexthop objects).
    pub(crate) fn nexthop(&self) -> Option<NexthopSpec> {
        match self.gateway {
            IpAddr::V4(gateway) => Some(NexthopSpec { gateway, oif: self.oif, onlink: self.onlink }),
            IpAddr::V6(_) => None,
        }
    }
}

/// What an (IPv4) nexthop object points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NexthopSpec {
    pub(crate) gateway: Ipv4Addr,
    pub(crate) oif: u32,
    pub(crate) onlink: bool,
}

/// The nexthop id weft gives the route to `subnet`: its network address,
/// so that a restarted weft finds its own nexthops again without state.
pub(crate) fn nexthop_id(subnet: Ipv4Net) -> u32 {
    u32::from(subnet.network())
}

/// The routes, nexthops, neighbour and FDB entries a backend wants, and
/// the peers it cannot program at all. Both families in one map each:
/// IPv6 neighbour and FDB entries belong on the IPv6 VXLAN device, which
/// their family says (see [`Desired::family`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    pub(crate) routes: BTreeMap<IpNet, RouteSpec>,
    /// The nexthop objects the routes name (filled by [`Desired::with_nexthops`]).
    pub(crate) nexthops: BTreeMap<u32, NexthopSpec>,
    pub(crate) neigh: BTreeMap<IpAddr, MacAddr>,
    pub(crate) fdb: BTreeMap<MacAddr, IpAddr>,
    /// Peers left out, with why (a vxlan peer without a VTEP MAC).
    pub(crate) unplanned: Vec<(IpNet, &'static str)>,
}

impl Desired {
    /// Fill in the nexthop objects the routes name, and pack the maps:
    /// built by inserting in order, a B-tree leaves its nodes about half
    /// full; collected from a sorted iterator, full (this state lives as
    /// long as the daemon, an entry per peer, and is cloned as what the
    /// pass left in place).
    pub(crate) fn with_nexthops(mut self) -> Desired {
        self.nexthops = self.routes.values().filter_map(|s| Some((s.nhid?, s.nexthop()?))).collect();
        self.routes = std::mem::take(&mut self.routes).into_iter().collect();
        self.neigh = std::mem::take(&mut self.neigh).into_iter().collect();
        self.fdb = std::mem::take(&mut self.fdb).into_iter().collect();
        self
    }

    /// The neighbour and FDB entries of one family (`v6`: the IPv6
    /// device's), for converging one device.
    pub(crate) fn family(&self, v6: bool) -> (BTreeMap<IpAddr, MacAddr>, BTreeMap<MacAddr, IpAddr>) {
        let neigh = self.neigh.iter().filter(|(ip, _)| ip.is_ipv6() == v6).map(|(k, v)| (*k, *v)).collect();
        let fdb = self.fdb.iter().filter(|(_, ip)| ip.is_ipv6() == v6).map(|(k, v)| (*k, *v)).collect();
        (neigh, fdb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_subnet_address() {
        assert_eq!(nexthop_id("10.244.5.0/24".parse().unwrap()), 0x0af4_0500);
    }

    #[test]
    fn nexthops_are_those_the_routes_name() {
        let gw = IpAddr::V4(Ipv4Addr::new(10, 244, 2, 0));
        let with = RouteSpec { gateway: gw, oif: 7, onlink: true, nhid: Some(5) };
        let without = RouteSpec { nhid: None, ..with };
        let d = Desired {
            routes: BTreeMap::from([
                ("10.244.2.0/24".parse().unwrap(), with),
                ("10.244.3.0/24".parse().unwrap(), without),
            ]),
            ..Desired::default()
        }
        .with_nexthops();
        assert_eq!(d.nexthops, BTreeMap::from([(5, with.nexthop().unwrap())]));
    }
}
