//! Netlink events: the kernel tells weft when one of its objects changes, so
//! repair starts at once instead of at the next periodic resync.
//!
//! One extra netlink socket joins the multicast groups of links
//! (`RTNLGRP_LINK`), IPv4 addresses (`RTNLGRP_IPV4_IFADDR`), IPv4 routes
//! (`RTNLGRP_IPV4_ROUTE`) and neighbours/FDB (`RTNLGRP_NEIGH`): what
//! `ip monitor link address route neigh` shows. Events that touch what weft
//! owns ([`Interest`]) wake the reconciler through a [`Notify`], which
//! coalesces bursts into one wake-up. weft's own changes come back as events
//! too; the reconcile they cause finds nothing to do.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use ipnet::Ipv4Net;
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use weft_types::MacAddr;

use crate::error::{Error, Result};
use crate::netlink::{neigh_dst, neigh_mac, parse_route, RouteSpec};
use crate::nexthop::NexthopSpec;

/// What weft owns, as events name it.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    /// Device names (link events carry the name).
    pub(crate) names: Vec<String>,
    /// Interface indexes of those devices (address and neighbour events carry the index).
    pub(crate) indexes: Vec<u32>,
    /// Route events for destinations inside this network matter.
    pub(crate) network: Option<Ipv4Net>,
    /// The per-peer entries a kernel backend is putting in place. With it,
    /// an event that agrees with it (weft's own change coming back) is
    /// ignored, and only one that contradicts it wakes the repair: a
    /// cluster-wide change would otherwise echo into a full pass.
    pub(crate) picture: Option<Picture>,
}

/// The routes, nexthops, neighbour and FDB entries weft intends to have.
#[derive(Debug, Default, Clone)]
pub(crate) struct Picture {
    pub(crate) routes: BTreeMap<Ipv4Net, RouteSpec>,
    pub(crate) nexthops: BTreeMap<u32, NexthopSpec>,
    pub(crate) neigh: BTreeMap<Ipv4Addr, MacAddr>,
    pub(crate) fdb: BTreeMap<MacAddr, Ipv4Addr>,
}

impl Picture {
    /// The picture of `routes` (and the nexthops they name), `neigh`, `fdb`.
    pub(crate) fn of(
        routes: &BTreeMap<Ipv4Net, RouteSpec>,
        neigh: &BTreeMap<Ipv4Addr, MacAddr>,
        fdb: &BTreeMap<MacAddr, Ipv4Addr>,
    ) -> Picture {
        Picture {
            routes: routes.clone(),
            nexthops: routes.values().filter_map(|s| Some((s.nhid?, s.nexthop()))).collect(),
            neigh: neigh.clone(),
            fdb: fdb.clone(),
        }
    }

    /// Whether a route event disagrees: a route of ours replaced by another,
    /// or deleted.
    fn route(&self, msg: &RouteMessage, deleted: bool) -> bool {
        let Some((dst, spec)) = parse_route(msg) else { return false };
        match (self.routes.get(&dst), deleted) {
            (None, _) => false,
            (Some(_), true) => true,
            (Some(want), false) => match (want.nhid, spec.nhid) {
                (Some(a), Some(b)) => a != b,
                _ => want.gateway != spec.gateway || want.oif != spec.oif,
            },
        }
    }

    fn neighbour(&self, msg: &NeighbourMessage, deleted: bool) -> bool {
        let (Some(NeighbourAddress::Inet(ip)), mac) = (neigh_dst(msg), neigh_mac(msg)) else { return false };
        if msg.header.family == AddressFamily::Bridge {
            let Some(mac) = mac else { return false };
            return match (self.fdb.get(&mac), deleted) {
                (Some(dst), true) => *dst == ip,
                (Some(dst), false) => *dst != ip,
                (None, _) => false,
            };
        }
        match (self.neigh.get(&ip), deleted) {
            (None, _) => false,
            (Some(_), true) => true,
            (Some(want), false) => mac != Some(*want) || msg.header.state != NeighbourState::Permanent,
        }
    }

    /// Whether a nexthop event disagrees: one of ours changed or deleted.
    pub(crate) fn nexthop(&self, id: u32, spec: Option<NexthopSpec>, deleted: bool) -> bool {
        match (self.nexthops.get(&id), deleted) {
            (None, _) => false,
            (Some(_), true) => true,
            (Some(want), false) => spec != Some(*want),
        }
    }
}

