//! Routes (`ip route`): weft's own (protocol 87) in the main table, and the
//! few others it reads (the default route, the TUN device's network route).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
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
    pub(crate) async fn has_route(&self, dst: Ipv4Net, oif: u32) -> Result<bool> {
        let mut stream = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        let mut found = false;
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip route show", e))? {
            if msg.header.table != RouteHeader::RT_TABLE_MAIN
                || msg.header.destination_prefix_length != dst.prefix_len()
            {
                continue;
            }
            let (mut d, mut o) = (Ipv4Addr::UNSPECIFIED, None);
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(x)) => d = *x,
                    RouteAttribute::Oif(i) => o = Some(*i),
                    _ => {}
                }
            }
            found |= d == dst.network() && o == Some(oif);
        }
        Ok(found)
    }

    /// `ip route show table main proto 87`: the routes weft installed.
    pub(crate) async fn weft_routes(&self) -> Result<BTreeMap<Ipv4Net, RouteSpec>> {
        let mut stream = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        let mut out = BTreeMap::new();
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
        Ok(out)
    }

    /// The interface of the IPv4 default route, if there is one.
    pub(crate) async fn default_route_oif(&self) -> Result<Option<u32>> {
        let mut stream = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
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

    fn route_message(dst: Ipv4Net, spec: &RouteSpec) -> RouteMessage {
        let b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTO));
        if let Some(id) = spec.nhid {
            let mut msg = b.build();
            msg.attributes.push(RouteAttribute::NhId(id));
            return msg;
        }
        let mut b = b.gateway(spec.gateway).output_interface(spec.oif);
        if spec.onlink {
            b = b.onlink();
        }
        b.build()
    }

    /// `ip route replace DST nhid ID proto 87`, or without nexthop objects
    /// `ip route replace DST via GW dev OIF [onlink] proto 87`.
    pub(crate) async fn replace_route(&self, dst: Ipv4Net, spec: &RouteSpec) -> Result<()> {
        self.handle.route().add(Self::route_message(dst, spec)).replace().execute().await.map_err(|e| {
            let op = match spec.nhid {
                Some(id) => format!("ip route replace {dst} nhid {id}"),
                None => format!("ip route replace {dst} via {} dev #{}", spec.gateway, spec.oif),
            };
            Error::netlink(op, e)
        })
    }

    /// `ip route del DST via GW dev OIF proto 87` (absent is fine).
    pub(crate) async fn delete_route(&self, dst: Ipv4Net, spec: &RouteSpec) -> Result<()> {
        match self.handle.route().del(Self::route_message(dst, spec)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(Error::netlink(format!("ip route del {dst}"), e)),
        }
    }
}

pub(crate) fn parse_route(msg: &RouteMessage) -> Option<(Ipv4Net, RouteSpec)> {
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut nhid = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::NhId(id) => nhid = Some(*id),
            _ => {}
        }
    }
    let dst = Ipv4Net::new(dst.unwrap_or(Ipv4Addr::UNSPECIFIED), msg.header.destination_prefix_length).ok()?;
    let onlink = msg.header.flags.contains(RouteFlags::Onlink);
    match (gateway, oif, nhid) {
        (Some(gateway), Some(oif), nhid) => Some((dst, RouteSpec { gateway, oif, onlink, nhid })),
        // With `net.ipv4.nexthop_compat_mode=0` a route shows only its
        // nexthop id; the caller fills in the rest from the nexthop.
        (_, _, Some(id)) => {
            Some((dst, RouteSpec { gateway: Ipv4Addr::UNSPECIFIED, oif: 0, onlink: false, nhid: Some(id) }))
        }
        _ => None,
    }
}
