//! Neighbour entries (`ip neigh`) and FDB entries (`bridge fdb`) of weft's
//! VXLAN device: both are neighbour messages to the kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use weft_types::MacAddr;

use super::Netlink;
use crate::error::{errno, Error, Result};

impl Netlink {
    /// `ip neigh show dev INDEX nud permanent` (`-6` with `v6`): IP -> MAC.
    pub(crate) async fn permanent_neighbours(&self, index: u32, v6: bool) -> Result<BTreeMap<IpAddr, MacAddr>> {
        let family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let mut stream = self.handle.neighbours().get().set_address_family(family).execute();
        let mut out = BTreeMap::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip neigh show", e))? {
            if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(ip), Some(mac)) = (neigh_dst(&msg).and_then(|d| ip_of(&d)), neigh_mac(&msg)) {
                out.insert(ip, mac);
            }
        }
        Ok(out)
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`
    pub(crate) async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip neigh replace {ip} lladdr {mac} dev #{index}"), e))
    }

    /// `ip neigh del IP dev INDEX` (absent is fine).
    pub(crate) async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if ip.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(ip.into()));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::netlink(format!("ip neigh del {ip} dev #{index}"), e)),
        }
    }

    /// `bridge fdb show dev INDEX`: MAC -> remote IP, for entries with a destination.
    pub(crate) async fn fdb(&self, index: u32) -> Result<BTreeMap<MacAddr, IpAddr>> {
        let mut stream = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        let mut out = BTreeMap::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("bridge fdb show", e))? {
            if msg.header.ifindex != index {
                continue;
            }
            if let (Some(ip), Some(mac)) = (neigh_dst(&msg).and_then(|d| ip_of(&d)), neigh_mac(&msg)) {
                out.insert(mac, ip);
            }
        }
        Ok(out)
    }

    /// `bridge fdb replace MAC dev INDEX dst IP self permanent`
    pub(crate) async fn replace_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac.0)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("bridge fdb replace {mac} dev #{index} dst {dst}"), e))
    }

    /// `bridge fdb del MAC dev INDEX dst IP self` (absent is fine).
    pub(crate) async fn delete_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(dst.into()));
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
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 16 => {
            let octets: [u8; 16] = b[..].try_into().ok()?;
            Some(NeighbourAddress::Inet6(Ipv6Addr::from(octets)))
        }
        NeighbourAttribute::Destination(d) => Some(d.clone()),
        _ => None,
    })
}

/// The IP address of a neighbour address, either family.
pub(crate) fn ip_of(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
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
