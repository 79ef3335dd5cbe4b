//! The kernel watch: which kernel events touch what weft owns, so that
//! repair starts at once instead of at the next periodic resync.
//!
//! The face ([`crate::Dataplane`]) is the only writer of what is watched
//! ([`Interest`]): the names and indexes of weft's devices, the network,
//! and the [`Desired`] entries the backend is putting in place. With a
//! `Desired`, an event that agrees with it (weft's own change coming back)
//! is ignored and only one that contradicts it wakes the repair: a
//! cluster-wide change would otherwise echo into a full pass. A hit rings
//! a [`Notify`], which coalesces bursts into one wake-up, and marks the
//! watch dirty so that the next pass reads the kernel, unless every pass
//! checks the object anyway ([`Interest::needs_read`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use tokio::sync::Notify;

use crate::error::Result;
use crate::kernel::monitor::{self, Event, Monitor};
use crate::model::{Desired, NexthopSpec, RouteSpec};
use crate::WEFT_ROUTE_PROTO;

/// What weft owns, as events name it.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    /// Device names (link events carry the name).
    pub(crate) names: Vec<String>,
    /// Interface indexes of those devices (address and neighbour events carry the index).
    pub(crate) indexes: Vec<u32>,
    /// Route events for destinations inside these networks (IPv4 and IPv6) matter.
    pub(crate) networks: Vec<IpNet>,
    /// The per-peer entries a kernel backend is putting in place.
    pub(crate) desired: Option<Arc<Desired>>,
}

impl Interest {
    /// Whether `ev` touches an object weft owns (and, with a `desired`,
    /// disagrees with it).
    pub(crate) fn matches(&self, ev: &Event) -> bool {
        match ev {
            Event::Link { index, name } => {
                self.indexes.contains(index) || name.as_ref().is_some_and(|n| self.names.contains(n))
            }
            Event::Address { index, .. } => self.indexes.contains(index),
            Event::Route { dst, oif, spec, deleted } => {
                if self.networks.is_empty() {
                    return false;
                }
                if let Some(d) = &self.desired {
                    return spec.as_ref().is_some_and(|(net, s)| route_contradicts(d, *net, s, *deleted));
                }
                dst.is_some_and(|d| self.networks.iter().any(|n| n.contains(&d)))
                    || oif.is_some_and(|i| self.indexes.contains(&i))
            }
            Event::Neighbour { index, .. } => {
                self.indexes.contains(index) && self.desired.as_ref().is_none_or(|d| neighbour_contradicts(d, ev))
            }
            // One of weft's nexthops, unless it agrees with what weft is
            // putting in place.
            Event::Nexthop { id, protocol, spec, deleted } => {
                *protocol == WEFT_ROUTE_PROTO
                    && match (id, &self.desired) {
                        (Some(id), Some(d)) => nexthop_contradicts(d, *id, *spec, *deleted),
                        _ => true,
                    }
            }
            Event::Lost => true,
        }
    }
}

impl Event {
    /// Whether a hit must make the next pass read the kernel's routes,
    /// neighbours and FDB (a full pass). An address added to one of weft's
    /// devices needs only a pass: every pass, delta ones too, checks the
    /// devices' addresses. (weft's own address comes back as such an event,
    /// late when the socket is busy with a cluster's worth of routes, and
    /// would otherwise cost a full pass right after start-up.)
    pub(crate) fn needs_read(&self) -> bool {
        !matches!(self, Event::Address { deleted: false, .. })
    }
}

/// A route of ours replaced by another, or deleted.
fn route_contradicts(d: &Desired, dst: IpNet, got: &RouteSpec, deleted: bool) -> bool {
    match (d.routes.get(&dst), deleted) {
        (None, _) => false,
        (Some(_), true) => true,
        (Some(want), false) => match (want.nhid, got.nhid) {
            (Some(a), Some(b)) => a != b,
            _ => want.gateway != got.gateway || want.oif != got.oif,
        },
    }
}

fn neighbour_contradicts(d: &Desired, ev: &Event) -> bool {
    let Event::Neighbour { bridge, ip: Some(ip), mac, permanent, deleted, .. } = ev else { return false };
    if *bridge {
        let Some(mac) = mac else { return false };
        return match (d.fdb.get(mac), deleted) {
            (Some(dst), true) => dst == ip,
            (Some(dst), false) => dst != ip,
            (None, _) => false,
        };
    }
    match (d.neigh.get(ip), deleted) {
        (None, _) => false,
        (Some(_), true) => true,
        (Some(want), false) => *mac != Some(*want) || !permanent,
    }
}

/// One of ours changed or deleted.
fn nexthop_contradicts(d: &Desired, id: u32, spec: Option<NexthopSpec>, deleted: bool) -> bool {
    match (d.nexthops.get(&id), deleted) {
        (None, _) => false,
        (Some(_), true) => true,
        (Some(want), false) => spec != Some(*want),
    }
}

/// The watch on the kernel: what is watched, and the monitor feeding it.
pub(crate) struct Watch {
    interest: Arc<RwLock<Interest>>,
    wake: Arc<Notify>,
    dirty: Arc<AtomicBool>,
    monitor: Option<Monitor>,
}

