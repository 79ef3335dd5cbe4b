//! Thin wrappers around rtnetlink: each function is one kernel operation,
//! named after the object and the verb, and says its `ip`/`bridge`
//! equivalent. Errors carry the operation and the kernel's message.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tokio::sync::OnceCell;
use weft_types::MacAddr;

use crate::error::{errno, Error, Result};
use crate::nexthop::{NexthopSpec, Nexthops};
use crate::WEFT_ROUTE_PROTO;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    /// `IFLA_INFO_KIND`: "vxlan", "tun", "bridge", ...
    pub kind: Option<String>,
    /// Set when the link is a VXLAN device.
    pub vxlan: Option<VxlanAttrs>,
}

/// The attributes of a VXLAN device that weft cares about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanAttrs {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub link: Option<u32>,
    pub learning: Option<bool>,
    pub gbp: bool,
}

/// What a VXLAN device should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    pub dev: u32,
    pub gbp: bool,
    pub learning: bool,
    pub mac: MacAddr,
    pub mtu: u32,
}

/// A route weft installs, keyed by its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub gateway: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
    /// The nexthop object carrying gateway, device and onlink, when the
    /// kernel has them ([`crate::nexthop`]).
    pub nhid: Option<u32>,
}

impl RouteSpec {
    /// The part a nexthop object holds.
    pub fn nexthop(&self) -> NexthopSpec {
        NexthopSpec { gateway: self.gateway, oif: self.oif, onlink: self.onlink }
    }
}

/// A netlink connection (one per daemon).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    nexthops: Nexthops,
    /// Whether the kernel has nexthop objects, found out on first use.
    nexthops_supported: Arc<OnceCell<bool>>,
    /// Whether routes may point at them (`--no-nexthop-objects`).
    nexthops_allowed: bool,
}

