//! Addresses (`ip addr`): the IPv4 addresses of weft's devices and of the
//! external interface.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;

use super::Netlink;
use crate::error::{Error, Result};

impl Netlink {
    /// `ip -4 addr show`: (interface index, address/prefix).
    pub(crate) async fn addresses(&self) -> Result<Vec<(u32, Ipv4Net)>> {
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

    /// `ip -4 addr show dev INDEX`: the device's IPv4 addresses.
    pub(crate) async fn addresses_of(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self.addresses().await?.into_iter().filter(|(i, _)| *i == index).map(|(_, a)| a).collect())
    }

    /// Make `addr` the only IPv4 address of device `index`: `ip addr del`
    /// the others, `ip addr replace` it. Returns whether anything changed.
    pub(crate) async fn ensure_only_address(&self, index: u32, addr: Ipv4Net) -> Result<bool> {
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

    /// `ip addr replace ADDR/LEN dev INDEX`
    pub(crate) async fn replace_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip addr replace {addr} dev #{index}"), e))
    }

    /// `ip addr del ADDR/LEN dev INDEX`
    pub(crate) async fn delete_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
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
}