impl Interest {
    fn link(&self, msg: &LinkMessage) -> bool {
        self.indexes.contains(&msg.header.index)
            || msg.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if self.names.contains(n)))
    }

    fn route(&self, msg: &RouteMessage, deleted: bool) -> bool {
        let Some(network) = self.network else { return false };
        if let Some(p) = &self.picture {
            return p.route(msg, deleted);
        }
        msg.attributes.iter().any(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => network.contains(d),
            RouteAttribute::Oif(i) => self.indexes.contains(i),
            _ => false,
        })
    }

    fn neighbour(&self, msg: &NeighbourMessage, deleted: bool) -> bool {
        if !self.indexes.contains(&msg.header.ifindex) {
            return false;
        }
        self.picture.as_ref().is_none_or(|p| p.neighbour(msg, deleted))
    }

    /// Whether `msg` touches an object weft owns (and, with a picture,
    /// disagrees with it).
    fn matches(&self, msg: &RouteNetlinkMessage) -> bool {
        use RouteNetlinkMessage as M;
        match msg {
            M::NewLink(l) | M::DelLink(l) => self.link(l),
            M::NewAddress(a) | M::DelAddress(a) => self.indexes.contains(&a.header.index),
            M::NewRoute(r) => self.route(r, false),
            M::DelRoute(r) => self.route(r, true),
            M::NewNeighbour(n) => self.neighbour(n, false),
            M::DelNeighbour(n) => self.neighbour(n, true),
            _ => false,
        }
    }
}

/// Aborts a task when dropped, so that aborting the event task also ends
/// the connections it reads from.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Join the groups and forward matching events to `wake` until the task is
/// aborted; nexthop events too where the kernel has them. Must run inside
/// a tokio runtime.
pub(crate) fn subscribe(interest: Arc<RwLock<Interest>>, wake: Arc<Notify>) -> Result<JoinHandle<()>> {
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
    let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH;
    conn.socket_mut().socket_mut().bind(&SocketAddr::new(0, groups)).map_err(Error::NetlinkSocket)?;
    let conn_task = AbortOnDrop(tokio::spawn(conn));
    let nexthops = crate::nexthop::subscribe(interest.clone(), wake.clone())
        .map_err(|e| tracing::debug!("no nexthop events: {}", crate::error::chain(&e)))
        .ok()
        .map(AbortOnDrop);
    Ok(tokio::spawn(async move {
        let _tasks = (conn_task, nexthops);
        while let Some((msg, _)) = messages.next().await {
            let hit = match &msg.payload {
                NetlinkPayload::InnerMessage(inner) => interest.read().map(|i| i.matches(inner)).unwrap_or(true),
                // The socket's buffer overflowed and events were lost
                // (thousands of changes at once): look at everything.
                NetlinkPayload::Overrun(_) => true,
                _ => false,
            };
            if hit {
                wake.notify_one();
            }
        }
        // The socket closed (it does not, short of a kernel error): the
        // periodic resync still repairs, but say so.
        tracing::warn!("netlink event socket closed; repairs wait for the periodic resync");
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::RouteMessageBuilder;

    fn route(dst: &str, nhid: Option<u32>, gw: Ipv4Addr) -> RouteMessage {
        let dst: Ipv4Net = dst.parse().unwrap();
        let mut m = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .gateway(gw)
            .output_interface(7)
            .build();
        if let Some(id) = nhid {
            m.attributes.push(RouteAttribute::NhId(id));
        }
        m
    }

    #[test]
    fn only_events_that_contradict_the_picture_wake() {
        let gw = Ipv4Addr::new(10, 244, 2, 0);
        let spec = RouteSpec { gateway: gw, oif: 7, onlink: true, nhid: Some(5) };
        let routes = BTreeMap::from([("10.244.2.0/24".parse().unwrap(), spec)]);
        let p = Picture::of(&routes, &BTreeMap::new(), &BTreeMap::new());
        // (event, deleted, wakes)
        let cases = [
            (route("10.244.2.0/24", Some(5), gw), false, false), // weft's own install coming back
            (route("10.244.2.0/24", Some(9), gw), false, true),  // replaced by someone else
            (route("10.244.2.0/24", Some(5), gw), true, true),   // deleted
            (route("10.244.3.0/24", None, gw), true, false),     // weft removing a stale one
            (route("10.244.3.0/24", None, gw), false, false),    // not weft's
        ];
        for (i, (msg, deleted, wakes)) in cases.iter().enumerate() {
            assert_eq!(p.route(msg, *deleted), *wakes, "case {i}");
        }
        let nh = spec.nexthop();
        assert!(!p.nexthop(5, Some(nh), false), "own nexthop coming back");
        assert!(p.nexthop(5, Some(NexthopSpec { oif: 8, ..nh }), false), "changed");
        assert!(p.nexthop(5, None, true), "deleted");
        assert!(!p.nexthop(6, None, true), "a stale one removed");
    }
}
