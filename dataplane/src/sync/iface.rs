//! Choosing the external interface and the public IP, as flanneld does:
//! `--iface` (names or addresses, first match wins), else `--iface-regex`,
//! else the interface of the default route; the public IP is `--public-ip`
//! or the interface's first IPv4 address. On dual-stack networks the same
//! interface must carry a global IPv6 address as well: the public IPv6
//! address is `--public-ipv6` or the interface's first one. An IPv6
//! address given in `--iface` names the interface that has it. On IPv6-only
//! networks the interface needs no IPv4 address at all, and with no option
//! it is the one of the IPv6 default route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::error::{Error, Result};
use crate::kernel::{Link, Netlink};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct IfaceRequest {
    /// `--iface`: interface names or addresses.
    pub ifaces: Vec<String>,
    /// `--iface-regex`: patterns matched against names and addresses.
    pub regexes: Vec<String>,
    /// `--public-ip`.
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The network is dual-stack: the interface needs an IPv6 address.
    pub ipv6: bool,
    /// The network is IPv6-only: no IPv4 address is needed or published.
    pub ipv6_only: bool,
}

/// The interface pod traffic leaves the node through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's address (the VXLAN source address); none on
    /// IPv6-only networks.
    pub addr: Option<Ipv4Net>,
    /// The address published in the lease (`PublicIP`); none on IPv6-only
    /// networks.
    pub public_ip: Option<Ipv4Addr>,
    /// All IPv4 addresses of the interface.
    pub addrs: Vec<Ipv4Net>,
    /// The interface's IPv6 address (the IPv6 VXLAN source), on dual-stack networks.
    pub addr6: Option<Ipv6Addr>,
    /// The IPv6 address published in the lease (`PublicIPv6`).
    pub public_ipv6: Option<Ipv6Addr>,
    /// All global IPv6 addresses of the interface.
    pub addrs6: Vec<Ipv6Net>,
    /// The IPv4 address weft's own sockets use: the public IP where it is
    /// an address of this host, else the interface's (the public IP is
    /// then a NAT's or a floating address).
    pub local_ip: Option<Ipv4Addr>,
    /// The same for IPv6.
    pub local_ipv6: Option<Ipv6Addr>,
}

impl ExternalInterface {
    /// Whether the public address of either family is not this host's
    /// (1:1 NAT, a floating address): `(public, local)` of the first such.
    pub fn public_not_local(&self) -> Option<(IpAddr, IpAddr)> {
        let v4 = self.public_ip.zip(self.local_ip).filter(|(p, l)| p != l).map(|(p, l)| (p.into(), l.into()));
        let v6 = self.public_ipv6.zip(self.local_ipv6).filter(|(p, l)| p != l).map(|(p, l)| (p.into(), l.into()));
        v4.or(v6)
    }
}