impl Netlink {
    /// Open the socket; must run inside a tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            nexthops: Nexthops::connect()?,
            nexthops_supported: Arc::default(),
            nexthops_allowed: true,
        })
    }

    /// Whether new routes may point at nexthop objects; weft's existing
    /// nexthops are still cleaned up when they may not.
    pub fn nexthop_objects(mut self, allowed: bool) -> Netlink {
        self.nexthops_allowed = allowed;
        self
    }

    /// Whether routes point at nexthop objects: allowed and supported.
    pub async fn use_nexthops(&self) -> bool {
        self.nexthops_allowed && self.nexthops_supported().await
    }

    /// The nexthop objects (`ip nexthop`).
    pub fn nexthops(&self) -> &Nexthops {
        &self.nexthops
    }

    /// Whether routes can point at nexthop objects here (Linux 5.3 and
    /// later). Asked once; a kernel without them is logged once, and
    /// routes then carry their gateway themselves.
    pub async fn nexthops_supported(&self) -> bool {
        *self
            .nexthops_supported
            .get_or_init(|| async {
                match self.nexthops.supported().await {
                    Ok(true) => true,
                    Ok(false) => {
                        tracing::warn!("this kernel has no nexthop objects (Linux 5.3+); routes carry their gateway, which the kernel programs in quadratic time with many peers");
                        false
                    }
                    Err(e) => {
                        tracing::warn!("cannot list nexthop objects ({}); routes carry their gateway", crate::error::chain(&e));
                        false
                    }
                }
            })
            .await
    }

    /// `ip link show`
    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip link show", e))? {
            links.push(parse_link(&msg));
        }
        Ok(links)
    }

    /// `ip link show dev NAME`, `None` when there is no such link.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self.handle.link().get().match_name(name.to_string()).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(parse_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink(format!("ip link show dev {name}"), e)),
        }
    }

    /// `ip -4 addr show`: (interface index, address/prefix).
    pub async fn addresses(&self) -> Result<Vec<(u32, Ipv4Net)>> {
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip addr show", e))? {
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            let addr = addr.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                    _ => None,
                })
            });
            if let Some(a) = addr {
                if let Ok(net) = Ipv4Net::new(a, msg.header.prefix_len) {
                    out.push((msg.header.index, net));
                }
            }
        }
        Ok(out)
    }

    /// `ip link add NAME address MAC mtu M type vxlan id VNI local IP dev DEV dstport PORT nolearning [gbp]`
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.dev)
            .local(spec.local)
            .port(spec.port)
            .learning(spec.learning)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec());
        if spec.gbp {
            b = b.append_info_data(InfoVxlan::Gbp);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip link add {} type vxlan id {}", spec.name, spec.vni), e))
    }

    /// `ip link set dev INDEX mtu M up`
    pub async fn set_up_with_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip link set dev #{index} mtu {mtu} up"), e))
    }

    /// `ip -4 addr show dev INDEX`: the device's IPv4 addresses.
    pub async fn addresses_of(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self.addresses().await?.into_iter().filter(|(i, _)| *i == index).map(|(_, a)| a).collect())
    }

    /// Make `addr` the only IPv4 address of device `index`: `ip addr del`
    /// the others, `ip addr replace` it. Returns whether anything changed.
    pub async fn ensure_only_address(&self, index: u32, addr: Ipv4Net) -> Result<bool> {
        let have = self.addresses_of(index).await?;
        if have == [addr] {
            return Ok(false);
        }
        for a in have.into_iter().filter(|a| *a != addr) {
            self.delete_address(index, a).await?;
        }
        self.replace_address(index, addr).await?;
        Ok(true)
    }

    /// Whether the main table has a route to exactly `dst` out of `oif`
    /// (`ip route show table main exact DST dev OIF`), whatever its protocol.
    pub async fn has_route(&self, dst: Ipv4Net, oif: u32) -> Result<bool> {
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

    /// `ip link del dev INDEX`
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip link del dev #{index}"), e))
    }

    /// `ip addr replace ADDR/LEN dev INDEX`
    pub async fn replace_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip addr replace {addr} dev #{index}"), e))
    }

    /// `ip addr del ADDR/LEN dev INDEX`
    pub async fn delete_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(addr.addr()))
            .set_prefix_length_filter(addr.prefix_len())
            .execute();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip addr show", e))? {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("ip addr del {addr} dev #{index}"), e))?;
        }
        Ok(())
    }

    /// `ip route show table main proto 87`: the routes weft installed.
    pub async fn weft_routes(&self) -> Result<BTreeMap<Ipv4Net, RouteSpec>> {
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
    pub async fn default_route_oif(&self) -> Result<Option<u32>> {
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
    pub async fn replace_route(&self, dst: Ipv4Net, spec: &RouteSpec) -> Result<()> {
        self.handle.route().add(Self::route_message(dst, spec)).replace().execute().await.map_err(|e| {
            let op = match spec.nhid {
                Some(id) => format!("ip route replace {dst} nhid {id}"),
                None => format!("ip route replace {dst} via {} dev #{}", spec.gateway, spec.oif),
            };
            Error::netlink(op, e)
        })
    }

    /// `ip route del DST via GW dev OIF proto 87` (absent is fine).
    pub async fn delete_route(&self, dst: Ipv4Net, spec: &RouteSpec) -> Result<()> {
        match self.handle.route().del(Self::route_message(dst, spec)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(Error::netlink(format!("ip route del {dst}"), e)),
        }
    }

    /// `ip neigh show dev INDEX nud permanent`: IP -> MAC.
    pub async fn permanent_neighbours(&self, index: u32) -> Result<BTreeMap<Ipv4Addr, MacAddr>> {
        let mut stream = self.handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
        let mut out = BTreeMap::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip neigh show", e))? {
            if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(NeighbourAddress::Inet(ip)), Some(mac)) = (neigh_dst(&msg), neigh_mac(&msg)) {
                out.insert(ip, mac);
            }
        }
        Ok(out)
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`
    pub async fn replace_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip neigh replace {ip} lladdr {mac} dev #{index}"), e))
    }

    /// `ip neigh del IP dev INDEX` (absent is fine).
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::netlink(format!("ip neigh del {ip} dev #{index}"), e)),
        }
    }

    /// `bridge fdb show dev INDEX`: MAC -> remote IP, for entries with a destination.
    pub async fn fdb(&self, index: u32) -> Result<BTreeMap<MacAddr, Ipv4Addr>> {
        let mut stream = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        let mut out = BTreeMap::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("bridge fdb show", e))? {
            if msg.header.ifindex != index {
                continue;
            }
            if let (Some(NeighbourAddress::Inet(ip)), Some(mac)) = (neigh_dst(&msg), neigh_mac(&msg)) {
                out.insert(mac, ip);
            }
        }
        Ok(out)
    }

    /// `bridge fdb replace MAC dev INDEX dst IP self permanent`
    pub async fn replace_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac.0)
            .destination(IpAddr::V4(dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("bridge fdb replace {mac} dev #{index} dst {dst}"), e))
    }

    /// `bridge fdb del MAC dev INDEX dst IP self` (absent is fine).
    pub async fn delete_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::netlink(format!("bridge fdb del {mac} dev #{index} dst {dst}"), e)),
        }
    }
}

/// The destination of a neighbour or FDB entry. In FDB dumps (family
/// `AF_BRIDGE`) the kernel's `NDA_DST` arrives as raw bytes.
pub(crate) fn neigh_dst(msg: &NeighbourMessage) -> Option<NeighbourAddress> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
            Some(NeighbourAddress::Inet(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        }
        NeighbourAttribute::Destination(d) => Some(d.clone()),
        _ => None,
    })
}

pub(crate) fn neigh_mac(msg: &NeighbourMessage) -> Option<MacAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(l);
            Some(MacAddr(m))
        }
        _ => None,
    })
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

fn parse_link(msg: &rtnetlink::packet_route::link::LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(a);
                link.mac = Some(MacAddr(m));
            }
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|i| match i {
                    NlLinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                });
                let is_vxlan = infos.iter().any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Vxlan)));
                if is_vxlan {
                    let mut attrs = VxlanAttrs::default();
                    for i in infos {
                        if let NlLinkInfo::Data(InfoData::Vxlan(data)) = i {
                            for d in data {
                                match d {
                                    InfoVxlan::Id(v) => attrs.vni = Some(*v),
                                    InfoVxlan::Local(l) => attrs.local = Some(*l),
                                    InfoVxlan::Port(p) => attrs.port = Some(*p),
                                    InfoVxlan::Link(l) => attrs.link = Some(*l),
                                    InfoVxlan::Learning(l) => attrs.learning = Some(*l),
                                    InfoVxlan::Gbp => attrs.gbp = true,
                                    _ => {}
                                }
                            }
                        }
                    }
                    link.vxlan = Some(attrs);
                }
            }
            _ => {}
        }
    }
    link
}
