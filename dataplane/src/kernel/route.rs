//! Routes (`ip route`): weft's own (protocol 87) in the main table, and the
//! few others it reads (the default route, the TUN device's network route).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::RouteMessageBuilder;

use super::Netlink;
use crate::error::{errno, Error, Result};
use crate::model::RouteSpec;
use crate::WEFT_ROUTE_PROTO;

impl Netlink {
    /// Whether the main table has a route to exactly `dst` out of `oif`
    /// (`ip route show table main exact DST dev OIF`), whatever its protocol.
    pub(crate) async fn has_route(&self, dst: IpNet, oif: u32) -> Result<bool> {
        let dump = match dst {
            IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut stream = self.handle.route().get(dump).execute();
        let mut found = false;
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip route show", e))? {
            if msg.header.table != RouteHeader::RT_TABLE_MAIN
                || msg.header.destination_prefix_length != dst.prefix_len()
            {
                continue;
            }
            let (mut d, mut o) = (None, None);
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(x)) => d = Some(IpAddr::V4(*x)),
                    RouteAttribute::Destination(RouteAddress::Inet6(x)) => d = Some(IpAddr::V6(*x)),
                    RouteAttribute::Oif(i) => o = Some(*i),
                    _ => {}
                }
            }
            found |= d == Some(dst.network()) && o == Some(oif);
        }
        Ok(found)
    }

    /// `ip route show table main proto 87` and `ip -6 route show table
    /// main proto 87`: the routes weft installed, both families.
    pub(crate) async fn weft_routes(&self) -> Result<BTreeMap<IpNet, RouteSpec>> {
        let mut out = BTreeMap::new();
        let dumps = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
        for dump in dumps {
            let mut stream = self.handle.route().get(dump).execute();
            while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip route show", e))? {
                if msg.header.protocol != RouteProtocol::Other(WEFT_ROUTE_PROTO)
                    || msg.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                if let Some((dst, spec)) = parse_route(&msg) {
                    out.insert(dst, spec);
                }
            }
        }
        Ok(out)
    }

    /// The interface of the IPv4 default route, if there is one.
    pub(crate) async fn default_route_oif(&self) -> Result<Option<u32>> {
        self.default_oif(RouteMessageBuilder::<Ipv4Addr>::new().build()).await
    }

    /// The interface of the IPv6 default route, if any (IPv6-only networks).
    pub(crate) async fn default_route6_oif(&self) -> Result<Option<u32>> {
        self.default_oif(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()).await
    }

    async fn default_oif(&self, dump: RouteMessage) -> Result<Option<u32>> {
        let mut stream = self.handle.route().get(dump).execute();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip route show", e))? {
            if msg.header.destination_prefix_length == 0 && msg.header.table == RouteHeader::RT_TABLE_MAIN {
                if let Some(oif) = msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }) {
                    return Ok(Some(oif));
                }
            }
        }
        Ok(None)
    }

    fn route_message(dst: IpNet, spec: &RouteSpec) -> Result<RouteMessage> {
        let invalid = |e: String| Error::Conflict(format!("route {dst}: {e}"));
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|e| invalid(e.to_string()))?
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTO));
        if let Some(id) = spec.nhid {
            let mut msg = b.build();
            msg.attributes.push(RouteAttribute::NhId(id));
            return Ok(msg);
        }
        let mut b = b.gateway(spec.gateway).map_err(|e| invalid(e.to_string()))?.output_interface(spec.oif);
        if spec.onlink {
            b = b.onlink();
        }
        Ok(b.build())
    }

    /// `ip route replace DST nhid ID proto 87`, or without nexthop objects
    /// `ip route replace DST via GW dev OIF [onlink] proto 87`.
    pub(crate) async fn replace_route(&self, dst: IpNet, spec: &RouteSpec) -> Result<()> {
        self.handle.route().add(Self::route_message(dst, spec)?).replace().execute().await.map_err(|e| {
            let op = match spec.nhid {
                Some(id) => format!("ip route replace {dst} nhid {id}"),
                None => format!("ip route replace {dst} via {} dev #{}", spec.gateway, spec.oif),
            };
            Error::netlink(op, e)
        })
    }

    /// `ip route replace DST dev OIF scope link` (`ip -6 route replace DST
    /// dev OIF`): a device's route to a
    /// whole network, as `ip route add` writes it (protocol boot), so that
    /// it is read like the kernel's own prefix routes (see
    /// [`has_route`](Self::has_route)) and never taken for a peer's route.
    pub(crate) async fn replace_device_route(&self, dst: IpNet, oif: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|e| Error::Conflict(format!("route {dst}: {e}")))?
            .output_interface(oif)
            .scope(match dst {
                IpNet::V4(_) => rtnetlink::packet_route::route::RouteScope::Link,
                // IPv6 routes have no link scope of their own.
                IpNet::V6(_) => rtnetlink::packet_route::route::RouteScope::Universe,
            })
            .protocol(RouteProtocol::Boot)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip route replace {dst} dev #{oif} scope link"), e))
    }

    /// `ip route del DST via GW dev OIF proto 87` (absent is fine).
    pub(crate) async fn delete_route(&self, dst: IpNet, spec: &RouteSpec) -> Result<()> {
        match self.handle.route().del(Self::route_message(dst, spec)?).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(Error::netlink(format!("ip route del {dst}"), e)),
        }
    }
}

/// A route of either family as weft installs them: destination, gateway
/// (or nexthop id), device.
pub(crate) fn parse_route(msg: &RouteMessage) -> Option<(IpNet, RouteSpec)> {
    let v6 = msg.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
    let unspecified = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut nhid = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::NhId(id) => nhid = Some(*id),
            _ => {}
        }
    }
    let dst = IpNet::new(dst.unwrap_or(unspecified), msg.header.destination_prefix_length).ok()?;
    let onlink = msg.header.flags.contains(RouteFlags::Onlink);
    match (gateway, oif, nhid) {
        (Some(gateway), Some(oif), nhid) => Some((dst, RouteSpec { gateway, oif, onlink, nhid })),
        // With `net.ipv4.nexthop_compat_mode=0` a route shows only its
        // nexthop id; the caller fills in the rest from the nexthop.
        (_, _, Some(id)) => Some((dst, RouteSpec { gateway: unspecified, oif: 0, onlink: false, nhid: Some(id) })),
        _ => None,
    }
}