/// Pick the interface from the host's links and addresses. Pure.
pub(crate) fn select(
    links: &[Link],
    addrs: &[(u32, Ipv4Net)],
    addrs6: &[(u32, Ipv6Net)],
    default_oif: Option<u32>,
    req: &IfaceRequest,
) -> Result<ExternalInterface> {
    let addrs_of =
        |index: u32| -> Vec<Ipv4Net> { addrs.iter().filter(|(i, _)| *i == index).map(|(_, a)| *a).collect() };
    let link = if !req.ifaces.is_empty() {
        let mut found = None;
        for want in &req.ifaces {
            let index = match want.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => addrs.iter().find(|(_, a)| a.addr() == ip).map(|(i, _)| *i),
                Ok(IpAddr::V6(ip)) => addrs6.iter().find(|(_, a)| a.addr() == ip).map(|(i, _)| *i),
                Err(_) => links.iter().find(|l| &l.name == want).map(|l| l.index),
            };
            found = index.and_then(|i| links.iter().find(|l| l.index == i));
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(l) => l,
            None => {
                let first = &req.ifaces[0];
                return Err(match first.parse::<IpAddr>() {
                    Ok(ip) => Error::NoInterfaceWithAddress(ip),
                    Err(_) => Error::NoSuchInterface(first.clone()),
                });
            }
        }
    } else if !req.regexes.is_empty() {
        let mut found = None;
        'outer: for pattern in &req.regexes {
            let re = regex::Regex::new(pattern)
                .map_err(|e| Error::BadRegex { pattern: pattern.clone(), reason: e.to_string() })?;
            for l in links {
                let by_addr = addrs_of(l.index).iter().any(|a| re.is_match(&a.addr().to_string()));
                if re.is_match(&l.name) || by_addr {
                    found = Some(l);
                    break 'outer;
                }
            }
        }
        found.ok_or_else(|| Error::NoInterfaceMatches(req.regexes.join(", ")))?
    } else {
        let oif = default_oif.ok_or(Error::NoDefaultInterface)?;
        links.iter().find(|l| l.index == oif).ok_or(Error::NoDefaultInterface)?
    };
    let own = addrs_of(link.index);
    let (addr, public_ip) = if req.ipv6_only {
        (None, None)
    } else {
        let addr = *own.first().ok_or_else(|| Error::NoAddress { iface: link.name.clone() })?;
        // --public-ip need not be the host's (1:1 NAT, a floating address):
        // it is what other nodes reach this one at, as flanneld takes it.
        (Some(addr), Some(req.public_ip.unwrap_or(addr.addr())))
    };
    let is_host = |ip: Ipv4Addr| addrs.iter().any(|(_, a)| a.addr() == ip);
    let local_ip = public_ip.zip(addr).map(|(ip, a)| if is_host(ip) { ip } else { a.addr() });
    let own6: Vec<Ipv6Net> = addrs6.iter().filter(|(i, _)| *i == link.index).map(|(_, a)| *a).collect();
    // An IPv6 address given in --iface is used as given (flannel >= 0.25.7).
    let given6 =
        req.ifaces.iter().find_map(|w| w.parse::<Ipv6Addr>().ok()).filter(|ip| own6.iter().any(|a| a.addr() == *ip));
    let public_ipv6 = req.public_ipv6.or_else(|| given6.or_else(|| own6.first().map(|a| a.addr())));
    if (req.ipv6 || req.ipv6_only) && public_ipv6.is_none() {
        return Err(Error::NoAddress6 { iface: link.name.clone() });
    }
    let addr6 =
        public_ipv6.filter(|ip| own6.iter().any(|a| a.addr() == *ip)).or_else(|| own6.first().map(|a| a.addr()));
    let (addr6, public_ipv6) = if req.ipv6 || req.ipv6_only { (addr6, public_ipv6) } else { (None, None) };
    let local_ipv6 =
        public_ipv6.and_then(|ip| if addrs6.iter().any(|(_, a)| a.addr() == ip) { Some(ip) } else { addr6 });
    Ok(ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        addr,
        public_ip,
        addrs: own,
        addr6,
        public_ipv6,
        addrs6: own6,
        local_ip,
        local_ipv6,
    })
}

