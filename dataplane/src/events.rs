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

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use ipnet::Ipv4Net;
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// What weft owns, as events name it.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    /// Device names (link events carry the name).
    pub(crate) names: Vec<String>,
    /// Interface indexes of those devices (address and neighbour events carry the index).
    pub(crate) indexes: Vec<u32>,
    /// Route events for destinations inside this network matter.
    pub(crate) network: Option<Ipv4Net>,
}

impl Interest {
    fn link(&self, msg: &LinkMessage) -> bool {
        self.indexes.contains(&msg.header.index)
            || msg.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if self.names.contains(n)))
    }

    fn route(&self, msg: &RouteMessage) -> bool {
        let Some(network) = self.network else { return false };
        msg.attributes.iter().any(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => network.contains(d),
            RouteAttribute::Oif(i) => self.indexes.contains(i),
            _ => false,
        })
    }

    /// Whether `msg` touches an object weft owns.
    fn matches(&self, msg: &RouteNetlinkMessage) -> bool {
        use RouteNetlinkMessage as M;
        match msg {
            M::NewLink(l) | M::DelLink(l) => self.link(l),
            M::NewAddress(a) | M::DelAddress(a) => self.indexes.contains(&a.header.index),
            M::NewRoute(r) | M::DelRoute(r) => self.route(r),
            M::NewNeighbour(n) | M::DelNeighbour(n) => self.indexes.contains(&n.header.ifindex),
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
    let nexthops = crate::nexthop::subscribe(wake.clone())
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