impl Watch {
    /// A watch that rings `wake` on a hit; not listening until [`Watch::start`].
    pub(crate) fn new(wake: Arc<Notify>) -> Watch {
        Watch { interest: Arc::default(), wake, dirty: Arc::default(), monitor: None }
    }

    /// Start listening (inside a tokio runtime).
    pub(crate) fn start(&mut self) -> Result<()> {
        let (interest, wake, dirty) = (self.interest.clone(), self.wake.clone(), self.dirty.clone());
        self.monitor = Some(monitor::spawn(move |ev| {
            let hit = interest.read().map(|i| i.matches(ev)).unwrap_or(true);
            if hit {
                if ev.needs_read() {
                    dirty.store(true, Ordering::Relaxed);
                }
                wake.notify_one();
            }
        })?);
        Ok(())
    }

    /// The devices weft owns and the networks.
    pub(crate) fn set_devices(&self, names: Vec<String>, indexes: Vec<u32>, networks: Vec<IpNet>) {
        if let Ok(mut i) = self.interest.write() {
            (i.names, i.indexes, i.networks) = (names, indexes, networks);
        }
    }

    /// What the backend is putting in place.
    pub(crate) fn publish(&self, desired: Option<Arc<Desired>>) {
        if let Ok(mut i) = self.interest.write() {
            i.desired = desired;
        }
    }

    /// Whether a hit came since the last call (and clear it).
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    /// Stop listening.
    pub(crate) fn stop(&mut self) {
        self.monitor = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
    use rtnetlink::RouteMessageBuilder;

    use super::*;

    fn route(dst: &str, nhid: Option<u32>, gw: Ipv4Addr) -> RouteMessage {
        let dst: ipnet::Ipv4Net = dst.parse().unwrap();
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
    fn only_events_that_contradict_the_desired_state_wake() {
        let gw = Ipv4Addr::new(10, 244, 2, 0);
        let spec = RouteSpec { gateway: gw.into(), oif: 7, onlink: true, nhid: Some(5) };
        let desired =
            Desired { routes: BTreeMap::from([("10.244.2.0/24".parse().unwrap(), spec)]), ..Desired::default() }
                .with_nexthops();
        let i = Interest {
            indexes: vec![7],
            networks: vec!["10.244.0.0/16".parse().unwrap()],
            desired: Some(Arc::new(desired)),
            ..Interest::default()
        };
        // (event, deleted, wakes)
        let cases = [
            (route("10.244.2.0/24", Some(5), gw), false, false), // weft's own install coming back
            (route("10.244.2.0/24", Some(9), gw), false, true),  // replaced by someone else
            (route("10.244.2.0/24", Some(5), gw), true, true),   // deleted
            (route("10.244.3.0/24", None, gw), true, false),     // weft removing a stale one
            (route("10.244.3.0/24", None, gw), false, false),    // not weft's
        ];
        for (n, (msg, deleted, wakes)) in cases.iter().enumerate() {
            assert_eq!(i.matches(&Event::route(msg, *deleted)), *wakes, "case {n}");
        }
        let nh = spec.nexthop().unwrap();
        let ev = |id, spec, deleted| Event::Nexthop { id: Some(id), protocol: WEFT_ROUTE_PROTO, spec, deleted };
        assert!(!i.matches(&ev(5, Some(nh), false)), "own nexthop coming back");
        assert!(i.matches(&ev(5, Some(NexthopSpec { oif: 8, ..nh }), false)), "changed");
        assert!(i.matches(&ev(5, None, true)), "deleted");
        assert!(!i.matches(&ev(6, None, true)), "a stale one removed");
        let foreign = Event::Nexthop { id: Some(5), protocol: 4, spec: None, deleted: true };
        assert!(!i.matches(&foreign), "another program's nexthop");
        assert!(i.matches(&Event::Lost), "lost events: look at everything");
    }

    #[test]
    fn without_a_desired_state_anything_on_weft_devices_or_in_the_network_wakes() {
        let i = Interest {
            names: vec!["flannel.1".into()],
            indexes: vec![3],
            networks: vec!["10.244.0.0/16".parse().unwrap()],
            desired: None,
        };
        let gw = Ipv4Addr::new(198, 18, 0, 9);
        assert!(i.matches(&Event::route(&route("10.244.9.0/24", None, gw), false)));
        // (the test routes leave through device 7, not weft's)
        assert!(!i.matches(&Event::route(&route("10.9.0.0/24", None, gw), false)));
        assert!(i.matches(&Event::Link { index: 99, name: Some("flannel.1".into()) }));
        assert!(i.matches(&Event::Link { index: 3, name: None }));
        assert!(!i.matches(&Event::Link { index: 8, name: Some("eth0".into()) }));
        let address = |index, deleted| Event::Address { index, deleted };
        assert!(i.matches(&address(3, false)) && i.matches(&address(3, true)) && !i.matches(&address(8, true)));
        assert!(!address(3, false).needs_read(), "an added address: the devices check takes it");
        assert!(address(3, true).needs_read());
        let neigh =
            |index| Event::Neighbour { index, bridge: false, ip: None, mac: None, permanent: true, deleted: true };
        assert!(i.matches(&neigh(3)) && !i.matches(&neigh(8)));
    }
}
