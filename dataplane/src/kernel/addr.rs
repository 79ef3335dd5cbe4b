//! Addresses (`ip addr`): the addresses of weft's devices and of the
//! external interface, both families.

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};

use super::Netlink;
use crate::error::{Error, Result};

/// Whether `net` is an IPv6 link-local address (`fe80::/10`): the kernel
/// gives one to every device by itself, so weft neither uses nor removes it.
pub(crate) fn is_link_local(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80)
}

impl Netlink {
    /// `ip addr show`: (interface index, address/prefix) of both families.
    pub(crate) async fn all_addresses(&self) -> Result<Vec<(u32, IpNet)>> {
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip addr show", e))? {
            // IFA_LOCAL is the address on point-to-point links; IFA_ADDRESS
            // the peer's there, and the address itself elsewhere.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(net) = addr.and_then(|a| IpNet::new(a, msg.header.prefix_len).ok()) {
                out.push((msg.header.index, net));
            }
        }
        Ok(out)
    }

    /// `ip -4 addr show` and `ip -6 addr show scope global` from one dump:
    /// (interface index, address/prefix) of each family, IPv6 link-local
    /// addresses left out.
    pub(crate) async fn addresses_by_family(&self) -> Result<(Vec<(u32, Ipv4Net)>, Vec<(u32, Ipv6Net)>)> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (i, a) in self.all_addresses().await? {
            match a {
                IpNet::V4(n) => v4.push((i, n)),
                IpNet::V6(n) if !is_link_local(&a) => v6.push((i, n)),
                IpNet::V6(_) => {}
            }
        }
        Ok((v4, v6))
    }

    /// `ip addr show dev INDEX`: the device's addresses of `addr`'s family,
    /// link-local ones left out.
    async fn same_family_of(&self, index: u32, family_of: &IpNet) -> Result<Vec<IpNet>> {
        let v6 = matches!(family_of, IpNet::V6(_));
        Ok(self
            .all_addresses()
            .await?
            .into_iter()
            .filter(|(i, a)| *i == index && matches!(a, IpNet::V6(_)) == v6 && !is_link_local(a))
            .map(|(_, a)| a)
            .collect())
    }

    /// Make `addr` the only address of its family on device `index` (IPv6
    /// link-local addresses aside): `ip addr del` the others, `ip addr
    /// replace` it. Returns whether anything changed.
    pub(crate) async fn ensure_only_address(&self, index: u32, addr: IpNet) -> Result<bool> {
        let have = self.same_family_of(index, &addr).await?;
        if have == [addr] {
            return Ok(false);
        }
        for a in have.into_iter().filter(|a| *a != addr) {
            self.delete_address(index, a).await?;
        }
        self.replace_address(index, addr).await?;
        Ok(true)
    }

    /// `ip addr replace ADDR/LEN dev INDEX` (IPv6: `nodad`, so that it is
    /// usable at once; weft's addresses are unique by lease).
    pub(crate) async fn replace_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut req = self.handle.address().add(index, addr.addr(), addr.prefix_len()).replace();
        if addr.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(|e| Error::netlink(format!("ip addr replace {addr} dev #{index}"), e))
    }

    /// `ip addr del ADDR/LEN dev INDEX`
    pub(crate) async fn delete_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr.addr())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_fe80_slash_10_only() {
        for (net, want) in [("fe80::1/64", true), ("febf::1/64", true), ("fec0::1/64", false), ("fd10::1/64", false)] {
            assert_eq!(is_link_local(&net.parse().unwrap()), want, "{net}");
        }
        assert!(!is_link_local(&"169.254.0.1/16".parse().unwrap()));
    }
}
