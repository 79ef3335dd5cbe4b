//! Links (`ip link`): the devices weft reads, creates, configures and removes.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo};
use rtnetlink::{LinkUnspec, LinkVxlan};
use std::net::IpAddr;
use weft_types::MacAddr;

use super::Netlink;
use crate::error::{errno, Error, Result};

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) mtu: u32,
    pub(crate) mac: Option<MacAddr>,
    pub(crate) up: bool,
    /// `IFLA_INFO_KIND`: "vxlan", "tun", "bridge", ...
    pub(crate) kind: Option<String>,
    /// Set when the link is a VXLAN device.
    pub(crate) vxlan: Option<VxlanAttrs>,
}

/// The attributes of a VXLAN device that weft cares about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VxlanAttrs {
    pub(crate) vni: Option<u32>,
    pub(crate) local: Option<IpAddr>,
    pub(crate) port: Option<u16>,
    pub(crate) link: Option<u32>,
    pub(crate) learning: Option<bool>,
    pub(crate) gbp: bool,
}

/// What a VXLAN device should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VxlanSpec {
    pub(crate) name: String,
    pub(crate) vni: u32,
    pub(crate) local: IpAddr,
    pub(crate) port: u16,
    pub(crate) dev: u32,
    pub(crate) gbp: bool,
    pub(crate) learning: bool,
    pub(crate) mac: MacAddr,
    pub(crate) mtu: u32,
}

impl Netlink {
    /// `ip link show`
    pub(crate) async fn links(&self) -> Result<Vec<Link>> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| Error::netlink("ip link show", e))? {
            links.push(parse_link(&msg));
        }
        Ok(links)
    }

    /// `ip link show dev NAME`, `None` when there is no such link.
    pub(crate) async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self.handle.link().get().match_name(name.to_string()).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(parse_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink(format!("ip link show dev {name}"), e)),
        }
    }

    /// `ip link add NAME address MAC mtu M type vxlan id VNI local IP dev DEV dstport PORT nolearning [gbp]`
    pub(crate) async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let b = LinkVxlan::new(&spec.name, spec.vni).dev(spec.dev);
        let b = match spec.local {
            IpAddr::V4(ip) => b.local(ip),
            IpAddr::V6(ip) => b.local6(ip),
        };
        let mut b = b.port(spec.port).learning(spec.learning).mtu(spec.mtu).address(spec.mac.0.to_vec());
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
    pub(crate) async fn set_up_with_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip link set dev #{index} mtu {mtu} up"), e))
    }

    /// `ip link del dev INDEX`
    pub(crate) async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("ip link del dev #{index}"), e))
    }
}

pub(crate) fn parse_link(msg: &rtnetlink::packet_route::link::LinkMessage) -> Link {
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
                                    InfoVxlan::Local(l) => attrs.local = Some(IpAddr::V4(*l)),
                                    InfoVxlan::Local6(l) => attrs.local = Some(IpAddr::V6(*l)),
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
