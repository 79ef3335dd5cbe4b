//! Netlink multicast events (`ip monitor link address route neigh
//! nexthop`), parsed into [`Event`]s and handed to a callback.
//!
//! One socket joins the groups of links (`RTNLGRP_LINK`), addresses and
//! routes of both families (`RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`,
//! `RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE`) and neighbours/FDB
//! (`RTNLGRP_NEIGH`); a second one the nexthop group
//! (`RTNLGRP_NEXTHOP`), where the kernel has it, since removing a nexthop
//! takes its routes with it without a route event. What an event means to
//! weft is decided by the caller (`sync::watch`), never here.

use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use ipnet::IpNet;
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH,
};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, AsyncSocket, SocketAddr};
use tokio::task::JoinHandle;
use weft_types::MacAddr;

use super::neigh::{ip_of, neigh_dst, neigh_mac};
use super::nexthop::{NexthopMessage, RTM_DELNEXTHOP, RTNLGRP_NEXTHOP};
use super::route::parse_route;
use crate::error::{chain, Error, Result};
use crate::model::{NexthopSpec, RouteSpec};

/// One kernel change, as far as weft reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A link was added, changed or removed.
    Link { index: u32, name: Option<String> },
    /// An address was added or removed on device `index`.
    Address { index: u32, deleted: bool },
    /// A route was added, replaced or removed.
    Route {
        /// The destination address and output device as the message has them.
        dst: Option<IpAddr>,
        oif: Option<u32>,
        /// The route as weft installs routes, if it has that form.
        spec: Option<(IpNet, RouteSpec)>,
        deleted: bool,
    },
    /// A neighbour (or, `bridge`, an FDB) entry on device `index`.
    Neighbour { index: u32, bridge: bool, ip: Option<IpAddr>, mac: Option<MacAddr>, permanent: bool, deleted: bool },
    /// A nexthop object changed or went.
    Nexthop { id: Option<u32>, protocol: u8, spec: Option<NexthopSpec>, deleted: bool },
    /// The socket's buffer overflowed and events were lost (thousands of
    /// changes at once): the caller must look at everything.
    Lost,
}

impl Event {
    /// The event of one rtnetlink message, `None` for kinds weft ignores.
    pub(crate) fn of(msg: &RouteNetlinkMessage) -> Option<Event> {
        use RouteNetlinkMessage as M;
        Some(match msg {
            M::NewLink(l) | M::DelLink(l) => Event::link(l),
            M::NewAddress(a) => Event::Address { index: a.header.index, deleted: false },
            M::DelAddress(a) => Event::Address { index: a.header.index, deleted: true },
            M::NewRoute(r) => Event::route(r, false),
            M::DelRoute(r) => Event::route(r, true),
            M::NewNeighbour(n) => Event::neighbour(n, false),
            M::DelNeighbour(n) => Event::neighbour(n, true),
            _ => return None,
        })
    }

    fn link(msg: &LinkMessage) -> Event {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        Event::Link { index: msg.header.index, name }
    }

    pub(crate) fn route(msg: &RouteMessage, deleted: bool) -> Event {
        let (mut dst, mut oif) = (None, None);
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Event::Route { dst, oif, spec: parse_route(msg), deleted }
    }

    pub(crate) fn neighbour(msg: &NeighbourMessage, deleted: bool) -> Event {
        let ip = neigh_dst(msg).as_ref().and_then(ip_of);
        Event::Neighbour {
            index: msg.header.ifindex,
            bridge: msg.header.family == AddressFamily::Bridge,
            ip,
            mac: neigh_mac(msg),
            permanent: msg.header.state == NeighbourState::Permanent,
            deleted,
        }
    }

    fn nexthop(msg: &NexthopMessage, deleted: bool) -> Event {
        Event::Nexthop { id: msg.id(), protocol: msg.protocol, spec: msg.nexthop().spec, deleted }
    }
}

/// Aborts a task when dropped, so that aborting the reader also ends the
/// connection it reads from.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running event sockets; dropping it stops them.
pub(crate) struct Monitor {
    _tasks: Vec<AbortOnDrop>,
}

/// Join the groups and call `on` with every event until the [`Monitor`]
/// is dropped; nexthop events too where the kernel has them. Must run
/// inside a tokio runtime.
pub(crate) fn spawn(on: impl Fn(&Event) + Send + Sync + 'static) -> Result<Monitor> {
    let on = Arc::new(on);
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
    let groups =
        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_NEIGH;
    conn.socket_mut().socket_mut().bind(&SocketAddr::new(0, groups)).map_err(Error::NetlinkSocket)?;
    let mut tasks = vec![AbortOnDrop(tokio::spawn(conn))];
    match spawn_nexthops(on.clone()) {
        Ok(t) => tasks.push(t),
        Err(e) => tracing::debug!("no nexthop events: {}", chain(&e)),
    }
    tasks.push(AbortOnDrop(tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let ev = match &msg.payload {
                NetlinkPayload::InnerMessage(inner) => Event::of(inner),
                NetlinkPayload::Overrun(_) => Some(Event::Lost),
                _ => None,
            };
            if let Some(ev) = ev {
                on(&ev);
            }
        }
        // The socket closed (it does not, short of a kernel error): the
        // periodic resync still repairs, but say so.
        tracing::warn!("netlink event socket closed; repairs wait for the periodic resync");
    })));
    Ok(Monitor { _tasks: tasks })
}

/// `ip monitor nexthop`, on a connection of nexthop messages.
fn spawn_nexthops(on: Arc<impl Fn(&Event) + Send + Sync + 'static>) -> Result<AbortOnDrop> {
    let (mut conn, _handle, mut messages) =
        rtnetlink::proto::new_connection::<NexthopMessage>(NETLINK_ROUTE).map_err(Error::NetlinkSocket)?;
    let socket = conn.socket_mut().socket_mut();
    // An unbound netlink socket gets no multicast: bind it first.
    socket.bind_auto().map_err(Error::NetlinkSocket)?;
    socket.add_membership(RTNLGRP_NEXTHOP).map_err(Error::NetlinkSocket)?;
    // The connection and its reader run in one task: aborting it ends both.
    Ok(AbortOnDrop(tokio::spawn(async move {
        let read = async {
            while let Some((msg, _)) = messages.next().await {
                let ev = match &msg.payload {
                    NetlinkPayload::InnerMessage(m) => Event::nexthop(m, msg.header.message_type == RTM_DELNEXTHOP),
                    NetlinkPayload::Overrun(_) => Event::Lost,
                    _ => continue,
                };
                on(&ev);
            }
        };
        tokio::select! {
            _ = conn => {}
            _ = read => {}
        }
        tracing::warn!("netlink nexthop event socket closed; repairs wait for the periodic resync");
    })))
}
