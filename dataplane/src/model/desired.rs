//! [`Desired`]: what a kernel backend wants installed, computed by its pure
//! `plan` from the peers. The face publishes it to the kernel watch (an
//! event that agrees with it is weft's own change coming back) and the
//! backend converges the host to it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_types::MacAddr;

/// A route weft installs, keyed by its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteSpec {
    pub(crate) gateway: Ipv4Addr,
    pub(crate) oif: u32,
    pub(crate) onlink: bool,
    /// The nexthop object carrying gateway, device and onlink, when the
    /// kernel has them (`kernel::nexthop`).
    pub(crate) nhid: Option<u32>,
}

impl RouteSpec {
    /// The part a nexthop object holds.
    pub(crate) fn nexthop(&self) -> NexthopSpec {
        NexthopSpec { gateway: self.gateway, oif: self.oif, onlink: self.onlink }
    }
}

/// What a nexthop object points at.
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
/// the peers it cannot program at all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    pub(crate) routes: BTreeMap<Ipv4Net, RouteSpec>,
    /// The nexthop objects the routes name (filled by [`Desired::with_nexthops`]).
    pub(crate) nexthops: BTreeMap<u32, NexthopSpec>,
    pub(crate) neigh: BTreeMap<Ipv4Addr, MacAddr>,
    pub(crate) fdb: BTreeMap<MacAddr, Ipv4Addr>,
    /// Peers left out, with why (a vxlan peer without a VTEP MAC).
    pub(crate) unplanned: Vec<(Ipv4Net, &'static str)>,
}

impl Desired {
    /// Fill in the nexthop objects the routes name.
    pub(crate) fn with_nexthops(mut self) -> Desired {
        self.nexthops = self.routes.values().filter_map(|s| Some((s.nhid?, s.nexthop()))).collect();
        self
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
        let gw = Ipv4Addr::new(10, 244, 2, 0);
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
        assert_eq!(d.nexthops, BTreeMap::from([(5, with.nexthop())]));
    }
}
