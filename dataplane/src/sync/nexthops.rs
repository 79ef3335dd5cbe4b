//! What a routes pass does with nexthop objects, decided without the
//! kernel: which of weft's to put in place (new or changed), which routes
//! cannot have theirs (the id belongs to another program), and which of
//! weft's no route names any more. `converge::routes` carries it out:
//! nexthops before the routes that use them, the unused after.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::kernel::nexthop::Nexthop;
use crate::model::{NexthopSpec, RouteSpec};
use crate::WEFT_ROUTE_PROTO;

/// One nexthop object to put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Put {
    /// The route it is for (named in a failure).
    pub(crate) dst: IpNet,
    pub(crate) spec: NexthopSpec,
    /// weft's own exists with another spec and is replaced; else it must
    /// not exist yet.
    pub(crate) replace: bool,
}

/// The nexthop side of one routes pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct NexthopPlan {
    pub(crate) put: BTreeMap<u32, Put>,
    /// Routes whose nexthop id is held by another program's object: left
    /// alone, the route fails with this reason.
    pub(crate) refused: Vec<(IpNet, String)>,
    /// weft's nexthops (protocol 87) that no desired route names.
    pub(crate) unused: Vec<(u32, NexthopSpec)>,
}

/// The plan for `desired` routes given the nexthop objects there are
/// (`all`: the kernel's, or for a delta pass those of the routes the last
/// pass left).
pub(crate) fn plan(all: &BTreeMap<u32, Nexthop>, desired: &BTreeMap<IpNet, RouteSpec>) -> NexthopPlan {
    let mut p = NexthopPlan::default();
    for (dst, route) in desired {
        let (Some(id), Some(spec)) = (route.nhid, route.nexthop()) else { continue };
        match all.get(&id) {
            Some(n) if n.protocol != WEFT_ROUTE_PROTO => {
                p.refused.push((*dst, format!("nexthop id {id} belongs to another program (protocol {})", n.protocol)))
            }
            Some(n) if n.spec == Some(spec) => {}
            n => {
                p.put.insert(id, Put { dst: *dst, spec, replace: n.is_some() });
            }
        }
    }
    let wanted: std::collections::BTreeSet<u32> = desired.values().filter_map(|s| s.nhid).collect();
    p.unused = all
        .iter()
        .filter(|(id, n)| n.protocol == WEFT_ROUTE_PROTO && !wanted.contains(id))
        .filter_map(|(id, n)| Some((*id, n.spec?)))
        .collect();
    p
}

/// The nexthops weft's routes of the last pass name (a delta pass trusts them).
pub(crate) fn of_routes(previous: &BTreeMap<IpNet, RouteSpec>) -> BTreeMap<u32, Nexthop> {
    previous
        .values()
        .filter_map(|s| Some((s.nhid?, Nexthop { spec: Some(s.nexthop()?), protocol: WEFT_ROUTE_PROTO })))
        .collect()
}

/// Fill in a dumped route that shows only its nexthop id (the kernel's
/// compat mode off) from the object, so that it compares with a desired one.
pub(crate) fn resolve(installed: &mut BTreeMap<IpNet, RouteSpec>, all: &BTreeMap<u32, Nexthop>) {
    for spec in installed.values_mut() {
        if let (0, Some(nh)) = (spec.oif, spec.nhid.and_then(|id| all.get(&id))) {
            if let Some(n) = nh.spec {
                (spec.gateway, spec.oif, spec.onlink) = (IpAddr::V4(n.gateway), n.oif, n.onlink);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn nh(gw: u8, oif: u32) -> NexthopSpec {
        NexthopSpec { gateway: Ipv4Addr::new(198, 18, 0, gw), oif, onlink: true }
    }

    fn route(id: u32, spec: NexthopSpec) -> RouteSpec {
        RouteSpec { gateway: IpAddr::V4(spec.gateway), oif: spec.oif, onlink: spec.onlink, nhid: Some(id) }
    }

    fn dst(n: u8) -> IpNet {
        format!("10.244.{n}.0/24").parse().unwrap()
    }

    #[test]
    fn nexthops_are_put_refused_kept_or_removed() {
        let ours = |spec| Nexthop { spec: Some(spec), protocol: WEFT_ROUTE_PROTO };
        let all = BTreeMap::from([
            (1, ours(nh(1, 7))),                                  // as desired: kept
            (2, ours(nh(2, 7))),                                  // changed: replaced
            (3, Nexthop { spec: Some(nh(3, 7)), protocol: 4 }),   // another program's: refused
            (9, ours(nh(9, 7))),                                  // no route names it: removed
            (10, Nexthop { spec: Some(nh(10, 7)), protocol: 4 }), // another program's, unnamed: left
        ]);
        let desired = BTreeMap::from([
            (dst(1), route(1, nh(1, 7))),
            (dst(2), route(2, nh(2, 8))),
            (dst(3), route(3, nh(3, 7))),
            (dst(4), route(4, nh(4, 7))),
            // An IPv6 route has no nexthop object.
            (
                "fd00:4::/64".parse().unwrap(),
                RouteSpec { gateway: "fd18::4".parse().unwrap(), oif: 7, onlink: false, nhid: None },
            ),
        ]);
        let p = plan(&all, &desired);
        assert_eq!(
            p.put,
            BTreeMap::from([
                (2, Put { dst: dst(2), spec: nh(2, 8), replace: true }),
                (4, Put { dst: dst(4), spec: nh(4, 7), replace: false }),
            ])
        );
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].0, dst(3));
        assert!(p.refused[0].1.contains("another program (protocol 4)"), "{}", p.refused[0].1);
        assert_eq!(p.unused, vec![(9, nh(9, 7))]);
    }

    #[test]
    fn a_delta_pass_sees_the_nexthops_of_the_routes_it_left() {
        let previous = BTreeMap::from([(dst(1), route(1, nh(1, 7)))]);
        let all = of_routes(&previous);
        assert_eq!(plan(&all, &previous), NexthopPlan::default(), "nothing to do for what is in place");
        let p = plan(&all, &BTreeMap::new());
        assert_eq!(p.unused, vec![(1, nh(1, 7))], "a peer gone: its nexthop goes after its route");
    }

    #[test]
    fn a_route_dumped_with_only_its_nexthop_id_is_filled_in() {
        let all = BTreeMap::from([(5, Nexthop { spec: Some(nh(5, 7)), protocol: WEFT_ROUTE_PROTO })]);
        let bare = RouteSpec { gateway: IpAddr::V4(Ipv4Addr::UNSPECIFIED), oif: 0, onlink: false, nhid: Some(5) };
        let mut installed = BTreeMap::from([(dst(5), bare)]);
        resolve(&mut installed, &all);
        assert_eq!(installed[&dst(5)], route(5, nh(5, 7)));
    }
}