/// Read the host's links and addresses and pick the external interface.
pub(crate) async fn find_external(nl: &Netlink, req: &IfaceRequest) -> Result<ExternalInterface> {
    let links = nl.links().await?;
    let (addrs, addrs6) = nl.addresses_by_family().await?;
    let default_oif = match (req.ifaces.is_empty() && req.regexes.is_empty(), req.ipv6_only) {
        (false, _) => None,
        (true, false) => nl.default_route_oif().await?,
        (true, true) => nl.default_route6_oif().await?,
    };
    select(&links, &addrs, &addrs6, default_oif, req)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dual_stack_selection() {
        let (links, addrs) = host();
        let addrs6: Vec<(u32, Ipv6Net)> = vec![
            (2, "fd00:198:18::2/64".parse().unwrap()),
            (3, "fd00:198:19::2/64".parse().unwrap()),
            (3, "fd00:198:19::9/64".parse().unwrap()),
        ];
        let pick6 = |req: IfaceRequest, oif| select(&links, &addrs, &addrs6, oif, &req);
        let dual = IfaceRequest { ipv6: true, ..Default::default() };
        let d = pick6(dual.clone(), Some(2)).unwrap();
        assert_eq!(
            (d.name.as_str(), d.public_ipv6, d.addr6),
            ("eth0", Some("fd00:198:18::2".parse().unwrap()), Some("fd00:198:18::2".parse().unwrap()))
        );
        // An IPv6 address in --iface names its interface and is used as given.
        let by6 = pick6(IfaceRequest { ifaces: vec!["fd00:198:19::9".into()], ..dual.clone() }, None).unwrap();
        assert_eq!((by6.name.as_str(), by6.public_ipv6), ("eth1", Some("fd00:198:19::9".parse().unwrap())));
        let given =
            pick6(IfaceRequest { public_ipv6: Some("fd00:198:19::2".parse().unwrap()), ..dual.clone() }, Some(2))
                .unwrap();
        assert_eq!(
            (given.public_ipv6, given.addr6),
            (Some("fd00:198:19::2".parse().unwrap()), Some("fd00:198:18::2".parse().unwrap()))
        );
        let e = pick6(IfaceRequest { ifaces: vec!["eth2".into()], ..dual.clone() }, None).unwrap_err().to_string();
        assert!(e.contains("eth2 has no IPv4 address"), "{e}");
        let no6 = select(&links, &addrs, &[], Some(2), &dual).unwrap_err().to_string();
        assert!(no6.contains("eth0 has no global IPv6 address"), "{no6}");
        // A public IPv6 address that is not the host's (a NAT's): published,
        // and weft's sockets use the interface's.
        let nat = pick6(IfaceRequest { public_ipv6: Some("2001:db8::1".parse().unwrap()), ..dual }, Some(2)).unwrap();
        assert_eq!(
            (nat.public_ipv6, nat.local_ipv6),
            (Some("2001:db8::1".parse().unwrap()), Some("fd00:198:18::2".parse().unwrap()))
        );
        // IPv4-only networks publish no IPv6 address even where there is one.
        let v4 = pick6(IfaceRequest::default(), Some(2)).unwrap();
        assert_eq!((v4.public_ipv6, v4.addr6), (None, None));
    }

    #[test]
    fn ipv6_only_selection_needs_no_ipv4_address() {
        let (links, _) = host();
        let addrs6: Vec<(u32, Ipv6Net)> = vec![(3, "fd00:198:19::2/64".parse().unwrap())];
        let only6 = IfaceRequest { ipv6_only: true, ..Default::default() };
        // An interface with no IPv4 address at all, by the IPv6 default route.
        let e = select(&links, &[], &addrs6, Some(3), &only6).unwrap();
        assert_eq!((e.name.as_str(), e.addr, e.public_ip), ("eth1", None, None));
        assert_eq!(e.public_ipv6, Some("fd00:198:19::2".parse().unwrap()));
        let by6 = select(
            &links,
            &[],
            &addrs6,
            None,
            &IfaceRequest { ifaces: vec!["fd00:198:19::2".into()], ..only6.clone() },
        );
        assert_eq!(by6.unwrap().name, "eth1");
        let none = select(&links, &[], &addrs6, Some(2), &only6).unwrap_err().to_string();
        assert!(none.contains("eth0 has no global IPv6 address"), "{none}");
    }

    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link { index, name: name.into(), mtu: 1500, mac: None, up: true, kind: None, vxlan: None }
    }

    fn host() -> (Vec<Link>, Vec<(u32, Ipv4Net)>) {
        (
            vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1"), link(4, "eth2")],
            vec![
                (1, "127.0.0.1/8".parse().unwrap()),
                (2, "198.18.0.2/24".parse().unwrap()),
                (3, "198.19.0.2/24".parse().unwrap()),
                (3, "198.19.1.2/24".parse().unwrap()),
            ],
        )
    }

    fn pick(req: IfaceRequest, default_oif: Option<u32>) -> Result<ExternalInterface> {
        let (links, addrs) = host();
        select(&links, &addrs, &[], default_oif, &req)
    }

    #[test]
    fn selection_rules() {
        let by_default = pick(IfaceRequest::default(), Some(2)).unwrap();
        assert_eq!(
            (by_default.name.as_str(), by_default.public_ip.unwrap().to_string().as_str()),
            ("eth0", "198.18.0.2")
        );

        let by_name = pick(IfaceRequest { ifaces: vec!["eth1".into()], ..Default::default() }, None).unwrap();
        assert_eq!(by_name.name, "eth1");
        assert_eq!(by_name.addrs.len(), 2);

        let by_addr = pick(IfaceRequest { ifaces: vec!["198.19.1.2".into()], ..Default::default() }, None).unwrap();
        assert_eq!(by_addr.name, "eth1");

        let first_match =
            pick(IfaceRequest { ifaces: vec!["nope".into(), "eth0".into()], ..Default::default() }, None).unwrap();
        assert_eq!(first_match.name, "eth0");

        let by_regex = pick(IfaceRequest { regexes: vec!["^198\\.19\\.".into()], ..Default::default() }, None).unwrap();
        assert_eq!(by_regex.name, "eth1");

        let public = pick(
            IfaceRequest {
                ifaces: vec!["eth0".into()],
                public_ip: Some("198.19.0.2".parse().unwrap()),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert_eq!((public.name.as_str(), public.public_ip.unwrap().to_string().as_str()), ("eth0", "198.19.0.2"));
    }

    #[test]
    fn selection_errors_say_what_to_fix() {
        let e = |req, oif| pick(req, oif).unwrap_err().to_string();
        assert!(e(IfaceRequest { ifaces: vec!["eth9".into()], ..Default::default() }, None)
            .contains("interface \"eth9\" does not exist"));
        assert!(e(IfaceRequest { ifaces: vec!["10.0.0.1".into()], ..Default::default() }, None)
            .contains("no interface has address 10.0.0.1"));
        assert!(e(IfaceRequest { regexes: vec!["^wlan".into()], ..Default::default() }, None)
            .contains("no interface matches"));
        assert!(
            e(IfaceRequest { regexes: vec!["(".into()], ..Default::default() }, None).contains("invalid --iface-regex")
        );
        assert!(e(IfaceRequest::default(), None).contains("no default route"));
        assert!(e(IfaceRequest { ifaces: vec!["eth2".into()], ..Default::default() }, None)
            .contains("eth2 has no IPv4 address"));
    }

    /// flanneld takes any --public-ip: what other nodes reach this one at
    /// (1:1 NAT, a floating address). weft's own sockets then use the
    /// interface's address; a public IP the host has is used as it is.
    #[test]
    fn a_public_ip_that_is_not_the_hosts_is_published_and_sockets_use_the_interfaces() {
        let req = |ip: &str| IfaceRequest {
            ifaces: vec!["eth0".into()],
            public_ip: Some(ip.parse().unwrap()),
            ..Default::default()
        };
        let nat = pick(req("203.0.113.9"), None).unwrap();
        assert_eq!((nat.public_ip, nat.local_ip), (Some("203.0.113.9".parse().unwrap()), nat.addr.map(|a| a.addr())));
        assert_eq!(nat.public_not_local().map(|(p, _)| p.to_string()), Some("203.0.113.9".into()));
        let own = pick(req(&nat.addr.unwrap().addr().to_string()), None).unwrap();
        assert_eq!((own.public_ip, own.local_ip), (own.addr.map(|a| a.addr()), own.addr.map(|a| a.addr())));
        assert_eq!(own.public_not_local(), None);
    }
}
